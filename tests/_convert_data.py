"""Test data builders for the converter tests: tiny datasets in the real on-disk layouts.

* :func:`wrap_nuscenes_keyframe` turns the real key frame in ``shared/data/nuscenes-keyframe`` into a
  one-sample nuScenes v1.0 dataset (13 tables, samples/ linked to the real files, a tiny map PNG)
  that nuscenes-devkit loads.
* :func:`write_tiny_nuplan` and :func:`write_tiny_openscene` write minimal nuPlan SQLite logs and
  OpenScene meta pickles with known poses, calibration, boxes and labels, for exact comparisons.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from converters.readers.pcd import write_pcd

# frame.json's detection names -> full nuScenes category names
NUSCENES_CATEGORY = {
    "pedestrian": "human.pedestrian.adult", "barrier": "movable_object.barrier", "car": "vehicle.car",
    "traffic_cone": "movable_object.trafficcone", "truck": "vehicle.truck", "bicycle": "vehicle.bicycle",
    "bus": "vehicle.bus.rigid", "construction_vehicle": "vehicle.construction", "motorcycle": "vehicle.motorcycle",
    "trailer": "vehicle.trailer", "ignore": "static_object.bicycle_rack",
}


def quaternion_of(rotation: np.ndarray) -> list[float]:
    """(3, 3) rotation (re-orthonormalised) -> unit quaternion [w, x, y, z]."""
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=np.float64)[:3, :3])
    m = u @ vt
    w = np.sqrt(max(0.0, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.sqrt(max(0.0, 1 + m[0, 0] - m[1, 1] - m[2, 2])) / 2
    y = np.sqrt(max(0.0, 1 - m[0, 0] + m[1, 1] - m[2, 2])) / 2
    z = np.sqrt(max(0.0, 1 - m[0, 0] - m[1, 1] + m[2, 2])) / 2
    x = np.copysign(x, m[2, 1] - m[1, 2])
    y = np.copysign(y, m[0, 2] - m[2, 0])
    z = np.copysign(z, m[1, 0] - m[0, 1])
    q = np.array([w, x, y, z])
    return (q / np.linalg.norm(q)).tolist()


def _tok(name: str, i: int = 0) -> str:
    return f"{name[:12]:x<12}{i:020d}"


def wrap_nuscenes_keyframe(keyframe_dir: Path, out: Path, *, link: bool = True) -> dict:
    """Write a one-sample nuScenes v1.0-mini dataset around the real key frame; returns frame.json."""
    frame = json.loads((keyframe_dir / "frame.json").read_text())
    version = out / "v1.0-mini"
    version.mkdir(parents=True)
    log_token, scene_token, sample_token = _tok("log"), _tok("scene"), frame["sample_token"]
    global_from_ego = np.array(frame["ego2global"])
    ego_from_lidar = np.array(frame["lidar"]["lidar2ego"])

    def place(channel: str, filename: str) -> str:
        rel = f"samples/{channel}/{filename}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        if link:
            (out / rel).symlink_to((keyframe_dir / filename).resolve())
        else:
            (out / rel).write_bytes((keyframe_dir / filename).read_bytes())
        return rel

    sensors, calibrated, poses, sample_data = [], [], [], []

    def add(channel: str, modality: str, ego_from_sensor, intrinsic, global_from_ego_at, filename, timestamp, sd_token, size):
        i = len(sensors)
        sensors.append({"token": _tok("sensor", i), "channel": channel, "modality": modality})
        calibrated.append({"token": _tok("calib", i), "sensor_token": _tok("sensor", i),
                           "translation": list(ego_from_sensor[:3, 3]), "rotation": quaternion_of(ego_from_sensor),
                           "camera_intrinsic": intrinsic})
        poses.append({"token": _tok("egopose", i), "timestamp": timestamp,
                      "translation": list(global_from_ego_at[:3, 3]), "rotation": quaternion_of(global_from_ego_at)})
        sample_data.append({"token": sd_token, "sample_token": sample_token, "ego_pose_token": _tok("egopose", i),
                            "calibrated_sensor_token": _tok("calib", i), "filename": place(channel, filename),
                            "fileformat": "pcd" if modality == "lidar" else "jpg", "width": size[0], "height": size[1],
                            "timestamp": timestamp, "is_key_frame": True, "prev": "", "next": ""})

    lidar_sd = _tok("lidarsd")
    add("LIDAR_TOP", "lidar", ego_from_lidar, [], global_from_ego, frame["lidar"]["filename"], frame["timestamp_us"], lidar_sd, (0, 0))
    for channel, cam in frame["cameras"].items():
        ego_from_cam = np.array(cam["cam2ego"])
        # lidar2cam includes the ego motion between the LiDAR and camera times: recover the camera's ego pose.
        cam_from_lidar = np.array(cam["lidar2cam"])
        global_from_cam_ego = global_from_ego @ ego_from_lidar @ np.linalg.inv(cam_from_lidar) @ np.linalg.inv(ego_from_cam)
        add(channel, "camera", ego_from_cam, cam["intrinsic"], global_from_cam_ego, cam["filename"], cam["timestamp_us"],
            cam["sample_data_token"], (1600, 900))

    categories = sorted(set(NUSCENES_CATEGORY.values()))
    cat_token = {name: _tok("category", i) for i, name in enumerate(categories)}
    instances, annotations = [], []
    global_from_lidar = global_from_ego @ ego_from_lidar
    for i, entry in enumerate(frame["boxes_lidar_frame"]["boxes"]):
        x, y, z, length, width, height, yaw = entry["box"]
        c, s = np.cos(yaw), np.sin(yaw)
        lidar_from_box = np.array([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, z], [0, 0, 0, 1.0]])
        global_from_box = global_from_lidar @ lidar_from_box
        instances.append({"token": _tok("instance", i), "category_token": cat_token[NUSCENES_CATEGORY[entry["category"]]],
                          "nbr_annotations": 1, "first_annotation_token": _tok("ann", i), "last_annotation_token": _tok("ann", i)})
        annotations.append({"token": _tok("ann", i), "sample_token": sample_token, "instance_token": _tok("instance", i),
                            "visibility_token": "", "attribute_tokens": [], "translation": list(global_from_box[:3, 3]),
                            "size": [width, length, height], "rotation": quaternion_of(global_from_box),
                            "prev": "", "next": "", "num_lidar_pts": entry["num_lidar_pts"], "num_radar_pts": 0})

    (out / "maps").mkdir()
    Image.new("L", (4, 4)).save(out / "maps" / "tiny.png")
    tables = {
        "category": [{"token": cat_token[n], "name": n, "description": ""} for n in categories],
        "attribute": [], "visibility": [],
        "instance": instances, "sensor": sensors, "calibrated_sensor": calibrated, "ego_pose": poses,
        "log": [{"token": log_token, "logfile": "n015-2018-07-24-11-22-45+0800", "vehicle": "n015",
                 "date_captured": "2018-07-24", "location": "singapore-onenorth"}],
        "scene": [{"token": scene_token, "log_token": log_token, "nbr_samples": 1, "first_sample_token": sample_token,
                   "last_sample_token": sample_token, "name": "scene-0061", "description": "real key frame"}],
        "sample": [{"token": sample_token, "timestamp": frame["timestamp_us"], "scene_token": scene_token, "prev": "", "next": ""}],
        "sample_data": sample_data, "sample_annotation": annotations,
        "map": [{"token": _tok("map"), "log_tokens": [log_token], "category": "semantic_prior", "filename": "maps/tiny.png"}],
    }
    for name, rows in tables.items():
        (version / f"{name}.json").write_text(json.dumps(rows))
    return frame


# -- tiny nuPlan / OpenScene worlds with known ground truth ---------------------------------------
def _rotation_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pose(rotation: np.ndarray, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


def _jpeg(path: Path, size=(32, 24), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, 40, 90)).save(path, format="JPEG")


CAMERAS_TINY = {  # channel -> (ego_from_cam, intrinsic); OpenCV camera axes (z forward)
    "CAM_F0": (_pose(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), (1.5, 0.0, 1.6)),
               np.array([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]])),
    "CAM_B0": (_pose(np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float), (-1.0, 0.0, 1.6)),
               np.array([[18.0, 0, 16], [0, 18.0, 12], [0, 0, 1]])),
}
EGO_FROM_LIDAR_TINY = _pose(_rotation_z(0.01), (0.2, 0.0, 1.8))


def tiny_pose(t: float) -> np.ndarray:
    """The tiny worlds' ego trajectory: a gentle left curve at 5 m/s; t in seconds."""
    return _pose(_rotation_z(0.1 * t), (100.0 + 5.0 * t, 200.0 + 0.5 * t * t, 3.0))


def write_tiny_nuplan(root: Path, *, scenes: int = 2, sweeps_per_scene: int = 12) -> dict:
    """One nuPlan log: ``root/splits/mini/log.db`` + ``root/sensor_blobs``; returns the ground truth.

    LiDAR at 20 Hz, so key frames (every 0.5 s) are sweeps 0 and 10 of each scene; calibration is
    stored pickled (numpy arrays) as in real logs, tokens as 8-byte BLOBs.
    """
    db_path = root / "splits" / "mini" / "2021.01.01.00.00.00_veh-1_00001_00002.db"
    db_path.parent.mkdir(parents=True)
    blobs = root / "sensor_blobs"
    con = sqlite3.connect(db_path)
    con.executescript("""
        CREATE TABLE log (token BLOB PRIMARY KEY, vehicle_name TEXT, date TEXT, timestamp INTEGER, logfile TEXT,
                          location TEXT, map_version TEXT);
        CREATE TABLE ego_pose (token BLOB PRIMARY KEY, timestamp INTEGER, x REAL, y REAL, z REAL, qw REAL, qx REAL, qy REAL, qz REAL,
                               vx REAL, vy REAL, vz REAL, acceleration_x REAL, acceleration_y REAL, acceleration_z REAL,
                               angular_rate_x REAL, angular_rate_y REAL, angular_rate_z REAL, epsg INTEGER, log_token BLOB);
        CREATE TABLE lidar (token BLOB PRIMARY KEY, log_token BLOB, channel TEXT, model TEXT, translation BLOB, rotation BLOB);
        CREATE TABLE camera (token BLOB PRIMARY KEY, log_token BLOB, channel TEXT, model TEXT, translation BLOB, rotation BLOB,
                             intrinsic BLOB, distortion BLOB, width INTEGER, height INTEGER);
        CREATE TABLE scene (token BLOB PRIMARY KEY, log_token BLOB, name TEXT, goal_ego_pose_token BLOB, roadblock_ids TEXT);
        CREATE TABLE lidar_pc (token BLOB PRIMARY KEY, next_token BLOB, prev_token BLOB, scene_token BLOB, ego_pose_token BLOB,
                               lidar_token BLOB, filename TEXT, timestamp INTEGER);
        CREATE TABLE image (token BLOB PRIMARY KEY, next_token BLOB, prev_token BLOB, ego_pose_token BLOB, camera_token BLOB,
                            filename_jpg TEXT, timestamp INTEGER);
        CREATE TABLE category (token BLOB PRIMARY KEY, name TEXT, description TEXT);
        CREATE TABLE track (token BLOB PRIMARY KEY, category_token BLOB, width REAL, length REAL, height REAL);
        CREATE TABLE lidar_box (token BLOB PRIMARY KEY, lidar_pc_token BLOB, track_token BLOB, next_token BLOB, prev_token BLOB,
                                x REAL, y REAL, z REAL, width REAL, length REAL, height REAL, vx REAL, vy REAL, vz REAL,
                                yaw REAL, confidence REAL);
    """)
    counter = iter(range(1, 1 << 30))

    def tok() -> bytes:
        return next(counter).to_bytes(8, "big")

    def pk(array) -> bytes:
        return pickle.dumps(np.asarray(array, dtype=np.float64))

    log = tok()
    con.execute("INSERT INTO log VALUES (?,?,?,?,?,?,?)", (log, "veh-1", "2021-01-01", 0, db_path.stem, "tiny", "v1"))
    lidar = tok()
    con.execute("INSERT INTO lidar VALUES (?,?,?,?,?,?)", (log, log, "MergedPointCloud", "m", pk(EGO_FROM_LIDAR_TINY[:3, 3]),
                                                           pk(quaternion_of(EGO_FROM_LIDAR_TINY))))
    con.execute("UPDATE lidar SET token = ? WHERE token = ?", (lidar, log))
    cameras = {}
    for channel, (ego_from_cam, K) in CAMERAS_TINY.items():
        cameras[channel] = tok()
        con.execute("INSERT INTO camera VALUES (?,?,?,?,?,?,?,?,?,?)", (cameras[channel], log, channel, "c", pk(ego_from_cam[:3, 3]),
                    pk(quaternion_of(ego_from_cam)), pk(K), pk(np.zeros(5)), 32, 24))
    categories = {}
    for name in ("vehicle", "pedestrian"):
        categories[name] = tok()
        con.execute("INSERT INTO category VALUES (?,?,?)", (categories[name], name, ""))
    tracks = [(tok(), "vehicle", (4.5, 1.9, 1.6)), (tok(), "pedestrian", (0.6, 0.7, 1.8))]
    for track, name, (length, width, height) in tracks:
        con.execute("INSERT INTO track VALUES (?,?,?,?,?)", (track, categories[name], width, length, height))

    truth: dict = {"db": db_path, "sensor_root": blobs, "scenes": {}}
    rng = np.random.default_rng(0)
    t0 = 1_600_000_000_000_000
    for s in range(scenes):
        scene, name = tok(), f"scene-{s:04d}"
        con.execute("INSERT INTO scene VALUES (?,?,?,?,?)", (scene, log, name, None, ""))
        frames = []
        for k in range(sweeps_per_scene):
            stamp = t0 + (s * sweeps_per_scene + k) * 50_000 + int(rng.integers(-3000, 3000))
            t = (stamp - t0) / 1e6
            pose = tiny_pose(t)
            ego = tok()
            q = quaternion_of(pose)
            con.execute("INSERT INTO ego_pose (token, timestamp, x, y, z, qw, qx, qy, qz, log_token) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (ego, stamp, *pose[:3, 3], *q, log))
            pc, rel = tok(), f"{db_path.stem}/MergedPointCloud/{s:02d}{k:03d}.pcd"
            points = rng.normal(size=(50, 6)).astype(np.float32) * 5
            points[:, 4:] = rng.integers(0, 32, size=(50, 2))
            (blobs / rel).parent.mkdir(parents=True, exist_ok=True)
            write_pcd(blobs / rel, points, ("x", "y", "z", "intensity", "ring", "lidar_info"),
                      types=("F", "F", "F", "F", "U", "U"), sizes=(4, 4, 4, 4, 2, 1))
            con.execute("INSERT INTO lidar_pc VALUES (?,?,?,?,?,?,?,?)", (pc, None, None, scene, ego, lidar, rel, stamp))
            images = {}
            for channel, cam_token in cameras.items():
                image_rel = f"{db_path.stem}/{channel}/{s:02d}{k:03d}.jpg"
                _jpeg(blobs / image_rel, value=k)
                con.execute("INSERT INTO image VALUES (?,?,?,?,?,?,?)", (tok(), None, None, ego, cam_token, image_rel, stamp + 1000))
                images[channel] = image_rel
            boxes = []
            for j, (track, cat, (length, width, height)) in enumerate(tracks):
                x, y, z, yaw = 110.0 + 3 * j + k, 201.0 - 2 * j, 3.8, 0.3 * j + 0.01 * k
                con.execute("INSERT INTO lidar_box (token, lidar_pc_token, track_token, x, y, z, width, length, height, yaw, confidence) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?)", (tok(), pc, track, x, y, z, width, length, height, yaw, 1.0))
                boxes.append({"track": track.hex(), "category": cat, "center": (x, y, z), "yaw": yaw, "size": (length, width, height)})
            frames.append({"token": pc.hex(), "timestamp": stamp, "global_from_ego": pose, "lidar": rel, "points": points,
                           "images": images, "boxes": boxes})
        truth["scenes"][name] = frames
    con.commit()
    con.close()
    return truth


def write_tiny_openscene(root: Path, labels_root: Path, *, scenes: int = 2, frames_per_scene: int = 3) -> dict:
    """``root/meta_datas/mini/<log>.pkl`` + ``root/sensor_blobs/mini/<log>/...`` + sparse labels; returns the truth."""
    log = "2021.02.02.00.00.00_veh-2_00003_00004"
    blobs = root / "sensor_blobs" / "mini" / log
    rng = np.random.default_rng(1)
    entries, truth = [], {"meta": root / "meta_datas" / "mini" / f"{log}.pkl", "scenes": {}}
    for s in range(scenes):
        name = f"{log}-scene-{s}"
        frames = []
        for k in range(frames_per_scene):
            token = f"{s:04x}{k:012x}"
            stamp = 1_700_000_000_000_000 + (s * frames_per_scene + k) * 500_000
            pose = tiny_pose((s * frames_per_scene + k) * 0.5)
            points = rng.normal(size=(40, 6)).astype(np.float32) * 4
            (blobs / "MergedPointCloud").mkdir(parents=True, exist_ok=True)
            write_pcd(blobs / "MergedPointCloud" / f"{token}.pcd", points, ("x", "y", "z", "intensity", "ring", "lidar_info"))
            cams = {}
            for channel, (ego_from_cam, K) in CAMERAS_TINY.items():
                _jpeg(blobs / channel / f"{token}.jpg", value=k)
                # sensor2lidar_* hold camera-to-EGO, as in the official files (docs/converters.md, OpenScene)
                cams[channel] = {"data_path": f"{log}/{channel}/{token}.jpg", "sensor2lidar_rotation": ego_from_cam[:3, :3],
                                 "sensor2lidar_translation": ego_from_cam[:3, 3], "cam_intrinsic": K, "distortion": np.zeros(5)}
            flat = rng.choice(200 * 200 * 16, size=300, replace=False)
            label = rng.choice([0, 4, 5, 6, 7, 8, 9, 10], size=300)
            occ_rel = f"dataset/openscene-v1.1/occupancy/mini/{log}/{token}.npy"
            (labels_root / "occupancy" / "mini" / log).mkdir(parents=True, exist_ok=True)
            np.save(labels_root / "occupancy" / "mini" / log / f"{token}.npy", np.stack([flat, label], axis=1).astype(np.int64))
            dense = np.full((200, 200, 16), 16, np.uint8)
            dense[flat % 200, (flat // 200) % 200, flat // 40000] = label
            gt_boxes = np.array([[5.0 + k, 1.0, 0.5, 4.4, 1.8, 1.5, 0.2], [-3.0, 2.0 + k, 0.4, 0.6, 0.6, 1.7, -1.0]])
            entries.append({
                "token": token, "frame_idx": k, "timestamp": stamp, "log_name": log, "scene_name": name, "scene_token": f"st{s}",
                "lidar_path": f"{log}/MergedPointCloud/{token}.pcd",
                "lidar2ego_translation": EGO_FROM_LIDAR_TINY[:3, 3], "lidar2ego_rotation": np.array(quaternion_of(EGO_FROM_LIDAR_TINY)),
                "ego2global_translation": pose[:3, 3], "ego2global_rotation": np.array(quaternion_of(pose)),
                "cams": cams,
                "anns": {"gt_boxes": gt_boxes, "gt_names": np.array(["vehicle", "pedestrian"]),
                         "gt_velocity_3d": np.zeros((2, 3)), "instance_tokens": ["i0", "i1"], "track_tokens": [f"t0-{s}", f"t1-{s}"]},
                "occ_gt_final_path": occ_rel,
            })
            frames.append({"token": token, "timestamp": stamp, "global_from_ego": pose, "semantics": dense, "points": points,
                           "gt_boxes": gt_boxes})
        truth["scenes"][name] = frames
    truth["meta"].parent.mkdir(parents=True, exist_ok=True)
    truth["meta"].write_bytes(pickle.dumps(entries, protocol=4))
    return truth
