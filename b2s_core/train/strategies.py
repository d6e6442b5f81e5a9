"""The paper's training strategies: which parameters each one trains, which losses and data it uses.

Stage 1, pre-training (section 3.3): binary occupancy data only, binary BCE only. The proposed
(sparse) models are trained up to the binary decoder; the parts after it are neither run nor
touched. The dense baselines are trained as a whole with their binary head (Fig. 4), which for
them is everything but the semantic head.

Stage 2, fine-tuning (section 4.1, Fig. 4):

    strategy       variants   trains                        losses
    intermediate   sparse-*   the whole model               focal(S) + BCE(B* or B)   (proposed)
    multi-head     ls, bevf.  the whole model               focal(S) + BCE(B* or B)   (binary head kept)
    replace-head   ls, bevf.  all but the binary head       focal(S)                  (UniScene)
    offboard       sparse-*   all but the binary decoder    focal(S), GT binary as input

B* ('bstar'): binaries derived from the semantic batch itself. B ('b'): B* plus, every step, a
random batch of pre-training binary samples run through the binary path only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from b2s_core.models.config import arrangement_problem
from b2s_core.train.config import ConfigError, TrainConfig

Stage = Literal["pretrain", "finetune"]
PlanName = Literal["pretrain", "intermediate", "multi-head", "replace-head", "offboard"]
Arrangement = Literal["intermediate", "multi-head", "replace-head"]  # models.config.ARRANGEMENTS
Trains = Literal["binary-path", "all", "all-but-binary-head"]


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """What a run trains, on which losses and data: one row of the table above."""

    stage: Stage
    name: PlanName
    arrangement: Arrangement  # the model's head arrangement (ModelConfig.arrangement)
    offboard: bool  # GT binary as the model's occupied set
    up_to_binary: bool  # run the model only up to its binary output
    semantic_loss: bool
    binary_loss: bool  # BCE on the main batch's binaries (pre-training data or B*)
    pretrain_batches: bool  # S+B: an extra batch of pre-training binary samples each step
    trains: Trains  # which parameters select_trainable leaves trainable


# Stage 1: the binary path only, BCE only; the arrangement is the one the variant fine-tunes in by default.
PRETRAIN_SPARSE = TrainingPlan(stage="pretrain", name="pretrain", arrangement="intermediate", offboard=False,
                               up_to_binary=True, semantic_loss=False, binary_loss=True, pretrain_batches=False,
                               trains="binary-path")
PRETRAIN_DENSE = replace(PRETRAIN_SPARSE, arrangement="multi-head")
# Offboard: the GT binary is the input, so there is no binary decoder to train and no BCE.
OFFBOARD = TrainingPlan(stage="finetune", name="offboard", arrangement="intermediate", offboard=True,
                        up_to_binary=False, semantic_loss=True, binary_loss=False, pretrain_batches=False,
                        trains="all-but-binary-head")
# Replacing Head (UniScene): a new semantic head in place of the binary one, which stays as pre-trained.
REPLACE_HEAD = TrainingPlan(stage="finetune", name="replace-head", arrangement="replace-head", offboard=False,
                            up_to_binary=False, semantic_loss=True, binary_loss=False, pretrain_batches=False,
                            trains="all-but-binary-head")


def plan_for(config: TrainConfig, variant: str) -> TrainingPlan:
    """The plan of a run; raises ConfigError for a strategy the variant cannot follow."""
    if config.stage == "pretrain":
        return PRETRAIN_SPARSE if variant.startswith("sparse-") else PRETRAIN_DENSE
    # The arrangement the strategy asks of the model (an offboard model is a sparse 'intermediate' one).
    wanted = "intermediate" if config.offboard else config.strategy
    problem = arrangement_problem(variant, wanted, offboard=config.offboard)
    if problem:
        raise ConfigError(f"strategy {problem}" if not config.offboard else f"--offboard: {problem}")
    if config.offboard:
        return OFFBOARD
    if config.strategy == "replace-head":
        return REPLACE_HEAD
    # Intermediate (proposed) / Multi-Head: the whole model, focal + BCE on B*, and with B the extra batch.
    return TrainingPlan(stage="finetune", name=config.strategy, arrangement=config.strategy, offboard=False,
                        up_to_binary=False, semantic_loss=True, binary_loss=True,
                        pretrain_batches=config.binary_data == "b", trains="all")


def select_trainable(model: torch.nn.Module, plan: TrainingPlan) -> list[str]:
    """Set ``requires_grad`` per the plan; returns the names of the trained parameters.

    Frozen parameters get no gradient, no optimiser state and no DDP all-reduce.
    """
    binary_path = {id(p) for p in model.binary_path_parameters()}
    binary_head = {id(p) for p in model.binary_head_parameters()}
    trained = []
    for name, param in model.named_parameters():
        if plan.trains == "binary-path":
            keep = id(param) in binary_path
        elif plan.trains == "all-but-binary-head":
            keep = id(param) not in binary_head
        else:
            keep = True
        param.requires_grad_(keep)
        if keep:
            trained.append(name)
    if not trained:
        raise ConfigError(f"strategy '{plan.name}' leaves no parameter of the model to train")
    return trained
