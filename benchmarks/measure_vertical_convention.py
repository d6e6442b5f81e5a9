"""Measure where Occ3D puts heights, against b2s build-binary on the real nuScenes key frame.

    python benchmarks/measure_vertical_convention.py            # data from ../shared/data (or $B2S_SHARED_DATA)

Prints, from the real files under ``shared/data`` (skips with a message and exit code 0 when they
are absent):

1. the real Occ3D sample (``occ3d-sample/labels.npz``): layers of each class, and the lowest
   occupied layer of every column (all columns, and those within 8 m: |x|, |y| < 8);
2. the real key frame (``nuscenes-keyframe``, scene-0061's first sample) built on the occ3d grid
   without and with the Occ3D convention (``z_offset`` -0.8 m): the same column floors, the
   layers of the voxels inside car boxes, and the ego heights of the ground returns near the car;
3. the vertical shift between the two, per shift: how well the built frame's floor-layer
   histogram (within 8 m) matches the Occ3D sample's. The two files are different frames (the
   Occ3D labels of this key frame are not in shared/data), so voxel IoU cannot be compared; the
   ground under the car, a property of the convention rather than of the scene, can.

The facts it prints are asserted by ``tests/test_vertical_convention.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from b2s_core.binary.aggregate import EGO_BODY_NUSCENES, transform, voxels_in_boxes
from b2s_core.binary.convention import LABEL_CONVENTIONS, column_floors, shift_layers
from b2s_core.binary.pipeline import BinaryBuildConfig, build_scene
from b2s_core.grids import VoxelGrid, get_grid
from b2s_core.records import SensorFrame
from b2s_core.viz.samples import keyframe_sensor_frame

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("B2S_SHARED_DATA", REPO.parent / "shared" / "data"))
NEAR = 8.0  # metres: columns with |x|, |y| < NEAR, where the ground under and around the car dominates
# Occ3D-nuScenes class indices (nuScenes-lidarseg's 16 classes + 0 'others', 17 free): Occ3D README.
OCC3D_CLASSES = {0: "others", 1: "barrier", 2: "bicycle", 3: "bus", 4: "car", 5: "construction_vehicle",
                 6: "motorcycle", 7: "pedestrian", 8: "traffic_cone", 9: "trailer", 10: "truck",
                 11: "driveable_surface", 12: "other_flat", 13: "sidewalk", 14: "terrain", 15: "manmade",
                 16: "vegetation"}
OCC3D_FREE = 17


def near_columns(grid: VoxelGrid) -> np.ndarray:
    """(X, Y) bool: columns whose centre lies within NEAR metres on both axes."""
    centres = grid.centers()[:, :, 0, :2]
    return np.abs(centres).max(axis=-1) < NEAR


def floor_histogram(occupancy: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool, (X, Y) bool -> (Z,) count of occupied columns in ``where`` by lowest layer."""
    floors = column_floors(occupancy)[where]
    return np.bincount(floors[floors >= 0], minlength=occupancy.shape[2])


def histogram_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap of two histograms as distributions: sum of the smaller share per bin, 0..1."""
    return float(np.minimum(a / max(a.sum(), 1), b / max(b.sum(), 1)).sum())


def shifted_histogram(histogram: np.ndarray, shift: int) -> np.ndarray:
    """Move bin k to k + shift; what leaves the range is dropped."""
    return shift_layers(histogram[None, None], shift)[0, 0]


def occ3d_facts(path: Path, grid: VoxelGrid) -> dict:
    """What the real Occ3D sample says about heights (see the module docstring)."""
    semantics = np.load(path)["semantics"]
    occupied = semantics != OCC3D_FREE
    near = near_columns(grid)
    layers = {OCC3D_CLASSES[c]: np.bincount(np.nonzero(semantics == c)[2], minlength=grid.shape[2])
              for c in np.unique(semantics) if c != OCC3D_FREE}
    return {"layers": layers, "floors_near": floor_histogram(occupied, near),
            "floors_all": floor_histogram(occupied, np.ones(near.shape, bool)), "occupied": occupied}


def keyframe_facts(root: Path, grid: VoxelGrid, z_offset: float) -> dict:
    """The real key frame built on ``grid`` with ``z_offset``: column floors and where its cars are."""
    frame, points_ego = keyframe_sensor_frame(root)
    config = BinaryBuildConfig(grid=grid, z_offset=z_offset)
    built = next(build_scene(lambda: [frame], config))
    ego_from_global = np.linalg.inv(frame.global_from_ego)
    cars = [box for box in frame.boxes if box.category == "car"]
    work, layers = config.work_grid()
    in_cars = voxels_in_boxes(work, cars, ego_from_global, 0.0, samples=3)[..., layers]
    return {"floors_near": floor_histogram(built.occupancy, near_columns(grid)),
            "car_layers": (built.occupancy & in_cars).sum(axis=(0, 1)), "occupancy": built.occupancy,
            "points_ego": points_ego, "frame": frame}


def ground_heights(frame: SensorFrame, points_ego: np.ndarray) -> np.ndarray:
    """Ego z of the returns within NEAR metres that are neither the ego body nor in a box, below 0.5 m."""
    near = (np.abs(points_ego[:, :2]).max(axis=1) < NEAR) & ~EGO_BODY_NUSCENES.contains(points_ego)
    ego_from_global = np.linalg.inv(frame.global_from_ego)
    in_box = np.zeros(len(points_ego), bool)
    for box in frame.boxes:
        local = transform(points_ego, np.linalg.inv(ego_from_global @ box.global_from_box))
        in_box |= np.all(np.abs(local) <= np.asarray(box.size) / 2 + 0.2, axis=1)
    low = near & ~in_box & (points_ego[:, 2] < 0.5)
    return points_ego[low, 2]


def layers_text(counts: np.ndarray) -> str:
    return " ".join(f"{int(c)}" for c in counts)


def main() -> int:
    sample = SHARED_DATA / "occ3d-sample" / "labels.npz"
    keyframe = SHARED_DATA / "nuscenes-keyframe"
    if not sample.is_file() or not (keyframe / "frame.json").is_file():
        print(f"skipped: real sample data not found under {SHARED_DATA} (set B2S_SHARED_DATA)")
        return 0
    grid = get_grid("occ3d")
    dz = grid.voxel_size[2]
    print(f"grid occ3d {grid.describe()}; layer k = z in [{grid.range_min[2]:g} + {dz:g} k, ...)\n")

    occ3d = occ3d_facts(sample, grid)
    print(f"1. Occ3D sample {sample}")
    print("   occupied voxels per layer k = 0..15, by class:")
    for name, counts in occ3d["layers"].items():
        print(f"     {name:<18} {layers_text(counts)}")
    floors = occ3d["floors_near"]
    print(f"   columns within {NEAR:g} m: {floors.sum():,} occupied, {floors[0]:,} start in layer 0; "
          f"floors by layer: {layers_text(floors)}")
    print(f"   all columns: floors by layer: {layers_text(occ3d['floors_all'])}\n")

    builds = {offset: keyframe_facts(keyframe, grid, offset) for offset in (0.0, LABEL_CONVENTIONS["occ3d"].z_offset)}
    plain = builds[0.0]
    heights = ground_heights(plain["frame"], plain["points_ego"])
    p5, p50, p95 = np.percentile(heights, [5, 50, 95])
    print(f"2. real key frame {keyframe} (sample {plain['frame'].token}), b2s build-binary on occ3d")
    print(f"   ground returns within {NEAR:g} m ({len(heights):,}): ego z 5 % {p5:+.2f}, median {p50:+.2f}, 95 % {p95:+.2f} m "
          f"-> layer {int((p50 - grid.range_min[2]) // dz)} of the stated grid")
    occ3d_offset = LABEL_CONVENTIONS["occ3d"].z_offset
    print(f"   with z_offset {occ3d_offset:+.1f} m the median lies at {p50 + occ3d_offset:+.2f} m: "
          f"layer {int((p50 + occ3d_offset - grid.range_min[2]) // dz)}, whose centre is {grid.range_min[2] + dz / 2:+.2f} m")
    for offset, facts in builds.items():
        floors = facts["floors_near"]
        print(f"   z_offset {offset:+.1f} m: columns within {NEAR:g} m {floors.sum():,}, floors by layer: {layers_text(floors)}")
        print(f"                   voxels in car boxes by layer: {layers_text(facts['car_layers'])}")
    print()

    print(f"3. vertical shift, built (z_offset 0) vs Occ3D sample: overlap of the floor-layer histograms within {NEAR:g} m")
    print("   shift (layers)  metres  overlap")
    scores = []
    for shift in range(-4, 5):
        overlap = histogram_overlap(shifted_histogram(plain["floors_near"], shift), occ3d["floors_near"])
        scores.append((overlap, -abs(shift), shift))
        print(f"   {shift:+14d}  {shift * dz:+6.2f}  {overlap:.3f}")
    best = max(scores)[2]
    print(f"   best shift {best:+d} layers = {best * dz:+.2f} m (the occ3d convention: {occ3d_offset:+.2f} m)")
    before = histogram_overlap(plain["floors_near"], occ3d["floors_near"])
    after = histogram_overlap(builds[occ3d_offset]["floors_near"], occ3d["floors_near"])
    print(f"   floor-histogram overlap with the Occ3D sample: before {before:.3f} (z_offset 0), after {after:.3f} "
          f"(--label-convention occ3d)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
