"""Speed of the visualisation kernels against their straightforward versions, on the real samples.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_visualize.py  (needs ../shared/data)

Compared in the same run, same inputs (outputs checked equal where both exist):
* BEV: numpy top-voxel lookup vs the column-by-column loop.
* 3D mesh: numpy visible-face mesh vs one open3d box per voxel merged into one mesh.
* camera overlay: numpy z-buffer vs the painter's-algorithm loop (one 400 px wide camera).
* whole frames: ``visualize_scene`` per frame (BEV + 3D + cameras) on the nuScenes key frame scene.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from b2s_core.viz.bev import bev_image, bev_image_reference
from b2s_core.viz.cameras import decode_image, resized_intrinsics, splat_voxels, splat_voxels_reference
from b2s_core.viz.html import pack_layer
from b2s_core.viz.render3d import VoxelRenderer, voxel_mesh
from b2s_core.viz.samples import nuscenes_keyframe, occ3d_sample_layer, write_sample_scene
from b2s_core.viz.scene import VisualizeOptions, visualize_scene
from b2s_core.viz.voxels import VoxelLayer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def boxes_per_voxel_mesh(layer: VoxelLayer):
    """The straightforward 3D mesh: one open3d box per occupied voxel, merged."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh()
    size = layer.grid.voxel_size
    for index in np.argwhere(layer.occupied):
        box = o3d.geometry.TriangleMesh.create_box(*size)
        box.translate(layer.grid.origin + index * np.asarray(size))
        mesh += box
    return mesh


def main() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    layer = occ3d_sample_layer(DATA / "occ3d-sample" / "labels.npz")
    print(f"Occ3D sample: {int(layer.occupied.sum())} occupied voxels of {layer.labels.size}")

    fast, image = timed(lambda: bev_image(layer, scale=1, draw_ego=False))
    slow, reference = timed(lambda: bev_image_reference(layer), repeat=1)
    print(f"BEV 200x200x16        numpy {fast * 1e3:8.1f} ms   column loop {slow * 1e3:8.1f} ms   x{slow / fast:6.0f}   "
          f"equal={np.array_equal(image, reference)}")

    fast, mesh = timed(lambda: voxel_mesh(layer, ego_box=False))
    slow, boxes = timed(lambda: boxes_per_voxel_mesh(layer), repeat=1)
    print(f"3D mesh               numpy {fast * 1e3:8.1f} ms   box per voxel {slow * 1e3:6.1f} ms   x{slow / fast:6.0f}   "
          f"triangles {len(mesh.triangles)} vs {len(boxes.triangles)}")

    with VoxelRenderer(640, 480) as renderer:
        renderer.render(mesh)
        render, _ = timed(lambda: renderer.render(mesh))
    print(f"3D render 640x480 (open3d EGL, reused window)  {render * 1e3:.1f} ms")

    frame, images = nuscenes_keyframe(DATA / "nuscenes-keyframe")
    from b2s_core.grids import GRID_PRESETS
    from b2s_core.taxonomy import OCC3D

    lidar_layer = VoxelLayer.from_semantics(frame.semantics, OCC3D, GRID_PRESETS["occ3d"])
    front = next(c for c in frame.cameras if c.name == "CAM_FRONT")
    photo = decode_image(images["CAM_FRONT"])
    K = resized_intrinsics(front.intrinsic, 400 / photo.shape[1])
    fast, splats = timed(lambda: splat_voxels(lidar_layer, K, front.ego_from_cam, 400, 225))
    slow, (canvas, covered) = timed(lambda: splat_voxels_reference(lidar_layer, K, front.ego_from_cam, 400, 225), repeat=1)
    same = np.zeros_like(covered)
    same[splats.rows, splats.cols] = True
    print(f"camera overlay 400px  z-buffer {fast * 1e3:5.1f} ms   painter loop {slow * 1e3:7.1f} ms   x{slow / fast:6.0f}   "
          f"same pixels={np.array_equal(same, covered)}")

    fast, text = timed(lambda: pack_layer(layer))
    print(f"HTML voxel packing    {fast * 1e3:.1f} ms, {len(text) / 1024:.0f} KiB base64 for the Occ3D sample")

    with tempfile.TemporaryDirectory() as tmp:
        data, preds = write_sample_scene(DATA / "nuscenes-keyframe", Path(tmp), frames=4)
        for label, options in (("BEV only", VisualizeOptions(render_3d=False, cameras=False)),
                               ("BEV + 3D", VisualizeOptions(cameras=False)),
                               ("BEV + 3D + cameras + HTML", VisualizeOptions(html=True))):
            result = visualize_scene(data, "scene-0061", Path(tmp) / "out", pred_path=preds, options=options)
            print(f"visualize_scene 4 frames, GT+pred+binary, {label:27s} {result.seconds:5.2f} s  ({result.seconds / 4:.2f} s/frame)")


if __name__ == "__main__":
    main()
