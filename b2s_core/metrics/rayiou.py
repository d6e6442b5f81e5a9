"""RayIoU, the ray-based occupancy metric introduced by SparseOcc (Liu et al., CVPR 2024).

Definition (as in SparseOcc's public evaluation):

1. Query rays imitate a LiDAR: 1 degree azimuth steps, and elevations starting with ten steep
   beams at ``-(pi/2 - atan(k))``, k = 1..10, continued with the last spacing up to 0.21 rad
   (the top of the nuScenes LiDAR's field of view): 39 x 360 = 14,040 directions.
2. The rays start at several ego positions: the LiDAR origins of the frame itself and of the other
   frames of its scene, expressed in the frame's ego coordinates, kept when they lie at least
   1 m inside the grid in x and y; when more than 8 remain, 8 evenly spaced ones are used.
3. Each ray is marched through the ground truth and through the prediction (exact voxel traversal,
   Amanatides & Woo); it returns the class of the first non-free voxel it meets and the distance
   to where it enters that voxel (its depth).
4. Only rays whose ground truth hits a scored class count. For a class c: gt_c = rays whose GT
   class is c, pred_c = rays whose predicted class is c, tp_c(t) = rays with both classes c and
   |depth error| < t. IoU_c(t) = tp / (gt + pred - tp), for t = 1, 2, 4 m.
5. RayIoU@t is the mean over classes, RayIoU the mean over classes and thresholds.

``first_hits`` marches all rays of all grids at once (torch, CPU or CUDA, float64);
``first_hits_reference`` is the plain one-ray-at-a-time loop it is tested against.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from b2s_core.grids import VoxelGrid
from b2s_core.metrics.confusion import MetricsError

RAYIOU_THRESHOLDS = (1.0, 2.0, 4.0)  # metres, as in SparseOcc
MAX_ORIGINS = 8  # ego positions per frame
ORIGIN_MARGIN = 1.0  # metres an origin must lie inside the grid in x and y
TOP_ELEVATION = 0.21  # rad, upper edge of the nuScenes LiDAR's field of view


def lidar_ray_directions(azimuth_step_deg: float = 1.0) -> np.ndarray:
    """(R, 3) float64 unit ray directions in the ego frame (R = 39 x 360 = 14,040 for 1 degree steps)."""
    elevations = [-(math.pi / 2 - math.atan(k)) for k in range(1, 11)]
    while elevations[-1] < TOP_ELEVATION:
        elevations.append(elevations[-1] + (elevations[-1] - elevations[-2]))
    elevation = np.asarray(elevations)[:, None]  # (E, 1)
    azimuth = np.deg2rad(np.arange(0.0, 360.0, azimuth_step_deg))[None, :]  # (1, A)
    directions = np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation) + 0 * azimuth],
        axis=-1,
    )  # (E, A, 3)
    return directions.reshape(-1, 3)


def ray_origins(
    global_from_ego: np.ndarray,
    lidar_origins: np.ndarray,
    index: int,
    grid: VoxelGrid,
    max_origins: int = MAX_ORIGINS,
    margin: float = ORIGIN_MARGIN,
) -> np.ndarray:
    """The ego positions rays start from for frame ``index`` of a scene.

    global_from_ego: (T, 4, 4) poses of the scene's frames in time order; lidar_origins: (T, 3)
    each frame's LiDAR centre in its own ego frame. Returns (O, 3) float64, O <= max_origins,
    in the ego frame of frame ``index``.
    """
    poses = np.asarray(global_from_ego, dtype=np.float64)
    ego_from_global = np.linalg.inv(poses[index])
    centres = np.concatenate([np.asarray(lidar_origins, dtype=np.float64), np.ones((len(poses), 1))], axis=1)  # (T, 4)
    ref_ego_from_ego = ego_from_global[None] @ poses  # (T, 4, 4)
    origins = np.einsum("tij,tj->ti", ref_ego_from_ego, centres)[:, :3]  # (T, 3)
    low = np.asarray(grid.range_min[:2]) + margin
    high = np.asarray(grid.range_max[:2]) - margin
    keep = np.all((origins[:, :2] > low) & (origins[:, :2] < high), axis=1)
    origins = origins[keep]
    if len(origins) > max_origins:
        origins = origins[np.round(np.linspace(0, len(origins) - 1, max_origins)).astype(np.int64)]
    return origins


# -- ray marching --------------------------------------------------------------------------------
def _ray_start(origin: np.ndarray, direction: np.ndarray,
               grid: VoxelGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-ray entry into the grid, in voxel units. Shared by both marchers so they agree bit for bit.

    origin, direction: (N, 3) float64 metres / unit vectors. Returns p (N, 3) origin in voxel
    units, v (N, 3) direction in voxels per metre, t_enter (N,) metres, hits_grid (N,) bool.
    """
    size = np.asarray(grid.voxel_size)
    shape = np.asarray(grid.shape, dtype=np.float64)
    p = (origin - np.asarray(grid.range_min)) / size  # (N, 3)
    v = direction / size  # (N, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (0.0 - p) / v
        t1 = (shape - p) / v
    moving = v != 0
    t_low = np.where(moving, np.minimum(t0, t1), -np.inf)
    t_high = np.where(moving, np.maximum(t0, t1), np.inf)
    inside_still = np.all(moving | ((p >= 0) & (p < shape)), axis=1)  # a still axis must already be inside
    t_enter = np.maximum(t_low.max(axis=1), 0.0)
    t_exit = t_high.min(axis=1)
    return p, v, t_enter, inside_still & (t_enter < t_exit)


def first_hits(
    occupied: np.ndarray | torch.Tensor,
    origins: np.ndarray,
    directions: np.ndarray,
    grid: VoxelGrid,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """First occupied voxel along every ray, in G grids at once.

    occupied: (G, X, Y, Z) bool (e.g. ground truth and prediction stacked); origins (O, 3) and
    directions (R, 3) in the ego frame, metres; every origin is paired with every direction.
    Returns flat (G, O * R) int64 C-order voxel index of the first hit (-1 where the ray leaves the
    grid without a hit) and depth (G, O * R) float64 metres from the origin to where the ray enters
    that voxel (inf without a hit). Ray n = o * R + r.

    All rays advance one voxel per iteration (exact traversal); rays whose every grid has been hit,
    or which left the grid, are dropped from the working set (in batches) so that the cost follows
    the rays still travelling, not the longest one.
    """
    occ = torch.as_tensor(occupied, device=device)
    G, X, Y, Z = occ.shape
    if (X, Y, Z) != tuple(grid.shape):
        raise MetricsError(f"occupancy grids {(X, Y, Z)} do not match grid '{grid.name}' {grid.shape}")
    dev = occ.device
    occ_flat = occ.reshape(G, -1).bool()  # (G, X*Y*Z)
    origin = np.repeat(np.asarray(origins, dtype=np.float64), len(directions), axis=0)  # (N, 3)
    direction = np.tile(np.asarray(directions, dtype=np.float64), (len(origins), 1))  # (N, 3)
    N = len(origin)
    hit_flat = torch.full((G, N), -1, dtype=torch.int64, device=dev)
    depth = torch.full((G, N), math.inf, dtype=torch.float64, device=dev)
    rays = _Marching.start(*_ray_start(origin, direction, grid), G, (X, Y, Z), dev)
    last = X * Y * Z - 1

    while len(rays.ray):
        # Finished rays stay in the arrays until a quarter of them are finished (compacting
        # every step cost as much as the marching itself); they are masked by ``alive`` and their
        # index is clamped so that the lookup stays in bounds.
        hit_now = rays.pending & occ_flat[:, rays.flat.clamp(0, last)] & rays.alive  # (G, n)
        if bool(hit_now.any()):
            g_i, r_i = torch.nonzero(hit_now, as_tuple=True)
            hit_flat[g_i, rays.ray[r_i]] = rays.flat[r_i]
            depth[g_i, rays.ray[r_i]] = rays.t[r_i]
            rays.pending &= ~hit_now
            rays.alive &= rays.pending.any(dim=0)
        rays.advance()
        remaining = int(rays.alive.sum())
        if remaining == 0:
            break
        if remaining < 0.75 * len(rays.ray):
            rays.compact()
    return hit_flat.cpu().numpy(), depth.cpu().numpy()


@dataclass
class _Marching:
    """The n rays :func:`first_hits` still marches, one row each, all on one device. The march keeps
    the flat voxel index and, per axis, the voxels left before the grid's face: an advance changes
    one axis, so one gather tells whether the ray left the grid."""

    ray: torch.Tensor  # (n,) int64 ids of the rays (n = o * R + r)
    t: torch.Tensor  # (n,) float64 metres at which the current voxel is entered
    flat: torch.Tensor  # (n,) int64 C-order index of the current voxel
    flat_step: torch.Tensor  # (n, 3) int64 flat index change per advance along each axis
    left: torch.Tensor  # (n, 3) int64 voxels left before the grid's face along each axis
    t_delta: torch.Tensor  # (n, 3) float64 metres per voxel along each axis
    t_next: torch.Tensor  # (n, 3) float64 metres of the next boundary crossing along each axis
    alive: torch.Tensor  # (n,) bool: inside the grid with a grid still to hit
    pending: torch.Tensor  # (G, n) bool: grids not hit yet

    @classmethod
    def start(cls, p_np: np.ndarray, v_np: np.ndarray, t_enter_np: np.ndarray, hits_grid: np.ndarray, G: int,
              shape_xyz: tuple[int, int, int], dev: torch.device) -> _Marching:
        """The rays that enter the grid (``hits_grid``), in the voxel where they enter it; the other
        arguments as :func:`_ray_start` returns them."""
        X, Y, Z = shape_xyz
        f64 = dict(dtype=torch.float64, device=dev)
        ray = torch.as_tensor(np.flatnonzero(hits_grid), device=dev)  # (n,)
        p = torch.as_tensor(p_np[hits_grid], **f64)  # (n, 3) voxel units
        v = torch.as_tensor(v_np[hits_grid], **f64)  # (n, 3) voxels per metre
        t = torch.as_tensor(t_enter_np[hits_grid], **f64)  # (n,)
        shape = torch.tensor([X, Y, Z], device=dev)
        idx = torch.minimum(torch.floor(p + t[:, None] * v).long().clamp(min=0), shape - 1)  # (n, 3) first voxel
        step = torch.sign(v).long()  # (n, 3)
        t_delta = torch.where(v != 0, 1.0 / v.abs(), torch.full_like(v, math.inf))
        boundary = (idx + (step > 0).long()).to(torch.float64)
        t_next = torch.where(v != 0, (boundary - p) / v, torch.full_like(v, math.inf))
        strides = torch.tensor([Y * Z, Z, 1], device=dev)
        never = torch.full_like(idx, X + Y + Z)  # an axis the ray does not move along never runs out
        left = torch.where(step > 0, shape - 1 - idx, torch.where(step < 0, idx, never))
        return cls(ray=ray, t=t, flat=(idx * strides).sum(dim=1), flat_step=step * strides, left=left,
                   t_delta=t_delta, t_next=t_next, alive=torch.ones(len(ray), dtype=torch.bool, device=dev),
                   pending=torch.ones((G, len(ray)), dtype=torch.bool, device=dev))

    def advance(self) -> None:
        """Every ray to its next voxel along the axis whose boundary comes first; a ray leaving the grid dies."""
        axis = torch.argmin(self.t_next, dim=1, keepdim=True)  # (n, 1) first minimum on ties, as the reference
        self.t = self.t_next.gather(1, axis).squeeze(1)
        self.t_next.scatter_add_(1, axis, self.t_delta.gather(1, axis))
        self.flat += self.flat_step.gather(1, axis).squeeze(1)
        remaining_on_axis = self.left.gather(1, axis) - 1  # (n, 1)
        self.left.scatter_(1, axis, remaining_on_axis)
        self.alive &= remaining_on_axis.squeeze(1) >= 0

    def compact(self) -> None:
        """Drop the rays no longer alive."""
        keep = self.alive
        for name in ("ray", "t", "flat", "flat_step", "left", "t_delta", "t_next", "alive"):
            setattr(self, name, getattr(self, name)[keep])
        self.pending = self.pending[:, keep]


def first_hits_reference(
    occupied: np.ndarray, origins: np.ndarray, directions: np.ndarray, grid: VoxelGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference of :func:`first_hits`: each ray of each grid walked voxel by voxel in Python."""
    occupied = np.asarray(occupied, dtype=bool)
    G = occupied.shape[0]
    shape = grid.shape
    origin = np.repeat(np.asarray(origins, dtype=np.float64), len(directions), axis=0)
    direction = np.tile(np.asarray(directions, dtype=np.float64), (len(origins), 1))
    p_all, v_all, t_enter, hits_grid = _ray_start(origin, direction, grid)
    N = len(origin)
    hit_flat = np.full((G, N), -1, dtype=np.int64)
    depth = np.full((G, N), np.inf)
    for g in range(G):
        for n in range(N):
            if not hits_grid[n]:
                continue
            p, v, t = p_all[n], v_all[n], t_enter[n]
            idx = [min(max(int(math.floor(p[a] + t * v[a])), 0), shape[a] - 1) for a in range(3)]
            step = [1 if v[a] > 0 else (-1 if v[a] < 0 else 0) for a in range(3)]
            t_next, t_delta = [], []
            for a in range(3):
                if v[a] == 0:
                    t_next.append(math.inf)
                    t_delta.append(math.inf)
                else:
                    t_next.append((float(idx[a] + (1 if step[a] > 0 else 0)) - p[a]) / v[a])
                    t_delta.append(1.0 / abs(v[a]))
            while all(0 <= idx[a] < shape[a] for a in range(3)):
                if occupied[g, idx[0], idx[1], idx[2]]:
                    hit_flat[g, n] = (idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]
                    depth[g, n] = t
                    break
                a = int(np.argmin(t_next))
                t = t_next[a]
                idx[a] += step[a]
                t_next[a] += t_delta[a]
    return hit_flat, depth


# -- scoring ---------------------------------------------------------------------------------------
class RayIoUAccumulator:
    """Ray counts accumulated over a split; :meth:`result` gives per-class RayIoU in percent."""

    def __init__(self, num_labels: int, eval_classes: Sequence[int], free_index: int,
                 thresholds: Sequence[float] = RAYIOU_THRESHOLDS) -> None:
        self.num_labels = int(num_labels)
        self.eval_classes = tuple(eval_classes)
        self.free_index = int(free_index)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.gt_count = np.zeros(self.num_labels, dtype=np.int64)  # (K,)
        self.pred_count = np.zeros(self.num_labels, dtype=np.int64)  # (K,)
        self.tp = np.zeros((len(self.thresholds), self.num_labels), dtype=np.int64)  # (T, K)
        self.rays = 0

    def add_rays(self, gt_class: np.ndarray, gt_depth: np.ndarray, pred_class: np.ndarray,
                 pred_depth: np.ndarray) -> None:
        """Count one frame's rays: (N,) first-hit class (any value; free / 255 for no hit) and depth."""
        scored = np.isin(gt_class, self.eval_classes)  # rays whose ground truth hits a scored class
        gt_class, pred_class = gt_class[scored].astype(np.int64), pred_class[scored].astype(np.int64)
        error = np.abs(gt_depth[scored] - pred_depth[scored])
        K = self.num_labels
        self.rays += int(scored.sum())
        self.gt_count += np.bincount(gt_class, minlength=K)[:K]
        in_range = pred_class < K
        self.pred_count += np.bincount(pred_class[in_range], minlength=K)[:K]
        same = gt_class == pred_class
        for j, threshold in enumerate(self.thresholds):
            self.tp[j] += np.bincount(gt_class[same & (error < threshold)], minlength=K)[:K]

    def add_frame(
        self,
        gt_labels: np.ndarray,
        pred_labels: np.ndarray,
        origins: np.ndarray,
        grid: VoxelGrid,
        directions: np.ndarray | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        """Cast rays through one frame's (X, Y, Z) uint8 ground truth and prediction and count them.

        A voxel stops a ray when its label is not free (ground-truth 255 voxels stop it too, and
        such rays are not scored).
        """
        directions = lidar_ray_directions() if directions is None else directions
        if len(origins) == 0:
            return
        gt_t = torch.as_tensor(np.asarray(gt_labels), device=device)
        pred_t = torch.as_tensor(np.asarray(pred_labels), device=device)
        occupied = torch.stack([gt_t != self.free_index, pred_t != self.free_index])  # (2, X, Y, Z)
        flat, depth = first_hits(occupied, origins, directions, grid, device=device)
        gt_class = _class_at(gt_labels, flat[0], self.free_index)
        pred_class = _class_at(pred_labels, flat[1], self.free_index)
        self.add_rays(gt_class, depth[0], pred_class, depth[1])

    def per_class(self) -> np.ndarray:
        """(T, K) float64 IoU in percent; NaN for classes without rays on either side."""
        union = self.gt_count[None] + self.pred_count[None] - self.tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, 100.0 * self.tp / np.where(union > 0, union, 1), np.nan)

    def result(self) -> dict:
        """{'per_class': {threshold: (K,) array}, 'at': {threshold: mean}, 'mean': overall mean}."""
        table = self.per_class()[:, list(self.eval_classes)]  # (T, C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            at = {t: float(np.nanmean(row)) if not np.all(np.isnan(row)) else float("nan")
                  for t, row in zip(self.thresholds, table)}
            mean = float(np.nanmean(table)) if not np.all(np.isnan(table)) else float("nan")
        return {"per_class": dict(zip(self.thresholds, self.per_class())), "at": at, "mean": mean}


def _class_at(labels: np.ndarray, flat: np.ndarray, free_index: int) -> np.ndarray:
    """(N,) label of each ray's hit voxel; free where the ray hit nothing."""
    out = np.full(flat.shape, free_index, dtype=np.int64)
    hit = flat >= 0
    out[hit] = np.asarray(labels).reshape(-1)[flat[hit]]
    return out
