"""What one tiny-preset CPU training step costs: the model as built vs the faster paths, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py            # ~4 min on one core
    python benchmarks/bench_train_step.py --extras                     # + the loop-side options below
    python benchmarks/bench_train_step.py --compile                    # + torch.compile (minutes of compiling)

The setting is examples/reproduce/scales.py's default scale, as examples/reproduce/runner.py trains it:
the tiny preset with the scale's model overrides, its miniature grid and batch, six cameras of the scale's
JPEG size, camera-mask losses, ``workers=0`` (loading is on the step's path) and one thread. One step =
load and collate a batch (augmented, a new epoch key each time) + forward + losses + backward + AdamW.
Pre-training runs up to the binary decoder (BCE); fine-tuning the whole model (focal + BCE). Data: toy
frames (b2s_core.data.toy) with boxes, written to a temporary file.

Modes, timed interleaved (every repeat runs each mode for --steps steps, in turn, the order reversed every
other repeat), median and range of samples/s; "x ref" is the median of the per-repeat speed-ups:

    reference      the model as built (the slow reference)
    channels_last  OccupancyModel.use_channels_last(): the same numbers
    --extras:
    +foreach       channels_last and AdamW(foreach=True): the same numbers; the training loop builds the optimiser
    +bf16          channels_last under CPU bf16 autocast: CHANGES the numbers (precision), for comparison only
    --compile:
    +compile       channels_last and torch.compile(model); its compile time is printed apart

"max |dloss| vs ref": each mode's losses against the reference's over the first repeat (same start weights, same
batches: augmentation is seeded per key).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from reproduce.scales import SCALES

from b2s_core.data.dataset import DataConfig, OccTrainDataset, collate
from b2s_core.data.toy import toy_cameras, toy_frames
from b2s_core.grids import get_grid
from b2s_core.models import build_model, model_config
from b2s_core.occfile import OccWriter
from b2s_core.taxonomy import OCC3D
from b2s_core.train.model_api import run_model
from b2s_core.train.objectives import binary_loss, loss_targets, semantic_loss

YAWS = (0.0, 55.0, -55.0, 180.0, 110.0, -110.0)  # six cameras, as the synthetic world's nuScenes logs
FRAMES = 8


def write_frames(path: Path, grid_spec: str, image_hw: tuple[int, int]) -> Path:
    """FRAMES toy frames with semantics and mask_camera, six JPEG cameras of ``image_hw`` (H, W)."""
    cameras = toy_cameras(image_hw, yaws_deg=YAWS)
    with OccWriter(path, grid=get_grid(grid_spec), taxonomy=OCC3D, source="toy", command="bench_train_step",
                   camera_names=[c.name for c in cameras]) as writer:
        frames = toy_frames(FRAMES, grid=get_grid(grid_spec), image_hw=image_hw, boxes=30, box_size=(2, 8),
                            mask_camera=True)
        for frame in frames:
            six = toy_cameras(image_hw, yaws_deg=YAWS)
            for k, camera in enumerate(six):  # toy frames paint two cameras: the six re-use them
                camera.image_bytes = frame.cameras[k % 2].image_bytes
            frame.cameras = six
        writer.write_scene("bench", frames)
    return path


@dataclass
class Mode:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    bf16: bool = False


def make_modes(reference: torch.nn.Module, extras: bool, compile_model: bool) -> list[Mode]:
    """Every mode starts from a copy of the same weights."""
    def adamw(model: torch.nn.Module, **options) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3, **options)

    fast = copy.deepcopy(reference).use_channels_last()
    modes = [Mode("reference", reference, adamw(reference)), Mode("channels_last", fast, adamw(fast))]
    if extras:
        foreach = copy.deepcopy(reference).use_channels_last()
        modes.append(Mode("+foreach", foreach, adamw(foreach, foreach=True)))
        bf16 = copy.deepcopy(reference).use_channels_last()
        modes.append(Mode("+bf16", bf16, adamw(bf16), bf16=True))
    if compile_model:
        compiled = copy.deepcopy(reference).use_channels_last()
        modes.append(Mode("+compile", torch.compile(compiled), adamw(compiled)))
    return modes


def train_step(mode: Mode, batch: dict[str, torch.Tensor], stage: str, binary_shape) -> float:
    """Forward, the stage's losses, backward, AdamW; returns the loss."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode.bf16 else contextlib.nullcontext()
    with autocast:
        out = run_model(mode.model, batch, up_to_binary=stage == "pretrain", offboard=False, binary_shape=binary_shape)
    targets = loss_targets(batch, use_camera_mask=True)
    loss = binary_loss(out.binary_logits, targets["binary"])
    if stage == "finetune":
        loss = loss + semantic_loss(out.semantic_logits, targets)
    loss.backward()
    mode.optimizer.step()
    mode.optimizer.zero_grad(set_to_none=True)
    return loss.item()


@dataclass
class Timings:
    seconds: dict[str, list[float]]  # mode -> seconds per step, one value per repeat
    losses: dict[str, list[float]]  # mode -> losses of the first repeat's steps
    data_s: list[float]  # loading one batch alone


def time_modes(modes: list[Mode], load, stage: str, binary_shape, args: argparse.Namespace) -> Timings:
    """Every repeat runs each mode for ``args.steps`` steps on the same batches, in turn."""
    timings = Timings({m.name: [] for m in modes}, {}, [])
    for repeat in range(args.repeats):
        epochs = range(1 + repeat * args.steps, 1 + (repeat + 1) * args.steps)
        for epoch in epochs:  # the data path alone: how much of a step it is
            t = time.perf_counter()
            load(epoch)
            timings.data_s.append(time.perf_counter() - t)
        for mode in modes if repeat % 2 == 0 else modes[::-1]:  # ABBA: a drift in the machine's load cancels
            t = time.perf_counter()
            losses = [train_step(mode, load(epoch), stage, binary_shape) for epoch in epochs]
            timings.seconds[mode.name].append((time.perf_counter() - t) / args.steps)
            timings.losses.setdefault(mode.name, losses)
    return timings


def bench_case(data: Path, variant: str, stage: str, args: argparse.Namespace) -> list[dict]:
    scale = SCALES["default"]
    arrangement = "intermediate" if variant.startswith("sparse-") else "multi-head"
    cfg = model_config(variant, scale.preset, grid=get_grid(scale.grid), num_classes=OCC3D.num_labels,
                       free_index=OCC3D.free_index, arrangement=arrangement, **scale.model_overrides)
    dataset = OccTrainDataset([data], DataConfig(image_hw=cfg.image_size, need_semantics=stage == "finetune"))

    def load(epoch: int) -> dict[str, torch.Tensor]:
        """The batch of key ``epoch``: the same augmented tensors whenever it is loaded (seeded per key)."""
        return collate([dataset[(epoch, (epoch * scale.batch_size + i) % FRAMES)] for i in range(scale.batch_size)])

    torch.manual_seed(0)
    started = time.perf_counter()
    modes = make_modes(build_model(cfg).train(), args.extras, args.compile)
    for mode in modes:  # allocations, optimiser state, compilation
        train_step(mode, load(0), stage, cfg.binary_shape)
    warm_s = time.perf_counter() - started
    timings = time_modes(modes, load, stage, cfg.binary_shape, args)
    rows = []
    reference = timings.seconds["reference"]
    for mode in modes:
        seconds = timings.seconds[mode.name]
        samples_per_s = sorted(scale.batch_size / s for s in seconds)
        # the speed-up of each repeat against the reference's steps right beside it, then the median
        speedup = statistics.median(r / s for r, s in zip(reference, seconds))
        loss_diff = max(abs(a - b) for a, b in zip(timings.losses[mode.name], timings.losses["reference"]))
        rows.append({"variant": variant, "stage": stage, "mode": mode.name, "median": statistics.median(samples_per_s),
                     "range": f"{samples_per_s[0]:.2f}-{samples_per_s[-1]:.2f}", "speedup": speedup,
                     "loss_diff": loss_diff, "data_ms": 1e3 * statistics.median(timings.data_s), "warm_s": warm_s})
    return rows


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    scale = SCALES["default"]
    width, height = scale.image_size
    print(f"\ntiny preset, default scale (batch {scale.batch_size}, 6 cameras {width}x{height} JPEG,"
          f" grid {scale.grid}), CPU, torch.set_num_threads({args.threads}),"
          f" {args.repeats} interleaved repeats of {args.steps} steps; data path on the step (workers=0)")
    print(f"{'variant':<10}{'stage':<9}{'mode':<15}{'samples/s':>10}{'range':>12}{'x ref':>7}{'data ms/batch':>15}"
          f"{'max |dloss| vs ref':>20}")
    for r in rows:
        print(f"{r['variant']:<10}{r['stage']:<9}{r['mode']:<15}{r['median']:>10.2f}{r['range']:>12}"
              f"{r['speedup']:>7.2f}{r['data_ms']:>15.1f}{r['loss_diff']:>20.1e}")
    if args.compile:
        print("warm-up incl. torch.compile, s: " + ", ".join(f"{r['variant']} {r['stage']} {r['warm_s']:.0f}"
                                                           for r in rows if r["mode"] == "reference"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="steps per mode and repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (runner.py uses 1)")
    parser.add_argument("--variants", nargs="+", default=["sparse-ls", "ls"])
    parser.add_argument("--stages", nargs="+", default=["pretrain", "finetune"])
    parser.add_argument("--extras", action="store_true", help="also AdamW(foreach=True) and bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes per case)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = SCALES["default"]
    with tempfile.TemporaryDirectory(prefix="b2s-bench-step-") as tmp:
        width, height = scale.image_size
        data = write_frames(Path(tmp) / "frames.h5", scale.grid, (height, width))
        rows = [row for variant in args.variants for stage in args.stages
                for row in bench_case(data, variant, stage, args)]
    print_table(rows, args)


if __name__ == "__main__":
    main()
