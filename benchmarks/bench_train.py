"""Training throughput: data loading alone, and training steps, at the small preset on CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py            # everything (~3 min on one core)
    python benchmarks/bench_train.py --part data                  # data loading only
    python benchmarks/bench_train.py --part train --preset small  # training steps only

Data: toy frames on the Occ3D grid (200 x 200 x 16) with six 900 x 1600 JPEG cameras, the size of
nuScenes. Data loading is timed two ways in the same run: ours (JPEG draft decoding at a reduced
scale + one affine warp) and the straightforward BEVDet way (full decode, resize, crop, flip,
rotate). Training steps are timed on batches already in memory (model + loss + backward + AdamW),
so the two numbers say whether loading can keep up. Peak memory is the process's peak RSS, each
measurement in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2s_core.data.augment import ImageAugConfig, draw_image_aug  # noqa: E402
from b2s_core.data.dataset import IMAGENET_MEAN, IMAGENET_STD, DataConfig, OccTrainDataset, collate  # noqa: E402
from b2s_core.data.toy import toy_cameras, toy_frames  # noqa: E402
from b2s_core.grids import GRID_PRESETS  # noqa: E402
from b2s_core.taxonomy import OCC3D  # noqa: E402

SOURCE_HW = (900, 1600)
YAWS = (0.0, 55.0, -55.0, 180.0, 110.0, -110.0)  # a nuScenes-like ring of six cameras


def write_bench_data(path: Path, frames: int) -> Path:
    from b2s_core.occfile import OccWriter

    grid = GRID_PRESETS["occ3d"]
    cameras = toy_cameras(SOURCE_HW, yaws_deg=YAWS)
    with OccWriter(path, grid=grid, taxonomy=OCC3D, source="toy", command="bench_train",
                   camera_names=[c.name for c in cameras]) as writer:
        made = []
        for frame in toy_frames(frames, grid=grid, image_hw=SOURCE_HW, boxes=12, box_size=(4, 12)):
            # toy_frames paints two cameras; give the frame six (the same pictures, re-used: decoding cost is what counts)
            six = toy_cameras(SOURCE_HW, yaws_deg=YAWS)
            for k, camera in enumerate(six):
                camera.image_bytes = frame.cameras[k % 2].image_bytes
            frame.cameras = six
            made.append(frame)
        writer.write_scene("bench", made)
    return path


def straightforward_load(dataset: OccTrainDataset, key) -> torch.Tensor:
    """BEVDet's image pipeline: full decode, resize, crop, flip, rotate (two resamplings)."""
    epoch, index = key
    rng = np.random.default_rng([0, epoch, index])
    fH, fW = dataset.config.image_hw
    frame = dataset.occ.read(index, fields=("occupancy", "semantics", "cameras"))
    images = []
    for camera in frame.cameras:
        image = Image.open(io.BytesIO(dataset.occ.image(index, camera.name))).convert("RGB")
        W, H = image.size
        aug = draw_image_aug(rng, ImageAugConfig(), (H, W), (fH, fW))
        image = image.resize((int(round(W * aug.scale)), int(round(H * aug.scale))), Image.Resampling.BILINEAR)
        x, y = aug.crop_xy
        image = image.crop((x, y, x + fW, y + fH))
        if aug.flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = image.rotate(aug.rotation_deg, resample=Image.Resampling.BILINEAR)
        array = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        images.append(torch.from_numpy(array.transpose(2, 0, 1).copy()))
    return torch.stack(images)


def bench_data(path: Path, image_hw: tuple[int, int], repeats: int) -> dict:
    dataset = OccTrainDataset([path], DataConfig(image_hw=image_hw))
    keys = [(e, i) for e in range(repeats) for i in range(len(dataset))]
    dataset[keys[0]]  # open the file
    t = time.perf_counter()
    for key in keys:
        dataset[key]
    ours = len(keys) / (time.perf_counter() - t)
    t = time.perf_counter()
    for key in keys:
        straightforward_load(dataset, key)
    plain = len(keys) / (time.perf_counter() - t)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=keys, num_workers=2, collate_fn=collate)
    t = time.perf_counter()
    for _ in loader:
        pass
    two_workers = len(keys) / (time.perf_counter() - t)  # includes worker start-up
    return {"image_hw": list(image_hw), "frames_per_s_ours": ours, "frames_per_s_straightforward": plain,
            "frames_per_s_2_workers": two_workers, "speedup": ours / plain}


def bench_train(path: Path, variant: str, preset: str, batch: int, steps: int) -> dict:
    from b2s_core.models import build_model, model_config
    from b2s_core.train.config import TrainConfig
    from b2s_core.train.objectives import binary_loss, semantic_loss
    from b2s_core.train.strategies import plan_for, select_trainable

    torch.manual_seed(0)
    cfg = model_config(variant, preset, grid="occ3d")
    model = build_model(cfg)
    strategy = "intermediate" if variant.startswith("sparse-") else "multi-head"
    plan = plan_for(TrainConfig(stage="finetune", semantic_data=["x"], strategy=strategy), variant)
    select_trainable(model, plan)
    dataset = OccTrainDataset([path], DataConfig(image_hw=cfg.image_size))
    batch_data = collate([dataset[(0, i % len(dataset))] for i in range(batch)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=1e-2)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step():
        out = model(batch_data["images"], batch_data["img_from_cam"], batch_data["ego_from_cam"])
        loss = binary_loss(out.binary_logits, batch_data["binary"]) + semantic_loss(out.semantic_logits, batch_data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, optimizer state)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "preset": preset, "batch": batch, "image_hw": list(cfg.image_size),
            "seconds_per_step": seconds, "samples_per_s": batch / seconds, "peak_rss_mb": peak,
            "rss_before_training_mb": rss_before, "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "data", "train"], default="all")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--variant", default="sparse-ls")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="bench data file (written when absent)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (used by the subprocess runs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="b2s-bench-"))
    data = args.data or workdir / "bench.h5"
    if not data.exists():
        t = time.perf_counter()
        write_bench_data(data, 4)
        print(f"wrote {data} (4 frames, 6 cameras 900x1600) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    if args.part == "data":
        for hw in ((128, 352), (256, 704)):
            print(json.dumps(bench_data(data, hw, repeats=2)))
        return
    if args.part == "train":
        print(json.dumps(bench_train(data, args.variant, args.preset, args.batch, args.steps)))
        return
    # all: each measurement in a fresh process, so that peak RSS is its own
    rows = []
    for variant, batch in (("sparse-ls", 1), ("sparse-ls", 2), ("ls", 1)):
        out = subprocess.run([sys.executable, __file__, "--part", "train", "--data", str(data), "--variant", variant,
                              "--preset", args.preset, "--batch", str(batch), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(out.strip(), file=sys.stderr)
    data_rows = [json.loads(line) for line in subprocess.run(
        [sys.executable, __file__, "--part", "data", "--data", str(data)], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()]
    print(f"\ntraining steps, preset {args.preset}, Occ3D grid, 6 cameras, CPU, 1 thread")
    print(f"{'variant':<11}{'batch':>6}{'image':>11}{'params M':>10}{'s/step':>9}{'samples/s':>11}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['variant']:<11}{r['batch']:>6}{'x'.join(map(str, r['image_hw'])):>11}{r['parameters_m']:>10.1f}"
              f"{r['seconds_per_step']:>9.2f}{r['samples_per_s']:>11.2f}{r['peak_rss_mb']:>13.0f}")
    print("\ndata loading alone (augmented, 6 x 900x1600 JPEG per frame, 1 process unless noted)")
    print(f"{'output':>10}{'ours fr/s':>11}{'BEVDet-way fr/s':>17}{'speed-up':>10}{'2 workers fr/s':>16}")
    for r in data_rows:
        print(f"{'x'.join(map(str, r['image_hw'])):>10}{r['frames_per_s_ours']:>11.2f}"
              f"{r['frames_per_s_straightforward']:>17.2f}{r['speedup']:>10.2f}{r['frames_per_s_2_workers']:>16.2f}")


if __name__ == "__main__":
    main()
