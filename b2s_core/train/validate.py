"""Periodic validation during training: binary-decoder IoU, geometry IoU and semantic mIoU.

Confusion matrices (``b2s_core.metrics``) are accumulated over the whole validation set, as the
Occ3D protocol does, then turned into IoUs; ``b2s evaluate`` is the full evaluation tool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from b2s_core.metrics.confusion import confusion_matrix
from b2s_core.metrics.iou import binary_iou, geometry_iou, mean_iou, per_class_iou
from b2s_core.models.occupancy_model import ModelOutput
from b2s_core.models.occupied_set import pool_binary_target
from b2s_core.taxonomy import IGNORE_INDEX, Taxonomy
from b2s_core.train.objectives import loss_targets


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    *,
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], ModelOutput],
    device: torch.device,
    taxonomy: Taxonomy,
    use_camera_mask: bool,
) -> dict[str, float]:
    """Run ``forward(model, batch)`` over ``loader``; returns binary_iou, geometry_iou / miou with
    semantics, per-class IoUs and dropped_queries (voxels the sparse query cap left out)."""
    was_training = model.training
    model.eval()
    K = taxonomy.num_labels
    binary_cm = np.zeros((2, 2), dtype=np.int64)
    semantic_cm = np.zeros((K, K), dtype=np.int64)
    seen_semantics = False
    dropped = None  # occupied voxels left out by the sparse query cap (sparse models running semantics only)
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        targets = loss_targets(batch, use_camera_mask=use_camera_mask)  # scored voxels; inputs stay unmasked
        out = forward(model, batch)
        if out.num_dropped_queries is not None:
            dropped = (dropped or 0) + int(out.num_dropped_queries.sum())
        if out.binary_logits is not None:
            target, valid = pool_binary_target(targets["binary"], tuple(out.binary_logits.shape[1:]))
            binary_cm += confusion_matrix(target.long(), (out.binary_logits > 0).long(), 2, valid)
        if out.semantic_logits is not None and "semantics" in targets:
            seen_semantics = True
            pred = out.semantic_logits.argmax(1)  # (B, X, Y, Z)
            labels = targets["semantics"].long()
            semantic_cm += confusion_matrix(labels, pred, K, labels != IGNORE_INDEX)
    model.train(was_training)
    metrics: dict[str, float] = {} if dropped is None else {"dropped_queries": dropped}
    if binary_cm.sum() > 0:
        metrics["binary_iou"] = binary_iou(binary_cm)
    if seen_semantics:
        metrics["geometry_iou"] = geometry_iou(semantic_cm, taxonomy.free_index)
        miou = mean_iou(semantic_cm, taxonomy.eval_classes)
        metrics["miou"] = 0.0 if np.isnan(miou) else miou
        ious = per_class_iou(semantic_cm)
        for c in taxonomy.eval_classes:
            if not np.isnan(ious[c]):
                metrics[f"iou/{taxonomy.class_names[c]}"] = float(ious[c])
    return metrics
