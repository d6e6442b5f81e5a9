"""nuPlan logs as the official nuplan-devkit writes and reads them (issue 15, point 5).

1. A log built the devkit's way, independently of b2s's writer: calibration columns hold pickled
   ``nuplan.database.common.data_types`` objects, as the devkit's own test database stores them.
   b2s reads them to the right extrinsics / intrinsics; any other global there is refused.
2. The devkit's scenario query, rewritten here, finds scenarios in a b2s-synthesised log.
3. Round trip: synth nuPlan -> convert / build-binary -> the generator's key frames.
"""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from b2s_core.occfile import OccDataset
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.build_binary import BuildBinaryJob, build_binary
from converters.jobs.convert import ConvertConfig, convert
from converters.readers.pcd import write_pcd

DATA_TYPES = "nuplan.database.common.data_types"


# -- 1. a log written the devkit's way ---------------------------------------------------------------
@contextlib.contextmanager
def devkit_data_types():
    """Throwaway stand-ins for nuplan-devkit's nuplan/database/common/data_types.py classes
    (Translation, Rotation, CameraIntrinsic and Bbox: thin subclasses of list), registered under the
    devkit's module path so that pickle names them exactly as the devkit does; removed afterwards, so
    b2s reads the pickles with no such module importable."""
    names = ["nuplan", "nuplan.database", "nuplan.database.common", DATA_TYPES]
    modules = {name: types.ModuleType(name) for name in names}
    classes = {}
    for name in ("Translation", "Rotation", "CameraIntrinsic", "Bbox"):
        cls = type(name, (list,), {"__module__": DATA_TYPES})
        setattr(modules[DATA_TYPES], name, cls)
        classes[name] = cls
    assert not any(name in sys.modules for name in names), "a real nuplan package must not be imported here"
    sys.modules.update(modules)
    try:
        yield classes
    finally:
        for name in names:
            del sys.modules[name]


def axis_angle(axis, angle: float) -> tuple[np.ndarray, list[float]]:
    """(3, 3) rotation (Rodrigues) and its quaternion [w, x, y, z] (the devkit's Rotation order)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return matrix, [float(np.cos(angle / 2)), *(float(v) for v in np.sin(angle / 2) * axis)]


# Calibration of the fixture: channel -> (translation, rotation axis, angle, intrinsic)
LIDAR = ((0.94, -0.02, 1.84), (0.1, 0.2, 1.0), 0.031)
CAMERAS = {
    "CAM_F0": ((1.71, 0.01, 1.52), (1.0, -1.0, 1.0), -2.0944, [[1545.0, 0.0, 960.0], [0.0, 1545.0, 560.0], [0.0, 0.0, 1.0]]),
    "CAM_L0": ((1.41, 0.52, 1.53), (0.3, -0.9, 0.8), -2.31, [[1540.2, 0.0, 955.5], [0.0, 1541.7, 566.1], [0.0, 0.0, 1.0]]),
}
SWEEPS = 11  # 20 Hz: key frames at sweeps 0 and 10
T0 = 1_630_000_000_000_000


def _token(i: int) -> bytes:
    return i.to_bytes(8, "big")


def write_devkit_log(root: Path) -> Path:
    """A one-scene log following nuplan-devkit's nuplan/database/nuplan_db/test/minimal_db_test_utils.py
    (tables and column order of its _generate_*_table functions; calibration as pickle.dumps of
    data_types objects, distortion as a pickled plain list, exactly as _generate_camera_table and
    _generate_lidar_table do), with real-looking values and sensor files. Returns the .db path."""
    db = root / "splits" / "mini" / "2021.07.16.20.45.29_veh-35_01095_01486.db"
    db.parent.mkdir(parents=True)
    blobs = root / "sensor_blobs"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE log (token BLOB NOT NULL, vehicle_name VARCHAR(64), date VARCHAR(64), timestamp INTEGER,
                          logfile VARCHAR(64), location VARCHAR(64), map_version VARCHAR(64), PRIMARY KEY (token));
        CREATE TABLE ego_pose (token BLOB NOT NULL, timestamp INTEGER, x REAL, y REAL, z REAL, qw REAL, qx REAL, qy REAL,
                               qz REAL, vx REAL, vy REAL, vz REAL, acceleration_x REAL, acceleration_y REAL,
                               acceleration_z REAL, angular_rate_x REAL, angular_rate_y REAL, angular_rate_z REAL,
                               epsg INTEGER, log_token BLOB NOT NULL, PRIMARY KEY (token));
        CREATE TABLE lidar (token BLOB NOT NULL, log_token BLOB NOT NULL, channel VARCHAR(64), model VARCHAR(64),
                            translation BLOB, rotation BLOB, PRIMARY KEY (token));
        CREATE TABLE camera (token BLOB NOT NULL, log_token BLOB NOT NULL, channel VARCHAR(64), model VARCHAR(64),
                             translation BLOB, rotation BLOB, intrinsic BLOB, distortion BLOB, width FLOAT, height FLOAT,
                             PRIMARY KEY (token));
        CREATE TABLE scene (token BLOB NOT NULL, log_token BLOB NOT NULL, name TEXT, goal_ego_pose_token BLOB,
                            roadblock_ids TEXT, PRIMARY KEY (token));
        CREATE TABLE lidar_pc (token BLOB NOT NULL, next_token BLOB, prev_token BLOB, ego_pose_token BLOB NOT NULL,
                               lidar_token BLOB NOT NULL, scene_token BLOB, filename VARCHAR(128), timestamp INTEGER,
                               PRIMARY KEY (token));
        CREATE TABLE image (token BLOB NOT NULL, next_token BLOB, prev_token BLOB, ego_pose_token BLOB NOT NULL,
                            camera_token BLOB NOT NULL, filename_jpg VARCHAR(128), timestamp INTEGER, PRIMARY KEY (token));
        CREATE TABLE category (token BLOB NOT NULL, name VARCHAR(64), description TEXT, PRIMARY KEY (token));
        CREATE TABLE track (token BLOB NOT NULL, category_token BLOB NOT NULL, width FLOAT, length FLOAT, height FLOAT,
                            PRIMARY KEY (token));
        CREATE TABLE lidar_box (token BLOB NOT NULL, lidar_pc_token BLOB NOT NULL, track_token BLOB NOT NULL,
                                next_token BLOB, prev_token BLOB, x FLOAT, y FLOAT, z FLOAT, width FLOAT, length FLOAT,
                                height FLOAT, vx FLOAT, vy FLOAT, vz FLOAT, yaw FLOAT, confidence FLOAT, PRIMARY KEY (token));
    """)
    log, lidar, scene = _token(1), _token(2), _token(3)
    con.execute("INSERT INTO log VALUES (?,?,?,?,?,?,?)", (log, "veh-35", "2021-07-16", T0, db.stem, "us-nv-las-vegas-strip",
                                                           "us-nv-las-vegas-strip"))
    with devkit_data_types() as dt:
        translation, axis, angle = LIDAR
        con.execute("INSERT INTO lidar VALUES (?,?,?,?,?,?)", (
            lidar, log, "MergedPointCloud", "model", pickle.dumps(dt["Translation"](translation)),
            pickle.dumps(dt["Rotation"](axis_angle(axis, angle)[1]))))
        for c, (channel, (translation, axis, angle, intrinsic)) in enumerate(CAMERAS.items()):
            con.execute("INSERT INTO camera VALUES (?,?,?,?,?,?,?,?,?,?)", (
                _token(10 + c), log, channel, "model", pickle.dumps(dt["Translation"](translation)),
                pickle.dumps(dt["Rotation"](axis_angle(axis, angle)[1])), pickle.dumps(dt["CameraIntrinsic"](intrinsic)),
                pickle.dumps([-0.356, 0.172, -0.00213, 0.000585, -0.05]), 1920.0, 1080.0))
    con.execute("INSERT INTO scene VALUES (?,?,?,?,?)", (scene, log, "scene-0000", _token(100 + SWEEPS - 1), "48191 48192"))
    for k in range(SWEEPS):
        stamp = T0 + k * 50_000
        con.execute("INSERT INTO ego_pose (token, timestamp, x, y, z, qw, qx, qy, qz, log_token) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (_token(100 + k), stamp, 664_430.0 + 0.4 * k, 3_997_160.0, 606.0, 1.0, 0.0, 0.0, 0.0, log))
        pcd = f"{db.stem}/MergedPointCloud/{k:04d}.pcd"
        (blobs / pcd).parent.mkdir(parents=True, exist_ok=True)
        write_pcd(blobs / pcd, np.random.default_rng(k).normal(size=(20, 6)).astype(np.float32),
                  ("x", "y", "z", "intensity", "ring", "lidar_info"))
        con.execute("INSERT INTO lidar_pc VALUES (?,?,?,?,?,?,?,?)", (
            _token(200 + k), _token(201 + k) if k + 1 < SWEEPS else None, _token(199 + k) if k else None,
            _token(100 + k), lidar, scene, pcd, stamp))
        if k % 10 == 0:
            for c, channel in enumerate(CAMERAS):
                jpg = f"{db.stem}/{channel}/{k:04d}.jpg"
                (blobs / jpg).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (1920, 1080), (90, 40, 20)).save(blobs / jpg, format="JPEG")
                con.execute("INSERT INTO image VALUES (?,?,?,?,?,?,?)", (_token(300 + 10 * k + c), None, None, _token(100 + k),
                                                                         _token(10 + c), jpg, stamp))
    con.commit()
    con.close()
    return db


@pytest.fixture
def devkit_log(tmp_path):
    return tmp_path / "nuplan", write_devkit_log(tmp_path / "nuplan")


def _pose(rotation: np.ndarray, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, translation
    return out


def test_devkit_data_types_in_calibration_columns_are_read(devkit_log):
    root, db = devkit_log
    reader = open_reader("nuplan", root)
    assert reader.scene_names() == ["scene-0000"]
    frames = list(reader.read_scene("scene-0000"))
    assert [f.token for f in frames] == [_token(200).hex(), _token(210).hex()]
    translation, axis, angle = LIDAR
    ego_from_lidar = _pose(axis_angle(axis, angle)[0], translation)
    for frame in frames:
        np.testing.assert_allclose(frame.lidar.ego_from_sensor, ego_from_lidar, rtol=0, atol=1e-6)
        assert [cam.name for cam in frame.cameras] == list(CAMERAS)
        for cam, (translation, axis, angle, intrinsic) in zip(frame.cameras, CAMERAS.values()):
            # the image shares its lidar_pc's ego pose: no ego-motion compensation to undo
            np.testing.assert_allclose(cam.ego_from_cam, _pose(axis_angle(axis, angle)[0], translation), rtol=0, atol=1e-6)
            np.testing.assert_allclose(cam.intrinsic, intrinsic, rtol=0, atol=1e-6)
            assert (cam.width, cam.height) == (1920, 1080)
    assert not any(name.split(".")[0] == "nuplan" for name in sys.modules)  # nothing of the devkit was imported


def _set_camera_rotation(db: Path, value: bytes) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE camera SET rotation = ? WHERE channel = 'CAM_L0'", (value,))
    con.commit()
    con.close()


@pytest.mark.parametrize("global_name", [f"{DATA_TYPES}.Bbox", "os.system", "nuplan.database.common.Translation"])
def test_other_globals_in_calibration_columns_are_refused(devkit_log, global_name):
    root, db = devkit_log
    module, name = global_name.rsplit(".", 1)
    if name == "Bbox":
        with devkit_data_types() as dt:  # a devkit data type, but not a calibration value
            value = pickle.dumps(dt["Bbox"]([1, 2, 3, 4]))
    else:  # a protocol-4 pickle naming the global, as pickle.dumps of such an object writes it
        value = (b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode()
                 + b"\x93)\x81.")
    _set_camera_rotation(db, value)
    with pytest.raises(ConverterError) as info:
        list(open_reader("nuplan", root).read_scene("scene-0000"))
    message = str(info.value)
    assert message.startswith(str(db)) and "\n" not in message
    assert "camera CAM_L0 rotation" in message and f"refused to load global '{global_name}'" in message


# -- 2. the devkit's scenario query on a b2s log ------------------------------------------------------
# Our own SQL with the logic of nuplan-devkit's nuplan/database/nuplan_db/nuplan_scenario_queries.py:
# get_scenarios_from_db (no filters; `goal_join` as with include_invalid_mission_goals=False): a
# log's scenes are ranked by name, only ranks 3 .. count-2 are valid, and every lidar_pc of a valid
# scene starts one scenario, typed by one of its scenario_tag rows (or none: the devkit's 'unknown').
def devkit_scenarios(db: Path, goal_join: bool = False) -> list[tuple]:
    goal = ("JOIN scene AS goal_scene ON goal_scene.token = pc.scene_token "
            "JOIN ego_pose AS goal_pose ON goal_pose.token = goal_scene.goal_ego_pose_token") if goal_join else ""
    query = f"""
        WITH ranked AS (SELECT token, ROW_NUMBER() OVER (ORDER BY name) AS rank FROM scene),
             kept AS (SELECT token FROM ranked WHERE rank >= 3 AND rank <= (SELECT COUNT(*) FROM scene) - 2)
        SELECT pc.token, pc.timestamp, log.map_version, MAX(tag.type)
        FROM lidar_pc AS pc
        JOIN kept ON kept.token = pc.scene_token
        JOIN lidar ON lidar.token = pc.lidar_token
        JOIN log ON log.token = lidar.log_token
        LEFT JOIN scenario_tag AS tag ON tag.lidar_pc_token = pc.token
        {goal}
        GROUP BY pc.token, pc.timestamp, log.map_version
        ORDER BY pc.timestamp"""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def synth_log(tmp_path_factory):
    """One synthetic nuPlan log of 6 key frames (51 sweeps): scenes of 2, 1, 1, 1, 1 key frames."""
    from b2s_core.synth import write_dataset

    root = tmp_path_factory.mktemp("synth-nuplan")
    manifest = write_dataset(root, scenes=1, frames=6, formats=("nuplan",), seed=3, image_size=(32, 18))
    scene = manifest.data["scenes"][0]
    return manifest, scene, manifest.path("nuplan") / "splits" / "mini" / f"{scene['nuplan_log_name']}.db"


def test_devkit_scenario_query_finds_scenarios_in_a_b2s_log(synth_log, tmp_path):
    from b2s_core.synth.scene import SceneSpec
    from b2s_core.synth.writers.nuplan import NuPlanWriter, scene_parts

    manifest, scene, db = synth_log
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    names = [r[0] for r in con.execute("SELECT name FROM scene ORDER BY name")]
    tags = dict(con.execute("SELECT lidar_pc_token, type FROM scenario_tag").fetchall())
    roadblocks = {r[0] for r in con.execute("SELECT roadblock_ids FROM scene")}
    con.close()
    assert names == scene["nuplan_scene_names"] and len(names) == 5
    rows = devkit_scenarios(db)
    assert rows == devkit_scenarios(db, goal_join=True)  # every scene has a valid mission goal
    # The one valid scene is the third by name: its 10 lidar_pcs (sweeps 30..39) start scenarios.
    spec = SceneSpec(seed=3, index=0, key_frames=6)
    assert scene_parts(spec)[2] == (30, 40)
    assert [r[0].hex() for r in rows] == [NuPlanWriter.lidar_pc_token(spec, k) for k in range(30, 40)]
    assert {r[2] for r in rows} == {"nuplan-maps-v1.0"}
    # only the scene's first lidar_pc is tagged (lane following, with or without a lead)
    assert rows[0][3] in ("following_lane_with_lead", "following_lane_without_lead")
    assert [r[3] for r in rows[1:]] == [None] * 9 and len(tags) == 5
    # nuplan_scenario_queries.py: get_roadblock_ids_for_lidarpc_token_from_db splits roadblock_ids on " "
    (route,) = roadblocks
    assert route.split(" ") and all(part.isdigit() for part in route.split(" "))
    # Before: the whole log was one scene, so no scene had rank 3 and the devkit found nothing.
    one = tmp_path / "one-scene.db"
    one.write_bytes(db.read_bytes())
    con = sqlite3.connect(one)
    con.execute("UPDATE lidar_pc SET scene_token = (SELECT token FROM scene WHERE name = ?)", (names[0],))
    con.execute("DELETE FROM scene WHERE name != ?", (names[0],))
    con.commit()
    con.close()
    assert devkit_scenarios(one) == []


def test_lead_tag_names_a_vehicle_ahead_in_the_ego_lane(synth_log):
    from b2s_core.synth.roads import SECTION
    from b2s_core.synth.writers.nuplan import LEAD_RANGE

    manifest, scene, db = synth_log
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT st.type, st.agent_track_token, ep.x, ep.y, ep.qw, ep.qz, lb.x, lb.y, c.name FROM scenario_tag st "
        "JOIN lidar_pc lp ON lp.token = st.lidar_pc_token JOIN ego_pose ep ON ep.token = lp.ego_pose_token "
        "LEFT JOIN lidar_box lb ON lb.lidar_pc_token = lp.token AND lb.track_token = st.agent_track_token "
        "LEFT JOIN track t ON t.token = st.agent_track_token LEFT JOIN category c ON c.token = t.category_token").fetchall()
    con.close()
    assert len(rows) == 5
    for kind, track, ex, ey, qw, qz, bx, by, category in rows:
        if kind == "following_lane_without_lead":
            assert track is None
            continue
        assert kind == "following_lane_with_lead" and category == "vehicle"
        yaw = 2 * np.arctan2(qz, qw)  # the synthetic ego drives on flat ground: a pure yaw
        ahead = np.cos(yaw) * (bx - ex) + np.sin(yaw) * (by - ey)
        side = -np.sin(yaw) * (bx - ex) + np.cos(yaw) * (by - ey)
        assert 0 < ahead <= LEAD_RANGE and abs(side) < SECTION.lane_width / 2


# -- 3. round trip: synth nuPlan -> convert / build-binary -------------------------------------------
def test_synth_log_converts_to_the_generator_key_frames(synth_log, tmp_path):
    manifest, scene, _ = synth_log
    root = manifest.path("nuplan")
    summary = convert(ConvertConfig("nuplan", root, tmp_path / "np.h5"))
    assert not summary.skipped and summary.frames == 6
    ds = OccDataset(tmp_path / "np.h5")
    # one b2s scene per nuPlan scene, in time order; together the generator's key frames
    assert [s.name for s in ds.scenes] == scene["nuplan_scene_names"]
    keys = manifest.key_frames(scene["name"])
    assert [ds[i].token for i in range(len(ds))] == [k["nuplan_lidar_pc_token"] for k in keys]
    for i, key in enumerate(keys):
        frame = ds[i]
        assert frame.timestamp == key["timestamp"]
        np.testing.assert_allclose(frame.global_from_ego, manifest.ground_truth(scene["name"], key["index"]).global_from_ego,
                                   rtol=0, atol=1e-9)
    reader = open_reader("nuplan", root)
    first = list(reader.read_scene(scene["nuplan_scene_names"][0]))
    assert [len(f.sweeps) for f in first] == [0, 9]  # the first scene holds key frames 0 and 1
    assert [s.timestamp for s in first[1].sweeps] == [keys[0]["timestamp"] + 50_000 * j for j in range(1, 10)]


def test_synth_log_builds_binary(synth_log, tmp_path):
    manifest, scene, _ = synth_log
    out = tmp_path / "b.h5"
    summary = build_binary(BuildBinaryJob("nuplan", manifest.path("nuplan"), out, grid="-16,-16,-1,16,16,5.4:0.4",
                                          ray_sweeps=2, camera_stride=2.0))
    assert not summary.skipped and summary.frames == 6
    ds = OccDataset(out)
    assert [s.name for s in ds.scenes] == scene["nuplan_scene_names"]
    assert [ds[i].token for i in range(len(ds))] == [k["nuplan_lidar_pc_token"] for k in manifest.key_frames(scene["name"])]
