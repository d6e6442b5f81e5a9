"""OpenScene frames as the official tools write and read them (issue 15, points 1-3).

The fixture below builds one log's frame dicts the way OpenScene's metadata writer builds them
(``DriveEngine/process_data/create_openscene_metadata.py``: ``create_nuplan_info``), from nuPlan-style
records (ego pose, ``lidar`` / ``camera`` calibration rows, global ``lidar_box`` rows), with its own
quaternion code and without any b2s writer. b2s must read it to the right place, and the synthetic
writer must produce frames of the same keys and types and read back to the synthetic truth.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from b2s_core.synth import load_manifest, write_dataset
from b2s_core.synth.sensors import NUPLAN_CAMERAS
from b2s_core.synth.writers.nuplan import pcd_bytes, tok
from converters import open_reader
from converters.errors import ConverterError
from converters.readers.nuplan import CAMERA_ORDER

CM = 0.01  # placement tolerance, metres
YAW_TOL = 1e-3  # radians


# -- quaternions (w, x, y, z), written here so the fixture shares no code with b2s -------------------
def _q_mul(a, b):
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def _q_axis(axis, angle):
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


def _q_matrix(q):
    """pyquaternion's ``Quaternion(q).rotation_matrix``: (3, 3)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _q_yaw(q):
    """pyquaternion's ``Quaternion(q).yaw_pitch_roll[0]``."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _pose(q, t):
    out = np.eye(4)
    out[:3, :3] = _q_matrix(q)
    out[:3, 3] = t
    return out


# -- nuPlan-style records of one log -----------------------------------------------------------------
LOG = "2021.07.16.20.45.29_veh-35_01095_01486"
SCENE = "log-0001-scene-0007"  # create_nuplan_info: f"log-{log_idx:04d}-{scene.name}"
# ``lidar`` table row (MergedPointCloud): LiDAR -> ego.
LIDAR_T = np.array([1.52, -0.01, 1.86])
LIDAR_Q = _q_axis((0, 0, 1), 0.012)
# OpenCV camera axes (x right, y down, z forward) in the ego frame (x forward, y left, z up).
_CAM_BASE = _q_mul(_q_axis((0, 0, 1), -np.pi / 2), _q_axis((1, 0, 0), -np.pi / 2))
# ``camera`` table rows: translation / rotation of the camera relative to the ego
# (nuplan-devkit docs/nuplan_schema.md, table camera), intrinsic, distortion (k1, k2, p1, p2, k3).
CAMERA_ROWS = {
    ch: (np.array([1.6 - 0.25 * i, 0.4 * np.sin(yaw), 1.5 + 0.01 * i]),
         _q_mul(_q_axis((0, 0, 1), yaw), _q_mul(_CAM_BASE, _q_axis((1, 0, 0), 0.02 * (i - 3)))),
         np.array([[1545.0 + i, 0.0, 960.0], [0.0, 1545.0 + i, 560.0], [0.0, 0.0, 1.0]]),
         np.array([-0.356, 0.172, -0.00134, -0.00088, -0.0452]))
    for i, (ch, yaw) in enumerate(zip(CAMERA_ORDER, np.radians([0, 50, -50, 100, -100, 145, -145, 180])))
}
assert list(CAMERA_ROWS) == ["CAM_F0", "CAM_L0", "CAM_R0", "CAM_L1", "CAM_R1", "CAM_L2", "CAM_R2", "CAM_B0"]


def _ego_pose(k: int) -> dict:
    """``ego_pose`` row of key frame k: UTM-sized position, yaw plus a little pitch and roll."""
    q = _q_mul(_q_axis((0, 0, 1), 2.1 + 0.05 * k), _q_mul(_q_axis((0, 1, 0), 0.03), _q_axis((1, 0, 0), -0.02)))
    return {"x": 664_123.4 + 3.0 * k, "y": 3_997_765.2 + 1.5 * k, "z": 605.3, "q": q,
            "vx": 6.5, "vy": 0.1, "vz": 0.0, "ax": 0.2, "ay": -0.1, "az": 0.0, "wx": 0.0, "wy": 0.0, "wz": 0.05}


def _lidar_boxes(k: int) -> list[dict]:
    """``lidar_box`` rows of key frame k (global x, y, z, yaw) with their track and category."""
    rows = [("vehicle", (664_140.0, 3_997_770.0, 606.1), (4.6, 1.9, 1.7), 0.4, (5.0, 1.0, 0.0)),
            ("pedestrian", (664_110.0, 3_997_790.0, 605.9), (0.7, 0.6, 1.8), -2.8, (0.0, 1.2, 0.0)),
            ("bicycle", (664_150.0, 3_997_740.0, 605.8), (1.8, 0.6, 1.5), 3.1, (0.0, 0.0, 0.0))]
    return [{"token": f"{10 * k + j:016x}", "track_token": f"{0xABC0 + j:016x}", "category": cat,
             "xyz": np.array(xyz) + (0.5 * k, 0.0, 0.0), "lwh": lwh, "yaw": yaw, "v": np.array(v)}
            for j, (cat, xyz, lwh, yaw, v) in enumerate(rows)]


def official_frame(k: int, prev: str | None, nxt: str | None) -> dict:
    """One frame dict, step by step as create_openscene_metadata.py: create_nuplan_info builds it."""
    ego = _ego_pose(k)
    token = f"{0xF000 + k:016x}"
    # helpers/canbus.py: CanBus(lidar_pc).tensor
    can_bus = np.array([ego["x"], ego["y"], ego["z"], *ego["q"], ego["ax"], ego["ay"], ego["az"],
                        ego["vx"], ego["vy"], ego["vz"], ego["wx"], ego["wy"], ego["wz"], 0.0, 0.0])
    info = {
        "token": token, "frame_idx": k, "timestamp": 1_626_468_329_000_000 + 500_000 * k, "log_name": LOG,
        "log_token": "5a8d4b6e2c1f3a09", "scene_name": SCENE, "scene_token": "e1f2a3b4c5d6e7f8",
        "map_location": "us-nv-las-vegas-strip",
        "roadblock_ids": [s for s in "58019 58020 58102".split(" ") if len(s) > 0],
        "vehicle_name": "35", "can_bus": can_bus,
        "lidar_path": f"{LOG}/MergedPointCloud/{token}.pcd",  # lidar_pc.filename
        "lidar2ego_translation": LIDAR_T.copy(),  # Lidar.translation_np
        "lidar2ego_rotation": [float(v) for v in LIDAR_Q],  # [rotation.w, .x, .y, .z]
        "ego2global_translation": can_bus[:3], "ego2global_rotation": can_bus[3:7],
        "ego_dynamic_state": [ego["vx"], ego["vy"], ego["ax"], ego["ay"]],
        # get_traffic_light_status_for_lidarpc_token_from_db -> (lane_connector_id, is_red)
        "traffic_lights": [(47921, True), (47933, False)],
        "driving_command": np.array([0, 1, 0, 0]),  # helpers/driving_command.py: np.zeros((4,), dtype=int), one-hot
        "cams": {},
        "sample_prev": prev, "sample_next": nxt,
    }
    l2e, e2g = _pose(LIDAR_Q, LIDAR_T), _pose(ego["q"], can_bus[:3])
    info["ego2global"], info["lidar2ego"], info["lidar2global"] = e2g, l2e, e2g @ l2e
    # helpers/nuplan_cameras_utils.py: get_log_cam_info + get_cam_info_from_lidar_pc
    info["cams"] = {ch: {"data_path": f"{LOG}/{ch}/{token}.jpg", "sensor2lidar_rotation": _q_matrix(q),
                         "sensor2lidar_translation": t, "cam_intrinsic": K, "distortion": d}
                    for ch, (t, q, K, d) in CAMERA_ROWS.items()}
    boxes = _lidar_boxes(k)
    inv_ego_r = np.linalg.inv(e2g)  # EgoPose.trans_matrix_inv: [:3, :3] is R^T
    ego_t = np.array([ego["x"], ego["y"], ego["z"]])
    locs = np.array([inv_ego_r[:3, :3] @ (b["xyz"] - ego_t) for b in boxes]).reshape(-1, 3)
    dims = np.array([b["lwh"] for b in boxes]).reshape(-1, 3)
    rots = np.array([b["yaw"] for b in boxes]).reshape(-1, 1) - _q_yaw(ego["q"])
    velo = np.array([b["v"] @ np.linalg.inv(_q_matrix(ego["q"])).T @ np.linalg.inv(_q_matrix(LIDAR_Q)).T for b in boxes])
    info["anns"] = {"gt_boxes": np.concatenate([locs, dims, rots], axis=1), "gt_names": np.array([b["category"] for b in boxes]),
                    "gt_velocity_3d": velo.reshape(-1, 3), "instance_tokens": [b["token"] for b in boxes],
                    "track_tokens": [b["track_token"] for b in boxes]}
    return info


def _jpeg(size=(16, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 40, 20)).save(buf, format="JPEG")
    return buf.getvalue()


def write_official_log(root, frames: int = 2) -> list[dict]:
    """``root/meta_datas/mini/<log>.pkl`` (pickled as the official writer does: HIGHEST_PROTOCOL) and
    the sensor files its paths name under ``root/sensor_blobs/mini``; returns the frame dicts."""
    tokens = [f"{0xF000 + k:016x}" for k in range(frames)]
    infos = [official_frame(k, tokens[k - 1] if k else None, tokens[k + 1] if k + 1 < frames else None) for k in range(frames)]
    blobs = root / "sensor_blobs" / "mini"
    for info in infos:
        for rel in [info["lidar_path"]] + [c["data_path"] for c in info["cams"].values()]:
            (blobs / rel).parent.mkdir(parents=True, exist_ok=True)
            (blobs / rel).write_bytes(pcd_bytes(np.zeros((4, 5), np.float32)) if rel.endswith(".pcd") else _jpeg())
    meta = root / "meta_datas" / "mini" / f"{LOG}.pkl"
    meta.parent.mkdir(parents=True)
    with open(meta, "wb") as f:
        pickle.dump(infos, f, protocol=pickle.HIGHEST_PROTOCOL)
    return infos


def _yaw(m: np.ndarray) -> float:
    return float(np.arctan2(m[1, 0], m[0, 0]))


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Rotation angle (rad) between two (3, 3) rotations."""
    return float(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1.0, 1.0)))


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


# -- b2s reads an official-layout frame to the right place -------------------------------------------
def test_official_frame_boxes_and_cameras_land_in_place(tmp_path):
    write_official_log(tmp_path)
    reader = open_reader("openscene", tmp_path)
    assert reader.scene_names() == [SCENE] and reader.camera_names == list(CAMERA_ORDER)
    frames = list(reader.read_scene(SCENE))
    assert len(frames) == 2
    for k, frame in enumerate(frames):
        ego = _ego_pose(k)
        assert np.allclose(frame.global_from_ego, _pose(ego["q"], (ego["x"], ego["y"], ego["z"])), atol=1e-9)
        expected = {b["track_token"]: b for b in _lidar_boxes(k)}
        assert sorted(b.track_id for b in frame.boxes) == sorted(expected)  # track ids are track_tokens, not instance_tokens
        for box in frame.boxes:
            row = expected[box.track_id]
            assert np.linalg.norm(box.center - row["xyz"]) < CM
            assert abs(_wrap(_yaw(box.global_from_box) - row["yaw"])) < YAW_TOL
            assert np.allclose(box.global_from_box[:3, 2], (0, 0, 1))  # nuPlan boxes have a yaw only
            assert np.array_equal(box.size, row["lwh"]) and box.category == row["category"]
        assert [c.name for c in frame.cameras] == list(CAMERA_ORDER)
        for cam in frame.cameras:
            t, q, K, _ = CAMERA_ROWS[cam.name]
            assert np.linalg.norm(cam.ego_from_cam[:3, 3] - t) < CM  # the camera table's pose relative to the ego
            assert _angle(cam.ego_from_cam[:3, :3], _q_matrix(q)) < YAW_TOL
            assert np.array_equal(cam.intrinsic, K) and (cam.width, cam.height) == (16, 9)
            assert cam.timestamp == frame.timestamp  # official camera dicts carry no timestamp
        assert np.allclose(frame.lidar.ego_from_sensor, _pose(LIDAR_Q, LIDAR_T), atol=1e-12)


def test_official_frame_without_track_tokens_or_with_a_bad_rotation_is_one_line(tmp_path):
    infos = write_official_log(tmp_path, frames=1)
    meta = tmp_path / "meta_datas" / "mini" / f"{LOG}.pkl"
    errors = []

    def reread(change):
        broken = pickle.loads(pickle.dumps(infos))
        change(broken[0])
        meta.write_bytes(pickle.dumps(broken, protocol=pickle.HIGHEST_PROTOCOL))
        errors.clear()
        list(open_reader("openscene", tmp_path).read_scene(SCENE, lambda scene, token, err: errors.append(err)))
        assert len(errors) == 1 and isinstance(errors[0], ConverterError) and "\n" not in str(errors[0])
        return str(errors[0])

    assert "0 track_tokens" in reread(lambda f: f["anns"].pop("track_tokens"))
    not_a_rotation = reread(lambda f: f["cams"]["CAM_L1"].update(sensor2lidar_rotation=2 * np.eye(3)))
    assert "CAM_L1 'sensor2lidar_rotation' is not a rotation" in not_a_rotation
    assert "'gt_boxes' is not an (N, 7) array" in reread(lambda f: f["anns"].update(gt_boxes=np.zeros((3, 5))))


# -- the synthetic writer: official keys and types, and a round trip to the truth ---------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("os-synth")
    write_dataset(root, scenes=1, frames=2, formats=("openscene",), seed=0, image_size=(64, 36))
    manifest = load_manifest(root)
    (meta,) = (manifest.path("openscene") / "meta_datas" / "mini").glob("*.pkl")
    with open(meta, "rb") as f:
        return manifest, pickle.load(f)


def _signature(value) -> object:
    """The type of a frame value as the official writer makes it: containers recursively (first
    element), ndarrays by dtype kind and rank, and fixed shapes for calibration and pose fields."""
    if isinstance(value, dict):
        return {k: _signature(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, _signature(value[0]) if value else None)
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.kind, value.ndim)
    return type(value).__name__


FIXED_SHAPES = {"can_bus": (18,), "ego2global_translation": (3,), "ego2global_rotation": (4,), "lidar2ego_translation": (3,),
                "ego2global": (4, 4), "lidar2ego": (4, 4), "lidar2global": (4, 4), "driving_command": (4,)}


def test_synth_frames_have_the_official_keys_and_types(synth):
    _, frames = synth
    official = official_frame(0, None, "x")
    for frame in frames:
        theirs, ours = _signature(official), _signature(frame)
        ours.pop("occ_gt_final_path")  # b2s's one addition: where the frame's occupancy label is
        # A scene's first / last frame has no prev / next (None), as in the official files.
        for key in ("sample_prev", "sample_next"):
            assert ours.pop(key) in ("str", "NoneType") and theirs.pop(key) in ("str", "NoneType")
        # The synthetic world has no traffic lights: an empty list, which the official files also have.
        assert ours.pop("traffic_lights") == ("list", None) and theirs.pop("traffic_lights") == ("list", ("tuple", "int"))
        assert ours.pop("cams").keys() == set(CAMERA_ORDER)
        assert {k: _signature(v) for k, v in frame["cams"]["CAM_F0"].items()} == theirs.pop("cams")["CAM_F0"]
        assert ours == theirs
        for key, shape in FIXED_SHAPES.items():
            assert np.shape(frame[key]) == shape, key
        assert frame["anns"]["gt_names"].dtype.kind == "U" and frame["anns"]["gt_boxes"].shape[1] == 7
        assert frame["driving_command"].dtype == np.int64 and frame["driving_command"].sum() == 1
        assert frame["roadblock_ids"] and all(isinstance(r, str) for r in frame["roadblock_ids"])  # navsim's has_route filter
        assert len({len(v) for v in frame["anns"].values()}) == 1  # navsim Annotations: equal lengths
        assert np.allclose(frame["lidar2global"], frame["ego2global"] @ frame["lidar2ego"], atol=1e-12)
        assert np.array_equal(frame["ego2global_translation"], frame["can_bus"][:3])
        assert np.array_equal(frame["ego2global_rotation"], frame["can_bus"][3:7])
    # instance_tokens are per-frame lidar_box tokens; track_tokens follow an object from frame to frame
    (a, b) = ({t: i for t, i in zip(f["anns"]["track_tokens"], f["anns"]["instance_tokens"])} for f in frames)
    shared = a.keys() & b.keys()
    assert shared and all(a[t] != b[t] for t in shared) and len(set(frames[0]["anns"]["instance_tokens"])) == len(a)


def test_synth_round_trip_equals_truth(synth):
    manifest, frames = synth
    (scene,) = manifest.scene_names
    rig = {cam.name: cam.ego_from_cam for cam in NUPLAN_CAMERAS}
    reader = open_reader("openscene", manifest.path("openscene"))
    read = list(reader.read_scene(scene))
    assert len(read) == len(frames) == 2
    for key, meta, frame in zip(manifest.key_frames(scene), frames, read):
        truth = manifest.ground_truth(scene, key["index"])
        pose = truth.global_from_ego
        by_token = {tok("track", 0, 0, int(t)): j for j, t in enumerate(truth.boxes["track"])}
        # Written: ego-frame gt_boxes, computed here the official way from the global truth.
        rows = [by_token[t] for t in meta["anns"]["track_tokens"]]
        locs = (truth.boxes["center"][rows] - pose[:3, 3]) @ pose[:3, :3]
        yaws = truth.boxes["yaw"][rows] - np.arctan2(pose[1, 0], pose[0, 0])
        assert np.abs(meta["anns"]["gt_boxes"][:, :3] - locs).max() < 1e-9
        assert np.abs(np.angle(np.exp(1j * (meta["anns"]["gt_boxes"][:, 6] - yaws)))).max() < 1e-9
        # Read back: global boxes and ego-frame cameras equal the truth.
        assert frame.boxes and len(frame.boxes) == len(rows)
        for box in frame.boxes:
            j = by_token[box.track_id]
            assert np.linalg.norm(box.center - truth.boxes["center"][j]) < CM
            assert abs(_wrap(_yaw(box.global_from_box) - truth.boxes["yaw"][j])) < YAW_TOL
            assert np.allclose(box.size, truth.boxes["size"][j])
        assert [c.name for c in frame.cameras] == list(rig)
        for cam in frame.cameras:
            assert np.linalg.norm(cam.ego_from_cam[:3, 3] - rig[cam.name][:3, 3]) < CM
            assert _angle(cam.ego_from_cam[:3, :3], rig[cam.name][:3, :3]) < YAW_TOL
        assert np.allclose(frame.global_from_ego, pose, atol=1e-9)
