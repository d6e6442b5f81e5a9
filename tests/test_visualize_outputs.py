"""Pictures written to disk: 3D views (open3d offscreen), GIF, the HTML page in headless Chromium,
``visualize_scene`` end to end and the ``b2s visualize`` command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.grids import VoxelGrid
from b2s_core.occfile import OccWriter
from b2s_core.records import OccFrame
from b2s_core.taxonomy import OCC3D
from b2s_core.viz import render3d
from b2s_core.viz.animation import write_gif
from b2s_core.viz.html import HtmlFrame, pack_layer, unpack_layer, write_html
from b2s_core.viz.render3d import RenderUnavailable, VoxelRenderer, render_layers_3d
from b2s_core.viz.samples import occ3d_sample_layer, write_sample_scene
from b2s_core.viz.scene import VisualizeOptions, visualize_scene
from b2s_core.viz.voxels import BACKGROUND, SHADE_MIN, VoxelLayer, surface_mask

GRID = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 2.2), (0.4, 0.4, 0.4), "tiny")  # 40 x 40 x 8
CAR, ROAD, FREE = OCC3D.class_names.index("car"), OCC3D.class_names.index("driveable_surface"), OCC3D.free_index


def street(shift: int = 0) -> np.ndarray:
    """(40, 40, 8) labels: a road floor, one car ahead of the ego moving by ``shift`` voxels."""
    labels = np.full(GRID.shape, FREE, np.uint8)
    labels[:, 10:30, 2] = ROAD
    labels[26 + shift : 36 + shift, 14:19, 3:6] = CAR
    return labels


def colour_present(image: np.ndarray, color, tol: int = 0) -> int:
    """How many pixels of ``image`` are within ``tol`` of ``color``."""
    return int((np.abs(image[..., :3].astype(int) - np.asarray(color)).max(axis=-1) <= tol).sum())


@pytest.fixture(scope="module")
def renderer_or_skip():
    try:
        renderer = VoxelRenderer(320, 240)
    except RenderUnavailable as err:
        pytest.skip(f"no OpenGL context for open3d here: {err}")
    yield renderer
    renderer.close()


def test_3d_view_shows_the_classes_in_their_colours(renderer_or_skip):
    layer = VoxelLayer.from_semantics(street(), OCC3D, GRID, "street")
    image = renderer_or_skip.render(render3d.voxel_mesh(layer), half_length=8.0)
    assert image.shape == (240, 320, 3)
    # lighting is off: top faces keep the class colour exactly (+-1 for float buffer rounding)
    assert colour_present(image, OCC3D.colors[CAR], tol=1) > 100
    assert colour_present(image, OCC3D.colors[ROAD], tol=1) > 1000
    assert colour_present(image, BACKGROUND, tol=1) > 1000
    side = np.round(np.asarray(OCC3D.colors[CAR]) * render3d.FACE_SHADE[(0, -1)])  # the car's back face, seen from behind
    assert colour_present(image, side, tol=1) > 20


def test_3d_view_reports_a_missing_opengl_context(monkeypatch):
    open3d = pytest.importorskip("open3d")
    monkeypatch.setattr(open3d.visualization.Visualizer, "create_window", lambda self, **kw: False)
    with pytest.raises(RenderUnavailable, match="OpenGL context"):
        render_layers_3d([VoxelLayer.from_semantics(street(), OCC3D, GRID)])


def test_gif_has_one_picture_per_frame(tmp_path):
    frames = [np.full((20, 30, 3), 40 * k, np.uint8) for k in range(4)]
    frames[2] = frames[2][:10]  # smaller frames are padded
    path = write_gif(frames, tmp_path / "a.gif", fps=4)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (30, 20) and gif.info["duration"] == 250
        gif.seek(3)
        assert np.asarray(gif.convert("RGB"))[5, 5].tolist() == [120, 120, 120]
    assert not list(tmp_path.glob("*.tmp"))


def test_page_data_round_trips_the_visible_voxels(occ3d_sample):
    layer = occ3d_sample_layer(occ3d_sample)
    flat, labels = unpack_layer(pack_layer(layer))
    expected = np.flatnonzero(surface_mask(layer.occupied))
    assert np.array_equal(flat, expected) and np.array_equal(labels, layer.labels.reshape(-1)[expected])
    assert len(pack_layer(layer)) < 2 * len(expected)  # compact: under 2 base64 characters per voxel


def chromium_binary() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshot(page: Path, out: Path, tmp_path: Path, fragment: str = "") -> np.ndarray:
    browser = chromium_binary()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); the HTML page is untested")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
               "--virtual-time-budget=8000", f"--screenshot={out}", "--window-size=900,600", page.resolve().as_uri() + fragment]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert out.is_file(), "Chromium wrote no screenshot"
    return np.asarray(Image.open(out).convert("RGB"))


def test_html_page_renders_the_voxels_in_headless_chromium(occ3d_sample, tmp_path):
    gt = occ3d_sample_layer(occ3d_sample)
    gt = VoxelLayer(gt.labels, gt.taxonomy, gt.grid, "ground truth")
    binary = VoxelLayer.from_binary(gt.occupied, gt.grid, "binary decoder")
    page = write_html([HtmlFrame("frame 0", [gt, binary]), HtmlFrame("frame 1", [binary])], tmp_path / "scene.html")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    image = screenshot(page, tmp_path / "shot.png", tmp_path)
    view = image[:, 240:]  # right of the side panel
    assert view.std() > 20  # not a blank page
    # the road (driveable_surface): the sample's road is the lowest layer, k = 0, so shaded by SHADE_MIN
    assert colour_present(view, np.round(np.asarray(OCC3D.colors[ROAD]) * SHADE_MIN), tol=2) > 20_000
    vegetation = OCC3D.class_names.index("vegetation")
    greens = [np.round(np.asarray(OCC3D.colors[vegetation]) * (SHADE_MIN + (1 - SHADE_MIN) * k / 15)) for k in range(16)]
    assert sum(colour_present(view, c, tol=2) for c in greens) > 500

    # the class toggles and the layer selector, driven through the page's URL hash
    hidden = screenshot(page, tmp_path / "hidden.png", tmp_path, f"#hide={ROAD}")
    assert colour_present(hidden[:, 240:], np.round(np.asarray(OCC3D.colors[ROAD]) * SHADE_MIN), tol=2) == 0
    assert sum(colour_present(hidden[:, 240:], c, tol=2) for c in greens) > 500
    binary_view = screenshot(page, tmp_path / "binary.png", tmp_path, "#layer=binary%20decoder&frame=1")[:, 240:]
    grey = [np.round(np.asarray((90, 90, 90)) * (SHADE_MIN + (1 - SHADE_MIN) * k / 15)) for k in range(16)]
    assert sum(colour_present(binary_view, c, tol=2) for c in grey) > 20_000
    assert sum(colour_present(binary_view, c, tol=2) for c in greens) == 0


def write_tiny_files(folder: Path) -> tuple[Path, Path]:
    """A two-frame scene without cameras on the tiny grid, and predictions for it."""
    gt_frames, pred_frames = [], []
    for t in range(2):
        labels = street(shift=-t)
        common = dict(scene="tiny-scene", token=f"tok{t}", timestamp=t, global_from_ego=np.eye(4), cameras=[])
        gt_frames.append(OccFrame(occupancy=labels != FREE, semantics=labels, **common))
        predicted = np.where(labels == CAR, np.uint8(OCC3D.class_names.index("truck")), labels)
        pred_frames.append(OccFrame(occupancy=labels != FREE, semantics=predicted, binary_pred=labels != FREE, **common))
    for name, frames in (("data.h5", gt_frames), ("preds.h5", pred_frames)):
        with OccWriter(folder / name, grid=GRID, taxonomy=OCC3D, source="synthetic") as writer:
            writer.write_scene("tiny-scene", frames)
    return folder / "data.h5", folder / "preds.h5"


def test_visualize_scene_writes_bev_panels_gif_and_page(tmp_path):
    data, preds = write_tiny_files(tmp_path)
    options = VisualizeOptions(html=True, render_3d=False, bev_scale=4)
    result = visualize_scene(data, "tiny-scene", tmp_path / "out", pred_path=preds, options=options)
    names = sorted(p.name for p in result.paths)
    assert names == ["tiny-scene.html", "tiny-scene_bev.gif", "tiny-scene_frame000_bev.png", "tiny-scene_frame001_bev.png"]
    assert any("no cameras" in w for w in result.warnings)
    bev = np.asarray(Image.open(tmp_path / "out" / "tiny-scene_frame000_bev.png").convert("RGB"))
    truck = OCC3D.class_names.index("truck")
    top = SHADE_MIN + (1 - SHADE_MIN) * 5 / 7  # the car's top voxel, k = 5 of 8
    car_px = colour_present(bev, np.round(np.asarray(OCC3D.colors[CAR]) * top))
    truck_px = colour_present(bev, np.round(np.asarray(OCC3D.colors[truck]) * top))
    assert car_px == truck_px == 10 * 5 * 16  # GT panel shows the car, prediction panel the truck, 4x4 px per voxel
    assert colour_present(bev, np.round(np.asarray(OCC3D.colors[ROAD]) * (SHADE_MIN + (1 - SHADE_MIN) * 2 / 7))) > 3000


def test_visualize_scene_3d_and_camera_pictures_of_the_real_key_frame(nuscenes_keyframe, tmp_path, renderer_or_skip):
    data, preds = write_sample_scene(nuscenes_keyframe, tmp_path, frames=2)
    options = VisualizeOptions(frame=1, view_size=(240, 180), camera_width=160)
    result = visualize_scene(data, "scene-0061", tmp_path / "out", pred_path=preds, options=options)
    names = sorted(p.name for p in result.paths)
    assert names == ["scene-0061_bev.gif", "scene-0061_frame001_3d.png", "scene-0061_frame001_bev.png",
                     "scene-0061_frame001_cameras.jpg"], result.warnings
    view = np.asarray(Image.open(tmp_path / "out" / "scene-0061_frame001_3d.png").convert("RGB"))
    assert colour_present(view, OCC3D.colors[ROAD], tol=1) > 300
    cameras = np.asarray(Image.open(tmp_path / "out" / "scene-0061_frame001_cameras.jpg").convert("RGB"))
    assert cameras.shape[1] == 3 * 160 + 2 * 4 and cameras.std() > 30


def test_cli_prints_the_paths_it_wrote(tmp_path):
    data, preds = write_tiny_files(tmp_path)
    result = CliRunner().invoke(app, ["visualize", "tiny-scene", "--data", str(data), "--pred", str(preds),
                                      "--frame", "1", "--out", str(tmp_path / "out"), "--no-3d"])
    assert result.exit_code == 0, result.output
    printed = [Path(line) for line in result.output.splitlines() if line.startswith(str(tmp_path))]
    assert {p.name for p in printed} == {"tiny-scene_frame001_bev.png", "tiny-scene_bev.gif"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in printed)


def test_cli_forwards_its_options(tmp_path, monkeypatch):
    seen = {}

    def fake_visualize_scene(data, scene, out, *, pred_path, options, on_frame):
        seen.update(data=data, scene=scene, out=out, pred=pred_path, options=options)
        from b2s_core.viz.scene import VisualizeResult

        return VisualizeResult(paths=[Path(out) / "x.png"])

    monkeypatch.setattr("b2s_cli.commands.visualize.visualize_scene", fake_visualize_scene)
    result = CliRunner().invoke(app, ["visualize", "s1", "--data", "d.h5", "--out", "o", "--html", "--no-3d",
                                      "--mask", "camera", "--frame", "3"])
    assert result.exit_code == 0, result.output
    assert seen["scene"] == "s1" and seen["pred"] is None and str(seen["data"]) == "d.h5"
    opts = seen["options"]
    assert (opts.html, opts.render_3d, opts.cameras, opts.mask, opts.frame) == (True, False, True, "camera", 3)
    assert "x.png" in result.output


def test_cli_bad_input_is_one_line_and_exit_1(tmp_path):
    data, _ = write_tiny_files(tmp_path)
    for args, message in ((["no-such-scene"], "no-such-scene"), (["tiny-scene", "--frame", "5"], "frames 0..1")):
        result = CliRunner().invoke(app, ["visualize", *args, "--data", str(data), "--out", str(tmp_path / "o")])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["visualize", "tiny-scene", "--mask", "radar", "--data", str(data), "--out", str(tmp_path / "o")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'radar' is not one of 'camera', 'lidar', 'none'" in result.output, result.output  # a choice
    assert not (tmp_path / "o").exists()  # nothing written for a bad request


def test_visualize_scene_goes_on_without_3d_when_no_opengl_context(tmp_path, monkeypatch):
    open3d = pytest.importorskip("open3d")
    monkeypatch.setattr(open3d.visualization.Visualizer, "create_window", lambda self, **kw: False)
    data, _ = write_tiny_files(tmp_path)
    result = visualize_scene(data, "tiny-scene", tmp_path / "out", options=VisualizeOptions(frame=0))
    assert any(w.startswith("3D views skipped") and "OpenGL" in w for w in result.warnings)
    assert sorted(p.name for p in result.paths) == ["tiny-scene_bev.gif", "tiny-scene_frame000_bev.png"]
