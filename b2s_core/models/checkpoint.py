"""Checkpoints: atomic writes, exact-resume state, and loading a trained model for other tools.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)`` (no code runs while unpickling):

    format, version        'b2s-checkpoint', CHECKPOINT_VERSION
    model_variant          e.g. 'sparse-ls'
    model_config           the resolved ModelConfig as a dict: the model is rebuilt from it
    train_config           the resolved TrainConfig as a dict
    model                  state_dict
    optimizer, scheduler, scaler   state_dicts (None when not training)
    progress               {'step', 'epoch', 'batch_in_epoch', 'pretrain_batches'}
    rng                    per-rank RNG states (python, torch, cuda) for exact resume
    metrics                the last validation metrics

Writes go to a temporary file in the same folder, are flushed and fsync'ed, then renamed over the
target: a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from b2s_core.errors import B2SError
from b2s_core.models.config import ModelConfig, ModelConfigError
from b2s_core.models.occupancy_model import build_model
from b2s_core.output_paths import atomic_path
from b2s_core.torch_files import UnreadableTorchFile, load_weights_only

CHECKPOINT_FORMAT = "b2s-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(B2SError):
    """A checkpoint that cannot be read or does not fit what it is used for."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (see the module docstring) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as temp, open(temp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint file (``weights_only=True``); returns the raw state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = load_weights_only(path, map_location=map_location)
    except UnreadableTorchFile as err:
        raise CheckpointError(f"{path}: not a readable b2s checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a b2s checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')}, this b2s reads version {CHECKPOINT_VERSION}"
        )
    return state


# -- a trained model for evaluate / autolabel -----------------------------------------------------------
@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # built from model_config, weights loaded, in eval mode
    model_config: ModelConfig
    # How it was trained, as saved: the TrainConfig fields as plain values. Inference reads a few
    # facts from it (the stage, the semantic data) without importing training.
    train_settings: dict[str, Any]
    progress: dict[str, int]
    metrics: dict[str, Any]
    path: Path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    expect_model: str | None = None) -> LoadedCheckpoint:
    """Rebuild the model a checkpoint was trained with and load its weights.

    ``expect_model``: the variant the caller needs (e.g. 'sparse-ls'); another gives a clear error.
    """
    state = read_checkpoint(path, map_location)
    variant = state.get("model_variant")
    if expect_model is not None and variant != expect_model:
        raise CheckpointError(f"{path}: checkpoint holds a '{variant}' model, expected '{expect_model}'")
    try:
        model_config = ModelConfig.from_dict(state["model_config"], where="model_config")
        model = build_model(model_config)
        model.load_state_dict(state["model"])
    except (ModelConfigError, KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise CheckpointError(f"{path}: checkpoint does not fit this b2s's '{variant}' model ({first})") from None
    model.to(map_location).eval()
    return LoadedCheckpoint(
        model=model,
        model_config=model_config,
        train_settings=dict(state.get("train_config") or {}),
        progress=dict(state.get("progress", {})),
        metrics=dict(state.get("metrics") or {}),
        path=Path(path),
    )
