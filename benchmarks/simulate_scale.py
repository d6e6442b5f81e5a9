"""The scale plan of docs/scale.md: what 8000 scenes / 1 million key frames cost on N cores and M GPUs.

Three parts:

1. A discrete-event simulation of the Ray backend's scheduling (:func:`schedule`): one task per
   scene, handed to whichever worker frees first, in longest-first or random order, each task
   paying a per-task overhead and the driver dispatching at most one task per ``dispatch`` seconds.
   Scene durations are frames x measured CPU-s per frame x a per-scene factor whose spread is the
   measured one (``benchmarks/bench_scale_costs.py``).
2. Real local Ray (``--ray``): 8000 zero-work tasks (Ray's own per-task cost here), and a few
   hundred sleep tasks of the simulated duration distribution, scaled down, in both orders: their
   real makespans against the simulation's.
3. The plan (``--plan``): makespans on N = 2, 32, 96, 512 cores, the serial merge, the raw-blob
   I/O bound, training and auto-labelling on M = 8, 64 GPUs, storage and cost, as Markdown tables.
   Every assumption is a named constant below.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale_costs.py --json benchmarks/results/scale_costs.json
    python benchmarks/simulate_scale.py --ray --plan --costs benchmarks/results/scale_costs.json \\
        --json benchmarks/results/scale_sim.json
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# -- assumptions (not measured here; docs/scale.md lists them) -----------------------------------------
PAPER_SCENES = 8000
PAPER_FRAMES = 320_000  # ~40 key frames per OpenScene scene (issue 18; 20 s at 2 Hz)
PAPER_PRETRAIN_GPU_HOURS = 1032.0  # Table 3, Sparse-LS pre-training on 8000 scenes, A100
PAPER_EPOCHS = 24  # Sec. 4.1: 24 epochs, batch 8
FORWARD_SHARE = 2.0 / 6.5  # forward / whole training step, measured on CPU (docs/training.md), assumed on A100
PAPER_INFER_CPU_S = 8.36  # Sparse-LS paper preset, one frame, CPU inference (docs/models.md)
SMALL_INFER_CPU_S = 0.64  # Sparse-LS small preset, the same (docs/models.md)
LOAD_CPU_S_PER_SAMPLE = 0.3  # augmented loading of one 256x704 frame (docs/training.md)
STORAGE_GB_S = 2.0  # aggregate read bandwidth of the shared file system holding the raw blobs
CORE_HOUR_USD = 0.04  # price of one core (vCPU) hour
CORES_PER_NODE = 32  # cores of one machine; a job per machine writes its own shard (--shard i/N)
GPU_HOUR_USD = 3.0  # price of one A100 hour
FRAMES_PER_SCENE = 40
SCENE_LENGTH_CV = 1.0  # spread of log lengths in the "variable" case (log-normal)
CORES = (2, 32, 96, 512)
GPUS = (8, 64)
SCALES = {"8000 scenes": PAPER_SCENES, "1 M key frames": 1_000_000 // FRAMES_PER_SCENE}
TITLES = {"8000 scenes": "8000 scenes (320,000 key frames)", "1 M key frames": "1 M key frames (25,000 scenes of 40)"}


@dataclass
class Schedule:
    """Result of :func:`schedule`: makespan (s), busy (workers,) s, start (tasks,) s, worker (tasks,)."""

    makespan: float
    busy: np.ndarray
    start: np.ndarray
    worker: np.ndarray


def task_order(durations: np.ndarray, order: str, seed: int = 0) -> np.ndarray:
    """Indices of ``durations`` (tasks,) in dispatch order: 'longest' first (stable), 'random', or 'given'."""
    if order == "longest":
        return np.argsort(-durations, kind="stable")
    if order == "random":
        return np.random.default_rng(seed).permutation(len(durations))
    if order == "given":
        return np.arange(len(durations))
    raise ValueError(f"order must be longest, random or given, got {order!r}")


def schedule(durations, workers: int, order: str = "longest", overhead: float = 0.0, dispatch: float = 0.0,
             seed: int = 0) -> Schedule:
    """Greedy list scheduling, as Ray runs a queue of tasks on ``workers`` one-CPU workers.

    durations: (tasks,) seconds of work per task. Each task goes, in dispatch order, to the worker
    that frees first (ties: lowest worker index) and holds it for ``duration + overhead``; the
    driver hands out at most one task per ``dispatch`` seconds, so task k starts no earlier than
    k * dispatch.
    """
    durations = np.asarray(durations, dtype=float)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if (durations < 0).any():
        raise ValueError("durations must be >= 0")
    free = [(0.0, w) for w in range(workers)]  # (time the worker frees, worker index)
    busy = np.zeros(workers)
    start = np.zeros(len(durations))
    worker = np.zeros(len(durations), dtype=int)
    for k, task in enumerate(task_order(durations, order, seed)):
        at, w = heapq.heappop(free)
        begin = max(at, k * dispatch)
        hold = durations[task] + overhead
        start[task], worker[task] = begin, w
        busy[w] += hold
        heapq.heappush(free, (begin + hold, w))
    makespan = max(t for t, _ in free) if len(durations) else 0.0
    return Schedule(makespan, busy, start, worker)


def lower_bound(durations, workers: int, overhead: float = 0.0) -> float:
    """No schedule of ``durations`` (tasks,) on ``workers`` finishes sooner: max(total / workers, longest)."""
    durations = np.asarray(durations, dtype=float) + overhead
    return max(durations.sum() / workers, durations.max(initial=0.0))


def round_robin(durations, workers: int, overhead: float = 0.0) -> float:
    """Makespan of static sharding, no scheduler: worker w runs tasks w, w + workers, ... of
    ``durations`` (tasks,) in the data's order (the old ``--shard i/N``)."""
    durations = np.asarray(durations, dtype=float) + overhead
    return max(durations[w::workers].sum() for w in range(workers))


def scene_durations(scenes: int, cpu_s_per_frame: float, scene_cv: float, variable: bool, seed: int = 0):
    """(frames (scenes,), seconds (scenes,)) of a synthetic dataset: FRAMES_PER_SCENE key frames per
    scene, or log-normal lengths of that mean and SCENE_LENGTH_CV (``variable``); each scene's
    per-frame cost is ``cpu_s_per_frame`` times a log-normal factor of mean 1 and CV ``scene_cv``."""
    rng = np.random.default_rng(seed)

    def lognormal(mean: float, cv: float, size: int) -> np.ndarray:
        sigma = np.sqrt(np.log1p(cv**2))
        return rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size)

    frames = np.maximum(1, np.rint(lognormal(FRAMES_PER_SCENE, SCENE_LENGTH_CV, scenes))) if variable \
        else np.full(scenes, FRAMES_PER_SCENE, dtype=float)
    factor = lognormal(1.0, scene_cv, scenes) if scene_cv > 0 else np.ones(scenes)
    return frames, frames * cpu_s_per_frame * factor


# -- real Ray -----------------------------------------------------------------------------------------
def ray_measurements(tasks: int, cpus: int, sleep_tasks: int, mean_sleep: float, scene_cv: float) -> dict:
    """Ray's cost per zero-work task on a local instance of ``cpus`` CPUs (least of 3 runs), and
    sleep tasks of the simulated duration distribution (mean ``mean_sleep`` s) run longest-first
    and random, each real makespan beside the simulation's with the measured overhead."""
    import ray

    # address="local": always a fresh instance of our own, never another job's cluster on this machine
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=1, max_retries=0)
        def noop(i):
            return i

        @ray.remote(num_cpus=1, max_retries=0)
        def nap(seconds):
            time.sleep(seconds)
            return seconds

        ray.get([noop.remote(i) for i in range(4 * cpus)])  # workers started before the clock runs
        walls = []
        for _ in range(3):  # the machine is shared: contention only adds time, keep the least
            started = time.perf_counter()
            ray.get([noop.remote(i) for i in range(tasks)])
            walls.append(time.perf_counter() - started)
        wall = min(walls)
        result = {"cpus": cpus, "noop_tasks": tasks, "noop_wall_s": wall, "per_task_driver_s": wall / tasks,
                  "per_task_worker_s": wall * cpus / tasks, "load_1min": round(os.getloadavg()[0], 2),
                  "cores": os.cpu_count(), "ray": ray.__version__}
        _, durations = scene_durations(sleep_tasks, mean_sleep / FRAMES_PER_SCENE, scene_cv, variable=True, seed=1)
        for order in ("longest", "random"):
            picked = task_order(durations, order, seed=2)
            started = time.perf_counter()
            ray.get([nap.remote(float(durations[i])) for i in picked])
            real = time.perf_counter() - started
            simulated = schedule(durations, cpus, order, seed=2, overhead=result["per_task_worker_s"]).makespan
            result[f"sleep_{order}"] = {"tasks": sleep_tasks, "real_s": real, "simulated_s": simulated,
                                        "lower_bound_s": lower_bound(durations, cpus)}
        return result
    finally:
        ray.shutdown()


# -- the plan -----------------------------------------------------------------------------------------
def fmt_hours(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds / 60:.0f} min"
    return f"{hours:,.1f} h" if hours < 100 else f"{hours:,.0f} h"


def plan(costs: dict, ray_overhead: float, dispatch: float) -> tuple[str, dict]:
    """Markdown tables of the plan and the figures behind them, from bench_scale_costs.py's JSON."""
    stages = costs["stages"]
    cv = costs["build_binary_per_scene"]["cv"]
    raw = costs["raw_blobs"].get("real_nuscenes", costs["raw_blobs"]["synthetic"])
    raw_bytes = raw["lidar_key"] + raw["lidar_sweeps"] + raw["cameras_key"]
    # autolabel at the paper preset on CPU: the paper model's inference plus what autolabel adds
    # around the small model's (loading, Top-2, writing), both measured on this CPU
    autolabel_paper_cpu = PAPER_INFER_CPU_S + max(0.0, stages["autolabel"]["cpu_s_per_frame"] - SMALL_INFER_CPU_S)
    per_frame = {"convert": stages["convert"]["cpu_s_per_frame"], "build-binary": stages["build_binary"]["cpu_s_per_frame"],
                 "autolabel (paper preset, CPU)": autolabel_paper_cpu}
    merge = {"convert": stages["convert"]["merge_wall_s_per_frame"], "build-binary": stages["build_binary"]["merge_wall_s_per_frame"],
             "autolabel (paper preset, CPU)": stages["autolabel"]["merge_wall_s_per_frame"]}
    # bytes each stage reads per frame: the key-frame LiDAR; every sweep and camera; the cameras and the binary file
    reads = {"convert": raw["lidar_key"], "build-binary": raw_bytes,
             "autolabel (paper preset, CPU)": raw["cameras_key"] + stages["build_binary"]["bytes_per_frame"]}
    gpu_s_per_sample = PAPER_PRETRAIN_GPU_HOURS * 3600 / (PAPER_FRAMES * PAPER_EPOCHS)
    figures: dict = {"gpu_s_per_sample": gpu_s_per_sample, "autolabel_paper_cpu_s": autolabel_paper_cpu, "raw_bytes_per_frame": raw_bytes,
                     "cores": {}, "gpus": {}}
    lines = []

    for scale, scenes in SCALES.items():
        lines += [f"#### {TITLES[scale]}: CPU stages on N cores (Ray backend, longest first)", "",
                  "| stage | CPU-hours | N | compute makespan | merge (serial) | raw-blob I/O bound | total | bound by | cost "
                  f"| total, one shard per {CORES_PER_NODE}-core node |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for stage, cost in per_frame.items():
            frames, durations = scene_durations(scenes, cost, cv, variable=True)
            cpu_hours = durations.sum() / 3600
            for n in CORES:
                compute = schedule(durations, n, "longest", overhead=ray_overhead, dispatch=dispatch).makespan
                merge_s = frames.sum() * merge[stage]
                io_s = frames.sum() * reads[stage] / (STORAGE_GB_S * 1e9)
                total = max(compute, io_s) + merge_s
                bound = max((("compute", compute), ("I/O", io_s), ("merge", merge_s)), key=lambda kv: kv[1])[0]
                usd = n * total / 3600 * CORE_HOUR_USD
                # sharded: each node merges only its own parts, all nodes at once (readers open the shards as one dataset)
                sharded = max(compute, io_s) + merge_s / -(-n // CORES_PER_NODE)
                figures["cores"][f"{scale}|{stage}|{n}"] = {"compute_s": compute, "merge_s": merge_s, "io_s": io_s, "total_s": total,
                                                            "cpu_hours": cpu_hours, "usd": usd, "sharded_total_s": sharded}
                lines.append(f"| {stage} | {cpu_hours:,.0f} | {n} | {fmt_hours(compute)} | {fmt_hours(merge_s)} | {fmt_hours(io_s)} | "
                             f"**{fmt_hours(total)}** | {bound} | ${usd:,.0f} | {fmt_hours(sharded)} |")
        lines.append("")

    lines += ["#### GPUs (A100, the paper's per-sample time)", "",
              "| job | frames | GPU-hours | M GPUs | wall | loader cores / GPU needed | cost |", "|---|---|---|---|---|---|---|"]
    for scale, scenes in SCALES.items():
        frames = scenes * FRAMES_PER_SCENE
        jobs = {"pre-training, 24 epochs": frames * PAPER_EPOCHS * gpu_s_per_sample,
                "auto-labelling, Top-2": frames * gpu_s_per_sample * FORWARD_SHARE,
                "auto-labelling, Top-2 + 4-flip TTA": 4 * frames * gpu_s_per_sample * FORWARD_SHARE}
        for job, gpu_s in jobs.items():
            loader = LOAD_CPU_S_PER_SAMPLE / gpu_s_per_sample if job.startswith("pre") else LOAD_CPU_S_PER_SAMPLE / (gpu_s / frames)
            for m in GPUS:
                figures["gpus"][f"{scale}|{job}|{m}"] = {"gpu_hours": gpu_s / 3600, "wall_s": gpu_s / m}
                lines.append(f"| {job} | {frames:,} | {gpu_s / 3600:,.0f} | {m} | {fmt_hours(gpu_s / m)} | {loader:.1f} | "
                             f"${gpu_s / 3600 * GPU_HOUR_USD:,.0f} |")
    lines.append("")

    lines += ["#### Storage", "", "| data | bytes / key frame | 8000 scenes | 1 M key frames |", "|---|---|---|---|"]
    rows = {"raw sensor blobs read by build-binary (LiDAR key frame + 9 sweeps, 6 cameras)": raw_bytes,
            "converted file (`b2s convert`: semantics, masks, key-frame points, image paths)": stages["convert"]["bytes_per_frame"],
            "binary occupancy + masks (`b2s build-binary`)": stages["build_binary"]["bytes_per_frame"],
            "Top-2 pseudo-labels (`b2s autolabel --top2`)": stages["autolabel"]["bytes_per_frame"]}
    for name, per in rows.items():
        lines.append(f"| {name} | {per / 1e3:,.0f} KB | {per * PAPER_FRAMES / 1e9:,.0f} GB | {per * 1e6 / 1e9:,.0f} GB |")
    figures["storage_bytes_per_frame"] = rows
    return "\n".join(lines) + "\n", figures


def sim_orders(costs: dict, ray_overhead: float, dispatch: float) -> tuple[str, dict]:
    """Makespan of longest-first against random order, build-binary, both scales, fixed and variable lengths."""
    cost, cv = costs["stages"]["build_binary"]["cpu_s_per_frame"], costs["build_binary_per_scene"]["cv"]
    lines = ["| scenes | lengths | N | lower bound | longest first | random | random / longest | static round-robin shards |",
             "|---|---|---|---|---|---|---|---|"]
    figures = {}
    for scale, scenes in SCALES.items():
        for variable in (False, True):
            _, durations = scene_durations(scenes, cost, cv, variable)
            for n in CORES:
                bound = lower_bound(durations, n, ray_overhead)
                lpt = schedule(durations, n, "longest", ray_overhead, dispatch).makespan
                rnd = np.mean([schedule(durations, n, "random", ray_overhead, dispatch, seed=s).makespan for s in range(3)])
                static = round_robin(durations, n, ray_overhead)
                figures[f"{scale}|{variable}|{n}"] = {"lower_bound_s": bound, "longest_s": lpt, "random_s": rnd, "round_robin_s": static}
                lines.append(f"| {scenes:,} | {'log-normal, CV 1' if variable else f'all {FRAMES_PER_SCENE}'} | {n} | {fmt_hours(bound)} | "
                             f"{fmt_hours(lpt)} ({lpt / bound:.3f}x) | {fmt_hours(rnd)} ({rnd / bound:.3f}x) | {rnd / lpt:.2f} | "
                             f"{fmt_hours(static)} ({static / bound:.3f}x) |")
    return "\n".join(lines) + "\n", figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", type=Path, default=Path("benchmarks/results/scale_costs.json"))
    parser.add_argument("--ray", action="store_true", help="measure Ray's per-task cost on a local instance")
    parser.add_argument("--ray-tasks", type=int, default=8000)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--sleep-tasks", type=int, default=200)
    parser.add_argument("--mean-sleep", type=float, default=0.1, help="mean seconds of a sleep task")
    parser.add_argument("--overhead", type=float, help="per-task overhead (s) for the simulation; default: Ray's, measured")
    parser.add_argument("--dispatch", type=float, help="driver seconds per task; default: Ray's, measured")
    parser.add_argument("--plan", action="store_true", help="print the plan's Markdown tables")
    parser.add_argument("--json", type=Path, help="write every figure here (atomically)")
    args = parser.parse_args()
    if not args.costs.is_file():
        raise SystemExit(f"{args.costs}: not found; run benchmarks/bench_scale_costs.py --json {args.costs} first")
    try:
        costs = json.loads(args.costs.read_text())
        cv = costs["build_binary_per_scene"]["cv"]
    except (ValueError, KeyError) as err:
        raise SystemExit(f"{args.costs}: not a bench_scale_costs.py result ({err})") from None

    out: dict = {"costs": str(args.costs)}
    overhead, dispatch = args.overhead or 0.0, args.dispatch or 0.0
    if args.ray:
        out["ray"] = ray_measurements(args.ray_tasks, args.ray_cpus, args.sleep_tasks, args.mean_sleep, cv)
        overhead = args.overhead if args.overhead is not None else out["ray"]["per_task_worker_s"]
        dispatch = args.dispatch if args.dispatch is not None else out["ray"]["per_task_driver_s"]
        print(json.dumps(out["ray"], indent=2))
    out["overhead_s"], out["dispatch_s"] = overhead, dispatch
    table, out["orders"] = sim_orders(costs, overhead, dispatch)
    print(table)
    if args.plan:
        text, out["plan"] = plan(costs, overhead, dispatch)
        print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_name(args.json.name + ".tmp")
        partial.write_text(json.dumps(out, indent=2, default=float) + "\n")
        partial.replace(args.json)


if __name__ == "__main__":
    sys.exit(main())
