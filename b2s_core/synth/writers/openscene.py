"""OpenScene: per-log meta pickles, sensor blobs and sparse occupancy labels.

Layout (``<root>`` = the OpenScene data root)::

    meta_datas/<split>/<log>.pkl                     list of frame dicts, one per 2 Hz key frame
    sensor_blobs/<split>/<log>/MergedPointCloud/<token>.pcd
    sensor_blobs/<split>/<log>/CAM_*/<token>.jpg     eight nuPlan cameras
    occupancy/<split>/<log>/<token>.npy              (N, 2) int64 rows [flat_index, label]

Pickles hold only dicts, lists, str, int, float and numpy arrays. ``lidar_path`` and ``data_path``
are relative to ``sensor_blobs/<split>``; ``occ_gt_final_path`` is relative to ``<root>``.
Occupancy: 200 x 200 x 16 at 0.5 m over [-50, -50, -4, 50, 50, 4] in the ego frame, flat = x +
200 * y + 200 * 200 * z, OpenScene labels (0 vehicle, 4 czone_sign, 5 bicycle, 6 generic_object,
7 pedestrian, 8 traffic_cone, 9 barrier, 10 background); free voxels (16) are not listed. Frame
tokens are the nuPlan ``lidar_pc`` tokens of the same scene.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from b2s_core.synth.geometry import quaternion_from_matrix
from b2s_core.synth.scene import KeyFrameRecord, SceneSpec, SweepRecord
from b2s_core.synth.writers.common import atomic_write_bytes, jpeg_bytes
from b2s_core.synth.writers.nuplan import NuPlanWriter, log_name, nuplan_lidar_from_ego, pcd_bytes, tok
from b2s_core.taxonomy import map_labels

SPLIT = "mini"
GRID = "openscene"
BOX_RANGE = 75.0


def sparse_rows(semantics_occ3d: np.ndarray) -> np.ndarray:
    """(X, Y, Z) Occ3D labels -> (N, 2) int64 rows [x + X * y + X * Y * z, OpenScene label], non-free only."""
    X, Y, _ = semantics_occ3d.shape
    x, y, z = np.nonzero(semantics_occ3d != 17)
    labels = map_labels(semantics_occ3d[x, y, z], "occ3d", "openscene")
    flat = x + X * y + X * Y * z
    order = np.argsort(flat, kind="stable")
    return np.stack([flat[order], labels[order]], axis=1).astype(np.int64)


class OpenSceneWriter:
    def __init__(self, root: Path, split: str = SPLIT):
        self.root = Path(root)
        self.split = split

    def key_tokens(self, spec: SceneSpec, frame: KeyFrameRecord) -> dict:
        return {"openscene_token": NuPlanWriter.lidar_pc_token(spec, frame.sweep.sweep_index)}

    def begin_scene(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.log = log_name(spec)
        self.frames: list[dict] = []

    def add_sweep(self, sweep: SweepRecord) -> None:
        if not sweep.is_key_frame:
            return
        spec = self.spec
        frame_token = NuPlanWriter.lidar_pc_token(spec, sweep.sweep_index)
        lidar_from_sensor = nuplan_lidar_from_ego(spec) @ spec.lidar.ego_from_sensor
        points = sweep.lidar.points.copy()
        points[:, :3] = points[:, :3] @ lidar_from_sensor[:3, :3].T + lidar_from_sensor[:3, 3]
        lidar_path = f"{self.log}/MergedPointCloud/{frame_token}.pcd"
        atomic_write_bytes(self.root / "sensor_blobs" / self.split / lidar_path, pcd_bytes(points))
        self.pending_lidar = lidar_path

    def add_key_frame(self, frame: KeyFrameRecord) -> None:
        spec = self.spec
        frame_token = NuPlanWriter.lidar_pc_token(spec, frame.sweep.sweep_index)
        lidar_from_ego = nuplan_lidar_from_ego(spec)
        ego_from_lidar = np.linalg.inv(lidar_from_ego)
        pose = frame.global_from_ego
        cams = {}
        for view in frame.cameras.get("nuplan", []):
            name = view.camera.name
            data_path = f"{self.log}/{name}/{frame_token}.jpg"
            atomic_write_bytes(self.root / "sensor_blobs" / self.split / data_path, jpeg_bytes(view.rgb))
            lidar_from_cam = lidar_from_ego @ view.camera.ego_from_cam
            cams[name] = {
                "data_path": data_path,
                "sensor2lidar_rotation": lidar_from_cam[:3, :3].copy(),
                "sensor2lidar_translation": lidar_from_cam[:3, 3].copy(),
                "cam_intrinsic": view.intrinsic.copy(),
                "distortion": np.zeros(5),
                "timestamp": int(frame.timestamp),
            }
        occ_rel = f"occupancy/{self.split}/{self.log}/{frame_token}.npy"
        buf = io.BytesIO()
        np.save(buf, sparse_rows(frame.truth[GRID].semantics))
        atomic_write_bytes(self.root / occ_rel, buf.getvalue())
        self.frames.append({
            "token": frame_token,
            "frame_idx": int(frame.key_index),
            "timestamp": int(frame.timestamp),
            "log_name": self.log,
            "log_token": NuPlanWriter.log_token(spec),
            "scene_name": spec.name,
            "scene_token": NuPlanWriter.scene_token(spec),
            "map_location": "synth",
            "vehicle_name": f"veh-{10 + spec.seed % 90}",
            "lidar_path": self.pending_lidar,
            "lidar2ego_translation": ego_from_lidar[:3, 3].copy(),
            "lidar2ego_rotation": quaternion_from_matrix(ego_from_lidar[:3, :3]),
            "ego2global_translation": pose[:3, 3].copy(),
            "ego2global_rotation": quaternion_from_matrix(pose[:3, :3]),
            "ego_dynamic_state": [float(frame.world.ego_speed), 0.0, 0.0, 0.0],
            "cams": cams,
            "anns": self._anns(frame, lidar_from_ego),
            "occ_gt_final_path": occ_rel,
            "sample_prev": self.frames[-1]["token"] if self.frames else None,
            "sample_next": None,
        })
        if len(self.frames) > 1:
            self.frames[-2]["sample_next"] = frame_token

    def _anns(self, frame: KeyFrameRecord, lidar_from_ego: np.ndarray) -> dict:
        boxes = frame.boxes
        lidar_from_global = lidar_from_ego @ np.linalg.inv(frame.global_from_ego)
        near = np.flatnonzero(np.hypot(*(boxes["center"][:, :2] - frame.global_from_ego[:2, 3]).T) < BOX_RANGE)
        center = boxes["center"][near] @ lidar_from_global[:3, :3].T + lidar_from_global[:3, 3]
        dyaw = np.arctan2(lidar_from_global[1, 0], lidar_from_global[0, 0])
        yaw = (boxes["yaw"][near] + dyaw + np.pi) % (2 * np.pi) - np.pi
        gt_boxes = np.concatenate([center, boxes["size"][near], yaw[:, None]], axis=1)  # x, y, z, l, w, h, yaw
        velocity = boxes["velocity"][near] @ lidar_from_global[:3, :3].T
        agents = [frame.world.agents[int(t)] for t in boxes["track"][near]]
        tracks = [tok("track", self.spec.seed, self.spec.index, a.track) for a in agents]
        return {
            "gt_boxes": gt_boxes.astype(np.float64),
            "gt_names": [a.kind.nuplan for a in agents],
            "gt_velocity_3d": velocity.astype(np.float64),
            "instance_tokens": list(tracks),
            "track_tokens": list(tracks),
        }

    def end_scene(self, world) -> None:
        path = self.root / "meta_datas" / self.split / f"{self.log}.pkl"
        atomic_write_bytes(path, pickle.dumps(self.frames, protocol=4))

    def finish(self) -> dict:
        return {"root": str(self.root), "split": self.split}
