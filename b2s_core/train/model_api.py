"""The few facts the trainer needs from the model library, in one place.

* ``make_model_config``: the ModelConfig of a run (variant + preset + the data's grid / classes
  + the plan's head arrangement), or the one of a checkpoint to start from;
* ``run_model``: one forward pass with the batch's camera geometry, optionally only up to the
  binary output, optionally with the GT binary grid as the occupied set (offboard).
"""

from __future__ import annotations

import dataclasses

import torch

from b2s_core.grids import VoxelGrid
from b2s_core.models.config import ModelConfig, model_config, refuse_unknown_fields
from b2s_core.models.occupancy_model import ModelOutput
from b2s_core.models.occupied_set import given_occupancy
from b2s_core.taxonomy import Taxonomy


def make_model_config(variant: str, preset: str, *, grid: VoxelGrid, taxonomy: Taxonomy, arrangement: str,
                      offboard: bool, overrides: dict) -> ModelConfig:
    """A model trained from scratch: ``preset``'s sizes on the data's grid and classes, with the plan's heads."""
    return model_config(variant, preset, grid=grid, num_classes=taxonomy.num_labels,
                        free_index=taxonomy.free_index, arrangement=arrangement, offboard=offboard, **overrides)


def adapt_model_config(base: ModelConfig, *, grid: VoxelGrid, taxonomy: Taxonomy, arrangement: str, offboard: bool,
                       overrides: dict) -> ModelConfig:
    """The fine-tuning model: the pre-trained one on the semantic set's grid and classes, with the plan's heads.

    The grid may differ from the pre-training grid (e.g. OpenScene 0.5 m -> Occ3D 0.4 m, both
    200 x 200 x 16): weights are carried over wherever their shapes still match.
    """
    refuse_unknown_fields(overrides, "model_overrides")
    changes = dict(grid=grid, num_classes=taxonomy.num_labels, free_index=taxonomy.free_index,
                   arrangement=arrangement, offboard=offboard, **overrides)
    return dataclasses.replace(base, **changes)


def run_model(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, up_to_binary: bool, offboard: bool,
              binary_shape: tuple[int, int, int]) -> ModelOutput:
    """Forward pass. Offboard: the occupied set is the GT binary of the *unmasked* batch pooled to the
    binary grid by ``b2s_core.models.occupied_set.given_occupancy``: the one derivation, which inference
    (``b2s_core.apps.predict``, run by evaluate and autolabel too) calls as well, so training and inference
    give the model the same input."""
    given = given_occupancy(batch["binary"], tuple(binary_shape)) if offboard else None  # (B, Xb, Yb, Zb)
    return model(batch["images"], batch["img_from_cam"], batch["ego_from_cam"], given_occupancy=given,
                 run_semantic=not up_to_binary)
