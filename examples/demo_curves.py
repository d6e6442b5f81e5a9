"""The learning curves that chose the demo's settings (docs/demo.md): one command, tables and a plot.

    python examples/demo_curves.py --jobs 2                    # every run (~2.5 h on 2 CPU cores)
    python examples/demo_curves.py --only s8,fine --jobs 2     # some runs
    python examples/demo_curves.py --report-only               # rewrite the report from the cache

The demo (examples/run_demo.sh) trains on two labelled scenes and scores a third it never sees.
Its settings are chosen here, on validation scenes of their own: every run trains on the demo's
training data (the same synth seeds and commands as the demo) and is validated every 60 steps on
two scenes of another synthetic world (seed 7), never on the demo's held-out scene. Each run is
the library's ``b2s_core.train.train`` with one setting changed; finished runs are cached under
--work and skipped. Output: docs/demo.md's tables (between the CURVES markers) and
docs/images/demo_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The demo's data, made exactly as examples/run_demo.sh makes it (same seeds and options), and the
# tuning validation scenes: another seed, so that no setting is ever chosen on the demo's held-out scene.
WORLD_COMMANDS = [
    ("logs/synth_manifest.json",
     "b2s synth --scenes 4 --frames 6 --format nuplan --image-size 352x198 --seed 1 --no-preview --out {w}/logs"),
    ("labelled/synth_manifest.json",
     "b2s synth --scenes 3 --frames 6 --format nuscenes,occ3d --image-size 352x198 --seed 2 --no-preview "
     "--out {w}/labelled"),
    ("binary.h5", "b2s build-binary --source nuplan --dataroot {w}/logs/nuplan --grid occ3d --points --out {w}/binary.h5"),
    ("semantic-train.h5",
     "b2s convert --source nuscenes --dataroot {w}/labelled/nuscenes --version v1.0-mini "
     "--labels occ3d:{w}/labelled/occ3d/gts --scenes scene-0001,scene-0002 --out {w}/semantic-train.h5"),
    ("tune/synth_manifest.json",
     "b2s synth --scenes 2 --frames 6 --format nuscenes,occ3d --image-size 352x198 --seed 7 --no-preview "
     "--out {w}/tune"),
    ("tune-val.h5",
     "b2s convert --source nuscenes --dataroot {w}/tune/nuscenes --version v1.0-mini --labels occ3d:{w}/tune/occ3d/gts "
     "--out {w}/tune-val.h5"),
]
ONE_SCENE = "binary-one-scene.h5"  # the first binary scene alone: the over-fitting runs

# The tiny preset before and after this study (FINE is what b2s_core.models.config's 'tiny' now holds).
BEFORE = {"feature_strides": [16], "compact_stride": [8, 8, 4], "binary_stride": [4, 4, 2], "max_sparse_queries": 8000}
FINE = {"feature_strides": [8], "compact_stride": [4, 4, 2], "binary_stride": [2, 2, 1], "max_sparse_queries": 40000}


@dataclass(frozen=True)
class Run:
    name: str
    what: str
    model: dict  # ModelConfig overrides of the tiny preset
    train: dict = field(default_factory=dict)  # TrainConfig changes
    init: str | None = None  # a run whose checkpoint this one starts from


# Every run: tiny preset + these sizes, batch 2, lr 1e-3, class balance 0.5, camera mask, 300 steps,
# validated every 60 steps; Sparse-LS Intermediate Head S+B* from scratch unless said otherwise.
RUNS = [
    Run("before", "tiny as it was: stride-16 features (4 x 11 cells a camera), volumes 3.2 / 1.6 m", BEFORE,
        {"depth_loss_weight": 0.0}),
    Run("s8", "stride-8 features (8 x 22 cells)", {**BEFORE, "feature_strides": [8]}, {"depth_loss_weight": 0.0}),
    Run("s8-img128", "stride 8 on 128 x 352 images", {**BEFORE, "feature_strides": [8], "image_size": [128, 352]},
        {"depth_loss_weight": 0.0}),
    Run("s8-depth", "stride 8 + LiDAR depth loss 0.05", {**BEFORE, "feature_strides": [8]}, {"depth_loss_weight": 0.05}),
    Run("fine", "stride 8, volumes 1.6 / 0.8 m (compact 50x50x8, binary 100x100x16), query cap 20,000",
        {**FINE, "max_sparse_queries": 20000}, {"depth_loss_weight": 0.0}),
    Run("fine-depth", "fine + LiDAR depth loss 0.05", {**FINE, "max_sparse_queries": 20000}, {"depth_loss_weight": 0.05}),
    Run("fine-depth-1m", "fine-depth with 1 m depth bins (D = 44 instead of 11)", {**FINE, "depth_step": 1.0},
        {"depth_loss_weight": 0.05}),
    Run("fine-depth-96", "fine-depth on 96 x 176 images: the whole picture height instead of the bottom 64 rows",
        {**FINE, "image_size": [96, 176]}, {"depth_loss_weight": 0.05}),
    Run("fine-depth-bb", "fine-depth + BCE with occupied voxels weighted (free / occupied)^0.5 (binary_balance 0.5)",
        FINE, {"depth_loss_weight": 0.05, "binary_balance": 0.5}),
    Run("offboard-before", "offboard model, tiny as it was", BEFORE, {"offboard": True, "depth_loss_weight": 0.0}),
    Run("offboard-fine", "offboard model, fine volumes + depth loss", FINE, {"offboard": True}),
    Run("pretrain-fine", "binary pre-training on the demo's 4 nuPlan-style scenes (8 cameras), 408 steps",
        FINE, {"stage": "pretrain", "epochs": 34}),
    Run("pretrained-sb", "fine-tuned from pretrain-fine, S+B (the demo's online model)", FINE,
        {"binary_data": "b"}, init="pretrain-fine"),
    Run("pretrain-bb", "pretrain-fine with binary_balance 0.5", FINE, {"stage": "pretrain", "epochs": 34, "binary_balance": 0.5}),
    # Can the binary path fit above-ground structure at all? One scene, no augmentation, 200 steps.
    Run("overfit", "binary pre-training on one scene, no augmentation, 200 steps", FINE,
        {"stage": "pretrain", "data": ONE_SCENE, "augment": False, "max_steps": 200, "epochs": 70, "val_every_epochs": 20}),
    Run("overfit-bb1", "overfit with binary_balance 1 (occupied voxels x ~11)", FINE,
        {"stage": "pretrain", "data": ONE_SCENE, "augment": False, "max_steps": 200, "epochs": 70, "val_every_epochs": 20,
         "binary_balance": 1.0}),
    Run("pretrained-sb-bb", "fine-tuned from pretrain-bb, S+B, binary_balance 0.5", FINE,
        {"binary_data": "b", "binary_balance": 0.5}, init="pretrain-bb"),
]
STEPS, VAL_EVERY = 300, 60


def run_config(run: Run, work: Path):
    from b2s_core.train.config import TrainConfig

    frames = 12  # the demo's two labelled training scenes x 6 key frames
    values = dict(stage="finetune", model="sparse-ls", preset="tiny", semantic_data=[str(work / "semantic-train.h5")],
                  val_data=[str(work / "tune-val.h5")], use_camera_mask=True, batch_size=2, lr=1e-3, class_balance=0.5,
                  epochs=STEPS * 2 // frames, val_every_epochs=VAL_EVERY * 2 // frames, ckpt_every_epochs=1000,
                  warmup_steps=20, workers=0, device="cpu", log_every_steps=10, out=str(work / "runs" / run.name),
                  pretrain_data=[str(work / "binary.h5")], model_overrides=dict(run.model))
    values.update(run.train)
    if values["stage"] == "pretrain":
        values.update(data=[str(work / run.train.get("data", "binary.h5"))], semantic_data=[],
                      val_every_epochs=run.train.get("val_every_epochs", 5))  # every 60 steps on the 4 scenes
    if run.init:
        values.update(init=str(work / "runs" / run.init / "checkpoint.pt"), model=None)
    return TrainConfig(**values)


def build_world(work: Path) -> None:
    from b2s_core.occfile import OccDataset, OccWriter

    for done, command in WORLD_COMMANDS:
        if not (work / done).exists():
            print(f"world: {command.format(w=work)}", flush=True)
            subprocess.run(command.format(w=work).split(), check=True, stdout=subprocess.DEVNULL)
    if not (work / ONE_SCENE).exists():
        source = OccDataset(work / "binary.h5")
        with OccWriter(work / ONE_SCENE, grid=source.grid, taxonomy=source.taxonomy, source=source.source,
                       camera_names=source.camera_names, image_root=source.attrs().get("image_root") or None) as writer:
            writer.copy_scene(source, source.scenes[0].name)


def geometry_recall(checkpoint: Path, data: Path, every: int = 3) -> dict:
    """Where the binary decoder finds the occupied voxels (on its grid, inside the camera mask):
    recall near the ground (<= 1 m above z = 0) and above it, and precision above it."""
    import torch

    from b2s_core.apps.predict import iterate_batches, open_inputs, predict_logits
    from b2s_core.models.checkpoint import load_checkpoint
    from b2s_core.models.occupied_set import pool_binary_target
    from b2s_core.occfile import OccDataset

    loaded = load_checkpoint(checkpoint)
    model, config = loaded.model.eval(), loaded.model_config
    occ, inputs = OccDataset(data), open_inputs(data, config)
    heights = torch.as_tensor(config.binary_grid.centers()[..., 2])  # (Xb, Yb, Zb) metres above z = 0
    above = heights > 1.0
    counts = dict(hit_near=0, near=0, hit_above=0, above=0, said_above=0)
    for frame_ids, batch in iterate_batches(inputs, range(0, len(occ), every), 1):
        occupied = predict_logits(model, batch, occ.grid).binary[0] > 0  # probability > 0.5
        frame = occ.read(frame_ids[0], fields=("mask_camera",))
        grid = lambda bits: pool_binary_target(torch.from_numpy(bits.astype("uint8"))[None], config.binary_shape)[0][0] > 0  # noqa: E731
        truth, seen = grid(frame.occupancy & frame.mask_camera), grid(frame.mask_camera)
        counts["hit_near"] += int((occupied & truth & ~above).sum())
        counts["near"] += int((truth & ~above).sum())
        counts["hit_above"] += int((occupied & truth & above).sum())
        counts["above"] += int((truth & above).sum())
        counts["said_above"] += int((occupied & seen & above).sum())
    return {"recall_near": counts["hit_near"] / max(counts["near"], 1),
            "recall_above": counts["hit_above"] / max(counts["above"], 1),
            "precision_above": counts["hit_above"] / max(counts["said_above"], 1)}


def train_one(name: str, work: Path) -> None:
    import warnings

    from b2s_core.train.loop import train

    run = next(r for r in RUNS if r.name == name)
    warnings.simplefilter("ignore")  # the random-backbone warning, once per run
    started = time.time()
    train(run_config(run, work), show_progress=False)
    (work / "runs" / name / "done.json").write_text(json.dumps({"seconds": round(time.time() - started)}))


def curves(work: Path, name: str) -> list[dict]:
    path = work / "runs" / name / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "val"]


def report(work: Path, docs: Path) -> None:
    """Tables into docs/demo.md (between the CURVES markers) and docs/images/demo_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| run | what changes | step | mIoU | geometry IoU | binary IoU | car | manmade | vegetation | s / step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6))
    colours = plt.get_cmap("tab20").colors
    for k, run in enumerate(RUNS):
        records = curves(work, run.name)
        done = work / "runs" / run.name / "done.json"
        if not records:
            continue
        seconds = json.loads(done.read_text())["seconds"] if done.is_file() else None
        per_step = f"{seconds / records[-1]['step']:.2f}" if seconds else "-"
        for r in records:
            cell = lambda key, r=r: "-" if r.get(key) is None else f"{r[key]:.1f}"  # noqa: E731
            lines.append(f"| {run.name} | {run.what if r is records[0] else ''} | {r['step']} | {cell('miou')} | "
                         f"{cell('geometry_iou')} | {cell('binary_iou')} | {cell('iou/car')} | {cell('iou/manmade')} | "
                         f"{cell('iou/vegetation')} | {per_step if r is records[-1] else ''} |")
        steps = [r["step"] for r in records]
        style = dict(marker="o", markersize=3, color=colours[k % len(colours)], label=run.name,
                     linestyle="--" if run.train.get("offboard") else "-")
        if records[0].get("miou") is not None:
            axes[0].plot(steps, [r["miou"] for r in records], **style)
            objects = [sum(r.get(f"iou/{c}", 0.0) for c in ("car", "manmade", "vegetation")) / 3 for r in records]
            axes[2].plot(steps, objects, **style)
        if records[0].get("binary_iou") is not None:
            axes[1].plot(steps, [r["binary_iou"] for r in records], **style)
    axes[0].set(title="mIoU on the tuning scenes (camera mask)", xlabel="step", ylabel="mIoU")
    axes[1].set(title="binary-decoder IoU", xlabel="step", ylabel="IoU")
    axes[2].set(title="car, manmade, vegetation: mean IoU", xlabel="step", ylabel="IoU")
    for ax in axes:
        ax.grid(alpha=0.3)
    named = {}  # one legend for the three panels: pre-training runs have no mIoU curve
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    fig.legend(list(named.values()), list(named), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.89, 1))
    (docs / "images").mkdir(parents=True, exist_ok=True)
    fig.savefig(docs / "images" / "demo_curves.png", dpi=110)
    lines += ["", "Where the binary decoder finds the occupied voxels at the end of each run (its grid, camera mask; "
              "`geometry_recall`): on the tuning scenes, and on the run's own training frames.", "",
              "| run | recall near the ground (tuning) | recall > 1 m up (tuning) | precision > 1 m up (tuning) | "
              "recall near the ground (training) | recall > 1 m up (training) |", "|---|---|---|---|---|---|"]
    for run in RUNS:
        checkpoint = work / "runs" / run.name / "checkpoint.pt"
        if not (work / "runs" / run.name / "done.json").is_file() or run.train.get("offboard"):
            continue
        cache = work / "runs" / run.name / "geometry.json"
        if not cache.is_file():
            own = work / (run.train.get("data", "binary.h5") if run.train.get("stage") == "pretrain" else "semantic-train.h5")
            cache.write_text(json.dumps({"tuning": geometry_recall(checkpoint, work / "tune-val.h5"),
                                         "training": geometry_recall(checkpoint, own)}))
        g = json.loads(cache.read_text())
        lines.append(f"| {run.name} | {g['tuning']['recall_near']:.2f} | {g['tuning']['recall_above']:.2f} | "
                     f"{g['tuning']['precision_above']:.2f} | {g['training']['recall_near']:.2f} | "
                     f"{g['training']['recall_above']:.2f} |")
    page = docs / "demo.md"
    text = page.read_text()
    start, end = "<!-- CURVES:START -->", "<!-- CURVES:END -->"
    if start not in text or end not in text:
        raise SystemExit(f"{page}: no {start} ... {end} markers to write the tables between")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
    print(f"wrote {page} and {docs / 'images' / 'demo_curves.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "demo-curves", help="world, runs and their metrics")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side (one core each)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a worker: train this run
    args = parser.parse_args(argv)
    work = args.work.resolve()
    if args.one:
        train_one(args.one, work)
        return 0
    if not args.report_only:
        build_world(work)
        wanted = [r for r in RUNS if args.only is None or r.name in args.only.split(",")]
        pending = [r for r in wanted if not (work / "runs" / r.name / "done.json").is_file()]
        running: dict[str, subprocess.Popen] = {}
        while pending or running:
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    running.pop(name)
                    print(f"{time.strftime('%H:%M:%S')} {name}: {'done' if proc.returncode == 0 else 'FAILED'}", flush=True)
            ready = [r for r in pending if r.init is None or (work / "runs" / r.init / "done.json").is_file()]
            while ready and len(running) < args.jobs:
                run = ready.pop(0)
                pending.remove(run)
                print(f"{time.strftime('%H:%M:%S')} {run.name}: {run.what}", flush=True)
                running[run.name] = subprocess.Popen([sys.executable, __file__, "--work", str(work), "--one", run.name])
            if not ready and not running and pending:
                raise SystemExit(f"cannot start {', '.join(r.name for r in pending)}: their --init run failed")
            time.sleep(5)
    report(work, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
