"""Top-2 pseudo-label pictures (b2s_core.viz.top2): second choice and logit margin, checked on the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from _eval_data import SMALL as FILE_GRID
from _eval_data import StandInConfig, StandInModel, make_frames, write_file
from PIL import Image

from b2s_core.apps.autolabel import AutolabelConfig, autolabel_to_file
from b2s_core.apps.predict import open_inputs
from b2s_core.grids import VoxelGrid
from b2s_core.occfile import OccDataset
from b2s_core.records import OccFrame
from b2s_core.taxonomy import OCC3D
from b2s_core.viz.bev import bev_image, ego_pixel_box
from b2s_core.viz.scene import VisualizeOptions, visualize_scene
from b2s_core.viz.top2 import MARGIN_FULL, MARGIN_RAMP, margin_bev, margin_colors, top2_layers, top2_picture
from b2s_core.viz.voxels import BACKGROUND, SHADE_MIN, VisualizeError

GRID = VoxelGrid((-4.0, -3.0, -1.0), (4.0, 3.0, 1.4), (0.5, 0.5, 0.4), "small")  # 16 x 12 x 6
X, Y, Z = GRID.shape
NAMES = OCC3D.class_names
CAR, TRUCK, ROAD, TERRAIN, SIDEWALK = (NAMES.index(n) for n in ("car", "truck", "driveable_surface", "terrain", "sidewalk"))
FREE = OCC3D.free_index
SCALE = 2

# (i, j, k): (first, second, logit 1, logit 2)
UNSURE = (10, 5, 3)  # car, truck by a hair: margin 0.1
SURE = (4, 8, 2)  # road, terrain far behind: margin 6 > MARGIN_FULL
TOP_FREE = (12, 2, 4)  # car, second choice free
UNDER = (12, 2, 1)  # below TOP_FREE: road, sidewalk (not the column's top voxel: never shown)
FREE_FIRST = (2, 2, 5)  # paper form: free first, car second (no first-choice voxel in its column)
VOXELS = {UNSURE: (CAR, TRUCK, 2.0, 1.9), SURE: (ROAD, TERRAIN, 6.0, 0.0), TOP_FREE: (CAR, FREE, 1.0, -1.0),
          UNDER: (ROAD, SIDEWALK, 3.0, 0.5), FREE_FIRST: (FREE, CAR, 0.4, 0.3)}


def frame_of(voxels: dict, with_support: bool = True) -> OccFrame:
    """A Top-2 frame as autolabel writes it: arrays in C order of the support's voxels."""
    support = np.zeros(GRID.shape, bool)
    for ijk in voxels:
        support[ijk] = True
    flat = np.flatnonzero(support)
    by_flat = {np.ravel_multi_index(ijk, GRID.shape): v for ijk, v in voxels.items()}
    labels = np.array([by_flat[f][:2] for f in flat], np.uint8)
    logits = np.array([by_flat[f][2:] for f in flat], np.float16)
    semantics = np.full(GRID.shape, FREE, np.uint8)
    for ijk, (first, *_) in voxels.items():
        semantics[ijk] = first
    return OccFrame(scene="s", token="t", timestamp=0, global_from_ego=np.eye(4), cameras=[],
                    occupancy=semantics != FREE, semantics=semantics, top2_labels=labels, top2_logits=logits,
                    top2_support=support if with_support else None)


def pixel(image: np.ndarray, i: int, j: int) -> np.ndarray:
    """The BEV pixel of grid column (i, j): +x up, +y left (b2s_core.viz.bev)."""
    return image[(X - 1 - i) * SCALE, (Y - 1 - j) * SCALE]


def shaded(label: int, k: int) -> np.ndarray:
    """The documented height shading, written out independently of the library."""
    factor = SHADE_MIN + (1 - SHADE_MIN) * k / (Z - 1)
    return np.array([int(np.round(c * factor)) for c in OCC3D.colors[label]], np.uint8)


def luminance(rgb) -> float:
    r, g, b = (float(v) for v in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_second_choice_column_has_the_second_class_colour():
    layers = top2_layers(frame_of(VOXELS), OCC3D, GRID)
    first = bev_image(layers.first, scale=SCALE, draw_ego=False)
    second = bev_image(layers.second, scale=SCALE, draw_ego=False)
    assert np.array_equal(pixel(first, *UNSURE[:2]), shaded(CAR, UNSURE[2]))
    assert np.array_equal(pixel(second, *UNSURE[:2]), shaded(TRUCK, UNSURE[2]))
    assert np.array_equal(pixel(second, *SURE[:2]), shaded(TERRAIN, SURE[2]))
    # the column's top voxel is a car whose second choice is free: not drawn, and the sidewalk
    # second choice of the road below it is not shown in its place
    assert np.array_equal(pixel(first, *TOP_FREE[:2]), shaded(CAR, TOP_FREE[2]))
    assert np.array_equal(pixel(second, *TOP_FREE[:2]), np.array(BACKGROUND, np.uint8))
    assert SIDEWALK not in layers.second.present_labels()
    # a support voxel whose first choice is free has no column in any panel
    assert np.array_equal(pixel(first, *FREE_FIRST[:2]), np.array(BACKGROUND, np.uint8))
    assert np.array_equal(pixel(second, *FREE_FIRST[:2]), np.array(BACKGROUND, np.uint8))
    assert layers.second.present_labels() == sorted([TERRAIN, TRUCK])


def test_margin_view_is_bright_where_unsure_and_dark_where_sure():
    layers = top2_layers(frame_of(VOXELS), OCC3D, GRID)
    image = margin_bev(layers, scale=SCALE, draw_ego=False)
    unsure, sure = pixel(image, *UNSURE[:2]), pixel(image, *SURE[:2])
    # float16 logits: 2.0 - 1.9 is stored as 2.0 - 1.900390625
    assert np.array_equal(unsure, margin_colors(np.float32(2.0) - np.float32(np.float16(1.9))))
    assert np.array_equal(sure, np.array(MARGIN_RAMP[-1][1], np.uint8))  # margin 6 is past the ramp's end
    assert luminance(unsure) > luminance(sure) + 100 and luminance(sure) > luminance(BACKGROUND) + 20
    # the margin of the column's top voxel (2.0), not of the road below it (2.5)
    assert np.array_equal(pixel(image, *TOP_FREE[:2]), margin_colors(2.0))
    assert np.array_equal(pixel(image, *FREE_FIRST[:2]), np.array(BACKGROUND, np.uint8))


def test_margin_ramp_gets_darker_as_the_margin_grows():
    margins = np.linspace(0, MARGIN_FULL, 50)
    lum = [luminance(c) for c in margin_colors(margins)]
    assert all(a > b for a, b in zip(lum, lum[1:]))
    assert np.array_equal(margin_colors(0.0), np.array(MARGIN_RAMP[0][1], np.uint8))
    assert np.array_equal(margin_colors(2 * MARGIN_FULL), margin_colors(MARGIN_FULL))


def test_mask_hides_voxels_and_the_support_defaults_to_the_occupied_voxels():
    given_geometry = {ijk: v for ijk, v in VOXELS.items() if ijk != FREE_FIRST}  # support = occupied voxels
    visible = np.ones(GRID.shape, bool)
    visible[UNSURE] = False
    layers = top2_layers(frame_of(given_geometry, with_support=False), OCC3D, GRID, visible)
    background = np.array(BACKGROUND, np.uint8)
    for image in (bev_image(layers.first, scale=SCALE, draw_ego=False), bev_image(layers.second, scale=SCALE, draw_ego=False),
                  margin_bev(layers, scale=SCALE, draw_ego=False)):
        assert np.array_equal(pixel(image, *UNSURE[:2]), background)
        assert not np.array_equal(pixel(image, *SURE[:2]), background)


def test_frames_without_top2_have_no_picture_and_misfit_arrays_are_refused():
    frame = frame_of(VOXELS)
    plain = OccFrame(scene="s", token="t", timestamp=0, global_from_ego=np.eye(4), cameras=[],
                     occupancy=frame.occupancy, semantics=frame.semantics)
    assert top2_layers(plain, OCC3D, GRID) is None
    frame.top2_labels = frame.top2_labels[:-1]
    with pytest.raises(VisualizeError, match="labels.h5: frame 't': Top-2 arrays of shape"):
        top2_layers(frame, OCC3D, GRID, where="labels.h5: frame 't'")


def test_picture_puts_the_three_panels_side_by_side_with_both_legends():
    layers = top2_layers(frame_of(VOXELS), OCC3D, GRID)
    picture = top2_picture(layers, scale=SCALE, caption="a caption")
    panels = [bev_image(layers.first, scale=SCALE), bev_image(layers.second, scale=SCALE), margin_bev(layers, scale=SCALE)]
    found = [find_block(picture, panel) for panel in panels]
    assert all(f is not None for f in found)
    assert found[0][0] == found[1][0] == found[2][0] and found[0][1] < found[1][1] < found[2][1]  # one row, in order
    below = picture[found[0][0] + panels[0].shape[0]:]
    for label in (CAR, TRUCK, ROAD, TERRAIN):  # the class legend: first and second choices' classes
        assert (np.abs(below.astype(int) - OCC3D.colors[label]).max(axis=-1) == 0).sum() >= 100, NAMES[label]
    for _, color in MARGIN_RAMP[::2]:  # the margin legend: both ends of the ramp
        assert (np.abs(below.astype(int) - color).max(axis=-1) == 0).sum() >= 100


def find_block(image: np.ndarray, block: np.ndarray) -> tuple[int, int] | None:
    """(row, column) where ``block`` lies in ``image`` exactly, or None."""
    h, w = block.shape[:2]
    for r in range(image.shape[0] - h + 1):
        candidates = np.flatnonzero((image[r, : image.shape[1] - w + 1] == block[0, 0]).all(axis=-1))
        for c in candidates:
            if np.array_equal(image[r : r + h, c : c + w], block):
                return r, c
    return None


# -- end to end: a pseudo-label file written by autolabel, drawn by visualize_scene -----------------------
def test_visualize_draws_the_top2_picture_of_a_real_pseudo_label_file(tmp_path):
    rng = np.random.default_rng(7)
    data = write_file(tmp_path / "binary.h5", {"s0": make_frames(rng, "s0", 2, semantics=False)})
    model_config = StandInConfig(offboard=True)
    autolabel_to_file(StandInModel(model_config), open_inputs(data, model_config), tmp_path / "labels.h5",
                      model_config=model_config, taxonomy=OCC3D, config=AutolabelConfig(mode="top2", form="paper"))
    options = VisualizeOptions(frame=1, render_3d=False, cameras=False, mask="camera")
    result = visualize_scene(data, "s0", tmp_path / "pics", pred_path=tmp_path / "labels.h5", options=options)
    assert tmp_path / "pics" / "s0_frame001_top2.png" in result.paths
    assert not (tmp_path / "pics" / "s0_frame000_top2.png").exists()  # only the picked frame

    frame = OccDataset(tmp_path / "labels.h5").read(1, fields=("occupancy", "semantics", "top2"))
    visible = OccDataset(data).read(1, fields=("mask_camera",)).mask_camera
    with Image.open(tmp_path / "pics" / "s0_frame001_top2.png") as png:
        picture = np.asarray(png.convert("RGB"))
    layers = top2_layers(frame, OCC3D, FILE_GRID, visible)
    second = bev_image(layers.second, scale=2)
    corner = find_block(picture, second)
    assert corner is not None
    # every column's second-choice pixel, worked out from the file's arrays independently
    support = frame.top2_support & visible
    flat = np.flatnonzero(frame.top2_support)
    second_of = np.full(frame.occupancy.size, FREE, np.uint8)
    second_of[flat] = frame.top2_labels[:, 1]
    second_of = second_of.reshape(frame.occupancy.shape)
    first_occupied = support & (frame.semantics != FREE)
    ego_box = ego_pixel_box(layers.first, 2)
    checked = 0
    for i in range(FILE_GRID.shape[0]):
        for j in range(FILE_GRID.shape[1]):
            ks = np.flatnonzero(first_occupied[i, j])
            if len(ks) == 0:
                continue
            k = ks[-1]
            label = second_of[i, j, k]
            row, col = corner[0] + (FILE_GRID.shape[0] - 1 - i) * 2, corner[1] + (FILE_GRID.shape[1] - 1 - j) * 2
            factor = SHADE_MIN + (1 - SHADE_MIN) * k / (FILE_GRID.shape[2] - 1)
            expected = BACKGROUND if label == FREE else [int(np.round(c * factor)) for c in OCC3D.colors[label]]
            r0, r1, c0, c1 = ego_box
            if r0 <= row - corner[0] < r1 and c0 <= col - corner[1] < c1:
                continue  # under the ego marker
            assert list(picture[row, col]) == list(expected), (i, j, k, label)
            checked += 1
    assert checked > 50


def test_visualize_draws_no_top2_picture_without_top2_arrays(tmp_path):
    rng = np.random.default_rng(8)
    data = write_file(tmp_path / "gt.h5", {"s0": make_frames(rng, "s0", 1)})
    result = visualize_scene(data, "s0", tmp_path / "pics", options=VisualizeOptions(render_3d=False, cameras=False))
    assert not any(p.name.endswith("_top2.png") for p in result.paths)
    assert not list((tmp_path / "pics").glob("*_top2.png"))
