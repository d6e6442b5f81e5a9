"""The training loop of ``b2s pretrain`` and ``b2s finetune``: one function, blocks in a fixed order.

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
from torch.nn.parallel import DistributedDataParallel

from b2s_core.data.dataset import DataConfig, DataError, OccTrainDataset, collate, open_occ_dataset
from b2s_core.data.sampler import CyclingLoader, EpochSampler
from b2s_core.train.class_weights import binary_pos_weight, count_labels, weights_from_counts
from b2s_core.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from b2s_core.train.config import DATA_FIELDS, ConfigError, TrainConfig
from b2s_core.train.logging import MetricsLog
from b2s_core.train.model_api import adapt_model_config, make_model_config, run_model
from b2s_core.train.objectives import binary_loss, depth_loss, loss_targets, semantic_loss
from b2s_core.train.strategies import plan_for, select_trainable
from b2s_core.train.slurm import slurm_ranks
from b2s_core.train.validate import validate

CHECKPOINT_NAME = "checkpoint.pt"


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


def _make_loader(dataset, *, batch_size: int, dist_: Distributed, seed: int, shuffle: bool, workers: int, drop_last: bool):
    sampler = EpochSampler(len(dataset), num_replicas=dist_.world_size, rank=dist_.rank, seed=seed, shuffle=shuffle,
                           drop_last=drop_last)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=drop_last,
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
    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME

    # 1. Where we start from: a resumable checkpoint of this run, an initial model, or nothing.
    resume_state = None
    if config.resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint in {out})")
        resume_state = read_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(resume_state["train_config"], where=f"{ckpt_path} train_config")
        if config.model not in (None, saved.model):
            raise CheckpointError(f"{ckpt_path}: run trains a '{saved.model}' model, not '{config.model}'")
        # The run's own settings, except how long and how it runs (e.g. epochs); other changes are refused.
        config = TrainConfig.from_dict({**saved.to_dict(), **_explicit_changes(config, saved, ckpt_path), "resume": True})
    init_state = read_checkpoint(config.init) if config.stage == "finetune" and config.init and resume_state is None else None
    if init_state is not None:
        init_variant = init_state.get("model_variant")
        if config.model not in (None, init_variant):
            raise CheckpointError(f"{config.init}: checkpoint holds a '{init_variant}' model, not '{config.model}'")
        config = TrainConfig.from_dict({**config.to_dict(), "model": init_variant,
                                        "preset": init_state["train_config"].get("preset", config.preset)})
    if config.model is None:
        raise ConfigError("no model given: use --model (or --init CKPT to fine-tune a trained one)")
    # After the resume above: a resumed run's batch size is its saved one, not the default the caller left.
    if config.batch_size % dist_.world_size:
        raise ConfigError(f"batch size {config.batch_size} does not divide over {dist_.world_size} processes")
    per_rank_batch = config.batch_size // dist_.world_size
    if config.amp != "none" and dist_.device.type != "cuda" and dist_.is_main:
        warnings.warn(f"--amp {config.amp} applies on CUDA only; training in float32 on {dist_.device}")
    plan = plan_for(config, config.model)

    # 2. Data: the main set (binary for pre-training, S [+ pseudo-labels] for fine-tuning).
    from b2s_core.models import ModelConfig, build_model

    main_paths = config.data if config.stage == "pretrain" else config.semantic_data + config.pseudo_data
    probe = open_occ_dataset(main_paths)  # grid and taxonomy first: they size the model
    grid, taxonomy = probe.grid, probe.taxonomy
    probe.close()

    # 3. Model: built identically on every rank from the plain seed.
    _seed_everything(config.seed)
    if resume_state is not None:
        model_config = ModelConfig.from_dict(resume_state["model_config"])
    elif init_state is not None:
        model_config = adapt_model_config(ModelConfig.from_dict(init_state["model_config"]), grid=grid, taxonomy=taxonomy,
                                          arrangement=plan.arrangement, offboard=plan.offboard,
                                          overrides=config.model_overrides)
    else:
        model_config = make_model_config(config.model, config.preset, grid=grid, taxonomy=taxonomy,
                                         arrangement=plan.arrangement, offboard=plan.offboard,
                                         overrides=config.model_overrides)
    if not model_config.output_grid.same_geometry(grid):
        raise DataError(f"{main_paths[0]}: data grid {grid.describe()} differs from the model's "
                        f"{model_config.output_grid.describe()}")
    model = build_model(model_config)
    backbone_from = _init_backbone(model, config, init_state=init_state, resume_state=resume_state,
                                   is_main=dist_.is_main)
    init_report = ""
    if init_state is not None:
        loaded, fresh = _load_matching(model, init_state["model"], str(config.init))
        if init_state["train_config"].get("stage") == "pretrain":
            model.reset_semantic_head()  # a new semantic head (Fig. 4); pre-training never trained it
        init_report = f"loaded {loaded} tensors from {config.init}; new: {len(fresh)}"
    select_trainable(model, plan)
    model.image_encoder.backbone.set_training_policy(frozen_stages=config.frozen_stages, norm_eval=config.norm_eval)
    trained_names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trained_names:
        raise ConfigError(f"strategy '{plan.name}' with frozen_stages {config.frozen_stages} leaves nothing to train")

    # LiDAR depth supervision of the Lift-Splat depth distribution (the stride it lifts).
    depth_stride = model_config.feature_strides[0] if model_config.uses_lift_splat and config.depth_loss_weight > 0 else None
    depth_bins = model_config.depth_bins
    data_config = DataConfig(image_hw=tuple(model_config.image_size), augment=config.augment, seed=config.seed,
                             need_semantics=config.stage == "finetune", depth_stride=depth_stride)
    train_set = OccTrainDataset(main_paths, data_config)
    if config.use_camera_mask:
        train_set.require_camera_mask()
    loader, sampler = _make_loader(train_set, batch_size=per_rank_batch, dist_=dist_, seed=config.seed, shuffle=True,
                                   workers=config.workers, drop_last=True)
    steps_per_epoch = sampler.samples_per_epoch // per_rank_batch
    if steps_per_epoch == 0:
        raise DataError(f"{main_paths[0]}: {len(train_set)} frames are fewer than one batch of {config.batch_size}")
    class_weights = None  # (K,) weights of the focal loss; the same on every rank (same files, same frames)
    if plan.semantic_loss and config.class_balance > 0:
        counts = count_labels(main_paths, model_config.num_classes, model_config.free_index,
                              use_camera_mask=config.use_camera_mask)
        class_weights = torch.from_numpy(weights_from_counts(counts, config.class_balance))
    pos_weight = None  # the BCE's weight of occupied voxels; the same for the S+B extra batch
    if (plan.binary_loss or plan.pretrain_batches) and config.binary_balance > 0:
        pos_weight = binary_pos_weight(main_paths, model_config.binary_shape, model_config.free_index,
                                       config.binary_balance, use_camera_mask=config.use_camera_mask)
    pretrain_stream = None
    if plan.pretrain_batches:
        pre_set = OccTrainDataset(config.pretrain_data, DataConfig(image_hw=tuple(model_config.image_size),
                                                                     augment=config.augment, seed=config.seed + 1,
                                                                     depth_stride=depth_stride))
        if not pre_set.grid.same_geometry(grid):
            raise DataError(f"{config.pretrain_data[0]}: grid {pre_set.grid.describe()} differs from the semantic "
                            f"data's {grid.describe()}")
        if config.use_camera_mask:
            pre_set.require_camera_mask()  # one mask policy for every binary loss of the run
        pre_loader, _ = _make_loader(pre_set, batch_size=per_rank_batch, dist_=dist_, seed=config.seed + 1, shuffle=True,
                                     workers=config.workers, drop_last=True)
        pretrain_stream = CyclingLoader(pre_loader, per_rank_batch)
    if depth_stride:
        files = train_set.paths + (pre_set.paths if plan.pretrain_batches else [])
        without = train_set.files_without_points() + (pre_set.files_without_points() if plan.pretrain_batches else [])
        if without and dist_.is_main:
            warnings.warn(f"{', '.join(without)}: no LiDAR points, so no depth supervision from these frames "
                          "(b2s convert keeps points unless --no-points; b2s build-binary needs --points)")
        if len(without) == len(files):
            depth_stride = None  # nothing to supervise: no depth term at all
    val_loader = None
    if config.val_data and dist_.is_main:
        val_set = OccTrainDataset(config.val_data, DataConfig(image_hw=tuple(model_config.image_size), augment=False))
        if config.use_camera_mask:
            val_set.require_camera_mask()
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=per_rank_batch, shuffle=False, collate_fn=collate,
                                                 num_workers=min(config.workers, 2))

    # 4. Devices, DDP, optimiser, schedule.
    model.to(dist_.device)
    if config.sync_bn and dist_.enabled:
        if dist_.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif dist_.is_main:
            warnings.warn("SyncBatchNorm needs CUDA; keeping per-process BatchNorm on CPU")
    # Fine-tuning: find_unused_parameters guards against a batch in which the sparse transformer
    # gets no query (nothing predicted occupied yet) and so its parameters no gradient.
    ddp_model = DistributedDataParallel(model, device_ids=[dist_.local_rank] if dist_.device.type == "cuda" else None,
                                        find_unused_parameters=config.stage == "finetune") if dist_.enabled else model
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on norms and biases (1-D tensors), as is usual for AdamW.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps=total_steps, warmup_steps=config.warmup_steps, schedule=config.schedule, min_ratio=config.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and dist_.device.type == "cuda")

    state = RunState()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        progress = resume_state["progress"]
        state = RunState(progress["step"], progress["epoch"], progress["batch_in_epoch"], progress["pretrain_batches"],
                         dict(resume_state.get("metrics") or {}))
        rng_states = resume_state["rng"]
        if len(rng_states) != dist_.world_size:
            raise CheckpointError(f"{ckpt_path}: saved by {len(rng_states)} processes; resume with the same --gpus "
                                  f"for an exact continuation (got {dist_.world_size})")
        _set_rng_state(rng_states[dist_.rank], dist_.device)
    else:
        _seed_everything(config.seed + dist_.rank)  # per-rank streams (dropout, query sampling)
    if pretrain_stream is not None:
        pretrain_stream.restore(state.pretrain_batches)

    # A run killed after its last checkpoint redoes the steps since: their first records go, so that
    # every step is logged once (b2s_core.train.logging).
    log = MetricsLog(out, enabled=dist_.is_main, resumed_at=state.step if resume_state is not None else None)
    if dist_.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save_yaml(out / "config.yaml")
        log.log("info", {"step": state.step, "plan": plan.name, "backbone": backbone_from,
                         "trained_tensors": len(trained_names),
                         "trained_parameters": sum(p.numel() for p in params), "world_size": dist_.world_size,
                         "device": str(dist_.device), "init": init_report, "model_config": str(model_config.to_dict()),
                         "class_weights": None if class_weights is None else [round(w, 4) for w in class_weights.tolist()],
                         "binary_pos_weight": None if pos_weight is None else round(pos_weight, 3)})

    def forward(m, batch, *, up_to_binary: bool):
        return run_model(m, batch, up_to_binary=up_to_binary, offboard=plan.offboard, binary_shape=model_config.binary_shape)

    def save(finished: bool) -> Path:
        # Every rank's RNG state, so that each continues its own stream on resume.
        rng = [None] * dist_.world_size
        if dist_.enabled:
            dist.all_gather_object(rng, _rng_state(dist_.device))
        else:
            rng = [_rng_state(dist_.device)]
        if dist_.is_main:
            save_checkpoint(ckpt_path, {
                "model_variant": model_config.variant,
                "model_config": model_config.to_dict(),
                "train_config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "progress": {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                             "pretrain_batches": pretrain_stream.batches_done if pretrain_stream else 0,
                             "finished": finished},
                "rng": rng,
                "metrics": state.metrics,
            })
        if dist_.enabled:
            dist.barrier()
        return ckpt_path

    def run_validation() -> None:
        if val_loader is not None:
            with autocast_context(config.amp, dist_.device):
                state.metrics = validate(model, val_loader, forward=lambda m, b: forward(m, b, up_to_binary=plan.up_to_binary),
                                         device=dist_.device, taxonomy=taxonomy, use_camera_mask=config.use_camera_mask)
            state.metrics["step"] = state.step
            log.log("val", {"epoch": state.epoch, **state.metrics})
        if dist_.enabled:
            dist.barrier()

    progress_bar = _Progress(total_steps, enabled=dist_.is_main and show_progress, done=state.step,
                             label=f"{plan.name} {model_config.variant}")
    ddp_model.train()
    stopped_early = False
    tic, samples_since = time.perf_counter(), 0
    # Occupied voxels the sparse query cap (ModelConfig.max_sparse_queries) left out, since the last log.
    dropped_since = torch.zeros((), dtype=torch.long, device=dist_.device)
    warned_dropped = False
    with progress_bar:
        while state.epoch < config.epochs and state.step < total_steps:
            sampler.start_at(state.epoch, state.batch_in_epoch * per_rank_batch)
            for batch in loader:
                if state.step >= total_steps:
                    break
                # -- schedule: the LambdaLR has set this step's learning rate.
                lr = optimizer.param_groups[0]["lr"]
                batch = {k: v.to(dist_.device, non_blocking=True) for k, v in batch.items()}
                targets = loss_targets(batch, use_camera_mask=config.use_camera_mask)  # inputs stay unmasked
                parts: dict[str, torch.Tensor] = {}

                # -- steps. S+B first: the extra pre-training batch goes through the binary path only,
                # under no_sync so that DDP all-reduces once, in the full pass below, the sum of both
                # passes' gradients (every trained parameter is used by that full pass).
                if pretrain_stream is not None:
                    extra = {k: v.to(dist_.device, non_blocking=True) for k, v in pretrain_stream.next().items()}
                    extra_targets = loss_targets(extra, use_camera_mask=config.use_camera_mask)
                    sync_off = ddp_model.no_sync() if dist_.enabled else contextlib.nullcontext()
                    with sync_off:
                        with autocast_context(config.amp, dist_.device):
                            out_b = forward(ddp_model, extra, up_to_binary=True)
                            loss_b = config.binary_loss_weight * binary_loss(out_b.binary_logits,
                                                                             extra_targets["binary"], pos_weight)
                            parts["binary_b"] = loss_b.detach()
                            if depth_stride:
                                depth_b = config.depth_loss_weight * depth_loss(out_b.depth_logits, extra, depth_bins)
                                parts["depth_b"] = depth_b.detach()
                                loss_b = loss_b + depth_b
                        scaler.scale(loss_b).backward()
                with autocast_context(config.amp, dist_.device):
                    out = forward(ddp_model, batch, up_to_binary=plan.up_to_binary)
                    loss = torch.zeros((), device=dist_.device)
                    if plan.binary_loss:
                        parts["binary"] = config.binary_loss_weight * binary_loss(out.binary_logits, targets["binary"],
                                                                                    pos_weight)
                        loss = loss + parts["binary"]
                    if plan.semantic_loss:
                        parts["semantic"] = config.semantic_loss_weight * semantic_loss(out.semantic_logits, targets,
                                                                                        class_weights=class_weights)
                        loss = loss + parts["semantic"]
                    if depth_stride:
                        parts["depth"] = config.depth_loss_weight * depth_loss(out.depth_logits, batch, depth_bins)
                        loss = loss + parts["depth"]
                if out.num_dropped_queries is not None:
                    dropped_since += out.num_dropped_queries.detach().sum()
                scaler.scale(loss).backward()

                # -- clip (on unscaled gradients), then the optimiser step.
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip) if config.grad_clip > 0 \
                    else torch.zeros(())
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1
                samples_since += config.batch_size

                # -- log: losses averaged over ranks (one small all-reduce, only on log steps).
                if state.step % config.log_every_steps == 0 or state.step == total_steps:
                    values = torch.stack([loss.detach(), *(v.detach() for v in parts.values()),
                                          grad_norm.detach().to(dist_.device).float()])
                    if dist_.enabled:
                        dist.all_reduce(values)
                        values /= dist_.world_size
                        dist.all_reduce(dropped_since)  # a count: summed over ranks
                    elapsed = time.perf_counter() - tic
                    record = {"step": state.step, "epoch": state.epoch, "lr": lr, "loss": float(values[0])}
                    record.update({k: float(v) for k, v in zip(parts, values[1:-1])})
                    record["grad_norm"] = float(values[-1])
                    record["samples_per_s"] = samples_since / max(elapsed, 1e-9)
                    if model_config.is_sparse:
                        record["dropped_queries"] = int(dropped_since)
                    log.log("train", record)
                    if record.get("dropped_queries") and not warned_dropped and dist_.is_main:
                        warnings.warn(f"the sparse query cap ({model_config.max_sparse_queries} per sample) left out "
                                      f"{record['dropped_queries']} occupied voxels in the last {config.log_every_steps} "
                                      "steps; they get no sparse refinement (raise max_sparse_queries with "
                                      "--set model_overrides=...; counts per log step in metrics.jsonl, "
                                      "'dropped_queries')")
                        warned_dropped = True
                    progress_bar.update(state.step, record["loss"])
                    tic, samples_since = time.perf_counter(), 0
                    dropped_since.zero_()
                else:
                    progress_bar.update(state.step, None)

                if config.ckpt_every_steps and state.step % config.ckpt_every_steps == 0:
                    save(finished=False)
                if config.stop_after_steps is not None and state.step >= config.stop_after_steps:
                    stopped_early = True
                    break
            if stopped_early:
                break
            if state.batch_in_epoch >= steps_per_epoch:  # the epoch ran to its end
                state.epoch += 1
                state.batch_in_epoch = 0
                if state.epoch % config.val_every_epochs == 0 or state.epoch == config.epochs:
                    run_validation()
                if state.epoch % config.ckpt_every_epochs == 0 and state.epoch < config.epochs:
                    save(finished=False)  # the last epoch's checkpoint is the final one, below
            elif state.step >= total_steps:
                break
    if not stopped_early and val_loader is not None and state.metrics.get("step") != state.step:
        run_validation()
    path = save(finished=not stopped_early)
    log.close()
    return TrainResult(path, state, config, finished=not stopped_early, model=model)


def _init_backbone(model, config: TrainConfig, *, init_state, resume_state, is_main: bool) -> str:
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
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
