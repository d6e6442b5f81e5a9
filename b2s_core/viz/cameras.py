"""Camera images with the occupancy projected onto them.

Each visible voxel's centre is taken to the camera (``cam_from_ego = inv(ego_from_cam)``), then to
pixels (``img_from_cam``), and drawn as a square the size of the voxel at that depth. A z-buffer
keeps the nearest voxel per pixel. Two modes draw what the z-buffer kept:

* ``fill``: the class colour (height-shaded, as in the BEV) is blended over the photo with weight
  ``alpha``; splats get a darker one-pixel rim (``RIM_SHADE``) when at least 5 pixels wide so that
  neighbouring voxels of one class stay apart.
* ``outline``: only the borders of the regions the z-buffer kept are drawn, in full colour (a blended
  one-pixel line vanishes in a busy photo): where the class changes, where the region ends, and
  where the depth jumps (one object in front of another of the same class). The photo inside every
  region stays untouched.

Both draw only voxels whose centre lies ``distance`` = (near, far) metres from the camera. Nearer
voxels still hide what is behind them (their pixels keep the photo) so that a building behind a
roadside tree is not painted over the tree.

Classes are drawn in ``overlay_color_array``: the taxonomy's colours except the few in
``OVERLAY_COLORS``, which look alike once blended over a photo (tests/test_visualize_cameras.py
measures it).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from b2s_core.records import Camera
from b2s_core.taxonomy import Taxonomy
from b2s_core.viz.compose import labelled, legend
from b2s_core.viz.voxels import VisualizeError, VoxelLayer, height_shade, shade, surface_mask

NEAR_M = 0.5  # voxels closer than this to the camera plane are not drawn (their splat would fill the image)
MAX_HALF_SIZE_PX = 24  # cap on a splat's half size, for voxels right in front of the lens
RIM_SHADE = 0.7
OVERLAY_MODES = ("fill", "outline")
# Default (near, far) metres of the voxels drawn. Within 2.5 m of a camera lies mostly the ego's own
# body, and a 0.4 m voxel there outgrows MAX_HALF_SIZE_PX on a 400 px tile (drawn smaller than it
# is). No far limit: far voxels are small. (Near vegetation at 3-6 m still covers most of a side
# camera in 'fill'; that is what 'outline' is for.)
DEFAULT_DISTANCE_M = (2.5, math.inf)
# Outline mode: a depth step between neighbouring pixels bigger than this many voxels and this
# fraction of the depth starts a new region (one voxel to the next on a surface stays below both).
DEPTH_STEP_VOXELS = 3.0
DEPTH_STEP_FRACTION = 0.2
OUTLINE_PX = 2  # width of a region's border line (inside the region); one pixel is hard to see on a 400 px tile
# Taxonomy colours that look alike once blended at 60 % over a photo, replaced in camera overlays
# only (class name -> RGB). Truck purple blended over grey came within CIEDE2000 10 of driveable
# surface magenta, and 'others' slate within 7 of 'other_flat' grey; these stay >= 12 from every class.
OVERLAY_COLORS = {"truck": (80, 40, 220), "others": (50, 50, 60)}
# nuScenes layout: front row left-to-right, back row as seen when turning around.
NUSCENES_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


@dataclass
class Splats:
    """Projected voxels of one camera image, after the z-buffer: one entry per covered pixel."""

    rows: np.ndarray  # (P,) int64
    cols: np.ndarray  # (P,) int64
    colors: np.ndarray  # (P, 3) uint8, shaded
    depth: np.ndarray  # (P,) float64, metres along the optical axis
    labels: np.ndarray  # (P,) uint8, the voxel's label
    distance: np.ndarray  # (P,) float64, metres from the camera centre to the voxel centre


def check_overlay(mode: str, distance: tuple[float, float]) -> None:
    """Refuse an unknown mode or a distance range that is not 0 <= near < far (far may be inf)."""
    if mode not in OVERLAY_MODES:
        raise VisualizeError(f"unknown camera overlay '{mode}': use one of {', '.join(OVERLAY_MODES)}")
    near, far = distance
    if not (math.isfinite(near) and near >= 0 and not math.isnan(far) and far > near):
        raise VisualizeError(f"camera distance range {near:g}:{far:g} m must have 0 <= near < far")


def overlay_color_array(taxonomy: Taxonomy) -> np.ndarray:
    """(256, 3) uint8 colours of the camera overlays: ``taxonomy.color_array()`` with ``OVERLAY_COLORS``
    for the classes it names."""
    table = taxonomy.color_array().copy()
    for label, name in enumerate(taxonomy.class_names):
        if name in OVERLAY_COLORS:
            table[label] = OVERLAY_COLORS[name]
    return table


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


def _voxel_colors(layer: VoxelLayer, index: np.ndarray, colors: np.ndarray | None) -> np.ndarray:
    """(N, 3) voxel indices -> (N, 3) uint8 overlay colours, height-shaded unless the layer's colours
    already carry a meaning of their own (height ramp, error cases)."""
    table = overlay_color_array(layer.taxonomy) if colors is None else colors
    base = table[layer.labels[index[:, 0], index[:, 1], index[:, 2]]]
    return shade(base, height_shade(index[:, 2], layer.grid.shape[2])) if layer.height_shaded else base


def splat_voxels(layer: VoxelLayer, img_from_cam: np.ndarray, ego_from_cam: np.ndarray, width: int, height: int, *,
                 colors: np.ndarray | None = None, rim: bool = True) -> Splats:
    """Z-buffered squares of the layer's visible voxels in a ``width`` x ``height`` image.

    ``colors``: (256, 3) uint8 per label (default :func:`overlay_color_array`); ``rim``: darken the
    border of splats 5 pixels or wider.
    """
    index = np.argwhere(surface_mask(layer.occupied))  # (N, 3); interior voxels are always hidden
    centers = layer.grid.center_of(index)
    uv, depth = project_centers(centers, img_from_cam, ego_from_cam)
    voxel = float(max(layer.grid.voxel_size))
    half = np.minimum(np.round(0.5 * voxel * img_from_cam[0, 0] / np.maximum(depth, NEAR_M)), MAX_HALF_SIZE_PX).astype(np.int64)
    col, row = np.round(uv[:, 0]).astype(np.int64, copy=False), np.round(uv[:, 1]).astype(np.int64, copy=False)
    keep = (depth > NEAR_M) & (col + half >= 0) & (col - half < width) & (row + half >= 0) & (row - half < height)
    index, depth, half, col, row = index[keep], depth[keep], half[keep], col[keep], row[keep]
    distance = np.linalg.norm(centers[keep] - ego_from_cam[:3, 3], axis=1)  # (n,)
    labels = layer.labels[index[:, 0], index[:, 1], index[:, 2]]
    base = _voxel_colors(layer, index, colors)
    rim_colors = shade(base, RIM_SHADE) if rim else base

    rows, cols, color_list, depths, voxel_ids = [], [], [], [], []
    for size in np.unique(half):  # voxels of one splat size at a time, so each step is one dense offset grid
        sel = np.flatnonzero(half == size)
        offsets = np.arange(-size, size + 1)
        d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")  # (S, S)
        d_row, d_col = d_row.ravel(), d_col.ravel()
        on_rim = (np.maximum(np.abs(d_row), np.abs(d_col)) == size) & (size >= 2)  # (S*S,)
        rows.append((row[sel, None] + d_row[None]).ravel())  # (n * S*S,)
        cols.append((col[sel, None] + d_col[None]).ravel())
        depths.append(np.repeat(depth[sel], len(d_row)))
        voxel_ids.append(np.repeat(sel, len(d_row)))
        color_list.append(np.where(on_rim[None, :, None], rim_colors[sel, None], base[sel, None]).reshape(-1, 3))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return Splats(empty, empty, np.zeros((0, 3), dtype=np.uint8), np.zeros(0), np.zeros(0, dtype=np.uint8), np.zeros(0))
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    depth_all, colors_all, ids_all = np.concatenate(depths), np.concatenate(color_list), np.concatenate(voxel_ids)
    inside = (rows_all >= 0) & (rows_all < height) & (cols_all >= 0) & (cols_all < width)
    rows_all, cols_all, depth_all, colors_all, ids_all = (rows_all[inside], cols_all[inside], depth_all[inside],
                                                          colors_all[inside], ids_all[inside])
    # z-buffer: sort by pixel then depth; the first entry of each pixel is the nearest voxel.
    pixel = rows_all * width + cols_all
    order = np.lexsort((depth_all, pixel))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pixel[order][1:] != pixel[order][:-1]
    nearest = order[first]
    ids = ids_all[nearest]
    return Splats(rows_all[nearest], cols_all[nearest], colors_all[nearest], depth_all[nearest], labels[ids], distance[ids])


def splat_voxels_reference(
    layer: VoxelLayer, img_from_cam: np.ndarray, ego_from_cam: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Slow painter's-algorithm version: (H, W, 3) uint8 colour layer and (H, W) bool coverage, for tests."""
    index = np.argwhere(surface_mask(layer.occupied))
    centers = layer.grid.center_of(index)
    uv, depth = project_centers(centers, img_from_cam, ego_from_cam)
    table = overlay_color_array(layer.taxonomy)
    Z = layer.grid.shape[2]
    voxel = float(max(layer.grid.voxel_size))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    for n in np.argsort(-depth, kind="stable"):  # far to near: nearer voxels paint over farther ones
        if not depth[n] > NEAR_M:
            continue
        size = int(min(round(0.5 * voxel * img_from_cam[0, 0] / depth[n]), MAX_HALF_SIZE_PX))
        col, row = int(round(uv[n, 0])), int(round(uv[n, 1]))
        base = table[layer.labels[tuple(index[n])]]
        if layer.height_shaded:
            base = shade(base, height_shade(index[n, 2], Z))
        for r in range(row - size, row + size + 1):
            for c in range(col - size, col + size + 1):
                if 0 <= r < height and 0 <= c < width:
                    on_rim = size >= 2 and max(abs(r - row), abs(c - col)) == size
                    canvas[r, c] = shade(base, RIM_SHADE) if on_rim else base
                    covered[r, c] = True
    return canvas, covered


def outline_pixels(splats: Splats, drawn: np.ndarray, width: int, height: int, voxel: float) -> np.ndarray:
    """(P,) bool over ``splats``: the pixels of the drawn splats on a region's border.

    A drawn pixel is on a border when a pixel up to ``OUTLINE_PX`` straight above, below, left or
    right of it inside the image is not drawn, holds another label, or lies deeper or shallower by
    more than ``max(DEPTH_STEP_VOXELS * voxel, DEPTH_STEP_FRACTION * depth)``. Image borders are not
    region borders.
    """
    label = np.full((height, width), -1, dtype=np.int16)  # (H, W); -1: nothing drawn
    depth = np.zeros((height, width))
    label[splats.rows[drawn], splats.cols[drawn]] = splats.labels[drawn]
    depth[splats.rows[drawn], splats.cols[drawn]] = splats.depth[drawn]
    pad = OUTLINE_PX
    label_pad = np.pad(label, pad, mode="edge")  # edge padding: the image border is no region border
    depth_pad = np.pad(depth, pad, mode="edge")
    border = np.zeros((height, width), dtype=bool)
    steps = [(s * k, 0) for s in (-1, 1) for k in range(1, pad + 1)] + [(0, s * k) for s in (-1, 1) for k in range(1, pad + 1)]
    for d_row, d_col in steps:
        other_label = label_pad[pad + d_row : pad + d_row + height, pad + d_col : pad + d_col + width]
        other_depth = depth_pad[pad + d_row : pad + d_row + height, pad + d_col : pad + d_col + width]
        step = np.maximum(DEPTH_STEP_VOXELS * voxel, DEPTH_STEP_FRACTION * np.minimum(depth, other_depth))
        border |= (other_label != label) | (np.abs(other_depth - depth) > step)
    return drawn & border[splats.rows, splats.cols]


def overlay_occupancy(
    image: np.ndarray, layer: VoxelLayer, img_from_cam: np.ndarray, ego_from_cam: np.ndarray, *, alpha: float = 0.6,
    mode: str = "fill", distance: tuple[float, float] = DEFAULT_DISTANCE_M,
) -> np.ndarray:
    """(H, W, 3) uint8 photo -> the photo with the layer's voxels drawn on: ``fill`` blends them with
    weight ``alpha``, ``outline`` draws region borders opaque; only voxels ``distance`` = (near, far)
    metres from the camera are drawn."""
    check_overlay(mode, distance)
    height, width = image.shape[:2]
    splats = splat_voxels(layer, img_from_cam, ego_from_cam, width, height, rim=mode == "fill")
    drawn = (splats.distance >= distance[0]) & (splats.distance <= distance[1])  # (P,)
    if mode == "outline":
        drawn = outline_pixels(splats, drawn, width, height, float(max(layer.grid.voxel_size)))
        alpha = 1.0
    rows, cols = splats.rows[drawn], splats.cols[drawn]
    out = image.copy()
    under = out[rows, cols].astype(np.float64)
    out[rows, cols] = np.round(alpha * splats.colors[drawn] + (1.0 - alpha) * under).astype(np.uint8)
    return out


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Encoded JPEG/PNG bytes -> (H, W, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise VisualizeError(f"{where}: cannot decode the camera image ({err})") from None


def camera_overlay(photo: np.ndarray, camera: Camera, layer: VoxelLayer, *, width: int = 480, alpha: float = 0.6,
                   mode: str = "fill", distance: tuple[float, float] = DEFAULT_DISTANCE_M) -> np.ndarray:
    """One camera's photo resized to ``width`` pixels wide with the layer projected -> (h, width, 3) uint8."""
    scale = width / photo.shape[1]
    height = max(int(round(photo.shape[0] * scale)), 1)
    small = np.asarray(Image.fromarray(photo).resize((width, height), Image.BILINEAR))
    img_from_cam = resized_intrinsics(np.asarray(camera.intrinsic, dtype=np.float64), scale)
    return overlay_occupancy(small, layer, img_from_cam, np.asarray(camera.ego_from_cam, dtype=np.float64), alpha=alpha,
                             mode=mode, distance=distance)


def camera_mosaic(tiles: dict[str, np.ndarray], *, gap: int = 4, background: tuple[int, int, int] = (0, 0, 0),
                  labels: bool = True) -> np.ndarray:
    """Camera name -> (h, w, 3) tile; arranged in the nuScenes 2 x 3 layout when the names fit it,
    otherwise in rows of three in the given order -> one (H, W, 3) uint8 image. With ``labels`` each
    tile carries its camera's name in its top-left corner (light text on a dark box, readable on any
    photo; left out on tiles too small to hold it)."""
    layout = _mosaic_layout(list(tiles))
    tile_h = max(t.shape[0] for t in tiles.values())
    tile_w = max(t.shape[1] for t in tiles.values())
    columns = max(len(row) for row in layout)
    out = np.empty((len(layout) * (tile_h + gap) - gap, columns * (tile_w + gap) - gap, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    for r, row in enumerate(layout):
        for c, name in enumerate(row):
            tile = labelled(tiles[name], name) if labels else tiles[name]
            top, left = r * (tile_h + gap), c * (tile_w + gap)
            out[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return out


def _mosaic_layout(names: list[str]) -> list[list[str]]:
    """Rows of camera names: the nuScenes 2 x 3 layout when the names are its six, else rows of three."""
    if set(names) == {n for row in NUSCENES_LAYOUT for n in row}:
        return [list(row) for row in NUSCENES_LAYOUT]
    if not names:
        raise VisualizeError("no camera images to arrange")
    return [names[i : i + 3] for i in range(0, len(names), 3)]


def overlay_legends(layers: list[VoxelLayer], width: int) -> list[np.ndarray]:
    """Legend strips (one per taxonomy) of the classes drawn in ``layers``, in the overlay colours."""
    seen: dict[str, tuple[Taxonomy, set[int]]] = {}
    for layer in layers:
        taxonomy, present = seen.setdefault(layer.taxonomy.name, (layer.taxonomy, set()))
        present.update(layer.present_labels())
    return [legend(taxonomy, sorted(present), width, colors=overlay_color_array(taxonomy))
            for taxonomy, present in seen.values() if present]
