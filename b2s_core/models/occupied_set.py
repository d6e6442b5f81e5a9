"""Binary grids between the label resolution and the binary decoder's coarser one.

The binary decoder and the sparse queries live on the binary grid (Xb, Yb, Zb), which divides the
label grid (X, Y, Z) (e.g. 100 x 100 x 16 for 200 x 200 x 16). Three conversions, used by training
and inference alike so that the two can never disagree:

* :func:`pool_binary_target`: the BCE target of the binary decoder (a coarse voxel is occupied when
  any of its fine voxels is, and ignored only when all of them are);
* :func:`given_occupancy`: the offboard model's input, the occupied set taken from a GT binary grid;
* :func:`upsample_occupancy`: a coarse set back on the label grid (each coarse voxel paints its block).
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


def given_occupancy(binary: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """The offboard model's occupied set: (B, X, Y, Z) uint8 GT binary -> (B, Xb, Yb, Zb) bool.

    Always the *whole* GT binary grid: a camera mask limits what a loss counts, never what the
    model is given (training, validation, prediction and autolabel all call this on unmasked grids).
    """
    occupied, _ = pool_binary_target(binary, shape)
    return occupied > 0


def upsample_occupancy(occupied: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """(B, Xb, Yb, Zb) bool -> (B, Xb * sx, Yb * sy, Zb * sz) bool: each coarse voxel repeated over its block."""
    sx, sy, sz = scale
    return occupied.repeat_interleave(sx, 1).repeat_interleave(sy, 2).repeat_interleave(sz, 3)


# Logits an offboard model outputs where the given occupancy says "free": free certain, every
# other class 100 nats below it (finite, so that a loss or an average of views stays finite).
CERTAIN_MARGIN = 100.0


def free_outside(semantic_logits: torch.Tensor, occupied: torch.Tensor, free_index: int) -> torch.Tensor:
    """Offboard output rule: outside the given occupied set the prediction is free.

    semantic_logits (B, K, X, Y, Z); occupied (B, Xb, Yb, Zb) bool on a grid that divides (X, Y, Z).
    Inside the set the model's own logits stay, free included: the given set is coarser than the
    output, so the model still decides which fine voxels of an occupied coarse voxel are free.
    Returns (B, K, X, Y, Z); no gradient flows to the replaced voxels.
    """
    B, K, X, Y, Z = semantic_logits.shape
    Xb, Yb, Zb = occupied.shape[1:]
    if X % Xb or Y % Yb or Z % Zb:
        raise ValueError(f"occupied set {(Xb, Yb, Zb)} does not divide the output grid {(X, Y, Z)}")
    inside = upsample_occupancy(occupied, (X // Xb, Y // Yb, Z // Zb))[:, None]  # (B, 1, X, Y, Z)
    certain_free = torch.full((K,), -CERTAIN_MARGIN, dtype=semantic_logits.dtype, device=semantic_logits.device)
    certain_free[free_index] = 0.0
    return torch.where(inside, semantic_logits, certain_free.view(1, K, 1, 1, 1))
