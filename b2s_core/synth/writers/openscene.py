"""OpenScene: per-log meta pickles, sensor blobs and sparse occupancy labels.

Layout (``<root>`` = the OpenScene data root)::

    meta_datas/<split>/<log>.pkl                     list of frame dicts, one per 2 Hz key frame
    sensor_blobs/<split>/<log>/MergedPointCloud/<token>.pcd
    sensor_blobs/<split>/<log>/CAM_*/<token>.jpg     eight nuPlan cameras
    occupancy/<split>/<log>/<token>.npy              (N, 2) int64 rows [flat_index, label]

Frame dicts have the keys, types and frames of the official metadata writer (OpenScene
``DriveEngine/process_data/create_openscene_metadata.py``: ``create_nuplan_info``), which navsim
reads (``navsim/common/dataclasses.py``: ``Scene.from_scene_dict_list``; ``navsim/common/
dataloader.py``: ``filter_scenes``), plus ``occ_gt_final_path``:

- ``can_bus`` (18,) float64, ``ego2global_translation`` = its [:3], ``ego2global_rotation`` = its
  [3:7] (w, x, y, z); ``lidar2ego_translation`` (3,) ndarray, ``lidar2ego_rotation`` a list of four
  floats; ``ego2global`` / ``lidar2ego`` / ``lidar2global`` (4, 4) float64.
- ``roadblock_ids`` non-empty list of str, ``traffic_lights`` list of (int, bool), ``driving_command``
  (4,) int64 one-hot, ``ego_dynamic_state`` [vx, vy, ax, ay].
- ``cams[CAM_*]``: ``data_path``, ``sensor2lidar_rotation`` (3, 3) / ``sensor2lidar_translation``
  (3,) holding the camera-to-EGO extrinsic (the name notwithstanding), ``cam_intrinsic`` (3, 3),
  ``distortion`` (5,).
- ``anns``: ``gt_boxes`` (N, 7) x, y, z, l, w, h, yaw in the EGO frame; ``gt_names`` (N,) str
  ndarray; ``gt_velocity_3d`` (N, 3) in the LiDAR frame; ``instance_tokens`` (per-frame lidar_box
  tokens) and ``track_tokens``, lists of str.

Scenes: the frames of one log are the nuPlan writer's key-frame ``lidar_pc`` rows (``token`` = the
lidar_pc token), so each frame carries what the official writer takes from its lidar_pc: ``scene_token``
= that lidar_pc's nuPlan scene (the log is cut into several, :func:`~b2s_core.synth.writers.nuplan.
scene_parts`), ``frame_idx`` = its index within that nuPlan scene (the official writer restarts it at
every new scene_token), ``roadblock_ids`` = the nuPlan scene's route (the nuPlan writer's
:func:`~b2s_core.synth.writers.nuplan.roadblock_ids`), ``sample_prev`` / ``sample_next`` chained over
the whole log. ``scene_name`` deliberately stays the b2s scene name (``scene-0001``) for the whole log,
where the official writer writes ``f"log-{log_idx:04d}-{scene.name}"`` per nuPlan scene: b2s's reader
groups OpenScene frames into scenes by ``scene_name`` (no official reader uses it: navsim keys on
``log_name``, ``scene_token`` and ``token``), and the official name would cut a synthetic log into the
one- or two-key-frame nuPlan scenes that exist only to satisfy the nuPlan devkit's scenario ranking.

Pickles hold only dicts, lists, tuples, str, int, float, None and numpy arrays. ``lidar_path`` and
``data_path`` are relative to ``sensor_blobs/<split>``; ``occ_gt_final_path`` is relative to ``<root>``.
Occupancy: 200 x 200 x 16 at 0.5 m over [-50, -50, -4, 50, 50, 4] in the ego frame, flat = x +
200 * y + 200 * 200 * z, the key frame's label set (:mod:`b2s_core.synth.labels`) in OpenScene
labels (0 vehicle, 4 czone_sign, 5 bicycle, 6 generic_object, 7 pedestrian, 8 traffic_cone, 9 barrier,
10 background); free voxels (16) are not listed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from b2s_core.synth.geometry import quaternion_from_matrix
from b2s_core.synth.scene import KeyFrameRecord, SceneSpec, SweepRecord
from b2s_core.synth.world import World
from b2s_core.synth.writers.common import atomic_write_bytes, jpeg_bytes
from b2s_core.synth.writers.nuplan import (
    NuPlanWriter,
    log_name,
    nuplan_lidar_from_ego,
    pcd_bytes,
    roadblock_ids,
    scene_parts,
    tok,
)
from b2s_core.taxonomy import map_labels

SPLIT = "mini"
GRID = "openscene"
BOX_RANGE = 75.0
COMMAND_AHEAD = 20.0  # metres along the route: get_driving_command's default distance
COMMAND_LATERAL = 2.0  # metres sideways for left / right: its default lateral_offset


def sparse_rows(semantics_occ3d: np.ndarray) -> np.ndarray:
    """(X, Y, Z) Occ3D labels -> (N, 2) int64 rows [x + X * y + X * Y * z, OpenScene label], non-free only."""
    X, Y, _ = semantics_occ3d.shape
    x, y, z = np.nonzero(semantics_occ3d != 17)
    labels = map_labels(semantics_occ3d[x, y, z], "occ3d", "openscene")
    flat = x + X * y + X * Y * z
    order = np.argsort(flat, kind="stable")
    return np.stack([flat[order], labels[order]], axis=1).astype(np.int64)


def driving_command(world: World, t: float, global_from_ego: np.ndarray) -> np.ndarray:
    """(4,) int64 one-hot (left, forward, right, unknown), the rule of the official
    ``helpers/driving_command.py: get_driving_command``: the route point COMMAND_AHEAD metres further
    along the ego's path, in the current ego frame, is left (y >= COMMAND_LATERAL), right
    (y <= -COMMAND_LATERAL) or forward."""
    ahead = world.global_from_ego(t + COMMAND_AHEAD / world.ego_speed)[:3, 3]
    y = (np.linalg.inv(global_from_ego)[:3, :3] @ (ahead - global_from_ego[:3, 3]))[1]
    command = np.zeros(4, dtype=np.int64)
    command[0 if y >= COMMAND_LATERAL else 2 if y <= -COMMAND_LATERAL else 1] = 1
    return command


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
        ego_from_lidar = np.linalg.inv(nuplan_lidar_from_ego(spec))
        pose = frame.global_from_ego
        cams = {}
        for view in frame.cameras.get("nuplan", []):
            name = view.camera.name
            data_path = f"{self.log}/{name}/{frame_token}.jpg"
            atomic_write_bytes(self.root / "sensor_blobs" / self.split / data_path, jpeg_bytes(view.rgb))
            # 'sensor2lidar_*' carry the camera-to-EGO extrinsic, as the official writer copies it from
            # nuPlan's camera table (helpers/nuplan_cameras_utils.py: get_cam_info_from_lidar_pc).
            cams[name] = {
                "data_path": data_path,
                "sensor2lidar_rotation": view.camera.ego_from_cam[:3, :3].copy(),
                "sensor2lidar_translation": view.camera.ego_from_cam[:3, 3].copy(),
                "cam_intrinsic": view.intrinsic.copy(),
                "distortion": np.zeros(5),
            }
        occ_rel = f"occupancy/{self.split}/{self.log}/{frame_token}.npy"
        buf = io.BytesIO()
        np.save(buf, sparse_rows(frame.labels[GRID].semantics))
        atomic_write_bytes(self.root / occ_rel, buf.getvalue())
        speed = float(frame.world.ego_speed)
        # nuPlan ego_pose as a CanBus vector (helpers/canbus.py): x y z, qw qx qy qz, acceleration
        # xyz, velocity xyz (ego frame), angular rate xyz, two zeros; constant speed, as the nuPlan
        # writer's ego_pose rows.
        can_bus = np.concatenate([pose[:3, 3], quaternion_from_matrix(pose[:3, :3]), np.zeros(3), [speed, 0.0, 0.0],
                                  np.zeros(3), np.zeros(2)]).astype(np.float64)
        # The lidar_pc's own nuPlan scene (create_nuplan_info: scene_token = lidar_pc.scene_token) and the
        # frame's index within it (frame_idx restarts at each new scene_token); scene_name: module docstring.
        part = NuPlanWriter.part_of_sweep(spec, frame.sweep.sweep_index)
        part_start = scene_parts(spec)[part][0]
        self.frames.append({
            "token": frame_token,
            "frame_idx": (frame.sweep.sweep_index - part_start) // spec.sweeps_per_key,
            "timestamp": int(frame.timestamp),
            "log_name": self.log,
            "log_token": NuPlanWriter.log_token(spec),
            "scene_name": spec.name,
            "scene_token": NuPlanWriter.scene_token(spec, part),
            "map_location": "synth",
            # create_nuplan_info: the lidar_pc's scene.roadblock_ids split on " ", the list the nuPlan writer joins;
            # never empty, so navsim's default scene filter (has_route) keeps the scene
            "roadblock_ids": roadblock_ids(spec, frame.world),
            "vehicle_name": f"veh-{10 + spec.seed % 90}",
            "can_bus": can_bus,
            "lidar_path": self.pending_lidar,
            "lidar2ego_translation": ego_from_lidar[:3, 3].copy(),
            "lidar2ego_rotation": [float(v) for v in quaternion_from_matrix(ego_from_lidar[:3, :3])],
            "ego2global_translation": can_bus[:3].copy(),
            "ego2global_rotation": can_bus[3:7].copy(),
            "ego_dynamic_state": [speed, 0.0, 0.0, 0.0],
            "traffic_lights": [],  # the synthetic world has no traffic lights
            "driving_command": driving_command(frame.world, frame.sweep.time, pose),
            "cams": cams,
            "sample_prev": self.frames[-1]["token"] if self.frames else None,
            "sample_next": None,
            "ego2global": pose.copy(),
            "lidar2ego": ego_from_lidar.copy(),
            "lidar2global": pose @ ego_from_lidar,
            "anns": self._anns(frame, ego_from_lidar),
            "occ_gt_final_path": occ_rel,
        })
        if len(self.frames) > 1:
            self.frames[-2]["sample_next"] = frame_token

    def _anns(self, frame: KeyFrameRecord, ego_from_lidar: np.ndarray) -> dict:
        """Boxes within BOX_RANGE as the official writer stores them (create_openscene_metadata.py:
        create_nuplan_info): ``gt_boxes`` (N, 7) in the EGO frame, ``yaw = global yaw - ego yaw``
        (wrapped to [-pi, pi) here; the official difference is unwrapped, the same angle);
        ``gt_velocity_3d`` (N, 3) rotated into the LiDAR frame; ``gt_names`` an ndarray of nuPlan
        categories; ``instance_tokens`` the per-frame lidar_box tokens, ``track_tokens`` the tracks'."""
        boxes = frame.boxes
        pose = frame.global_from_ego
        near = np.flatnonzero(np.hypot(*(boxes["center"][:, :2] - pose[:2, 3]).T) < BOX_RANGE)
        center = (boxes["center"][near] - pose[:3, 3]) @ pose[:3, :3]  # rows: R^T (c - t)
        ego_yaw = np.arctan2(pose[1, 0], pose[0, 0])
        yaw = (boxes["yaw"][near] - ego_yaw + np.pi) % (2 * np.pi) - np.pi
        gt_boxes = np.concatenate([center, boxes["size"][near], yaw[:, None]], axis=1)  # x, y, z, l, w, h, yaw
        velocity = boxes["velocity"][near] @ pose[:3, :3] @ ego_from_lidar[:3, :3]  # rows: R_l2e^T R_e2g^T v
        agents = [frame.world.agents[int(t)] for t in boxes["track"][near]]
        spec = self.spec
        return {
            "gt_boxes": gt_boxes.astype(np.float64),
            "gt_names": np.array([a.kind.nuplan for a in agents]),
            "gt_velocity_3d": velocity.astype(np.float64),
            # the same tokens the nuPlan writer gives these lidar_box rows
            "instance_tokens": [tok("lidar_box", spec.seed, spec.index, a.track, frame.sweep.sweep_index) for a in agents],
            "track_tokens": [tok("track", spec.seed, spec.index, a.track) for a in agents],
        }

    def end_scene(self, world) -> None:
        path = self.root / "meta_datas" / self.split / f"{self.log}.pkl"
        atomic_write_bytes(path, pickle.dumps(self.frames, protocol=5))  # the official writer: HIGHEST_PROTOCOL (5)

    def finish(self) -> dict:
        return {"root": str(self.root), "split": self.split}
