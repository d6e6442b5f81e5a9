"""The real sample frames in ``../shared/data`` as layers and frames, for example pictures and tests.

* :func:`occ3d_sample_layer`: the Occ3D-nuScenes ground-truth grid (real labels).
* :func:`keyframe_sensor_frame`: the nuScenes key frame as the :class:`SensorFrame` a reader
  gives (one LiDAR sweep, the annotated boxes, six cameras), for building binary occupancy from it.
* :func:`nuscenes_keyframe`: the nuScenes key frame as an :class:`OccFrame` with its six real
  cameras; its occupancy is the key-frame LiDAR voxelised on the Occ3D grid, and its semantics
  a rough labelling made here: points inside an annotated box take the box's class, the rest are
  'driveable_surface' below ``GROUND_Z_M`` and 'manmade' above (only so that pictures have colours
  that line up with the photos; it is not a ground truth).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.occfile import OccWriter
from b2s_core.records import Box, Camera, LidarSweep, OccFrame, SensorFrame
from b2s_core.taxonomy import OCC3D
from b2s_core.viz.voxels import VisualizeError, VoxelLayer

GROUND_Z_M = 0.3  # ego frame: origin on the ground under the rear axle


def occ3d_sample_layer(path: Path, *, mask: str | None = None) -> VoxelLayer:
    """``occ3d-sample/labels.npz`` -> a layer on the Occ3D grid; ``mask``: None, 'camera' or 'lidar'."""
    with np.load(path) as data:
        semantics = data["semantics"]
        visible = data[f"mask_{mask}"].astype(bool) if mask else None
    return VoxelLayer.from_semantics(semantics, OCC3D, GRID_PRESETS["occ3d"], "Occ3D sample", visible)


def _box_labels(points_lidar: np.ndarray, boxes: list[dict]) -> np.ndarray:
    """(N, 3) LiDAR-frame points -> (N,) int label of the box each lies in, -1 outside every box."""
    labels = np.full(len(points_lidar), -1, dtype=np.int64)
    for box in boxes:
        if box["category"] not in OCC3D.class_names:
            continue  # 'ignore' boxes
        x, y, z, length, width, height, yaw = box["box"]
        local = points_lidar[:, :3] - np.array([x, y, z])
        c, s = np.cos(yaw), np.sin(yaw)
        along, across = local[:, 0] * c + local[:, 1] * s, -local[:, 0] * s + local[:, 1] * c
        inside = (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2) & (np.abs(local[:, 2]) <= height / 2)
        labels[inside] = OCC3D.class_names.index(box["category"])
    return labels


def keyframe_sensor_frame(folder: Path) -> tuple[SensorFrame, np.ndarray]:
    """frame.json + .pcd.bin -> (the SensorFrame, (N, 3) float64 key-frame points in the ego frame).

    The boxes are stored in the LIDAR_TOP frame; they are moved to the global frame, as readers give them.
    """
    meta = json.loads((folder / "frame.json").read_text())
    global_from_ego = np.array(meta["ego2global"])
    ego_from_lidar = np.array(meta["lidar"]["lidar2ego"])
    points = np.fromfile(folder / meta["lidar"]["filename"], dtype=np.float32).reshape(-1, 5)
    sweep = LidarSweep(ego_from_lidar, global_from_ego, meta["timestamp_us"], True, lambda: points)
    boxes = []
    for number, row in enumerate(meta["boxes_lidar_frame"]["boxes"]):
        x, y, z, length, width, height, yaw = row["box"]
        lidar_from_box = np.eye(4)
        lidar_from_box[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]]
        lidar_from_box[:3, 3] = (x, y, z)
        boxes.append(Box(global_from_ego @ ego_from_lidar @ lidar_from_box, np.array([length, width, height]),
                         str(number), row["category"], 0))
    cameras = [Camera(name, np.array(c["intrinsic"]), np.array(c["cam2ego"]), 1600, 900, c["filename"])
               for name, c in meta["cameras"].items()]
    frame = SensorFrame("scene-0061", meta["sample_token"], meta["timestamp_us"], global_from_ego, cameras, sweep, [],
                        boxes)
    xyz = points[:, :3].astype(np.float64)
    return frame, xyz @ ego_from_lidar[:3, :3].T + ego_from_lidar[:3, 3]


def nuscenes_keyframe(folder: Path, grid: VoxelGrid = GRID_PRESETS["occ3d"]) -> tuple[OccFrame, dict[str, bytes]]:
    """``nuscenes-keyframe/`` -> (OccFrame with cameras, occupancy and rough semantics; camera name -> JPEG bytes)."""
    info_path = folder / "frame.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as err:
        raise VisualizeError(f"{info_path}: cannot read the key frame description ({err})") from None
    lidar_to_ego = np.asarray(info["lidar"]["lidar2ego"], dtype=np.float64)
    points = np.fromfile(folder / info["lidar"]["filename"], dtype=np.float32).reshape(-1, 5)[:, :3]  # (N, 3) lidar
    labels = _box_labels(points, info["boxes_lidar_frame"]["boxes"])
    points_ego = points @ lidar_to_ego[:3, :3].T + lidar_to_ego[:3, 3]  # (N, 3)
    ground = points_ego[:, 2] < GROUND_Z_M
    labels = np.where(labels >= 0, labels, np.where(ground, OCC3D.class_names.index("driveable_surface"),
                                                      OCC3D.class_names.index("manmade")))
    index = grid.index_of(points_ego)
    keep = grid.inside(index)
    index, labels = index[keep], labels[keep]
    semantics = np.full(grid.shape, OCC3D.free_index, dtype=np.uint8)
    # Boxes win over background where both fall in one voxel: write background first, boxes last.
    order = np.argsort(labels < OCC3D.class_names.index("driveable_surface"), kind="stable")
    semantics[index[order, 0], index[order, 1], index[order, 2]] = labels[order]
    cameras, images = [], {}
    for name, cam in info["cameras"].items():
        data = (folder / cam["filename"]).read_bytes()
        images[name] = data
        cameras.append(Camera(name=name, intrinsic=np.asarray(cam["intrinsic"], dtype=np.float64),
                              ego_from_cam=np.asarray(cam["cam2ego"], dtype=np.float64), width=1600, height=900,
                              image_path=cam["filename"], timestamp=int(cam["timestamp_us"])))
    frame = OccFrame(
        scene="scene-0061", token=info["sample_token"], timestamp=int(info["timestamp_us"]),
        global_from_ego=np.asarray(info["ego2global"], dtype=np.float64), cameras=cameras,
        occupancy=semantics != OCC3D.free_index, semantics=semantics, points=points_ego.astype(np.float32),
    )
    return frame, images


def write_sample_scene(folder: Path, out_dir: Path, *, frames: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A small scene from the nuScenes key frame, as a data file and a predictions file -> (data, preds).

    Frame ``t`` shifts the key frame's grid by ``t`` voxels along -x (the world passing by a car
    driving forward); the camera images stay those of the key frame. The "prediction" is the
    ground truth with 10 % of its occupied voxels relabelled at random and its binary decoder
    output the ground truth's occupancy dilated by one voxel upwards: a stand-in with known
    errors for pictures and tests, not a model's output.
    """
    frame, images = nuscenes_keyframe(folder)
    rng = np.random.default_rng(seed)
    grid, names = GRID_PRESETS["occ3d"], [c.name for c in frame.cameras]
    gt_frames, pred_frames = [], []
    for t in range(frames):
        semantics = np.roll(frame.semantics, -t, axis=0)
        semantics[-t or semantics.shape[0]:] = OCC3D.free_index  # what rolled round the edge is new, unseen space
        occupancy = semantics != OCC3D.free_index
        cameras = [Camera(**{**cam.__dict__, "image_bytes": images[cam.name]}) for cam in frame.cameras]
        common = dict(scene="scene-0061", token=f"{frame.token}-{t}", timestamp=frame.timestamp + 500_000 * t,
                      global_from_ego=frame.global_from_ego, cameras=cameras)
        gt_frames.append(OccFrame(occupancy=occupancy, semantics=semantics, **common))
        predicted = semantics.copy()
        flip = occupancy & (rng.random(occupancy.shape) < 0.1)
        predicted[flip] = rng.integers(0, OCC3D.free_index, size=int(flip.sum()), dtype=np.uint8)
        binary = occupancy | np.roll(occupancy, 1, axis=2)
        pred_frames.append(OccFrame(occupancy=occupancy, semantics=predicted, binary_pred=binary,
                                    **{**common, "cameras": []}))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, scene_frames in (("data.h5", gt_frames), ("preds.h5", pred_frames)):
        with OccWriter(out_dir / name, grid=grid, taxonomy=OCC3D, source="nuscenes", command="b2s_core.viz.samples",
                       camera_names=names) as writer:
            writer.write_scene("scene-0061", scene_frames)
        paths.append(out_dir / name)
    return paths[0], paths[1]
