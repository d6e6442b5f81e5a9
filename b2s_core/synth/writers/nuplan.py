"""nuPlan raw logs: ``<root>/splits/<split>/<log>.db`` (SQLite) + ``<root>/sensor_blobs/<log>/...``.

Follows the nuplan-devkit ORM schema (``nuplan/database/nuplan_db_orm``): every token is an 8-byte
BLOB (16 hex characters when shown); ``lidar.translation/rotation`` and ``camera.translation/
rotation/intrinsic/distortion`` are pickled numpy float64 arrays (the devkit's pickle-typed columns;
rotation is a quaternion w, x, y, z); ``ego_pose`` has plain REAL columns; ``lidar_box`` holds global
``x, y, z`` (box centre), ``width, length, height``, ``yaw`` and velocities. ``lidar_pc.filename``
and ``image.filename_jpg`` are relative to ``sensor_blobs``. One log per synthetic scene; LiDAR
(channel ``MergedPointCloud``, a ``.pcd`` with a ``DATA binary`` header) at 20 Hz with boxes at
every sweep; eight cameras (CAM_F0 ... CAM_B0) at the 2 Hz key frames only.

Scenes: the log is cut at key frames into consecutive ``scene`` rows (:func:`scene_parts`), because
the devkit's scenario query (``nuplan/database/nuplan_db/nuplan_scenario_queries.py:
get_scenarios_from_db``) ranks a log's scenes by name and keeps only ranks 3 .. count-2: a log needs
5 scenes before the devkit sees any scenario. Each scene's first lidar_pc carries one
``scenario_tag`` (as the devkit's own test database tags scenes, ``nuplan/database/nuplan_db/test/
minimal_db_test_utils.py``).
"""

from __future__ import annotations

import math
import pickle
import sqlite3
from pathlib import Path

import numpy as np

from b2s_core.synth.geometry import pose_matrix, quaternion_from_matrix, token, yaw_rotation
from b2s_core.synth.roads import SECTION
from b2s_core.synth.scene import KeyFrameRecord, SceneSpec, SweepRecord
from b2s_core.synth.sensors import NUPLAN_CAMERAS
from b2s_core.synth.writers.common import atomic_write_bytes, jpeg_bytes

SPLIT = "mini"
LIDAR_CHANNEL = "MergedPointCloud"
BOX_RANGE = 75.0  # metres: objects written as lidar_box rows around the ego
CATEGORIES = ("vehicle", "bicycle", "pedestrian", "traffic_cone", "barrier", "czone_sign", "generic_object")
# The devkit keeps the scenes ranked 3 .. count-2 of a log (get_scenarios_from_db: row_num >= 3 AND
# row_num < count - 1): 5 scenes leave one.
SCENES_PER_LOG = 5
# nuPlan scenes are "snippets of up to 20 s" (nuplan-devkit docs/nuplan_schema.md, scene): 40 key frames.
MAX_SCENE_KEY_FRAMES = 40
# scenario_tag types (names from the devkit's scenario_mapping/nuplan_scenario_mapping.yaml). The ego
# always follows its lane at constant speed; "with lead" is b2s's own rule (nuPlan's scenario miner
# is not public): a vehicle ahead of the ego, centre within LEAD_RANGE and inside the ego's lane.
TAG_WITH_LEAD, TAG_WITHOUT_LEAD = "following_lane_with_lead", "following_lane_without_lead"
LEAD_RANGE = 40.0  # metres

SCHEMA = """
CREATE TABLE log (token BLOB(8) PRIMARY KEY, vehicle_name VARCHAR(64), date VARCHAR(64), timestamp INTEGER,
                  logfile VARCHAR(64), location VARCHAR(64), map_version VARCHAR(64));
CREATE TABLE category (token BLOB(8) PRIMARY KEY, name VARCHAR(64), description TEXT);
CREATE TABLE ego_pose (token BLOB(8) PRIMARY KEY, timestamp INTEGER, x REAL, y REAL, z REAL, qw REAL, qx REAL,
                       qy REAL, qz REAL, vx REAL, vy REAL, vz REAL, acceleration_x REAL, acceleration_y REAL,
                       acceleration_z REAL, angular_rate_x REAL, angular_rate_y REAL, angular_rate_z REAL,
                       epsg INTEGER, log_token BLOB(8) NOT NULL REFERENCES log(token));
CREATE TABLE lidar (token BLOB(8) PRIMARY KEY, log_token BLOB(8) NOT NULL REFERENCES log(token), channel VARCHAR(64),
                    model VARCHAR(64), translation BLOB, rotation BLOB);
CREATE TABLE camera (token BLOB(8) PRIMARY KEY, log_token BLOB(8) NOT NULL REFERENCES log(token), channel VARCHAR(64),
                     model VARCHAR(64), translation BLOB, rotation BLOB, intrinsic BLOB, distortion BLOB,
                     width INTEGER, height INTEGER);
CREATE TABLE scene (token BLOB(8) PRIMARY KEY, log_token BLOB(8) NOT NULL REFERENCES log(token), name TEXT,
                    goal_ego_pose_token BLOB(8) REFERENCES ego_pose(token), roadblock_ids TEXT);
CREATE TABLE lidar_pc (token BLOB(8) PRIMARY KEY, next_token BLOB(8) REFERENCES lidar_pc(token),
                       prev_token BLOB(8) REFERENCES lidar_pc(token), ego_pose_token BLOB(8) NOT NULL REFERENCES ego_pose(token),
                       lidar_token BLOB(8) NOT NULL REFERENCES lidar(token), scene_token BLOB(8) NOT NULL REFERENCES scene(token),
                       filename VARCHAR(128), timestamp INTEGER);
CREATE TABLE image (token BLOB(8) PRIMARY KEY, next_token BLOB(8) REFERENCES image(token),
                    prev_token BLOB(8) REFERENCES image(token), ego_pose_token BLOB(8) NOT NULL REFERENCES ego_pose(token),
                    camera_token BLOB(8) NOT NULL REFERENCES camera(token), filename_jpg VARCHAR(128), timestamp INTEGER);
CREATE TABLE track (token BLOB(8) PRIMARY KEY, category_token BLOB(8) NOT NULL REFERENCES category(token),
                    width REAL, length REAL, height REAL);
CREATE TABLE lidar_box (token BLOB(8) PRIMARY KEY, lidar_pc_token BLOB(8) NOT NULL REFERENCES lidar_pc(token),
                        track_token BLOB(8) REFERENCES track(token), next_token BLOB(8) REFERENCES lidar_box(token),
                        prev_token BLOB(8) REFERENCES lidar_box(token), x REAL, y REAL, z REAL, width REAL, length REAL,
                        height REAL, vx REAL, vy REAL, vz REAL, yaw REAL, confidence REAL);
CREATE TABLE scenario_tag (token BLOB(8) PRIMARY KEY, lidar_pc_token BLOB(8) NOT NULL REFERENCES lidar_pc(token),
                           type TEXT, agent_track_token BLOB(8) REFERENCES track(token));
CREATE TABLE traffic_light_status (token BLOB(8) PRIMARY KEY, lidar_pc_token BLOB(8) NOT NULL REFERENCES lidar_pc(token),
                                   lane_connector_id INTEGER, status VARCHAR(8));
CREATE INDEX idx_lidar_pc_scene ON lidar_pc(scene_token);
CREATE INDEX idx_lidar_box_pc ON lidar_box(lidar_pc_token);
CREATE INDEX idx_image_camera ON image(camera_token);
"""


def nuplan_lidar_from_ego(spec: SceneSpec) -> np.ndarray:
    """(4, 4) ego -> nuPlan LiDAR frame: the simulated LiDAR's origin, axes aligned with the ego (yaw 0)."""
    return np.linalg.inv(pose_matrix(spec.lidar.translation, yaw_rotation(0.0)))


def log_name(spec: SceneSpec) -> str:
    """A nuPlan-looking log name (date, vehicle, indices)."""
    return f"2021.06.{1 + spec.index % 28:02d}.12.00.00_veh-{10 + spec.seed % 90}_{spec.index:05d}_{spec.seed % 100000:05d}"


def scene_parts(spec: SceneSpec) -> list[tuple[int, int]]:
    """[start, stop) sweep ranges of the log's consecutive nuPlan scenes, in time order.

    Cut at key frames only (b2s's nuPlan reader starts a scene's 2 Hz key-frame clock at its first
    lidar_pc, so every scene must start on a key frame to give back the generator's key frames):
    the key frames are split as evenly as possible into max(SCENES_PER_LOG, ceil(K / 40)) scenes,
    never more than K. So a run of >= 5 key frames has >= 5 scenes (the devkit then finds
    scenarios); a shorter run has one scene per key frame (and the devkit finds none in it).
    """
    keys = spec.key_frames
    count = min(keys, max(SCENES_PER_LOG, math.ceil(keys / MAX_SCENE_KEY_FRAMES)))
    starts = [int(chunk[0]) * spec.sweeps_per_key for chunk in np.array_split(np.arange(keys), count)]
    return list(zip(starts, starts[1:] + [spec.num_sweeps]))


def roadblock_ids(spec: SceneSpec, world) -> list[str]:
    """The ego's route as nuPlan roadblock ids (numeric strings): one per piece of the synthetic road
    the ego drives on (a synthetic world has no nuPlan map). nuPlan stores them space-separated in
    ``scene.roadblock_ids`` (nuplan_scenario_queries.py: get_roadblock_ids_for_lidarpc_token_from_db
    splits on " "), and OpenScene copies them from there per frame."""
    pieces = world.roads.paths[world.ego_path].pieces
    return [str(100_000 * (spec.index + 1) + 1_000 * world.ego_path + i) for i in range(len(pieces))]


def tok(*parts) -> str:
    """A 16-hex-character nuPlan token."""
    return token("nuplan", *parts, nbytes=8)


def blob(hex_token: str | None) -> bytes | None:
    return bytes.fromhex(hex_token) if hex_token else None


def pickled(array) -> bytes:
    """How the devkit's pickle-typed columns store a value: a pickled numpy float64 array."""
    return pickle.dumps(np.asarray(array, dtype=np.float64))


def pcd_bytes(points: np.ndarray) -> bytes:
    """(N, 5+) float32 x, y, z, intensity, ring -> a PCD v0.7 file (fields x y z intensity ring lidar_info)."""
    n = points.shape[0]
    data = np.zeros((n, 6), dtype=np.float32)
    data[:, :5] = points[:, :5]  # lidar_info (source LiDAR id of the merged cloud) = 0: one simulated LiDAR
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity ring lidar_info\n"
        "SIZE 4 4 4 4 4 4\nTYPE F F F F F F\nCOUNT 1 1 1 1 1 1\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n"
    )
    return header.encode("ascii") + data.tobytes()


class NuPlanWriter:
    def __init__(self, root: Path, split: str = SPLIT):
        self.root = Path(root)
        self.split = split

    # tokens shared with the OpenScene writer (OpenScene frames are nuPlan lidar_pc records)
    @staticmethod
    def lidar_pc_token(spec: SceneSpec, sweep_index: int) -> str:
        return tok("lidar_pc", spec.seed, spec.index, sweep_index)

    @staticmethod
    def scene_token(spec: SceneSpec, part: int = 0) -> str:
        """Token of the log's nuPlan scene ``part`` (see :func:`scene_parts`; 0 = the first)."""
        return tok("scene", spec.seed, spec.index, part)

    @staticmethod
    def scene_name(spec: SceneSpec, part: int) -> str:
        # zero-padded: the devkit ranks a log's scenes by name, which must follow time
        return f"{spec.name}-{part:03d}"

    @staticmethod
    def part_of_sweep(spec: SceneSpec, sweep_index: int) -> int:
        """Index of the nuPlan scene (:func:`scene_parts`) holding sweep ``sweep_index``."""
        return next(p for p, (start, stop) in enumerate(scene_parts(spec)) if start <= sweep_index < stop)

    @staticmethod
    def log_token(spec: SceneSpec) -> str:
        return tok("log", spec.seed, spec.index)

    def key_tokens(self, spec: SceneSpec, frame: KeyFrameRecord) -> dict:
        return {"nuplan_lidar_pc_token": self.lidar_pc_token(spec, frame.sweep.sweep_index)}

    def scene_tokens(self, spec: SceneSpec) -> dict:
        parts = range(len(scene_parts(spec)))
        return {"nuplan_log_name": log_name(spec), "nuplan_scene_names": [self.scene_name(spec, p) for p in parts],
                "nuplan_scene_tokens": [self.scene_token(spec, p) for p in parts]}

    def begin_scene(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.log = log_name(spec)
        self.parts = scene_parts(spec)
        self.part_starts = {start: p for p, (start, _) in enumerate(self.parts)}
        db = self.root / "splits" / self.split / f"{self.log}.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = db.with_name(db.name + ".tmp")
        self.tmp.unlink(missing_ok=True)
        self.db = db
        self.con = sqlite3.connect(self.tmp)
        # the file is renamed into place only when complete: no journal or fsync needed while writing
        self.con.execute("PRAGMA journal_mode = OFF")
        self.con.execute("PRAGMA synchronous = OFF")
        self.con.executescript(SCHEMA)
        self.log_tok = self.log_token(spec)
        self.con.execute("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)", (
            blob(self.log_tok), f"veh-{10 + spec.seed % 90}", "2021-06-01", spec.timestamp(0), self.log,
            "synth", "nuplan-maps-v1.0"))
        for name in CATEGORIES:
            self.con.execute("INSERT INTO category VALUES (?, ?, ?)", (blob(tok("category", name)), name, name))
        self.lidar_tok = tok("lidar", spec.seed, spec.index)
        ego_from_lidar = np.linalg.inv(nuplan_lidar_from_ego(spec))
        self.con.execute("INSERT INTO lidar VALUES (?, ?, ?, ?, ?, ?)", (
            blob(self.lidar_tok), blob(self.log_tok), LIDAR_CHANNEL, "synth-32", pickled(ego_from_lidar[:3, 3]),
            pickled(quaternion_from_matrix(ego_from_lidar[:3, :3]))))
        self.camera_toks = {}
        for cam in NUPLAN_CAMERAS:
            size = cam.size_for(spec.image_size)
            ctok = tok("camera", spec.seed, spec.index, cam.name)
            self.camera_toks[cam.name] = ctok
            self.con.execute("INSERT INTO camera VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                blob(ctok), blob(self.log_tok), cam.name, "synth-pinhole", pickled(cam.ego_from_cam[:3, 3]),
                pickled(quaternion_from_matrix(cam.ego_from_cam[:3, :3])), pickled(cam.intrinsic(size)),
                pickled(np.zeros(5)), size[0], size[1]))
        self.tracks: set[int] = set()
        self.last_box: dict[int, str] = {}
        self.box_next: list[tuple[bytes, bytes]] = []  # (next token, box token), filled in at the end
        self.last_image: dict[str, str] = {}

    def _ego_pose_token(self, key: str) -> str:
        return tok("ego_pose", self.spec.seed, self.spec.index, key)

    def _ego_pose(self, key: str, timestamp: int, pose: np.ndarray, velocity=(0.0, 0.0, 0.0)) -> str:
        etok = self._ego_pose_token(key)
        q = quaternion_from_matrix(pose[:3, :3])
        self.con.execute("INSERT INTO ego_pose VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
            blob(etok), timestamp, *pose[:3, 3].tolist(), *q.tolist(), *velocity, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0,
            blob(self.log_tok)))
        return etok

    def add_sweep(self, sweep: SweepRecord) -> None:
        spec = self.spec
        k = sweep.sweep_index
        ptok = self.lidar_pc_token(spec, k)
        filename = f"{self.log}/{LIDAR_CHANNEL}/{ptok}.pcd"
        # points: simulated LiDAR frame -> ego -> nuPlan LiDAR frame
        lidar_from_sensor = nuplan_lidar_from_ego(spec) @ spec.lidar.ego_from_sensor
        points = sweep.lidar.points.copy()
        points[:, :3] = points[:, :3] @ lidar_from_sensor[:3, :3].T + lidar_from_sensor[:3, 3]
        atomic_write_bytes(self.root / "sensor_blobs" / filename, pcd_bytes(points))
        etok = self._ego_pose(f"lidar{k}", sweep.timestamp, sweep.global_from_ego, (sweep.world.ego_speed, 0.0, 0.0))
        prev_tok = self.lidar_pc_token(spec, k - 1) if k > 0 else None
        next_tok = self.lidar_pc_token(spec, k + 1) if k + 1 < spec.num_sweeps else None
        scene_tok = self.scene_token(spec, self.part_of_sweep(spec, k))
        self.con.execute("INSERT INTO lidar_pc VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
            blob(ptok), blob(next_tok), blob(prev_tok), blob(etok), blob(self.lidar_tok), blob(scene_tok),
            filename, sweep.timestamp))
        self._boxes(sweep, ptok)
        if k in self.part_starts:
            self._scenario_tag(sweep, ptok)  # after _boxes: the lead's track row exists

    def _scenario_tag(self, sweep: SweepRecord, ptok: str) -> None:
        """One tag on a scene's first lidar_pc: lane following, with or without a lead vehicle."""
        world = sweep.world
        boxes = world.boxes(sweep.time)
        centre = (boxes["center"] - sweep.global_from_ego[:3, 3]) @ sweep.global_from_ego[:3, :3]  # ego frame
        vehicle = np.array([world.agents[int(t)].kind.nuplan == "vehicle" for t in boxes["track"]], dtype=bool)
        ahead = vehicle & (centre[:, 0] > 0) & (centre[:, 0] <= LEAD_RANGE) & (np.abs(centre[:, 1]) < SECTION.lane_width / 2)
        lead = None
        if ahead.any():
            nearest = int(np.flatnonzero(ahead)[np.argmin(centre[ahead, 0])])
            lead = tok("track", self.spec.seed, self.spec.index, world.agents[int(boxes["track"][nearest])].track)
        self.con.execute("INSERT INTO scenario_tag VALUES (?, ?, ?, ?)", (
            blob(tok("scenario_tag", self.spec.seed, self.spec.index, sweep.sweep_index)), blob(ptok),
            TAG_WITH_LEAD if lead else TAG_WITHOUT_LEAD, blob(lead)))

    def _boxes(self, sweep: SweepRecord, ptok: str) -> None:
        world = sweep.world
        boxes = world.boxes(sweep.time)
        near = np.hypot(*(boxes["center"][:, :2] - sweep.global_from_ego[:2, 3]).T) < BOX_RANGE
        rows = []
        for a in np.flatnonzero(near):
            agent = world.agents[int(boxes["track"][a])]
            track = agent.track
            ttok = tok("track", self.spec.seed, self.spec.index, track)
            length, width, height = boxes["size"][a]
            if track not in self.tracks:
                self.tracks.add(track)
                self.con.execute("INSERT INTO track VALUES (?, ?, ?, ?, ?)", (
                    blob(ttok), blob(tok("category", agent.kind.nuplan)), width, length, height))
            btok = tok("lidar_box", self.spec.seed, self.spec.index, track, sweep.sweep_index)
            prev = self.last_box.get(track)
            if prev is not None:
                self.box_next.append((blob(btok), blob(prev)))
            x, y, z = boxes["center"][a]
            vx, vy, vz = boxes["velocity"][a]
            rows.append((blob(btok), blob(ptok), blob(ttok), None, blob(prev), x, y, z, width, length, height,
                         vx, vy, vz, float(boxes["yaw"][a]), 1.0))
            self.last_box[track] = btok
        self.con.executemany("INSERT INTO lidar_box VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        for view in frame.cameras.get("nuplan", []):
            name = view.camera.name
            itok = tok("image", self.spec.seed, self.spec.index, name, frame.key_index)
            filename = f"{self.log}/{name}/{itok}.jpg"
            atomic_write_bytes(self.root / "sensor_blobs" / filename, jpeg_bytes(view.rgb))
            etok = self._ego_pose(f"{name}{frame.key_index}", frame.timestamp, frame.global_from_ego)
            prev = self.last_image.get(name)
            if prev is not None:
                self.con.execute("UPDATE image SET next_token = ? WHERE token = ?", (blob(itok), blob(prev)))
            self.con.execute("INSERT INTO image VALUES (?, ?, ?, ?, ?, ?, ?)", (
                blob(itok), None, blob(prev), blob(etok), blob(self.camera_toks[name]), filename, frame.timestamp))
            self.last_image[name] = itok

    def end_scene(self, world) -> None:
        # Every scene's goal is the drive's last ego pose (nuPlan: "a future ego pose from beyond that
        # scene"; the last scene has nothing beyond, so its own end).
        goal = blob(self._ego_pose_token(f"lidar{self.spec.num_sweeps - 1}"))
        route = " ".join(roadblock_ids(self.spec, world))
        self.con.executemany("INSERT INTO scene VALUES (?, ?, ?, ?, ?)", [
            (blob(self.scene_token(self.spec, p)), blob(self.log_tok), self.scene_name(self.spec, p), goal, route)
            for p in range(len(self.parts))])
        self.con.executemany("UPDATE lidar_box SET next_token = ? WHERE token = ?", self.box_next)
        self.con.commit()
        self.con.close()
        self.tmp.replace(self.db)

    def finish(self) -> dict:
        return {"root": str(self.root), "split": self.split, "sensor_root": str(self.root / "sensor_blobs")}

