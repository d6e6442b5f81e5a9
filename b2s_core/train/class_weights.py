"""Class weights of the semantic focal loss and the positive weight of the binary BCE, from how
often each class (each of occupied / free) occurs in the training labels.

The paper trains with an unweighted focal loss for 24 epochs; a short run (the CPU-sized
reproduction takes ~100x fewer steps) learns terrain and road first and the rarer classes hardly
at all. ``TrainConfig.class_balance = p`` weights class c by (mean count / count_c) ** p:
0 is the paper's unweighted loss, 0.5 the inverse square root of the frequency. Measured on the
synthetic world (LS from scratch, 150 steps): mIoU 6.1 unweighted, 13.0 with p = 0.5.

The binary decoder meets the same imbalance: inside the camera mask, occupied binary voxels are a
few percent of the free ones and mostly the ground, and in a short run an unweighted BCE learns the
ground and little that stands on it (docs/demo.md has the curves). ``TrainConfig.binary_balance = p`` makes the
BCE weigh occupied voxels by (free count / occupied count) ** p, counted on the decoder's grid
(:func:`binary_pos_weight`); 0 is the paper's unweighted BCE.

Counts come from the labels the run trains on (hard labels, or the most likely class of Top2
pseudo-labels; the binary grid of binary-only frames), inside the camera mask when training uses
it, over at most ``max_frames`` frames spread evenly over the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from b2s_core.data.dataset import open_occ_dataset
from b2s_core.data.targets import binary_from_occupancy, dense_top2
from b2s_core.models.occupied_set import pool_binary_target
from b2s_core.records import OccFrame
from b2s_core.taxonomy import IGNORE_INDEX


def count_labels(paths: Sequence[str | Path], num_classes: int, free_index: int, *, use_camera_mask: bool,
                 max_frames: int = 256) -> np.ndarray:
    """Voxels per class over (a sample of) the frames of ``paths`` -> (num_classes,) int64."""
    occ = open_occ_dataset(paths)
    try:
        indices = np.unique(np.linspace(0, len(occ) - 1, min(max_frames, len(occ))).round().astype(int))
        counts = np.zeros(num_classes, dtype=np.int64)
        for index in indices:
            frame = occ.read(int(index), fields=("occupancy", "semantics", "mask_camera", "top2"))
            labels = labels_of_frame(frame, free_index)
            if labels is None:
                continue
            if use_camera_mask and frame.mask_camera is not None:
                labels = labels[frame.mask_camera]
            counts += np.bincount(labels.ravel(), minlength=256)[:num_classes]  # 255 (ignore) drops out
        return counts
    finally:
        occ.close()


def labels_of_frame(frame: OccFrame, free_index: int) -> np.ndarray | None:
    """(X, Y, Z) uint8 hard labels of a frame: its semantics, or the first class of its Top2 pairs."""
    if frame.semantics is not None:
        return frame.semantics
    if frame.top2_labels is None or frame.top2_logits is None or frame.occupancy is None:
        return None
    # as training sees them
    labels, _ = dense_top2(frame.occupancy, frame.top2_labels, frame.top2_logits, free_index, frame.top2_support)
    return labels[..., 0]


def weights_from_counts(counts: np.ndarray, power: float) -> np.ndarray:
    """(K,) counts -> (K,) float32 weights (mean count / count_c) ** power, scaled to mean 1.

    A class that never occurs gets the weight of a class seen once: it has no voxel to weigh, and
    an infinite weight would only spoil the mean.
    """
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    weights = (counts.mean() / counts) ** power
    return (weights / weights.mean()).astype(np.float32)


def binary_pos_weight(paths: Sequence[str | Path], binary_shape: tuple[int, int, int], free_index: int, power: float, *,
                      use_camera_mask: bool, max_frames: int = 256) -> float:
    """(free / occupied) ** power over the binary targets of (a sample of) the frames of ``paths``,
    pooled to the binary decoder's grid as training pools them (1.0 when nothing is occupied)."""
    occ = open_occ_dataset(paths)
    try:
        indices = np.unique(np.linspace(0, len(occ) - 1, min(max_frames, len(occ))).round().astype(int))
        occupied = free = 0
        for index in indices:
            frame = occ.read(int(index), fields=("occupancy", "semantics", "mask_camera", "top2"))
            labels = labels_of_frame(frame, free_index)
            binary = binary_from_occupancy(frame.occupancy) if labels is None else \
                np.where(labels == IGNORE_INDEX, IGNORE_INDEX, labels != free_index).astype(np.uint8)
            if use_camera_mask and frame.mask_camera is not None:
                binary[~frame.mask_camera] = IGNORE_INDEX
            target, valid = pool_binary_target(torch.from_numpy(binary)[None], binary_shape)
            occupied += int(target[valid].sum())
            free += int(valid.sum()) - int(target[valid].sum())
        return float((free / occupied) ** power) if occupied and free else 1.0
    finally:
        occ.close()
