"""Confusion matrices of voxel labels: one fast vectorised kernel and its slow reference.

Rows are ground truth, columns prediction: ``cm[g, p]`` counts the scored voxels with ground
truth ``g`` predicted as ``p``. Scored voxels: those where ``valid`` holds (all when None) and
whose ground truth is not ``ignore_index``. Both kernels take any shape (one frame ``(X, Y, Z)``
or a batch ``(B, X, Y, Z)``); the fast one takes NumPy arrays or torch tensors (CPU or CUDA).
"""

from __future__ import annotations

import numpy as np
import torch

from b2s_core.errors import B2SError


class MetricsError(B2SError, ValueError):
    """Inputs a metric cannot score (shapes that disagree, labels outside the taxonomy)."""


def _check_shapes(gt, pred, valid) -> None:
    if tuple(gt.shape) != tuple(pred.shape) or (valid is not None and tuple(valid.shape) != tuple(gt.shape)):
        shapes = f"gt {tuple(gt.shape)}, prediction {tuple(pred.shape)}"
        shapes += f", mask {tuple(valid.shape)}" if valid is not None else ""
        raise MetricsError(f"grids to compare have different shapes: {shapes}")


def confusion_matrix(gt, pred, num_labels: int, valid=None, ignore_index: int | None = None) -> np.ndarray:
    """(K, K) int64 confusion matrix of the scored voxels (see the module docstring).

    gt, pred: integer labels 0..255 of one shape (uint8 as stored); valid: bool of that shape.
    One pass: the scored voxels are gathered once, each (gt, pred) pair packed into one uint16
    code ``gt * K + pred``, and a single bincount counts every pair at once (a per-class loop
    reads the grids 3 K times). Ignored ground truth lands in codes past ``K * K`` and is dropped
    there, which saves a pass over the grid to find it; any other ground-truth label >= K is an error.
    """
    K = int(num_labels)
    if not 1 <= K <= 255 or (ignore_index is not None and ignore_index < K):
        raise MetricsError(f"{K} labels with ignore index {ignore_index}: need K <= 255 and the ignore index outside 0..K-1")
    _check_shapes(gt, pred, valid)
    if isinstance(gt, torch.Tensor):
        counts = _pair_counts_torch(gt, torch.as_tensor(pred, device=gt.device), K, valid)
    else:
        counts = _pair_counts_numpy(np.asarray(gt), np.asarray(pred), K, valid)
    counts = counts.astype(np.int64)
    beyond = counts[K * K:].copy()  # ground truth >= K
    if ignore_index is not None:
        beyond[(ignore_index - K) * K:(ignore_index - K + 1) * K] = 0
    if beyond.any():
        label = K + int(np.flatnonzero(beyond)[0]) // K
        raise MetricsError(f"ground-truth label {label} is outside the taxonomy's 0..{K - 1}")
    return counts[:K * K].reshape(K, K)


def _as_labels(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if values.size and (values.min() < 0 or values.max() > 255):
        raise MetricsError(f"{name} labels must lie in 0..255")
    return values.astype(np.uint8)


def _pair_counts_numpy(gt: np.ndarray, pred: np.ndarray, K: int, valid) -> np.ndarray:
    """(>= K*K,) counts of the codes gt * K + pred over the voxels where valid holds."""
    if valid is not None:
        where = np.flatnonzero(np.asarray(valid, dtype=bool))  # (V,) scored voxels, C order
        gt, pred = gt.reshape(-1).take(where), pred.reshape(-1).take(where)
    else:
        gt, pred = gt.reshape(-1), pred.reshape(-1)
    gt, pred = _as_labels(gt, "ground-truth"), _as_labels(pred, "predicted")
    if pred.size and pred.max() >= K:
        raise MetricsError(f"predicted label {int(pred.max())} is outside the taxonomy's 0..{K - 1}")
    code = np.multiply(gt, K, dtype=np.uint16)  # (V,) uint16: 255 * K + 254 < 65536 for K <= 255
    code += pred
    return np.bincount(code, minlength=K * K)


def _pair_counts_torch(gt: torch.Tensor, pred: torch.Tensor, K: int, valid) -> np.ndarray:
    if valid is not None:
        valid = torch.as_tensor(valid, device=gt.device, dtype=torch.bool)
        gt, pred = gt[valid], pred[valid]
    gt, pred = gt.reshape(-1).long(), pred.reshape(-1).long()
    if gt.numel():
        if int(gt.min()) < 0 or int(pred.min()) < 0 or int(gt.max()) > 255:
            raise MetricsError("labels must lie in 0..255")
        if int(pred.max()) >= K:
            raise MetricsError(f"predicted label {int(pred.max())} is outside the taxonomy's 0..{K - 1}")
    return torch.bincount(gt * K + pred, minlength=K * K).cpu().numpy()


def confusion_matrix_reference(gt, pred, num_labels: int, valid=None, ignore_index: int | None = None) -> np.ndarray:
    """Slow, obvious reference of :func:`confusion_matrix`: one boolean count per (gt, pred) pair."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    scored = np.ones(gt.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if ignore_index is not None:
        scored = scored & (gt != ignore_index)
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    for g in range(num_labels):
        for p in range(num_labels):
            cm[g, p] = np.count_nonzero((gt == g) & (pred == p) & scored)
    return cm
