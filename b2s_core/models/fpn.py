"""Feature pyramid neck and the image encoder (ResNet + FPN) shared by every variant."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from b2s_core.models.resnet import ResNet


class FPN(nn.Module):
    """Top-down feature pyramid: lateral 1x1 convolutions, nearest upsampling, 3x3 output convolutions.

    Uses the backbone stages from the finest requested stride up to stride 32, so that even a single
    stride-16 output mixes in C5 (as the LS image encoders of BEVDet do).
    """

    def __init__(self, *, in_channels: dict[int, int], out_dim: int, out_strides: tuple[int, ...]) -> None:
        super().__init__()
        self.out_strides = tuple(sorted(out_strides))
        self.used_strides = tuple(s for s in sorted(in_channels) if s >= self.out_strides[0])
        self.lateral = nn.ModuleDict({str(s): nn.Conv2d(in_channels[s], out_dim, 1) for s in self.used_strides})
        self.output = nn.ModuleDict({str(s): nn.Conv2d(out_dim, out_dim, 3, padding=1) for s in self.out_strides})

    def forward(self, feats: dict[int, Tensor]) -> list[Tensor]:
        """{stride: (B, C_s, H_s, W_s)} -> list over out_strides (ascending) of (B, out_dim, H_s, W_s)."""
        merged: dict[int, Tensor] = {}
        top = None
        for s in reversed(self.used_strides):  # coarse to fine
            lateral = self.lateral[str(s)](feats[s])
            top = lateral if top is None else lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            merged[s] = top
        return [self.output[str(s)](merged[s]) for s in self.out_strides]


class ImageEncoder(nn.Module):
    """Multi-view images -> multi-scale features; images are zero-padded to a multiple of 32 so that
    a feature cell of stride s covers exactly the pixels [s * j, s * (j + 1)) of the padded image."""

    def __init__(self, *, backbone: ResNet, neck: FPN) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    @staticmethod
    def padded_size(image_hw: tuple[int, int]) -> tuple[int, int]:
        H, W = image_hw
        return (-(-H // 32) * 32, -(-W // 32) * 32)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, N, 3, H, W) -> list over strides of (B, N, C, Hp / s, Wp / s), (Hp, Wp) = padded size."""
        B, N, _, H, W = images.shape
        Hp, Wp = self.padded_size((H, W))
        x = images.reshape(B * N, 3, H, W)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, Wp - W, 0, Hp - H))  # pad right and bottom: pixel coordinates do not move
        levels = self.neck(self.backbone(x))
        return [f.reshape(B, N, *f.shape[1:]) for f in levels]
