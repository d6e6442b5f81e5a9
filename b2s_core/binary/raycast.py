"""Voxel traversal of line segments (Amanatides & Woo 3D DDA), fast and reference.

Both tracers answer the same question: which voxels of a :class:`~b2s_core.grids.VoxelGrid` does
the segment ``origin -> end`` pass through, inside the grid? A voxel counts when the open segment
crosses its interior; the voxel holding the end point is included (when it lies in the grid).

* :func:`traverse_reference` is the textbook DDA: one Python loop per ray that steps to the next
  voxel boundary on the axis whose boundary is nearest. Slow (about a microsecond per voxel per
  ray in pure Python), obviously correct, used in tests and as the benchmark baseline.
* :func:`traverse` gives the same voxels for all rays at once with NumPy, without a per-ray loop.
  A segment enters a new voxel exactly where it crosses a grid plane; the planes an axis crosses
  are the integers between the (voxel-unit) start and end coordinates of that axis, so they can
  be enumerated as a ragged ``arange`` per ray and axis. At each crossing the voxel entered is the
  plane's index on the crossing axis (or one less, when stepping backwards) and ``floor`` of the
  position on the other two axes. The voxel sequence is the same as the DDA's; only the order of
  the output differs (sorted by ray, then axis, then parameter), and each entry carries its
  parameter ``t`` so that callers can order or cut rays themselves.

Ties (a segment crossing two planes at the same point, i.e. through a voxel edge) have measure
zero for real data; there the two tracers may pick different but adjacent voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.grids import VoxelGrid


@dataclass
class RayVoxels:
    """The voxels a set of rays traverses, one entry per (ray, voxel) pair.

    When ordered, entries are grouped by ray (``ray`` is non-decreasing) but not sorted along a
    ray: sort by ``t`` within a ray to get the traversal order.
    """

    ray: np.ndarray  # (T,) int64: which ray (index into the origins / ends given)
    t: np.ndarray  # (T,) float64: segment parameter in [0, 1] where the ray enters the voxel
    flat: np.ndarray  # (T,) int64: C-order flat index of the voxel in the grid

    def __len__(self) -> int:
        return int(self.ray.shape[0])


def _clip_to_grid(start: np.ndarray, delta: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab clipping of segments ``start + t * delta``, t in [0, 1], to the box [0, shape].

    start, delta: (R, 3) in voxel units -> t0, t1: (R,) with t0 >= t1 for segments that miss.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low = (0.0 - start) / delta  # (R, 3)
        t_high = (shape - start) / delta
    t_enter = np.minimum(t_low, t_high)
    t_leave = np.maximum(t_low, t_high)
    # An axis with no motion constrains nothing if the segment lies inside its slab, else everything.
    still = delta == 0
    inside_slab = (start >= 0) & (start < shape)
    t_enter = np.where(still, np.where(inside_slab, -np.inf, np.inf), t_enter)
    t_leave = np.where(still, np.where(inside_slab, np.inf, -np.inf), t_leave)
    t0 = np.maximum(t_enter.max(axis=1), 0.0)
    t1 = np.minimum(t_leave.min(axis=1), 1.0)
    return t0, t1


def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """counts (R,) -> (owner (T,), k (T,)): for each r, k runs 0..counts[r]-1."""
    counts = np.maximum(counts, 0)
    owner = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts  # (R,) offset of each ray's first entry
    k = np.arange(owner.shape[0], dtype=np.int64) - starts[owner]
    return owner, k


@dataclass
class _Segments:
    """The segments of :func:`traverse` that pass through the grid, in voxel units."""

    hits: np.ndarray  # (R',) int64 index of each among the rays given
    start: np.ndarray  # (R', 3) float64 segment start (the origin)
    delta: np.ndarray  # (R', 3) float64 end - start
    t0: np.ndarray  # (R',) float64 segment parameter where it enters the grid
    p0: np.ndarray  # (R', 3) float64 entry point, clipped to the grid box
    p1: np.ndarray  # (R', 3) float64 exit point, clipped to the grid box


def _segments_in_grid(origins: np.ndarray, ends: np.ndarray, grid: VoxelGrid) -> _Segments:
    """origins, ends (R, 3) metres -> the segments that cross the grid, clipped to it."""
    shape = np.asarray(grid.shape, dtype=np.int64)
    voxel = np.asarray(grid.voxel_size, dtype=np.float64)
    start = (np.asarray(origins, dtype=np.float64)[:, :3] - grid.origin) / voxel  # (R, 3) voxel units
    stop = (np.asarray(ends, dtype=np.float64)[:, :3] - grid.origin) / voxel
    delta = stop - start
    t0, t1 = _clip_to_grid(start, delta, shape.astype(np.float64))
    hits = np.flatnonzero(t1 > t0)  # zero-length segments inside the grid have t0 = 0 < t1 = 1
    start, delta, t0, t1 = start[hits], delta[hits], t0[hits], t1[hits]
    p0 = np.clip(start + delta * t0[:, None], 0, shape)  # (R', 3) clipped entry point
    p1 = np.clip(start + delta * t1[:, None], 0, shape)  # (R', 3) clipped exit point
    return _Segments(hits, start, delta, t0, p0, p1)


def traverse(origins: np.ndarray, ends: np.ndarray, grid: VoxelGrid, *, ordered: bool = True) -> RayVoxels:
    """All (ray, voxel) pairs of segments ``origins[r] -> ends[r]`` inside ``grid``.

    origins, ends: (R, 3) metres in the grid's frame. With ``ordered`` the entries are grouped by
    ray; without, they come axis by axis (cheaper when only the set of voxels matters). Memory is
    about 100 bytes per traversed voxel: split large ray sets into chunks (as
    :func:`b2s_core.binary.lidar_mask.lidar_visibility` does).
    """
    shape = np.asarray(grid.shape, dtype=np.int64)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)  # C order over (X, Y, Z)
    seg = _segments_in_grid(origins, ends, grid)
    # A ray that starts exactly on a plane and moves backwards is in the lower voxel at once.
    first_voxel = np.where(seg.delta < 0, np.ceil(seg.p0) - 1, np.floor(seg.p0)).astype(np.int64)  # (R', 3)
    first_voxel = np.clip(first_voxel, 0, shape - 1)
    rays = [seg.hits]
    params = [seg.t0]
    flats = [first_voxel @ strides]
    for axis in range(3):
        crossings = _plane_crossings(seg, axis, shape, strides)
        if crossings is not None:
            owner, t, flat = crossings
            rays.append(seg.hits[owner])
            params.append(t)
            flats.append(flat)
    ray = np.concatenate(rays)
    t = np.concatenate(params)
    flat = np.concatenate(flats)
    if ordered:
        order = np.argsort(ray, kind="stable")  # group by ray; stable keeps each axis' entries in order
        ray, t, flat = ray[order], t[order], flat[order]
    return RayVoxels(ray=ray, t=t, flat=flat)


def _plane_crossings(seg: _Segments, axis: int, shape: np.ndarray,
                     strides: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The voxels the segments enter by crossing a plane of ``axis``: owner (T,) index into the
    segments, t (T,) parameter of the crossing, flat (T,) voxel index; None when no segment crosses one."""
    start, delta, p0, p1 = seg.start, seg.delta, seg.p0, seg.p1
    forward = delta[:, axis] > 0
    backward = delta[:, axis] < 0
    # Integer planes strictly between the entry and exit coordinate of this axis.
    low = np.where(forward, p0[:, axis], p1[:, axis])
    high = np.where(forward, p1[:, axis], p0[:, axis])
    count = (np.ceil(high) - 1 - np.floor(low)).astype(np.int64)
    count[~(forward | backward)] = 0
    count = np.maximum(count, 0)
    if not count.any():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        t_step = np.abs(1.0 / delta[:, axis])  # (R',) parameter between two planes of this axis
    # Per ray: the first plane crossed, its parameter, and the entered voxel's index on this axis.
    step = np.where(forward, 1, -1)
    first_plane = np.where(forward, np.floor(p0[:, axis]) + 1, np.ceil(p0[:, axis]) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_first = (first_plane - start[:, axis]) / delta[:, axis]
    entered_first = first_plane.astype(np.int64) - backward  # stepping backwards enters plane - 1
    owner, k = _ragged_arange(count)  # (T,), (T,)
    t = t_first[owner] + k * t_step[owner]  # (T,)
    flat = (entered_first * strides[axis])[owner] + k * (step * strides[axis])[owner]
    for other in range(3):
        if other == axis:
            continue
        # Position on the other axis at the crossing: linear in k, coefficients per ray (rays
        # that do not move along this axis get inf * 0 = nan here, but have no crossings).
        with np.errstate(invalid="ignore"):
            base = start[:, other] + delta[:, other] * t_first
            slope = delta[:, other] * t_step
        coord = np.floor(base[owner] + k * slope[owner]).astype(np.int64)
        np.clip(coord, 0, shape[other] - 1, out=coord)
        flat += coord * strides[other]
    return owner, t, flat


def traverse_reference(origins: np.ndarray, ends: np.ndarray, grid: VoxelGrid) -> list[list[int]]:
    """Textbook Amanatides & Woo DDA, one ray at a time: for each ray, its voxels in order (flat)."""
    shape = grid.shape
    voxel = grid.voxel_size
    result: list[list[int]] = []
    for origin, end in zip(np.asarray(origins, dtype=np.float64), np.asarray(ends, dtype=np.float64)):
        start = [(float(origin[a]) - grid.range_min[a]) / voxel[a] for a in range(3)]
        stop = [(float(end[a]) - grid.range_min[a]) / voxel[a] for a in range(3)]
        delta = [stop[a] - start[a] for a in range(3)]
        t_in, t_out = _reference_clip(start, delta, shape)
        result.append(_reference_walk(start, delta, t_in, t_out, shape) if t_out > t_in else [])
    return result


def _reference_clip(start: list[float], delta: list[float], shape: tuple[int, int, int]) -> tuple[float, float]:
    """Clip one segment to the grid box (slab method) so that a ray starting outside enters it first:
    its parameters (t_in, t_out) in the box, t_out <= t_in when it misses."""
    t_in, t_out = 0.0, 1.0
    for a in range(3):
        if delta[a] == 0.0:
            if not (0.0 <= start[a] < shape[a]):
                t_in, t_out = 1.0, 0.0
            continue
        ta, tb = (0.0 - start[a]) / delta[a], (shape[a] - start[a]) / delta[a]
        t_in, t_out = max(t_in, min(ta, tb)), min(t_out, max(ta, tb))
    return t_in, t_out


def _reference_walk(start: list[float], delta: list[float], t_in: float, t_out: float,
                    shape: tuple[int, int, int]) -> list[int]:
    """The voxels (flat) of one segment from parameter ``t_in`` to ``t_out``, in order: step to the next
    voxel on the axis whose boundary plane comes first."""
    cell = _reference_entry_cell(start, delta, t_in, shape)
    step = [1 if delta[a] > 0 else -1 if delta[a] < 0 else 0 for a in range(3)]
    # t at which the ray crosses the next plane on each axis, and the t between planes.
    t_next = [np.inf if step[a] == 0 else (cell[a] + (1 if step[a] > 0 else 0) - start[a]) / delta[a]
              for a in range(3)]
    t_step = [np.inf if step[a] == 0 else abs(1.0 / delta[a]) for a in range(3)]
    voxels: list[int] = []
    while True:
        voxels.append((cell[0] * shape[1] + cell[1]) * shape[2] + cell[2])
        a = int(np.argmin(t_next))
        if t_next[a] >= t_out:
            break
        cell[a] += step[a]
        if not (0 <= cell[a] < shape[a]):
            break
        t_next[a] += t_step[a]
    return voxels


def _reference_entry_cell(start: list[float], delta: list[float], t_in: float,
                          shape: tuple[int, int, int]) -> list[int]:
    """The voxel (x, y, z) a segment is in where it enters the grid (moving backwards from a plane:
    the lower one)."""
    entry = [min(max(start[a] + delta[a] * t_in, 0.0), float(shape[a])) for a in range(3)]
    cell = [int(np.ceil(entry[a])) - 1 if delta[a] < 0 else int(np.floor(entry[a])) for a in range(3)]
    return [min(max(cell[a], 0), shape[a] - 1) for a in range(3)]
