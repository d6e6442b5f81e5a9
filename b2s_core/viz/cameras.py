"""Camera images with the occupancy projected onto them.

Each visible voxel's centre is taken to the camera (``cam_from_ego = inv(ego_from_cam)``), then to
pixels (``img_from_cam``), and drawn as a square the size of the voxel at that depth. A z-buffer
keeps the nearest voxel per pixel; the class colour (height-shaded, as in the BEV) is blended over
the photo with weight ``alpha``. Splats get a darker one-pixel rim (``RIM_SHADE``) when at least 5
pixels wide so that neighbouring voxels of one class stay apart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from b2s_core.records import Camera
from b2s_core.viz.voxels import VisualizeError, VoxelLayer, height_shade, shade, surface_mask

NEAR_M = 0.5  # voxels closer than this to the camera plane are not drawn (their splat would fill the image)
MAX_HALF_SIZE_PX = 24  # cap on a splat's half size, for voxels right in front of the lens
RIM_SHADE = 0.7
# nuScenes layout: front row left-to-right, back row as seen when turning around.
NUSCENES_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


@dataclass
class Splats:
    """Projected voxels of one camera image, after the z-buffer: one entry per covered pixel."""

    rows: np.ndarray  # (P,) int64
    cols: np.ndarray  # (P,) int64
    colors: np.ndarray  # (P, 3) uint8, shaded
    depth: np.ndarray  # (P,) float64, metres along the optical axis


def resized_intrinsics(img_from_cam: np.ndarray, scale: float) -> np.ndarray:
    """(3, 3) intrinsics of the image resized by ``scale`` (pixel centres at integer coordinates)."""
    # u' + 0.5 = (u + 0.5) * scale: the pixel-area convention PIL's resize uses.
    image_from_image = np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5], [0.0, 0.0, 1.0]])
    return image_from_image @ img_from_cam


def project_centers(centers: np.ndarray, img_from_cam: np.ndarray, ego_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) ego-frame points -> ((N, 2) float pixel (u, v), (N,) depth along the optical axis)."""
    cam_from_ego = np.linalg.inv(ego_from_cam)
    in_cam = centers @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]  # (N, 3)
    depth = in_cam[:, 2]
    pixels = in_cam @ img_from_cam.T  # (N, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pixels[:, :2] / pixels[:, 2:3]
    return uv, depth


def splat_voxels(layer: VoxelLayer, img_from_cam: np.ndarray, ego_from_cam: np.ndarray, width: int, height: int) -> Splats:
    """Z-buffered squares of the layer's visible voxels in a ``width`` x ``height`` image."""
    index = np.argwhere(surface_mask(layer.occupied))  # (N, 3); interior voxels are always hidden
    centers = layer.grid.center_of(index)
    uv, depth = project_centers(centers, img_from_cam, ego_from_cam)
    voxel = float(max(layer.grid.voxel_size))
    half = np.minimum(np.round(0.5 * voxel * img_from_cam[0, 0] / np.maximum(depth, NEAR_M)), MAX_HALF_SIZE_PX).astype(np.int64)
    col, row = np.round(uv[:, 0]).astype(np.int64, copy=False), np.round(uv[:, 1]).astype(np.int64, copy=False)
    keep = (depth > NEAR_M) & (col + half >= 0) & (col - half < width) & (row + half >= 0) & (row - half < height)
    index, depth, half, col, row = index[keep], depth[keep], half[keep], col[keep], row[keep]
    Z = layer.grid.shape[2]
    base = shade(layer.taxonomy.color_array()[layer.labels[index[:, 0], index[:, 1], index[:, 2]]], height_shade(index[:, 2], Z))
    rim = shade(base, RIM_SHADE)

    rows, cols, colors, depths = [], [], [], []
    for size in np.unique(half):  # voxels of one splat size at a time, so each step is one dense offset grid
        sel = np.flatnonzero(half == size)
        offsets = np.arange(-size, size + 1)
        d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")  # (S, S)
        d_row, d_col = d_row.ravel(), d_col.ravel()
        on_rim = (np.maximum(np.abs(d_row), np.abs(d_col)) == size) & (size >= 2)  # (S*S,)
        rows.append((row[sel, None] + d_row[None]).ravel())  # (n * S*S,)
        cols.append((col[sel, None] + d_col[None]).ravel())
        depths.append(np.repeat(depth[sel], len(d_row)))
        colors.append(np.where(on_rim[None, :, None], rim[sel, None], base[sel, None]).reshape(-1, 3))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return Splats(empty, empty, np.zeros((0, 3), dtype=np.uint8), np.zeros(0))
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    depth_all, colors_all = np.concatenate(depths), np.concatenate(colors)
    inside = (rows_all >= 0) & (rows_all < height) & (cols_all >= 0) & (cols_all < width)
    rows_all, cols_all, depth_all, colors_all = rows_all[inside], cols_all[inside], depth_all[inside], colors_all[inside]
    # z-buffer: sort by pixel then depth; the first entry of each pixel is the nearest voxel.
    pixel = rows_all * width + cols_all
    order = np.lexsort((depth_all, pixel))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pixel[order][1:] != pixel[order][:-1]
    nearest = order[first]
    return Splats(rows_all[nearest], cols_all[nearest], colors_all[nearest], depth_all[nearest])


def splat_voxels_reference(
    layer: VoxelLayer, img_from_cam: np.ndarray, ego_from_cam: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Slow painter's-algorithm version: (H, W, 3) uint8 colour layer and (H, W) bool coverage, for tests."""
    index = np.argwhere(surface_mask(layer.occupied))
    centers = layer.grid.center_of(index)
    uv, depth = project_centers(centers, img_from_cam, ego_from_cam)
    table = layer.taxonomy.color_array()
    Z = layer.grid.shape[2]
    voxel = float(max(layer.grid.voxel_size))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    for n in np.argsort(-depth, kind="stable"):  # far to near: nearer voxels paint over farther ones
        if not depth[n] > NEAR_M:
            continue
        size = int(min(round(0.5 * voxel * img_from_cam[0, 0] / depth[n]), MAX_HALF_SIZE_PX))
        col, row = int(round(uv[n, 0])), int(round(uv[n, 1]))
        base = shade(table[layer.labels[tuple(index[n])]], height_shade(index[n, 2], Z))
        for r in range(row - size, row + size + 1):
            for c in range(col - size, col + size + 1):
                if 0 <= r < height and 0 <= c < width:
                    on_rim = size >= 2 and max(abs(r - row), abs(c - col)) == size
                    canvas[r, c] = shade(base, RIM_SHADE) if on_rim else base
                    covered[r, c] = True
    return canvas, covered


def overlay_occupancy(
    image: np.ndarray, layer: VoxelLayer, img_from_cam: np.ndarray, ego_from_cam: np.ndarray, *, alpha: float = 0.6
) -> np.ndarray:
    """(H, W, 3) uint8 photo -> the photo with the layer's voxels blended on (weight ``alpha``)."""
    height, width = image.shape[:2]
    splats = splat_voxels(layer, img_from_cam, ego_from_cam, width, height)
    out = image.copy()
    under = out[splats.rows, splats.cols].astype(np.float64)
    out[splats.rows, splats.cols] = np.round(alpha * splats.colors + (1.0 - alpha) * under).astype(np.uint8)
    return out


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Encoded JPEG/PNG bytes -> (H, W, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise VisualizeError(f"{where}: cannot decode the camera image ({err})") from None


def camera_overlay(photo: np.ndarray, camera: Camera, layer: VoxelLayer, *, width: int = 480, alpha: float = 0.6) -> np.ndarray:
    """One camera's photo resized to ``width`` pixels wide with the layer projected -> (h, width, 3) uint8."""
    scale = width / photo.shape[1]
    height = max(int(round(photo.shape[0] * scale)), 1)
    small = np.asarray(Image.fromarray(photo).resize((width, height), Image.BILINEAR))
    img_from_cam = resized_intrinsics(np.asarray(camera.intrinsic, dtype=np.float64), scale)
    return overlay_occupancy(small, layer, img_from_cam, np.asarray(camera.ego_from_cam, dtype=np.float64), alpha=alpha)


def camera_mosaic(tiles: dict[str, np.ndarray], *, gap: int = 4, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Camera name -> (h, w, 3) tile; arranged in the nuScenes 2 x 3 layout when the names fit it,
    otherwise in rows of three in the given order -> one (H, W, 3) uint8 image."""
    names = list(tiles)
    if set(names) == {n for row in NUSCENES_LAYOUT for n in row}:
        layout = [list(row) for row in NUSCENES_LAYOUT]
    else:
        layout = [names[i : i + 3] for i in range(0, len(names), 3)]
    if not layout:
        raise VisualizeError("no camera images to arrange")
    tile_h = max(t.shape[0] for t in tiles.values())
    tile_w = max(t.shape[1] for t in tiles.values())
    columns = max(len(row) for row in layout)
    out = np.empty((len(layout) * (tile_h + gap) - gap, columns * (tile_w + gap) - gap, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    for r, row in enumerate(layout):
        for c, name in enumerate(row):
            tile = tiles[name]
            top, left = r * (tile_h + gap), c * (tile_w + gap)
            out[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return out
