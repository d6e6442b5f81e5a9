"""Benchmark ``b2s build-binary``: CPU-seconds per key frame, per stage, and the ray tracer vs the reference.

Input: the synthetic world in nuScenes format, read through the real nuScenes reader (so the
numbers include reading the .pcd.bin sweeps), 10 aggregated sweeps per key frame (``sweeps=10``),
the rays of 10 sweeps for mask_lidar, the scene's boxes (moving and parked objects) and both masks.

    OMP_NUM_THREADS=1 python benchmarks/bench_build_binary.py                 # writes a synthetic world to a temp dir
    OMP_NUM_THREADS=1 python benchmarks/bench_build_binary.py --root /tmp/synth --quality

CPU time is ``time.process_time`` of this single process (one thread). The ray tracer comparison
traces one key frame's LiDAR rays (10 sweeps, as the pipeline does, without deduplication) with the
vectorised :func:`traverse` and with the per-ray Amanatides-Woo loop :func:`traverse_reference` on
a random subset, extrapolated per ray.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from b2s_core.binary.aggregate import EGO_BODY_NUSCENES, load_sweep, transform
from b2s_core.binary.lidar_mask import dedupe_rays, lidar_visibility
from b2s_core.binary.pipeline import BinaryBuildConfig, StageTimes, build_scene
from b2s_core.binary.raycast import traverse, traverse_reference
from b2s_core.grids import get_grid

STAGES = ("load", "aggregate", "place", "mask_lidar", "densify", "mask_camera")


def make_world(root: Path, scenes: int, frames: int) -> None:
    from b2s_core.synth import write_dataset

    write_dataset(root, scenes=scenes, frames=frames, formats=["nuscenes", "occ3d", "openoccupancy"], seed=0, image_size=(400, 225))


def bench_pipeline(reader, grid_name: str, console: Console, quality: bool, manifest, sweeps: int) -> None:
    grid = get_grid(grid_name)
    config = BinaryBuildConfig(grid=grid, sweeps=sweeps, ray_sweeps=10)
    times = StageTimes()
    frames = 0
    scores = []
    for scene in reader.scene_names():
        built = list(build_scene(partial(reader.read_scene, scene), config, times))
        frames += len(built)
        if quality and manifest is not None:
            from b2s_core.binary.truth_scores import score_frame

            truths = [manifest.ground_truth(scene, k) for k in range(len(built))]
            if grid.name in truths[0].semantics and grid.name in truths[0].instance:
                scores += [(scene, k, score_frame(f, t, truths, grid)) for k, (f, t) in enumerate(zip(built, truths))]
    table = Table(title=f"build-binary on {grid_name} {grid.shape}, sweeps={sweeps}: CPU-seconds per key frame ({frames} key frames)")
    table.add_column("stage")
    table.add_column("CPU-s / key frame", justify="right")
    for stage in STAGES:
        table.add_row(stage, f"{times.seconds.get(stage, 0.0) / frames:.3f}")
    table.add_row("[bold]total", f"[bold]{sum(times.seconds.values()) / frames:.3f}")
    console.print(table)
    if scores:
        quality_table = Table(title=f"quality vs exact truth on {grid_name}")
        for column in ("scene", "key", "static IoU (truth mask)", "static IoU (our mask)", "moving IoU", "trail %", "mask agreement %"):
            quality_table.add_column(column, justify="right")
        for scene, k, s in scores:
            quality_table.add_row(scene, str(k), f"{s['static_gt_mask']:.3f}", f"{s['static_our_mask']:.3f}", f"{s['moving']:.3f}",
                                  f"{100 * s['trail']:.2f}", f"{100 * s['mask_agreement']:.1f}")
        means = {key: np.mean([s[key] for _, _, s in scores]) for key in scores[0][2]}
        quality_table.add_row("mean", "", f"{means['static_gt_mask']:.3f}", f"{means['static_our_mask']:.3f}", f"{means['moving']:.3f}",
                              f"{100 * means['trail']:.2f}", f"{100 * means['mask_agreement']:.1f}")
        console.print(quality_table)


def key_frame_rays(reader, grid_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origins, ends, sweep index) of one key frame's 10 sweeps in its ego frame."""
    scene = reader.scene_names()[0]
    frame = list(reader.read_scene(scene))[-1]
    ego_from_global = np.linalg.inv(frame.global_from_ego)
    origins, ends, groups = [], [], []
    for number, sweep in enumerate([*frame.sweeps, frame.lidar][-10:]):
        points = load_sweep(sweep, EGO_BODY_NUSCENES)
        ends.append(transform(points.points_global, ego_from_global))
        origins.append(np.broadcast_to(transform(points.origin_global[None], ego_from_global), ends[-1].shape))
        groups.append(np.full(len(ends[-1]), number))
    return np.concatenate(origins), np.concatenate(ends), np.concatenate(groups)


def bench_tracer(reader, grid_name: str, console: Console, subset: int) -> None:
    grid = get_grid(grid_name)
    origins, ends, groups = key_frame_rays(reader, grid_name)
    started = time.process_time()
    count = 0
    for first in range(0, len(origins), 65536):
        count += len(traverse(origins[first : first + 65536], ends[first : first + 65536], grid, ordered=False))
    fast = time.process_time() - started
    rng = np.random.default_rng(0)
    pick = rng.choice(len(origins), size=min(subset, len(origins)), replace=False)
    started = time.process_time()
    traverse_reference(origins[pick], ends[pick], grid)
    slow_per_ray = (time.process_time() - started) / len(pick)
    slow = slow_per_ray * len(origins)
    started = time.process_time()
    exact = lidar_visibility(origins, ends, grid)
    exact_time = time.process_time() - started
    started = time.process_time()
    kept = dedupe_rays(origins, ends, grid, groups)
    deduped = lidar_visibility(origins[kept], ends[kept], grid)
    dedupe_time = time.process_time() - started
    lost = (exact.observed & ~deduped.observed).sum() / max(exact.observed.sum(), 1)
    table = Table(title=f"ray tracer on {grid_name}: one key frame, {len(origins):,} LiDAR rays, {count:,} ray-voxel steps")
    table.add_column("tracer")
    table.add_column("CPU-s", justify="right")
    table.add_column("ns / ray-voxel step", justify="right")
    table.add_row("vectorised NumPy (traverse)", f"{fast:.3f}", f"{1e9 * fast / count:.1f}")
    table.add_row(f"per-ray DDA loop (traverse_reference, {len(pick)} rays, extrapolated)", f"{slow:.1f}", f"{1e9 * slow / count:.1f}")
    table.add_row("speed-up", f"{slow / fast:.0f}x", "")
    table.add_row("mask_lidar, exact rays", f"{exact_time:.3f}", "")
    table.add_row(f"mask_lidar, one ray per sweep and end voxel ({len(kept):,} rays)", f"{dedupe_time:.3f}", "")
    table.add_row("observed voxels lost by deduplication", f"{100 * lost:.2f} %", "")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an existing synthetic world (default: write one to a temp dir)")
    parser.add_argument("--scenes", type=int, default=1)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--grids", default="occ3d,openoccupancy")
    parser.add_argument("--subset", type=int, default=3000, help="rays traced by the slow reference")
    parser.add_argument("--quality", action="store_true", help="also score every frame against the exact truth")
    parser.add_argument("--sweeps", type=int, default=10, help="static aggregation window (0 = whole scene)")
    parser.add_argument("--no-tracer", action="store_true", help="skip the ray tracer comparison")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from converters import open_reader

    console = Console()
    with tempfile.TemporaryDirectory() as temp:
        root = args.root
        if root is None:
            root = Path(temp) / "synth"
            console.print(f"writing a synthetic world ({args.scenes} scenes x {args.frames} key frames) to {root} ...")
            make_world(root, args.scenes, args.frames)
        manifest = None
        try:
            from b2s_core.synth import load_manifest

            manifest = load_manifest(root)
        except Exception:  # a dataset without a manifest: speed only
            pass
        reader = open_reader("nuscenes", root / "nuscenes", version=manifest.nuscenes_version if manifest else None)
        for grid_name in args.grids.split(","):
            bench_pipeline(reader, grid_name, console, args.quality, manifest, args.sweeps)
            if not args.no_tracer:
                bench_tracer(reader, grid_name, console, args.subset)


if __name__ == "__main__":
    main()
