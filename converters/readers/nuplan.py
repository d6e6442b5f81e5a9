"""nuPlan raw logs: one SQLite ``.db`` per log (read with the standard library) + ``.pcd`` LiDAR blobs.

Schema facts used here (nuplan-devkit ``nuplan/database/nuplan_db_orm``): tokens are 8-byte BLOBs
(shown as 16-char hex); ``ego_pose`` has plain REAL columns ``x y z qw qx qy qz``; ``lidar`` and
``camera`` store ``translation``, ``rotation`` (and ``intrinsic``, ``distortion``) as pickled values
(``nuplan/database/common/sql_types.py``: ``pickle.dumps`` of lists, numpy arrays or the devkit's
``data_types.Translation / Rotation / CameraIntrinsic``); ``lidar_box`` holds global ``x y z yaw``
and ``width length height``; ``lidar_pc.filename`` and ``image.filename_jpg`` are relative to the
``sensor_blobs`` folder. How a stored value is decoded lives in one place: :func:`decode_vector`.

Scenes: a log holds many ``scene`` rows (nuPlan scenes are snippets of up to 20 s, each lidar_pc
names its scene); each becomes one b2s scene, named by its ``name`` (prefixed with the log's file
name where two logs reuse a name). A scene is the unit ``build-binary`` aggregates over, and 20 s
matches the nuScenes scenes the method was made for, where a whole log runs for minutes.

Key frames: the LiDAR runs at 20 Hz; a scene's first sweep and then every sweep at least
``key_frame_period_us`` (0.5 s, the 2 Hz of nuScenes and OpenScene) after the previous key frame is
a key frame, the sweeps between are its non-key sweeps (sweeps of the scene after its last key
frame belong to no key frame). Cameras take the image of each channel nearest in time, expressed in
the key frame's ego frame through the image's own ego pose (ego-motion compensation).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b2s_core.records import Box, Camera, LidarSweep, SensorFrame
from b2s_core.taxonomy import OPENSCENE
from converters.errors import ConverterError
from converters.readers import safe_pickle
from converters.readers.base import (
    FrameErrorHandler,
    SceneReader,
    dataset_file,
    image_size,
    quaternion_matrix,
    report,
    transform,
    yaw_matrix,
)
from converters.readers.pcd import check_pcd_file, read_pcd

CAMERA_ORDER = ("CAM_F0", "CAM_L0", "CAM_R0", "CAM_L1", "CAM_R1", "CAM_L2", "CAM_R2", "CAM_B0")
KEY_FRAME_PERIOD_US = 500_000
KEY_FRAME_TOLERANCE_US = 25_000  # half a 20 Hz sweep: sweep times jitter around the nominal period
MAX_IMAGE_GAP_US = 100_000  # an image further than this from the key frame is "missing"


def decode_vector(value, size: int, where: str, source: object) -> np.ndarray:
    """A stored vector/matrix value -> float64 array of ``size`` numbers.

    Real logs pickle lists / numpy arrays / the devkit's ``data_types`` classes (read with the
    restricted unpickler, never plain pickle, which returns the devkit classes as arrays); JSON text
    and raw float64 bytes are accepted too, so that exported or hand-made logs work.
    """
    if isinstance(value, (bytes, memoryview)):
        data = bytes(value)
        if data[:1] == b"\x80":  # pickle protocol >= 2 header
            array = np.asarray(safe_pickle.loads(data, source=f"{source} ({where})"), dtype=np.float64)
        elif len(data) == 8 * size:
            array = np.frombuffer(data, dtype="<f8").copy()
        else:
            raise ConverterError(source, f"{where}: cannot decode a {len(data)}-byte value")
    elif isinstance(value, str):
        try:
            array = np.asarray(json.loads(value), dtype=np.float64)
        except (ValueError, TypeError):
            raise ConverterError(source, f"{where}: text value is not a JSON list of numbers") from None
    elif value is None:
        raise ConverterError(source, f"{where}: value is missing (NULL)")
    else:
        raise ConverterError(source, f"{where}: unexpected value of type {type(value).__name__}")
    if array.size != size:
        raise ConverterError(source, f"{where}: {array.size} numbers, expected {size}")
    return array.reshape(-1)


def hex_token(value) -> str:
    return bytes(value).hex() if isinstance(value, (bytes, memoryview)) else str(value)


def load_pcd_points(path: str) -> np.ndarray:
    """(N, C) float32 points of a nuPlan ``.pcd``, columns x, y, z first, then the other fields."""
    cloud = read_pcd(path)
    if not all(c in cloud.columns for c in ("x", "y", "z")):
        raise ConverterError(path, f"PCD has no x, y, z fields (fields: {' '.join(cloud.columns)})")
    if len(cloud.points) == 0:
        raise ConverterError(path, "LiDAR file holds no points")
    order = [cloud.columns.index(c) for c in ("x", "y", "z")]
    order += [i for i in range(len(cloud.columns)) if i not in order]
    return np.ascontiguousarray(cloud.points[:, order])


def check_lidar_pcd(path: Path) -> Path:
    """``path`` when its header is sound, it promises points and the file holds them all (header and
    size only: a bad cloud is found when its frame is listed, so the frame is skipped, whichever
    command loads the points later)."""
    header = check_pcd_file(path)
    if header.num_points == 0:
        raise ConverterError(path, "LiDAR file holds no points")
    return path


@dataclass
class _SceneRef:
    db: Path
    token: bytes
    name: str


class NuPlanReader(SceneReader):
    source = "nuplan"

    def __init__(self, dataroot: str | Path, *, scenes: list[str] | None = None, split: str | None = None,
                 sensor_root: str | Path | None = None, key_frame_period_us: int = KEY_FRAME_PERIOD_US,
                 compensate_ego_motion: bool = True) -> None:
        self.dataroot = Path(dataroot)
        self.sensor_root = Path(sensor_root) if sensor_root else self._find_sensor_root()
        self.image_root = self.sensor_root
        self.taxonomy = OPENSCENE
        self.label_grid = None
        self.key_frame_period_us = key_frame_period_us
        self.compensate_ego_motion = compensate_ego_motion
        self.open_errors: list[ConverterError] = []
        dbs = self._find_dbs(split)
        if not dbs:
            raise ConverterError(self.dataroot, f"no nuPlan .db log found{' for split ' + split if split else ''}")
        self._scenes: dict[str, _SceneRef] = {}
        channels: set[str] = set()
        for db in dbs:
            try:
                with self._connect(db) as con:
                    rows = con.execute("SELECT token, name FROM scene ORDER BY rowid").fetchall()
                    channels |= {r[0] for r in con.execute("SELECT channel FROM camera")}
            except sqlite3.DatabaseError as err:
                raise ConverterError(db, f"not a readable nuPlan SQLite log ({err})") from None
            for token, name in rows:
                key = name if name not in self._scenes else f"{db.stem}/{name}"
                self._scenes[key] = _SceneRef(db, bytes(token), name)
        self.camera_names = [c for c in CAMERA_ORDER if c in channels] + sorted(channels - set(CAMERA_ORDER))
        self._selected = self._select(scenes)

    def _find_sensor_root(self) -> Path:
        # nuPlan ships <root>/splits/<split>/*.db beside <root>/sensor_blobs: the user may point at
        # either level, so look in the dataroot and up to three folders above it.
        base = self.dataroot if self.dataroot.is_dir() else self.dataroot.parent
        for folder in [base, *list(base.parents)[:3]]:
            if (folder / "sensor_blobs").is_dir():
                return folder / "sensor_blobs"
        return base

    def _find_dbs(self, split: str | None) -> list[Path]:
        if self.dataroot.is_file():
            return [self.dataroot]
        dbs = sorted(self.dataroot.rglob("*.db"))
        if split:
            dbs = [db for db in dbs if split in db.relative_to(self.dataroot).parts[:-1]]
        return dbs

    def _select(self, scenes: list[str] | None) -> list[str]:
        if not scenes:
            return list(self._scenes)
        missing = [s for s in scenes if s not in self._scenes]
        if missing:
            raise ConverterError(self.dataroot, f"no nuPlan scene named {', '.join(missing)}")
        return [s for s in self._scenes if s in set(scenes)]

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        # Read-only: a converter never changes its input.
        return sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    def scene_names(self) -> list[str]:
        return list(self._selected)

    # -- frames ------------------------------------------------------------------------------------
    def read_scene(self, name: str, on_error: FrameErrorHandler | None = None) -> Iterator[SensorFrame]:
        ref = self._scenes.get(name)
        if ref is None:
            raise ConverterError(self.dataroot, f"no nuPlan scene named {name}")
        con = self._connect(ref.db)
        try:
            log = _Log(con, ref.db, self)
            sweeps = con.execute(
                "SELECT token, timestamp, filename, ego_pose_token, lidar_token FROM lidar_pc "
                "WHERE scene_token = ? ORDER BY timestamp", (ref.token,)).fetchall()
            groups = self._key_frames(sweeps)
            box_rows = log.boxes_of_scene([bytes(key[0]) for key, _ in groups])
            for key, before in groups:
                try:
                    frame = log.frame(name, key, before, box_rows[bytes(key[0])])
                except ConverterError as err:
                    report(on_error, name, hex_token(key[0]), err)
                else:
                    yield frame
        finally:
            con.close()

    def _key_frames(self, sweeps: list[tuple]) -> list[tuple[tuple, list[tuple]]]:
        """lidar_pc rows in time order (timestamp second) -> (key frame row, the non-key sweeps before it)."""
        groups: list[tuple[tuple, list[tuple]]] = []
        pending: list[tuple] = []
        last_key: int | None = None
        for row in sweeps:
            timestamp = int(row[1])
            if last_key is not None and timestamp - last_key < self.key_frame_period_us - KEY_FRAME_TOLERANCE_US:
                pending.append(row)
                continue
            last_key = timestamp
            groups.append((row, pending))
            pending = []
        return groups

    def scene_length(self, name: str) -> int:
        """Key frames of the scene: its lidar_pc timestamps split as read_scene splits them."""
        ref = self._scenes.get(name)
        if ref is None:
            raise ConverterError(self.dataroot, f"no nuPlan scene named {name}")
        con = self._connect(ref.db)
        try:
            rows = con.execute("SELECT token, timestamp FROM lidar_pc WHERE scene_token = ? ORDER BY timestamp",
                               (ref.token,)).fetchall()
        except sqlite3.DatabaseError as err:
            raise ConverterError(ref.db, f"not a readable nuPlan SQLite log ({err})") from None
        finally:
            con.close()
        return len(self._key_frames(rows))


class _Log:
    """Queries of one open log, with its calibration cached."""

    def __init__(self, con: sqlite3.Connection, db: Path, reader: NuPlanReader) -> None:
        self.con, self.db, self.reader = con, db, reader
        self._lidar: dict[bytes, np.ndarray] = {}
        self._cameras: list[tuple] | None = None
        self._images: dict[bytes, tuple[np.ndarray, list[tuple]]] = {}

    def one(self, sql: str, params: tuple, what: str):
        row = self.con.execute(sql, params).fetchone()
        if row is None:
            raise ConverterError(self.db, what)
        return row

    def global_from_ego(self, token: bytes, referrer: str) -> np.ndarray:
        x, y, z, qw, qx, qy, qz = self.one("SELECT x, y, z, qw, qx, qy, qz FROM ego_pose WHERE token = ?", (token,),
                                           f"{referrer} refers to ego_pose {hex_token(token)} that is not in ego_pose")
        return transform(quaternion_matrix((qw, qx, qy, qz), f"{self.db} (ego_pose {hex_token(token)})"), (x, y, z))

    def ego_from_lidar(self, token: bytes, referrer: str) -> np.ndarray:
        if token not in self._lidar:
            translation, rotation = self.one("SELECT translation, rotation FROM lidar WHERE token = ?", (token,),
                                             f"{referrer} refers to lidar {hex_token(token)} that is not in lidar")
            where = f"lidar {hex_token(token)}"
            rotation = quaternion_matrix(decode_vector(rotation, 4, where + " rotation", self.db), f"{self.db} ({where})")
            self._lidar[token] = transform(rotation, decode_vector(translation, 3, where + " translation", self.db))
        return self._lidar[token]

    def sweep(self, row: tuple, is_key_frame: bool) -> LidarSweep:
        token, timestamp, filename, ego_pose_token, lidar_token = row
        referrer = f"lidar_pc {hex_token(token)}"
        path = check_lidar_pcd(dataset_file(self.reader.sensor_root, filename, "LiDAR file", f"{self.db} ({referrer} filename)"))
        return LidarSweep(self.ego_from_lidar(lidar_token, referrer), self.global_from_ego(ego_pose_token, referrer),
                          int(timestamp), is_key_frame, functools.partial(load_pcd_points, str(path)), str(path))

    def cameras(self) -> list[tuple]:
        if self._cameras is None:
            rows = self.con.execute("SELECT token, channel, translation, rotation, intrinsic, width, height FROM camera").fetchall()
            cameras = []  # cached only once every camera decoded: a bad one fails every frame alike
            for token, channel, translation, rotation, intrinsic, width, height in rows:
                where = f"camera {channel}"
                rotation = quaternion_matrix(decode_vector(rotation, 4, where + " rotation", self.db), f"{self.db} ({where})")
                ego_from_cam = transform(rotation, decode_vector(translation, 3, where + " translation", self.db))
                K = decode_vector(intrinsic, 9, where + " intrinsic", self.db).reshape(3, 3)
                cameras.append((token, channel, ego_from_cam, K, int(width), int(height)))
            self._cameras = cameras
        return self._cameras

    def images_of(self, camera_token: bytes) -> tuple[np.ndarray, list[tuple]]:
        """(timestamps sorted, rows) of one camera's images, read once per log: a nearest-time
        lookup is then a binary search instead of a table scan per key frame."""
        if camera_token not in self._images:
            rows = self.con.execute("SELECT timestamp, filename_jpg, ego_pose_token FROM image WHERE camera_token = ? "
                                    "ORDER BY timestamp", (camera_token,)).fetchall()
            self._images[camera_token] = (np.array([int(r[0]) for r in rows], dtype=np.int64), rows)
        return self._images[camera_token]

    def camera(self, entry: tuple, timestamp: int, global_from_key_ego: np.ndarray) -> Camera:
        token, channel, ego_from_cam, K, width, height = entry
        stamps, rows = self.images_of(token)
        nearest = None
        if len(stamps):
            i = int(np.searchsorted(stamps, timestamp))
            nearest = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(int(stamps[j]) - timestamp))
        if nearest is None or abs(int(stamps[nearest]) - timestamp) > MAX_IMAGE_GAP_US:
            raise ConverterError(self.db, f"no {channel} image within {MAX_IMAGE_GAP_US // 1000} ms of lidar_pc at {timestamp}")
        image_time, filename, ego_pose_token = rows[nearest]
        path = dataset_file(self.reader.image_root, filename, f"{channel} image", f"{self.db} (image filename_jpg)")
        image_size(path, f"{channel} image")
        filename = str(path.relative_to(self.reader.image_root))  # normalised: what was checked is what is opened later
        if self.reader.compensate_ego_motion:
            global_from_cam_ego = self.global_from_ego(ego_pose_token, f"image {filename}")
            ego_from_cam = np.linalg.inv(global_from_key_ego) @ global_from_cam_ego @ ego_from_cam
        return Camera(channel, K.copy(), ego_from_cam, width, height, image_path=filename, timestamp=int(image_time))

    def boxes_of_scene(self, key_tokens: list[bytes]) -> dict[bytes, list[tuple]]:
        """lidar_box rows of all key frames of a scene in one query (one pass over the table even
        where a log has no index on lidar_pc_token)."""
        out: dict[bytes, list[tuple]] = {bytes(t): [] for t in key_tokens}
        for start in range(0, len(key_tokens), 500):  # SQLite limits the number of bound parameters
            chunk = key_tokens[start:start + 500]
            rows = self.con.execute(
                "SELECT lb.lidar_pc_token, lb.token, lb.x, lb.y, lb.z, lb.yaw, lb.length, lb.width, lb.height, lb.track_token, "
                "t.token, c.name FROM lidar_box lb LEFT JOIN track t ON lb.track_token = t.token "
                "LEFT JOIN category c ON t.category_token = c.token "
                f"WHERE lb.lidar_pc_token IN ({','.join('?' * len(chunk))}) ORDER BY lb.rowid", chunk).fetchall()
            for row in rows:
                out[bytes(row[0])].append(row[1:])
        return out

    def boxes(self, rows: list[tuple]) -> list[Box]:
        boxes = []
        for token, x, y, z, yaw, length, width, height, track_token, track_found, category in rows:
            if track_found is None:
                raise ConverterError(self.db, f"lidar_box {hex_token(token)} refers to track {hex_token(track_token)} that is not in track")
            if category is None:
                raise ConverterError(self.db, f"track {hex_token(track_token)} refers to a category that is not in category")
            boxes.append(Box(transform(yaw_matrix(yaw), (x, y, z)), np.array([length, width, height], dtype=np.float64),
                             hex_token(track_token), category, self.reader.box_label(category, OPENSCENE.label_of_nuplan)))
        return boxes

    def frame(self, scene: str, row: tuple, pending: list[tuple], box_rows: list[tuple]) -> SensorFrame:
        lidar = self.sweep(row, True)
        cameras = [self.camera(entry, lidar.timestamp, lidar.global_from_ego) for entry in self.cameras()]
        by_channel = {cam.name: cam for cam in cameras}
        cameras = [by_channel[c] for c in self.reader.camera_names if c in by_channel]
        return SensorFrame(
            scene=scene, token=hex_token(row[0]), timestamp=lidar.timestamp, global_from_ego=lidar.global_from_ego,
            cameras=cameras, lidar=lidar, sweeps=[self.sweep(r, False) for r in pending], boxes=self.boxes(box_rows),
            source_tokens={"lidar_pc": hex_token(row[0]), "log": self.db.stem},
        )
