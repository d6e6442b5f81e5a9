"""Ground completion: the ground surface between LiDAR scan lines.

A LiDAR's rings meet the ground ever farther apart with distance (at 40 m, nuScenes' rings land
~20 m apart), so even an aggregated scene leaves most far ground voxels empty while the cameras see
all of it. The ground is smooth, so we estimate its height per voxel column from the columns that
have it and fill the gaps (the role Poisson meshing plays in SurroundOcc's pipeline, at a tiny
fraction of the cost):

1. per column, the lowest point is a *ground sample* when it is at most half a voxel height (at
   least 0.15 m) above the lowest point within ``window`` columns (a wall's or a car's lowest point sits above the ground
   next to it and is not a sample) and not implausibly far above or below the ego's own ground
   (a slope of at most ``max_slope``);
2. columns without a sample take the mean height of the samples in a square window, with the
   smallest window (2, 4, 8, ... voxels, up to ``reach`` metres) holding at least ``min_support``;
3. the pipeline adds the voxel holding that height unless a LiDAR ray passed through it (observed
   free), and the camera mask treats ground voxels as a surface at that height (see
   :mod:`b2s_core.binary.camera_mask`).

Heights are continuous (metres), not voxel indices, so the surface is exact where it was seen.
All steps are box filters over the (X, Y) plane (integral images): O(X * Y) per window size.
"""

from __future__ import annotations

import numpy as np

from b2s_core.grids import VoxelGrid


def _box_sum(values: np.ndarray, radius: int) -> np.ndarray:
    """(X, Y) -> (X, Y) sum over the (2r+1)^2 window around each cell (clipped at the borders)."""
    X, Y = values.shape
    integral = np.zeros((X + 1, Y + 1), dtype=np.float64)
    integral[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    lo_x = np.clip(np.arange(X) - radius, 0, X)
    hi_x = np.clip(np.arange(X) + radius + 1, 0, X)
    lo_y = np.clip(np.arange(Y) - radius, 0, Y)
    hi_y = np.clip(np.arange(Y) + radius + 1, 0, Y)
    return (
        integral[hi_x][:, hi_y] - integral[lo_x][:, hi_y] - integral[hi_x][:, lo_y] + integral[lo_x][:, lo_y]
    )


def _box_min(values: np.ndarray, radius: int) -> np.ndarray:
    """(X, Y) -> (X, Y) minimum over the (2r+1)^2 window (separable sliding minimum)."""
    out = values
    for axis in (0, 1):
        padded = np.moveaxis(out, axis, 0)
        n = padded.shape[0]
        edge = np.full((radius,) + padded.shape[1:], np.inf)
        padded = np.concatenate([edge, padded, edge])
        best = padded[0:n].copy()
        for shift in range(1, 2 * radius + 1):
            np.minimum(best, padded[shift : shift + n], out=best)
        out = np.moveaxis(best, 0, axis)
    return out


def column_floor(points_ego: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """(N, 3) ego-frame points -> (X, Y) float64 lowest point height per column (NaN: no point)."""
    X, Y, _ = grid.shape
    cells = grid.index_of(points_ego)
    inside = grid.inside(cells)
    floor = np.full(X * Y, np.inf)
    np.minimum.at(floor, cells[inside, 0] * Y + cells[inside, 1], points_ego[inside, 2])
    floor[~np.isfinite(floor)] = np.nan
    return floor.reshape(X, Y)


def ground_surface(floor: np.ndarray, grid: VoxelGrid, *, reach: float = 12.0, window: int = 3, min_support: int = 3,
                   max_slope: float = 0.1, tolerance: float = 0.6) -> np.ndarray:
    """(X, Y) lowest point per column -> (X, Y) ground height in metres, NaN where unknown.

    Ground samples: columns whose lowest point is at most half a voxel height (at least 0.15 m)
    above the lowest one within ``window`` columns and within ``tolerance + max_slope * distance`` of the ego's own ground
    (z = 0 in the ego frame: the car stands on it), so that the bottom of a wall or a canopy whose
    ground was never seen is not taken for ground. The other columns within ``reach`` metres of
    enough samples get the mean of the samples in the smallest window (2, 4, 8, ... voxels)
    holding at least ``min_support``.
    """
    lowest = np.where(np.isfinite(floor), floor, np.inf)
    X, Y = floor.shape
    cx = grid.range_min[0] + (np.arange(X) + 0.5) * grid.voxel_size[0]
    cy = grid.range_min[1] + (np.arange(Y) + 0.5) * grid.voxel_size[1]
    distance = np.hypot(cx[:, None], cy[None, :])  # (X, Y) metres from the ego origin
    plausible = np.abs(np.where(np.isfinite(floor), floor, 0.0)) <= tolerance + max_slope * distance
    step = max(0.5 * grid.voxel_size[2], 0.15)  # metres a ground sample may rise above its neighbours
    sample = np.isfinite(floor) & plausible & (lowest <= _box_min(lowest, window) + step)
    height = np.where(sample, floor, np.nan)
    todo = ~sample
    max_radius = max(1, int(round(reach / min(grid.voxel_size[:2]))))
    radii = [r for r in (2, 4, 8, 16, 32, 64, 128) if r < max_radius] + [max_radius]
    weights = sample.astype(np.float64)
    weighted = np.where(sample, floor, 0.0)
    for radius in radii:
        if not todo.any():
            break
        support = _box_sum(weights, radius)
        ready = todo & (support >= min_support)
        if ready.any():
            height[ready] = _box_sum(weighted, radius)[ready] / support[ready]
            todo &= ~ready
    return height


def ground_voxels(height: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """(X, Y) ground height (NaN: none) -> (X, Y, Z) bool, the voxel holding the ground in each column."""
    X, Y, Z = grid.shape
    voxels = np.zeros((X, Y, Z), dtype=bool)
    known = np.isfinite(height)
    layer = np.floor((height[known] - grid.range_min[2]) / grid.voxel_size[2]).astype(np.int64)
    inside = (layer >= 0) & (layer < Z)
    i, j = np.nonzero(known)
    voxels[i[inside], j[inside], layer[inside]] = True
    return voxels
