"""Label sets made the way real ones are: geometry from what the LiDAR saw, visibility by the Occ3D rules.

Occ3D and OpenOccupancy build their labels from the LiDAR of a whole sequence, not from solid
models: static points aggregated in the global frame, each annotated object's points aggregated in
its box and pasted at its box in every key frame, the ground completed between scan lines;
``mask_lidar`` holds the voxels LiDAR rays passed through or ended in, ``mask_camera`` those camera
rays reach up to the first occupied voxel. The synthetic label files follow these rules with the
very code of ``b2s build-binary`` (:class:`b2s_core.binary.pipeline.SceneBuilder`), run on the
sweeps as written and on the boxes nuScenes annotates (objects the key sweep hit), so the labels
and a build of the written logs share one definition of every mask
(:func:`b2s_core.binary.camera_mask.camera_mask`, :func:`b2s_core.binary.lidar_mask.lidar_visibility`).

Semantics play the part of the annotated point cloud: an occupied voxel takes the class of the
world's exact solid there or, where the observed surface lies just outside it (range noise, a
filled box, a completed ground), the class of the nearest solid voxel within
:data:`LABEL_REACH` voxels. The exact solid world stays in the truth file, for scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from b2s_core.binary.aggregate import EGO_BODY_NUSCENES, EgoBody, transform
from b2s_core.binary.pipeline import BinaryBuildConfig, SceneBuilder
from b2s_core.grids import VoxelGrid
from b2s_core.records import Box, Camera, LidarSweep, SensorFrame
from b2s_core.synth.groundtruth import FREE, OccupancyTruth, semantic_occupancy
from b2s_core.synth.world import World

LABEL_REACH = 2  # voxels: an observed surface farther than this from every solid voxel stays unlabelled (free)


@dataclass(frozen=True, eq=False)  # eq=False: an ndarray field has no truth value to compare by
class LabelTarget:
    """A grid to make labels on, fixed to the ego: the ego frame itself, or another frame on the vehicle
    (OpenOccupancy: the LiDAR's axes on the ground below it), given as ``ego_from_grid`` (4, 4, yaw only)."""

    name: str
    grid: VoxelGrid
    ego_from_grid: np.ndarray = field(default_factory=lambda: np.eye(4))
    masks: bool = False  # trace mask_camera too (Occ3D files and --grid grids carry both masks)


@dataclass
class LabelSet:
    """One key frame's labels on one target's grid, (X, Y, Z) in the target's frame."""

    semantics: np.ndarray  # uint8 Occ3D labels, FREE where no surface was observed
    mask_lidar: np.ndarray  # bool
    mask_camera: np.ndarray  # bool, all False unless the target traces masks


@dataclass
class SceneLog:
    """What the label makers read, as the written files hold it: every sweep's points and pose, the annotations."""

    scene: str
    ego_from_lidar: np.ndarray  # (4, 4)
    sweeps_per_key: int
    timestamps: list[int]  # microseconds, per sweep
    poses: list[np.ndarray]  # (4, 4) global_from_ego per sweep
    points: list[np.ndarray]  # (N, 3) float32 LiDAR frame per sweep, as written (with noise)
    boxes: list[list[Box]]  # per key frame: the annotated boxes (global frame)
    cameras: list[Camera]  # the rig of the camera masks, ego frame


def exact_truth(world: World, t: float, global_from_frame: np.ndarray, grid: VoxelGrid) -> OccupancyTruth:
    """The world's exact solid labels at time ``t`` on ``grid`` in a frame with z up and the ground at z = 0."""
    prims = world.snapshot(t).transformed(np.linalg.inv(global_from_frame))

    def ground_label(xy: np.ndarray) -> np.ndarray:
        return world.ground(xy @ global_from_frame[:2, :2].T + global_from_frame[:2, 3])[0]

    return semantic_occupancy(prims, ground_label, grid)


def label_voxels(occupied: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8: each occupied voxel's class, the exact solid's there or the nearest solid voxel's.

    occupied: (X, Y, Z) bool observed occupancy; truth: (X, Y, Z) uint8 exact labels (FREE outside
    solids). Nearest by Euclidean voxel distance, searched out to :data:`LABEL_REACH` voxels.
    """
    semantics = np.where(occupied, truth, FREE).astype(np.uint8)
    stray = np.argwhere(occupied & (truth == FREE))  # (M, 3) observed surface outside every solid
    if stray.size == 0:
        return semantics
    # Offsets as flat steps in a copy padded with FREE by the reach: no bounds checks per offset.
    padded = np.pad(truth, LABEL_REACH, constant_values=FREE)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    base = (stray + LABEL_REACH) @ strides  # (M,) flat index in the padded copy
    flat = padded.ravel()
    pending = np.arange(len(stray))
    for step in _offsets_by_distance(LABEL_REACH) @ strides:
        found = flat[base[pending] + step]
        hit = found != FREE
        semantics[tuple(stray[pending[hit]].T)] = found[hit]
        pending = pending[~hit]
        if pending.size == 0:
            break
    return semantics


def _offsets_by_distance(reach: int) -> np.ndarray:
    """(K, 3) integer offsets within ``reach`` voxels, nearest first (the zero offset left out)."""
    span = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(span, span, span, indexing="ij"), axis=-1).reshape(-1, 3)
    distance = (offsets**2).sum(axis=1)
    keep = (distance > 0) & (distance <= reach * reach)
    return offsets[keep][np.argsort(distance[keep], kind="stable")]


def body_in(ego_from_grid: np.ndarray, body: EgoBody = EGO_BODY_NUSCENES) -> EgoBody:
    """The ego body's box in a grid frame (exact for the yaw multiples of 90 degrees the rigs use)."""
    corners = np.stack(np.meshgrid(*zip(body.min_xyz, body.max_xyz), indexing="ij"), axis=-1).reshape(-1, 3)
    local = transform(corners, np.linalg.inv(ego_from_grid))
    return EgoBody(tuple(local.min(axis=0)), tuple(local.max(axis=0)))


def _sensor_frames(log: SceneLog, target: LabelTarget) -> Iterator[SensorFrame]:
    """The scene's key frames as a reader gives them to build-binary, with the target's frame as the ego frame."""
    ego_from_grid = target.ego_from_grid
    grid_from_ego = np.linalg.inv(ego_from_grid)

    def sweep(k: int) -> LidarSweep:
        return LidarSweep(ego_from_sensor=grid_from_ego @ log.ego_from_lidar,
                          global_from_ego=log.poses[k] @ ego_from_grid, timestamp=log.timestamps[k],
                          is_key_frame=k % log.sweeps_per_key == 0, load=lambda: log.points[k], path=f"{log.scene} sweep {k}")

    rig = log.cameras if target.masks else []
    cameras = [Camera(c.name, c.intrinsic, grid_from_ego @ c.ego_from_cam, c.width, c.height) for c in rig]
    for key_index, boxes in enumerate(log.boxes):
        k = key_index * log.sweeps_per_key
        earlier = range(k - log.sweeps_per_key + 1, k) if key_index else range(0)
        yield SensorFrame(scene=log.scene, token=str(key_index), timestamp=log.timestamps[k],
                          global_from_ego=log.poses[k] @ ego_from_grid, cameras=cameras, lidar=sweep(k),
                          sweeps=[sweep(j) for j in earlier], boxes=boxes)


def target_labels(log: SceneLog, target: LabelTarget,
                  truth_at: Callable[[int, LabelTarget], OccupancyTruth]) -> Iterator[LabelSet]:
    """Label sets of every key frame in order, on one target: build-binary's pipeline, then classes from the truth.

    ``truth_at(key_index, target)`` gives the exact truth on the target's grid at that key frame.
    """
    config = BinaryBuildConfig(grid=target.grid, ego_body=body_in(target.ego_from_grid))
    for key_index, built in enumerate(SceneBuilder(config).build(lambda: _sensor_frames(log, target))):
        semantics = label_voxels(built.occupancy, truth_at(key_index, target).semantics)
        yield LabelSet(semantics, built.mask_lidar, built.mask_camera)
