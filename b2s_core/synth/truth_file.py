"""The exact ground truth of every key frame, written beside the datasets for tests and checks.

``<out>/ground_truth/<scene_name>/<key_index:03d>.npz`` (np.savez_compressed); see docs/synth.md
for every key. :func:`load_ground_truth` reads one back as a :class:`GroundTruthFrame`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.synth.geometry import transform_points
from b2s_core.synth.scene import KeyFrameRecord
from b2s_core.synth.writers.common import atomic_write_bytes, npz_bytes

SMALL_GRID = 2_000_000  # voxel count up to which the object mask and instance ids are stored


class GroundTruthError(B2SError, ValueError):
    """A ground-truth file that is missing or lacks a requested grid."""


@dataclass
class GroundTruthFrame:
    """Exact truth of one key frame (grids (X, Y, Z) in the ego frame, Occ3D labels, free = 17)."""

    path: Path
    scene: str
    key_index: int
    timestamp: int
    global_from_ego: np.ndarray  # (4, 4)
    ego_from_lidar: np.ndarray  # (4, 4)
    semantics: dict[str, np.ndarray]  # grid name -> (X, Y, Z) uint8 exact solid labels
    labels: dict[str, np.ndarray]  # grid name -> (X, Y, Z) uint8 the label set (LiDAR geometry), as the label files hold it
    objects: dict[str, np.ndarray]  # grid name -> (X, Y, Z) bool, voxels of annotated objects (small grids only)
    instance: dict[str, np.ndarray]  # grid name -> (X, Y, Z) int32 track id (small grids only)
    mask_lidar: dict[str, np.ndarray]  # grid name -> (X, Y, Z) bool, the label set's (Occ3D rules)
    mask_camera: dict[str, np.ndarray]
    visible: dict[str, np.ndarray]  # grid name -> (X, Y, Z) bool exact camera visibility (true surfaces), for scoring
    lidar_points: np.ndarray  # (N, 5) float32 the key sweep as written (sensor frame, with noise)
    exact_points_ego: np.ndarray  # (N, 3) float32 noise-free hit points, ego frame
    point_labels: np.ndarray  # (N,) uint8 label of the surface each point hit
    point_instance: np.ndarray  # (N,) int32 track id of the object hit, -1 for scenery / ground
    boxes: dict[str, np.ndarray] = field(default_factory=dict)  # center/size(l,w,h)/yaw/velocity/track/label/num_lidar_pts, global
    camera_names: list[str] = field(default_factory=list)  # nuScenes rig
    camera_intrinsic: np.ndarray | None = None  # (6, 3, 3)
    camera_ego_from_cam: np.ndarray | None = None  # (6, 4, 4)
    camera_labels: np.ndarray | None = None  # (6, H, W) uint8 class-id images (255 = sky)
    camera_distance: np.ndarray | None = None  # (6, H, W) float16 metres along each pixel ray


def write_ground_truth(path: Path, frame: KeyFrameRecord) -> None:
    arrays = {
        "scene": np.array(frame.scene.name),
        "key_index": np.array(frame.key_index),
        "timestamp": np.array(frame.timestamp, dtype=np.int64),
        "global_from_ego": frame.global_from_ego,
        "ego_from_lidar": frame.scene.lidar.ego_from_sensor,
        "lidar_points": frame.sweep.lidar.points,
        "exact_points_ego": transform_points(frame.scene.lidar.ego_from_sensor, frame.sweep.lidar.exact_points).astype(np.float32),
        "point_labels": frame.sweep.lidar.labels,
        "point_instance": frame.sweep.lidar.instance,
    }
    for key, value in frame.boxes.items():
        arrays[f"box_{key}"] = value
    for grid, truth in frame.truth.items():
        arrays[f"semantics_{grid}"] = truth.semantics
        if truth.semantics.size <= SMALL_GRID:
            arrays[f"objects_{grid}"] = truth.objects
            arrays[f"instance_{grid}"] = truth.instance
    for target in frame.scene.labels:
        if target.name not in frame.truth:  # a label grid in another frame (OpenOccupancy's LiDAR) lives in its files only
            continue
        labels = frame.labels[target.name]
        arrays[f"labels_{target.name}"] = labels.semantics
        if target.masks:
            arrays[f"mask_lidar_{target.name}"] = labels.mask_lidar
            arrays[f"mask_camera_{target.name}"] = labels.mask_camera
            arrays[f"visible_{target.name}"] = frame.visible[target.name]
    views = frame.cameras.get("nuscenes", [])
    if views:
        arrays["camera_names"] = np.array([v.camera.name for v in views])
        arrays["camera_intrinsic"] = np.stack([v.intrinsic for v in views])
        arrays["camera_ego_from_cam"] = np.stack([v.camera.ego_from_cam for v in views])
        arrays["camera_labels"] = np.stack([v.labels for v in views])
        arrays["camera_distance"] = np.stack([np.minimum(v.distance, 60000) for v in views]).astype(np.float16)
    atomic_write_bytes(path, npz_bytes(**arrays))


def load_ground_truth(path: str | Path) -> GroundTruthFrame:
    path = Path(path)
    if not path.is_file():
        raise GroundTruthError(f"{path}: ground-truth file not found")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}

    def by_prefix(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return GroundTruthFrame(
        path=path, scene=str(arrays["scene"]), key_index=int(arrays["key_index"]), timestamp=int(arrays["timestamp"]),
        global_from_ego=arrays["global_from_ego"], ego_from_lidar=arrays["ego_from_lidar"],
        semantics=by_prefix("semantics_"), labels=by_prefix("labels_"), objects=by_prefix("objects_"),
        instance=by_prefix("instance_"),
        mask_lidar=by_prefix("mask_lidar_"), mask_camera=by_prefix("mask_camera_"), visible=by_prefix("visible_"),
        lidar_points=arrays["lidar_points"], exact_points_ego=arrays["exact_points_ego"],
        point_labels=arrays["point_labels"], point_instance=arrays["point_instance"], boxes=by_prefix("box_"),
        camera_names=[str(n) for n in arrays.get("camera_names", [])], camera_intrinsic=arrays.get("camera_intrinsic"),
        camera_ego_from_cam=arrays.get("camera_ego_from_cam"), camera_labels=arrays.get("camera_labels"),
        camera_distance=arrays.get("camera_distance"),
    )
