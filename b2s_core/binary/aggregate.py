"""Point aggregation for binary occupancy: ego-body removal, box assignment, static map, object models.

Frames: points arrive in a sweep's sensor frame and are moved to the global frame with
``global_from_ego @ ego_from_sensor``; object points are kept in box coordinates (``box_from_global``)
so that one object model per track can be pasted back at any box pose.

Everything that accumulates is deduplicated on a fine lattice (:class:`PointSet`), so memory grows
with the observed surface area, not with the number of sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.grids import VoxelGrid
from b2s_core.records import Box, LidarSweep


@dataclass(frozen=True)
class EgoBody:
    """The ego vehicle's body as an axis-aligned box in the ego frame (metres); its points are dropped."""

    min_xyz: tuple[float, float, float]
    max_xyz: tuple[float, float, float]

    def contains(self, points_ego: np.ndarray) -> np.ndarray:
        """(N, 3) ego-frame points -> (N,) bool."""
        return np.all((points_ego[:, :3] >= self.min_xyz) & (points_ego[:, :3] <= self.max_xyz), axis=1)


# The ego frame origin is the rear axle centre on the ground in both datasets. nuScenes' Renault
# Zoe (4.08 m x 1.73 m x 1.56 m, LiDAR on a roof bar up to ~1.9 m; the bar's own returns at the
# sensor are removed with the body); nuPlan's Chrysler Pacifica (5.18 m x 2.0 m x 1.78 m).
EGO_BODY_NUSCENES = EgoBody((-1.0, -1.0, -0.3), (3.3, 1.0, 2.0))
EGO_BODY_NUPLAN = EgoBody((-1.2, -1.15, -0.3), (4.1, 1.15, 2.0))


def transform(points: np.ndarray, a_from_b: np.ndarray) -> np.ndarray:
    """(N, >=3) points in b -> (N, 3) float64 points in a."""
    return points[:, :3] @ a_from_b[:3, :3].T + a_from_b[:3, 3]


def _yaw_of(rotation: np.ndarray) -> float:
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def interpolate_boxes(before: list[Box], t_before: int, after: list[Box], t_after: int, t: int) -> list[Box]:
    """The boxes at time ``t`` between two key frames (microseconds).

    Tracks seen at both key frames move linearly (centre) and turn along the shorter arc (yaw);
    roll and pitch are taken from the nearer key frame. Tracks seen at only one key frame stay
    where they were seen, so their points are still removed from the static scene.
    """
    if t_after <= t_before:
        return list(after or before)
    w = float(np.clip((t - t_before) / (t_after - t_before), 0.0, 1.0))
    by_track_after = {box.track_id: box for box in after}
    result: list[Box] = []
    for box in before:
        other = by_track_after.pop(box.track_id, None)
        if other is None:
            result.append(box)
            continue
        near = box if w < 0.5 else other
        pose = near.global_from_box.copy()
        yaw_a, yaw_b = _yaw_of(box.global_from_box), _yaw_of(other.global_from_box)
        turn = (yaw_b - yaw_a + np.pi) % (2 * np.pi) - np.pi
        yaw = yaw_a + w * turn
        # Replace the heading of the nearer pose by the interpolated one, keeping its tilt.
        spin = yaw - _yaw_of(near.global_from_box)
        c, s = np.cos(spin), np.sin(spin)
        pose[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ near.global_from_box[:3, :3]
        pose[:3, 3] = (1 - w) * box.global_from_box[:3, 3] + w * other.global_from_box[:3, 3]
        result.append(Box(pose, near.size, near.track_id, near.category, near.label))
    result.extend(by_track_after.values())
    return result


def assign_to_boxes(points_global: np.ndarray, boxes: list[Box], margin: float) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Split points between the static scene and the boxes.

    points_global: (N, 3). Each box is enlarged by ``margin`` metres on its sides and top (not
    below, so that the ground under an object stays static) to catch edge points.
    Returns (static (N,) bool, [(track_id, (M, 3) points in box coordinates), ...]).
    """
    static = np.ones(points_global.shape[0], dtype=bool)
    objects: list[tuple[str, np.ndarray]] = []
    if not boxes or points_global.shape[0] == 0:
        return static, objects
    # Sort by x once, then each box only looks at the points in its x extent.
    order = np.argsort(points_global[:, 0], kind="stable")
    xs = points_global[order, 0]
    for box in boxes:
        half = np.asarray(box.size, dtype=np.float64) / 2 + np.array([margin, margin, 0.0])
        reach = float(np.hypot(half[0], half[1]))
        cx, cy = box.global_from_box[0, 3], box.global_from_box[1, 3]
        lo, hi = np.searchsorted(xs, [cx - reach, cx + reach])
        if hi <= lo:
            continue
        candidates = order[lo:hi]
        candidates = candidates[np.abs(points_global[candidates, 1] - cy) <= reach]
        if candidates.size == 0:
            continue
        box_from_global = np.linalg.inv(box.global_from_box)
        local = transform(points_global[candidates], box_from_global)  # (C, 3) box frame
        inside = np.all(np.abs(local[:, :2]) <= half[:2], axis=1)
        inside &= (local[:, 2] >= -half[2]) & (local[:, 2] <= half[2] + margin)
        if inside.any():
            static[candidates[inside]] = False
            objects.append((box.track_id, local[inside]))
    return static, objects


def voxels_in_boxes(grid: VoxelGrid, boxes: list[Box], ego_from_global: np.ndarray, margin: float, samples: int = 1) -> np.ndarray:
    """(X, Y, Z) bool: voxels in a box enlarged by ``margin`` (sides and top); see :func:`voxels_in_extents`."""
    return voxels_in_extents(grid, [(ego_from_global @ box.global_from_box, -np.asarray(box.size) / 2 - [margin, margin, 0.0],
                                     np.asarray(box.size) / 2 + margin) for box in boxes], samples=samples)


def voxels_in_extents(grid: VoxelGrid, extents: list[tuple[np.ndarray, np.ndarray, np.ndarray]], samples: int = 1) -> np.ndarray:
    """(X, Y, Z) bool: voxels inside oriented boxes ``(ego_from_box (4, 4), low (3,), high (3,))``.

    ``samples == 1`` tests voxel centres; ``samples == s > 1`` tests s^3 points spread over the
    voxel out to 5 % of its size from its faces, so that a voxel the box partly overlaps counts
    but one it merely touches does not.
    """
    inside = np.zeros(grid.shape, dtype=bool)
    shape = np.asarray(grid.shape)
    size = np.asarray(grid.voxel_size)
    offsets = np.zeros((1, 3)) if samples == 1 else np.stack(
        np.meshgrid(*[np.linspace(-0.45, 0.45, samples)] * 3, indexing="ij"), -1).reshape(-1, 3) * size
    for ego_from_box, low_corner, high_corner in extents:
        low_corner, high_corner = np.asarray(low_corner, float), np.asarray(high_corner, float)
        corners = np.stack(np.meshgrid(*zip(low_corner, high_corner), indexing="ij"), -1).reshape(-1, 3)
        cells = grid.index_of(transform(corners, ego_from_box))  # (8, 3) voxel cells of the corners
        low = np.clip(cells.min(axis=0), 0, shape - 1)
        high = np.clip(cells.max(axis=0), 0, shape - 1)
        if np.any(cells.max(axis=0) < 0) or np.any(cells.min(axis=0) >= shape):
            continue
        index = np.stack(np.meshgrid(*[np.arange(lo, hi + 1) for lo, hi in zip(low, high)], indexing="ij"), -1).reshape(-1, 3)
        probes = (grid.center_of(index)[:, None, :] + offsets[None]).reshape(-1, 3)  # (C * S, 3)
        local = transform(probes, np.linalg.inv(ego_from_box)).reshape(len(index), len(offsets), 3)
        keep = np.all((local >= low_corner) & (local <= high_corner), axis=2).any(axis=1)
        inside[tuple(index[keep].T)] = True
    return inside


class PointSet:
    """Points deduplicated on a cubic lattice of ``resolution`` metres (the first point of a cell stays).

    Appends are buffered and merged when the buffer outgrows the merged set (and at least 200k
    points), so that adding S sweeps costs O(total log total) rather than O(S * total) and memory
    stays within a small factor of the deduplicated set.
    """

    def __init__(self, resolution: float):
        self.resolution = float(resolution)
        self._merged = np.zeros((0, 3), dtype=np.float64)
        self._pending: list[np.ndarray] = []
        self._pending_count = 0

    def add(self, points: np.ndarray) -> None:
        """points: (N, 3) metres."""
        if points.shape[0] == 0:
            return
        self._pending.append(np.asarray(points[:, :3], dtype=np.float64))
        self._pending_count += self._pending[-1].shape[0]
        if self._pending_count > max(self._merged.shape[0], 200_000):
            self._merge()

    def points(self) -> np.ndarray:
        """(M, 3) float64 deduplicated points."""
        self._merge()
        return self._merged

    def __len__(self) -> int:
        return self.points().shape[0]

    def _merge(self) -> None:
        if self._pending:
            self._merged = self._dedupe(np.concatenate([self._merged, *self._pending]))
            self._pending, self._pending_count = [], 0

    def _dedupe(self, points: np.ndarray) -> np.ndarray:
        cells = np.floor(points / self.resolution).astype(np.int64)
        # 21 bits per axis: +-1 million cells, i.e. +-10 km at 1 cm; plenty for one scene.
        key = ((cells[:, 0] & 0x1FFFFF) << 42) | ((cells[:, 1] & 0x1FFFFF) << 21) | (cells[:, 2] & 0x1FFFFF)
        _, first = np.unique(key, return_index=True)
        return points[np.sort(first)]


@dataclass
class SweepPoints:
    """One sweep after ego-body removal, in the global frame."""

    timestamp: int
    origin_global: np.ndarray  # (3,) sensor centre
    points_global: np.ndarray  # (N, 3) float64
    static: np.ndarray | None = None  # (N,) bool, outside every box (None until assigned)


def load_sweep(sweep: LidarSweep, ego_body: EgoBody) -> SweepPoints:
    """Load a sweep's points, drop the ego body's returns, move them to the global frame."""
    raw = np.asarray(sweep.load())
    points_ego = transform(raw, sweep.ego_from_sensor)  # (N, 3)
    points_ego = points_ego[np.isfinite(points_ego).all(axis=1) & ~ego_body.contains(points_ego)]
    global_from_sensor = sweep.global_from_ego @ sweep.ego_from_sensor
    return SweepPoints(
        timestamp=int(sweep.timestamp),
        origin_global=global_from_sensor[:3, 3].copy(),
        points_global=transform(points_ego, sweep.global_from_ego),
    )
