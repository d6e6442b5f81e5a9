"""Voxel grids (presets, point <-> voxel, centres, resampling) and taxonomies (mappings, colours)."""

from __future__ import annotations

import numpy as np
import pytest

from b2s_core.grids import GRID_PRESETS, GridError, VoxelGrid, crop_window, get_grid, resample_binary, resample_labels
from b2s_core.taxonomy import (
    BINARY,
    IGNORE_INDEX,
    OCC3D,
    OPENOCCUPANCY,
    OPENSCENE,
    TaxonomyError,
    get_taxonomy,
    map_labels,
)


def test_presets_have_the_documented_shapes():
    assert GRID_PRESETS["occ3d"].shape == (200, 200, 16)
    assert GRID_PRESETS["openoccupancy"].shape == (512, 512, 40)
    assert GRID_PRESETS["openscene"].shape == (200, 200, 16)
    assert GRID_PRESETS["openscene"].voxel_size == (0.5, 0.5, 0.5)


def test_point_voxel_round_trip_and_boundaries():
    grid = GRID_PRESETS["occ3d"]
    rng = np.random.default_rng(0)
    points = rng.uniform(grid.range_min, grid.range_max, size=(1000, 3))
    index = grid.index_of(points)
    assert grid.inside(index).all()
    centres = grid.center_of(index)
    assert np.all(np.abs(centres - points) <= 0.2 + 1e-9)
    np.testing.assert_array_equal(grid.index_of(centres), index)
    # corners: the minimum corner is voxel 0, the maximum lies outside (half-open ranges)
    assert grid.index_of(np.array([[-40.0, -40.0, -1.0]])).tolist() == [[0, 0, 0]]
    assert not grid.contains(np.array([[40.0, 0.0, 0.0]]))[0]
    assert grid.contains(np.array([[39.99, 0.0, 0.0]]))[0]
    # centres() agrees with center_of()
    all_centres = grid.centers()
    assert all_centres.shape == (200, 200, 16, 3)
    np.testing.assert_allclose(all_centres[3, 7, 5], grid.center_of(np.array([3, 7, 5])))
    # flat indices are C order over (X, Y, Z)
    assert grid.flat_of(np.array([[1, 2, 3]]))[0] == (1 * 200 + 2) * 16 + 3


def test_voxelize_marks_exactly_the_hit_voxels():
    grid = VoxelGrid((0, 0, 0), (4, 4, 4), (1, 1, 1))
    occupied = grid.voxelize(np.array([[0.5, 0.5, 0.5], [3.2, 1.1, 2.9], [9.0, 0, 0]]))
    assert occupied.sum() == 2 and occupied[0, 0, 0] and occupied[3, 1, 2]


def test_custom_grids_and_errors():
    grid = get_grid("-10,-10,-2,10,10,2:0.5")
    assert grid.shape == (40, 40, 8)
    assert get_grid("occ3d") is GRID_PRESETS["occ3d"]
    assert VoxelGrid.from_dict(grid.to_dict()) == grid
    with pytest.raises(GridError, match="unknown grid"):
        get_grid("nope")
    with pytest.raises(GridError, match="whole number"):
        VoxelGrid((0, 0, 0), (1, 1, 1), (0.3, 0.3, 0.3))
    with pytest.raises(GridError, match="shape"):
        VoxelGrid.from_dict({**grid.to_dict(), "shape": [1, 2, 3]})


def test_resampling_between_integer_ratio_grids():
    fine = GRID_PRESETS["occ3d"]
    coarse = fine.scaled((2, 2, 1))
    assert coarse.shape == (100, 100, 16)
    occupied = np.zeros(fine.shape, bool)
    occupied[10, 11, 3] = True
    down = resample_binary(occupied, fine, coarse)
    assert down.sum() == 1 and down[5, 5, 3]
    up = resample_binary(down, coarse, fine)
    assert up.sum() == 4 and up[10:12, 10:12, 3].all()
    labels = np.full(fine.shape, 17, np.uint8)
    labels[0, 0, 0] = 4
    labels[1, 0, 0] = 4
    labels[0, 1, 0] = 11  # block (0, 0, 0): two car, one driveable, one free -> car
    labels[2, 2, 0] = 11  # block (1, 1, 0): one driveable, three free -> driveable (thin structures survive)
    coarse_labels = resample_labels(labels, fine, coarse, free_index=17)
    assert coarse_labels[0, 0, 0] == 4 and coarse_labels[1, 1, 0] == 11 and coarse_labels[2, 2, 0] == 17
    with pytest.raises(GridError):
        resample_binary(occupied, fine, GRID_PRESETS["openscene"])


def test_crop_window_keeps_the_voxels_of_a_sub_box():
    occ3d = get_grid("occ3d")
    central = get_grid("-20,-20,-1,20,20,5.4:0.4")
    window = crop_window(occ3d, central)
    assert window == (slice(50, 150), slice(50, 150), slice(0, 16))
    labels = np.arange(np.prod(occ3d.shape)).reshape(occ3d.shape)
    assert labels[window].shape == central.shape
    # a point lands in the same voxel of both grids
    point = np.array([[3.1, -7.5, 0.3]])
    assert labels[window][tuple(central.index_of(point)[0])] == labels[tuple(occ3d.index_of(point)[0])]
    with pytest.raises(GridError, match="other voxel sizes"):
        crop_window(occ3d, get_grid("-20,-20,-1,20,20,5.4:0.8"))
    with pytest.raises(GridError, match="not on the voxel lattice"):
        crop_window(occ3d, get_grid("-20.2,-20,-1,19.8,20,5.4:0.4"))
    with pytest.raises(GridError, match="reaches outside"):
        crop_window(occ3d, get_grid("-44,-20,-1,-4,20,5.4:0.4"))


def test_taxonomies():
    assert OCC3D.num_labels == 18 and OCC3D.free_index == 17 and len(OCC3D.eval_classes) == 17
    assert OPENOCCUPANCY.num_labels == 17 and OPENOCCUPANCY.free_index == 0 and OPENOCCUPANCY.eval_classes == tuple(range(1, 17))
    assert OPENSCENE.free_index == 16 and len(OPENSCENE.eval_classes) == 8
    assert BINARY.class_names == ("free", "occupied")
    for taxonomy in (OCC3D, OPENOCCUPANCY, OPENSCENE):
        colours = [tuple(c) for i, c in enumerate(taxonomy.colors) if not taxonomy.class_names[i].startswith("unused")]
        assert len(set(colours)) == len(colours), f"{taxonomy.name} colours must be distinct"
    assert OCC3D.label_of_nuscenes("vehicle.car") == 4
    assert OCC3D.label_of_nuscenes("vehicle.bus.bendy") == 3
    assert OCC3D.label_of_nuscenes("human.pedestrian.adult") == 7
    assert OCC3D.label_of_nuscenes("human.pedestrian.stroller") == 0
    assert OCC3D.label_of_nuscenes("movable_object.trafficcone") == 8
    assert OPENSCENE.label_of_nuscenes("vehicle.truck") == 0
    assert OPENSCENE.label_of_nuplan("czone_sign") == 4
    assert OCC3D.label_of_nuplan("vehicle") == 4
    with pytest.raises(TaxonomyError):
        OCC3D.label_of_nuscenes("flying.saucer")
    with pytest.raises(TaxonomyError):
        get_taxonomy("nope")


def test_label_maps():
    labels = np.arange(18, dtype=np.uint8)
    to_openocc = map_labels(labels, "occ3d", "openoccupancy")
    assert to_openocc[0] == IGNORE_INDEX and to_openocc[17] == 0 and list(to_openocc[1:17]) == list(range(1, 17))
    to_openscene = map_labels(labels, "occ3d", "openscene")
    assert to_openscene[4] == 0 and to_openscene[7] == 7 and to_openscene[11] == 10 and to_openscene[17] == 16
    names = [OPENSCENE.class_names[v] for v in to_openscene[:17]]
    assert set(names) <= {OPENSCENE.class_names[c] for c in OPENSCENE.eval_classes}
    binary = map_labels(labels, "occ3d", "binary")
    assert binary.sum() == 17 and binary[17] == 0


def test_grids_of_one_shape_describe_their_difference():
    a = VoxelGrid((-40, -40, -1), (40, 40, 5.4), (0.4, 0.4, 0.4))
    b = VoxelGrid((-80, -80, -2), (80, 80, 10.8), (0.8, 0.8, 0.8))
    assert a.shape == b.shape and a.describe() != b.describe()  # a mismatch message must show how they differ
    assert a.describe() == "200x200x16 of 0.4 m over (-40, -40, -1) .. (40, 40, 5.4)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_grid_values_must_be_finite(bad):
    with pytest.raises(GridError, match="must be finite"):
        VoxelGrid((-40, -40, bad), (40, 40, 5.4), (0.4, 0.4, 0.4))
