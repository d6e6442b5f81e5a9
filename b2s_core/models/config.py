"""Typed model configuration and the named presets (``paper``, ``small``, ``tiny``).

A preset changes sizes only: every preset builds the same modules in the same order. Volume
shapes are never stored; they are derived from the output grid and the per-axis strides:

    output grid   (X, Y, Z)                    e.g. occ3d 200 x 200 x 16
    binary grid   (X, Y, Z) / binary_stride    e.g. 100 x 100 x 16  (binary decoder, sparse queries)
    compact grid  (X, Y, Z) / compact_stride   e.g.  50 x  50 x 16  (image-to-3D, dense layers)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import GRID_PRESETS, GridError, VoxelGrid, get_grid

VARIANTS = ("sparse-ls", "sparse-bevformer", "ls", "bevformer")
ARRANGEMENTS = ("intermediate", "multi-head", "replace-head")
PRESETS = ("paper", "small", "tiny")
BACKBONE_DEPTHS = (18, 34, 50, 101)
FEATURE_STRIDES = (4, 8, 16, 32)


class ModelConfigError(B2SError, ValueError):
    """A model configuration that cannot be built (unknown variant, shapes that do not divide...)."""


def arrangement_problem(variant: str, arrangement: str, *, offboard: bool) -> str | None:
    """Why ``variant`` cannot have its heads arranged so (or be an offboard model); None when it can.

    The one rule of which variant takes which arrangement: ModelConfig checks it, and the training
    strategies (whose names are the arrangements) check it before a run starts.
    """
    sparse = variant.startswith("sparse-")
    if offboard and not sparse:
        return (f"offboard mode feeds a given occupied set to the sparse transformer: use a sparse variant "
                f"(sparse-ls, sparse-bevformer), not '{variant}'")
    if arrangement not in ARRANGEMENTS:
        return f"unknown arrangement '{arrangement}': use one of {', '.join(ARRANGEMENTS)}"
    if arrangement == "intermediate" and not sparse:
        return (f"'intermediate' places the binary head mid-way, which only the sparse variants have; "
                f"'{variant}' is a dense baseline: use 'multi-head' or 'replace-head'")
    if arrangement != "intermediate" and sparse:
        return (f"'{arrangement}' is a baseline of the dense models (ls, bevformer); '{variant}' places its binary "
                "decoder mid-way: use 'intermediate'")
    return None


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved in every checkpoint (``to_dict``)."""

    variant: str  # 'sparse-ls' | 'sparse-bevformer' (proposed) | 'ls' | 'bevformer' (dense baselines)
    # Where the heads sit: 'intermediate' (proposed: binary decoder mid-way, then the sparse
    # transformer and the semantic head) is the only arrangement of the sparse variants; the dense
    # baselines use 'multi-head' (binary + semantic heads side by side) or 'replace-head'.
    arrangement: str = "intermediate"
    offboard: bool = False  # auto-labelling: the sparse queries come from a given GT binary grid
    preset: str = "custom"  # the preset this config was made from (informational)
    # The output grid, stored whole; model_config and from_dict also read a preset name or a custom
    # spec (b2s_core.grids.get_grid), as the checkpoints written before held.
    grid: VoxelGrid = GRID_PRESETS["occ3d"]
    num_classes: int = 18  # semantic labels, free included
    free_index: int = 17
    image_size: tuple[int, int] = (256, 704)  # (H, W) network input, after augmentation
    backbone_depth: int = 50
    # FPN output strides attended by the deformable cross-attention; Lift-Splat lifts the first one.
    feature_strides: tuple[int, ...] = (16,)
    embed_dim: int = 256  # C: compact volume, transformers and the binary-resolution volume B'
    num_heads: int = 8
    self_attn_points: int = 4  # sampling points per head of the 3D deformable (self) attention
    cross_attn_points: int = 8  # sampling points per head and level of the image cross-attention
    ffn_dim: int = 512
    dense_layers: int = 0  # dense transformer layers on the compact volume (set by the variant)
    sparse_layers: int = 1  # sparse transformer layers on the occupied voxels (set by the variant)
    volume_encoder_blocks: int = 1  # cheap 3D conv blocks after image-to-3D (same in every variant)
    head_dim: int = 64  # C'': channels of the semantic head at the output resolution
    depth_min: float = 1.0  # Lift-Splat depth bins: depth_min, depth_min + step, ... < depth_max
    depth_max: float = 45.0
    depth_step: float = 0.5
    compact_stride: tuple[int, int, int] = (4, 4, 1)
    binary_stride: tuple[int, int, int] = (2, 2, 1)
    # Cap on sparse queries per sample (memory). When more voxels are occupied, the ones with the
    # highest binary logit are kept (offboard: the ones nearest the ego vehicle); the number dropped
    # is reported in ModelOutput.num_dropped_queries.
    max_sparse_queries: int = 40000
    occupancy_threshold: float = 0.5  # probability above which a voxel becomes a sparse query

    def __post_init__(self) -> None:
        for name in ("image_size", "feature_strides", "compact_stride", "binary_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self.validate()

    # -- validation ------------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ModelConfigError(f"unknown model variant '{self.variant}': use one of {', '.join(VARIANTS)}")
        for check in (self._layout_problem, self._image_problem, self._size_problem, self._depth_problem,
                      self._grid_problem):
            problem = check()
            if problem:
                raise ModelConfigError(f"model config ({self.variant}): {problem}")

    def _layout_problem(self) -> str | None:
        """The heads' arrangement and the layer counts the variant implies."""
        problem = arrangement_problem(self.variant, self.arrangement, offboard=self.offboard)
        if problem:
            return problem
        if self.is_sparse and self.sparse_layers < 1:
            return "a sparse variant needs sparse_layers >= 1"
        if not self.is_sparse and self.sparse_layers != 0:
            return "a dense baseline has sparse_layers = 0"
        if not self.uses_lift_splat and self.dense_layers < 1:
            return "BEVFormer variants lift images to 3D with dense layers: dense_layers >= 1"
        if self.dense_layers < 0 or self.volume_encoder_blocks < 0:
            return "layer counts must be >= 0"
        return None

    def _image_problem(self) -> str | None:
        """The backbone, the FPN levels attended and the network input."""
        if self.backbone_depth not in BACKBONE_DEPTHS:
            return f"backbone_depth {self.backbone_depth} not in {BACKBONE_DEPTHS}"
        if not self.feature_strides or any(s not in FEATURE_STRIDES for s in self.feature_strides):
            return f"feature_strides {self.feature_strides} must be a non-empty subset of {FEATURE_STRIDES}"
        if len(set(self.feature_strides)) != len(self.feature_strides):
            return f"feature_strides {self.feature_strides} repeat a stride"
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            return f"image_size {self.image_size} must be (H, W) of at least 32 pixels"
        return None

    def _size_problem(self) -> str | None:
        """Channel and attention sizes, classes, the sparse-query cap and threshold."""
        if self.embed_dim % self.num_heads:
            return f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
        sizes = (self.embed_dim, self.num_heads, self.self_attn_points, self.cross_attn_points, self.ffn_dim,
                 self.head_dim)
        if min(sizes) < 1:
            return "sizes must be positive"
        if not 0 <= self.free_index < self.num_classes:
            return f"free_index {self.free_index} outside 0..{self.num_classes - 1}"
        if not 0.0 < self.occupancy_threshold < 1.0:
            return f"occupancy_threshold {self.occupancy_threshold} must lie in (0, 1)"
        if self.max_sparse_queries < 1:
            return "max_sparse_queries must be >= 1"
        return None

    def _depth_problem(self) -> str | None:
        if not (0 < self.depth_min < self.depth_max and self.depth_step > 0):
            return f"depth bins {self.depth_min}..{self.depth_max} step {self.depth_step} are empty"
        return None

    def _grid_problem(self) -> str | None:
        """The strides must divide the output grid, and the binary stride the compact one."""
        if not isinstance(self.grid, VoxelGrid):
            return (f"grid must be a VoxelGrid, got {self.grid!r} (model_config and ModelConfig.from_dict "
                    "read preset names and specs)")
        shape = np.asarray(self.grid.shape)
        for name in ("compact_stride", "binary_stride"):
            stride = np.asarray(getattr(self, name))
            if stride.shape != (3,) or np.any(stride < 1) or np.any(shape % stride):
                return f"{name} {getattr(self, name)} does not divide the {self.grid.name} grid {tuple(shape)}"
        if np.any(np.asarray(self.compact_stride) % np.asarray(self.binary_stride)):
            return f"binary_stride {self.binary_stride} must divide compact_stride {self.compact_stride}"
        return None

    # -- what the variant implies ----------------------------------------------------------------
    @property
    def is_sparse(self) -> bool:
        return self.variant.startswith("sparse-")

    @property
    def uses_lift_splat(self) -> bool:
        return self.variant in ("sparse-ls", "ls")

    @property
    def has_binary_decoder(self) -> bool:
        """Offboard models take the occupied set as input and do not predict it."""
        return not self.offboard

    # -- derived sizes (never stored) ------------------------------------------------------------
    @property
    def output_grid(self) -> VoxelGrid:
        return self.grid

    @property
    def binary_grid(self) -> VoxelGrid:
        return self.output_grid.scaled(self.binary_stride, name=f"{self.output_grid.name}/binary")

    @property
    def compact_grid(self) -> VoxelGrid:
        return self.output_grid.scaled(self.compact_stride, name=f"{self.output_grid.name}/compact")

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.output_grid.shape

    @property
    def binary_shape(self) -> tuple[int, int, int]:
        return self.binary_grid.shape

    @property
    def compact_shape(self) -> tuple[int, int, int]:
        return self.compact_grid.shape

    @property
    def binary_from_compact(self) -> tuple[int, int, int]:
        """Per-axis upsampling factor from the compact volume B to the binary volume B'."""
        return tuple(c // b for c, b in zip(self.compact_stride, self.binary_stride))  # type: ignore[return-value]

    @property
    def output_from_binary(self) -> tuple[int, int, int]:
        """Per-axis upsampling factor from B' to the output volume B''."""
        return self.binary_stride

    @property
    def depth_bins(self) -> np.ndarray:
        """(D,) float64 bin centres in metres: 1.0, 1.5, ..., 44.5 for the paper (D = 88)."""
        count = int(np.floor((self.depth_max - self.depth_min) / self.depth_step + 1e-6))
        return self.depth_min + self.depth_step * np.arange(count)

    @property
    def num_depth_bins(self) -> int:
        return len(self.depth_bins)

    # -- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists, numbers, strings; the grid as VoxelGrid.to_dict), so that a checkpoint
        holding it loads with ``torch.load(weights_only=True)`` and the dict survives JSON."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: _plain(value) for name, value in values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model config") -> ModelConfig:
        """The one reader of a saved ModelConfig (checkpoints, JSON). Unknown fields are refused by name;
        ``grid`` may be a VoxelGrid.to_dict, or the preset name / custom spec older checkpoints hold."""
        refuse_unknown_fields(data, where)
        if "variant" not in data:
            raise ModelConfigError(f"{where}: no 'variant'")
        values = dict(data)
        if "grid" in values:
            values["grid"] = read_grid(values["grid"], where)
        return cls(**values)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _plain(value: Any) -> Any:
    if isinstance(value, VoxelGrid):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value


def refuse_unknown_fields(values: Mapping[str, Any], where: str) -> None:
    """The policy on names a ModelConfig does not have: refuse them all, by name, saying where they came from."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ModelConfigError(f"{where}: unknown model config field{'s' * (len(unknown) > 1)} "
                               f"{', '.join(repr(name) for name in unknown)}")


def read_grid(value: VoxelGrid | str | Mapping[str, Any], where: str = "model config") -> VoxelGrid:
    """A grid as a ModelConfig holds it: a VoxelGrid, its ``to_dict``, a preset name or a custom spec."""
    try:
        if isinstance(value, Mapping):
            return VoxelGrid.from_dict(value)
        if isinstance(value, (str, VoxelGrid)):
            return get_grid(value)
    except GridError as err:
        raise ModelConfigError(f"{where}: grid: {err}") from None
    raise ModelConfigError(f"{where}: grid must be a preset name, a custom spec or a grid description, got {value!r}")


# Layer counts of the paper (sec. 4.1): BEVFormer 3 dense vs Sparse-BEVFormer 2 dense + 1 sparse;
# LS 1 dense vs Sparse-LS 1 sparse.
LAYER_COUNTS: dict[str, dict[str, int]] = {
    "sparse-ls": {"dense_layers": 0, "sparse_layers": 1},
    "ls": {"dense_layers": 1, "sparse_layers": 0},
    "sparse-bevformer": {"dense_layers": 2, "sparse_layers": 1},
    "bevformer": {"dense_layers": 3, "sparse_layers": 0},
}

# Sizes per preset. 'ls' / 'bevformer' keys hold what differs between the two image-to-3D kinds.
_PRESET_SIZES: dict[str, dict] = {
    "paper": {
        "common": dict(backbone_depth=50, embed_dim=256, num_heads=8, self_attn_points=4, cross_attn_points=8,
                       ffn_dim=512, head_dim=64, depth_min=1.0, depth_max=45.0, depth_step=0.5,
                       compact_stride=(4, 4, 1), binary_stride=(2, 2, 1), max_sparse_queries=40000,
                       volume_encoder_blocks=1),
        "ls": dict(image_size=(256, 704), feature_strides=(16,)),
        "bevformer": dict(image_size=(450, 800), feature_strides=(8, 16, 32)),
    },
    "small": {
        "common": dict(backbone_depth=18, embed_dim=64, num_heads=4, self_attn_points=4, cross_attn_points=4,
                       ffn_dim=128, head_dim=32, depth_min=1.0, depth_max=45.0, depth_step=2.0,
                       compact_stride=(8, 8, 2), binary_stride=(4, 4, 1), max_sparse_queries=20000,
                       volume_encoder_blocks=1),
        "ls": dict(image_size=(128, 352), feature_strides=(16,)),
        "bevformer": dict(image_size=(224, 400), feature_strides=(16, 32)),
    },
    # The CPU preset of the demo and the tests. Its volumes are the paper's strides halved in z
    # (compact 1.6 x 1.6 x 0.8 m, binary 0.8 x 0.8 x 0.4 m on Occ3D) and its images are lifted at
    # stride 8 (8 x 22 cells a camera): with 3.2 m compact voxels and stride-16 features (4 x 11
    # cells) it learned the ground and nothing that stands on it (docs/demo.md has the curves).
    "tiny": {
        "common": dict(backbone_depth=18, embed_dim=32, num_heads=2, self_attn_points=2, cross_attn_points=2,
                       ffn_dim=64, head_dim=16, depth_min=1.0, depth_max=45.0, depth_step=4.0,
                       compact_stride=(4, 4, 2), binary_stride=(2, 2, 1), max_sparse_queries=40000,
                       volume_encoder_blocks=1),
        "ls": dict(image_size=(64, 176), feature_strides=(8,)),
        "bevformer": dict(image_size=(96, 160), feature_strides=(16, 32)),
    },
}

# The paper's high-resolution auto-labelling setting for OpenOccupancy (appendix A.1): compact =
# binary = 256 x 256 x 40, C = 64, output 512 x 512 x 40.
_PAPER_OPENOCCUPANCY = dict(embed_dim=64, ffn_dim=128, head_dim=32, compact_stride=(2, 2, 1), binary_stride=(2, 2, 1),
                            max_sparse_queries=300000)


def model_config(
    variant: str,
    preset: str = "small",
    *,
    grid: VoxelGrid | str = "occ3d",
    num_classes: int = 18,
    free_index: int = 17,
    arrangement: str | None = None,
    offboard: bool = False,
    **overrides,
) -> ModelConfig:
    """A named preset for ``variant``; ``overrides`` change single fields (sizes) afterwards.

    ``grid``: a VoxelGrid, a preset name or a custom spec (b2s_core.grids.get_grid). ``arrangement``
    defaults to 'intermediate' for the sparse variants and 'multi-head' for the dense baselines.
    Example: ``model_config('sparse-ls', 'paper', grid='occ3d')``.
    """
    if variant not in VARIANTS:
        raise ModelConfigError(f"unknown model variant '{variant}': use one of {', '.join(VARIANTS)}")
    if preset not in PRESETS:
        raise ModelConfigError(f"unknown model preset '{preset}': use one of {', '.join(PRESETS)}")
    refuse_unknown_fields(overrides, "model_overrides")
    output_grid = read_grid(grid, "model_config")
    if arrangement is None:
        arrangement = "intermediate" if variant.startswith("sparse-") else "multi-head"
    values = dict(variant=variant, arrangement=arrangement, offboard=offboard, preset=preset, grid=output_grid,
                  num_classes=num_classes, free_index=free_index, **LAYER_COUNTS[variant],
                  **_preset_sizes(variant, preset, output_grid))
    values.update(overrides)
    return ModelConfig(**values)


def _preset_sizes(variant: str, preset: str, grid: VoxelGrid) -> dict[str, Any]:
    """The sizes ``preset`` gives ``variant``'s image-to-3D kind on ``grid``."""
    kind = "ls" if variant in ("sparse-ls", "ls") else "bevformer"
    sizes = {**_PRESET_SIZES[preset]["common"], **_PRESET_SIZES[preset][kind]}
    if preset == "paper" and grid.same_geometry(GRID_PRESETS["openoccupancy"]):
        sizes.update(_PAPER_OPENOCCUPANCY)
    return sizes


__all__ = ["ModelConfig", "ModelConfigError", "arrangement_problem", "model_config", "read_grid",
           "refuse_unknown_fields", "VARIANTS", "ARRANGEMENTS", "PRESETS", "LAYER_COUNTS"]
