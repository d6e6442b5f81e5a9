"""Bytes per frame and random-access decode speed of the unified format vs Occ3D's labels.npz.

Frames: the real Occ3D sample (../shared/data/occ3d-sample/labels.npz) and variants of it
(shifted by a few voxels and mirrored) so that no two frames of a file are identical and
compression cannot profit from repeats. Decoding runs on one core (torch/BLAS threads 1).

    python benchmarks/bench_format.py [--frames 64] [--reads 400]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from rich.console import Console
from rich.table import Table

from b2s_core.grids import GRID_PRESETS
from b2s_core.occfile import OccDataset, OccWriter
from b2s_core.records import OccFrame
from b2s_core.taxonomy import OCC3D

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "occ3d-sample" / "labels.npz"


def variants(data: dict[str, np.ndarray], count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` distinct frames: the sample rolled by up to 6 voxels in x/y and mirrored in y.

    The roll wraps around (a few border columns move to the other side); statistics per frame stay
    those of the real frame.
    """
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        dx, dy = (0, 0) if k == 0 else rng.integers(-6, 7, size=2)
        flip = bool(k % 2)
        frame = {}
        for name, grid in data.items():
            grid = np.roll(grid, (int(dx), int(dy)), axis=(0, 1))
            frame[name] = np.ascontiguousarray(grid[:, ::-1] if flip else grid)
        out.append(frame)
    return out


def write_file(path: Path, frames: list[dict], semantic: bool, compression: str) -> None:
    with OccWriter(path, grid=GRID_PRESETS["occ3d"], taxonomy=OCC3D, source="occ3d", command="bench",
                   compression=compression) as writer:
        def occ_frames():
            for k, f in enumerate(frames):
                occupied = f["semantics"] != OCC3D.free_index
                yield OccFrame(
                    scene="bench", token=f"frame-{k}", timestamp=k, global_from_ego=np.eye(4), cameras=[],
                    occupancy=occupied,
                    semantics=f["semantics"] if semantic else None,
                    mask_lidar=f["mask_lidar"].astype(bool) if semantic else None,
                    mask_camera=f["mask_camera"].astype(bool) if semantic else None,
                )
        writer.write_scene("bench", occ_frames())


def time_reads(read, count: int, reads: int, seed: int = 1, rounds: int = 3) -> float:
    """Frames/s of ``reads`` random reads, the best of ``rounds`` (other processes only slow a round down)."""
    order = np.random.default_rng(seed).integers(0, count, size=reads)
    read(0)  # open handles / warm caches once
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i in order:
            read(int(i))
        best = max(best, reads / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "format.json")
    args = parser.parse_args()
    if not SAMPLE.is_file():
        sys.exit(f"error: {SAMPLE}: Occ3D sample not found")
    raw = dict(np.load(SAMPLE))
    frames = variants(raw, args.frames)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Occ3D's own layout: one np.savez_compressed file per frame.
        npz_paths = []
        for k, f in enumerate(frames):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **f)
            path = tmp / f"{k}.npz"
            path.write_bytes(buffer.getvalue())
            npz_paths.append(path)
        npz_bytes = np.mean([p.stat().st_size for p in npz_paths])
        npz_fps = time_reads(lambda i: {k: v for k, v in np.load(npz_paths[i]).items()}, len(frames), args.reads)
        rows.append(("Occ3D labels.npz (semantics + 2 masks)", npz_bytes, npz_fps, "np.savez_compressed"))
        npz_bin_paths = []
        for k, f in enumerate(frames):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, occupancy=(f["semantics"] != 17))
            path = tmp / f"bin{k}.npz"
            path.write_bytes(buffer.getvalue())
            npz_bin_paths.append(path)
        rows.append(("npz, binary only (bool grid)", np.mean([p.stat().st_size for p in npz_bin_paths]),
                     time_reads(lambda i: np.load(npz_bin_paths[i])["occupancy"], len(frames), args.reads), "np.savez_compressed"))
        for compression in ("zstd", "bzip2"):
            for semantic in (False, True):
                path = tmp / f"{compression}-{semantic}.h5"
                started = time.perf_counter()
                write_file(path, frames, semantic, compression)
                write_ms = (time.perf_counter() - started) / len(frames) * 1e3
                dataset = OccDataset(path)
                fields = ("semantics", "mask_lidar", "mask_camera") if semantic else ("occupancy",)
                # check losslessness on the way
                got = dataset.read(len(frames) - 1, fields=fields)
                np.testing.assert_array_equal(got.occupancy, frames[-1]["semantics"] != 17)
                if semantic:
                    np.testing.assert_array_equal(got.semantics, frames[-1]["semantics"])
                    np.testing.assert_array_equal(got.mask_camera, frames[-1]["mask_camera"].astype(bool))
                fps = time_reads(partial(dataset.read, fields=fields), len(frames), args.reads)
                label = f"b2s HDF5 {compression}, " + ("(b) semantics + mask_lidar + mask_camera" if semantic else "(a) binary only")
                note = f"file size / {len(frames)} frames; write {write_ms:.1f} ms/frame"
                rows.append((label, path.stat().st_size / len(frames), fps, note))
                dataset.close()
    table = Table(title=f"Unified format on the real Occ3D frame ({args.frames} distinct variants, 1 core)")
    for col in ("layout", "bytes / frame", "decode frames/s", "note"):
        table.add_column(col)
    for label, size, fps, note in rows:
        table.add_row(label, f"{size:,.0f}", f"{fps:,.0f}", note)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([dict(zip(("layout", "bytes_per_frame", "frames_per_s", "note"), r)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
