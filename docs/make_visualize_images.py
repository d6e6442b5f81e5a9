"""Regenerate the pictures of docs/visualize.md into docs/images/ from the real samples in ../shared/data.

Run: OMP_NUM_THREADS=1 python docs/make_visualize_images.py   (the HTML screenshot needs chromium)
Pictures are kept small: palette PNGs, reduced sizes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from b2s_core.grids import GRID_PRESETS
from b2s_core.taxonomy import OCC3D
from b2s_core.viz.bev import bev_image
from b2s_core.viz.cameras import camera_mosaic, camera_overlay, decode_image
from b2s_core.viz.compose import panels_with_legend
from b2s_core.viz.html import HtmlFrame, write_html
from b2s_core.viz.render3d import RenderUnavailable, render_layers_3d
from b2s_core.viz.samples import nuscenes_keyframe, occ3d_sample_layer, write_sample_scene
from b2s_core.viz.scene import VisualizeOptions, visualize_scene
from b2s_core.viz.voxels import VoxelLayer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
IMAGES = REPO / "docs" / "images"


def save_small(image: np.ndarray, name: str, colors: int = 128) -> None:
    path = IMAGES / name
    Image.fromarray(image).quantize(colors=colors, method=Image.MEDIANCUT).save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {image.shape[1]}x{image.shape[0]}, {path.stat().st_size // 1024} KiB")


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    occ3d = occ3d_sample_layer(DATA / "occ3d-sample" / "labels.npz")
    occ3d = VoxelLayer(occ3d.labels, occ3d.taxonomy, occ3d.grid, "Occ3D ground truth")
    camera_masked = occ3d_sample_layer(DATA / "occ3d-sample" / "labels.npz", mask="camera")
    camera_masked = VoxelLayer(camera_masked.labels, OCC3D, camera_masked.grid, "inside mask_camera")
    save_small(panels_with_legend([bev_image(occ3d), bev_image(camera_masked)], [occ3d, camera_masked],
                                  "BEV of the real Occ3D sample"), "viz_bev_occ3d.png")
    try:
        views = render_layers_3d([occ3d], 640, 400)
        save_small(panels_with_legend(views, [occ3d]), "viz_3d_occ3d.png")
    except RenderUnavailable as err:
        print(f"3D picture skipped: {err}")

    frame, images = nuscenes_keyframe(DATA / "nuscenes-keyframe")
    layer = VoxelLayer.from_semantics(frame.semantics, OCC3D, GRID_PRESETS["occ3d"], "LiDAR voxels")
    tiles = {cam.name: camera_overlay(decode_image(images[cam.name]), cam, layer, width=320) for cam in frame.cameras}
    save_small(camera_mosaic(tiles), "viz_cameras_nuscenes.png", colors=200)

    with tempfile.TemporaryDirectory() as tmp:
        data, preds = write_sample_scene(DATA / "nuscenes-keyframe", Path(tmp), frames=2)
        result = visualize_scene(data, "scene-0061", Path(tmp) / "out", pred_path=preds,
                                 options=VisualizeOptions(frame=0, cameras=False, view_size=(400, 300)))
        for path in result.paths:
            if path.suffix == ".png":
                save_small(np.asarray(Image.open(path).convert("RGB")), "viz_" + path.name.replace("scene-0061_", ""))
        page = write_html([HtmlFrame("Occ3D sample", [occ3d])], Path(tmp) / "page.html", title="b2s: Occ3D sample")
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            print("HTML screenshot skipped: chromium not installed")
            return
        shot = Path(tmp) / "shot.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}",
                        "--virtual-time-budget=8000", f"--screenshot={shot}", "--window-size=900,560", page.as_uri()],
                       capture_output=True, timeout=120, check=False)
        save_small(np.asarray(Image.open(shot).convert("RGB")), "viz_html_occ3d.png")


if __name__ == "__main__":
    main()
