"""nuScenes v1.0 layout: 13 JSON tables under ``<root>/<version>/``, ``samples/``, ``sweeps/``, ``maps/``.

Loads with ``nuscenes.nuscenes.NuScenes(version, dataroot)``. One log and one map per scene; the
LiDAR key frame and its camera images share the key frame's timestamp; a non-key LiDAR sweep
belongs to the sample nearest in time (``sample_token``, ties to the earlier) and is chained with
the key frames by ``prev`` / ``next`` per channel. Box sizes are written in nuScenes order (width, length, height).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from b2s_core.synth.geometry import quaternion_from_matrix, token
from b2s_core.synth.scene import KeyFrameRecord, SceneSpec, SweepRecord, annotated
from b2s_core.synth.sensors import NUSCENES_CAMERAS
from b2s_core.synth.world import KINDS
from b2s_core.synth.writers.common import atomic_write_bytes, atomic_write_json, jpeg_bytes, png_bytes

ATTRIBUTES = (
    "vehicle.moving", "vehicle.parked", "vehicle.stopped", "pedestrian.moving", "pedestrian.standing",
    "cycle.with_rider", "cycle.without_rider",
)
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


def log_name(spec: SceneSpec) -> str:
    return f"synth-{spec.seed:04d}-{spec.index:04d}"


class NuScenesWriter:
    def __init__(self, root: Path, version: str = "v1.0-mini"):
        self.root = Path(root)
        self.version = version
        self.tables: dict[str, list] = {name: [] for name in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
            "log", "scene", "sample", "sample_data", "sample_annotation", "map",
        )}
        for kind in sorted({k.nuscenes for k in KINDS.values()}):
            self.tables["category"].append({"token": token("category", kind), "name": kind, "description": kind})
        for name in ATTRIBUTES:
            self.tables["attribute"].append({"token": token("attribute", name), "name": name, "description": name})
        for tok, level in VISIBILITY:
            self.tables["visibility"].append({"token": tok, "level": level, "description": f"visibility {level}"})
        self.tables["sensor"].append({"token": token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"})
        for cam in NUSCENES_CAMERAS:
            self.tables["sensor"].append({"token": token("sensor", cam.name), "channel": cam.name, "modality": "camera"})

    # -- tokens shared with the other writers (Occ3D, OpenOccupancy use the same ones) ------------
    @staticmethod
    def sample_token(spec: SceneSpec, key_index: int) -> str:
        return token("nuscenes-sample", spec.seed, spec.index, key_index)

    @staticmethod
    def sample_data_token(spec: SceneSpec, channel: str, sweep_index: int) -> str:
        return token("nuscenes-sample-data", spec.seed, spec.index, channel, sweep_index)

    @staticmethod
    def scene_token(spec: SceneSpec) -> str:
        return token("nuscenes-scene", spec.seed, spec.index)

    # -- records ------------------------------------------------------------------------------
    def begin_scene(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.log = log_name(spec)
        self.last_data: dict[str, dict] = {}
        self.instances: dict[int, dict] = {}
        self.last_ann: dict[int, dict] = {}
        self.last_sample: dict | None = None
        self.pending_sweeps: list[dict] = []
        self.calib: dict[str, str] = {}
        lidar = spec.lidar
        self._calibrated("LIDAR_TOP", lidar.ego_from_sensor, [])
        for cam in NUSCENES_CAMERAS:
            size = cam.size_for(spec.image_size)
            self._calibrated(cam.name, cam.ego_from_cam, cam.intrinsic(size).tolist())

    def _calibrated(self, channel: str, ego_from_sensor: np.ndarray, intrinsic) -> None:
        tok = token("nuscenes-calib", self.spec.seed, self.spec.index, channel)
        self.calib[channel] = tok
        self.tables["calibrated_sensor"].append({
            "token": tok, "sensor_token": token("sensor", channel),
            "translation": ego_from_sensor[:3, 3].tolist(),
            "rotation": quaternion_from_matrix(ego_from_sensor[:3, :3]).tolist(),
            "camera_intrinsic": intrinsic,
        })

    def _sample_data(self, channel, index, timestamp, pose, filename, fileformat, is_key, width=0, height=0) -> dict:
        tok = self.sample_data_token(self.spec, channel, index)
        ego_tok = token("nuscenes-ego", self.spec.seed, self.spec.index, channel, index)
        self.tables["ego_pose"].append({
            "token": ego_tok, "timestamp": timestamp, "translation": pose[:3, 3].tolist(),
            "rotation": quaternion_from_matrix(pose[:3, :3]).tolist(),
        })
        record = {
            "token": tok, "sample_token": "", "ego_pose_token": ego_tok, "calibrated_sensor_token": self.calib[channel],
            "timestamp": timestamp, "fileformat": fileformat, "is_key_frame": is_key, "height": height, "width": width,
            "filename": filename, "prev": "", "next": "",
        }
        previous = self.last_data.get(channel)
        if previous is not None:
            previous["next"] = tok
            record["prev"] = previous["token"]
        self.last_data[channel] = record
        self.tables["sample_data"].append(record)
        return record

    def add_sweep(self, sweep: SweepRecord) -> None:
        folder = "samples" if sweep.is_key_frame else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{self.log}__LIDAR_TOP__{sweep.timestamp}.pcd.bin"
        atomic_write_bytes(self.root / filename, sweep.lidar.points.astype(np.float32).tobytes())
        record = self._sample_data("LIDAR_TOP", sweep.sweep_index, sweep.timestamp, sweep.global_from_ego, filename,
                                   "pcd", sweep.is_key_frame)
        # a sweep belongs to the nearest sample in time (ties to the earlier), as in nuScenes
        since_key = sweep.sweep_index % self.spec.sweeps_per_key
        if not sweep.is_key_frame and since_key * 2 <= self.spec.sweeps_per_key and self.last_sample is not None:
            record["sample_token"] = self.last_sample["token"]
        else:
            self.pending_sweeps.append(record)

    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        spec = self.spec
        sample_tok = self.sample_token(spec, frame.key_index)
        sample = {"token": sample_tok, "timestamp": frame.timestamp, "scene_token": self.scene_token(spec), "prev": "", "next": ""}
        if self.last_sample is not None:
            self.last_sample["next"] = sample_tok
            sample["prev"] = self.last_sample["token"]
        self.last_sample = sample
        self.tables["sample"].append(sample)
        for record in self.pending_sweeps:
            record["sample_token"] = sample_tok
        self.pending_sweeps = []
        for view in frame.cameras.get("nuscenes", []):
            name = view.camera.name
            filename = f"samples/{name}/{self.log}__{name}__{frame.timestamp}.jpg"
            atomic_write_bytes(self.root / filename, jpeg_bytes(view.rgb))
            record = self._sample_data(name, frame.sweep.sweep_index, frame.timestamp, frame.global_from_ego, filename,
                                       "jpg", True, *view.size)
            record["sample_token"] = sample_tok
        self._annotations(frame, sample_tok)

    def _annotations(self, frame: KeyFrameRecord, sample_tok: str) -> None:
        boxes = frame.boxes
        for a in np.flatnonzero(annotated(boxes, frame.global_from_ego)):
            agent = frame.world.agents[int(boxes["track"][a])]
            track = agent.track
            if track not in self.instances:
                self.instances[track] = {
                    "token": token("nuscenes-instance", self.spec.seed, self.spec.index, track),
                    "category_token": token("category", agent.kind.nuscenes), "nbr_annotations": 0,
                    "first_annotation_token": "", "last_annotation_token": "",
                }
                self.tables["instance"].append(self.instances[track])
            instance = self.instances[track]
            ann_tok = token("nuscenes-ann", self.spec.seed, self.spec.index, track, frame.key_index)
            yaw = boxes["yaw"][a]
            length, width, height = boxes["size"][a]
            ann = {
                "token": ann_tok, "sample_token": sample_tok, "instance_token": instance["token"],
                "visibility_token": "4", "attribute_tokens": [token("attribute", a) for a in [_attribute(agent)] if a],
                "translation": boxes["center"][a].tolist(), "size": [float(width), float(length), float(height)],
                "rotation": [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))],
                "prev": "", "next": "", "num_lidar_pts": int(boxes["num_lidar_pts"][a]), "num_radar_pts": 0,
            }
            previous = self.last_ann.get(track)
            if previous is not None and previous["sample_token"] == self.tables["sample"][-2]["token"]:
                previous["next"] = ann_tok
                ann["prev"] = previous["token"]
            self.last_ann[track] = ann
            instance["nbr_annotations"] += 1
            instance["first_annotation_token"] = instance["first_annotation_token"] or ann_tok
            instance["last_annotation_token"] = ann_tok
            self.tables["sample_annotation"].append(ann)

    def end_scene(self, world) -> None:
        spec = self.spec
        log_tok = token("nuscenes-log", spec.seed, spec.index)
        self.tables["log"].append({
            "token": log_tok, "logfile": self.log, "vehicle": "synth", "date_captured": "2020-09-13",
            "location": f"synth-{world.layout}",
        })
        samples = [s for s in self.tables["sample"] if s["scene_token"] == self.scene_token(spec)]
        self.tables["scene"].append({
            "token": self.scene_token(spec), "log_token": log_tok, "nbr_samples": len(samples),
            "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"],
            "name": spec.name, "description": f"synthetic {world.layout} scene, seed {spec.seed}",
        })
        map_tok = token("nuscenes-map", spec.seed, spec.index)
        filename = f"maps/{map_tok}.png"
        atomic_write_bytes(self.root / filename, png_bytes(_map_image(world, self.tables["ego_pose"][-1])))
        self.tables["map"].append({"token": map_tok, "log_tokens": [log_tok], "category": "semantic_prior", "filename": filename})

    def finish(self) -> dict:
        for name, records in self.tables.items():
            atomic_write_json(self.root / self.version / f"{name}.json", records)
        return {"root": str(self.root), "version": self.version}


def _attribute(agent) -> str | None:
    moving = agent.speed > 0
    if agent.kind.name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if agent.kind.name in ("cyclist", "motorcycle"):
        return "cycle.with_rider"
    if agent.kind.nuscenes.startswith("vehicle"):
        return "vehicle.moving" if moving else "vehicle.parked"
    return None  # cones, barriers, bins carry no attribute in nuScenes


def _map_image(world, last_pose: dict) -> np.ndarray:
    """A coarse (1 m / pixel) drivable-area mask around the scene's roads, for the map table."""
    center = np.asarray(last_pose["translation"][:2])
    half = 150
    xs = center[0] + np.arange(-half, half) + 0.5
    ys = center[1] + np.arange(half, -half, -1) - 0.5
    gx, gy = np.meshgrid(xs, ys)
    label = world.ground(np.stack([gx.ravel(), gy.ravel()], axis=1))[0].reshape(gx.shape)
    return np.where(label == 11, 255, 0).astype(np.uint8)
