"""Evaluate speed: the vectorised metrics against the straightforward per-frame NumPy computation.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_evaluate.py [--frames 40]

Three measurements, each compared in the same run and checked for identical numbers:
1. voxel metrics (confusion matrix -> per-class IoU, mIoU, geometry IoU) from arrays in memory:
   the straightforward per-frame, per-class NumPy loop vs OccupancyEvaluator (one bincount per batch);
2. the same end to end from unified HDF5 files (reading included), evaluate_files vs a plain loop
   over the same files;
3. RayIoU ray marching for one frame (8 origins x 14,040 rays): the vectorised marcher vs the
   per-ray Python reference on a sample of the rays (time scaled to all rays, as noted);
4. pseudo-label storage per frame (Top1 / Top2) on the same frames: Top1 = the ground-truth
   classes, Top2 = those plus a random second class, logits drawn at random (float16).
Frames are the real Occ3D sample (../shared/data/occ3d-sample) with noisy predictions, or
random scenes when the sample is absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from b2s_core.apps.evaluate import EvaluateConfig, evaluate_files  # noqa: E402
from b2s_core.grids import get_grid  # noqa: E402
from b2s_core.metrics import (  # noqa: E402
    OccupancyEvaluator,
    first_hits,
    first_hits_reference,
    get_protocol,
    lidar_ray_directions,
)
from b2s_core.occfile import OccDataset, OccWriter  # noqa: E402
from b2s_core.records import OccFrame  # noqa: E402
from b2s_core.taxonomy import OCC3D  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "occ3d-sample" / "labels.npz"


def make_frames(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if SAMPLE.is_file():
        data = np.load(SAMPLE)
        gt0, camera0, lidar0 = data["semantics"], data["mask_camera"].astype(bool), data["mask_lidar"].astype(bool)
        source = "real Occ3D sample, rolled and noised per frame"
    else:
        gt0 = np.where(rng.random((200, 200, 16)) < 0.1, rng.integers(0, 17, (200, 200, 16)), 17).astype(np.uint8)
        camera0, lidar0 = rng.random(gt0.shape) < 0.3, rng.random(gt0.shape) < 0.4
        source = "random scenes (Occ3D sample absent)"
    frames = []
    for _ in range(count):
        shift = int(rng.integers(-20, 20))
        gt = np.roll(gt0, shift, axis=0)
        noise = rng.random(gt.shape) < 0.05
        pred = np.where(noise, rng.integers(0, 18, gt.shape), gt).astype(np.uint8)
        frames.append((gt, pred, np.roll(camera0, shift, axis=0), np.roll(lidar0, shift, axis=0)))
    return frames, source


# -- the straightforward computation --------------------------------------------------------------------
def straightforward(frames_iter, taxonomy=OCC3D):
    """Per frame, per class: TP / FP / FN by boolean masks over the camera-visible voxels."""
    K, free = taxonomy.num_labels, taxonomy.free_index
    tp, fp, fn = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K, np.int64)
    geo = np.zeros(3, np.int64)
    for gt, pred, mask in frames_iter:
        for c in range(K):
            g, p = (gt == c) & mask, (pred == c) & mask
            tp[c] += np.sum(g & p)
            fp[c] += np.sum(~g & p)
            fn[c] += np.sum(g & ~p)
        g, p = (gt != free) & mask, (pred != free) & mask
        geo += [np.sum(g & p), np.sum(~g & p), np.sum(g & ~p)]
    iou = [100.0 * tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in taxonomy.eval_classes]
    present = [v for v in iou if not math.isnan(v)]
    return iou, sum(present) / len(present), 100.0 * geo[0] / geo.sum()


def same(a, b) -> bool:
    iou_a, miou_a, geo_a = a
    iou_b, miou_b, geo_b = b
    return bool(np.array_equal(np.asarray(iou_a), np.asarray(iou_b), equal_nan=True)
                and math.isclose(miou_a, miou_b, rel_tol=1e-12) and geo_a == geo_b)


def fast(frames, batch: int = 8):
    evaluator = OccupancyEvaluator(get_protocol("occ3d", "camera"))
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        evaluator.add_batch(np.stack([f[0] for f in chunk]), np.stack([f[1] for f in chunk]),
                            mask_camera=np.stack([f[2] for f in chunk]))
    r = evaluator.result()
    return r.iou, r.miou, r.geometry_iou


def timed(fn, repeat: int = 3):
    best, out = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def write(path: Path, frames, which: int):
    grid = get_grid("occ3d")
    with OccWriter(path, grid=grid, taxonomy=OCC3D, source="bench", command="bench_evaluate") as writer:
        items = []
        for i, f in enumerate(frames):
            labels = f[which]
            items.append(OccFrame("bench", f"t{i}", i, np.eye(4), [], labels != 17, labels,
                                  mask_camera=f[2] if which == 0 else None, mask_lidar=f[3] if which == 0 else None))
        writer.write_scene("bench", items)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--ray-sample", type=int, default=40, help="every n-th ray for the per-ray reference")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames, source = make_frames(args.frames)
    n = len(frames)
    print(f"{n} frames of 200 x 200 x 16 ({source}); Occ3D protocol, mask_camera; 1 thread")

    # 1. in memory
    t_plain, plain = timed(lambda: straightforward((g, p, m) for g, p, m, _ in frames))
    t_fast, quick = timed(lambda: fast(frames))
    print(f"[metrics, in memory]  straightforward {n / t_plain:8.1f} frames/s   vectorised {n / t_fast:8.1f} frames/s   "
          f"speed-up {t_plain / t_fast:5.1f}x   identical numbers: {same(plain, quick)}   mIoU {quick[1]:.3f}")

    # 2. end to end from files
    with tempfile.TemporaryDirectory() as tmp:
        data = write(Path(tmp) / "gt.h5", frames, 0)
        pred = write(Path(tmp) / "pred.h5", frames, 1)

        def plain_files():
            truth, guess = OccDataset(data), OccDataset(pred)
            rows = ((truth.read(i, fields=("semantics", "mask_camera")), guess.read(i, fields=("semantics",))) for i in range(len(truth)))
            return straightforward((t.semantics, g.semantics, t.mask_camera) for t, g in rows)

        def fast_files():
            r = evaluate_files(data, pred, EvaluateConfig(mask="camera", rayiou=False, batch_size=8))
            return r.iou, r.miou, r.geometry_iou

        t_plain_f, plain_f = timed(plain_files, repeat=2)
        t_fast_f, quick_f = timed(fast_files, repeat=2)
        print(f"[evaluate, from files] straightforward {n / t_plain_f:8.1f} frames/s   evaluate_files {n / t_fast_f:8.1f} frames/s   "
              f"speed-up {t_plain_f / t_fast_f:5.1f}x   identical numbers: {same(plain_f, quick_f)}")

    # 3. RayIoU ray marching, one frame
    gt, pred = frames[0][0], frames[0][1]
    grid = get_grid("occ3d")
    origins = np.array([[0.986, 0, 1.84], [-20, 0.3, 1.84], [-14, 0.2, 1.84], [-8, 0.1, 1.84],
                        [6, -0.1, 1.84], [12, -0.2, 1.84], [18, -0.3, 1.84], [24, -0.4, 1.84]])
    directions = lidar_ray_directions()
    occupied = np.stack([gt != 17, pred != 17])
    t_vec, (flat, depth) = timed(lambda: first_hits(occupied, origins, directions, grid), repeat=1)
    sample = directions[::args.ray_sample]
    t_ref, (flat_ref, depth_ref) = timed(lambda: first_hits_reference(occupied, origins, sample, grid), repeat=1)
    flat_sub, depth_sub = first_hits(occupied, origins, sample, grid)
    agree = bool(np.array_equal(flat_sub, flat_ref) and np.array_equal(depth_sub, depth_ref))
    rays = len(origins) * len(directions)
    t_ref_all = t_ref * len(directions) / len(sample)
    figures = {
        "frames": n, "source": source, "threads": 1, "load_average_1min": round(os.getloadavg()[0], 2),
        "metrics_in_memory_fps": {"straightforward": n / t_plain, "vectorised": n / t_fast, "identical": same(plain, quick)},
        "evaluate_from_files_fps": {"straightforward": n / t_plain_f, "evaluate_files": n / t_fast_f, "identical": same(plain_f, quick_f)},
        "rayiou_march_seconds_per_frame": {"reference_scaled": t_ref_all, "vectorised": t_vec, "rays": rays, "identical": agree},
    }
    # 4. pseudo-label storage
    from b2s_core.apps.autolabel import pseudo_label_bytes

    rng = np.random.default_rng(1)
    storage = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("top1", "top2"):
            items = []
            for i, (g, *_rest) in enumerate(frames[:8]):
                occupied = g != 17
                item = OccFrame("bench", f"t{i}", i, np.eye(4), [], occupied, g)
                if mode == "top2":
                    M = int(occupied.sum())
                    item.top2_labels = np.stack([g[occupied], rng.integers(0, 17, M).astype(np.uint8)], axis=1)
                    item.top2_logits = np.stack([rng.normal(4, 1, M), rng.normal(1, 1, M)], axis=1).astype(np.float16)
                items.append(item)
            path = Path(tmp) / f"{mode}.h5"
            with OccWriter(path, grid=grid, taxonomy=OCC3D, source="bench", command="bench_evaluate") as writer:
                writer.write_scene("bench", items)
            storage[mode] = pseudo_label_bytes(path)
    top1, top2 = storage["top1"], storage["top2"]
    print(f"[pseudo-labels, bytes per frame, {top1['labels_raw']:,.0f} occupied voxels] Top1 classes {top1['labels']:,.0f} "
          f"(raw {top1['labels_raw']:,.0f}); Top2 classes + logits {top2['top2']:,.0f} (raw {top2['top2_raw']:,.0f}); "
          f"whole file Top1 {top1['file']:,.0f}, Top2 {top2['file']:,.0f}")
    figures["pseudo_label_bytes_per_frame"] = storage
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"[RayIoU marching, 1 frame, {rays:,} rays x 2 grids] per-ray reference ~{t_ref_all:6.1f} s "
          f"(measured on 1/{args.ray_sample} of the rays, scaled)   vectorised {t_vec:5.2f} s   "
          f"speed-up ~{t_ref_all / t_vec:5.0f}x   identical hits: {agree}")


if __name__ == "__main__":
    main()
