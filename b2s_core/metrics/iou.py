"""IoU figures from a confusion matrix (rows ground truth, columns prediction), in percent."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """(K, K) -> (K,) float64 IoU in percent: diag / (row + col - diag); NaN where a class
    occurs neither in the ground truth nor in the prediction (it does not enter the mean)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=1) + cm.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, 100.0 * tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray, classes: Sequence[int]) -> float:
    """Mean of :func:`per_class_iou` over ``classes`` (e.g. the taxonomy's eval classes: free is
    not averaged, but free voxels predicted as a class still count as that class's false
    positives). Classes absent from both sides are skipped; NaN when all are absent."""
    ious = per_class_iou(cm)[list(classes)]
    if np.all(np.isnan(ious)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(ious))


def geometry_iou(cm: np.ndarray, free_index: int) -> float:
    """Occupied-vs-free IoU in percent (Occ3D 'IoU', OpenOccupancy 'SC IoU'): occupied = any label but free."""
    cm = np.asarray(cm, dtype=np.float64)
    occupied = np.ones(cm.shape[0], dtype=bool)
    occupied[free_index] = False
    tp = cm[np.ix_(occupied, occupied)].sum()
    fp = cm[free_index, occupied].sum()
    fn = cm[occupied, free_index].sum()
    return float(100.0 * tp / (tp + fp + fn)) if tp + fp + fn > 0 else float("nan")


def binary_iou(cm2: np.ndarray) -> float:
    """IoU in percent of the 'occupied' class (1) of a (2, 2) free/occupied confusion matrix."""
    return geometry_iou(cm2, free_index=0)
