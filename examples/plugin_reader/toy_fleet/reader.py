"""A complete b2s plug-in reader for a toy fleet's on-disk format (written by ``toy_fleet.make_toy``).

The format (ours, made up for the example)::

    ROOT/rig.json                        the sensor rig, shared by every drive:
        {"lidar": {"ego_from_lidar": 4x4},
         "cameras": {"front": {"intrinsic": 3x3, "ego_from_cam": 4x4}, ...}}   (OpenCV camera axes)
    ROOT/drives/<drive>/<frame>.json     one key frame:
        {"timestamp": microseconds, "global_from_ego": 4x4,
         "lidar": "<frame>.npy", "images": {"front": "<frame>_front.png", ...},
         "boxes": [{"track": "t1", "category": "vehicle", "center": [x, y, z], "size": [l, w, h], "yaw": rad}]}
    ROOT/drives/<drive>/<frame>.npy      (N, 4) float32 x, y, z, intensity in the LiDAR frame
    ROOT/drives/<drive>/<frame>_<cam>.png

Poses and boxes are in the global (map) frame; the ego frame is x forward, y left, z up with its
origin on the ground under the rear axle. A drive is a b2s scene, each frame JSON a key frame.

What b2s asks of a reader is listed in ``converters/readers/plugins.py`` and docs/converters.md ("Your own
dataset"); this one sets everything, defaults included, so it can be read as the checklist.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from b2s_core.binary.aggregate import EgoBody
from b2s_core.records import Box, Camera, LidarSweep, SensorFrame
from b2s_core.taxonomy import OCC3D
from converters.errors import ConverterError
from converters.readers.base import (
    FrameErrorHandler,
    SceneReader,
    dataset_file,
    image_size,
    report,
    require_file,
    yaw_matrix,
)


class ToyFleetReader(SceneReader):
    # Class attributes, read before the dataset is opened.
    default_grid = "-20,-20,-2,20,20,4.4:0.4"  # 100 x 100 x 16 voxels around the ego: the toy's sensors reach ~20 m
    # The toy car and its roof rack, ego frame (m): build-binary drops the returns inside this box.
    ego_body = EgoBody((-1.0, -1.0, -0.3), (4.0, 1.0, 2.4))

    def __init__(self, dataroot: str | Path, *, scenes: list[str] | None = None) -> None:
        # Only --scenes is taken: `--split`, `--version` or `--labels` are refused by b2s in one line.
        self.dataroot = Path(dataroot)
        self.image_root = self.dataroot / "drives"  # the cameras' image_path are relative to this folder
        self.taxonomy = OCC3D  # box categories are mapped into it (the output records its name)
        self.label_grid = None  # no semantic labels in this format
        self.open_errors: list[ConverterError] = []  # nothing is left out at open time here
        rig_path = require_file(self.dataroot / "rig.json", "rig file")
        rig = _read_json(rig_path)
        try:
            self.ego_from_lidar = _matrix(rig["lidar"]["ego_from_lidar"], (4, 4))
            self.rig = {name: (_matrix(cam["intrinsic"], (3, 3)), _matrix(cam["ego_from_cam"], (4, 4)))
                        for name, cam in rig["cameras"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ConverterError(rig_path, f"bad rig ({type(err).__name__}: {err})") from None
        self.camera_names = list(self.rig)  # every frame lists these cameras, in this order
        drives = self.dataroot / "drives"
        found = sorted(p.name for p in drives.iterdir() if p.is_dir()) if drives.is_dir() else []
        if scenes:
            missing = sorted(set(scenes) - set(found))
            if missing:
                raise ConverterError(drives, f"no drive named {', '.join(missing)}")
            found = [name for name in found if name in set(scenes)]
        self._scenes = found

    def scene_names(self) -> list[str]:
        return list(self._scenes)

    def read_scene(self, name: str, on_error: FrameErrorHandler | None = None) -> Iterator[SensorFrame]:
        for path in sorted((self.image_root / name).glob("*.json")):
            try:
                frame = self._frame(name, path)
            except ConverterError as err:  # a bad frame is reported (skipped or stops the run), never half-read
                report(on_error, name, f"{name}_{path.stem}", err)
                continue
            yield frame

    def _frame(self, scene: str, path: Path) -> SensorFrame:
        record = _read_json(path)
        folder = path.parent
        try:
            timestamp = int(record["timestamp"])
            global_from_ego = _matrix(record["global_from_ego"], (4, 4))
            lidar_name, images, boxes = record["lidar"], record["images"], record["boxes"]
        except (KeyError, TypeError, ValueError) as err:
            raise ConverterError(path, f"bad frame record ({type(err).__name__}: {err})") from None
        # Every path the record names must stay inside the drive's folder (converters.readers.base.dataset_file).
        lidar_path = dataset_file(folder, lidar_name, "LiDAR file", path)
        _check_points(lidar_path)  # the header now, so a bad file skips the frame whichever command loads it later
        cameras = []
        for cam in self.camera_names:
            if cam not in images:
                raise ConverterError(path, f"no {cam} image listed")
            image = dataset_file(folder, images[cam], f"{cam} image", path)
            width, height = image_size(image, f"{cam} image")  # the header only: a broken file skips the frame
            intrinsic, ego_from_cam = self.rig[cam]
            cameras.append(Camera(cam, intrinsic, ego_from_cam, width, height,
                                  image_path=str(image.relative_to(self.image_root)), timestamp=timestamp))
        lidar = LidarSweep(ego_from_sensor=self.ego_from_lidar, global_from_ego=global_from_ego, timestamp=timestamp,
                           is_key_frame=True, load=_PointLoader(lidar_path), path=str(lidar_path))
        return SensorFrame(scene=scene, token=f"{scene}_{path.stem}", timestamp=timestamp, global_from_ego=global_from_ego,
                           cameras=cameras, lidar=lidar, boxes=[self._box(row, path) for row in boxes],
                           source_tokens={"frame_json": path.name})

    def _box(self, row: dict, path: Path) -> Box:
        try:
            global_from_box = np.eye(4)
            global_from_box[:3, :3] = yaw_matrix(float(row["yaw"]))
            global_from_box[:3, 3] = _matrix(row["center"], (3,))
            size = _matrix(row["size"], (3,))
            track, category = str(row["track"]), str(row["category"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConverterError(path, f"bad box ({type(err).__name__}: {err})") from None
        # nuPlan-style category names ('vehicle', 'pedestrian'); one the taxonomy lacks is kept, unscored.
        return Box(global_from_box, size, track, category, self.box_label(category, self.taxonomy.label_of_nuplan))


def _check_points(path: Path) -> None:
    """A LiDAR ``.npy`` must hold (N > 0, >= 3) numbers; only its header is read (memory-mapped)."""
    points = _open_points(path, mmap_mode="r")
    if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0 or points.dtype.kind != "f":
        raise ConverterError(path, f"LiDAR points are {points.dtype} {points.shape}, expected float (N > 0, >= 3)")


def _open_points(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ConverterError(path, f"unreadable LiDAR file ({err})") from None


class _PointLoader:
    """Loads one sweep when asked (points are streamed, never held for a whole drive)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> np.ndarray:
        """-> (N, 4) float32 x, y, z, intensity in the LiDAR frame."""
        return _open_points(self.path).astype(np.float32, copy=False)


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConverterError(path, f"unreadable JSON ({err})") from None
    if not isinstance(record, dict):
        raise ConverterError(path, "expected a JSON object")
    return record


def _matrix(value: object, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape or not np.isfinite(array).all():
        raise ValueError(f"expected {shape} finite numbers, got shape {array.shape}")
    return array
