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

from dataclasses import dataclass

import torch

from b2s_core.models.config import arrangement_problem
from b2s_core.train.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class TrainingPlan:
    stage: str  # 'pretrain' | 'finetune'
    name: str  # 'pretrain', 'intermediate', 'multi-head', 'replace-head' or 'offboard'
    arrangement: str  # the model's head arrangement (ModelConfig.arrangement)
    offboard: bool  # GT binary as the model's occupied set
    up_to_binary: bool  # run the model only up to its binary output
    semantic_loss: bool
    binary_loss: bool  # BCE on the main batch's binaries (pre-training data or B*)
    pretrain_batches: bool  # S+B: an extra batch of pre-training binary samples each step
    trains: str  # 'binary-path' | 'all' | 'all-but-binary-head'


def plan_for(config: TrainConfig, variant: str) -> TrainingPlan:
    """The plan of a run; raises ConfigError for a strategy the variant cannot follow."""
    sparse = variant.startswith("sparse-")
    if config.stage == "pretrain":
        arrangement = "intermediate" if sparse else "multi-head"
        return TrainingPlan("pretrain", "pretrain", arrangement, False, True, False, True, False, "binary-path")
    # The arrangement the strategy asks of the model (an offboard model is a sparse 'intermediate' one).
    wanted = "intermediate" if config.offboard else config.strategy
    problem = arrangement_problem(variant, wanted, offboard=config.offboard)
    if problem:
        raise ConfigError(f"strategy {problem}" if not config.offboard else f"--offboard: {problem}")
    if config.offboard:
        return TrainingPlan("finetune", "offboard", "intermediate", True, False, True, False, False, "all-but-binary-head")
    if config.strategy == "replace-head":
        return TrainingPlan("finetune", "replace-head", "replace-head", False, False, True, False, False, "all-but-binary-head")
    extra = config.binary_data == "b"
    return TrainingPlan("finetune", config.strategy, config.strategy, False, False, True, True, extra, "all")


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
