"""Scores of a built frame against exact ground truth (the synthetic world's), as the issue defines them.

``truth`` is a :class:`b2s_core.synth.GroundTruthFrame` (duck-typed: semantics / instance /
mask_camera / visible per grid name, boxes with center, size (l, w, h), yaw, velocity, track). Used by the
acceptance tests and by ``benchmarks/bench_build_binary.py --quality``.
"""

from __future__ import annotations

import numpy as np

from b2s_core.binary.aggregate import voxels_in_extents
from b2s_core.grids import VoxelGrid
from b2s_core.records import OccFrame

TRUTH_FREE = 17  # Occ3D free, as the generator writes it
MOVING_SPEED = 0.5  # m/s above which an agent counts as moving


def _yaw_pose(center, yaw: float) -> np.ndarray:
    pose = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    pose[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    pose[:3, 3] = center
    return pose


def iou(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """IoU of two (X, Y, Z) bool grids counted inside ``mask``."""
    return float((a & b & mask).sum() / max(((a | b) & mask).sum(), 1))


def _box_extents(truth, ego_from_global: np.ndarray, tracks: set, grow: float) -> list:
    boxes = truth.boxes
    return [(ego_from_global @ _yaw_pose(boxes["center"][j], boxes["yaw"][j]), -boxes["size"][j] / 2 - grow, boxes["size"][j] / 2 + grow)
            for j, track in enumerate(boxes["track"]) if track in tracks]


def score_frame(frame: OccFrame, truth, scene_truths: list, grid: VoxelGrid) -> dict[str, float]:
    """Static / moving IoU, trail share and mask agreement of one built key frame.

    * static: IoU of occupancy vs true non-object occupancy, away from every object box (+0.3 m),
      inside the exact world's camera visibility (``static_gt_mask``) and inside our mask_camera
      (``static_our_mask``);
    * moving: IoU of occupancy in the moving agents' boxes (+0.3 m, minus static truth) vs the
      agents' true voxels, inside our mask_camera;
    * trail: voxels occupied but truly free in the path of moving agents (their boxes at every key
      frame of the scene) outside their current boxes, as a share of the agents' voxels;
    * mask_agreement: share of all voxels where our mask_camera equals the label set's (one rule, so
      it measures how close the build comes to the labels' geometry, not two definitions).
    """
    name = grid.name
    occupied = truth.semantics[name] != TRUTH_FREE
    instance = truth.instance[name]
    speed = np.linalg.norm(truth.boxes["velocity"][:, :2], axis=1)
    moving_tracks = set(truth.boxes["track"][speed > MOVING_SPEED].tolist())
    moving = np.isin(instance, list(moving_tracks))
    static = occupied & (instance < 0)
    ego_from_global = np.linalg.inv(truth.global_from_ego)
    near_moving = voxels_in_extents(grid, _box_extents(truth, ego_from_global, moving_tracks, 0.3), samples=3)
    all_tracks = set(truth.boxes["track"].tolist())
    near_objects = voxels_in_extents(grid, _box_extents(truth, ego_from_global, all_tracks, 0.3), samples=3)
    path = []
    for other in scene_truths:
        path += _box_extents(other, ego_from_global, moving_tracks, 0.0)
    path = voxels_in_extents(grid, path, samples=3)
    built_moving = frame.occupancy & near_moving & ~static
    return {
        "static_gt_mask": iou(frame.occupancy & ~near_objects, static & ~near_objects, truth.visible[name]),
        "static_our_mask": iou(frame.occupancy & ~near_objects, static & ~near_objects, frame.mask_camera),
        "moving": iou(built_moving, moving, frame.mask_camera),
        "trail": float((frame.occupancy & path & ~occupied & ~near_moving).sum() / max(moving.sum(), 1)),
        "mask_agreement": float((frame.mask_camera == truth.mask_camera[name]).mean()),
    }
