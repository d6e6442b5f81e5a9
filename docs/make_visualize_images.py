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
from b2s_core.viz.cameras import OVERLAY_MODES, camera_mosaic, camera_overlay, decode_image, overlay_legends
from b2s_core.viz.compose import panels_with_legend, stacked, titled
from b2s_core.viz.html import HtmlFrame, write_html
from b2s_core.viz.render3d import RenderUnavailable, render_layers_3d
from b2s_core.viz.samples import nuscenes_keyframe, occ3d_sample_layer, write_sample_scene
from b2s_core.viz.scene import VisualizeOptions, visualize_scene
from b2s_core.viz.voxels import VoxelLayer, error_layer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
IMAGES = REPO / "docs" / "images"


def save_small(image: np.ndarray, name: str, colors: int = 128) -> None:
    path = IMAGES / name
    Image.fromarray(image).quantize(colors=colors, method=Image.MEDIANCUT).save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {image.shape[1]}x{image.shape[0]}, {path.stat().st_size // 1024} KiB")


def height_and_error_pictures(labels_path: Path) -> None:
    """The Occ3D sample as a binary grid, in one grey (as before) and by height; and the error view of a
    made-up prediction of it (every car 0.8 m too far ahead, 10 % of the voxels relabelled) inside mask_camera."""
    with np.load(labels_path) as data:
        semantics, mask = data["semantics"], data["mask_camera"].astype(bool)
    grid, free, car = GRID_PRESETS["occ3d"], OCC3D.free_index, OCC3D.class_names.index("car")
    occupied = semantics != free
    grey = VoxelLayer.from_binary(occupied, grid, "binary grid in one grey (before)")
    height = VoxelLayer.from_heights(occupied, grid, "binary grid by height")
    try:
        views = render_layers_3d([height], 400, 400)
    except RenderUnavailable as err:
        print(f"3D pictures skipped: {err}")
        views = []
    save_small(panels_with_legend([bev_image(grey), bev_image(height)] + views, [grey, height, height][: 2 + len(views)],
                                  "the real Occ3D sample's occupancy as a binary grid"), "viz_height_occ3d.png")

    predicted = semantics.copy()
    cars = semantics == car
    predicted[cars] = free
    predicted[np.roll(cars, 2, axis=0)] = car  # 2 voxels = 0.8 m ahead: missed at the rear, false at the front
    rng = np.random.default_rng(0)
    flip = (predicted != free) & (rng.random(predicted.shape) < 0.1)
    predicted[flip] = rng.integers(0, free, size=int(flip.sum()), dtype=np.uint8)
    truth = VoxelLayer.from_semantics(semantics, OCC3D, grid, "ground truth (mask_camera)", mask)
    guess = VoxelLayer.from_semantics(predicted, OCC3D, grid, "prediction (mask_camera)", mask)
    errors = error_layer(truth, guess, "errors inside mask_camera")
    views = render_layers_3d([errors], 400, 400) if views else []
    layers = [truth, guess, errors, errors][: 3 + len(views)]
    save_small(panels_with_legend([bev_image(truth), bev_image(guess), bev_image(errors)] + views, layers,
                                  "error view, BEV: the case of each column's top-most voxel"), "viz_errors_occ3d.png")


def screenshot(browser: str, url: str, tmp: Path, name: str) -> None:
    """A 900 x 560 headless-Chromium screenshot of ``url`` saved as docs/images/``name``."""
    shot = tmp / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
                    "--virtual-time-budget=8000", f"--screenshot={shot}", "--window-size=900,560", url],
                   capture_output=True, timeout=120, check=False)
    save_small(np.asarray(Image.open(shot).convert("RGB")), name)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    height_and_error_pictures(DATA / "occ3d-sample" / "labels.npz")
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
    photos = {cam.name: decode_image(images[cam.name]) for cam in frame.cameras}
    blocks = []
    for mode in OVERLAY_MODES:
        tiles = {cam.name: camera_overlay(photos[cam.name], cam, layer, width=320, mode=mode) for cam in frame.cameras}
        blocks.append(titled(camera_mosaic(tiles), f"--camera-overlay {mode}"))
    save_small(stacked(blocks + overlay_legends([layer], blocks[0].shape[1])), "viz_cameras_nuscenes.png", colors=200)

    with tempfile.TemporaryDirectory() as tmp:
        data, preds = write_sample_scene(DATA / "nuscenes-keyframe", Path(tmp), frames=2)
        result = visualize_scene(data, "scene-0061", Path(tmp) / "out", pred_path=preds,
                                 options=VisualizeOptions(frame=0, cameras=False, view_size=(400, 300), errors=True, html=True))
        for path in result.paths:
            if path.suffix == ".png":
                save_small(np.asarray(Image.open(path).convert("RGB")), "viz_" + path.name.replace("scene-0061_", ""))
        page = write_html([HtmlFrame("Occ3D sample", [occ3d], token="occ3d-sample")], Path(tmp) / "page.html",
                          title="b2s: Occ3D sample")
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            print("HTML screenshot skipped: chromium not installed")
            return
        screenshot(browser, page.as_uri(), Path(tmp), "viz_html_occ3d.png")
        scene_page = Path(tmp) / "out" / "scene-0061.html"
        screenshot(browser, scene_page.as_uri() + "#layer=prediction%20vs%20GT%20classes", Path(tmp), "viz_html_errors.png")


if __name__ == "__main__":
    main()
