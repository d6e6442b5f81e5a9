"""ResNet-18/34/50/101 image backbone with torchvision-compatible parameter names.

The module tree (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) matches
torchvision's ResNet, and mmdetection's, so :func:`load_backbone_weights` loads an ImageNet
checkpoint saved from torchvision (its classifier ``fc.*`` is skipped) and the backbone of a
detector or occupancy checkpoint (``backbone.*`` / ``img_backbone.*`` keys; neck and heads are
skipped), as BEVDet / SparseOcc users start from nuImages or FCOS3D weights. Nothing is ever
downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from b2s_core.errors import B2SError
from b2s_core.torch_files import UnreadableTorchFile, load_weights_only

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
    """Returns the feature maps of the four stages, keyed by stride: {4: C2, 8: C3, 16: C4, 32: C5}.

    Training policy (the ``frozen_stages`` / ``norm_eval`` of mmdetection's ResNet, which BEVDet and
    SparseOcc configs set when they start from pre-trained weights): ``frozen_stages`` = -1 trains
    everything, 0 freezes the stem (conv1, bn1), n >= 1 the stem and stages 1..n (no gradient, and
    their BatchNorms stay in eval mode); ``norm_eval`` keeps every BatchNorm of the backbone in eval
    mode (running statistics frozen) even while training.
    """

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth not in _LAYOUTS:
            raise ValueError(f"ResNet depth {depth} not in {sorted(_LAYOUTS)}")
        kind, counts = _LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.frozen_stages = -1
        self.norm_eval = False
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

    def frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def set_training_policy(self, *, frozen_stages: int = -1, norm_eval: bool = False) -> None:
        """Freeze the stem and the first ``frozen_stages`` stages; see the class docstring."""
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must lie in -1..4, got {frozen_stages}")
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        for module in self.frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        module.eval()
        return self

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """(B, 3, H, W) -> {stride: (B, C_s, H / stride, W / stride)} for strides 4, 8, 16, 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {4: c2, 8: c3, 16: c4, 32: c5}


# Prefixes under which detectors and occupancy models keep their image backbone: mmdetection's
# detectors ('backbone.'), BEVDet / SparseOcc / FB-OCC and the rest of mmdetection3d ('img_backbone.').
# Their other keys (neck, heads) are not the backbone's and are left out.
BACKBONE_PREFIXES = ("img_backbone.", "backbone.")


@dataclass
class BackboneWeightsReport:
    """What :func:`load_backbone_weights` did."""

    loaded: int  # tensors copied into the backbone
    prefix: str  # the key prefix the backbone was found under ('' for a torchvision-layout file)
    skipped: list[str]  # keys of the file that are not the backbone's (classifier, neck, heads)
    filled: list[str]  # num_batches_tracked buffers the file lacks (kept at their initial value)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file not found")
    try:
        state = load_weights_only(path)
    except UnreadableTorchFile as err:
        raise BackboneWeightsError(f"{path}: not a readable torch checkpoint ({err})") from None
    # Common wrappers: {'state_dict': ...} (mmcv / mmdetection) or {'model': ...} (detectron2, DeiT-style).
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: expected a state dict of tensors")
    # DDP-saved files prefix every key with 'module.'.
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def backbone_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str, list[str]]:
    """The backbone's tensors of a state dict -> (tensors in torchvision names, prefix, keys left out).

    A file with keys under one of :data:`BACKBONE_PREFIXES` is a detector / occupancy-model
    checkpoint: only those keys are taken, prefix removed. Otherwise it is a torchvision-layout
    classifier, whose ``fc.*`` head is left out.
    """
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            taken = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return taken, prefix, sorted(k for k in state if not k.startswith(prefix))
    return ({k: v for k, v in state.items() if not k.startswith("fc.")}, "",
            sorted(k for k in state if k.startswith("fc.")))


def load_backbone_weights(backbone: ResNet, path: str | Path) -> BackboneWeightsReport:
    """Load ImageNet (torchvision layout) or detector backbone weights into ``backbone``.

    Every backbone parameter and running statistic must be present with the right shape (a file
    that predates ``num_batches_tracked`` may lack those counters), and nothing may be left over
    under the backbone's prefix; otherwise :class:`BackboneWeightsError` names what differs.
    """
    path = Path(path)
    state, prefix, skipped = backbone_state(_read_state_dict(path))
    own = backbone.state_dict()
    filled = sorted(k for k in set(own) - set(state) if k.endswith("num_batches_tracked"))
    state.update({k: own[k] for k in filled})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(prefix + k for k in missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(prefix + k for k in unexpected[:3])})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} with another shape "
                         f"(e.g. {prefix}{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise BackboneWeightsError(
            f"{path}: does not match a ResNet-{backbone.depth} backbone: {'; '.join(parts)}"
        )
    backbone.load_state_dict(state, strict=True)
    return BackboneWeightsReport(loaded=len(state) - len(filled), prefix=prefix, skipped=skipped, filled=filled)
