"""One scene of SensorFrames -> OccFrames with binary occupancy, mask_lidar and mask_camera.

Two streaming passes over the scene's sweeps (points are loaded lazily and dropped after use):

1. objects (and, with ``sweeps == 0``, the static map): every sweep's points, ego body removed, go
   to the global frame; points inside a (time-interpolated, slightly enlarged) box go to that
   track's model in box coordinates, the rest to the static map;
2. key frames: the static points (whole-scene map, or the ``sweeps`` sweeps centred on the key
   frame), every track model pasted at its box pose in this key frame, and the key frame's own
   points are voxelised in the key frame's ego frame; rays of the key sweep and the
   ``ray_sweeps - 1`` sweeps before it give mask_lidar and carve stale static voxels; camera rays
   give mask_camera. Only the window's sweeps are held (a deque), never the whole log.

Occupancy of a key frame, in order (``seen_free = passed & ~hit`` of this frame's rays):

1. ``own | objects | (static & ~seen_free)``: the key sweep's points and the pasted object models
   always stay ("occupied wins"); an aggregated static voxel is removed only when a ray of this
   frame passed through it outside the ray's guard zone and no ray ended in it (carving, see
   :mod:`b2s_core.binary.lidar_mask`);
2. ``| (ground & ~seen_free)``: the ground completed between scan lines
   (:mod:`b2s_core.binary.densify`);
3. mask_camera is traced on this occupancy (:mod:`b2s_core.binary.camera_mask`);
4. ``| (solid & ~(key_passed & ~hit))``: each annotated object with points fills its box (scaled
   by ``fill_objects``), except where the key sweep's own rays saw through it.

mask_lidar is ``passed | hit``; inside this frame's boxes only the key sweep's rays count as
passed, because earlier sweeps saw through places that moving objects occupy now.

nuScenes ego poses have z = 0: the ego frame's origin is the rear axle on the ground, and the
dataset puts the ground under the car at global z = 0 everywhere. Aggregating over a long window on
a slope therefore smears surfaces vertically; we keep the dataset's poses (so that our grids line
up with every other tool's) and bound the smear with the aggregation window and with carving.

A label set may place heights differently from what its grid states: Occ3D's layer 0 holds the
ground at ego z = 0, which its stated range puts in layer 2 (:mod:`b2s_core.binary.convention`).
``BinaryBuildConfig.z_offset`` builds in such a convention: every stage works in the ego frame on
:meth:`BinaryBuildConfig.work_grid` (the output's voxels, moved up by ``-z_offset``, plus the layers
of the stated range they leave out), and the output's layers are stored under the stated grid, so
that layer k of the output holds what the labels' layer k holds. Poses, cameras, the LiDAR origin
and the points stay in the dataset's ego frame, as a converted label file stores them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from b2s_core.binary.aggregate import (
    EGO_BODY_NUSCENES,
    EgoBody,
    PointSet,
    SweepPoints,
    assign_to_boxes,
    interpolate_boxes,
    load_sweep,
    transform,
    voxels_in_boxes,
    voxels_in_extents,
)
from b2s_core.binary.camera_mask import camera_mask
from b2s_core.binary.densify import column_floor, ground_surface, ground_voxels
from b2s_core.binary.lidar_mask import GrazingGuard, dedupe_rays, lidar_visibility
from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid
from b2s_core.records import Box, LidarSweep, OccFrame, SensorFrame


class BuildBinaryError(B2SError):
    """A scene that cannot be built (no LiDAR, inconsistent frames)."""


@dataclass(frozen=True)
class BinaryBuildConfig:
    """How ``b2s build-binary`` turns LiDAR sweeps and boxes into occupancy and masks."""

    grid: VoxelGrid
    sweeps: int = 0  # static aggregation window in sweeps, centred on each key frame; 0 = whole scene
    ray_sweeps: int = 10  # sweeps whose rays make mask_lidar: the key sweep and those just before it
    box_margin: float = 0.2  # metres added to a box's sides and top when assigning points to it
    ego_body: EgoBody = EGO_BODY_NUSCENES
    map_resolution: float | None = None  # dedup lattice of the aggregates; None = a quarter voxel
    carve: bool = True  # remove static voxels that this frame's rays saw through
    fill_objects: float = 0.95  # objects are solid: fill their box scaled by this (0 = off), except where seen through
    ground_reach: float = 12.0  # metres over which ground is filled between scan lines; 0 = off
    guard: GrazingGuard = field(default_factory=GrazingGuard)
    dedupe_rays: bool = True  # one ray per (sweep, end voxel); exact rays with False (about 3x slower)
    camera_stride: int | None = None  # pixels between camera rays; None = one voxel apart at the grid edge
    keep_points: bool = False  # store the key frame's ego-frame points in the OccFrame
    z_offset: float = 0.0  # metres, label z = ego z + z_offset: the vertical convention of the labels to pair with

    def __post_init__(self) -> None:
        if self.sweeps < 0 or self.ray_sweeps < 1:
            raise BuildBinaryError(f"sweeps must be >= 0 and ray_sweeps >= 1, got {self.sweeps} and {self.ray_sweeps}")
        height = self.grid.range_max[2] - self.grid.range_min[2]
        if not (math.isfinite(self.z_offset) and abs(self.z_offset) < height):
            raise BuildBinaryError(f"z_offset must be a finite number of metres within the grid's height "
                                   f"({height:g} m), got {self.z_offset}")

    @property
    def resolution(self) -> float:
        return self.map_resolution or min(self.grid.voxel_size) / 4

    def work_grid(self) -> tuple[VoxelGrid, slice]:
        """(the ego-frame grid the build works on, the slice of its layers that is the output ``grid``).

        The output's voxels lie ``-z_offset`` higher in the ego frame than ``grid`` says. The work
        grid holds them and, on the same lattice, the whole ego range of ``grid`` as well, so that
        the build sees all that a build without offset sees (e.g. the ground below a raised grid,
        which the ground completion needs): the output is then the build without offset moved by
        ``z_offset / voxel height`` layers, exactly when that is a whole number.
        """
        if self.z_offset == 0:
            return self.grid, slice(None)
        low, high, size = self.grid.range_min, self.grid.range_max, self.grid.voxel_size
        below = math.ceil(max(-self.z_offset, 0.0) / size[2] - 1e-9)  # layers under the raised output
        above = math.ceil(max(self.z_offset, 0.0) / size[2] - 1e-9)  # layers over the lowered output
        bottom = low[2] - self.z_offset - below * size[2]
        top = high[2] - self.z_offset + above * size[2]
        grid = VoxelGrid((low[0], low[1], bottom), (high[0], high[1], top), size, self.grid.name)
        return grid, slice(below, below + self.grid.shape[2])


@dataclass
class StageTimes:
    """CPU seconds per stage, summed over the frames built (for the benchmark)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class _Timer:
    def __init__(self, times: StageTimes | None, stage: str):
        self.times, self.stage = times, stage

    def __enter__(self):
        import time

        self.start = time.process_time()

    def __exit__(self, *exc):
        import time

        if self.times is not None:
            self.times.add(self.stage, time.process_time() - self.start)


def _scene_sweeps(frames: Iterable[SensorFrame]) -> Iterator[tuple[SensorFrame, list[Box], int, LidarSweep, bool]]:
    """Every sweep of a scene in time order: (key frame it belongs to, boxes at the previous key frame,
    previous key time, sweep, is the key frame's own sweep)."""
    prev_boxes: list[Box] | None = None
    prev_time = 0
    for frame in frames:
        if frame.lidar is None:
            raise BuildBinaryError(f"scene {frame.scene}: key frame {frame.token} has no LiDAR sweep")
        before = prev_boxes if prev_boxes is not None else frame.boxes
        before_time = prev_time if prev_boxes is not None else frame.timestamp
        for sweep in sorted(frame.sweeps, key=lambda s: s.timestamp):
            yield frame, before, before_time, sweep, False
        yield frame, before, before_time, frame.lidar, True
        prev_boxes, prev_time = frame.boxes, frame.timestamp


def _split(points: SweepPoints, frame: SensorFrame, before: list[Box], before_time: int, margin: float):
    boxes = interpolate_boxes(before, before_time, frame.boxes, frame.timestamp, points.timestamp)
    static, objects = assign_to_boxes(points.points_global, boxes, margin)
    points.static = static
    return objects


@dataclass
class _Placed:
    """A key frame's points (ego frame, (N, 3)) and their voxels ((X, Y, Z) bool)."""

    key_points: np.ndarray
    static_points: np.ndarray
    own: np.ndarray  # the key sweep's own points
    static: np.ndarray  # aggregated static points
    objects: np.ndarray  # object models pasted at this frame's boxes
    solid: np.ndarray  # the objects' boxes, to fill


@dataclass
class _LidarView:
    """(X, Y, Z) bool visibility of a key frame's rays."""

    passed: np.ndarray  # observed free
    hit: np.ndarray  # observed occupied
    key_passed: np.ndarray  # observed free by the key sweep itself
    in_boxes: np.ndarray  # voxel centres inside this frame's (enlarged) boxes


class SceneBuilder:
    """Builds one scene; usable on its own with SensorFrames made in code (tests, other tools)."""

    def __init__(self, config: BinaryBuildConfig, times: StageTimes | None = None):
        self.config = config
        self.times = times
        # Every stage works in the ego frame on self.grid; the output is its self.layers, stored as config.grid.
        self.grid, self.layers = config.work_grid()

    # -- pass 1 ----------------------------------------------------------------------------------
    def collect(self, frames: Iterable[SensorFrame]) -> tuple[dict[str, PointSet], PointSet | None]:
        """Object models per track (box coordinates) and, for whole-scene mode, the static map."""
        cfg = self.config
        models: dict[str, PointSet] = {}
        static_map = PointSet(cfg.resolution) if cfg.sweeps == 0 else None
        for frame, before, before_time, sweep, _ in _scene_sweeps(frames):
            with _Timer(self.times, "load"):
                points = load_sweep(sweep, cfg.ego_body)
            with _Timer(self.times, "aggregate"):
                for track, local in _split(points, frame, before, before_time, cfg.box_margin):
                    models.setdefault(track, PointSet(cfg.resolution)).add(local)
                if static_map is not None:
                    static_map.add(points.points_global[points.static])
        return models, static_map

    # -- pass 2 ----------------------------------------------------------------------------------
    def build(self, open_frames: Callable[[], Iterable[SensorFrame]]) -> Iterator[OccFrame]:
        """Yield the scene's OccFrames in key-frame order; ``open_frames()`` is called twice (two passes)."""
        cfg = self.config
        models, static_map = self.collect(open_frames())
        static_points = static_map.points() if static_map is not None else None
        before = cfg.sweeps // 2
        after = max(cfg.sweeps - 1 - before, 0)
        history: deque[SweepPoints] = deque(maxlen=max(cfg.ray_sweeps, before + 1))
        pending: list[tuple[SensorFrame, int, list[SweepPoints]]] = []  # key frames waiting for look-ahead sweeps
        window: deque[SweepPoints] = deque(maxlen=max(cfg.sweeps, 1))
        count = 0
        for frame, prev_boxes, prev_time, sweep, is_key in _scene_sweeps(open_frames()):
            with _Timer(self.times, "load"):
                points = load_sweep(sweep, cfg.ego_body)
            if cfg.sweeps > 0:
                with _Timer(self.times, "aggregate"):
                    _split(points, frame, prev_boxes, prev_time, cfg.box_margin)
            window.append(points)
            history.append(points)
            count += 1
            if is_key:
                # The rays of this key frame are its own sweep and the ray_sweeps - 1 sweeps before it.
                pending.append((frame, count, list(history)[-cfg.ray_sweeps :]))
            while pending and (cfg.sweeps == 0 or count - pending[0][1] >= after):
                key_frame, index, ray_sources = pending.pop(0)
                statics = static_points if static_points is not None else self._window_static(window, count - index, before)
                yield self._key_frame(key_frame, ray_sources, statics, models)
        for key_frame, index, ray_sources in pending:  # scene end: shorter look-ahead
            yield self._key_frame(key_frame, ray_sources, self._window_static(window, count - index, before), models)

    @staticmethod
    def _window_static(window: deque[SweepPoints], newer: int, before: int) -> np.ndarray:
        """Static points of the sweeps from ``before`` sweeps before the key sweep to the newest one."""
        sweeps = list(window)
        key_position = len(sweeps) - 1 - newer
        chosen = sweeps[max(key_position - before, 0) :]
        parts = [s.points_global[s.static] for s in chosen if s.static is not None]
        return np.concatenate(parts) if parts else np.zeros((0, 3))

    def _key_frame(self, frame: SensorFrame, ray_sources: list[SweepPoints], static_global: np.ndarray,
                   models: dict[str, PointSet]) -> OccFrame:
        """One key frame: place -> LiDAR visibility -> carve and complete -> camera mask -> fill objects."""
        cfg, grid = self.config, self.grid
        ego_from_global = np.linalg.inv(frame.global_from_ego)
        with _Timer(self.times, "place"):
            placed = self._place(frame, ray_sources[-1], static_global, models, ego_from_global)
        with _Timer(self.times, "mask_lidar"):
            view = self._lidar_view(frame, ray_sources, ego_from_global)
        seen_free = view.passed & ~view.hit
        static = placed.static & ~seen_free if cfg.carve else placed.static
        occupancy = placed.own | placed.objects | static
        ground = None
        if cfg.ground_reach > 0:
            with _Timer(self.times, "densify"):
                # Ground comes from static points only: a car's underside is not ground.
                key_cells = np.clip(grid.index_of(placed.key_points), 0, np.asarray(grid.shape) - 1)
                key_static = placed.key_points[~view.in_boxes[tuple(key_cells.T)]]
                floor = np.fmin(column_floor(placed.static_points, grid), column_floor(key_static, grid))
                ground = ground_surface(floor, grid, reach=cfg.ground_reach)
                occupancy |= ground_voxels(ground, grid) & ~seen_free
        with _Timer(self.times, "mask_camera"):
            # Camera rays stop at observed surfaces only: a filled object's partly covered voxels
            # would hide what the camera sees past its edges.
            mask_camera = camera_mask(frame.cameras, occupancy, grid, cfg.camera_stride, ground_height=ground)
        # The fill is an inference: where this frame's own rays saw through a box, it is free.
        occupancy |= placed.solid & ~(view.key_passed & ~view.hit)
        lidar_origin = transform(ray_sources[-1].origin_global[None], ego_from_global)[0].astype(np.float32)
        return OccFrame(
            scene=frame.scene,
            token=frame.token,
            timestamp=frame.timestamp,
            global_from_ego=frame.global_from_ego,
            cameras=frame.cameras,
            occupancy=self._output(occupancy),
            mask_lidar=self._output(view.passed | view.hit),
            mask_camera=self._output(mask_camera),
            points=placed.key_points.astype(np.float32) if cfg.keep_points else None,
            lidar_origin=lidar_origin,
            ego_from_lidar=np.asarray(frame.lidar.ego_from_sensor, np.float64) if frame.lidar is not None else None,
            source_tokens=dict(frame.source_tokens),
        )

    def _output(self, voxels: np.ndarray) -> np.ndarray:
        """(X, Y, Z') work-grid voxels -> (X, Y, Z) the output grid's layers."""
        return voxels if self.layers == slice(None) else np.ascontiguousarray(voxels[..., self.layers])

    def _place(self, frame: SensorFrame, key_sweep: SweepPoints, static_global: np.ndarray, models: dict[str, PointSet],
               ego_from_global: np.ndarray) -> _Placed:
        """Static points, object models at their boxes and the key sweep, in this key frame's grid."""
        cfg, grid = self.config, self.grid
        key_points = transform(key_sweep.points_global, ego_from_global)  # (N, 3) ego frame
        static_points = self._crop(transform(self._near(static_global, frame), ego_from_global))
        object_points = [np.zeros((0, 3))]
        solids = []
        for box in frame.boxes:
            model = models.get(box.track_id)
            if model is None:
                continue
            ego_from_box = ego_from_global @ box.global_from_box
            object_points.append(self._crop(transform(model.points(), ego_from_box)))
            if cfg.fill_objects > 0:
                # Annotated boxes fit their objects tightly; slightly shrunk, so that a voxel the
                # box only touches is not claimed.
                half = np.asarray(box.size) / 2 * cfg.fill_objects
                solids.append((ego_from_box, -half, half))
        solid = voxels_in_extents(grid, solids, samples=3) if solids else np.zeros(grid.shape, dtype=bool)
        return _Placed(key_points, static_points, grid.voxelize(key_points), grid.voxelize(static_points),
                       grid.voxelize(np.concatenate(object_points)), solid)

    def _lidar_view(self, frame: SensorFrame, ray_sources: list[SweepPoints], ego_from_global: np.ndarray) -> _LidarView:
        """Rays of the key sweep and of the sweeps before it, traced in this key frame's grid."""
        cfg, grid = self.config, self.grid
        key_view = lidar_visibility(*self._rays(ray_sources[-1:], ego_from_global), grid, guard=cfg.guard)
        past_view = lidar_visibility(*self._rays(ray_sources[:-1], ego_from_global), grid, guard=cfg.guard)
        # Earlier sweeps saw through the places where moving objects are now: inside this key
        # frame's boxes only the key sweep's own rays count as free.
        in_boxes = voxels_in_boxes(grid, frame.boxes, ego_from_global, cfg.box_margin)
        passed = key_view.passed | (past_view.passed & ~in_boxes)
        return _LidarView(passed=passed, hit=key_view.hit | past_view.hit, key_passed=key_view.passed, in_boxes=in_boxes)

    def _rays(self, sources: list[SweepPoints], ego_from_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(origins (R, 3), ends (R, 3)) in the key frame's ego frame, one ray per point (or per end voxel)."""
        if not sources:
            return np.zeros((0, 3)), np.zeros((0, 3))
        ends = [transform(source.points_global, ego_from_global) for source in sources]
        origins = [np.broadcast_to(transform(s.origin_global[None], ego_from_global), e.shape) for s, e in zip(sources, ends)]
        group = np.repeat(np.arange(len(sources)), [len(e) for e in ends])
        origins_all, ends_all = np.concatenate(origins), np.concatenate(ends)
        if self.config.dedupe_rays:
            chosen = dedupe_rays(origins_all, ends_all, self.grid, group)
            origins_all, ends_all = origins_all[chosen], ends_all[chosen]
        return origins_all, ends_all

    def _near(self, points_global: np.ndarray, frame: SensorFrame) -> np.ndarray:
        """Drop points farther (in x/y) from the ego than the grid reaches, before transforming."""
        grid = self.grid
        reach = float(np.hypot(*np.max(np.abs([grid.range_min[:2], grid.range_max[:2]]), axis=0))) + 1.0
        offset = points_global[:, :2] - frame.global_from_ego[:2, 3]
        return points_global[np.einsum("ij,ij->i", offset, offset) <= reach * reach]

    def _crop(self, points_ego: np.ndarray) -> np.ndarray:
        return points_ego[self.grid.contains(points_ego)]


def build_scene(open_frames: Callable[[], Iterable[SensorFrame]], config: BinaryBuildConfig,
                times: StageTimes | None = None) -> Iterator[OccFrame]:
    """Binary occupancy and masks for every key frame of one scene (see the module docstring).

    ``open_frames`` returns a fresh iterator over the scene's SensorFrames in time order; it is
    called twice. Memory: the track models, the static map (whole-scene mode) or the window's
    sweeps, and one key frame's grids.
    """
    return SceneBuilder(config, times).build(open_frames)
