"""Camera visibility: the voxels the cameras see, up to the first surface along their pixel rays.

Rays leave each camera through pixel positions ``stride`` pixels apart and stop at the first
surface: the entry of an occupied voxel or, in a ground voxel, the crossing of the estimated ground
height (a ray that skims over the real, thin ground keeps going). A voxel is seen when its centre
projects into the image and lies no farther from the camera than the first surface of its ray
cell plus half a voxel diagonal -- the dense form of "voxels up to the first occupied one along
each pixel's ray", which the synthetic world's exact mask uses too. The mask is the union over
cameras.

The default stride puts neighbouring rays one voxel apart at the grid's side edge; near the camera
coarser rays do the same work (:func:`depth_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.binary.densify import ground_voxels
from b2s_core.binary.raycast import traverse
from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid
from b2s_core.records import Camera


def auto_stride(camera: Camera, grid: VoxelGrid) -> float:
    """Pixel stride at which neighbouring rays are one voxel apart at the grid's side edge.

    May be below one pixel for small images: a ray through any point of the image plane is a
    valid camera ray, and coverage of the voxels is what matters. Never above the image's shorter
    side, so that a long focal length on a tiny image still leaves rays (:func:`fitting_stride`).
    """
    focal = float(min(camera.intrinsic[0, 0], camera.intrinsic[1, 1]))
    return min(max(0.05, focal * min(grid.voxel_size) / grid_reach(grid)), float(min(camera.width, camera.height)))


def fitting_stride(camera: Camera, stride: float) -> float:
    """``stride`` if rays ``stride`` pixels apart leave at least one ray per image row and column.

    Rays sit at ``stride / 2 + k * stride`` (:func:`pixel_directions`), so a stride of twice the
    image's shorter side or more leaves none: that is refused in one line naming the option.
    """
    limit = 2 * min(camera.width, camera.height)
    if not stride < limit:
        raise B2SError(f"camera {camera.name} ({camera.width}x{camera.height} px): --camera-stride {stride:g} leaves no "
                       f"camera ray in the image; give a stride below {limit:g} px, or 'auto'")
    return stride


def grid_reach(grid: VoxelGrid) -> float:
    """Largest |x| or |y| of the grid: the distance at which ray spacing must reach one voxel."""
    return float(max(abs(v) for v in (*grid.range_min[:2], *grid.range_max[:2])))


def pixel_directions(camera: Camera, stride: float) -> tuple[np.ndarray, int, int]:
    """Unit ego-frame directions through pixel centres ``stride / 2 + k * stride``.

    Returns ((H', W', 3) directions, H', W').
    """
    us = np.arange(stride / 2, camera.width, stride)
    vs = np.arange(stride / 2, camera.height, stride)
    u, v = np.meshgrid(us, vs, indexing="xy")  # (H', W')
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=0)  # (3, P) homogeneous
    rays_cam = np.linalg.solve(camera.intrinsic, pixels)  # (3, P) camera frame, z = 1
    rays_ego = camera.ego_from_cam[:3, :3] @ rays_cam  # (3, P)
    rays_ego /= np.linalg.norm(rays_ego, axis=0, keepdims=True)
    return rays_ego.T.reshape(len(vs), len(us), 3), len(vs), len(us)


@dataclass
class _Scene:
    """What camera rays test against, flat over the grid's voxels."""

    occupied: np.ndarray  # (V,) bool
    ground_voxel: np.ndarray | None  # (V,) bool: the voxel holding its column's ground surface
    ground_height: np.ndarray | None  # (X * Y,) float64 metres, the column's ground surface
    margin: float  # metres seen behind the first surface


def _first_hit_params(origin: np.ndarray, directions: np.ndarray, near: float, far: float, scene: _Scene, grid: VoxelGrid) -> np.ndarray:
    """(R,) segment parameter of the first surface of each ray over [near, far] metres (inf: none)."""
    start = origin + directions * near  # (R, 3)
    stop = origin + directions * far
    voxels = traverse(start, stop, grid, ordered=False)
    occupied = scene.occupied[voxels.flat]
    t_hit = np.where(occupied, voxels.t, np.inf)  # an ordinary voxel stops the ray where it enters
    if scene.ground_voxel is not None:
        # A ground voxel stops the ray only where the ray meets the surface inside it: a ray that
        # skims over the ground keeps going, as it does over the real, thin ground.
        on_ground = np.flatnonzero(occupied & scene.ground_voxel[voxels.flat])
        ray = voxels.ray[on_ground]
        flat = voxels.flat[on_ground]
        _, _, Z = grid.shape
        height = scene.ground_height[flat // Z]
        rise = stop[ray, 2] - start[ray, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_plane = (height - start[ray, 2]) / rise
        crossing = start[ray] + (stop[ray] - start[ray]) * t_plane[:, None]
        cell = grid.index_of(crossing)
        inside = grid.inside(cell) & (t_plane >= 0) & (t_plane <= 1)
        same = np.zeros(on_ground.size, dtype=bool)
        same[inside] = grid.flat_of(cell[inside]) == flat[inside]
        t_hit[on_ground] = np.where(same, t_plane, np.inf)
    t_first = np.full(directions.shape[0], np.inf)
    hit = np.isfinite(t_hit)
    np.minimum.at(t_first, voxels.ray[hit], t_hit[hit])  # first surface per ray
    return t_first


def ray_depths(origin: np.ndarray, directions: np.ndarray, scene: _Scene, grid: VoxelGrid, near: float, far: float,
               chunk: int = 16384) -> np.ndarray:
    """(R,) metres along unit rays (R, 3) to their first surface between ``near`` and ``far`` (inf: none).

    A surface is the entry of an occupied voxel or, in a ground voxel, the crossing of the ground
    height.
    """
    depth = np.full(directions.shape[0], np.inf)
    if far <= near:
        return depth
    for first in range(0, directions.shape[0], chunk):  # chunks bound the ray-voxel table's memory
        t = _first_hit_params(origin, directions[first : first + chunk], near, far, scene, grid)
        depth[first : first + chunk] = near + t * (far - near)
    return depth


def depth_image(camera: Camera, scene: _Scene, grid: VoxelGrid, stride: float, levels: int = 4) -> np.ndarray:
    """(rows, cols) distance to the first surface through pixel positions ``stride`` apart.

    Coarse to fine: neighbouring rays only have to be about one voxel apart where they are, so
    the first stretch (up to reach / 2**(levels-1)) is traced with a stride 2**(levels-1) times
    coarser, and each following stretch doubles its far end and the ray density; a ray that hit
    something passes its depth to its children instead of tracing them. ``levels=1`` traces every
    ray over the whole grid: the straightforward reference.

    A coarse level is only as coarse as keeps its rays about one voxel apart at the far end of its
    stretch (the :func:`auto_stride` spacing times 2**k), which is what lets a ray that hit
    something speak for its children; a ``stride`` sparser than that is traced at every level as
    is (the reference's depths, stretch by stride). Coarse strides are also capped at the image's
    shorter side, so that a small image keeps a ray per row and column at every level.
    """
    origin = camera.ego_from_cam[:3, 3]
    far = float(np.linalg.norm(np.subtract(grid.range_max, grid.range_min))) + float(np.linalg.norm(origin))
    reach = grid_reach(grid)
    bounds = [0.0] + [reach / 2 ** (levels - 1 - i) for i in range(levels - 1)] + [far]
    stride = fitting_stride(camera, stride)
    one_voxel = min(stride, auto_stride(camera, grid))  # at the grid edge: the finest a level needs to be
    coarsest = max(stride, float(min(camera.width, camera.height)))
    depth_prev, stride_prev = None, None
    for level in range(levels):
        level_stride = min(max(stride, one_voxel * 2 ** (levels - 1 - level)), coarsest)
        directions, rows, cols = pixel_directions(camera, level_stride)
        depth = np.full((rows, cols), np.inf)
        if depth_prev is not None:
            # Each ray inherits the depth of the coarser ray whose pixel cell holds its pixel.
            parent_r = np.minimum(((np.arange(rows) + 0.5) * level_stride / stride_prev).astype(int), depth_prev.shape[0] - 1)
            parent_c = np.minimum(((np.arange(cols) + 0.5) * level_stride / stride_prev).astype(int), depth_prev.shape[1] - 1)
            depth = depth_prev[np.ix_(parent_r, parent_c)]
        alive = np.flatnonzero(~np.isfinite(depth))
        depth.ravel()[alive] = ray_depths(origin, directions.reshape(-1, 3)[alive], scene, grid, bounds[level], bounds[level + 1])
        depth_prev, stride_prev = depth, level_stride
    return depth_prev


_PROJECTIONS: dict = {}  # cameras sit still on the ego: the voxel -> pixel map is made once per rig


def _projection(camera: Camera, grid: VoxelGrid, stride: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels whose centre lies in the image: flat voxel index, flat cell of the ray grid, distance.

    Camera coordinates of voxel centres are affine in the voxel index, so they are built one x
    slice at a time from three small tables (float32), without materialising every centre.
    """
    key = (grid.to_json(), camera.intrinsic.tobytes(), camera.ego_from_cam.tobytes(), camera.width, camera.height, stride)
    if key not in _PROJECTIONS:
        if len(_PROJECTIONS) > 32:
            _PROJECTIONS.clear()
        X, Y, Z = grid.shape
        cam_from_ego = np.linalg.inv(camera.ego_from_cam)
        rotation = cam_from_ego[:3, :3]
        axes = [grid.range_min[a] + (np.arange(n) + 0.5) * grid.voxel_size[a] for a, n in enumerate(grid.shape)]
        along_x = (axes[0][:, None] * rotation[:, 0] + cam_from_ego[:3, 3]).astype(np.float32)  # (X, 3)
        along_y = (axes[1][:, None] * rotation[:, 1]).astype(np.float32)  # (Y, 3)
        along_z = (axes[2][:, None] * rotation[:, 2]).astype(np.float32)  # (Z, 3)
        plane = along_y[:, None, :] + along_z[None, :, :]  # (Y, Z, 3)
        cols = len(np.arange(stride / 2, camera.width, stride))
        rows = len(np.arange(stride / 2, camera.height, stride))
        intrinsic = camera.intrinsic
        fx, fy, cx, cy = (np.float32(v) for v in (intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2]))
        voxels, cells, distances = [], [], []
        for i in range(X):
            p = (plane + along_x[i]).reshape(-1, 3)  # (Y * Z, 3) camera frame
            front = np.flatnonzero(p[:, 2] > 1e-3)
            q = p[front]
            u = fx * q[:, 0] / q[:, 2] + cx
            v = fy * q[:, 1] / q[:, 2] + cy
            ok = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
            if not ok.any():
                continue
            voxels.append((front[ok] + i * Y * Z).astype(np.int32))
            row = np.minimum((v[ok] / stride).astype(np.int32), rows - 1)
            col = np.minimum((u[ok] / stride).astype(np.int32), cols - 1)
            cells.append(row * cols + col)
            distances.append(np.linalg.norm(q[ok], axis=1))
        empty = np.zeros(0, np.int32)
        # int32 / float32: ~12 bytes per voxel in view (a 512 x 512 x 40 grid: ~25 MB per camera).
        _PROJECTIONS[key] = (np.concatenate(voxels) if voxels else empty, np.concatenate(cells).astype(np.int32) if cells else empty,
                             np.concatenate(distances).astype(np.float32) if distances else np.zeros(0, np.float32))
    return _PROJECTIONS[key]


def camera_seen(camera: Camera, scene: _Scene, grid: VoxelGrid, stride: float | None = None, *, levels: int = 4) -> np.ndarray:
    """(X, Y, Z) bool: voxels one camera sees, up to the first surface along its pixel rays.

    A ray leaves the camera through pixel positions ``stride`` apart and finds the first surface
    (:func:`depth_image`); a voxel is seen when its centre projects into the cell of a ray and lies
    no farther from the camera than that ray's surface plus ``scene.margin``.
    """
    stride = float(stride) if stride else auto_stride(camera, grid)
    depth = depth_image(camera, scene, grid, stride, levels).ravel()  # (rows * cols,)
    voxel, cell, distance = _projection(camera, grid, stride)
    seen = np.zeros(grid.num_voxels, dtype=bool)
    seen[voxel[distance <= depth[cell] + scene.margin]] = True
    return seen.reshape(grid.shape)


def camera_mask(
    cameras: list[Camera],
    occupied: np.ndarray,
    grid: VoxelGrid,
    stride: float | None = None,
    *,
    ground_height: np.ndarray | None = None,
    levels: int = 4,
) -> np.ndarray:
    """(X, Y, Z) bool: the voxels some camera sees (union of :func:`camera_seen` over cameras).

    occupied: (X, Y, Z) bool; ground_height: (X, Y) metres of the ground surface per column (NaN:
    none), from :func:`b2s_core.binary.densify.ground_surface`. Voxels up to half a voxel diagonal
    behind the first surface count as seen, like the voxel that holds the surface.
    """
    ground_voxel = None
    heights = None
    if ground_height is not None:
        ground_voxel = (ground_voxels(ground_height, grid) & occupied).ravel()
        heights = np.nan_to_num(ground_height, nan=-np.inf).ravel()
    scene = _Scene(occupied.ravel(), ground_voxel, heights, 0.5 * float(np.linalg.norm(grid.voxel_size)))
    seen = np.zeros(grid.shape, dtype=bool)
    for camera in cameras:
        seen |= camera_seen(camera, scene, grid, stride, levels=levels)
    return seen
