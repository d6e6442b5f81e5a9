"""nuScenes (any version: v1.0-mini, v1.0-trainval, v1.0-test, ...) read through nuscenes-devkit.

Frames: every sample (key frame, 2 Hz) of a scene in time order. The frame's ego pose is the ego
pose of its LIDAR_TOP key sweep. Cameras are expressed in that ego frame: each camera image has
its own timestamp and ego pose, so ``ego_from_cam = inv(global_from_ego_key) @ global_from_ego_cam
@ ego_from_cam_calibrated`` (the ego-motion compensation of the BEVDet/mmdet3d ``lidar2cam``).
Boxes come from ``sample_annotation`` in the global frame; nuScenes stores sizes as (w, l, h) and
they are reordered to (l, w, h) here. Non-key LiDAR sweeps since the previous key frame come
from walking the LIDAR_TOP ``prev`` chain.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from b2s_core.paths import name_problem
from b2s_core.records import Box, Camera, LidarSweep, SemanticLabels, SensorFrame
from b2s_core.taxonomy import OCC3D
from converters.errors import ConverterError
from converters.readers.base import (
    FrameErrorHandler,
    SceneReader,
    count_float32_points,
    dataset_file,
    image_size,
    load_float32_bin,
    quaternion_matrix,
    report,
    transform,
)
from converters.readers.labels import LabelSpec, occ3d_path, openoccupancy_path, read_occ3d, read_openoccupancy

LIDAR_CHANNEL = "LIDAR_TOP"
CAMERA_ORDER = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
POINT_COLUMNS = 5  # .pcd.bin: float32 x, y, z, intensity, ring


def load_lidar_bin(path: str) -> np.ndarray:
    """(N, 5) float32 x, y, z, intensity, ring of a nuScenes ``.pcd.bin`` in the sensor frame."""
    return load_float32_bin(Path(path), POINT_COLUMNS)


def official_split_scenes(split: str) -> list[str]:
    """Scene names of one of the devkit's official splits (train, val, test, mini_train, mini_val)."""
    # Here, not at the top: nuscenes-devkit takes ~1 s to import, and every command imports this module.
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes(verbose=False)
    if split not in splits:
        raise ConverterError(split, f"unknown nuScenes split; use one of {', '.join(sorted(splits))}")
    return list(splits[split])


def open_devkit(dataroot: Path, version: str):
    """``NuScenes(version, dataroot)`` with the devkit's asserts and KeyErrors turned into one clear message."""
    # Here, not at the top: nuscenes-devkit takes ~1 s to import, and every command imports this module.
    from nuscenes.nuscenes import NuScenes

    problem = name_problem(version)
    if problem:  # the version names a folder under the dataroot, never a path out of it
        raise ConverterError(version, f"nuScenes version {problem}; give the name of a folder under {dataroot}, e.g. v1.0-mini")
    table_root = dataroot / version
    if not table_root.is_dir():
        found = sorted(p.name for p in dataroot.iterdir() if p.is_dir() and (p / "scene.json").is_file()) if dataroot.is_dir() else []
        hint = f"; versions found: {', '.join(found)}" if found else ""
        raise ConverterError(table_root, f"nuScenes version folder not found{hint}")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except FileNotFoundError as err:
        raise ConverterError(err.filename or table_root, "nuScenes table or map file not found") from None
    except json.JSONDecodeError as err:
        raise ConverterError(table_root, f"a nuScenes table is not valid JSON ({err})") from None
    except KeyError as err:
        token = err.args[0] if err.args else "?"
        raise ConverterError(_table_referring_to(table_root, str(token)), f"refers to token {token} that no table holds") from None
    except AssertionError as err:
        raise ConverterError(table_root, f"nuscenes-devkit refused the tables: {err}") from None


def _table_referring_to(table_root: Path, token: str) -> Path:
    # The devkit's KeyError names only the token; find the table file that mentions it, for the message.
    for path in sorted(table_root.glob("*.json")):
        try:
            if token in path.read_text():
                return path
        except OSError:
            continue
    return table_root


class NuScenesReader(SceneReader):
    source = "nuscenes"

    def __init__(self, dataroot: str | Path, *, version: str = "v1.0-mini", labels: LabelSpec | None = None,
                 scenes: list[str] | None = None, split: str | None = None, max_sweeps: int | None = None,
                 compensate_ego_motion: bool = True) -> None:
        self.dataroot = Path(dataroot)
        self.image_root = self.dataroot
        self.version = version
        if labels is not None and labels.kind not in ("occ3d", "openoccupancy"):
            raise ConverterError(labels.root, f"{labels.kind} labels do not belong to nuScenes; use occ3d or openoccupancy")
        self.labels = labels
        self.taxonomy = labels.taxonomy if labels else OCC3D
        self.label_grid = labels.grid if labels else None
        self.max_sweeps = max_sweeps
        self.compensate_ego_motion = compensate_ego_motion
        self.open_errors: list[ConverterError] = []
        self.nusc = open_devkit(self.dataroot, version)
        self.camera_names = self._camera_names()
        self._scene_by_name = {s["name"]: s for s in self.nusc.scene}
        self._selected = self._select(scenes, split)

    # -- selection -------------------------------------------------------------------------------
    def _camera_names(self) -> list[str]:
        channels = {s["channel"] for s in self.nusc.sensor if s["modality"] == "camera"}
        return [c for c in CAMERA_ORDER if c in channels] + sorted(channels - set(CAMERA_ORDER))

    def _select(self, scenes: list[str] | None, split: str | None) -> list[str]:
        all_names = [s["name"] for s in self.nusc.scene]
        if scenes:
            missing = [n for n in scenes if n not in self._scene_by_name]
            if missing:
                raise ConverterError(self.dataroot / self.version / "scene.json", f"no scene named {', '.join(missing)}")
            return [n for n in all_names if n in set(scenes)]
        if split:
            wanted = set(official_split_scenes(split))
            chosen = [n for n in all_names if n in wanted]
            if not chosen:
                raise ConverterError(self.dataroot / self.version, f"split '{split}' selects none of its {len(all_names)} scenes")
            return chosen
        return all_names

    def scene_names(self) -> list[str]:
        return list(self._selected)

    def scene_length(self, name: str) -> int:
        """Samples on the scene's chain (scene.json first_sample_token, then each sample's next), as read_scene walks it."""
        scene = self._scene_by_name.get(name)
        if scene is None:
            raise ConverterError(self.dataroot / self.version / "scene.json", f"no scene named {name}")
        count, token = 0, scene["first_sample_token"]
        while token:
            try:
                token = self.nusc.get("sample", token)["next"]
            except KeyError:
                break  # a broken chain: read_scene stops here too
            count += 1
        return count

    # -- frames ------------------------------------------------------------------------------------
    def read_scene(self, name: str, on_error: FrameErrorHandler | None = None) -> Iterator[SensorFrame]:
        scene = self._scene_by_name.get(name)
        if scene is None:
            raise ConverterError(self.dataroot / self.version / "scene.json", f"no scene named {name}")
        token = scene["first_sample_token"]
        while token:
            try:
                sample = self._get("sample", token, "scene", name)
            except ConverterError as err:
                report(on_error, name, token, err)
                return  # the chain is broken: later samples cannot be reached
            try:
                yield self._frame(scene, sample)
            except ConverterError as err:
                report(on_error, name, token, err)
            token = sample["next"]

    def _get(self, table: str, token: str, referrer_table: str, referrer: str) -> dict:
        try:
            return self.nusc.get(table, token)
        except KeyError:
            raise ConverterError(self.dataroot / self.version / f"{referrer_table}.json",
                                 f"{referrer_table} {referrer} refers to {table} token {token} that is not in {table}.json") from None

    def _pose(self, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        """(global_from_ego, ego_from_sensor) of one sample_data record."""
        ego = self._get("ego_pose", sd["ego_pose_token"], "sample_data", sd["token"])
        cs = self._get("calibrated_sensor", sd["calibrated_sensor_token"], "sample_data", sd["token"])
        tables = self.dataroot / self.version
        return (transform(quaternion_matrix(ego["rotation"], f"{tables / 'ego_pose.json'} ({ego['token']})"), ego["translation"]),
                transform(quaternion_matrix(cs["rotation"], f"{tables / 'calibrated_sensor.json'} ({cs['token']})"), cs["translation"]))

    def _frame(self, scene: dict, sample: dict) -> SensorFrame:
        if LIDAR_CHANNEL not in sample["data"]:
            raise ConverterError(self.dataroot / self.version / "sample_data.json",
                                 f"sample {sample['token']} has no {LIDAR_CHANNEL} key frame")
        lidar_sd = self._get("sample_data", sample["data"][LIDAR_CHANNEL], "sample", sample["token"])
        global_from_ego, _ = self._pose(lidar_sd)
        lidar = self._sweep(lidar_sd)
        cameras = [self._camera(sample, channel, global_from_ego) for channel in self.camera_names]
        frame = SensorFrame(
            scene=scene["name"],
            token=sample["token"],
            timestamp=int(sample["timestamp"]),
            global_from_ego=global_from_ego,
            cameras=cameras,
            lidar=lidar,
            sweeps=self._sweeps_before(lidar_sd),
            boxes=[self._box(ann_token, sample["token"]) for ann_token in sample["anns"]],
            source_tokens={"sample": sample["token"], "scene": scene["token"], "lidar_sample_data": lidar_sd["token"]},
        )
        if self.labels is not None:
            frame.labels = self._labels(self.labels, scene, sample, lidar_sd, lidar.ego_from_sensor)
        return frame

    def _sweep(self, sd: dict) -> LidarSweep:
        global_from_ego, ego_from_sensor = self._pose(sd)
        path = self._file(sd, "LiDAR file")
        count_float32_points(path, POINT_COLUMNS)  # a missing, empty or truncated sweep skips its frame now, whoever loads it later
        return LidarSweep(ego_from_sensor, global_from_ego, int(sd["timestamp"]), bool(sd["is_key_frame"]),
                          functools.partial(load_lidar_bin, str(path)), str(path))

    def _sweeps_before(self, key_sd: dict) -> list[LidarSweep]:
        sweeps: list[LidarSweep] = []
        token = key_sd["prev"]
        while token and (self.max_sweeps is None or len(sweeps) < self.max_sweeps):
            sd = self._get("sample_data", token, "sample_data", key_sd["token"])
            if sd["is_key_frame"]:
                break
            sweeps.append(self._sweep(sd))
            token = sd["prev"]
        return sweeps[::-1]  # oldest first

    def _camera(self, sample: dict, channel: str, global_from_key_ego: np.ndarray) -> Camera:
        if channel not in sample["data"]:
            raise ConverterError(self.dataroot / self.version / "sample_data.json", f"sample {sample['token']} has no {channel} image")
        sd = self._get("sample_data", sample["data"][channel], "sample", sample["token"])
        cs = self._get("calibrated_sensor", sd["calibrated_sensor_token"], "sample_data", sd["token"])
        intrinsic = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if intrinsic.shape != (3, 3):
            raise ConverterError(self.dataroot / self.version / "calibrated_sensor.json",
                                 f"{channel} calibrated_sensor {cs['token']} has no 3x3 camera_intrinsic")
        global_from_cam_ego, ego_from_cam = self._pose(sd)
        if self.compensate_ego_motion:
            ego_from_cam = np.linalg.inv(global_from_key_ego) @ global_from_cam_ego @ ego_from_cam
        path = self._file(sd, f"{channel} image")
        image_size(path, f"{channel} image")
        return Camera(channel, intrinsic, ego_from_cam, int(sd["width"]), int(sd["height"]),
                      image_path=str(path.relative_to(self.dataroot)), timestamp=int(sd["timestamp"]))

    def _file(self, sd: dict, what: str) -> Path:
        """The file of a sample_data record: inside the dataroot, else the frame is refused (b2s_core.paths)."""
        table = self.dataroot / self.version / "sample_data.json"
        return dataset_file(self.dataroot, sd["filename"], what, f"{table} (sample_data {sd['token']} filename)")

    def _box(self, ann_token: str, sample_token: str) -> Box:
        ann = self._get("sample_annotation", ann_token, "sample", sample_token)
        box = self.nusc.get_box(ann["token"])  # devkit Box: centre, wlh = (width, length, height), orientation
        width, length, height = box.wlh
        category = ann["category_name"]
        return Box(
            global_from_box=transform(box.orientation.rotation_matrix, box.center),
            size=np.array([length, width, height], dtype=np.float64),
            track_id=ann["instance_token"],
            category=category,
            label=self.box_label(category, self.taxonomy.label_of_nuscenes),
        )

    @staticmethod
    def _labels(labels: LabelSpec, scene: dict, sample: dict, lidar_sd: dict, ego_from_lidar: np.ndarray) -> SemanticLabels:
        if labels.kind == "occ3d":
            return read_occ3d(occ3d_path(labels.root, scene["name"], sample["token"]))
        # OpenOccupancy labels are in this key frame's LIDAR_TOP frame; its calibration places them in the ego grid.
        return read_openoccupancy(openoccupancy_path(labels.root, scene["token"], lidar_sd["token"]), ego_from_lidar)
