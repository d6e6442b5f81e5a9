"""Benchmark ``--backend ray`` against the local process pool (``--workers``) of ``b2s build-binary``
and ``b2s convert``.

Input: a synthetic world in nuScenes format (``b2s_core.synth``, 8 scenes by default), built and
converted with the local pool of ``--workers`` processes and with the Ray backend on a local Ray
instance of as many CPUs. Ray is timed twice: the whole call (``ray.init`` included, as a one-off
``b2s build-binary --backend ray`` pays it) and on an instance started beforehand (as on a running
cluster). Outputs are checked equal frame for frame.

    python benchmarks/bench_ray_backend.py                      # 8 scenes x 4 key frames, 2 workers
    python benchmarks/bench_ray_backend.py --scenes 16 --workers 4

On a machine of W cores the expected speed-up over the local pool is ~1.0x: both run one scene per
core; Ray adds its start-up (seconds) and per-task scheduling (milliseconds), and wins only when it
can use more machines than one (``--ray-address``) or when the longest-first order shortens the tail.
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

from b2s_core.occfile import OccDataset
from converters.jobs.build_binary import BuildBinaryJob, build_binary
from converters.jobs.convert import ConvertConfig, convert

GRID = "-25.6,-25.6,-2,25.6,25.6,4.4:0.4"  # 128 x 128 x 16: a scene takes about a second per core


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _check_equal(a_path: Path, b_path: Path, fields: tuple[str, ...]) -> None:
    a, b = OccDataset(a_path), OccDataset(b_path)
    try:
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert a[i].token == b[i].token
            for field in fields:
                assert np.array_equal(getattr(a[i], field), getattr(b[i], field)), (i, field)
    finally:
        a.close()
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4, help="key frames per scene")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", type=Path, help="a folder for the synthetic world and outputs (default: a temp dir)")
    args = parser.parse_args()

    import ray

    from b2s_core.synth import write_dataset

    with tempfile.TemporaryDirectory() as temp:
        root = args.root or Path(temp)
        data = root / "world"
        if not (data / "nuscenes").is_dir():
            write_dataset(data, scenes=args.scenes, frames=args.frames, formats=["nuscenes"], seed=0, image_size=(160, 90))
        w = args.workers

        def build(name: str, backend: str) -> None:
            build_binary(BuildBinaryJob("nuscenes", data / "nuscenes", root / name, grid=GRID, ray_sweeps=5,
                                        workers=w, backend=backend, overwrite=True))

        def conv(name: str, backend: str) -> None:
            convert(ConvertConfig("nuscenes", data / "nuscenes", root / name, grid=GRID, workers=w, backend=backend,
                                  overwrite=True))

        rows = []
        for what, run, fields in (("build-binary", build, ("occupancy", "mask_lidar", "mask_camera")),
                                  ("convert", conv, ("occupancy", "points"))):
            local = _timed(partial(run, f"{what}-local.h5", "local"))
            cold = _timed(partial(run, f"{what}-ray-cold.h5", "ray"))  # starts and stops its own Ray instance
            ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
            try:
                warm = _timed(partial(run, f"{what}-ray.h5", "ray"))
            finally:
                ray.shutdown()
            _check_equal(root / f"{what}-local.h5", root / f"{what}-ray.h5", fields)
            _check_equal(root / f"{what}-local.h5", root / f"{what}-ray-cold.h5", fields)
            rows.append((what, local, cold, warm))

    table = Table(title=f"{args.scenes} scenes x {args.frames} key frames, {w} workers / Ray CPUs (wall seconds)")
    for column in ("command", "local --workers", "ray (with start-up)", "ray (running instance)",
                   "speed-up with start-up", "speed-up running"):
        table.add_column(column, justify="right")
    for what, local, cold, warm in rows:
        table.add_row(what, f"{local:.2f}", f"{cold:.2f}", f"{warm:.2f}", f"{local / cold:.2f}x", f"{local / warm:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
