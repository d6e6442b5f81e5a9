"""Losses: BCE for binary occupancy, focal loss for semantics (hard and soft Top2 targets), depth loss.

Every loss returns a scalar that stays in the autograd graph even when no voxel counts (then it is
0 * logits.sum()), so a batch without valid targets never breaks DDP or the optimiser step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from b2s_core.taxonomy import IGNORE_INDEX


def _zero_like_graph(logits: Tensor) -> Tensor:
    return logits.sum() * 0.0


def _masked_mean(per_voxel: Tensor, mask: Tensor | None, logits: Tensor) -> Tensor:
    """Mean over the voxels where ``mask`` is set (all when None); an empty mask gives a graph-connected zero."""
    if mask is None:
        return per_voxel.mean()
    mask = mask.bool()
    if not mask.any():
        return _zero_like_graph(logits)
    return per_voxel[mask].mean()


def binary_occupancy_loss(logits: Tensor, target: Tensor, mask: Tensor | None = None,
                          pos_weight: float | None = None) -> Tensor:
    """BCE with logits, averaged over the voxels in ``mask`` (e.g. the observed ones) or all.

    logits (B, X, Y, Z); target (B, X, Y, Z) bool/float occupied; mask (B, X, Y, Z) bool or None.
    """
    weight = None if pos_weight is None else logits.new_tensor(pos_weight)
    per_voxel = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight, reduction="none")
    return _masked_mean(per_voxel, mask, logits)


def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 2.0, class_weights: Tensor | None = None,
               ignore_index: int = IGNORE_INDEX, mask: Tensor | None = None) -> Tensor:
    """Multi-class focal loss  -w_t (1 - p_t)^gamma log p_t, averaged with the class weights as
    ``F.cross_entropy`` does (sum / sum of weights), so gamma = 0 gives exactly the weighted CE.

    logits (B, K, ...); target (B, ...) long labels; voxels labelled ``ignore_index`` or outside
    ``mask`` (B, ...) do not count.
    """
    valid = target != ignore_index
    if mask is not None:
        valid = valid & mask.bool()
    if not valid.any():
        return _zero_like_graph(logits)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_t = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (B, ...)
    loss = -((1.0 - log_p_t.exp()).clamp(min=0) ** gamma) * log_p_t
    weight = valid.to(loss.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(loss)[safe_target]
    return (loss * weight).sum() / weight.sum().clamp(min=torch.finfo(loss.dtype).tiny)


def soft_focal_loss(logits: Tensor, soft_target: Tensor, *, gamma: float = 2.0, mask: Tensor | None = None,
                    class_weights: Tensor | None = None) -> Tensor:
    """Focal loss against a distribution over classes:  -sum_k t_k (1 - p_k)^gamma log p_k  per voxel,
    averaged over the voxels (in ``mask``). gamma = 0 is the soft cross-entropy.

    With ``class_weights`` (K,) each term is weighted by w_k and the sum is divided by sum t_k w_k
    over the voxels, so a one-hot target gives exactly :func:`focal_loss` with the same weights.

    logits (B, K, ...); soft_target (B, K, ...) rows summing to 1; mask (B, ...) bool or None.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    target = soft_target.to(log_p)
    if class_weights is not None:
        shape = (1, -1) + (1,) * (logits.dim() - 2)
        target = target * class_weights.to(log_p).view(shape)
    per_voxel = -(target * (1.0 - log_p.exp()).clamp(min=0) ** gamma * log_p).sum(1)  # (B, ...)
    if class_weights is None:
        return _masked_mean(per_voxel, mask, logits)
    keep = torch.ones_like(per_voxel) if mask is None else mask.to(log_p)  # (B, ...)
    weight = (target.sum(1) * keep).sum()
    if not bool(weight > 0):
        return _zero_like_graph(logits)
    return (per_voxel * keep).sum() / weight


def depth_loss(depth_logits: Tensor, depth_target: Tensor, depth_bins: Tensor | np.ndarray) -> Tensor:
    """Cross-entropy of the Lift-Splat depth distribution against projected LiDAR depth.

    depth_logits (B, N, D, Hf, Wf); depth_target (B, N, Hf, Wf) metres, 0 where no LiDAR return
    (see ``lift_splat.project_lidar_depth``); depth_bins (D,) bin centres, evenly spaced. Pixels whose
    depth falls outside the bins do not count.
    """
    bins = torch.as_tensor(np.asarray(depth_bins), dtype=torch.float32, device=depth_logits.device)
    step = float(bins[1] - bins[0]) if len(bins) > 1 else 1.0
    index = torch.round((depth_target.float() - bins[0]) / step).long()  # (B, N, Hf, Wf)
    valid = (depth_target > 0) & (index >= 0) & (index < len(bins))
    if not valid.any():
        return _zero_like_graph(depth_logits)
    logits = depth_logits.permute(0, 1, 3, 4, 2)[valid]  # (P, D)
    return F.cross_entropy(logits.float(), index[valid])
