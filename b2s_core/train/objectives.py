"""What one training step optimises: targets at the model's resolutions and the weighted losses.

Pure functions of (model outputs, batch): the loop decides which of them a strategy uses.

Resolutions: semantic targets live on the output grid (X, Y, Z); the binary decoder predicts on
a coarser grid (Xb, Yb, Zb) that divides it (e.g. 100 x 100 x 16 for 200 x 200 x 16). A coarse
voxel is occupied when any of its fine voxels is, and ignored only when all of them are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from b2s_core.taxonomy import IGNORE_INDEX


def pool_binary_target(binary: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, X, Y, Z) uint8 (0 / 1 / 255) -> target (B, Xb, Yb, Zb) float 0/1 and valid (B, Xb, Yb, Zb) bool."""
    B, X, Y, Z = binary.shape
    Xb, Yb, Zb = shape
    if (X, Y, Z) == (Xb, Yb, Zb):
        valid = binary != IGNORE_INDEX
        return (binary == 1).float(), valid
    if X % Xb or Y % Yb or Z % Zb:
        raise ValueError(f"binary decoder grid {shape} does not divide the label grid {(X, Y, Z)}")
    kernel = (X // Xb, Y // Yb, Z // Zb)
    occupied = F.max_pool3d((binary == 1).float().unsqueeze(1), kernel)  # (B, 1, Xb, Yb, Zb)
    known = F.max_pool3d((binary != IGNORE_INDEX).float().unsqueeze(1), kernel)
    return occupied.squeeze(1), known.squeeze(1) > 0


def apply_camera_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mark voxels outside ``mask_camera`` as ignored in every target (Occ3D camera-visible training)."""
    if "mask_camera" not in batch:
        return batch
    hidden = ~batch["mask_camera"]
    out = dict(batch)
    for key in ("binary", "semantics"):
        if key in out:
            out[key] = out[key].masked_fill(hidden, IGNORE_INDEX)
    if "top2_labels" in out:
        out["top2_labels"] = out["top2_labels"].masked_fill(hidden.unsqueeze(-1), IGNORE_INDEX)
    return out


def binary_loss(logits: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """BCE of the binary decoder. logits (B, Xb, Yb, Zb); binary (B, X, Y, Z) uint8 on the label grid."""
    from b2s_core.models import losses

    target, valid = pool_binary_target(binary, tuple(logits.shape[1:]))
    return losses.binary_occupancy_loss(logits.float(), target, valid)


def semantic_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss of the semantic head. logits (B, K, X, Y, Z).

    Hard labels: ``batch['semantics']`` (B, X, Y, Z). Top2 soft targets: ``top2_labels`` /
    ``top2_probs`` (B, X, Y, Z, 2): the loss is the probability-weighted sum of the focal loss
    towards each of the two classes (with (1, 0) for hard-labelled frames in a mixed batch).
    class_weights (K,) or None weigh each class's terms (b2s_core.train.class_weights).
    """
    from b2s_core.models import losses

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
