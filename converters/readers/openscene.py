"""OpenScene (nuPlan-based occupancy): per-log meta pickles + sensor blobs + sparse occupancy ``.npy``.

Layout: ``<root>/meta_datas/<split>/<log>.pkl`` (a list of frame dicts, 2 Hz key frames) and
``<root>/sensor_blobs/<split>/<log>/{MergedPointCloud,CAM_*}/...``; ``lidar_path`` and each camera's
``data_path`` are relative to ``sensor_blobs/<split>``. Pickles are read with the restricted
unpickler (:mod:`converters.readers.safe_pickle`): a pickle that names anything but containers, scalars
and numpy arrays is refused before it can run code.

Frames as the official metadata writer makes them (OpenScene
``DriveEngine/process_data/create_openscene_metadata.py``: ``create_nuplan_info``) and navsim reads
them (``navsim/common/dataclasses.py``: ``Scene.from_scene_dict_list``):

- ``global_from_ego`` from ``ego2global_translation/rotation`` (quaternion w, x, y, z; the nuPlan
  ego pose), ``ego_from_lidar`` from ``lidar2ego_*`` (the nuPlan ``lidar`` table).
- ``cams[CAM_*]['sensor2lidar_rotation' / 'sensor2lidar_translation']`` are, despite the name, the
  camera-to-EGO extrinsic: the writer copies the nuPlan ``camera`` table's rotation / translation,
  which nuPlan defines relative to the ego frame (``helpers/nuplan_cameras_utils.py``:
  ``get_log_cam_info``, ``get_cam_info_from_lidar_pc``). They are used as ``ego_from_cam`` unchanged.
- ``anns['gt_boxes']`` (x, y, z centre, l, w, h, yaw) are in the EGO frame: the writer rotates
  ``global centre - ego translation`` by the inverse ego rotation and takes ``yaw = global yaw -
  ego yaw`` (ego yaw = the ego quaternion's yaw). They are moved back to the global frame by exactly
  that inverse: centre through ``global_from_ego``, yaw plus the ego yaw about the global z axis
  (nuPlan boxes carry a yaw only).
- ``anns['track_tokens']`` are the nuPlan track tokens (the box's ``track_id``);
  ``anns['instance_tokens']`` are per-frame ``lidar_box`` tokens and are not used as track ids.

Image sizes are read from the image headers (the meta data do not carry them); the official camera
dicts have no timestamp (the images are the ones nuPlan matched to the frame's lidar_pc), so a
camera takes the frame's timestamp unless its dict has one.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b2s_core.paths import inside, name_problem, relative_path_problem
from b2s_core.records import Box, Camera, LidarSweep, SensorFrame
from b2s_core.taxonomy import OPENSCENE
from converters.errors import ConverterError
from converters.readers import safe_pickle
from converters.readers.base import (
    FrameErrorHandler,
    SceneReader,
    image_size,
    quaternion_matrix,
    report,
    transform,
    yaw_matrix,
)
from converters.readers.labels import LabelSpec, read_openscene
from converters.readers.nuplan import CAMERA_ORDER, check_lidar_pcd, load_pcd_points


@dataclass
class _LogRef:
    meta: Path
    split: str


class OpenSceneReader(SceneReader):
    source = "openscene"

    def __init__(self, dataroot: str | Path, *, labels: LabelSpec | None = None, scenes: list[str] | None = None,
                 split: str | None = None) -> None:
        self.dataroot = Path(dataroot)
        self.image_root = self.dataroot
        if labels is not None and labels.kind != "openscene":
            raise ConverterError(labels.root, f"{labels.kind} labels do not belong to OpenScene; use openscene:PATH")
        self.labels = labels
        self.taxonomy = OPENSCENE
        self.label_grid = labels.grid if labels else None
        self.open_errors: list[ConverterError] = []
        self._scene_logs: dict[str, _LogRef] = {}  # scene -> the first log that names it (read_scene reads that one)
        self._scene_frames: dict[str, int] = {}  # scene -> frames its log lists (scene_length)
        channels = self._index_logs(self._find_metas(split), split)
        self.camera_names = [c for c in CAMERA_ORDER if c in channels] + sorted(channels - set(CAMERA_ORDER))
        self._selected = self._select(scenes)
        self._cache: tuple[Path, list[dict]] | None = None

    def _index_logs(self, metas: list[_LogRef], split: str | None) -> set[str]:
        """Index the scenes of every meta pickle; returns the camera channels their frames list.

        A corrupt log goes to ``open_errors`` and the others still convert; when every log fails,
        the first failure is raised (not "no scene selected" further down)."""
        if not metas:
            raise ConverterError(self.dataroot / "meta_datas", f"no OpenScene meta pickle found{' for split ' + split if split else ''}")
        channels: set[str] = set()
        for ref in metas:
            try:
                frames = self._load_meta(ref.meta)
            except ConverterError as err:
                self.open_errors.append(err)
                continue
            channels |= self._index_log(ref, frames)  # a frame that names no scene stops the run
        if not self._scene_logs and self.open_errors:
            more = f" (and {len(self.open_errors) - 1} other meta pickles)" if len(self.open_errors) > 1 else ""
            raise ConverterError(self.open_errors[0].path, f"{self.open_errors[0].problem}{more}")
        return channels

    def _index_log(self, ref: _LogRef, frames: list[dict]) -> set[str]:
        """Count one log's frames per scene it is the first to name; returns the camera channels it lists."""
        channels: set[str] = set()
        for frame in frames:
            scene = self._scene_of(frame, ref.meta)
            if self._scene_logs.setdefault(scene, ref) is ref:
                self._scene_frames[scene] = self._scene_frames.get(scene, 0) + 1
            channels |= set(frame.get("cams", {}) or {})
        return channels

    def _find_metas(self, split: str | None) -> list[_LogRef]:
        meta_root = self.dataroot / "meta_datas"
        if split and name_problem(split):  # the split names a folder under meta_datas, never a path out of it
            raise ConverterError(split, f"OpenScene split {name_problem(split)}; give a folder name under {meta_root}, e.g. mini")
        if not meta_root.is_dir():
            raise ConverterError(meta_root, "OpenScene meta_datas folder not found")
        splits = [split] if split else sorted(p.name for p in meta_root.iterdir() if p.is_dir())
        if split and not (meta_root / split).is_dir():
            raise ConverterError(meta_root / split, "OpenScene split folder not found")
        return [_LogRef(p, s) for s in splits for p in sorted((meta_root / s).glob("*.pkl"))]

    @staticmethod
    def _load_meta(path: Path) -> list[dict]:
        frames = safe_pickle.load(path)
        if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
            raise ConverterError(path, "OpenScene meta pickle is not a list of frame dicts")
        return frames

    @staticmethod
    def _scene_of(frame: dict, meta: Path) -> str:
        name = frame.get("scene_name") or frame.get("scene_token")
        if not name:
            raise ConverterError(meta, f"frame {frame.get('token')} has no scene_name")
        return str(name)

    def _select(self, scenes: list[str] | None) -> list[str]:
        if not scenes:
            return list(self._scene_logs)
        missing = [s for s in scenes if s not in self._scene_logs]
        if missing:
            raise ConverterError(self.dataroot / "meta_datas", f"no OpenScene scene named {', '.join(missing)}")
        return [s for s in self._scene_logs if s in set(scenes)]

    def scene_names(self) -> list[str]:
        return list(self._selected)

    def scene_length(self, name: str) -> int:
        return self._scene_frames.get(name, 0)

    # -- frames ------------------------------------------------------------------------------------
    def _log_frames(self, meta: Path) -> list[dict]:
        if self._cache is None or self._cache[0] != meta:
            self._cache = (meta, self._load_meta(meta))
        return self._cache[1]

    def read_scene(self, name: str, on_error: FrameErrorHandler | None = None) -> Iterator[SensorFrame]:
        ref = self._scene_logs.get(name)
        if ref is None:
            raise ConverterError(self.dataroot / "meta_datas", f"no OpenScene scene named {name}")
        frames = [f for f in self._log_frames(ref.meta) if self._scene_of(f, ref.meta) == name]
        frames.sort(key=lambda f: int(f.get("timestamp", 0)))
        for meta in frames:
            try:
                yield self._frame(name, meta, ref)
            except ConverterError as err:
                report(on_error, name, str(meta.get("token", "?")), err)

    def _field(self, meta: dict, key: str, ref: _LogRef, size: int | None = None) -> np.ndarray:
        # A missing or malformed calibration field fails loudly, never defaults to identity.
        if key not in meta or meta[key] is None:
            raise ConverterError(ref.meta, f"frame {meta.get('token')} has no '{key}'")
        try:
            value = np.asarray(meta[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise ConverterError(ref.meta, f"frame {meta.get('token')} '{key}' is not numeric") from None
        if size is not None and value.size != size:
            raise ConverterError(ref.meta, f"frame {meta.get('token')} '{key}' has {value.size} numbers, expected {size}")
        return value

    def _sensor_path(self, rel: object, ref: _LogRef, what: str) -> Path:
        """A ``lidar_path`` / ``data_path`` -> the file path (relative to ``sensor_blobs/<split>``; also
        tried under ``sensor_blobs`` and the dataroot). A path that is absolute or climbs out of its
        folder is refused (b2s_core.paths), so nothing outside the dataroot is ever opened."""
        problem = relative_path_problem(rel)
        if problem:
            raise ConverterError(ref.meta, f"{what} {rel!r} {problem}; it must stay inside {self.dataroot / 'sensor_blobs' / ref.split}")
        for base in (self.dataroot / "sensor_blobs" / ref.split, self.dataroot / "sensor_blobs", self.dataroot):
            if inside(base, str(rel)).is_file():
                return inside(base, str(rel))
        return inside(self.dataroot / "sensor_blobs" / ref.split, str(rel))

    def _frame(self, scene: str, meta: dict, ref: _LogRef) -> SensorFrame:
        where = f"{ref.meta} (frame {meta.get('token')})"
        global_from_ego = transform(quaternion_matrix(self._field(meta, "ego2global_rotation", ref, 4), where),
                                    self._field(meta, "ego2global_translation", ref, 3))
        ego_from_lidar = transform(quaternion_matrix(self._field(meta, "lidar2ego_rotation", ref, 4), where),
                                   self._field(meta, "lidar2ego_translation", ref, 3))
        token = str(meta.get("token"))
        timestamp = int(meta.get("timestamp", 0))
        lidar_path = check_lidar_pcd(self._sensor_path(meta.get("lidar_path", ""), ref, f"frame {token} lidar_path"))
        lidar = LidarSweep(ego_from_lidar, global_from_ego, timestamp, True,
                           functools.partial(load_pcd_points, str(lidar_path)), str(lidar_path))
        cams = meta.get("cams") or {}
        cameras = [self._camera(channel, cams[channel], timestamp, ref, token) for channel in self.camera_names if channel in cams]
        frame = SensorFrame(scene=scene, token=token, timestamp=timestamp, global_from_ego=global_from_ego,
                            cameras=cameras, lidar=lidar, boxes=self._boxes(meta, global_from_ego, ref),
                            source_tokens={"token": token, "log": str(meta.get("log_name", ref.meta.stem))})
        if self.labels is not None:
            frame.labels = read_openscene(self._label_path(self.labels, meta, ref), self.label_grid)
        return frame

    def _camera(self, channel: str, cam: dict, frame_timestamp: int, ref: _LogRef, token: str) -> Camera:
        where = {"token": f"{token} {channel}"}
        # 'sensor2lidar_*' hold the nuPlan camera table's camera-to-ego extrinsic (module docstring).
        rotation = self._field({**cam, **where}, "sensor2lidar_rotation", ref, 9).reshape(3, 3)
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
            raise ConverterError(ref.meta, f"frame {token} {channel} 'sensor2lidar_rotation' is not a rotation matrix")
        ego_from_cam = transform(rotation, self._field({**cam, **where}, "sensor2lidar_translation", ref, 3))
        intrinsic = self._field({**cam, **where}, "cam_intrinsic", ref, 9).reshape(3, 3)
        path = self._sensor_path(cam.get("data_path", ""), ref, f"frame {token} {channel} data_path")
        width, height = image_size(path, f"{channel} image")
        return Camera(channel, intrinsic, ego_from_cam, int(width), int(height),
                      image_path=str(path.relative_to(self.dataroot)), timestamp=int(cam.get("timestamp") or frame_timestamp))

    def _boxes(self, meta: dict, global_from_ego: np.ndarray, ref: _LogRef) -> list[Box]:
        """``anns`` -> boxes in the global frame. ``gt_boxes`` (N, 7) are ego-frame x, y, z, l, w, h,
        yaw with ``yaw = global yaw - ego yaw`` (module docstring); a test-split frame has no ``anns``."""
        anns = meta.get("anns") or {}
        try:
            boxes = np.asarray(anns.get("gt_boxes", np.zeros((0, 7))), dtype=np.float64).reshape(-1, 7)
        except (TypeError, ValueError):
            raise ConverterError(ref.meta, f"frame {meta.get('token')} 'gt_boxes' is not an (N, 7) array of numbers") from None
        names = list(anns.get("gt_names", []))
        tracks = list(anns.get("track_tokens", []))
        if len(names) != len(boxes) or len(tracks) != len(boxes):
            raise ConverterError(ref.meta, f"frame {meta.get('token')}: {len(boxes)} gt_boxes, {len(names)} gt_names, "
                                           f"{len(tracks)} track_tokens")
        ego_yaw = np.arctan2(global_from_ego[1, 0], global_from_ego[0, 0])
        centers = boxes[:, :3] @ global_from_ego[:3, :3].T + global_from_ego[:3, 3]
        out = []
        for center, (length, width, height), yaw, name, track in zip(centers, boxes[:, 3:6], boxes[:, 6], names, tracks):
            out.append(Box(transform(yaw_matrix(yaw + ego_yaw), center), np.array([length, width, height]), str(track), str(name),
                           self.box_label(str(name), OPENSCENE.label_of_nuplan)))
        return out

    @staticmethod
    def _label_path(labels: LabelSpec, meta: dict, ref: _LogRef) -> Path:
        rel = meta.get("occ_gt_final_path")
        if not rel:
            raise ConverterError(ref.meta, f"frame {meta.get('token')} has no occ_gt_final_path (no occupancy label)")
        # The stored path is relative to wherever the authors kept the data (or is one of their
        # absolute paths): try it under the label root with fewer and fewer leading folders. Only
        # files under the label root are opened: the path is normalised and its root and leading
        # '..' dropped first, so no candidate can climb out of the root.
        text = str(rel)
        if "\0" in text:
            raise ConverterError(ref.meta, f"frame {meta.get('token')} occ_gt_final_path {text!r} holds a NUL byte")
        parts = Path(posixpath.normpath("/" + text.lstrip("/"))).parts[1:]  # [1:]: without the root "/"
        if not parts:
            raise ConverterError(ref.meta, f"frame {meta.get('token')} occ_gt_final_path {text!r} names no file")
        for start in range(len(parts)):
            candidate = labels.root.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
        return labels.root.joinpath(*parts)
