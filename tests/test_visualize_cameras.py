"""Camera pictures and text, checked on pixels: labelled tiles, distance-limited and outline overlays,
overlay colours that stay apart once blended, word gaps in titles; and the numbers a person reads
in `b2s info` and the build-binary summary."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_cli.commands import build_binary as build_binary_cli
from b2s_cli.commands.info import _size
from b2s_core.apps.summary import summarize
from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.occfile import OccWriter
from b2s_core.records import OccFrame
from b2s_core.taxonomy import OCC3D, OPENOCCUPANCY, OPENSCENE
from b2s_core.viz.cameras import (
    NUSCENES_LAYOUT,
    OVERLAY_COLORS,
    RIM_SHADE,
    camera_mosaic,
    camera_overlay,
    decode_image,
    overlay_color_array,
    overlay_legends,
    overlay_occupancy,
)
from b2s_core.viz.compose import LABEL_BOX, TEXT_COLOR, label_box, titled
from b2s_core.viz.samples import nuscenes_keyframe as load_nuscenes_keyframe
from b2s_core.viz.voxels import SHADE_MIN, VisualizeError, VoxelLayer
from converters.jobs.build_binary import BuildBinarySummary

CAR, FREE = OCC3D.class_names.index("car"), OCC3D.free_index
OVERLAY_ALPHA = 0.6  # the fill mode's default blend weight
# A camera at 1 m height looking along ego +x: cam x = -ego y (right), cam y = -ego z (down), cam z = ego x.
EGO_FROM_CAM = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
K = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 60.0], [0.0, 0.0, 1.0]])  # 160 x 120 image
GRID = VoxelGrid((0.0, -4.0, -1.0), (16.0, 4.0, 3.0), (0.4, 0.4, 0.4), "ahead")  # 40 x 20 x 10


def photo(seed: int = 0, shape: tuple[int, int] = (120, 160)) -> np.ndarray:
    """A noisy stand-in photo, so that 'untouched' and 'tinted' pixels are told apart exactly."""
    return np.random.default_rng(seed).integers(40, 216, size=(*shape, 3), dtype=np.uint8)


def layer_with(*blocks: tuple[tuple[float, float, float], tuple[float, float, float], int]) -> VoxelLayer:
    """Voxels of ``label`` filling each axis-aligned ego-frame box (low corner, high corner)."""
    labels = np.full(GRID.shape, FREE, np.uint8)
    for low, high, label in blocks:
        i0, i1 = GRID.index_of(np.array([low, high]))
        labels[i0[0] : i1[0] + 1, i0[1] : i1[1] + 1, i0[2] : i1[2] + 1] = label
    return VoxelLayer.from_semantics(labels, OCC3D, GRID, "blocks")


def pixel_of(point: tuple[float, float, float]) -> tuple[int, int]:
    """(row, col) of an ego-frame point in the test camera, projected independently of the library."""
    p_cam = np.linalg.solve(EGO_FROM_CAM, np.append(point, 1.0))[:3]
    u, v = (K @ p_cam)[:2] / p_cam[2]
    return int(round(v)), int(round(u))


def centre_pixel(point: tuple[float, float, float]) -> tuple[int, int]:
    """(row, col) of the centre of the voxel holding ``point``: the middle of its square."""
    return pixel_of(tuple(GRID.center_of(GRID.index_of(np.array([point])))[0]))


def car_colour(k: int) -> np.ndarray:
    """The car colour at height index k of the 10-level grid (the documented height shading)."""
    return np.round(np.asarray(OCC3D.colors[CAR], float) * (SHADE_MIN + (1 - SHADE_MIN) * k / 9))


# -- labelled tiles ---------------------------------------------------------------------------------
def test_every_tile_carries_its_channel_name_on_a_dark_box():
    names = [n for row in NUSCENES_LAYOUT for n in row]
    tiles = {name: photo(seed) for seed, name in enumerate(names)}
    mosaic = camera_mosaic(tiles, gap=4)
    plain = camera_mosaic(tiles, gap=4, labels=False)
    for r, row in enumerate(NUSCENES_LAYOUT):
        for c, name in enumerate(row):
            top, left = r * (120 + 4), c * (160 + 4)
            box_w, box_h = label_box(name)
            box = mosaic[top : top + box_h, left : left + box_w].astype(int)
            raw = tiles[name][:box_h, :box_w].astype(int)
            assert (np.abs(box - raw).max(axis=2) > 0).mean() > 0.95  # the label replaces the photo there
            # every box pixel is the box colour, the text colour or an anti-aliased mix of the two
            t = np.clip(((box - LABEL_BOX) @ np.subtract(TEXT_COLOR, LABEL_BOX)) / np.sum(np.subtract(TEXT_COLOR, LABEL_BOX) ** 2), 0, 1)
            mix = np.asarray(LABEL_BOX) + t[..., None] * np.subtract(TEXT_COLOR, LABEL_BOX)
            assert np.abs(box - mix).max() <= 2
            assert (np.abs(box - LABEL_BOX).max(axis=2) == 0).mean() > 0.5  # mostly the box
            assert (np.abs(box - TEXT_COLOR).max(axis=2) <= 24).sum() >= 4 * len(name)  # and real strokes of text
            rest = mosaic[top + box_h : top + 120, left : left + 160]
            assert np.array_equal(rest, tiles[name][box_h:])  # the label touches nothing else
    assert np.array_equal(plain[:120, :160], tiles["CAM_FRONT_LEFT"])
    assert label_box("CAM_FRONT_RIGHT")[0] > label_box("CAM_FRONT")[0] + 20  # the box holds the whole name
    small = {name: photo(seed, (10, 20)) for seed, name in enumerate(names)}
    assert np.array_equal(camera_mosaic(small, gap=2)[:10, :20], small["CAM_FRONT_LEFT"])  # no room: no label


def test_real_key_frame_tiles_are_labelled_and_outline_keeps_the_photo(nuscenes_keyframe):
    frame, images = load_nuscenes_keyframe(nuscenes_keyframe)
    layer = VoxelLayer.from_semantics(frame.semantics, OCC3D, GRID_PRESETS["occ3d"], "LiDAR voxels")
    cams = {cam.name: cam for cam in frame.cameras}
    photos = {name: decode_image(images[name]) for name in cams}
    raw = {name: camera_overlay(photos[name], cam, layer, width=200, distance=(1e6, 2e6)) for name, cam in cams.items()}
    fill = {name: camera_overlay(photos[name], cam, layer, width=200, mode="fill") for name, cam in cams.items()}
    outline = {name: camera_overlay(photos[name], cam, layer, width=200, mode="outline") for name, cam in cams.items()}
    mosaic = camera_mosaic(outline)
    for r, row in enumerate(NUSCENES_LAYOUT):
        for c, name in enumerate(row):
            box_w, box_h = label_box(name)
            top, left = r * (raw[name].shape[0] + 4), c * (200 + 4)
            assert (mosaic[top : top + box_h, left : left + box_w] == LABEL_BOX).all(axis=2).mean() > 0.5, name
    changed_fill = np.mean([(fill[n] != raw[n]).any(axis=2).mean() for n in cams])
    changed_outline = np.mean([(outline[n] != raw[n]).any(axis=2).mean() for n in cams])
    assert changed_fill > 0.4 and changed_outline < 0.5 * changed_fill, (changed_fill, changed_outline)
    # the truck ahead is outlined in its overlay colour, at some height shade
    truck = OCC3D.class_names.index("truck")
    shades = [np.round(np.asarray(OVERLAY_COLORS["truck"], float) * (SHADE_MIN + (1 - SHADE_MIN) * k / 15)) for k in range(16)]
    front = outline["CAM_FRONT"].astype(float)
    assert truck in layer.present_labels()
    assert sum(int((np.abs(front - s).max(axis=2) == 0).sum()) for s in shades) > 100


# -- distance range -----------------------------------------------------------------------------------
def test_distance_range_leaves_near_voxels_untouched_and_tints_far_ones():
    near_point, far_point = (2.2, 1.0, 1.0), (10.2, -2.6, 1.0)  # apart in the image
    layer = layer_with((near_point, near_point, CAR), (far_point, far_point, CAR))
    image = photo(1)
    near_px, far_px = centre_pixel(near_point), centre_pixel(far_point)
    k = int(GRID.index_of(np.array([near_point]))[0, 2])
    for distance, near_drawn, far_drawn in (((0.0, np.inf), True, True), ((5.0, np.inf), False, True), ((0.0, 5.0), True, False)):
        out = overlay_occupancy(image, layer, K, EGO_FROM_CAM, mode="fill", distance=distance)
        for (row, col), drawn in ((near_px, near_drawn), (far_px, far_drawn)):
            tinted = np.round(OVERLAY_ALPHA * car_colour(k) + (1 - OVERLAY_ALPHA) * image[row, col])
            if drawn:
                assert np.array_equal(out[row, col], tinted), distance
            else:
                assert np.array_equal(out[row - 3 : row + 4, col - 3 : col + 4], image[row - 3 : row + 4, col - 3 : col + 4]), distance


def test_a_near_voxel_left_out_still_hides_what_is_behind_it():
    near_point, far_point = (2.2, 0.2, 1.0), (10.2, 0.2, 1.0)  # one line of sight
    layer = layer_with((near_point, near_point, CAR), (far_point, far_point, CAR))
    image = photo(2)
    row, col = centre_pixel(far_point)
    out = overlay_occupancy(image, layer, K, EGO_FROM_CAM, mode="fill", distance=(5.0, np.inf))
    assert np.array_equal(out, image)  # the far voxel lies behind the near one: nothing painted on the near object
    alone = overlay_occupancy(image, layer_with((far_point, far_point, CAR)), K, EGO_FROM_CAM, mode="fill", distance=(5.0, np.inf))
    assert not np.array_equal(alone[row, col], image[row, col])


def test_bad_overlay_settings_are_refused():
    layer = layer_with(((2.2, 0.2, 1.0), (2.2, 0.2, 1.0), CAR))
    for kwargs, message in ((dict(mode="blobs"), "unknown camera overlay"), (dict(distance=(5.0, 5.0)), "0 <= near < far"),
                            (dict(distance=(-1.0, 9.0)), "0 <= near < far"), (dict(distance=(1.0, float("nan"))), "0 <= near < far")):
        with pytest.raises(VisualizeError, match=message):
            overlay_occupancy(photo(), layer, K, EGO_FROM_CAM, **kwargs)


def test_cli_camera_options_reach_the_library_and_bad_values_are_one_line(tmp_path, monkeypatch):
    seen = {}

    def fake_visualize_scene(data, scene, out, *, pred_path, options, on_frame):
        from b2s_core.viz.scene import VisualizeResult

        seen["options"] = options
        return VisualizeResult()

    monkeypatch.setattr("b2s_cli.commands.visualize.visualize_scene", fake_visualize_scene)
    base = ["visualize", "s1", "--data", "d.h5", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, base + ["--camera-overlay", "fill", "--camera-range", "4:50"])
    assert result.exit_code == 0, result.output
    assert (seen["options"].camera_overlay, seen["options"].camera_distance) == ("fill", (4.0, 50.0))
    assert CliRunner().invoke(app, base).exit_code == 0
    assert (seen["options"].camera_overlay, seen["options"].camera_distance) == ("outline", (2.5, np.inf))  # the defaults
    for args, message in ((["--camera-range", "4"], "NEAR:FAR"), (["--camera-range", "a:b"], "NEAR:FAR"),
                          (["--camera-range", "9:4"], "FAR must be greater"), (["--camera-range", "-1:4"], "at least 0")):
        result = CliRunner().invoke(app, base + args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    result = CliRunner().invoke(app, base + ["--camera-overlay", "blobs"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'blobs' is not one of 'fill', 'outline'" in result.output, result.output  # a choice


# -- outline mode -------------------------------------------------------------------------------------
def test_outline_draws_the_border_of_a_near_block_and_leaves_its_inside_photo():
    low, high = (2.6, -0.6, 0.2), (3.4, 0.6, 1.8)  # a car-sized face 3 m ahead: a ~70 px block
    layer = layer_with((low, high, CAR))
    image = photo(3)
    centre = pixel_of((2.6, 0.0, 1.0))
    outline = overlay_occupancy(image, layer, K, EGO_FROM_CAM, mode="outline")
    fill = overlay_occupancy(image, layer, K, EGO_FROM_CAM, mode="fill")
    row, col = centre
    inside = (slice(row - 10, row + 11), slice(col - 10, col + 11))
    assert np.array_equal(outline[inside], image[inside])  # the photo inside the block is untouched
    assert (fill[inside] != image[inside]).any(axis=2).all()  # while fill tints all of it
    changed = (outline != image).any(axis=2)
    rows, cols = np.nonzero(changed)
    assert rows.min() > 0 and cols.min() > 0  # the block lies inside the image
    # the border: the changed pixels run along the block's edge, 2 px wide, in the opaque (unblended) car colour
    left_edge = changed[row, cols.min() : cols.min() + 4]
    assert left_edge.tolist() == [True, True, False, False]
    shades = {tuple(car_colour(k)) for k in range(10)}
    assert all(tuple(outline[r, c].astype(float)) in shades for r, c in zip(rows, cols))
    assert changed.sum() < 0.25 * (fill != image).any(axis=2).sum()


def test_outline_separates_a_car_in_front_of_another_car():
    front = ((3.0, -0.2, 0.2), (3.0, 0.2, 1.4), CAR)  # a narrow car 3 m ahead: columns ~67..93
    behind = ((9.0, -1.8, 0.2), (9.0, 1.8, 1.4), CAR)  # a wide one 9 m ahead: columns ~58..102
    image = photo(4)
    both = overlay_occupancy(image, layer_with(front, behind), K, EGO_FROM_CAM, mode="outline")
    alone = overlay_occupancy(image, layer_with(behind), K, EGO_FROM_CAM, mode="outline")
    row, inner = 60, slice(64, 97)  # across the far car, clear of its own left and right borders
    assert np.array_equal(alone[row, inner], image[row, inner])
    # one class, but the depth jumps from 3 m to 9 m at the front car's sides: both sides are drawn
    changed = np.flatnonzero((both[row, inner] != image[row, inner]).any(axis=1)) + inner.start
    assert len(changed) and changed.min() < 72 and changed.max() > 88 and len(changed) <= 8, changed


# -- colours after blending -----------------------------------------------------------------------------
def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB 0..255 -> (..., 3) CIELAB (D65)."""
    c = np.asarray(rgb, float) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                             [0.0193339, 0.1191920, 0.9503041]]).T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """CIEDE2000 colour difference of two CIELAB colours (Sharma, Wu, Dalal 2005)."""
    (L1, a1, b1), (L2, a2, b2) = lab1, lab2
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p, h2p = np.degrees(np.arctan2(b1, a1p)) % 360, np.degrees(np.arctan2(b2, a2p)) % 360
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    L_bar, cp_bar = (L1 + L2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_bar = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_bar = (h1p + h2p) / 2
    else:
        h_bar = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * np.cos(np.radians(h_bar - 30)) + 0.24 * np.cos(np.radians(2 * h_bar))
         + 0.32 * np.cos(np.radians(3 * h_bar + 6)) - 0.20 * np.cos(np.radians(4 * h_bar - 63)))
    s_l = 1 + 0.015 * (L_bar - 50) ** 2 / np.sqrt(20 + (L_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(60 * np.exp(-(((h_bar - 275) / 25) ** 2)))) * 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    dl, dc, dh_s = (L2 - L1) / s_l, (c2p - c1p) / s_c, dH / s_h
    return float(np.sqrt(dl**2 + dc**2 + dh_s**2 + r_t * dc * dh_s))


def blended_distances(table: np.ndarray, labels: list[int]) -> list[tuple[float, int, int]]:
    """CIEDE2000 of every pair of ``labels`` after blending at the overlay alpha over mid-grey, ascending."""
    lab = srgb_to_lab(np.round(OVERLAY_ALPHA * table[labels].astype(float) + (1 - OVERLAY_ALPHA) * 128.0))
    return sorted((ciede2000(lab[i], lab[j]), labels[i], labels[j]) for i, j in itertools.combinations(range(len(labels)), 2))


def test_ciede2000_matches_the_published_test_pairs():
    # Sharma, Wu, Dalal (2005), table 1, pairs 1, 2 and 17
    assert ciede2000((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)
    assert ciede2000((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485)) == pytest.approx(2.8615, abs=1e-4)
    assert ciede2000((50.0, 2.5, 0.0), (73.0, 25.0, -18.0)) == pytest.approx(27.1492, abs=1e-4)


MIN_BLENDED_DELTA_E = 12.0  # "clearly different at a glance"; the Occ3D palette as it is gets 7.3


@pytest.mark.parametrize("taxonomy", [OCC3D, OPENOCCUPANCY, OPENSCENE], ids=lambda t: t.name)
def test_overlay_classes_stay_apart_after_blending_over_grey(taxonomy):
    labels = list(taxonomy.eval_classes)
    closest = blended_distances(overlay_color_array(taxonomy), labels)[0]
    assert closest[0] >= MIN_BLENDED_DELTA_E, [taxonomy.class_names[i] for i in closest[1:]]


def test_overlay_colours_change_only_the_classes_that_collided():
    labels = list(OCC3D.eval_classes)
    before = blended_distances(OCC3D.color_array(), labels)
    assert before[0][0] < MIN_BLENDED_DELTA_E  # the taxonomy palette alone fails the bound
    truck, road = OCC3D.class_names.index("truck"), OCC3D.class_names.index("driveable_surface")
    pair = [d for d, i, j in before if {i, j} == {truck, road}][0]
    after = [d for d, i, j in blended_distances(overlay_color_array(OCC3D), labels) if {i, j} == {truck, road}][0]
    assert pair < 11 and after > 1.5 * pair  # truck purple vs road magenta, the pair users saw mixed up
    changed = np.flatnonzero((overlay_color_array(OCC3D) != OCC3D.color_array()).any(axis=1))
    assert sorted(OCC3D.class_names[i] for i in changed) == sorted(OVERLAY_COLORS)
    # the camera picture's legend shows the overlay colour, not the BEV's
    layer = layer_with(((2.2, 0.2, 1.0), (2.2, 0.2, 1.0), truck))
    strip = overlay_legends([layer], 300)[0]
    assert (strip == OVERLAY_COLORS["truck"]).all(axis=2).sum() == 12 * 12  # the swatch
    assert not (strip == OCC3D.colors[truck]).all(axis=2).any()


def test_fill_rim_uses_the_overlay_colour():
    truck = OCC3D.class_names.index("truck")
    point = (10.2, 0.2, 2.8)  # the top level: the unshaded colour
    out = overlay_occupancy(np.zeros((120, 160, 3), np.uint8), layer_with((point, point, truck)), K, EGO_FROM_CAM, alpha=1.0, mode="fill")
    row, col = centre_pixel(point)
    assert tuple(out[row, col]) == OVERLAY_COLORS["truck"]
    rim = np.round(np.asarray(OVERLAY_COLORS["truck"]) * RIM_SHADE)
    assert (out == rim).all(axis=2).sum() > 0


# -- text ----------------------------------------------------------------------------------------------
def ink_columns(text: str) -> np.ndarray:
    """(W,) bool: columns of the title strip that hold any text."""
    strip = titled(np.zeros((4, 600, 3), np.uint8), text)[:-4]
    return (strip.astype(int) - strip[0, -1].astype(int)).any(axis=2).any(axis=0)


def blank_runs(columns: np.ndarray) -> list[int]:
    """Widths of the runs of empty columns between the first and the last inked column."""
    inked = np.flatnonzero(columns)
    runs, width = [], 0
    for col in range(inked[0], inked[-1] + 1):
        if columns[col]:
            if width:
                runs.append(width)
            width = 0
        else:
            width += 1
    return runs


def test_titles_keep_the_space_between_words():
    spaced, joined = ink_columns("A B"), ink_columns("AB")
    span = lambda c: np.flatnonzero(c)[-1] - np.flatnonzero(c)[0] + 1  # noqa: E731
    assert span(spaced) - span(joined) >= 3  # a space is 3 px or more
    assert max(blank_runs(spaced)) >= 3
    for text in ("BEV of the real Occ3D sample", "ground truth vs prediction", "frame 0 (1 of 2)"):
        gaps = [w for w in blank_runs(ink_columns(text)) if w >= 3]
        assert len(gaps) == text.count(" "), (text, blank_runs(ink_columns(text)))


# -- b2s info: payload and fixed overhead ----------------------------------------------------------------
def write_file(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(frames)
    grid = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 2.2), (0.4, 0.4, 0.4), "tiny")
    scene = []
    for t in range(frames):
        labels = np.full(grid.shape, FREE, np.uint8)
        occupied = rng.random(grid.shape) < 0.1
        labels[occupied] = rng.integers(0, FREE, occupied.sum())
        scene.append(OccFrame(scene="s", token=f"t{t}", timestamp=t, global_from_ego=np.eye(4), cameras=[],
                              occupancy=occupied, semantics=labels, mask_lidar=rng.random(grid.shape) < 0.5))
    with OccWriter(path, grid=grid, taxonomy=OCC3D, source="synthetic") as writer:
        writer.write_scene("s", scene)
    return path


def frame_dataset_bytes(path: Path) -> int:
    """Stored bytes of the grids and labels of every frame, summed straight from HDF5."""
    with h5py.File(path) as h5:
        return sum(int(ds.id.get_storage_size()) for ds in h5["frames"].values()) + int(h5["ragged/labels"].id.get_storage_size())


def test_info_shows_payload_per_frame_apart_from_the_fixed_overhead(tmp_path):
    small, large = summarize(write_file(tmp_path / "two.h5", 2)), summarize(write_file(tmp_path / "eight.h5", 8))
    for s in (small, large):
        grids = frame_dataset_bytes(s.path)
        assert grids <= s.payload_bytes <= 1.1 * grids  # grids and labels, plus a few small per-frame tables
        assert s.bytes_per_frame == pytest.approx(s.payload_bytes / s.frames)
        assert s.overhead_bytes == s.bytes_on_disk - s.payload_bytes - s.image_bytes - s.point_bytes > 0
    assert 3.0 < large.payload_bytes / small.payload_bytes < 5.0  # payload grows with the frames
    assert large.overhead_bytes < 1.5 * small.overhead_bytes  # the overhead hardly does
    assert small.bytes_per_frame < 0.75 * small.bytes_on_disk / small.frames  # what the old figure over-counted
    result = CliRunner().invoke(app, ["info", str(small.path)])
    assert result.exit_code == 0, result.output
    lines = {line.split("  ")[1].strip(): line for line in result.output.splitlines() if line.startswith("  ") and "  " in line.strip()}
    assert _size(small.bytes_per_frame) in lines["bytes per frame"]
    assert _size(small.overhead_bytes) in lines["file overhead"]


# -- build-binary summary -------------------------------------------------------------------------------
def test_build_binary_summary_never_wraps_inside_a_number_at_80_columns(monkeypatch):
    for length in range(0, 90, 3):  # paths that move the wrap point across the whole line
        out = io.StringIO()
        monkeypatch.setattr(build_binary_cli, "_console", Console(file=out, width=80, highlight=False))
        summary = BuildBinarySummary(out=Path("/data/" + "x" * length + "/binary.h5"), scenes=850, resumed=12, frames=34149,
                                     skipped=[], seconds=12345.6)
        build_binary_cli._print_summary(summary)
        lines = out.getvalue().splitlines()
        assert all(len(line) <= 80 for line in lines)
        for phrase in ("850 scenes (12 resumed)", "34149 key frames built in 12345.6 s (0.36 s per key frame)"):
            assert any(phrase in line for line in lines), (length, lines)
