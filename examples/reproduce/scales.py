"""How big each run of the reproduction is: one frozen dataclass per scale, no per-claim knobs.

Every experiment of a scale uses the same world, the same model preset and the same optimiser
settings; only the data each cell sees differs (which is what the paper's claims are about).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The miniature output grid: Occ3D's range at twice the voxel size (0.8 m, 100 x 100 x 8). The
# synthetic world writes real Occ3D labels (0.4 m); they are coarsened with b2s_core.grids.
# One semantic step on the full 200 x 200 x 16 grid costs ~4x more on a CPU (measured, see docs/reproduce.md).
MINI_GRID = "-40,-40,-1,40,40,5.4:0.8,0.8,0.8"


@dataclass(frozen=True)
class Scale:
    name: str
    # -- the world ------------------------------------------------------------------------------------
    binary_scenes: int  # N: binary-only scenes (LiDAR logs -> b2s build-binary)
    semantic_scenes: int  # K: scenes with Occ3D labels used for fine-tuning
    val_scenes: int  # fixed held-out validation scenes (Occ3D labels)
    pseudo_scenes: int  # P: binary scenes (the first P) that E3 auto-labels (and converts with GT for K+P GT)
    frames: int  # key frames per scene (2 Hz)
    image_size: tuple[int, int]  # (W, H) of the simulated camera images
    grid: str = MINI_GRID
    pretrain_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)  # of N, the x axis of Fig. 5
    # -- the model ------------------------------------------------------------------------------------
    preset: str = "tiny"
    # The tiny preset's volume strides and stride-8 image features, spelled out (the preset itself moved to
    # them after docs/demo.md's curves): at 64 x 176 pixels a stride-16 map is 4 x 11 cells and the semantic
    # heads learn little more than terrain and road (LS from scratch, batch 2: mIoU 5.6 after 400 steps at
    # stride 16, 10.2 after 300 at stride 8; docs/reproduce.md).
    model_overrides: dict = field(default_factory=lambda: {"compact_stride": [4, 4, 2], "binary_stride": [2, 2, 1],
                                                           "feature_strides": [8]})
    dense_pair: bool = False  # also run BEVFormer / Sparse-BEVFormer in E1
    # -- training (same for every cell) -----------------------------------------------------------------
    # Pre-training runs epochs over its N scenes, as in the paper: more scenes, more steps. Every
    # fine-tuning run takes the same number of optimiser steps, whatever its data (K GT scenes, K + P
    # pseudo-labelled, K + P GT), so that a difference between cells is the data, not the training length.
    pretrain_epochs: int = 8
    finetune_steps: int = 150
    batch_size: int = 2  # more, smaller steps: at this scale the step count limits learning, not the batch
    lr: float = 1e-3  # one value for every cell (3e-3 gave the same mIoU after 300 steps)
    # Class-weighted focal loss (TrainConfig.class_balance): with ~100x fewer steps than the paper, an
    # unweighted loss learns terrain and road only (LS from scratch, 150 steps: mIoU 6.1 -> 13.0).
    class_balance: float = 0.5
    max_steps: int | None = None  # smoke only: cap every run
    seeds: tuple[int, ...] = (0, 1, 2)
    synth_seed: int = 7  # the world's seed (fixed; the training seeds vary)

    @property
    def pretrain_sizes(self) -> list[int]:
        """Numbers of pre-training scenes; each a whole number of blocks of N / (blocks)."""
        return sorted({round(f * self.binary_scenes) for f in self.pretrain_fractions})

    @property
    def block_size(self) -> int:
        """Binary scenes are built in blocks so that every pre-training size is a union of blocks."""
        from math import gcd

        size = 0
        for n in self.pretrain_sizes:
            size = gcd(size, n)
        return max(size, 1)

    def world_key(self) -> dict:
        """What the world depends on (a cached world is reused only when this matches)."""
        keys = ("binary_scenes", "semantic_scenes", "val_scenes", "pseudo_scenes", "frames", "image_size", "grid",
                "pretrain_fractions", "synth_seed")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keys}

    def training_key(self) -> dict:
        """What a cached cell result depends on besides the world (the seeds are in the cell ids)."""
        skip = set(self.world_key()) | {"name", "seeds"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


SCALES: dict[str, Scale] = {
    # CI: checks the pipeline end to end in ~2 minutes on one core; the numbers mean nothing.
    "smoke": Scale(name="smoke", binary_scenes=1, semantic_scenes=1, val_scenes=1, pseudo_scenes=1, frames=2,
                   image_size=(96, 54), pretrain_fractions=(0.0, 1.0), pretrain_epochs=1, finetune_steps=1,
                   batch_size=2, max_steps=1, seeds=(0,)),
    # 74 minutes on 2 idle CPU cores, inside the 90-minute budget (docs/reproduce.md).
    "default": Scale(name="default", binary_scenes=16, semantic_scenes=4, val_scenes=3, pseudo_scenes=8, frames=6,
                     image_size=(176, 99)),
    # A smaller world and 60 fine-tuning steps: a quicker look (not timed).
    "short": Scale(name="short", binary_scenes=8, semantic_scenes=2, val_scenes=2, pseudo_scenes=4, frames=5,
                   image_size=(176, 99), finetune_steps=60),
    # A GPU machine: more scenes, longer scenes, the small preset, the BEVFormer pair too.
    "gpu": Scale(name="gpu", binary_scenes=96, semantic_scenes=12, val_scenes=8, pseudo_scenes=36, frames=10,
                 image_size=(400, 225), preset="small", model_overrides={"compact_stride": [4, 4, 2], "binary_stride": [2, 2, 1]},
                 dense_pair=True, pretrain_epochs=12, finetune_steps=1500, batch_size=8, lr=5e-4),
}
