"""Per-key-frame costs for the scale plan (docs/scale.md): CPU-s of convert, build-binary and
autolabel (and of their serial merge of the per-scene parts), bytes per frame of the outputs and
of the raw sensor blobs, and the spread of the per-scene cost that benchmarks/simulate_scale.py
schedules.

Data: a synthetic world (``b2s_core.synth.write_dataset``, nuScenes + Occ3D formats, 6 cameras
400x225), read through the real nuScenes reader; raw blob sizes also from the real nuScenes key
frame under shared/data when it is there. Each stage runs ``--repeats`` times in this process (one
thread, ``time.process_time``) and the minimum is kept: the development machine is shared with
other jobs, and contention only ever adds time. The load average and core count are stored beside
every figure.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale_costs.py --json benchmarks/results/scale_costs.json

Autolabel needs an offboard checkpoint: one is trained for a single step (``b2s finetune
--offboard``, not timed) at ``--preset`` (default small); its weights do not matter for the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from b2s_core.apps.autolabel import AutolabelConfig, autolabel  # noqa: E402
from b2s_core.binary.pipeline import BinaryBuildConfig, StageTimes, build_scene  # noqa: E402
from b2s_core.grids import get_grid  # noqa: E402
from b2s_core.occfile import ResumableWriter  # noqa: E402
from b2s_core.synth import write_dataset  # noqa: E402
from converters import open_reader  # noqa: E402
from converters.jobs.build_binary import BuildBinaryJob, build_binary  # noqa: E402
from converters.jobs.convert import ConvertConfig, convert  # noqa: E402

SHARED = Path(os.environ.get("B2S_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine_load() -> dict:
    """The 1-minute load average and the core count: how contended the figure beside it was."""
    return {"load_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}


def timed_min(run, repeats: int) -> tuple[float, dict, object]:
    """(least CPU-s of ``repeats`` calls of ``run``, the machine load at that call, its last result)."""
    best, load, result = float("inf"), {}, None
    for _ in range(repeats):
        started = time.process_time()
        result = run()
        spent = time.process_time() - started
        if spent < best:
            best, load = spent, machine_load()
    return best, load, result


class MergeClock:
    """Times :meth:`ResumableWriter.finalize` (the serial merge of the per-scene parts, run by the
    driver after every worker is done) inside a whole run, CPU and wall: on a cluster it is the part
    that does not shrink with more workers."""

    def __init__(self) -> None:
        self.cpu, self.wall = [], []
        self._finalize = ResumableWriter.finalize

    def __enter__(self) -> MergeClock:
        clock, finalize = self, self._finalize

        def timed(writer, *args, **kwargs):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return finalize(writer, *args, **kwargs)
            finally:
                clock.cpu.append(time.process_time() - cpu)
                clock.wall.append(time.perf_counter() - wall)

        ResumableWriter.finalize = timed
        return self

    def __exit__(self, *exc) -> None:
        ResumableWriter.finalize = self._finalize


def fresh(path: Path) -> Path:
    """``path`` removed (file or folder with its ``.parts``) so that each repeat does the whole work."""
    for p in (path, path.with_name(path.name + ".parts")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return path


def raw_blob_bytes(root: Path) -> dict:
    """Bytes per key frame of the raw sensor files a build reads (LiDAR key frames + sweeps, camera
    key frames), in the synthetic world and in the real nuScenes key frame."""
    samples = root / "nuscenes" / "samples"
    sweeps = root / "nuscenes" / "sweeps"
    keys = len(list((samples / "LIDAR_TOP").glob("*.pcd.bin")))
    size = lambda folder, pattern: sum(p.stat().st_size for p in folder.rglob(pattern))  # noqa: E731
    out = {
        "synthetic": {
            "lidar_key": size(samples / "LIDAR_TOP", "*.pcd.bin") / keys,
            "lidar_sweeps": size(sweeps, "*.pcd.bin") / keys if sweeps.is_dir() else 0.0,
            "cameras_key": size(samples, "*.jpg") / keys,
        }
    }
    real = SHARED / "nuscenes-keyframe"
    if real.is_dir():
        # One real key frame: 6 cameras 1600x900 and one LIDAR_TOP sweep of 34,688 points. nuScenes
        # records LiDAR at 20 Hz and key frames at 2 Hz: ~9 sweeps between key frames of the same
        # size (an assumption from the sensor rates, the sweeps themselves are not here).
        lidar = sum(p.stat().st_size for p in real.glob("*LIDAR_TOP*.pcd.bin"))
        out["real_nuscenes"] = {"lidar_key": lidar, "lidar_sweeps": 9 * lidar,
                                "cameras_key": sum(p.stat().st_size for p in real.glob("*.jpg"))}
    return out


def per_scene_costs(dataroot: Path, version: str, repeats: int) -> dict:
    """CPU-s per key frame of build-binary's compute (no writing) for each scene: its spread across
    scenes is the per-frame cost distribution of the simulation."""
    reader = open_reader("nuscenes", dataroot, version=version)
    config = BinaryBuildConfig(grid=get_grid("occ3d"))
    costs = {}
    for scene in reader.scene_names():
        read_scene = partial(reader.read_scene, scene)
        spent, _, frames = timed_min(lambda read_scene=read_scene: len(list(build_scene(read_scene, config, StageTimes()))),
                                     repeats)
        costs[scene] = spent / frames
    return costs


def offboard_checkpoint(semantic: Path, out: Path, preset: str) -> Path:
    """A one-step offboard Sparse-LS checkpoint (only its architecture matters for the cost)."""
    command = [sys.executable, "-m", "b2s_cli.app", "finetune", "--offboard", "--model", "sparse-ls", "--preset", preset,
               "--semantic-data", str(semantic), "--batch-size", "1", "--device", "cpu", "--workers", "0",
               "--max-steps", "1", "--out", str(out), "--overwrite"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out / "checkpoint.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="small", help="model preset of the autolabel checkpoint")
    parser.add_argument("--json", type=Path, help="write the figures here (atomically)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_dataset(root / "world", scenes=args.scenes, frames=args.frames, formats=["nuscenes", "occ3d"], seed=0)
        dataroot, labels, version = manifest.path("nuscenes"), manifest.path("occ3d"), manifest.nuscenes_version
        frames = args.scenes * args.frames
        figures: dict = {"frames": frames, "scenes": args.scenes, "repeats": args.repeats, "stages": {}}

        semantic = root / "semantic.h5"
        with MergeClock() as merge:
            spent, load, _ = timed_min(lambda: convert(ConvertConfig("nuscenes", dataroot, fresh(semantic), version=version,
                                                                     labels=f"occ3d:{labels}")), args.repeats)
        figures["stages"]["convert"] = {"cpu_s_per_frame": spent / frames, "bytes_per_frame": semantic.stat().st_size / frames,
                                        "merge_cpu_s_per_frame": min(merge.cpu) / frames,
                                        "merge_wall_s_per_frame": min(merge.wall) / frames, **load}

        binary = root / "binary.h5"
        with MergeClock() as merge:
            spent, load, _ = timed_min(lambda: build_binary(BuildBinaryJob("nuscenes", dataroot, fresh(binary), version=version,
                                                                           grid="occ3d")), args.repeats)
        figures["stages"]["build_binary"] = {"cpu_s_per_frame": spent / frames, "bytes_per_frame": binary.stat().st_size / frames,
                                             "merge_cpu_s_per_frame": min(merge.cpu) / frames,
                                             "merge_wall_s_per_frame": min(merge.wall) / frames, **load}

        checkpoint = offboard_checkpoint(semantic, root / "offboard", args.preset)
        labels_out = root / "pseudo.h5"
        with MergeClock() as merge:
            spent, load, _ = timed_min(lambda: autolabel(checkpoint, binary, fresh(labels_out), AutolabelConfig(mode="top2")),
                                       args.repeats)
        figures["stages"]["autolabel"] = {"cpu_s_per_frame": spent / frames, "bytes_per_frame": labels_out.stat().st_size / frames,
                                          "merge_cpu_s_per_frame": min(merge.cpu) / frames,
                                          "merge_wall_s_per_frame": min(merge.wall) / frames, "preset": args.preset, **load}

        scene_costs = per_scene_costs(dataroot, version, args.repeats)
        values = np.array(list(scene_costs.values()))
        figures["build_binary_per_scene"] = {"cpu_s_per_frame": scene_costs, "mean": float(values.mean()),
                                             "cv": float(values.std() / values.mean()), **machine_load()}
        figures["raw_blobs"] = raw_blob_bytes(root / "world")

    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_name(args.json.name + ".tmp")
        partial.write_text(text + "\n")
        partial.replace(args.json)


if __name__ == "__main__":
    main()
