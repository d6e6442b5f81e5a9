"""One synthetic scene over time: the sweep timeline, the sensors at each sweep, labels and truth at key frames.

:func:`simulate_scene` yields :class:`SweepRecord` for every LiDAR sweep (20 Hz) and, at every
key frame (2 Hz, every ``sweeps_per_key``-th sweep), a :class:`KeyFrameRecord` with the rendered
cameras, the boxes, the exact ground truth on each requested grid and the label sets
(:mod:`b2s_core.synth.labels`: made from the whole scene's LiDAR, as Occ3D makes its labels, so the
scene's sweeps are simulated once ahead for them). Writers consume these records; nothing here
knows a file format.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from b2s_core.grids import VoxelGrid
from b2s_core.records import Box, Camera
from b2s_core.synth.groundtruth import OccupancyTruth, exact_camera_visibility
from b2s_core.synth.labels import LabelSet, LabelTarget, SceneLog, exact_truth, target_labels
from b2s_core.synth.sensors import CameraSpec, CameraView, LidarSpec, LidarSweep, render_camera, simulate_lidar
from b2s_core.synth.world import World, build_world

SWEEP_PERIOD_US = 50_000  # 20 Hz LiDAR
MASK_MAX_VOXELS = 2_000_000  # label sets with visibility masks only on grids up to this size (Occ3D: 640k)
ANNOTATION_RANGE = 75.0  # metres from the ego: objects annotated at a key frame (covers every grid preset)


@dataclass(frozen=True)
class SceneSpec:
    """What to simulate for one scene."""

    seed: int
    index: int  # scene index in the dataset (selects the layout)
    key_frames: int
    sweeps_per_key: int = 10  # 20 Hz sweeps / 2 Hz key frames
    lidar: LidarSpec = LidarSpec()
    rigs: dict = field(default_factory=dict)  # rig name -> tuple[CameraSpec, ...]
    image_size: tuple[int, int] | None = (400, 225)  # (W, H) of the nuScenes rig; None = full size
    grids: tuple[VoxelGrid, ...] = ()  # grids of the exact truth
    labels: tuple[LabelTarget, ...] = ()  # grids of the label sets (made from the LiDAR, with masks where asked)
    start_us: int = 1_600_000_000_000_000

    @property
    def num_sweeps(self) -> int:
        return (self.key_frames - 1) * self.sweeps_per_key + 1

    @property
    def duration(self) -> float:
        return (self.num_sweeps - 1) * SWEEP_PERIOD_US / 1e6

    @property
    def name(self) -> str:
        return f"scene-{self.index + 1:04d}"

    def timestamp(self, sweep: int) -> int:
        return self.start_us + self.index * 3_600_000_000 + sweep * SWEEP_PERIOD_US


@dataclass
class SweepRecord:
    scene: SceneSpec
    sweep_index: int
    timestamp: int  # microseconds
    is_key_frame: bool
    key_index: int | None
    global_from_ego: np.ndarray  # (4, 4)
    lidar: LidarSweep
    world: World  # for the objects' boxes at this sweep's time

    @property
    def time(self) -> float:
        """Seconds since the scene's first sweep."""
        return (self.timestamp - self.scene.timestamp(0)) / 1e6


@dataclass
class KeyFrameRecord:
    scene: SceneSpec
    key_index: int
    sweep: SweepRecord
    cameras: dict[str, list[CameraView]]  # rig name -> views
    boxes: dict[str, np.ndarray]  # World.boxes(t) of every object plus 'num_lidar_pts' (A,)
    truth: dict[str, OccupancyTruth]  # grid name -> exact solid truth
    labels: dict[str, LabelSet]  # label target name -> the label set (LiDAR geometry, Occ3D masks)
    visible: dict[str, np.ndarray]  # label target with masks -> (X, Y, Z) bool exact camera visibility, for scoring
    world: World

    @property
    def timestamp(self) -> int:
        return self.sweep.timestamp

    @property
    def global_from_ego(self) -> np.ndarray:
        return self.sweep.global_from_ego


def key_boxes(world: World, t: float, hit_instance: np.ndarray) -> dict[str, np.ndarray]:
    """Every object's box at ``t`` (``World.boxes``) plus 'num_lidar_pts': key-sweep returns on it."""
    boxes = world.boxes(t)
    counts = np.bincount(hit_instance[hit_instance >= 0], minlength=len(world.agents))
    boxes["num_lidar_pts"] = counts[boxes["track"]]
    return boxes


def annotated(boxes: dict[str, np.ndarray], global_from_ego: np.ndarray) -> np.ndarray:
    """(A,) bool: the objects nuScenes annotates, within ANNOTATION_RANGE and hit by the key sweep.

    nuScenes keeps only boxes its sensors saw (on a real key frame 66 of 69 boxes hold LiDAR points,
    the rest radar ones; this world has no radar), so an object no LiDAR ray reached is not annotated.
    """
    near = np.hypot(*(boxes["center"][:, :2] - global_from_ego[:2, 3]).T) < ANNOTATION_RANGE
    return near & (boxes["num_lidar_pts"] > 0)


def box_records(world: World, boxes: dict[str, np.ndarray], keep: np.ndarray) -> list[Box]:
    """The kept rows of ``boxes`` as reader Box records (global frame, size (length, width, height))."""
    records = []
    for a in np.flatnonzero(keep):
        c, s = np.cos(boxes["yaw"][a]), np.sin(boxes["yaw"][a])
        global_from_box = np.eye(4)
        global_from_box[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
        global_from_box[:3, 3] = boxes["center"][a]
        agent = world.agents[int(boxes["track"][a])]
        records.append(Box(global_from_box, boxes["size"][a].astype(np.float64), str(agent.track), agent.kind.nuscenes,
                           int(boxes["label"][a])))
    return records


def simulate_sweep(spec: SceneSpec, world: World, k: int) -> SweepRecord:
    """Sweep ``k`` of the scene; deterministic given the spec, so it can be simulated again."""
    t = k * SWEEP_PERIOD_US / 1e6
    global_from_ego = world.global_from_ego(t)
    rng = np.random.default_rng([spec.seed, spec.index, k, 11])
    lidar = simulate_lidar(world.snapshot(t), world.ground, global_from_ego, spec.lidar, rng)
    is_key = k % spec.sweeps_per_key == 0
    key_index = k // spec.sweeps_per_key if is_key else None
    return SweepRecord(spec, k, spec.timestamp(k), is_key, key_index, global_from_ego, lidar, world)


def simulate_scene(spec: SceneSpec) -> Iterator[SweepRecord | KeyFrameRecord]:
    """Sweeps in time order; each key frame's KeyFrameRecord follows its SweepRecord."""
    world = build_world(spec.seed, spec.index, spec.duration)
    labels = _scene_labels(spec, world) if spec.labels else itertools.repeat({})
    for k in range(spec.num_sweeps):
        sweep = simulate_sweep(spec, world, k)
        yield sweep
        if sweep.is_key_frame:
            yield _key_frame(spec, world, sweep, next(labels))


def scene_log(spec: SceneSpec, world: World) -> SceneLog:
    """Every sweep's points and pose and the annotated boxes at key frames: the logs as written."""
    log = SceneLog(spec.name, spec.lidar.ego_from_sensor, spec.sweeps_per_key, [], [], [], [], _label_cameras(spec))
    for k in range(spec.num_sweeps):
        sweep = simulate_sweep(spec, world, k)
        log.timestamps.append(sweep.timestamp)
        log.poses.append(sweep.global_from_ego)
        log.points.append(sweep.lidar.points[:, :3].copy())  # float32, as the .pcd.bin holds them
        if sweep.is_key_frame:
            boxes = key_boxes(world, sweep.time, sweep.lidar.instance)
            log.boxes.append(box_records(world, boxes, annotated(boxes, sweep.global_from_ego)))
    return log


def _label_cameras(spec: SceneSpec) -> list[Camera]:
    """The camera masks' rig as a reader gives it: the nuScenes cameras (or the first rig) at the written size."""
    specs = spec.rigs.get("nuscenes") or next(iter(spec.rigs.values()), ())
    cameras = []
    for cam in specs:
        size = _size(cam, spec.image_size)
        cameras.append(Camera(cam.name, cam.intrinsic(size), cam.ego_from_cam, *size))
    return cameras


def _scene_labels(spec: SceneSpec, world: World) -> Iterator[dict[str, LabelSet]]:
    """Per key frame, in order: target name -> label set."""
    log = scene_log(spec, world)

    def truth_at(key_index: int, target: LabelTarget) -> OccupancyTruth:
        k = key_index * spec.sweeps_per_key
        return exact_truth(world, k * SWEEP_PERIOD_US / 1e6, log.poses[k] @ target.ego_from_grid, target.grid)

    streams = {target.name: target_labels(log, target, truth_at) for target in spec.labels}
    for _ in range(spec.key_frames):
        yield {name: next(stream) for name, stream in streams.items()}


def _key_frame(spec: SceneSpec, world: World, sweep: SweepRecord, labels: dict[str, LabelSet]) -> KeyFrameRecord:
    pose = sweep.global_from_ego
    prims = world.snapshot(sweep.time)
    cameras: dict[str, list[CameraView]] = {}
    for rig, specs in spec.rigs.items():
        cameras[rig] = [render_camera(prims, world, pose, cam, _size(cam, spec.image_size)) for cam in specs]
    truth = {grid.name: exact_truth(world, sweep.time, pose, grid) for grid in spec.grids}
    views = cameras.get("nuscenes") or next(iter(cameras.values()), [])
    rendered = [(v.intrinsic, v.camera.ego_from_cam, v.distance) for v in views]
    visible = {target.name: exact_camera_visibility(target.grid, rendered) for target in spec.labels if target.masks}
    boxes = key_boxes(world, sweep.time, sweep.lidar.instance)
    return KeyFrameRecord(spec, sweep.key_index, sweep, cameras, boxes, truth, labels, visible, world)


def _size(cam: CameraSpec, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """The nuScenes rig's requested width, applied to every rig at the rig's own aspect ratio."""
    return cam.size_for(image_size)
