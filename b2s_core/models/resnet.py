"""ResNet-18/34/50/101 image backbone with torchvision-compatible parameter names.

The module tree (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) matches
torchvision's ResNet, so an ImageNet checkpoint saved from torchvision loads with
:func:`load_backbone_weights` (its classifier ``fc.*`` is not part of a backbone and is skipped).
Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from b2s_core.errors import B2SError

# depth -> (block kind, blocks per stage)
_LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
            101: ("bottleneck", (3, 4, 23, 3))}


class BackboneWeightsError(B2SError):
    """A backbone checkpoint that cannot be read or does not match the backbone."""


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution, as in torchvision."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Returns the feature maps of the four stages, keyed by stride: {4: C2, 8: C3, 16: C4, 32: C5}."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth not in _LAYOUTS:
            raise ValueError(f"ResNet depth {depth} not in {sorted(_LAYOUTS)}")
        kind, counts = _LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for stage, (count, width) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
            stride = 1 if stage == 1 else 2
            layers = []
            for i in range(count):
                downsample = None
                if i == 0 and (stride != 1 or in_ch != width * block.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(in_ch, width * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(width * block.expansion),
                    )
                layers.append(block(in_ch, width, stride if i == 0 else 1, downsample))
                in_ch = width * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.out_channels = {4: 64 * block.expansion, 8: 128 * block.expansion, 16: 256 * block.expansion,
                             32: 512 * block.expansion}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """(B, 3, H, W) -> {stride: (B, C_s, H / stride, W / stride)} for strides 4, 8, 16, 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {4: c2, 8: c3, 16: c4, 32: c5}


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise BackboneWeightsError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    # Common wrappers: {'state_dict': ...} (mmcv/detectron-style) or {'model': ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: expected a state dict of tensors")
    # Prefixes added by DDP ('module.') or by detectors that wrap the backbone ('backbone.').
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_backbone_weights(backbone: ResNet, path: str | Path) -> list[str]:
    """Load a torchvision-layout ResNet checkpoint into ``backbone``; returns the keys skipped (fc.*).

    Every backbone parameter and buffer must be present with the right shape, and nothing but the
    classifier may be left over; otherwise :class:`BackboneWeightsError` names what differs.
    """
    path = Path(path)
    state = _read_state_dict(path)
    skipped = sorted(k for k in state if k.startswith("fc."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} with another shape "
                         f"(e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise BackboneWeightsError(
            f"{path}: does not match a ResNet-{backbone.depth} backbone: {'; '.join(parts)}"
        )
    backbone.load_state_dict(state, strict=True)
    return skipped
