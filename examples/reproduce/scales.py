"""How big each run of the reproduction is: one frozen dataclass per scale, no per-claim knobs.

Every experiment of a scale uses the same world, the same model preset and the same optimiser
settings; only the data each cell sees differs (which is what the paper's claims are about).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

# The miniature output grid: Occ3D's own 0.4 m voxels and height range over the central 40 x 40 m
# (100 x 100 x 16), cropped from the synthetic world's Occ3D labels (the former 0.8 m grid halved the
# voxels' resolution). A Sparse-LS step costs 1.5x the 0.8 m one; the synthetic world is ~78 % ground
# at either grid (docs/reproduce.md measures both, and the real Occ3D sample).
MINI_GRID = "-20,-20,-1,20,20,5.4:0.4,0.4,0.4"


@dataclass(frozen=True)
class Scale:
    name: str
    # -- the world ------------------------------------------------------------------------------------
    binary_scenes: int  # N: binary-only scenes (LiDAR logs -> b2s build-binary)
    semantic_scenes: int  # K: scenes with Occ3D labels used for fine-tuning
    val_scenes: int  # fixed held-out validation scenes (Occ3D labels)
    pseudo_scenes: int  # P: binary scenes (the first P) that C4 auto-labels (and converts with GT for K+P GT)
    frames: int  # key frames per scene (2 Hz)
    image_size: tuple[int, int]  # (W, H) of the simulated camera images
    grid: str = MINI_GRID
    pretrain_fractions: tuple[float, ...] = (0.0, 0.25, 1.0)  # of N, the x axis of Fig. 5
    # -- the model ------------------------------------------------------------------------------------
    preset: str = "tiny"
    # The tiny preset's volume strides and stride-8 image features, spelled out (the preset itself moved to
    # them after docs/demo.md's curves): at 64 x 176 pixels a stride-16 map is 4 x 11 cells and the semantic
    # heads learn little more than terrain and road (LS from scratch, batch 2: mIoU 5.6 after 400 steps at
    # stride 16, 10.2 after 300 at stride 8; docs/reproduce.md).
    model_overrides: dict = field(default_factory=lambda: {"compact_stride": [4, 4, 2], "binary_stride": [2, 2, 1],
                                                           "feature_strides": [8]})
    dense_pair: bool = False  # also run BEVFormer / Sparse-BEVFormer in C1-C2
    # -- training (same for every cell; fixed from the pilot curves of `--pilot`, docs/reproduce.md) ---------
    # Pre-training runs epochs over its N scenes, as in the paper: more scenes, more steps. Every
    # fine-tuning run takes the same number of optimiser steps, whatever its data (K GT scenes, K + P
    # pseudo-labelled, K + P GT), so that a difference between cells is the data, not the training length.
    # Fixed from the pilot's curves (`--pilot`, seed 100, 480 steps; docs/reproduce.md) before any claim cell ran.
    # Rule: a curve is flat from the first validation after which it stays within 1 point of its best.
    # Pre-training: flat from epoch 6. Fine-tuning: Sparse-LS S+B flat from step 256, LS on K+P GT from 320,
    # LS from scratch from 384 (within 2.1 at 320, a dip between 14.0 at 256 and 15.0 at 384). 320 steps
    # is what the 90-minute budget allows. Batch 1: a batch-2 pilot reached about the same mIoU per step
    # (LS from scratch 14.97 at step 240 vs 14.0 at 256) at twice the cost of a step.
    pretrain_epochs: int = 6
    finetune_steps: int = 320
    batch_size: int = 1
    lr: float = 1e-3  # one value for every cell
    # Class-weighted focal loss (TrainConfig.class_balance): with ~100x fewer steps than the paper, an
    # unweighted loss learns terrain and road only (LS from scratch, 150 steps: mIoU 6.1 -> 13.0).
    class_balance: float = 0.5
    val_every_steps: int = 64  # validation during training, about this often: the learning curves
    max_steps: int | None = None  # smoke only: cap every run
    seeds: tuple[int, ...] = (0, 1, 2)
    synth_seed: int = 7  # the world's seed (fixed; the training seeds vary)
    # -- the pilot (`--pilot`): longer runs of one seed that is not a claim seed, to fix the settings above --
    pilot_seed: int = 100
    pilot_finetune_steps: int = 480
    pilot_pretrain_epochs: int = 8

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
                "synth_seed")
        key = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keys}
        return {**key, "block_size": self.block_size}  # the binary files hold blocks of this many scenes

    def training_key(self) -> dict:
        """What a cached cell result depends on besides the world (the seeds are in the cell ids)."""
        skip = set(self.world_key()) | {"name", "seeds", "pretrain_fractions"}
        skip |= {k for k in asdict(self) if k.startswith("pilot_")}  # the pilot's runs are not claim cells
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def pilot(self) -> Scale:
        """The pilot's runs: this scale's world and settings, longer runs, the pilot seed alone."""
        return replace(self, finetune_steps=self.pilot_finetune_steps, pretrain_epochs=self.pilot_pretrain_epochs,
                       seeds=(self.pilot_seed,))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


SCALES: dict[str, Scale] = {
    # CI: checks the pipeline end to end in a few minutes on one core; the numbers mean nothing.
    "smoke": Scale(name="smoke", binary_scenes=1, semantic_scenes=1, val_scenes=1, pseudo_scenes=1, frames=2,
                   image_size=(96, 54), pretrain_fractions=(0.0, 1.0), pretrain_epochs=1, finetune_steps=1,
                   batch_size=2, max_steps=1, seeds=(0,), val_every_steps=1, pilot_finetune_steps=2,
                   pilot_pretrain_epochs=1),
    # The paper's regime in miniature: N / K = 8 (K = 2 labelled scenes of 8 key frames), 0.4 m voxels.
    # Measured time on 2 idle cores: docs/reproduce.md (budget 90 minutes).
    "default": Scale(name="default", binary_scenes=16, semantic_scenes=2, val_scenes=3, pseudo_scenes=8, frames=8,
                     image_size=(176, 99)),
    # A GPU machine: N / K = 16, the full Occ3D grid, the small preset, the BEVFormer pair too (not yet run).
    "gpu": Scale(name="gpu", binary_scenes=128, semantic_scenes=8, val_scenes=8, pseudo_scenes=32, frames=10,
                 image_size=(400, 225), grid="occ3d", preset="small",
                 model_overrides={"compact_stride": [4, 4, 2], "binary_stride": [2, 2, 1]}, dense_pair=True,
                 pretrain_epochs=8, finetune_steps=1500, batch_size=8, lr=5e-4, val_every_steps=150,
                 pilot_finetune_steps=3000, pilot_pretrain_epochs=16),
}
