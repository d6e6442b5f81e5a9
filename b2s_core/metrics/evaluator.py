"""Accumulate a whole split's scores batch by batch; the result is a plain, JSON-ready record.

``OccupancyEvaluator`` holds one confusion matrix of the semantic prediction, one 2 x 2 matrix of
the binary decoder, and the RayIoU ray counts. It takes arrays, never files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from b2s_core.grids import VoxelGrid
from b2s_core.metrics.confusion import MetricsError, confusion_matrix
from b2s_core.metrics.iou import binary_iou, geometry_iou, mean_iou, per_class_iou
from b2s_core.metrics.protocols import Protocol
from b2s_core.metrics.rayiou import RAYIOU_THRESHOLDS, RayIoUAccumulator, lidar_ray_directions


@dataclass
class EvaluationResult:
    """Scores of one split, in percent. NaN (``None`` in JSON) marks classes that never occur."""

    protocol: str
    mask: str
    frames: int
    class_names: list[str]  # the averaged (eval) classes, in label order
    class_labels: list[int]
    iou: list[float]  # per eval class
    miou: float
    geometry_iou: float  # occupied vs free ('IoU' in Occ3D tables, 'SC IoU' in OpenOccupancy)
    binary_iou: float | None = None  # the binary decoder's output vs ground-truth occupancy
    rayiou: float | None = None  # mean over classes and thresholds
    rayiou_at: dict[str, float] = field(default_factory=dict)  # threshold (m) -> mean over classes
    rayiou_per_class: dict[str, list[float]] = field(default_factory=dict)  # threshold -> per eval class
    rays: int = 0  # rays scored by RayIoU
    confusion: list[list[int]] = field(default_factory=list)  # (K, K) over all labels, rows = ground truth
    extra: dict = field(default_factory=dict)  # where the numbers come from (files, command, timing)

    def to_dict(self) -> dict:
        return _json_ready(asdict(self))


def _json_ready(value):
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


class OccupancyEvaluator:
    """Scores of one protocol accumulated over batches of frames."""

    def __init__(self, protocol: Protocol, *, grid: VoxelGrid | None = None, rayiou: bool = False,
                 ray_directions: np.ndarray | None = None, device: str | torch.device | None = None):
        self.protocol = protocol
        taxonomy = protocol.taxonomy
        self.num_labels = taxonomy.num_labels
        self.confusion = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)
        self.binary_confusion: np.ndarray | None = None
        self.frames = 0
        self.grid = grid
        self.device = device
        self.rays: RayIoUAccumulator | None = None
        if rayiou:
            if grid is None:
                raise MetricsError("RayIoU needs the voxel grid")
            self.rays = RayIoUAccumulator(self.num_labels, taxonomy.eval_classes, taxonomy.free_index, RAYIOU_THRESHOLDS)
            self.ray_directions = lidar_ray_directions() if ray_directions is None else ray_directions

    def add_batch(self, gt, pred, *, mask_camera=None, mask_lidar=None, binary_pred=None, origins=None) -> None:
        """One batch of frames.

        gt, pred: (B, X, Y, Z) uint8 labels; masks: (B, X, Y, Z) bool or None; binary_pred:
        (B, X, Y, Z) bool binary-decoder output or None; origins: B arrays (O, 3) of ray origins
        (needed when RayIoU is on).
        """
        gt, pred = np.asarray(gt), np.asarray(pred)
        mask = self.protocol.mask_of(mask_camera, mask_lidar)  # (B, X, Y, Z) bool or None: all voxels
        ignore = self.protocol.ignore_index
        self.confusion += confusion_matrix(gt, pred, self.num_labels, mask, ignore_index=ignore)
        if binary_pred is not None:
            gt_occupied = (gt != self.protocol.taxonomy.free_index).view(np.uint8)  # (B, X, Y, Z) 0 / 1
            if gt.max(initial=0) == ignore:
                gt_occupied = np.where(gt == ignore, np.uint8(ignore), gt_occupied)
            cm2 = confusion_matrix(gt_occupied, np.asarray(binary_pred, dtype=bool).view(np.uint8), 2, mask, ignore_index=ignore)
            self.binary_confusion = cm2 if self.binary_confusion is None else self.binary_confusion + cm2
        if self.rays is not None:
            if origins is None or len(origins) != len(gt):
                raise MetricsError("RayIoU needs one array of ray origins per frame")
            for b in range(len(gt)):
                self.rays.add_frame(gt[b], pred[b], origins[b], self.grid, self.ray_directions, self.device)
        self.frames += len(gt)

    def result(self) -> EvaluationResult:
        taxonomy = self.protocol.taxonomy
        classes = list(taxonomy.eval_classes)
        ious = per_class_iou(self.confusion)
        out = EvaluationResult(
            protocol=self.protocol.name,
            mask=self.protocol.mask,
            frames=self.frames,
            class_names=[taxonomy.class_names[c] for c in classes],
            class_labels=classes,
            iou=[float(ious[c]) for c in classes],
            miou=mean_iou(self.confusion, classes),
            geometry_iou=geometry_iou(self.confusion, taxonomy.free_index),
            confusion=self.confusion.tolist(),
        )
        if self.binary_confusion is not None:
            out.binary_iou = binary_iou(self.binary_confusion)
        if self.rays is not None:
            rays = self.rays.result()
            out.rayiou = rays["mean"]
            out.rayiou_at = {_metres(t): v for t, v in rays["at"].items()}
            out.rayiou_per_class = {_metres(t): [float(row[c]) for c in classes] for t, row in rays["per_class"].items()}
            out.rays = self.rays.rays
        return out


def _metres(threshold: float) -> str:
    return f"{threshold:g}"
