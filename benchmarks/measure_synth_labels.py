"""How close the synthetic label sets come to what ``b2s build-binary`` makes of the same logs.

For every key frame of a synthetic world (nuScenes + Occ3D + OpenOccupancy formats): ``b2s
build-binary``'s pipeline (default options, occ3d grid, the nuScenes logs read by the real reader)
against the world's Occ3D ``labels.npz`` of the same sample:

* geometry IoU: built occupancy vs the labels' non-free voxels, inside the labels' mask_camera;
* mask_camera agreement: share of all voxels where the built mask equals the labels';
* OpenOccupancy files: rows and bytes per key frame;
* nuScenes annotations: boxes with at least one LiDAR point, of all written.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/measure_synth_labels.py                 # 2 scenes x 4 key frames
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/measure_synth_labels.py --root /tmp/synth
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from b2s_core.binary.pipeline import BinaryBuildConfig, build_scene
from b2s_core.grids import get_grid
from b2s_core.synth import load_manifest, write_dataset
from converters import open_reader

FREE = 17  # Occ3D free


def label_scores(manifest, grid_name: str = "occ3d") -> list[dict]:
    """Per key frame, build-binary vs the Occ3D labels: IoU inside the labels' mask_camera, mask_camera agreement."""
    reader = open_reader("nuscenes", manifest.path("nuscenes"), version=manifest.nuscenes_version)
    config = BinaryBuildConfig(grid=get_grid(grid_name))
    rows = []
    for scene in reader.scene_names():
        for built in build_scene(lambda scene=scene: reader.read_scene(scene), config):
            labels = np.load(manifest.path("occ3d") / "gts" / scene / built.token / "labels.npz")
            occupied, mask = labels["semantics"] != FREE, labels["mask_camera"].astype(bool)
            union = ((built.occupancy | occupied) & mask).sum()
            rows.append({"scene": scene, "token": built.token,
                         "iou": float((built.occupancy & occupied & mask).sum() / max(union, 1)),
                         "mask_agreement": float((built.mask_camera == mask).mean())})
    return rows


def openoccupancy_sizes(manifest) -> list[tuple[int, int]]:
    """(rows, bytes) of every OpenOccupancy file."""
    files = sorted(manifest.path("openoccupancy").rglob("*.npy"))
    return [(len(np.load(f)), f.stat().st_size) for f in files]


def seen_boxes(manifest) -> tuple[int, int]:
    """(annotations with num_lidar_pts > 0, all annotations) in the nuScenes tables."""
    table = manifest.path("nuscenes") / manifest.nuscenes_version / "sample_annotation.json"
    annotations = json.loads(table.read_text())
    return sum(a["num_lidar_pts"] > 0 for a in annotations), len(annotations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an existing synthetic world (default: write one to a temp dir)")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = args.root
        if root is None:
            root = Path(temp) / "synth"
            write_dataset(root, scenes=args.scenes, frames=args.frames, formats=["nuscenes", "occ3d", "openoccupancy"],
                          seed=0, image_size=(400, 225))
        manifest = load_manifest(root)
        rows = label_scores(manifest)
        for row in rows:
            print(f"{row['scene']} {row['token'][:8]}  IoU in labels' mask_camera {row['iou']:.3f}  "
                  f"mask_camera agreement {100 * row['mask_agreement']:.1f} %")
        print(f"mean over {len(rows)} key frames: IoU {np.mean([r['iou'] for r in rows]):.3f}, "
              f"mask_camera agreement {100 * np.mean([r['mask_agreement'] for r in rows]):.1f} % "
              f"(min {100 * min(r['mask_agreement'] for r in rows):.1f} %)")
        sizes = openoccupancy_sizes(manifest)
        if sizes:
            print(f"OpenOccupancy files: {len(sizes)}, rows per key frame {np.mean([r for r, _ in sizes]):,.0f} "
                  f"(max {max(r for r, _ in sizes):,}), {np.mean([b for _, b in sizes]) / 1e6:.1f} MB per key frame "
                  f"(max {max(b for _, b in sizes) / 1e6:.1f} MB)")
        seen, total = seen_boxes(manifest)
        print(f"nuScenes annotations with LiDAR points: {seen} of {total}")


if __name__ == "__main__":
    main()
