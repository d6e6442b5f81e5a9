"""The views of issue 20, checked on pixels: binary grids coloured by height, the error view
(prediction vs ground truth), the ego marker, and the HTML page's sidebar, token, height ramp
and error layers in headless Chromium. Each view on a synthetic frame with known columns, and on
the real Occ3D sample when ../shared/data holds it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.occfile import OccDataset, OccWriter
from b2s_core.records import OccFrame
from b2s_core.taxonomy import BINARY, OCC3D
from b2s_core.viz.bev import EGO_COLOR as BEV_EGO_COLOR
from b2s_core.viz.bev import bev_image, bev_image_reference, ego_pixel_box
from b2s_core.viz.html import HtmlFrame, page_data, write_html
from b2s_core.viz.render3d import EGO_BOX_M, EGO_COLOR, RenderUnavailable, VoxelRenderer, voxel_mesh
from b2s_core.viz.samples import occ3d_sample_layer
from b2s_core.viz.scene import VisualizeOptions, frame_errors, frame_layers, visualize_scene
from b2s_core.viz.voxels import (
    BACKGROUND,
    CORRECT,
    ERRORS,
    FALSE_POSITIVE,
    MISSED,
    WRONG_CLASS,
    VisualizeError,
    VoxelLayer,
    error_layer,
    height_taxonomy,
)

GRID = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 2.2), (0.4, 0.4, 0.4), "views")  # 40 x 40 x 8: 8 height bands
X, Y, Z = GRID.shape
CAR, TRUCK, ROAD = (OCC3D.class_names.index(n) for n in ("car", "truck", "driveable_surface"))
FREE = OCC3D.free_index
CASES = (CORRECT, WRONG_CLASS, MISSED, FALSE_POSITIVE)


def pixel(image: np.ndarray, i: int, j: int, scale: int = 1) -> np.ndarray:
    """The BEV pixel (top-left of its block) of grid column (i, j): +x up, +y left."""
    return image[(X - 1 - i) * scale, (Y - 1 - j) * scale]


def colour_count(image: np.ndarray, color, tol: int = 0) -> int:
    return int((np.abs(image[..., :3].astype(int) - np.asarray(color)).max(axis=-1) <= tol).sum())


def l1(a, b) -> int:
    return int(np.abs(np.asarray(a, int) - np.asarray(b, int)).sum())


# -- height ramp ------------------------------------------------------------------------------------
TOWER_I = 30  # towers ahead of the ego: column (TOWER_I, 2 + 4 k) is occupied from the ground up to level k


def towers() -> np.ndarray:
    """(40, 40, 8) bool: ground (level 0) in every column, as ground completion leaves it, plus one
    tower per level k = 1..7 whose top voxel is at level k."""
    occupied = np.zeros(GRID.shape, bool)
    occupied[:, :, 0] = True
    for k in range(1, Z):
        occupied[TOWER_I, 2 + 4 * k, : k + 1] = True
    return occupied


def test_height_bev_gives_each_band_its_own_ramp_colour_and_the_legend_its_metres():
    layer = VoxelLayer.from_heights(towers(), GRID, "binary")
    taxonomy = layer.taxonomy
    assert taxonomy.class_names[1] == "z -1.0 to -0.6 m" and taxonomy.class_names[Z] == "z 1.8 to 2.2 m"
    assert layer.present_labels() == list(range(1, Z + 1))  # the legend lists every band present
    image = bev_image(layer, scale=1, draw_ego=False)
    ground = pixel(image, 5, 5)
    tops = [ground] + [pixel(image, TOWER_I, 2 + 4 * k) for k in range(1, Z)]
    for k, color in enumerate(tops):  # the BEV pixel is the legend swatch's colour exactly (no shading)
        assert np.array_equal(color, np.asarray(taxonomy.colors[k + 1], np.uint8)), k
    assert min(l1(a, b) for n, a in enumerate(tops) for b in tops[n + 1:]) >= 40  # every band reads apart
    low, mid, high = (tops[0].astype(int), tops[Z // 2].astype(int), tops[-1].astype(int))
    assert low[2] > low[0] + 80 and high[0] > high[2] + 80 and mid[1] == mid.max()  # blue ground ... green ... red top
    assert l1(ground, BACKGROUND) > 150  # the lowest band stands out from the empty columns
    assert np.array_equal(image, bev_image_reference(layer))  # the slow reference agrees, unshaded too


def test_height_bands_cover_a_tall_grid_contiguously_in_at_most_16_bands():
    grid = GRID_PRESETS["openoccupancy"]  # 40 levels of 0.2 m
    names = height_taxonomy(grid).class_names[1:]
    assert len(names) == 16
    spans = [tuple(float(v) for v in re.fullmatch(r"z (-?[\d.]+) to (-?[\d.]+) m", n).groups()) for n in names]
    assert spans[0][0] == grid.range_min[2] and spans[-1][1] == grid.range_max[2]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
    assert all(0.39 < hi - lo < 0.61 for lo, hi in spans)  # 2 or 3 levels of 0.2 m each


def test_height_layer_respects_the_mask_and_the_ego_marker_stays_on_top():
    occupied = towers()
    visible = np.ones(GRID.shape, bool)
    visible[TOWER_I, 2 + 4 * 5, 2:] = False  # the level-5 tower is seen only up to level 1
    layer = VoxelLayer.from_heights(occupied, GRID, "binary", visible)
    image = bev_image(layer, scale=4)
    assert np.array_equal(pixel(image, TOWER_I, 22, 4), np.asarray(layer.taxonomy.colors[2], np.uint8))
    row0, row1, col0, col1 = ego_pixel_box(layer, 4)
    assert np.array_equal(image[row0 + 1, (col0 + col1) // 2], np.asarray(BEV_EGO_COLOR, np.uint8))
    assert np.array_equal(image[(row0 + row1) // 2, (col0 + col1) // 2], np.asarray(layer.taxonomy.colors[1], np.uint8))


def test_height_ramp_separates_ground_from_trees_on_the_real_occ3d_sample(occ3d_sample):
    gt = occ3d_sample_layer(occ3d_sample)
    layer = VoxelLayer.from_heights(gt.occupied, gt.grid, "binary")
    image = bev_image(layer, scale=2, draw_ego=False)
    nz = gt.labels.shape[2]
    top = np.where(gt.occupied, np.arange(nz), -1).max(axis=2)  # (X, Y), -1 where empty
    top_label = np.take_along_axis(gt.labels, np.maximum(top, 0)[:, :, None], axis=2)[:, :, 0]
    rng = np.random.default_rng(1)
    columns = np.argwhere(top >= 0)
    for i, j in columns[rng.choice(len(columns), 300, replace=False)]:
        band = top[i, j]  # 16 levels: one band per level
        assert np.array_equal(image[2 * (199 - i), 2 * (199 - j)], np.asarray(layer.taxonomy.colors[band + 1], np.uint8))

    def mean_colour(name: str) -> np.ndarray:
        cols = np.argwhere((top >= 0) & (top_label == OCC3D.class_names.index(name)))
        return np.mean([image[2 * (199 - i), 2 * (199 - j)] for i, j in cols], axis=0)

    # What the grey view could not show: road, cars and trees are now far apart in colour.
    road, car, trees = mean_colour("driveable_surface"), mean_colour("car"), mean_colour("vegetation")
    assert l1(road, trees) > 150 and l1(road, car) > 60 and l1(car, trees) > 60


def test_3d_view_colours_top_faces_with_the_height_ramp():
    try:
        renderer = VoxelRenderer(320, 240)
    except RenderUnavailable as err:
        pytest.skip(f"no OpenGL context for open3d here: {err}")
    with renderer:
        layer = VoxelLayer.from_heights(towers(), GRID, "binary")
        image = renderer.render(voxel_mesh(layer), half_length=8.0)
    # lighting off: top faces keep the ramp colour (+-1 for the float buffer); the ground band fills the floor
    assert colour_count(image, layer.taxonomy.colors[1], tol=1) > 5000
    for band in (4, 6, 8):  # tower tops at levels 3, 5, 7
        assert colour_count(image, layer.taxonomy.colors[band], tol=1) > 10, band
    assert colour_count(image, BINARY.colors[1], tol=3) == 0  # no grey left


# -- error view ---------------------------------------------------------------------------------------
# Blocks of 3 x 3 columns ahead of the ego, one per case, at j = J0[case] .. J0[case] + 2.
BLOCK_I = 30
J0 = {CORRECT: 2, WRONG_CLASS: 8, MISSED: 14, FALSE_POSITIVE: 20}
FP_ON_TOP_J, MISSED_UNDER_J, OUTSIDE_J, IGNORED_J = 26, 30, 34, 37  # single columns at i = BLOCK_I


def error_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GT labels, predicted labels, evaluation mask), each (40, 40, 8), with every case at a known column."""
    gt = np.full(GRID.shape, FREE, np.uint8)
    pred = gt.copy()
    mask = np.ones(GRID.shape, bool)

    def block(case):
        return np.s_[BLOCK_I:BLOCK_I + 3, J0[case]:J0[case] + 3, 1:4]

    gt[block(CORRECT)], pred[block(CORRECT)] = CAR, CAR
    gt[block(WRONG_CLASS)], pred[block(WRONG_CLASS)] = CAR, TRUCK
    gt[block(MISSED)] = CAR
    pred[block(FALSE_POSITIVE)] = CAR
    gt[BLOCK_I, FP_ON_TOP_J, 0], pred[BLOCK_I, FP_ON_TOP_J, 0] = ROAD, ROAD  # correct road, a false voxel above
    pred[BLOCK_I, FP_ON_TOP_J, 5] = CAR
    gt[BLOCK_I, MISSED_UNDER_J, 0] = ROAD  # missed road under a correct car
    gt[BLOCK_I, MISSED_UNDER_J, 3], pred[BLOCK_I, MISSED_UNDER_J, 3] = CAR, CAR
    gt[BLOCK_I, OUTSIDE_J, 1:4] = CAR  # missed, but outside the evaluated mask
    mask[BLOCK_I, OUTSIDE_J] = False
    gt[BLOCK_I, IGNORED_J, 2], pred[BLOCK_I, IGNORED_J, 2] = 255, CAR  # the GT says ignore: not scored
    return gt, pred, mask


def error_layers(mask: np.ndarray | None) -> VoxelLayer:
    gt, pred, _ = error_frame()
    truth = VoxelLayer.from_semantics(gt, OCC3D, GRID, "gt", mask)
    guess = VoxelLayer.from_semantics(pred, OCC3D, GRID, "pred", mask)
    return error_layer(truth, guess, "errors")


def test_error_bev_colours_each_column_by_its_top_voxels_case_inside_the_mask():
    _, _, mask = error_frame()
    layer = error_layers(mask)
    image = bev_image(layer, scale=1, draw_ego=False)
    colors = {case: np.asarray(ERRORS.colors[case], np.uint8) for case in CASES}
    for case in CASES:
        assert np.array_equal(pixel(image, BLOCK_I + 1, J0[case] + 1), colors[case]), ERRORS.class_names[case]
    assert np.array_equal(pixel(image, BLOCK_I, FP_ON_TOP_J), colors[FALSE_POSITIVE])  # top-most voxel decides
    assert np.array_equal(pixel(image, BLOCK_I, MISSED_UNDER_J), colors[CORRECT])
    assert np.array_equal(pixel(image, BLOCK_I, OUTSIDE_J), np.asarray(BACKGROUND, np.uint8))  # not evaluated
    assert np.array_equal(pixel(image, BLOCK_I, IGNORED_J), np.asarray(BACKGROUND, np.uint8))
    assert min(l1(a, b) for a in colors.values() for b in colors.values() if a is not b) >= 150  # clearly distinct
    counts = np.bincount(layer.labels.ravel(), minlength=5)
    assert counts[CORRECT] == 27 + 1 + 1 and counts[WRONG_CLASS] == 27 and counts[MISSED] == 27 + 1
    assert counts[FALSE_POSITIVE] == 27 + 1
    # without a mask the column outside it is scored too: three more missed voxels
    assert np.bincount(error_layers(None).labels.ravel(), minlength=5)[MISSED] == 27 + 1 + 3


def test_error_layer_compares_occupancy_only_across_taxonomies_and_checks_the_grid():
    gt, pred, mask = error_frame()
    truth = VoxelLayer.from_semantics(gt, OCC3D, GRID, "gt", mask)
    decoder = VoxelLayer.from_heights(pred != FREE, GRID, "binary decoder", mask)
    layer = error_layer(truth, decoder)
    assert not (layer.labels == WRONG_CLASS).any()  # car vs truck is no error of occupancy
    assert np.array_equal(pixel(bev_image(layer, draw_ego=False), BLOCK_I + 1, J0[WRONG_CLASS] + 1, 2),
                          np.asarray(ERRORS.colors[CORRECT], np.uint8))
    other = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 2.2), (0.4, 0.4, 0.2))
    with pytest.raises(VisualizeError, match="different grids"):
        error_layer(truth, VoxelLayer.from_heights(np.zeros(other.shape, bool), other))


def test_3d_error_view_shows_each_case_in_its_colour():
    try:
        renderer = VoxelRenderer(320, 240)
    except RenderUnavailable as err:
        pytest.skip(f"no OpenGL context for open3d here: {err}")
    _, _, mask = error_frame()
    with renderer:
        image = renderer.render(voxel_mesh(error_layers(mask)), half_length=8.0)
    for case in CASES:  # the blocks' top faces, unshaded
        assert colour_count(image, ERRORS.colors[case], tol=1) > 30, ERRORS.class_names[case]


def test_error_view_on_the_real_occ3d_sample(occ3d_sample):
    with np.load(occ3d_sample) as data:
        gt, mask = data["semantics"], data["mask_camera"].astype(bool)
    grid = GRID_PRESETS["occ3d"]
    nz = gt.shape[2]
    occupied = (gt != FREE) & mask
    top = np.where(occupied, np.arange(nz), -1).max(axis=2)
    # columns whose top voxel is inside the mask, with the two voxels above it free and in the mask too
    room = np.zeros(top.shape, bool)
    ii, jj = np.nonzero((top >= 0) & (top < nz - 2))
    room[ii, jj] = mask[ii, jj, top[ii, jj] + 1] & mask[ii, jj, top[ii, jj] + 2] & (gt[ii, jj, top[ii, jj] + 1] == FREE)
    rng = np.random.default_rng(2)
    picked = np.argwhere(room)[rng.choice(int(room.sum()), 4, replace=False)]
    pred = gt.copy()
    (i1, j1), (i2, j2), (i3, j3), (i4, j4) = picked
    pred[i2, j2, top[i2, j2]] = CAR if gt[i2, j2, top[i2, j2]] != CAR else TRUCK  # wrong class on top
    pred[i3, j3, top[i3, j3]] = FREE  # the top voxel missed
    pred[i4, j4, top[i4, j4] + 1] = CAR  # a false voxel above the top
    truth = VoxelLayer.from_semantics(gt, OCC3D, grid, "gt", mask)
    image = bev_image(error_layer(truth, VoxelLayer.from_semantics(pred, OCC3D, grid, "pred", mask)), scale=2)
    for (i, j), case in zip(picked, CASES):
        assert np.array_equal(image[2 * (199 - i), 2 * (199 - j)], np.asarray(ERRORS.colors[case], np.uint8)), case


# -- through visualize_scene -----------------------------------------------------------------------------
def write_files(folder: Path, *, binary_gt: bool = False) -> tuple[Path, Path]:
    """One-frame scene 'views' on GRID: GT (semantic with mask_camera, or binary only) and predictions."""
    gt, pred, mask = error_frame()
    common = dict(scene="views", token="tok-" + "0123456789abcdef" * 4, timestamp=0, global_from_ego=np.eye(4), cameras=[])
    if binary_gt:
        truth = OccFrame(occupancy=towers(), **common)
    else:
        truth = OccFrame(occupancy=gt != FREE, semantics=gt, mask_camera=mask, **common)
    guess = OccFrame(occupancy=pred != FREE, semantics=pred, binary_pred=towers() if binary_gt else pred != FREE, **common)
    for name, frame in (("data.h5", truth), ("preds.h5", guess)):
        with OccWriter(folder / name, grid=GRID, taxonomy=OCC3D, source="synthetic") as writer:
            writer.write_scene("views", [frame])
    return folder / "data.h5", folder / "preds.h5"


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_visualize_scene_errors_pictures_score_inside_the_mask_only(tmp_path):
    data, preds = write_files(tmp_path)
    counts = {}
    for mask in ("none", "camera"):
        options = VisualizeOptions(errors=True, mask=mask, render_3d=False, bev_scale=3, html=True)
        result = visualize_scene(data, "views", tmp_path / mask, pred_path=preds, options=options)
        assert sorted(p.name for p in result.paths) == ["views.html", "views_bev.gif", "views_frame000_bev.png",
                                                        "views_frame000_errors_bev.png"]
        errors = read_rgb(tmp_path / mask / "views_frame000_errors_bev.png")
        counts[mask] = {case: colour_count(errors, ERRORS.colors[case]) for case in CASES}
        names = page_data_of(tmp_path / mask / "views.html")["layer_names"]
        assert names == ["ground truth", "prediction", "binary decoder", "prediction vs GT classes",
                         "binary decoder vs GT occupancy"]
    # the 3 voxels outside mask_camera are missed in both error panels (prediction, binary decoder): 2 columns of 3x3 px
    assert counts["none"][MISSED] - counts["camera"][MISSED] == 2 * 9
    for case in (CORRECT, WRONG_CLASS, FALSE_POSITIVE):
        assert counts["none"][case] == counts["camera"][case] > 9 * 9 * (1 if case == WRONG_CLASS else 2)


def page_data_of(page: Path) -> dict:
    text = page.read_text()
    return json.loads(re.search(r'<script type="application/json" id="b2s-data">(.*?)</script>', text, re.S).group(1))


def test_visualize_scene_draws_a_binary_file_and_the_binary_decoder_by_height(tmp_path):
    data, preds = write_files(tmp_path, binary_gt=True)
    gt_file, pred_file = OccDataset(data), OccDataset(preds)
    try:
        layers = frame_layers(gt_file.read(0), pred_file.read(0), gt_file, pred_file, "none")
    finally:
        gt_file.close()
        pred_file.close()
    assert [(layer.title, layer.taxonomy.name) for layer in layers] == [
        ("ground truth (binary)", "height"), ("prediction", "occ3d"), ("binary decoder", "height")]
    assert [e.title for e in frame_errors(layers)] == ["prediction vs GT occupancy", "binary decoder vs GT occupancy"]
    assert not (frame_errors(layers)[1].labels > CORRECT).any()  # the decoder equals the GT here
    result = visualize_scene(data, "views", tmp_path / "out", pred_path=preds,
                             options=VisualizeOptions(render_3d=False, bev_scale=2))
    bev = read_rgb(next(p for p in result.paths if p.name.endswith("_bev.png")))
    ramp = height_taxonomy(GRID).colors
    # ground columns (band 1) in the GT and decoder panels, minus the towers and the ego footprint
    assert colour_count(bev, ramp[1]) > 2 * 0.8 * X * Y * 4
    for band in range(2, Z + 1):  # every tower top, in both panels (2 x 2 px each), plus its legend swatch
        assert colour_count(bev, ramp[band]) >= 2 * 4, band
    for layer in (layers[0], layers[2]):  # the old grey is gone: no grey pixel but the white ego marker
        image = bev_image(layer).astype(int)
        grey = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2]) & (image[..., 0] < 255)
        assert not grey.any()


def test_cli_errors_option_writes_the_error_pictures_and_needs_pred(tmp_path):
    data, preds = write_files(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["visualize", "views", "--data", str(data), "--out", str(out), "--errors", "--no-3d"])
    assert result.exit_code == 1 and "--errors" in result.output and "--pred" in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing written for a bad request
    result = CliRunner().invoke(app, ["visualize", "views", "--data", str(data), "--pred", str(preds), "--out", str(out),
                                      "--errors", "--no-3d", "--mask", "camera"])
    assert result.exit_code == 0, result.output
    errors = out / "views_frame000_errors_bev.png"
    assert str(errors) in result.output and errors.is_file()
    assert colour_count(read_rgb(errors), ERRORS.colors[WRONG_CLASS]) >= 2 * 2 * 9  # the car/truck block, 2 px per voxel


# -- the HTML page in headless Chromium --------------------------------------------------------------
TOKEN = "tok-" + "0123456789abcdef" * 4  # 68 characters without a break opportunity
WINDOW = (900, 600)
SIDE_PX = 230  # the page's sidebar width (CSS)


def chromium(page: Path, tmp_path: Path, *, fragment: str = "", shot: Path | None = None) -> str:
    """Run headless Chromium on ``page``: a screenshot to ``shot``, or the DOM after the scripts ran."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); the HTML page is untested")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
               "--virtual-time-budget=8000", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
    command += [f"--screenshot={shot}"] if shot is not None else ["--dump-dom"]
    done = subprocess.run(command + [page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=120, check=False)
    if shot is not None:
        assert shot.is_file(), "Chromium wrote no screenshot"
    return done.stdout


def screenshot(page: Path, tmp_path: Path, fragment: str = "") -> np.ndarray:
    shot = tmp_path / f"shot{len(list(tmp_path.glob('shot*.png')))}.png"
    chromium(page, tmp_path, fragment=fragment, shot=shot)
    return read_rgb(shot)


def ego_top_pixel(grid: VoxelGrid) -> tuple[int, int]:
    """Screenshot (row, col) of the centre of the ego box's top face in the page's default view, worked
    out here from the view the page documents: a pinhole camera with a 60 degree horizontal field of view,
    1.8 grid half-lengths from a point 0.2 half-lengths ahead of the ego, 0.75 rad above the horizon, behind."""
    half = grid.shape[0] * grid.voxel_size[0] / 2
    width, height = WINDOW[0] - SIDE_PX, WINDOW[1]
    target = np.array([0.2 * half, 0.0, 0.0])
    eye = target + 1.8 * half * np.array([-np.cos(0.75), 0.0, np.sin(0.75)])
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    point = np.array([0.0, 0.0, EGO_BOX_M[2]]) - eye
    focal = 0.5 * width / np.tan(np.pi / 6)
    u = width / 2 + focal * point @ right / (point @ forward)
    v = height / 2 + focal * point @ down / (point @ forward)
    return int(round(v)), SIDE_PX + int(round(u))


@pytest.fixture(scope="module")
def synthetic_page(tmp_path_factory) -> Path:
    gt, pred, mask = error_frame()
    truth = VoxelLayer.from_semantics(gt, OCC3D, GRID, "ground truth", mask)
    guess = VoxelLayer.from_semantics(pred, OCC3D, GRID, "prediction", mask)
    decoder = VoxelLayer.from_heights(towers(), GRID, "binary decoder")
    layers = [truth, guess, decoder, error_layer(truth, guess, "prediction vs GT classes")]
    return write_html([HtmlFrame("frame 0 (1 of 1)", layers, token=TOKEN)], tmp_path_factory.mktemp("page") / "views.html",
                      title="b2s: views")


def test_html_sidebar_fits_and_shows_the_token_whole(synthetic_page, tmp_path):
    probe = tmp_path / "probe.html"
    measure = ("<script>const side = document.getElementById('side'), token = document.getElementById('token');"
               "const s = side.getBoundingClientRect(), t = token.getBoundingClientRect();"
               "document.body.dataset.probe = JSON.stringify({overflow: side.scrollWidth - side.clientWidth,"
               " token: token.textContent, inside: t.left >= s.left && t.right <= s.right, lines: Math.round(t.height / 14),"
               " select: getComputedStyle(token).userSelect});</script></body>")
    probe.write_text(synthetic_page.read_text().replace("</body>", measure))
    dom = chromium(probe, tmp_path)
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the page's scripts did not run"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["overflow"] == 0  # no horizontal scrollbar
    assert result["token"] == TOKEN and result["inside"] and result["lines"] >= 2  # whole, wrapped inside the sidebar
    assert result["select"] == "all"  # one click selects all of it, for copying


def test_html_default_view_shows_the_ego_marker(synthetic_page, tmp_path):
    image = screenshot(synthetic_page, tmp_path)
    row, col = ego_top_pixel(GRID)
    block = image[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3)
    assert (np.abs(block.astype(int) - EGO_COLOR).max(axis=1) <= 2).all(), block
    hidden_ego = screenshot(synthetic_page, tmp_path, f"#hide={ROAD}")  # the toggles hide classes, never the ego
    assert (np.abs(hidden_ego[row, col].astype(int) - EGO_COLOR) <= 2).all()


def test_html_colours_by_height_and_shows_error_and_height_layers(synthetic_page, tmp_path):
    view_of = lambda fragment: screenshot(synthetic_page, tmp_path, fragment)[:, SIDE_PX + 10:]  # noqa: E731
    ramp = height_taxonomy(GRID).colors
    by_height = view_of("#color=height")
    assert colour_count(by_height, ramp[4], tol=2) > 200  # the car blocks' top level 3, in the ramp colour as it is
    assert sum(colour_count(by_height, np.round(np.asarray(OCC3D.colors[CAR]) * s), tol=2) for s in (1.0, 0.7)) == 0
    errors = view_of("#layer=prediction%20vs%20GT%20classes")
    for case in CASES:
        assert colour_count(errors, ERRORS.colors[case], tol=2) > 50, ERRORS.class_names[case]
    decoder = view_of("#layer=binary%20decoder")
    assert colour_count(decoder, ramp[1], tol=2) > 20_000  # the ground band
    assert sum(colour_count(decoder, ramp[b], tol=2) > 0 for b in range(2, Z + 1)) >= 5  # the tower tops


def test_html_page_data_carry_the_ramp_ego_and_token(synthetic_page):
    data = page_data_of(synthetic_page)
    assert data["frames"][0]["token"] == TOKEN
    assert data["height"]["colors"] == [list(c) for c in height_taxonomy(GRID).colors[1:]]  # one band per level here
    assert data["ego"]["size"] == list(EGO_BOX_M) and data["ego"]["color"] == list(EGO_COLOR)
    shaded = {name: entry["shaded"] for name, entry in data["frames"][0]["layers"].items()}
    assert shaded == {"ground truth": True, "prediction": True, "binary decoder": False, "prediction vs GT classes": False}
    assert data["taxonomies"]["errors"]["present"] == list(CASES)
    assert page_data([HtmlFrame("f", [VoxelLayer.from_heights(towers(), GRID)])], "t")["frames"][0]["token"] == ""


def test_html_ego_marker_on_the_real_occ3d_sample(occ3d_sample, tmp_path):
    layer = occ3d_sample_layer(occ3d_sample)
    page = write_html([HtmlFrame("Occ3D sample", [layer], token="occ3d-sample")], tmp_path / "occ3d.html")
    image = screenshot(page, tmp_path)
    row, col = ego_top_pixel(layer.grid)
    block = image[row - 1:row + 2, col - 1:col + 2].reshape(-1, 3)
    assert (np.abs(block.astype(int) - EGO_COLOR).max(axis=1) <= 2).all(), block
