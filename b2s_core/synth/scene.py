"""One synthetic scene over time: the sweep timeline, the sensors at each sweep, ground truth at key frames.

:func:`simulate_scene` yields :class:`SweepRecord` for every LiDAR sweep (20 Hz) and, at every
key frame (2 Hz, every ``sweeps_per_key``-th sweep), a :class:`KeyFrameRecord` with the rendered
cameras, the annotated boxes and the exact ground truth on each requested grid. Writers consume
these records; nothing here knows a file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from b2s_core.grids import VoxelGrid
from b2s_core.synth.geometry import transform_points
from b2s_core.synth.groundtruth import OccupancyTruth, camera_mask, lidar_mask, semantic_occupancy
from b2s_core.synth.sensors import CameraSpec, CameraView, LidarSpec, LidarSweep, render_camera, simulate_lidar
from b2s_core.synth.world import World, build_world

SWEEP_PERIOD_US = 50_000  # 20 Hz LiDAR
MASK_MAX_VOXELS = 2_000_000  # visibility masks only on grids up to this size (Occ3D: 640k)


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
    grids: tuple[VoxelGrid, ...] = ()
    mask_grids: tuple[str, ...] = ("occ3d",)  # grids that also get mask_lidar / mask_camera
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
    boxes: dict[str, np.ndarray]  # World.boxes(t) plus 'num_lidar_pts' (A,)
    truth: dict[str, OccupancyTruth]  # grid name -> exact truth
    mask_lidar: dict[str, np.ndarray]  # grid name -> (X, Y, Z) bool
    mask_camera: dict[str, np.ndarray]
    world: World

    @property
    def timestamp(self) -> int:
        return self.sweep.timestamp

    @property
    def global_from_ego(self) -> np.ndarray:
        return self.sweep.global_from_ego


def simulate_scene(spec: SceneSpec) -> Iterator[SweepRecord | KeyFrameRecord]:
    """Sweeps in time order; each key frame's KeyFrameRecord follows its SweepRecord."""
    world = build_world(spec.seed, spec.index, spec.duration)
    for k in range(spec.num_sweeps):
        t = k * SWEEP_PERIOD_US / 1e6
        prims = world.snapshot(t)
        global_from_ego = world.global_from_ego(t)
        rng = np.random.default_rng([spec.seed, spec.index, k, 11])
        lidar = simulate_lidar(prims, world.ground, global_from_ego, spec.lidar, rng)
        is_key = k % spec.sweeps_per_key == 0
        key_index = k // spec.sweeps_per_key if is_key else None
        sweep = SweepRecord(spec, k, spec.timestamp(k), is_key, key_index, global_from_ego, lidar, world)
        yield sweep
        if is_key:
            yield _key_frame(spec, world, sweep, prims, t)


def _key_frame(spec: SceneSpec, world: World, sweep: SweepRecord, prims, t: float) -> KeyFrameRecord:
    pose = sweep.global_from_ego
    cameras: dict[str, list[CameraView]] = {}
    for rig, specs in spec.rigs.items():
        cameras[rig] = [render_camera(prims, world, pose, cam, _size(cam, spec.image_size)) for cam in specs]
    boxes = world.boxes(t)
    hit_instance = sweep.lidar.instance
    counts = np.bincount(hit_instance[hit_instance >= 0], minlength=len(world.agents))
    boxes["num_lidar_pts"] = counts[boxes["track"]]
    ego_from_global = np.linalg.inv(pose)
    prims_ego = prims.transformed(ego_from_global)

    def ground_label(xy_ego: np.ndarray) -> np.ndarray:
        xy = xy_ego @ pose[:2, :2].T + pose[:2, 3]
        return world.ground(xy)[0]

    ego_from_lidar = spec.lidar.ego_from_sensor
    points_ego = transform_points(ego_from_lidar, sweep.lidar.points[:, :3].astype(np.float64))
    truth, mask_l, mask_c = {}, {}, {}
    for grid in spec.grids:
        truth[grid.name] = semantic_occupancy(prims_ego, ground_label, grid)
        if grid.name in spec.mask_grids and grid.num_voxels <= MASK_MAX_VOXELS:
            mask_l[grid.name] = lidar_mask(grid, ego_from_lidar[:3, 3], points_ego)
            views = cameras.get("nuscenes") or next(iter(cameras.values()), [])
            mask_c[grid.name] = camera_mask(grid, [(v.intrinsic, v.camera.ego_from_cam, v.distance) for v in views])
    return KeyFrameRecord(spec, sweep.key_index, sweep, cameras, boxes, truth, mask_l, mask_c, world)


def _size(cam: CameraSpec, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """The nuScenes rig's requested width, applied to every rig at the rig's own aspect ratio."""
    return cam.size_for(image_size)
