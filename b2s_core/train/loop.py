"""The training loop of ``b2s pretrain`` and ``b2s finetune``: named setup stages, then one loop.

    start = resolve_start(config, dist_)       # resume / --init / model checks: the run's settings and plan
    built = setup_model(start, dist_)          # model config, weights from --init or --backbone-weights, what trains
    data = setup_data(start, built, dist_)     # train / val / S+B loaders, class weights, the BCE's positive weight
    opt = setup_optimisation(...)              # device, SyncBatchNorm, DDP, AdamW, schedule, gradient scaler
    state = restore(start, opt, data, dist_)   # a resumed run's weights, optimiser, random streams and progress
    train_loop(run): per step train_step (S+B extra pass, main pass, clip, step), log, checkpoint, stop;
                     per epoch validation and checkpoint; then the final validation and checkpoint.

Single process (CPU or one GPU):

    b2s pretrain --data B.h5 --model sparse-ls --preset small --out runs/pre

Several GPUs of one machine (``--gpus`` re-launches through torch.distributed.run):

    b2s pretrain --data B.h5 --gpus 4 --out runs/pre
    # == torchrun --standalone --nproc_per_node 4 -m b2s_core.train.launch <run folder>/launch.yaml

Several machines (run on each node; the same entry point reads rank and world size from the env):

    torchrun --nnodes 2 --node_rank $NODE --nproc_per_node 8 --rdzv_backend c10d \
        --rdzv_endpoint $HOST:29500 -m b2s_core.train.launch runs/pre/launch.yaml

DDP is visible here: rank / world size from the environment (torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK), NCCL on CUDA and Gloo on CPU, a DistributedSampler per rank, logging and checkpoints
on rank 0 only, seed + rank for each rank's random stream (the model is initialised identically
from the plain seed first; DDP also broadcasts rank 0's weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from b2s_core.data.dataset import DataConfig, DataError, OccTrainDataset, collate, open_occ_dataset
from b2s_core.data.sampler import CyclingLoader, EpochSampler
from b2s_core.grids import VoxelGrid
from b2s_core.models import ModelConfig, ModelOutput, OccupancyModel, build_model
from b2s_core.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from b2s_core.taxonomy import Taxonomy
from b2s_core.train.class_weights import binary_pos_weight, count_labels, weights_from_counts
from b2s_core.train.config import DATA_FIELDS, ConfigError, TrainConfig
from b2s_core.train.logging import MetricsLog
from b2s_core.train.model_api import adapt_model_config, make_model_config, run_model
from b2s_core.train.objectives import binary_loss, depth_loss, loss_targets, semantic_loss
from b2s_core.train.slurm import slurm_ranks
from b2s_core.train.strategies import TrainingPlan, plan_for, select_trainable
from b2s_core.train.validate import validate

CHECKPOINT_NAME = "checkpoint.pt"
Checkpoint = dict[str, Any]  # a checkpoint's contents, as read_checkpoint returns and save_checkpoint takes


# -- processes and devices ------------------------------------------------------------------------------
@dataclass
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_choice: str) -> Distributed:
    """Rank and world size from the environment torchrun sets (or srun's, mapped by
    :func:`b2s_core.train.slurm.slurm_ranks`); 1 process when both are absent."""
    # Into os.environ: init_process_group reads MASTER_ADDR / MASTER_PORT from there.
    os.environ.update(slurm_ranks(os.environ) or {})
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available (use --device cpu)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank, local_rank, world_size, device)


def autocast_context(amp: str, device: torch.device):
    """bf16 / fp16 autocast on CUDA; full precision on CPU (CPU autocast is slower than fp32 here)."""
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    warmup = min(warmup_steps, total_steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- what a run is made of ------------------------------------------------------------------------------
@dataclass
class RunState:
    """Where training stands; everything here goes into the checkpoint."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of the current epoch done
    pretrain_batches: int = 0  # S+B: pre-training batches consumed
    metrics: dict[str, Any] = field(default_factory=dict)  # last validation


@dataclass
class TrainResult:
    checkpoint: Path
    state: RunState
    config: TrainConfig
    finished: bool  # False when stopped early by stop_after_steps
    model: torch.nn.Module  # the trained model (this process's replica; identical on every rank)


@dataclass
class Start:
    """Where a run starts from (:func:`resolve_start`)."""

    config: TrainConfig  # the effective settings: a resumed run's own; the variant and preset of --init
    plan: TrainingPlan
    out: Path  # the run folder as given (a resumed run's saved 'out' names where it was started)
    resume: Checkpoint | None  # this run's checkpoint, when it resumes
    init: Checkpoint | None  # the --init checkpoint of a fine-tuning run that does not resume


@dataclass
class ModelSetup:
    """The model of a run (:func:`setup_model`) and the data facts that sized it."""

    model: OccupancyModel
    config: ModelConfig
    grid: VoxelGrid  # the main data's grid
    taxonomy: Taxonomy  # the main data's classes
    trained_names: list[str]  # parameters the plan and the frozen backbone stages leave trainable
    backbone_from: str  # where the image backbone's weights come from (metrics.jsonl)
    init_report: str  # what --init brought; '' without


@dataclass
class DataSetup:
    """The loaders of a run (:func:`setup_data`) and the loss weights counted on its data."""

    loader: DataLoader  # the main set: this rank's share of every epoch
    sampler: EpochSampler  # the loader's sampler (where an epoch starts)
    per_rank_batch: int
    steps_per_epoch: int
    pretrain_stream: CyclingLoader | None  # S+B: one pre-training binary batch per step
    val_loader: DataLoader | None  # rank 0 only
    class_weights: torch.Tensor | None  # (K,) focal-loss weights; the same on every rank (same files, same frames)
    pos_weight: float | None  # the BCE's weight of occupied voxels; the same for the S+B extra batch
    depth_stride: int | None  # the feature stride LiDAR depth supervises; None: no depth term


@dataclass
class Optimisation:
    """What updates the model (:func:`setup_optimisation`)."""

    model: torch.nn.Module  # the trained model on its device (SyncBatchNorm layers where asked)
    ddp_model: torch.nn.Module  # the model in DistributedDataParallel with several processes; the model with one
    params: list[torch.nn.Parameter]  # the trained parameters
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    total_steps: int


@dataclass
class Run:
    """What the loop works with: the setup stages' results, where training stands, the log."""

    config: TrainConfig
    plan: TrainingPlan
    dist: Distributed
    out: Path
    built: ModelSetup
    data: DataSetup
    opt: Optimisation
    state: RunState
    log: MetricsLog

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME


def _make_loader(dataset: OccTrainDataset, *, batch_size: int, dist_: Distributed, seed: int,
                 workers: int) -> tuple[DataLoader, EpochSampler]:
    """This rank's shuffled share of ``dataset`` in whole batches."""
    sampler = EpochSampler(len(dataset), num_replicas=dist_.world_size, rank=dist_.rank, seed=seed, shuffle=True,
                           drop_last=True)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=True,
        pin_memory=dist_.device.type == "cuda", persistent_workers=workers > 0,
    )
    return loader, sampler


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(_as_tuples(state["python"]))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> tuple[int, list[str]]:
    """Copy the weights whose name and shape match; returns (loaded count, names left at their init)."""
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise CheckpointError(f"{where}: no weight of the checkpoint fits this model")
    model.load_state_dict(matching, strict=False)
    return len(matching), sorted(set(own) - set(matching))


# -- the run --------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, show_progress: bool = True) -> TrainResult:
    """Run (or resume) one training job as configured; returns where its checkpoint is."""
    dist_ = setup_distributed(config.device)
    try:
        return _train(config, dist_, show_progress)
    finally:
        if dist_.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, dist_: Distributed, show_progress: bool) -> TrainResult:
    start = resolve_start(config, dist_)
    built = setup_model(start, dist_)
    data = setup_data(start, built, dist_)
    opt = setup_optimisation(start.config, built.model, data.steps_per_epoch, dist_)
    state = restore(start, opt, data, dist_)
    run = Run(start.config, start.plan, dist_, start.out, built, data, opt, state, log=open_log(start, state, dist_))
    log_start(run)
    finished = train_loop(run, show_progress)
    if finished and data.val_loader is not None and state.metrics.get("step") != state.step:
        run_validation(run)
    path = save(run, finished=finished)
    run.log.close()
    return TrainResult(path, state, run.config, finished=finished, model=opt.model)


# -- 1. where we start from: a resumable checkpoint of this run, an initial model, or nothing -----------------
def resolve_start(config: TrainConfig, dist_: Distributed) -> Start:
    """The run's effective settings and plan, and the checkpoints it starts from; refuses what cannot run."""
    out = Path(config.out)
    config, resume = _resumed(config, out / CHECKPOINT_NAME)
    config, init = _initialised(config, resume)
    if config.model is None:
        raise ConfigError("no model given: use --model (or --init CKPT to fine-tune a trained one)")
    # After the resume above: a resumed run's batch size is its saved one, not the default the caller left.
    if config.batch_size % dist_.world_size:
        raise ConfigError(f"batch size {config.batch_size} does not divide over {dist_.world_size} processes")
    if config.amp != "none" and dist_.device.type != "cuda" and dist_.is_main:
        warnings.warn(f"--amp {config.amp} applies on CUDA only; training in float32 on {dist_.device}")
    return Start(config, plan_for(config, config.model), out, resume, init)


def _resumed(config: TrainConfig, ckpt_path: Path) -> tuple[TrainConfig, Checkpoint | None]:
    """With --resume: the run's own settings (with the changes a resuming caller may make) and its checkpoint."""
    if not config.resume:
        return config, None
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint in {ckpt_path.parent})")
    state = read_checkpoint(ckpt_path)
    saved = TrainConfig.from_dict(state["train_config"], where=f"{ckpt_path} train_config")
    if config.model not in (None, saved.model):
        raise CheckpointError(f"{ckpt_path}: run trains a '{saved.model}' model, not '{config.model}'")
    # The run's own settings, except how long and how it runs (e.g. epochs); other changes are refused.
    changes = _explicit_changes(config, saved, ckpt_path)
    return TrainConfig.from_dict({**saved.to_dict(), **changes, "resume": True}), state


def _initialised(config: TrainConfig, resume: Checkpoint | None) -> tuple[TrainConfig, Checkpoint | None]:
    """Fine-tuning from --init (not resumed): the run takes the variant and preset of that checkpoint."""
    if config.stage != "finetune" or not config.init or resume is not None:
        return config, None
    state = read_checkpoint(config.init)
    variant = state.get("model_variant")
    if config.model not in (None, variant):
        raise CheckpointError(f"{config.init}: checkpoint holds a '{variant}' model, not '{config.model}'")
    preset = state["train_config"].get("preset", config.preset)
    return TrainConfig.from_dict({**config.to_dict(), "model": variant, "preset": preset}), state


# -- 2. the model: built identically on every rank from the plain seed ------------------------------------------
def main_data(config: TrainConfig) -> list[str]:
    """The main set: binary for pre-training, S [+ pseudo-labels] for fine-tuning."""
    return config.data if config.stage == "pretrain" else config.semantic_data + config.pseudo_data


def setup_model(start: Start, dist_: Distributed) -> ModelSetup:
    """The model on the main data's grid and classes, its starting weights, and the parameters it trains."""
    config, plan, paths = start.config, start.plan, main_data(start.config)
    grid, taxonomy = _grid_and_taxonomy(paths)  # they size the model
    _seed_everything(config.seed)
    model_config = _model_config(start, grid, taxonomy)
    if not model_config.output_grid.same_geometry(grid):
        raise DataError(f"{paths[0]}: data grid {grid.describe()} differs from the model's "
                        f"{model_config.output_grid.describe()}")
    model = build_model(model_config)
    backbone_from = _init_backbone(model, config, init_state=start.init, resume_state=start.resume,
                                   is_main=dist_.is_main)
    init_report = _load_init(model, start.init, str(config.init)) if start.init is not None else ""
    select_trainable(model, plan)
    model.image_encoder.backbone.set_training_policy(frozen_stages=config.frozen_stages, norm_eval=config.norm_eval)
    trained_names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trained_names:
        raise ConfigError(f"strategy '{plan.name}' with frozen_stages {config.frozen_stages} leaves nothing to train")
    return ModelSetup(model, model_config, grid, taxonomy, trained_names, backbone_from, init_report)


def _grid_and_taxonomy(paths: list[str]) -> tuple[VoxelGrid, Taxonomy]:
    probe = open_occ_dataset(paths)
    try:
        return probe.grid, probe.taxonomy
    finally:
        probe.close()


def _model_config(start: Start, grid: VoxelGrid, taxonomy: Taxonomy) -> ModelConfig:
    """A resumed run's own model; the --init model on this data's grid and classes; or a new one."""
    config, plan = start.config, start.plan
    if start.resume is not None:
        return ModelConfig.from_dict(start.resume["model_config"])
    if start.init is not None:
        return adapt_model_config(ModelConfig.from_dict(start.init["model_config"]), grid=grid, taxonomy=taxonomy,
                                  arrangement=plan.arrangement, offboard=plan.offboard,
                                  overrides=config.model_overrides)
    return make_model_config(config.model, config.preset, grid=grid, taxonomy=taxonomy, arrangement=plan.arrangement,
                             offboard=plan.offboard, overrides=config.model_overrides)


def _init_backbone(model: OccupancyModel, config: TrainConfig, *, init_state: Checkpoint | None,
                   resume_state: Checkpoint | None, is_main: bool) -> str:
    """Load --backbone-weights into a model trained from scratch; returns where its backbone comes
    from (for metrics.jsonl), and says once when that is a random initialisation."""
    if resume_state is not None:
        return f"resumed from {config.out}"
    if init_state is not None:
        return f"from --init {config.init}"
    if config.backbone_weights:
        report = model.load_backbone_weights(config.backbone_weights)
        where = f" under '{report.prefix}'" if report.prefix else ""
        return f"{config.backbone_weights}: {report.loaded} tensors{where}, {len(report.skipped)} other keys left out"
    if is_main:
        warnings.warn("the image backbone starts from a random initialisation (no --backbone-weights); the paper "
                      "starts from ImageNet / detection weights (docs/training.md, 'Backbone weights')")
    return "random initialisation"


def _load_init(model: OccupancyModel, init: Checkpoint, where: str) -> str:
    """The --init weights that fit; returns what was loaded, for metrics.jsonl."""
    loaded, fresh = _load_matching(model, init["model"], where)
    if init["train_config"].get("stage") == "pretrain":
        model.reset_semantic_head()  # a new semantic head (Fig. 4); pre-training never trained it
    return f"loaded {loaded} tensors from {where}; new: {len(fresh)}"


# -- 3. data: the main set, S+B's pre-training stream, validation, the loss weights -----------------------------
def setup_data(start: Start, built: ModelSetup, dist_: Distributed) -> DataSetup:
    """This rank's loaders, the loss weights counted on the main set, and whether LiDAR depth supervises."""
    config, plan, model_config = start.config, start.plan, built.config
    per_rank_batch = config.batch_size // dist_.world_size
    # LiDAR depth supervision of the Lift-Splat depth distribution (the stride it lifts).
    supervise_depth = model_config.uses_lift_splat and config.depth_loss_weight > 0
    depth_stride = model_config.feature_strides[0] if supervise_depth else None
    train_set = _train_set(config, model_config, depth_stride)
    loader, sampler = _make_loader(train_set, batch_size=per_rank_batch, dist_=dist_, seed=config.seed,
                                   workers=config.workers)
    steps_per_epoch = sampler.samples_per_epoch // per_rank_batch
    if steps_per_epoch == 0:
        raise DataError(f"{train_set.paths[0]}: {len(train_set)} frames are fewer than one batch of "
                        f"{config.batch_size}")
    class_weights = _class_weights(config, plan, model_config)
    pos_weight = _pos_weight(config, plan, model_config)
    pre_set = _pretrain_set(config, model_config, depth_stride, built.grid) if plan.pretrain_batches else None
    pretrain_stream = None
    if pre_set is not None:
        pre_loader, _ = _make_loader(pre_set, batch_size=per_rank_batch, dist_=dist_, seed=config.seed + 1,
                                     workers=config.workers)
        pretrain_stream = CyclingLoader(pre_loader, per_rank_batch)
    if depth_stride and not _has_points([train_set] + ([pre_set] if pre_set is not None else []), dist_.is_main):
        depth_stride = None  # nothing to supervise: no depth term at all
    val_loader = _val_loader(config, model_config, per_rank_batch) if config.val_data and dist_.is_main else None
    return DataSetup(loader, sampler, per_rank_batch, steps_per_epoch, pretrain_stream, val_loader, class_weights,
                     pos_weight, depth_stride)


def _train_set(config: TrainConfig, model_config: ModelConfig, depth_stride: int | None) -> OccTrainDataset:
    data_config = DataConfig(image_hw=tuple(model_config.image_size), augment=config.augment, seed=config.seed,
                             need_semantics=config.stage == "finetune", depth_stride=depth_stride)
    train_set = OccTrainDataset(main_data(config), data_config)
    if config.use_camera_mask:
        train_set.require_camera_mask()
    return train_set


def _pretrain_set(config: TrainConfig, model_config: ModelConfig, depth_stride: int | None,
                  grid: VoxelGrid) -> OccTrainDataset:
    """S+B's pre-training binary frames, on the grid of the semantic data."""
    pre_set = OccTrainDataset(config.pretrain_data, DataConfig(image_hw=tuple(model_config.image_size),
                                                                 augment=config.augment, seed=config.seed + 1,
                                                                 depth_stride=depth_stride))
    if not pre_set.grid.same_geometry(grid):
        raise DataError(f"{config.pretrain_data[0]}: grid {pre_set.grid.describe()} differs from the semantic "
                        f"data's {grid.describe()}")
    if config.use_camera_mask:
        pre_set.require_camera_mask()  # one mask policy for every binary loss of the run
    return pre_set


def _val_loader(config: TrainConfig, model_config: ModelConfig, batch_size: int) -> DataLoader:
    val_set = OccTrainDataset(config.val_data, DataConfig(image_hw=tuple(model_config.image_size), augment=False))
    if config.use_camera_mask:
        val_set.require_camera_mask()
    return DataLoader(val_set, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=min(config.workers, 2))


def _class_weights(config: TrainConfig, plan: TrainingPlan, model_config: ModelConfig) -> torch.Tensor | None:
    """(K,) weights of the focal loss, from how often each class occurs in the main set (class_balance > 0)."""
    if not (plan.semantic_loss and config.class_balance > 0):
        return None
    counts = count_labels(main_data(config), model_config.num_classes, model_config.free_index,
                          use_camera_mask=config.use_camera_mask)
    return torch.from_numpy(weights_from_counts(counts, config.class_balance))


def _pos_weight(config: TrainConfig, plan: TrainingPlan, model_config: ModelConfig) -> float | None:
    """The BCE's weight of occupied voxels, from free / occupied in the main set (binary_balance > 0)."""
    if not ((plan.binary_loss or plan.pretrain_batches) and config.binary_balance > 0):
        return None
    return binary_pos_weight(main_data(config), model_config.binary_shape, model_config.free_index,
                             config.binary_balance, use_camera_mask=config.use_camera_mask)


def _has_points(datasets: list[OccTrainDataset], is_main: bool) -> bool:
    """Whether any file of ``datasets`` has LiDAR points for depth supervision; names (once) those without."""
    files = [path for dataset in datasets for path in dataset.paths]
    without = [path for dataset in datasets for path in dataset.files_without_points()]
    if without and is_main:
        warnings.warn(f"{', '.join(without)}: no LiDAR points, so no depth supervision from these frames "
                      "(b2s convert keeps points unless --no-points; b2s build-binary needs --points)")
    return len(without) < len(files)


# -- 4. devices, DDP, optimiser, schedule ---------------------------------------------------------------------
def setup_optimisation(config: TrainConfig, model: torch.nn.Module, steps_per_epoch: int,
                       dist_: Distributed) -> Optimisation:
    """The model on its device (in DDP with several processes), AdamW over what it trains, the schedule."""
    model = _placed(model, config, dist_)
    # Fine-tuning: find_unused_parameters guards against a batch in which the sparse transformer
    # gets no query (nothing predicted occupied yet) and so its parameters no gradient.
    ddp_model = DistributedDataParallel(model, device_ids=[dist_.local_rank] if dist_.device.type == "cuda" else None,
                                        find_unused_parameters=config.stage == "finetune") if dist_.enabled else model
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on norms and biases (1-D tensors), as is usual for AdamW.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr,
                                  foreach=True)  # bitwise the for-loop update, ~1 % of a CPU step faster
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps=total_steps, warmup_steps=config.warmup_steps, schedule=config.schedule,
        min_ratio=config.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and dist_.device.type == "cuda")
    return Optimisation(model, ddp_model, params, optimizer, scheduler, scaler, total_steps)


def _placed(model: torch.nn.Module, config: TrainConfig, dist_: Distributed) -> torch.nn.Module:
    """The model on this rank's device, with SyncBatchNorm when asked (and possible)."""
    model.to(dist_.device)
    if dist_.device.type == "cpu":
        model.use_channels_last()  # the same numbers, a cheaper CPU step (docs/training.md "Step cost")
    if config.sync_bn and dist_.enabled:
        if dist_.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif dist_.is_main:
            warnings.warn("SyncBatchNorm needs CUDA; keeping per-process BatchNorm on CPU")
    return model


# -- 5. restore: where training stands ------------------------------------------------------------------------
def restore(start: Start, opt: Optimisation, data: DataSetup, dist_: Distributed) -> RunState:
    """A resumed run continues its weights, optimiser, schedule, random streams and S+B stream exactly;
    a new run starts each rank on its own random stream."""
    if start.resume is not None:
        state = _restored_state(start.resume, opt, dist_, start.out / CHECKPOINT_NAME)
    else:
        state = RunState()
        _seed_everything(start.config.seed + dist_.rank)  # per-rank streams (dropout, query sampling)
    if data.pretrain_stream is not None:
        data.pretrain_stream.restore(state.pretrain_batches)
    return state


def _restored_state(resume: Checkpoint, opt: Optimisation, dist_: Distributed, ckpt_path: Path) -> RunState:
    opt.model.load_state_dict(resume["model"])
    opt.optimizer.load_state_dict(resume["optimizer"])
    opt.scheduler.load_state_dict(resume["scheduler"])
    opt.scaler.load_state_dict(resume["scaler"])
    progress = resume["progress"]
    state = RunState(progress["step"], progress["epoch"], progress["batch_in_epoch"], progress["pretrain_batches"],
                     dict(resume.get("metrics") or {}))
    rng_states = resume["rng"]
    if len(rng_states) != dist_.world_size:
        raise CheckpointError(f"{ckpt_path}: saved by {len(rng_states)} processes; resume with the same --gpus "
                              f"for an exact continuation (got {dist_.world_size})")
    _set_rng_state(rng_states[dist_.rank], dist_.device)
    return state


def open_log(start: Start, state: RunState, dist_: Distributed) -> MetricsLog:
    """metrics.jsonl (and the CSV / TensorBoard logs) on rank 0, and the run's config.yaml beside them."""
    # A run killed after its last checkpoint redoes the steps since: their first records go, so that
    # every step is logged once (b2s_core.train.logging).
    log = MetricsLog(start.out, enabled=dist_.is_main, resumed_at=state.step if start.resume is not None else None)
    if dist_.is_main:
        start.out.mkdir(parents=True, exist_ok=True)
        start.config.save_yaml(start.out / "config.yaml")
    return log


def log_start(run: Run) -> None:
    """One 'info' record per start of the run: what trains, from what, on which devices, with which weights."""
    built, data = run.built, run.data
    run.log.log("info", {"step": run.state.step, "plan": run.plan.name, "backbone": built.backbone_from,
                         "trained_tensors": len(built.trained_names),
                         "trained_parameters": sum(p.numel() for p in run.opt.params),
                         "world_size": run.dist.world_size, "device": str(run.dist.device), "init": built.init_report,
                         "model_config": str(built.config.to_dict()),
                         "class_weights": None if data.class_weights is None else
                         [round(w, 4) for w in data.class_weights.tolist()],
                         "binary_pos_weight": None if data.pos_weight is None else round(data.pos_weight, 3)})


# -- the loop -------------------------------------------------------------------------------------------------
def train_loop(run: Run, show_progress: bool) -> bool:
    """Optimiser steps, each followed by its log record, checkpoint and stop check; validation and the
    checkpoint at epoch ends. Returns False when stop_after_steps stopped the run early."""
    config, state, data, total_steps = run.config, run.state, run.data, run.opt.total_steps
    window = LogWindow(dropped=torch.zeros((), dtype=torch.long, device=run.dist.device))
    progress_bar = _Progress(total_steps, enabled=run.dist.is_main and show_progress, done=state.step,
                             label=f"{run.plan.name} {run.built.config.variant}")
    run.opt.ddp_model.train()
    with progress_bar:
        while state.epoch < config.epochs and state.step < total_steps:
            data.sampler.start_at(state.epoch, state.batch_in_epoch * data.per_rank_batch)
            for batch in data.loader:
                if state.step >= total_steps:
                    break
                lr = run.opt.optimizer.param_groups[0]["lr"]  # the LambdaLR has set this step's learning rate
                losses = train_step(run, batch)
                state.step += 1
                state.batch_in_epoch += 1
                window.add(losses, config.batch_size)
                is_log_step = state.step % config.log_every_steps == 0 or state.step == total_steps
                progress_bar.update(state.step, log_step(run, window, lr, losses) if is_log_step else None)
                if config.ckpt_every_steps and state.step % config.ckpt_every_steps == 0:
                    save(run, finished=False)
                if config.stop_after_steps is not None and state.step >= config.stop_after_steps:
                    return False
            if state.batch_in_epoch >= data.steps_per_epoch:  # the epoch ran to its end
                end_epoch(run)
            elif state.step >= total_steps:
                break
    return True


def end_epoch(run: Run) -> None:
    """The epoch ran to its end: validation and the epoch's checkpoint when they are due."""
    state, config = run.state, run.config
    state.epoch += 1
    state.batch_in_epoch = 0
    if state.epoch % config.val_every_epochs == 0 or state.epoch == config.epochs:
        run_validation(run)
    if state.epoch % config.ckpt_every_epochs == 0 and state.epoch < config.epochs:
        save(run, finished=False)  # the last epoch's checkpoint is the final one, written after the loop


@dataclass
class StepLosses:
    """What one optimiser step leaves for the log."""

    loss: torch.Tensor  # () the main pass's loss
    parts: dict[str, torch.Tensor]  # () each weighted loss term: S+B's extra pass first, then the main pass
    grad_norm: torch.Tensor  # () the gradient norm before clipping; 0 without clipping
    dropped: torch.Tensor | None  # (B,) occupied voxels the sparse query cap left out; None for dense models


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> StepLosses:
    """One optimiser step: S+B's extra binary pass, the main pass, clip, step."""
    device = run.dist.device
    batch = _on_device(batch, device)
    targets = loss_targets(batch, use_camera_mask=run.config.use_camera_mask)  # inputs stay unmasked
    parts: dict[str, torch.Tensor] = {}
    if run.data.pretrain_stream is not None:
        _extra_binary_backward(run, parts)
    with autocast_context(run.config.amp, device):
        out = _forward(run, run.opt.ddp_model, batch, up_to_binary=run.plan.up_to_binary)
        loss = _main_loss(run, out, batch, targets, parts)
    run.opt.scaler.scale(loss).backward()
    return StepLosses(loss, parts, _optimiser_step(run), out.num_dropped_queries)


def _extra_binary_backward(run: Run, parts: dict[str, torch.Tensor]) -> None:
    """S+B: the extra pre-training batch goes through the binary path only, under no_sync so that DDP
    all-reduces once, in the main pass after it, the sum of both passes' gradients (every trained
    parameter is used by that main pass)."""
    config, device, ddp_model = run.config, run.dist.device, run.opt.ddp_model
    extra = _on_device(run.data.pretrain_stream.next(), device)
    extra_targets = loss_targets(extra, use_camera_mask=config.use_camera_mask)
    with ddp_model.no_sync() if run.dist.enabled else contextlib.nullcontext():
        with autocast_context(config.amp, device):
            out = _forward(run, ddp_model, extra, up_to_binary=True)
            loss = config.binary_loss_weight * binary_loss(out.binary_logits, extra_targets["binary"],
                                                           run.data.pos_weight)
            parts["binary_b"] = loss.detach()
            if run.data.depth_stride:
                depth = config.depth_loss_weight * depth_loss(out.depth_logits, extra, run.built.config.depth_bins)
                parts["depth_b"] = depth.detach()
                loss = loss + depth
        run.opt.scaler.scale(loss).backward()


def _main_loss(run: Run, out: ModelOutput, batch: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plan's weighted losses of the main batch, each also kept in ``parts``; () tensor."""
    config, data = run.config, run.data
    loss = torch.zeros((), device=run.dist.device)
    if run.plan.binary_loss:
        parts["binary"] = config.binary_loss_weight * binary_loss(out.binary_logits, targets["binary"], data.pos_weight)
        loss = loss + parts["binary"]
    if run.plan.semantic_loss:
        parts["semantic"] = config.semantic_loss_weight * semantic_loss(out.semantic_logits, targets,
                                                                        class_weights=data.class_weights)
        loss = loss + parts["semantic"]
    if data.depth_stride:
        parts["depth"] = config.depth_loss_weight * depth_loss(out.depth_logits, batch, run.built.config.depth_bins)
        loss = loss + parts["depth"]
    return loss


def _optimiser_step(run: Run) -> torch.Tensor:
    """Clip the unscaled gradients, step the optimiser and the schedule; returns the gradient norm."""
    opt, grad_clip = run.opt, run.config.grad_clip
    opt.scaler.unscale_(opt.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.params, grad_clip) if grad_clip > 0 else torch.zeros(())
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scheduler.step()
    return grad_norm


def _forward(run: Run, model: torch.nn.Module, batch: dict[str, torch.Tensor], *, up_to_binary: bool) -> ModelOutput:
    return run_model(model, batch, up_to_binary=up_to_binary, offboard=run.plan.offboard,
                     binary_shape=run.built.config.binary_shape)


def _on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class LogWindow:
    """What the next train record sums over: the steps since the last one."""

    dropped: torch.Tensor  # () long: occupied voxels the sparse query cap (ModelConfig.max_sparse_queries) left out
    samples: int = 0
    tic: float = field(default_factory=time.perf_counter)
    warned_dropped: bool = False  # the run warns about left-out voxels once

    def add(self, losses: StepLosses, batch_size: int) -> None:
        if losses.dropped is not None:
            self.dropped += losses.dropped.detach().sum()
        self.samples += batch_size

    def restart(self) -> None:
        self.tic, self.samples = time.perf_counter(), 0
        self.dropped.zero_()


def log_step(run: Run, window: LogWindow, lr: float, losses: StepLosses) -> float:
    """The train record of this step, its losses averaged over ranks (one small all-reduce, only on log
    steps); returns the loss for the progress bar."""
    device = run.dist.device
    values = torch.stack([losses.loss.detach(), *(v.detach() for v in losses.parts.values()),
                          losses.grad_norm.detach().to(device).float()])
    if run.dist.enabled:
        dist.all_reduce(values)
        values /= run.dist.world_size
        dist.all_reduce(window.dropped)  # a count: summed over ranks
    elapsed = time.perf_counter() - window.tic
    record = {"step": run.state.step, "epoch": run.state.epoch, "lr": lr, "loss": float(values[0])}
    record.update({k: float(v) for k, v in zip(losses.parts, values[1:-1])})
    record["grad_norm"] = float(values[-1])
    record["samples_per_s"] = window.samples / max(elapsed, 1e-9)
    if run.built.config.is_sparse:
        record["dropped_queries"] = int(window.dropped)
    run.log.log("train", record)
    if record.get("dropped_queries") and not window.warned_dropped and run.dist.is_main:
        warnings.warn(f"the sparse query cap ({run.built.config.max_sparse_queries} per sample) left out "
                      f"{record['dropped_queries']} occupied voxels in the last {run.config.log_every_steps} "
                      "steps; they get no sparse refinement (raise max_sparse_queries with "
                      "--set model_overrides=...; counts per log step in metrics.jsonl, 'dropped_queries')")
        window.warned_dropped = True
    window.restart()
    return record["loss"]


def run_validation(run: Run) -> None:
    """Validation on rank 0 (the others wait): its metrics go into the run state and metrics.jsonl."""
    if run.data.val_loader is not None:
        with autocast_context(run.config.amp, run.dist.device):
            run.state.metrics = validate(
                run.opt.model, run.data.val_loader, device=run.dist.device, taxonomy=run.built.taxonomy,
                forward=lambda m, b: _forward(run, m, b, up_to_binary=run.plan.up_to_binary),
                use_camera_mask=run.config.use_camera_mask)
        run.state.metrics["step"] = run.state.step
        run.log.log("val", {"epoch": run.state.epoch, **run.state.metrics})
    if run.dist.enabled:
        dist.barrier()


def save(run: Run, finished: bool) -> Path:
    """Write the checkpoint (rank 0): everything a resumed run needs to continue exactly."""
    # Every rank's RNG state, so that each continues its own stream on resume.
    rng = [None] * run.dist.world_size
    if run.dist.enabled:
        dist.all_gather_object(rng, _rng_state(run.dist.device))
    else:
        rng = [_rng_state(run.dist.device)]
    if run.dist.is_main:
        save_checkpoint(run.checkpoint_path, _checkpoint(run, finished, rng))
    if run.dist.enabled:
        dist.barrier()
    return run.checkpoint_path


def _checkpoint(run: Run, finished: bool, rng: list[dict[str, Any]]) -> Checkpoint:
    state, opt, stream = run.state, run.opt, run.data.pretrain_stream
    return {
        "model_variant": run.built.config.variant,
        "model_config": run.built.config.to_dict(),
        "train_config": run.config.to_dict(),
        "model": opt.model.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict(),
        "progress": {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                     "pretrain_batches": stream.batches_done if stream is not None else 0, "finished": finished},
        "rng": rng,
        "metrics": state.metrics,
    }


# -- what a resumed run may change ----------------------------------------------------------------------
# What a resuming caller may change: the length of the run and how it is run, not what it learns.
RESUME_MAY_CHANGE = ("epochs", "max_steps", "stop_after_steps", "workers", "log_every_steps", "ckpt_every_steps",
                     "ckpt_every_epochs", "val_every_epochs", "device")
# Never compared: 'out' names the run, 'resume' asks for it, 'model' has its own check (and message).
_NOT_COMPARED = ("out", "resume", "model")
_PATH_SETTINGS = (*DATA_FIELDS, "init", "backbone_weights")


def _explicit_changes(given: TrainConfig, saved: TrainConfig, where: Path) -> dict[str, Any]:
    """The settings a resuming caller changed that it may change (RESUME_MAY_CHANGE); any other
    setting given differently from the saved run is refused, naming each.

    A setting counts as given when it differs from its default: the commands leave an unset option
    at None and resolve_config fills in the default, so an option given at its default value cannot
    be told from an unset one (the saved value is kept). 'stage' is always compared: the command that
    resumes a run must be the one that started it.
    """
    changes: dict[str, Any] = {"stop_after_steps": given.stop_after_steps}  # never inherited: it ended the last part
    refused: list[str] = []
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        value, theirs = getattr(given, name), getattr(saved, name)
        if name in _NOT_COMPARED or name == "stop_after_steps" or _same_setting(name, value, theirs):
            continue
        if name == "preset" and saved.init:
            continue  # a run started from --init took the init's preset, whatever the caller gave
        if name != "stage" and value == _default_of(name, given):
            continue
        if name in RESUME_MAY_CHANGE:
            changes[name] = value
        else:
            refused.append(f"{name} (run {theirs!r}, given {value!r})")
    if refused:
        raise ConfigError(f"{where}: --resume continues the run with its own settings; these differ from it: "
                          f"{', '.join(refused)}. Leave them out, or start a new run with another --out")
    return changes


def _default_of(name: str, config: TrainConfig) -> Any:
    if name == "epochs":
        return TrainConfig.default_epochs(config.offboard)
    spec = TrainConfig.__dataclass_fields__[name]
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def _same_setting(name: str, a: Any, b: Any) -> bool:
    """Equal values; files compare by where they resolve (a relative and an absolute path may name the same one)."""
    if a == b:
        return True
    if name not in _PATH_SETTINGS or a is None or b is None:
        return False
    return _resolved(a) == _resolved(b)


def _resolved(paths: str | list[str]) -> list[Path]:
    return [Path(p).resolve() for p in ([paths] if isinstance(paths, str) else paths)]


class _Progress:
    """A rich progress bar on the main process (steps, loss); silent elsewhere."""

    def __init__(self, total: int, *, enabled: bool, done: int, label: str):
        self.enabled = enabled
        self.total, self.done, self.label = total, done, label
        self._progress = None

    def __enter__(self):
        if self.enabled:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.done, loss="-")
        return self

    def update(self, step: int, loss: float | None) -> None:
        if self._progress is not None:
            fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
            self._progress.update(self._task, completed=step, **fields)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
