"""Throughput of ``b2s convert`` (frames/s) on nuScenes-format data, with / without embedded images,
one worker vs two; plus the reader alone, to show where the time goes.

Data: the synthetic world's nuScenes + Occ3D writer (``b2s_core.synth.write_dataset``) when it is
available, else the real key frame of ``shared/data/nuscenes-keyframe`` replicated into S scenes
x F samples (same files, fresh tokens and timestamps, the real Occ3D sample as every frame's
label), which has the real sizes: 6 JPEGs of 1600x900 (~1 MB per frame) and 34,688 LiDAR points.

    OMP_NUM_THREADS=1 python benchmarks/bench_convert.py --scenes 4 --frames 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

torch.set_num_threads(1)

from converters import open_reader  # noqa: E402
from converters.jobs.convert import ConvertConfig, convert  # noqa: E402

SHARED = Path(os.environ.get("B2S_SHARED_DATA", REPO.parent / "shared" / "data"))


def replicate_keyframe(out: Path, scenes: int, frames: int) -> tuple[Path, Path]:
    """nuScenes v1.0-mini of ``scenes`` x ``frames`` copies of the real key frame, and its Occ3D labels root."""
    from _convert_data import wrap_nuscenes_keyframe

    frame = wrap_nuscenes_keyframe(SHARED / "nuscenes-keyframe", out)
    version = out / "v1.0-mini"
    tables = {p.stem: json.loads(p.read_text()) for p in version.glob("*.json")}
    base_sample, base_scene = tables["sample"][0], tables["scene"][0]
    base_sd, base_ann = tables["sample_data"], tables["sample_annotation"]
    samples, sample_data, annotations, scene_rows = [], [], [], []
    labels = out / "occ3d" / "gts"
    for s in range(scenes):
        tokens = [f"{s:04d}{k:04d}" + "0" * 24 for k in range(frames)]
        for k, token in enumerate(tokens):
            stamp = base_sample["timestamp"] + (s * frames + k) * 500_000
            samples.append({**base_sample, "token": token, "timestamp": stamp, "scene_token": f"scene{s:027d}",
                            "prev": tokens[k - 1] if k else "", "next": tokens[k + 1] if k + 1 < frames else ""})
            sample_data += [{**sd, "token": f"{token[:8]}{i:024d}", "sample_token": token, "timestamp": stamp}
                            for i, sd in enumerate(base_sd)]
            annotations += [{**a, "token": f"{token[:8]}a{i:023d}", "sample_token": token} for i, a in enumerate(base_ann)]
            (labels / f"scene-{s:04d}" / token).mkdir(parents=True)
            (labels / f"scene-{s:04d}" / token / "labels.npz").symlink_to(SHARED / "occ3d-sample" / "labels.npz")
        scene_rows.append({**base_scene, "token": f"scene{s:027d}", "name": f"scene-{s:04d}", "nbr_samples": frames,
                           "first_sample_token": tokens[0], "last_sample_token": tokens[-1]})
    for name, rows in (("sample", samples), ("sample_data", sample_data), ("sample_annotation", annotations), ("scene", scene_rows)):
        (version / f"{name}.json").write_text(json.dumps(rows))
    del frame
    return out, out / "occ3d"


def synth_dataset(out: Path, scenes: int, frames: int) -> tuple[Path, Path] | None:
    try:
        from b2s_core.synth import write_dataset  # type: ignore[attr-defined]
    except ImportError:
        return None
    write_dataset(out, scenes=scenes, frames=frames, formats=["nuscenes", "occ3d"], seed=0)
    return out / "nuscenes", out / "occ3d"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--data", choices=["auto", "real", "synth"], default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made = synth_dataset(tmp / "synth", args.scenes, args.frames) if args.data in ("auto", "synth") else None
        kind = "synthetic world"
        if made is None:
            if args.data == "synth":
                raise SystemExit("b2s_core.synth.write_dataset is not available")
            made, kind = replicate_keyframe(tmp / "real", args.scenes, args.frames), "real key frame replicated"
        dataroot, labels = made
        total = args.scenes * args.frames
        print(f"data: {kind}, {args.scenes} scenes x {args.frames} frames; cpu cores: {os.cpu_count()}")

        start = time.perf_counter()
        import nuscenes.nuscenes  # noqa: F401  (a one-off ~5 s: the devkit imports sklearn/scipy)

        print(f"{'import nuscenes-devkit (once per process)':45s} {time.perf_counter() - start:7.1f} s")
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        reader = open_reader("nuscenes", dataroot, labels=f"occ3d:{labels}")
        for scene in reader.scene_names():
            for frame in reader.read_scene(scene):
                frame.lidar.load()
        read_s, read_cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        print(f"{'reader only (open, tables, labels, LiDAR)':45s} {total / read_s:7.1f} frames/s  "
              f"{1000 * read_cpu / total:6.1f} CPU-ms/frame")

        for embed in (False, True):
            for workers in (1, 2):
                out = tmp / f"out-{embed}-{workers}.h5"
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                summary = convert(ConvertConfig("nuscenes", dataroot, out, labels=f"occ3d:{labels}",
                                                embed_images=embed, workers=workers))
                seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
                assert summary.frames == total and not summary.skipped
                size = out.stat().st_size / total / 1e6
                print(f"{'convert, images ' + ('embedded' if embed else 'as paths') + f', {workers} worker(s)':45s} "
                      f"{total / seconds:7.1f} frames/s  {1000 * cpu / total:6.1f} CPU-ms/frame  "
                      f"(wall {seconds:.1f} s, of which merging parts {summary.merge_seconds:.1f} s; {size:.2f} MB/frame)")


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()
