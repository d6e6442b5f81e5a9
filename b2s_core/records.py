"""In-memory records that flow between the parts of b2s.

Two kinds of frame:

* :class:`SensorFrame` is what a converter reads from a raw dataset: poses, calibrated cameras,
  LiDAR sweeps, 3D boxes and, when the dataset has them, semantic labels. ``b2s convert`` and
  ``b2s build-binary`` turn these into
* :class:`OccFrame`, one frame of the unified HDF5 format (:mod:`b2s_core.occfile`): cameras,
  pose, and occupancy on a voxel grid (binary, optionally semantics, masks, soft labels).

Frames and transforms: ``a_from_b`` is the 4x4 float64 homogeneous matrix that maps points in
frame ``b`` to frame ``a`` (``p_a = a_from_b @ p_b``); chains read right to left. Frames: global
(the dataset's map frame), ego (vehicle: x forward, y left, z up, origin as the dataset defines
it), sensor frames (LiDAR; cameras in OpenCV convention: x right, y down, z forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Camera:
    """One calibrated camera image of a frame."""

    name: str  # channel, e.g. 'CAM_FRONT' or 'CAM_F0'
    intrinsic: np.ndarray  # (3, 3) float64, pixels
    ego_from_cam: np.ndarray  # (4, 4) float64
    width: int
    height: int
    image_path: str | None = None  # relative to the dataset root the file records
    image_bytes: bytes | None = None  # the encoded image file (JPEG / PNG), when embedded
    timestamp: int = 0  # microseconds


@dataclass
class LidarSweep:
    """One LiDAR sweep. Points are loaded on demand so that a long log is never held at once."""

    ego_from_sensor: np.ndarray  # (4, 4) float64
    global_from_ego: np.ndarray  # (4, 4) float64, ego pose at the sweep's timestamp
    timestamp: int  # microseconds
    is_key_frame: bool
    load: Callable[[], np.ndarray]  # -> (N, C>=3) float32 points in the sensor frame (x, y, z, ...)
    path: str = ""  # where the points come from, for error messages

    def points(self) -> np.ndarray:
        return self.load()


@dataclass
class Box:
    """An oriented 3D box in the global frame, with its track."""

    global_from_box: np.ndarray  # (4, 4) float64: box frame (x along the heading, z up) -> global
    size: np.ndarray  # (3,) float64 length (along box x), width (box y), height (box z), metres
    track_id: str  # the same for every box of one object over a scene
    category: str  # the source dataset's category name, e.g. 'vehicle.car'
    label: int  # the category mapped into the frame's taxonomy

    @property
    def center(self) -> np.ndarray:
        return self.global_from_box[:3, 3]


@dataclass
class SemanticLabels:
    """Dense semantic occupancy on a grid, as the label dataset gives it."""

    semantics: np.ndarray  # (X, Y, Z) uint8 in the taxonomy's label values
    taxonomy: str  # name in b2s_core.taxonomy.TAXONOMIES
    grid: str  # name in b2s_core.grids.GRID_PRESETS (or a custom spec)
    mask_lidar: np.ndarray | None = None  # (X, Y, Z) bool
    mask_camera: np.ndarray | None = None  # (X, Y, Z) bool
    path: str = ""


@dataclass
class SensorFrame:
    """One key frame of a raw dataset, as a converter yields it."""

    scene: str  # scene name, unique in the dataset
    token: str  # the key frame's token in the source dataset (sample token / lidar_pc token)
    timestamp: int  # microseconds
    global_from_ego: np.ndarray  # (4, 4) float64
    cameras: list[Camera]
    lidar: LidarSweep | None  # the key frame's own sweep
    sweeps: list[LidarSweep] = field(default_factory=list)  # non-key sweeps since the previous key frame
    boxes: list[Box] = field(default_factory=list)
    labels: SemanticLabels | None = None
    source_tokens: dict[str, str] = field(default_factory=dict)  # e.g. {'lidar_sample_data': ...}


@dataclass
class OccFrame:
    """One frame of the unified format. Grids are (X, Y, Z) on the file's grid, ego frame.

    ``occupancy`` is always present. ``semantics`` (uint8, the file's taxonomy) when the frame is
    labelled; its free voxels are exactly the non-occupied ones. ``top2_labels`` / ``top2_logits``
    (M, 2) are soft pseudo-labels of the M voxels of ``top2_support`` in C order (``np.flatnonzero``);
    without a support grid they belong to the M occupied voxels.
    """

    scene: str
    token: str
    timestamp: int
    global_from_ego: np.ndarray  # (4, 4) float64
    cameras: list[Camera]
    occupancy: np.ndarray  # (X, Y, Z) bool
    semantics: np.ndarray | None = None  # (X, Y, Z) uint8
    mask_lidar: np.ndarray | None = None  # (X, Y, Z) bool
    mask_camera: np.ndarray | None = None  # (X, Y, Z) bool
    top2_labels: np.ndarray | None = None  # (M, 2) uint8, best class first
    top2_logits: np.ndarray | None = None  # (M, 2) float16
    top2_support: np.ndarray | None = None  # (X, Y, Z) bool, contains occupancy; None: the pairs are the occupied voxels'
    binary_pred: np.ndarray | None = None  # (X, Y, Z) bool, a prediction file's binary-decoder output
    points: np.ndarray | None = None  # (N, 3) float32 key-frame LiDAR points in the ego frame
    lidar_origin: np.ndarray | None = None  # (3,) float32 LiDAR centre in the ego frame
    ego_from_lidar: np.ndarray | None = None  # (4, 4) float64 key-frame LiDAR calibration (None: unknown)
    source_tokens: dict[str, str] = field(default_factory=dict)
