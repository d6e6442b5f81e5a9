"""Training targets derived from a frame's grids (pure NumPy, no augmentation here).

* binary target: 0 free, 1 occupied, 255 ignore. For a semantically labelled frame it is derived
  from the semantics (the paper's B*: "binaries of the semantic set"), so that it can never
  disagree with the labels; for a binary-only frame it is the stored occupancy.
* soft semantic target (Top2 pseudo-labels): the two best classes of each voxel of the pairs'
  support and their probabilities (softmax of the two stored logits); voxels outside it get
  (free, free) with probabilities (1, 0). The support is the frame's ``top2_support`` grid when
  it has one (paper-form labels: free may be one of the two) and its occupied voxels otherwise.
  Stored densely as (X, Y, Z, 2) so that the BEV flips apply unchanged.
* depth target of the Lift-Splat depth distribution (the LiDAR depth supervision of the paper's
  code base, COTR / BEVDet): the nearest LiDAR return in each cell of the lifted feature map.
"""

from __future__ import annotations

import numpy as np

from b2s_core.taxonomy import IGNORE_INDEX


def binary_from_semantics(semantics: np.ndarray, free_index: int) -> np.ndarray:
    """(X, Y, Z) uint8 labels -> (X, Y, Z) uint8 binary target (0 free, 1 occupied, 255 ignore)."""
    binary = (semantics != free_index).astype(np.uint8)
    binary[semantics == IGNORE_INDEX] = IGNORE_INDEX
    return binary


def binary_from_occupancy(occupancy: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool -> (X, Y, Z) uint8 binary target."""
    return occupancy.astype(np.uint8)


def dense_top2(
    occupancy: np.ndarray, top2_labels: np.ndarray, top2_logits: np.ndarray, free_index: int,
    support: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter Top2 pseudo-labels of the M voxels of their support (C order) into dense grids.

    occupancy (X, Y, Z) bool; support (X, Y, Z) bool or None (= occupancy): the voxels the M rows
    of top2_labels / top2_logits (M, 2) belong to. Returns ``labels (X, Y, Z, 2) uint8`` and
    ``probs (X, Y, Z, 2) float32`` (rows sum to 1).
    """
    where = "occupied voxels" if support is None else "voxels in its Top2 support"
    flat = np.flatnonzero(occupancy if support is None else support)  # (M,) C order
    if len(flat) != len(top2_labels) or len(flat) != len(top2_logits):
        raise ValueError(f"Top2 pseudo-labels cover {len(top2_labels)} voxels but the frame has {len(flat)} {where}")
    shape = occupancy.shape
    labels = np.full((occupancy.size, 2), free_index, dtype=np.uint8)
    probs = np.zeros((occupancy.size, 2), dtype=np.float32)
    probs[:, 0] = 1.0
    logits = top2_logits.astype(np.float32)  # (M, 2)
    logits = logits - logits.max(axis=1, keepdims=True)  # stable softmax over the two classes
    weights = np.exp(logits)
    weights /= weights.sum(axis=1, keepdims=True)
    labels[flat] = top2_labels
    probs[flat] = weights
    return labels.reshape(*shape, 2), probs.reshape(*shape, 2)


def hard_as_top2(semantics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hard labels in the Top2 form (label twice, probabilities (1, 0)), to batch with soft ones."""
    labels = np.repeat(semantics[..., None], 2, axis=-1)
    probs = np.zeros(semantics.shape + (2,), dtype=np.float32)
    probs[..., 0] = 1.0
    return labels, probs


def lidar_depth_target(points_ego: np.ndarray, img_from_cam: np.ndarray, ego_from_cam: np.ndarray,
                       image_hw: tuple[int, int], padded_hw: tuple[int, int], feature_hw: tuple[int, int]) -> np.ndarray:
    """Depth targets of one frame: the nearest LiDAR return per feature cell, 0 where none.

    points_ego (P, 3) key-frame LiDAR points in the ego frame; img_from_cam (N, 3, 3) with the image
    augmentation folded in; ego_from_cam (N, 4, 4) *without* the BEV flip (a flip of the world moves
    points and cameras alike, so depths and pixels do not change). image_hw: the network input size;
    padded_hw: the size the image encoder pads it to (a multiple of 32, bottom and right);
    feature_hw: the lifted feature map (padded_hw / stride). Pixel centres are at integer
    coordinates (OpenCV). Returns (N, Hf, Wf) float32 metres along the optical axis.
    """
    H, W = image_hw
    Hp, Wp = padded_hw
    Hf, Wf = feature_hw
    N = len(img_from_cam)
    out = np.full((N, Hf * Wf), np.inf, dtype=np.float32)
    points = np.asarray(points_ego, dtype=np.float64)[:, :3]
    for n in range(N):
        cam_from_ego = np.linalg.inv(ego_from_cam[n])
        x_cam = points @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]  # (P, 3)
        depth = x_cam[:, 2]
        front = depth > 0.1
        pixels = x_cam[front] @ np.asarray(img_from_cam[n]).T  # (P', 3) homogeneous
        edge = pixels[:, :2] / pixels[:, 2:3] + 0.5  # from the image's top-left corner
        inside = (edge[:, 0] >= 0) & (edge[:, 0] < W) & (edge[:, 1] >= 0) & (edge[:, 1] < H)
        col = np.minimum((edge[inside, 0] * Wf / Wp).astype(np.int64), Wf - 1)
        row = np.minimum((edge[inside, 1] * Hf / Hp).astype(np.int64), Hf - 1)
        np.minimum.at(out[n], row * Wf + col, depth[front][inside].astype(np.float32))
    out[np.isinf(out)] = 0.0
    return out.reshape(N, Hf, Wf)
