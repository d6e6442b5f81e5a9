"""Benchmark of the synthetic world: one scene of 20 key frames with 20 Hz sweeps, every format.

    OMP_NUM_THREADS=1 python benchmarks/bench_synth.py                      # low resolution (400x225)
    OMP_NUM_THREADS=1 python benchmarks/bench_synth.py --image-size full    # 1600x900 / 1920x1080
    OMP_NUM_THREADS=1 python benchmarks/bench_synth.py --frames 2 --stages  # per-stage costs + references

Reports wall and CPU time of ``write_dataset`` and, with ``--stages``, the cost of each stage on
one key frame next to the straightforward implementations (per-ray loops) it replaces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from b2s_core.binary.lidar_mask import lidar_visibility  # noqa: E402
from b2s_core.binary.raycast import traverse, traverse_reference  # noqa: E402
from b2s_core.grids import GRID_PRESETS  # noqa: E402
from b2s_core.synth import FORMATS, write_dataset  # noqa: E402
from b2s_core.synth.geometry import transform_points  # noqa: E402
from b2s_core.synth.groundtruth import exact_camera_visibility, semantic_occupancy  # noqa: E402
from b2s_core.synth.raycast import cast_rays, cast_rays_reference  # noqa: E402
from b2s_core.synth.sensors import NUSCENES_CAMERAS, LidarSpec, camera_rays, render_camera, simulate_lidar  # noqa: E402
from b2s_core.synth.world import build_world  # noqa: E402


def timed(fn, repeat: int = 1):
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def stages(image_size) -> None:
    world = build_world(0, 0, 10.0)
    prims, pose = world.snapshot(0.0), world.global_from_ego(0.0)
    spec = LidarSpec()
    rng = np.random.default_rng(0)
    t_lidar, sweep = timed(lambda: simulate_lidar(prims, world.ground, pose, spec, rng), 3)
    cam = NUSCENES_CAMERAS[0]
    size = cam.size_for(image_size)
    t_cam, view = timed(lambda: render_camera(prims, world, pose, cam, size))
    # the straightforward caster on a sample of the same camera's rays, scaled to the whole image
    global_from_cam = pose @ cam.ego_from_cam
    dirs = camera_rays(cam, size) @ global_from_cam[:3, :3].T
    sample = dirs.reshape(-1, 3)[:: max(1, dirs.shape[0] * dirs.shape[1] // 1500)][None]
    t_ref_sample, _ = timed(lambda: cast_rays_reference(prims, global_from_cam[:3, 3], sample, max_range=160.0))
    t_fast_cast, _ = timed(lambda: cast_rays(prims, global_from_cam[:3, 3], dirs, max_range=160.0, tile=(8, 8)))
    t_ref_cast = t_ref_sample * (dirs.shape[0] * dirs.shape[1]) / sample.shape[1]
    points = transform_points(spec.ego_from_sensor, sweep.points[:, :3].astype(np.float64))
    origin = spec.ego_from_sensor[:3, 3]
    grid = GRID_PRESETS["occ3d"]
    origins = np.broadcast_to(origin, points.shape)
    t_trav, _ = timed(lambda: traverse(origins, points, grid, ordered=False))
    few = points[:: max(1, len(points) // 1000)]
    t_trav_ref = timed(lambda: traverse_reference(origins[: len(few)], few, grid))[0] * len(points) / len(few)
    prims_ego = prims.transformed(np.linalg.inv(pose))

    def ground(xy):
        return world.ground(xy @ pose[:2, :2].T + pose[:2, 3])[0]

    rows = [
        ("LiDAR sweep (32 x 1084 rays, cast + noise)", t_lidar, None),
        (f"camera {size[0]}x{size[1]} (cast + shade)", t_cam, None),
        ("  ray cast only, tiled cones", t_fast_cast, t_ref_cast),
        ("mask_lidar traversal, occ3d (one sweep)", t_trav, t_trav_ref),
        ("exact camera visibility, occ3d, 6 cameras (cached projection)",
         timed(lambda: exact_camera_visibility(grid, [(view.intrinsic, cam.ego_from_cam, view.distance)] * 6))[0], None),
        ("mask_lidar, occ3d", timed(lambda: lidar_visibility(origins, points, grid))[0], None),
    ]
    for name in ("occ3d", "openscene", "openoccupancy"):
        truth_time = timed(partial(semantic_occupancy, prims_ego, ground, GRID_PRESETS[name]))[0]
        rows.append((f"semantic truth, {name} grid", truth_time, None))
    print(f"\n{'stage':55s} {'fast':>9s} {'reference':>11s} {'speed-up':>9s}")
    for name, fast, ref in rows:
        ref_text = f"{ref:10.2f}s {ref / fast:8.0f}x" if ref else ""
        print(f"{name:55s} {fast:8.3f}s {ref_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="key frames in the scene")
    parser.add_argument("--image-size", default="400x225", help="WxH or 'full'")
    parser.add_argument("--stages", action="store_true", help="also time each stage against its reference")
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep the output")
    args = parser.parse_args()
    image_size = None if args.image_size == "full" else tuple(int(v) for v in args.image_size.split("x"))
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench_synth_"))
    wall, cpu = time.perf_counter(), time.process_time()
    manifest = write_dataset(out, scenes=1, frames=args.frames, formats=FORMATS, seed=0, image_size=image_size,
                             overwrite=args.keep is not None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sweeps = manifest.data["scenes"][0]["num_sweeps"]
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"1 scene x {args.frames} key frames ({sweeps} sweeps), all formats, images {args.image_size}: "
          f"wall {wall:.1f} s, CPU {cpu:.1f} s, {size_mb:.0f} MB written")
    if args.keep is None:
        shutil.rmtree(out)
    if args.stages:
        stages(image_size)


if __name__ == "__main__":
    main()
