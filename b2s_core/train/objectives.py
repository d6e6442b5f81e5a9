"""What one training step optimises: targets at the model's resolutions and the weighted losses.

Pure functions of (model outputs, batch): the loop decides which of them a strategy uses.

Resolutions: semantic targets live on the output grid (X, Y, Z); the binary decoder predicts on
a coarser grid (Xb, Yb, Zb) that divides it (``b2s_core.models.occupied_set.pool_binary_target``).
"""

from __future__ import annotations

import numpy as np
import torch

from b2s_core.models import losses
from b2s_core.models.occupied_set import pool_binary_target
from b2s_core.taxonomy import IGNORE_INDEX


def loss_targets(batch: dict[str, torch.Tensor], *, use_camera_mask: bool) -> dict[str, torch.Tensor]:
    """The targets every loss of a run sees: one mask policy for the main batch, the S+B extra
    batch and validation alike. The model's inputs (images, the offboard occupied set) always come
    from the unmasked batch: a mask limits what a loss counts, never what the model is given."""
    return apply_camera_mask(batch) if use_camera_mask else batch


def apply_camera_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mark voxels outside ``mask_camera`` as ignored in every target (Occ3D camera-visible training)."""
    if "mask_camera" not in batch:
        # The run's data were checked for mask_camera on every frame before training (loop.setup_data);
        # a batch without it would silently train on unobserved voxels.
        raise ValueError("camera-mask training on a batch without mask_camera")
    hidden = ~batch["mask_camera"]
    out = dict(batch)
    for key in ("binary", "semantics"):
        if key in out:
            out[key] = out[key].masked_fill(hidden, IGNORE_INDEX)
    if "top2_labels" in out:
        out["top2_labels"] = out["top2_labels"].masked_fill(hidden.unsqueeze(-1), IGNORE_INDEX)
    return out


def binary_loss(logits: torch.Tensor, binary: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """BCE of the binary decoder. logits (B, Xb, Yb, Zb); binary (B, X, Y, Z) uint8 on the label grid;
    pos_weight weighs the occupied voxels' terms (None: unweighted, the paper)."""
    target, valid = pool_binary_target(binary, tuple(logits.shape[1:]))
    return losses.binary_occupancy_loss(logits.float(), target, valid, pos_weight=pos_weight)


def depth_loss(depth_logits: torch.Tensor, batch: dict[str, torch.Tensor], depth_bins: np.ndarray) -> torch.Tensor:
    """Cross-entropy of the Lift-Splat depth distribution (B, N, D, Hf, Wf) on the LiDAR depth bin of
    each feature cell (``batch['depth']`` (B, N, Hf, Wf), 0 = no return: not counted)."""
    return losses.depth_loss(depth_logits.float(), batch["depth"], depth_bins)


def semantic_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor],
                  class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss of the semantic head. logits (B, K, X, Y, Z).

    Hard labels: ``batch['semantics']`` (B, X, Y, Z). Top2 soft targets: ``top2_labels`` /
    ``top2_probs`` (B, X, Y, Z, 2): the loss is the probability-weighted sum of the focal loss
    towards each of the two classes (with (1, 0) for hard-labelled frames in a mixed batch).
    class_weights (K,) or None weigh each class's terms (b2s_core.train.class_weights).
    """
    logits = logits.float()
    if "top2_labels" in batch:
        soft, valid = soft_target(batch["top2_labels"], batch["top2_probs"], logits.shape[1])
        return losses.soft_focal_loss(logits, soft, mask=valid, class_weights=class_weights)
    return losses.focal_loss(logits, batch["semantics"].long(), class_weights=class_weights)


def soft_target(labels: torch.Tensor, probs: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top2 pairs -> a distribution over classes. labels (B, X, Y, Z, 2) uint8, probs (B, X, Y, Z, 2)
    -> soft (B, K, X, Y, Z) float32 and valid (B, X, Y, Z) bool (voxels not labelled 255)."""
    labels = labels.long()
    valid = labels[..., 0] != IGNORE_INDEX
    safe = torch.where(labels == IGNORE_INDEX, torch.zeros_like(labels), labels)  # (B, X, Y, Z, 2)
    weights = probs.float() * valid.unsqueeze(-1)
    B, X, Y, Z, _ = labels.shape
    soft = torch.zeros(B, num_classes, X, Y, Z, device=labels.device)
    # scatter_add: a pair naming one class twice keeps its full probability
    soft.scatter_add_(1, safe.permute(0, 4, 1, 2, 3), weights.permute(0, 4, 1, 2, 3))
    return soft, valid
