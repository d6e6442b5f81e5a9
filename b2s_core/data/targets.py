"""Training targets derived from a frame's grids (pure NumPy, no augmentation here).

* binary target: 0 free, 1 occupied, 255 ignore. For a semantically labelled frame it is derived
  from the semantics (the paper's B*: "binaries of the semantic set"), so that it can never
  disagree with the labels; for a binary-only frame it is the stored occupancy.
* soft semantic target (Top2 pseudo-labels): the two best classes of each occupied voxel and
  their probabilities (softmax of the two stored logits); free voxels get (free, free) with
  probabilities (1, 0). Stored densely as (X, Y, Z, 2) so that the BEV flips apply unchanged.
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
    occupancy: np.ndarray, top2_labels: np.ndarray, top2_logits: np.ndarray, free_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter Top2 pseudo-labels of the M occupied voxels (C order) into dense grids.

    Returns ``labels (X, Y, Z, 2) uint8`` and ``probs (X, Y, Z, 2) float32`` (rows sum to 1).
    """
    flat = np.flatnonzero(occupancy)  # (M,) the voxels the pseudo-labels belong to, C order
    if len(flat) != len(top2_labels) or len(flat) != len(top2_logits):
        raise ValueError(
            f"Top2 pseudo-labels cover {len(top2_labels)} voxels but the frame has {len(flat)} occupied voxels"
        )
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
