"""Renderers of b2s_core.viz on hand-made grids and the real samples: colours, geometry, fast == slow."""

from __future__ import annotations

import numpy as np
import pytest

from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.taxonomy import BINARY, OCC3D
from b2s_core.viz.bev import EGO_COLOR, bev_image, bev_image_reference, ego_pixel_box
from b2s_core.viz.cameras import (
    camera_mosaic,
    overlay_occupancy,
    project_centers,
    resized_intrinsics,
    splat_voxels,
    splat_voxels_reference,
)
from b2s_core.viz.render3d import ChaseView, look_at, voxel_mesh, voxel_mesh_reference
from b2s_core.viz.samples import nuscenes_keyframe as load_nuscenes_keyframe
from b2s_core.viz.samples import occ3d_sample_layer
from b2s_core.viz.voxels import BACKGROUND, SHADE_MIN, VisualizeError, VoxelLayer, surface_mask

SMALL = VoxelGrid((-4.0, -3.0, -1.0), (4.0, 3.0, 1.4), (0.5, 0.5, 0.4), "small")  # 16 x 12 x 6
CAR, ROAD, FREE = OCC3D.class_names.index("car"), OCC3D.class_names.index("driveable_surface"), OCC3D.free_index


def random_layer(seed: int = 0, fill: float = 0.25) -> VoxelLayer:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, FREE, size=SMALL.shape, dtype=np.uint8)
    labels[rng.random(SMALL.shape) > fill] = FREE
    return VoxelLayer.from_semantics(labels, OCC3D, SMALL, "random")


def expected_color(label: int, k: int, num_z: int) -> np.ndarray:
    """The documented shading rule, written out independently of the library."""
    factor = SHADE_MIN + (1 - SHADE_MIN) * k / (num_z - 1)
    return np.array([int(np.round(c * factor)) for c in OCC3D.colors[label]], dtype=np.uint8)


# -- BEV --------------------------------------------------------------------------------------------
def test_bev_shows_top_voxel_in_class_colour_with_x_up_and_y_left():
    labels = np.full(SMALL.shape, FREE, dtype=np.uint8)
    labels[15, 0, 1] = ROAD  # front-most row, right-most column (y min): a lone road voxel
    labels[3, 11, 0] = ROAD  # a column with road below a car
    labels[3, 11, 4] = CAR
    image = bev_image(VoxelLayer.from_semantics(labels, OCC3D, SMALL), scale=3, draw_ego=False)
    assert image.shape == (16 * 3, 12 * 3, 3)
    # +x is up: i = 15 is the top row; +y is left: j = 0 is the right-most column.
    assert np.array_equal(image[0:3, 33:36].reshape(-1, 3), np.tile(expected_color(ROAD, 1, 6), (9, 1)))
    # i = 3 -> rows (16 - 1 - 3) * 3 = 36..38; j = 11 -> column 0..2: the car, which is on top.
    assert np.array_equal(image[36, 0], expected_color(CAR, 4, 6))
    assert np.array_equal(image[20, 20], np.array(BACKGROUND, dtype=np.uint8))


def test_bev_fast_equals_column_by_column_reference():
    layer = random_layer(seed=3)
    assert np.array_equal(bev_image(layer, scale=1, draw_ego=False), bev_image_reference(layer))


def test_bev_of_real_occ3d_sample_has_the_class_colours_where_occupied(occ3d_sample):
    layer = occ3d_sample_layer(occ3d_sample)
    image = bev_image(layer, scale=2, draw_ego=False)
    occupied = layer.labels != FREE
    Z = occupied.shape[2]
    top = np.where(occupied, np.arange(Z), -1).max(axis=2)  # (X, Y), -1 where empty
    rng = np.random.default_rng(0)
    columns = np.argwhere(top >= 0)
    assert len(columns) > 10_000
    for i, j in columns[rng.choice(len(columns), 400, replace=False)]:
        label = layer.labels[i, j, top[i, j]]
        pixel = image[2 * (199 - i), 2 * (199 - j)]
        assert np.array_equal(pixel, expected_color(label, top[i, j], Z)), (i, j, label)
    empty = np.argwhere(top < 0)[0]
    assert np.array_equal(image[2 * (199 - empty[0]), 2 * (199 - empty[1])], np.array(BACKGROUND, np.uint8))


def test_bev_marks_the_ego_at_the_grid_origin():
    layer = VoxelLayer.from_semantics(np.full(GRID_PRESETS["occ3d"].shape, FREE, np.uint8), OCC3D, GRID_PRESETS["occ3d"])
    image = bev_image(layer, scale=2)
    row0, row1, col0, col1 = ego_pixel_box(layer, 2)
    assert (row0 + row1) / 2 == pytest.approx(200, abs=1) and (col0 + col1) / 2 == pytest.approx(200, abs=1)
    assert row1 - row0 > col1 - col0  # longer than wide, pointing up (forward)
    assert np.array_equal(image[row0 + 1, (col0 + col1) // 2], np.array(EGO_COLOR, np.uint8))
    assert (np.abs(image.astype(int) - BACKGROUND).sum(axis=2) > 0).sum() < 0.01 * 400 * 400


def test_binary_layer_uses_the_binary_taxonomy_colour():
    occupied = np.zeros(SMALL.shape, bool)
    occupied[5, 5, 5] = True
    image = bev_image(VoxelLayer.from_binary(occupied, SMALL), scale=1, draw_ego=False)
    assert np.array_equal(image[10, 6], np.asarray(BINARY.colors[1], np.uint8))  # top of the grid: unshaded


def test_layer_checks_its_shape_and_hides_voxels_outside_the_mask():
    with pytest.raises(VisualizeError, match="do not fit grid"):
        VoxelLayer(np.zeros((3, 3, 3), np.uint8), OCC3D, SMALL)
    labels = np.full(SMALL.shape, CAR, np.uint8)
    visible = np.zeros(SMALL.shape, bool)
    visible[0] = True
    assert VoxelLayer.from_semantics(labels, OCC3D, SMALL, visible=visible).occupied.sum() == 12 * 6


# -- 3D mesh ------------------------------------------------------------------------------------------
def _faces(mesh) -> np.ndarray:
    """Faces as sorted rows (4 sorted corners + colour) so that face order does not matter."""
    corners = np.round(mesh.vertices.reshape(-1, 4, 3), 6)
    corners = np.sort(corners.view([("x", float), ("y", float), ("z", float)]).reshape(-1, 4), axis=1)
    rows = np.concatenate([corners.view(float).reshape(-1, 12), np.round(mesh.colors[::4], 6)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_voxel_mesh_fast_equals_voxel_by_voxel_reference():
    layer = random_layer(seed=5, fill=0.4)
    fast, slow = voxel_mesh(layer, ego_box=False), voxel_mesh_reference(layer)
    assert fast.num_faces == slow.num_faces > 0
    assert np.array_equal(_faces(fast), _faces(slow))
    assert fast.triangles.max() == len(fast.vertices) - 1


def test_voxel_mesh_of_a_solid_block_has_only_its_surface():
    labels = np.full(SMALL.shape, FREE, np.uint8)
    labels[2:5, 2:5, 1:4] = CAR
    mesh = voxel_mesh(VoxelLayer.from_semantics(labels, OCC3D, SMALL), ego_box=False)
    assert mesh.num_faces == 6 * 9 and len(mesh.triangles) == 2 * 54
    top = mesh.vertices.reshape(-1, 4, 3)[:, :, 2].min(axis=1) == pytest.approx(-1.0 + 4 * 0.4)
    assert np.allclose(mesh.colors[::4][top], np.asarray(OCC3D.colors[CAR]) / 255.0)  # top faces unshaded


def test_chase_camera_sits_behind_and_above_and_looks_ahead():
    cam_from_ego = ChaseView().cam_from_ego(40.0)
    eye = -cam_from_ego[:3, :3].T @ cam_from_ego[:3, 3]
    assert eye[0] < 0 and eye[2] > 0 and abs(eye[1]) < 1e-9
    ahead = cam_from_ego @ np.array([20.0, 0.0, 0.0, 1.0])
    assert ahead[2] > 0 and abs(ahead[0]) < 1e-9  # in front of the camera, on its vertical centre line
    left = cam_from_ego @ np.array([10.0, 5.0, 0.0, 1.0])
    assert left[0] < 0  # ego +y (left) is image left
    up = cam_from_ego[:3, :3] @ np.array([0.0, 0.0, 1.0])
    assert up[1] < 0  # ego up is image up (OpenCV y points down)


# -- cameras -------------------------------------------------------------------------------------------
def test_splat_zbuffer_equals_painters_reference():
    layer = random_layer(seed=7, fill=0.3)
    ego_from_cam = np.linalg.inv(look_at(np.array([-9.0, 1.3, 3.1]), np.array([0.4, -0.2, 0.0]), np.array([0.0, 0.0, 1.0])))
    K = np.array([[120.0, 0, 80], [0, 120.0, 60], [0, 0, 1]])
    splats = splat_voxels(layer, K, ego_from_cam, 160, 120)
    canvas, covered = splat_voxels_reference(layer, K, ego_from_cam, 160, 120)
    assert covered.sum() > 2000
    fast = np.zeros_like(canvas)
    fast[splats.rows, splats.cols] = splats.colors
    fast_covered = np.zeros_like(covered)
    fast_covered[splats.rows, splats.cols] = True
    assert np.array_equal(fast_covered, covered)
    assert np.array_equal(fast, canvas)


def test_voxel_projects_where_the_real_calibration_says(nuscenes_keyframe):
    frame, _ = load_nuscenes_keyframe(nuscenes_keyframe)
    front = next(c for c in frame.cameras if c.name == "CAM_FRONT")
    grid = GRID_PRESETS["occ3d"]
    labels = np.full(grid.shape, FREE, np.uint8)
    index = grid.index_of(np.array([[15.0, 2.0, 1.0]]))[0]
    labels[tuple(index)] = CAR
    center = grid.center_of(index[None])
    # independent projection: p_cam = inv(ego_from_cam) p_ego, pixel = K p_cam / z
    p_cam = np.linalg.solve(front.ego_from_cam, np.append(center[0], 1.0))[:3]
    u, v = (front.intrinsic @ p_cam)[:2] / p_cam[2]
    assert 0 < u < 1600 and 0 < v < 900 and u < 816  # left of the image centre: ego +y is left
    uv, depth = project_centers(center, front.intrinsic, front.ego_from_cam)
    assert np.allclose(uv[0], [u, v]) and depth[0] == pytest.approx(p_cam[2])
    photo = np.zeros((900, 1600, 3), np.uint8)
    out = overlay_occupancy(photo, VoxelLayer.from_semantics(labels, OCC3D, grid), front.intrinsic, front.ego_from_cam, alpha=1.0)
    assert np.array_equal(out[int(round(v)), int(round(u))], expected_color(CAR, index[2], 16))
    covered = np.argwhere(out.any(axis=2))
    assert np.allclose(covered.mean(axis=0), [v, u], atol=1.0)  # a square centred on the projection
    half = 0.5 * 0.4 * front.intrinsic[0, 0] / p_cam[2]
    assert len(covered) == pytest.approx((2 * round(half) + 1) ** 2)


def test_resized_intrinsics_keep_points_on_the_same_image_content():
    K = np.array([[1000.0, 0, 800], [0, 1000.0, 450], [0, 0, 1]])
    p = np.array([1.0, -0.5, 10.0])
    u, v = (K @ p)[:2] / p[2]
    u2, v2 = (resized_intrinsics(K, 0.25) @ p)[:2] / p[2]
    assert (u2 + 0.5) == pytest.approx((u + 0.5) * 0.25) and (v2 + 0.5) == pytest.approx((v + 0.5) * 0.25)


def test_camera_mosaic_uses_the_nuscenes_layout():
    names = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    tiles = {n: np.full((10, 20, 3), 10 * k, np.uint8) for k, n in enumerate(names)}
    mosaic = camera_mosaic(tiles, gap=2)
    assert mosaic.shape == (22, 64, 3)
    assert mosaic[0, 0, 0] == 20 and mosaic[0, 22, 0] == 0 and mosaic[0, 44, 0] == 10  # FL, F, FR
    assert mosaic[12, 0, 0] == 40 and mosaic[12, 22, 0] == 30 and mosaic[12, 44, 0] == 50  # BL, B, BR


def test_surface_mask_drops_hidden_interior_voxels():
    occupied = np.zeros((5, 5, 5), bool)
    occupied[1:4, 1:4, 1:4] = True
    surface = surface_mask(occupied)
    assert surface.sum() == 26 and not surface[2, 2, 2]
