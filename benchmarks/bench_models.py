"""Model speed and memory: every variant at the small and paper presets, and the sparse stage's cost
against its number of queries.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_models.py [--presets small,paper] [--device cpu|cuda]
         [--cameras 6] [--repeats 3] [--json benchmarks/results/models.json]

1. Forward latency (batch 1, inference, the fastest of --repeats after one warm-up; the paper preset
   on CPU is timed once, without warm-up, to keep the run short). On CPU the figure compared is the
   process CPU time of the forward pass (1 thread), which other programs on a shared machine do not
   inflate the way they inflate wall-clock time; wall-clock time is reported beside it. On CUDA it is
   synchronised wall-clock time. and peak memory of each variant. Each
   measurement runs in a fresh process so that its peak resident memory (CPU) is its own; on CUDA
   the peak is torch.cuda.max_memory_allocated. The sparse variants take as queries the occupied
   voxels of the real Occ3D sample (../shared/data/occ3d-sample) downsampled to the binary grid
   (17,259 of 160,000 at the paper preset), or a random 10.8 % when the sample is absent.
   Target: Sparse-LS latency <= 1.2 x dense LS latency at the same preset.
2. Sparse stage (sparse transformer + semantic head) against the number of queries M, with every
   voxel as a query (M = all) as the straightforward dense computation it replaces; a straight-line
   fit reports the cost per 1,000 queries and R^2 (linear growth is the target).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from b2s_core.grids import get_grid, resample_binary  # noqa: E402
from b2s_core.models import build_model, model_config  # noqa: E402
from b2s_core.models.camera_rig import surround_rig  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "occ3d-sample" / "labels.npz"
VARIANTS = ("sparse-ls", "ls", "sparse-bevformer", "bevformer")


def occupied_set(cfg, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(1, Xb, Yb, Zb) bool: the real sample's occupied voxels on the model's binary grid."""
    if SAMPLE.is_file() and cfg.output_grid.same_geometry(get_grid("occ3d")):
        labels = np.load(SAMPLE)["semantics"]
        occupied = resample_binary(labels != 17, get_grid("occ3d"), cfg.binary_grid)
        return torch.from_numpy(occupied)[None], "real Occ3D sample"
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, *cfg.binary_shape, generator=g) < 0.108, "random 10.8 %"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_one(variant: str, preset: str, cameras: int, repeats: int, device_name: str) -> dict:
    """Runs in its own process (see main): latency and peak memory of one variant."""
    torch.set_num_threads(1)
    device = torch.device(device_name)
    cfg = model_config(variant, preset)
    model = build_model(cfg).eval().to(device)
    H, W = cfg.image_size
    img_from_cam, ego_from_cam = surround_rig(1, cameras, (H, W))
    images = torch.randn(1, cameras, 3, H, W)
    given, source = occupied_set(cfg) if cfg.is_sparse else (None, "-")
    args = [t.to(device) for t in (images, img_from_cam, ego_from_cam)]
    given = None if given is None else given.to(device)
    build_mb = _rss_mb()
    one_shot = device.type == "cpu" and preset == "paper"
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        if not one_shot:
            model(*args, given_occupancy=given)  # warm-up
        for _ in range(1 if one_shot else repeats):
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            out = model(*args, given_occupancy=given)
            _sync(device)
            times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant, "preset": preset, "device": device_name, "cameras": cameras,
        "image_size": list(cfg.image_size), "parameters": model.num_parameters(),
        "queries": None if out.query_mask is None else int(out.query_mask.sum()), "query_source": source,
        "wall_s": float(min(t[0] for t in times)), "cpu_s": float(min(t[1] for t in times)), "runs": len(times),
        "latency_s": float(min(t[0 if device.type == "cuda" else 1] for t in times)),
        "peak_mb": peak_mb, "model_loaded_mb": build_mb if device.type == "cpu" else None,
    }


def run_isolated(variant: str, preset: str, cameras: int, repeats: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{variant}:{preset}", "--cameras", str(cameras),
           "--repeats", str(repeats), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def sparse_scaling(preset: str, cameras: int, repeats: int, device: torch.device) -> list[dict]:
    """Sparse stage time against M queries, on one built model (features computed once)."""
    cfg = model_config("sparse-ls", preset)
    V = int(np.prod(cfg.binary_shape))
    cfg = cfg.replace(max_sparse_queries=V)
    model = build_model(cfg).eval().to(device)
    H, W = cfg.image_size
    img_from_cam, ego_from_cam = surround_rig(1, cameras, (H, W))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(V, generator=g)
    rows = []
    with torch.no_grad():
        views = model.encode_images(torch.randn(1, cameras, 3, H, W).to(device), img_from_cam.to(device),
                                    ego_from_cam.to(device))
        binary_volume = model.binary_features(model.image_to_3d_volume(views)[0], views)
        counts = sorted({0, *(int(f * V) for f in (0.025, 0.05, 0.1, 0.15, 0.25)), V})
        for M in counts:
            occupied = torch.zeros(V, dtype=torch.bool)
            occupied[order[:M]] = True
            occupied = occupied.reshape(1, *cfg.binary_shape).to(device)
            times = []
            for _ in range(repeats + 1):
                _sync(device)
                start = time.perf_counter() if device.type == "cuda" else time.process_time()
                sparse = model.refine_sparse(binary_volume, occupied, None, views)
                model.semantic_head(binary_volume, sparse)
                _sync(device)
                times.append((time.perf_counter() if device.type == "cuda" else time.process_time()) - start)
            rows.append({"queries": M, "fraction": M / V, "seconds": float(np.min(times[1:]))})
    return rows


def fit_line(rows: list[dict], max_fraction: float = 0.25) -> tuple[float, float, float]:
    """Least-squares seconds = a + b * M over the rows up to max_fraction -> (a, b per 1k, R^2)."""
    pts = [(r["queries"], r["seconds"]) for r in rows if r["fraction"] <= max_fraction]
    m, s = np.array(pts, dtype=float).T
    b, a = np.polyfit(m, s, 1)
    r2 = 1.0 - np.sum((s - (a + b * m)) ** 2) / max(np.sum((s - s.mean()) ** 2), 1e-12)
    return a, b * 1000, r2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scaling-presets", default="small,paper", help="presets for the sparse-stage sweep ('' = skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one isolated measurement
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.one:
        variant, preset = args.one.split(":")
        print(json.dumps(measure_one(variant, preset, args.cameras, args.repeats, args.device)))
        return

    results: dict = {"device": args.device, "torch": torch.__version__, "threads": 1, "forward": [], "scaling": {}}
    print(f"device {args.device}, torch {torch.__version__}, 1 thread, {args.cameras} cameras, batch 1, inference\n")
    what = "CUDA time" if args.device == "cuda" else "CPU time"
    print(f"| preset | variant | params (M) | image | queries | {what} (s) | wall (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for variant in args.variants.split(","):
            row = run_isolated(variant, preset, args.cameras, args.repeats, args.device)
            results["forward"].append(row)
            print(f"| {preset} | {variant} | {row['parameters'] / 1e6:.1f} | {row['image_size'][0]}x{row['image_size'][1]} "
                  f"| {row['queries'] if row['queries'] is not None else '-'} | {row['latency_s']:.2f} "
                  f"| {row['wall_s']:.2f} ({row['runs']} run{'s' if row['runs'] > 1 else ''}) | {row['peak_mb']:.0f} |",
                  flush=True)
    by_key = {(r["preset"], r["variant"]): r["latency_s"] for r in results["forward"]}
    print()
    for preset in args.presets.split(","):
        for sparse, dense in (("sparse-ls", "ls"), ("sparse-bevformer", "bevformer")):
            if (preset, sparse) in by_key and (preset, dense) in by_key:
                ratio = by_key[(preset, sparse)] / by_key[(preset, dense)]
                target = " (target <= 1.2)" if sparse == "sparse-ls" else ""
                print(f"{preset}: {sparse} / {dense} latency = {ratio:.2f}{target}")
                results.setdefault("ratios", {})[f"{preset}:{sparse}/{dense}"] = ratio

    for preset in filter(None, args.scaling_presets.split(",")):
        rows = sparse_scaling(preset, args.cameras, args.repeats, torch.device(args.device))
        a, per_k, r2 = fit_line(rows)
        results["scaling"][preset] = {"rows": rows, "intercept_s": a, "seconds_per_1k_queries": per_k, "r2": r2}
        print(f"\nsparse stage (sparse transformer + semantic head), {preset} preset, sparse-ls:")
        print(f"| queries M | share of B' | {'CUDA' if args.device == 'cuda' else 'CPU'} seconds |")
        print("|---|---|---|")
        for r in rows:
            note = " (every voxel: the dense computation)" if r["fraction"] == 1.0 else ""
            print(f"| {r['queries']} | {100 * r['fraction']:.1f} %{note} | {r['seconds']:.3f} |")
        print(f"fit up to 25 %: {a:.3f} s + {per_k:.4f} s per 1,000 queries, R^2 = {r2:.4f}", flush=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
