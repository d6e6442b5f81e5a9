"""Periodic validation during training: binary-decoder IoU, geometry IoU and semantic mIoU.

Confusion matrices are accumulated over the whole validation set (as the Occ3D protocol does) on
the device, then turned into IoUs; ``b2s evaluate`` is the full evaluation tool.
"""

from __future__ import annotations

from typing import Callable

import torch

from b2s_core.taxonomy import IGNORE_INDEX, Taxonomy
from b2s_core.train.objectives import apply_camera_mask, pool_binary_target


def confusion(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts [target, pred] over the voxels where ``valid``."""
    pred, target = pred[valid].long(), target[valid].long()
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """(K, K) confusion -> (K,) float64 IoU; NaN for a class absent from both target and prediction."""
    matrix = matrix.double()
    tp = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader,
    *,
    forward: Callable[[torch.nn.Module, dict], object],
    device: torch.device,
    taxonomy: Taxonomy,
    use_camera_mask: bool,
) -> dict[str, float]:
    """Run ``forward(model, batch)`` over ``loader``; returns binary_iou, and geometry_iou / miou with semantics."""
    was_training = model.training
    model.eval()
    K = taxonomy.num_labels
    binary_cm = torch.zeros(2, 2, dtype=torch.int64, device=device)
    geometry_cm = torch.zeros(2, 2, dtype=torch.int64, device=device)
    semantic_cm = torch.zeros(K, K, dtype=torch.int64, device=device)
    seen_semantics = False
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if use_camera_mask:
            batch = apply_camera_mask(batch)
        out = forward(model, batch)
        if out.binary_logits is not None:
            target, valid = pool_binary_target(batch["binary"], tuple(out.binary_logits.shape[1:]))
            binary_cm += confusion((out.binary_logits > 0).long(), target.long(), valid, 2)
        if out.semantic_logits is not None and "semantics" in batch:
            seen_semantics = True
            pred = out.semantic_logits.argmax(1)  # (B, X, Y, Z)
            labels = batch["semantics"].long()
            valid = labels != IGNORE_INDEX
            semantic_cm += confusion(pred, labels, valid, K)
            geometry_cm += confusion((pred != taxonomy.free_index).long(), (labels != taxonomy.free_index).long(), valid, 2)
    model.train(was_training)
    metrics: dict[str, float] = {}
    if binary_cm.sum() > 0:
        metrics["binary_iou"] = float(iou_per_class(binary_cm)[1]) * 100
    if seen_semantics:
        metrics["geometry_iou"] = float(iou_per_class(geometry_cm)[1]) * 100
        ious = iou_per_class(semantic_cm)
        scored = ious[list(taxonomy.eval_classes)]
        metrics["miou"] = float(torch.nanmean(scored)) * 100 if bool((~scored.isnan()).any()) else 0.0
        for c in taxonomy.eval_classes:
            if not torch.isnan(ious[c]):
                metrics[f"iou/{taxonomy.class_names[c]}"] = float(ious[c]) * 100
    return metrics
