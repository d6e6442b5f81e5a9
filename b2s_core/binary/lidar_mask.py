"""LiDAR visibility: which voxels the rays of a frame observed, hit, and may carve.

Rules (also in docs/build-binary.md):

* every ray runs from its sweep's sensor centre to its point, both in the key frame's ego frame;
* the voxel holding the point is *hit* (observed, occupied);
* the voxels the ray traverses before it are *passed* (observed free) -- except the ones in the
  ray's *guard zone*: those it enters less than ``near`` metres before its end point, or, for a
  descending ray, less than ``height`` metres above its end point. A ray that ends on the ground
  runs inside the ground's voxel layer for ``height / sin(descent)`` metres before its end (many
  metres for the near-horizontal rays of distant ground), and those voxels hold ground that the
  sparse scan lines simply missed; counting them free would punch holes in the ground. The same
  holds for the voxel beside the end voxel on any surface hit at a shallow angle;
* ``observed = passed | hit``; voxels no ray reached are unobserved;
* occupied wins: a voxel that is hit stays occupied whatever passes through it (applied in
  :mod:`b2s_core.binary.pipeline`, where passed voxels also carve stale aggregated points).

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.binary.raycast import traverse
from b2s_core.grids import VoxelGrid


@dataclass(frozen=True)
class GrazingGuard:
    """The zone before a ray's end in which it frees nothing (None: derived from the grid)."""

    near: float | None = None  # metres before the end point; None = the voxel diagonal
    height: float | None = None  # metres above the end point (descending rays); None = 1.25 voxel heights

    def resolved(self, grid: VoxelGrid) -> tuple[float, float]:
        near = self.near if self.near is not None else float(np.linalg.norm(grid.voxel_size))
        height = self.height if self.height is not None else 1.25 * grid.voxel_size[2]
        return near, height


@dataclass
class LidarVisibility:
    """(X, Y, Z) bool grids of one key frame."""

    passed: np.ndarray  # observed free (outside every ray's guard zone)
    hit: np.ndarray  # observed occupied

    @property
    def observed(self) -> np.ndarray:
        return self.passed | self.hit


def guard_parameter(origins: np.ndarray, ends: np.ndarray, guard: GrazingGuard, grid: VoxelGrid) -> np.ndarray:
    """(R,) segment parameter from which each ray is in its guard zone (voxels entered at t >= it)."""
    near, height = guard.resolved(grid)
    direction = ends - origins  # (R, 3)
    length = np.linalg.norm(direction, axis=1)
    drop = -direction[:, 2]  # metres the ray descends
    with np.errstate(divide="ignore", invalid="ignore"):
        by_near = 1.0 - near / length
        by_height = np.where(drop > 0, 1.0 - height / drop, 1.0)
    return np.clip(np.minimum(by_near, by_height), 0.0, 1.0)


def dedupe_rays(origins: np.ndarray, ends: np.ndarray, grid: VoxelGrid, group: np.ndarray) -> np.ndarray:
    """Indices of one ray per (group, end voxel), the end clipped to the grid box.

    origins, ends: (R, 3); group: (R,) int, e.g. the sweep of each ray (rays of one group share
    an origin). Rays of one group ending in the same voxel pass through nearly the same voxels, so
    tracing one of them saves most of the work near the sensor, where points are densest.
    """
    low, high = grid.origin, np.asarray(grid.range_max)
    direction = ends - origins
    # Where the ray leaves the grid box (t <= 1): rays ending outside are keyed by their exit.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_exit = np.where(direction > 0, (high - origins) / direction, np.where(direction < 0, (low - origins) / direction, np.inf))
    t = np.clip(t_exit.min(axis=1), 0.0, 1.0)
    clipped = origins + direction * t[:, None]
    cell = np.clip(grid.index_of(clipped), 0, np.asarray(grid.shape) - 1)
    key = grid.flat_of(cell) + np.int64(grid.num_voxels) * group.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    return np.sort(first)


def lidar_visibility(
    origins: np.ndarray,
    ends: np.ndarray,
    grid: VoxelGrid,
    *,
    guard: GrazingGuard = GrazingGuard(),
    chunk: int = 16384,
) -> LidarVisibility:
    """Trace rays ``origins[r] -> ends[r]`` (R, 3), ego frame metres, into visibility grids."""
    num = grid.num_voxels
    passed = np.zeros(num, dtype=bool)
    hit = np.zeros(num, dtype=bool)
    end_cells = grid.index_of(ends)
    end_inside = grid.inside(end_cells)
    hit[grid.flat_of(end_cells[end_inside])] = True
    t_guard = guard_parameter(origins, ends, guard, grid)
    for first in range(0, len(origins), chunk):
        stop = first + chunk
        voxels = traverse(origins[first:stop], ends[first:stop], grid, ordered=False)
        # With the default guard a ray's own end voxel lies in its guard zone; with a smaller
        # ``near`` it may be passed as well, and then hit wins wherever the two meet.
        free = voxels.t < t_guard[voxels.ray + first]
        passed[voxels.flat[free]] = True
    shape = grid.shape
    return LidarVisibility(passed=passed.reshape(shape), hit=hit.reshape(shape))
