"""Exact ground truth on a voxel grid: the solid world's semantic occupancy (the truth file's, for scoring).

Occupancy is exact: a voxel is occupied when its interior overlaps a shape's interior (separating
axis test for boxes, closest-point tests for cylinders and spheres) or the ground slab
``GROUND_THICKNESS`` metres below z = 0. When several shapes share a voxel the label with the
higher :data:`PRIORITY` wins (objects over scenery over ground), as in the Occ3D labels where a car
standing on the road owns its bottom voxels. :func:`exact_camera_visibility` is the exact world's
camera visibility, for scoring. The label files are made from the LiDAR instead, with the visibility
masks of the Occ3D rules (:mod:`b2s_core.synth.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.grids import VoxelGrid
from b2s_core.synth.primitives import CYLINDER, SPHERE, Primitives

FREE = 17  # Occ3D free
GROUND_THICKNESS = 0.15  # metres of solid ground below z = 0 (thinner than every preset's voxel)


@dataclass
class OccupancyTruth:
    """Ground truth of one frame on one grid, all (X, Y, Z) in the ego frame."""

    semantics: np.ndarray  # uint8 Occ3D labels, FREE where empty
    objects: np.ndarray  # bool: occupied by an annotated object (dynamic part)
    instance: np.ndarray  # int32 track id of the object owning the voxel, -1 elsewhere

    @property
    def occupied(self) -> np.ndarray:
        return self.semantics != FREE


def semantic_occupancy(prims_ego: Primitives, ground_label, grid: VoxelGrid) -> OccupancyTruth:
    """Shapes in the ego frame and ``ground_label(xy_ego (N, 2)) -> (N,) uint8`` -> exact labels."""
    X, Y, Z = grid.shape
    origin, size = grid.origin, np.asarray(grid.voxel_size)
    semantics = np.full((X, Y, Z), FREE, dtype=np.uint8)
    instance = np.full((X, Y, Z), -1, dtype=np.int32)
    # 1. the ground slab (-GROUND_THICKNESS, 0) in every column
    z_lo = origin[2] + np.arange(Z) * size[2]
    layers = np.flatnonzero((z_lo < 0.0) & (z_lo + size[2] > -GROUND_THICKNESS))
    if layers.size:
        cx = origin[0] + (np.arange(X) + 0.5) * size[0]
        cy = origin[1] + (np.arange(Y) + 0.5) * size[1]
        centers = np.stack(np.meshgrid(cx, cy, indexing="ij"), axis=-1).reshape(-1, 2)  # (X * Y, 2)
        semantics[:, :, layers] = ground_label(centers).reshape(X, Y, 1)
    # 2. shapes, scenery first so that objects overwrite it
    lo, hi = prims_ego.bounds()
    first = np.floor((lo - origin) / size).astype(np.int64)
    last = np.ceil((hi - origin) / size).astype(np.int64)  # exclusive
    first = np.clip(first, 0, grid.shape)
    last = np.clip(last, 0, grid.shape)
    order = np.argsort(prims_ego.instance >= 0, kind="stable")
    for p in order:
        (i0, j0, k0), (i1, j1, k1) = first[p], last[p]
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        inside = _overlap(prims_ego, p, origin, size, (i0, j0, k0), (i1, j1, k1))
        block = semantics[i0:i1, j0:j1, k0:k1]
        block[inside] = prims_ego.label[p]
        iblock = instance[i0:i1, j0:j1, k0:k1]
        iblock[inside] = prims_ego.instance[p]
    return OccupancyTruth(semantics, instance >= 0, instance)


def _overlap(prims, p, origin, size, first, last) -> np.ndarray:
    """(I, J, K) bool: which voxels of the index block [first, last) overlap shape p's interior."""
    axes = [origin[a] + (np.arange(first[a], last[a]) + 0.5) * size[a] for a in range(3)]
    half_v = size / 2
    cx, cy, cz = prims.center[p]
    hx, hy, hz = prims.half[p]
    dx = axes[0][:, None] - cx  # (I, 1)
    dy = axes[1][None, :] - cy  # (1, J)
    dz = axes[2] - cz  # (K,)
    kind = prims.kind[p]
    if kind == SPHERE:
        ex = np.maximum(np.abs(dx) - half_v[0], 0.0)[:, :, None]
        ey = np.maximum(np.abs(dy) - half_v[1], 0.0)[:, :, None]
        ez = np.maximum(np.abs(dz) - half_v[2], 0.0)[None, None, :]
        return ex**2 + ey**2 + ez**2 < hx**2
    z_ok = np.abs(dz) < hz + half_v[2]  # (K,)
    if kind == CYLINDER:
        ex = np.maximum(np.abs(dx) - half_v[0], 0.0)
        ey = np.maximum(np.abs(dy) - half_v[1], 0.0)
        xy_ok = ex**2 + ey**2 < hx**2
    else:  # BOX (every other kind returned above): 2D separating axes (world x, world y, box x, box y)
        c, s = np.cos(prims.yaw[p]), np.sin(prims.yaw[p])
        ac, as_ = abs(c), abs(s)
        xy_ok = (np.abs(dx) < half_v[0] + hx * ac + hy * as_) & (np.abs(dy) < half_v[1] + hx * as_ + hy * ac)
        xy_ok &= np.abs(c * dx + s * dy) < hx + half_v[0] * ac + half_v[1] * as_
        xy_ok &= np.abs(-s * dx + c * dy) < hy + half_v[0] * as_ + half_v[1] * ac
    return xy_ok[:, :, None] & z_ok[None, None, :]


def exact_camera_visibility(grid: VoxelGrid, cameras: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """(X, Y, Z) bool: voxels whose centre lies in front of the true surface some pixel sees, for scoring.

    ``cameras``: (intrinsic (3, 3), ego_from_cam (4, 4), distance (H, W) metres along each pixel's
    ray to the rendered surface, inf for sky). A voxel counts when its centre projects into the image
    no farther along the pixel's ray than the surface plus half a voxel diagonal. This is the exact
    world's visibility, kept in the truth file to score built occupancy where the cameras truly see;
    the label files' mask_camera follows the Occ3D rule on the labels' voxels instead
    (:func:`b2s_core.binary.camera_mask.camera_mask`, shared with build-binary), which a grazed voxel
    stops entirely: the two agree on 84-87 % of the voxels.
    """
    margin = 0.5 * float(np.linalg.norm(grid.voxel_size))
    seen = np.zeros(grid.num_voxels, dtype=bool)
    for intrinsic, ego_from_cam, distance in cameras:
        voxel, pixel, voxel_distance = _projection(grid, intrinsic, ego_from_cam, distance.shape)
        seen[voxel[voxel_distance <= distance.reshape(-1)[pixel] + margin]] = True
    return seen.reshape(grid.shape)


_PROJECTIONS: dict = {}  # cameras are fixed on the ego: the voxel -> pixel map is computed once per rig


def _projection(grid: VoxelGrid, intrinsic: np.ndarray, ego_from_cam: np.ndarray, shape: tuple[int, int]):
    """Flat indices of the voxels whose centre lies in the image, their pixel (flat) and distance."""
    key = (grid.to_json(), intrinsic.tobytes(), ego_from_cam.tobytes(), tuple(shape))
    if key not in _PROJECTIONS:
        if len(_PROJECTIONS) > 64:
            _PROJECTIONS.clear()
        H, W = shape
        centers = grid.centers().reshape(-1, 3)
        cam_from_ego = np.linalg.inv(ego_from_cam)
        p = centers @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]  # (M, 3) camera frame
        voxel = np.flatnonzero(p[:, 2] > 0.1)
        q = p[voxel]
        u = np.floor(intrinsic[0, 0] * q[:, 0] / q[:, 2] + intrinsic[0, 2]).astype(np.int64)
        v = np.floor(intrinsic[1, 1] * q[:, 1] / q[:, 2] + intrinsic[1, 2]).astype(np.int64)
        ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        _PROJECTIONS[key] = (voxel[ok], v[ok] * W + u[ok], np.linalg.norm(q[ok], axis=1))
    return _PROJECTIONS[key]
