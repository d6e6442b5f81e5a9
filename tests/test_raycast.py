"""Voxel traversal (fast vs reference DDA), LiDAR visibility rules, camera depth rays."""

from __future__ import annotations

import numpy as np
import pytest

from b2s_core.binary.camera_mask import _Scene, camera_mask, ray_depths
from b2s_core.binary.lidar_mask import GrazingGuard, dedupe_rays, guard_parameter, lidar_visibility
from b2s_core.binary.raycast import traverse, traverse_reference
from b2s_core.grids import VoxelGrid, get_grid
from b2s_core.records import Camera

SMALL = VoxelGrid((-4.0, -4.0, -1.0), (4.0, 4.0, 3.0), (0.5, 0.5, 0.5), "small")


def ordered(voxels, ray: int) -> list[int]:
    mine = voxels.ray == ray
    return list(voxels.flat[mine][np.argsort(voxels.t[mine], kind="stable")])


def random_rays(rng, count: int, grid: VoxelGrid):
    low, high = np.asarray(grid.range_min) - 3, np.asarray(grid.range_max) + 3
    origins = rng.uniform(low, high, (count, 3))
    ends = rng.uniform(low, high, (count, 3))
    origins[: count // 4] = [0.9, 0.0, 1.84]  # a sensor exactly on a voxel plane (y = 0)
    ends[count // 4 : count // 2, 2] = origins[count // 4 : count // 2, 2]  # level rays
    ends[count // 2 : count // 2 + 20, :2] = origins[count // 2 : count // 2 + 20, :2]  # vertical rays
    return origins, ends


@pytest.mark.parametrize("grid_name", ["small", "occ3d"])
def test_fast_traversal_matches_reference_dda(grid_name):
    grid = SMALL if grid_name == "small" else get_grid("occ3d")
    origins, ends = random_rays(np.random.default_rng(3), 400, grid)
    fast = traverse(origins, ends, grid)
    reference = traverse_reference(origins, ends, grid)
    assert sum(len(r) for r in reference) > 1000  # the test exercises real traversals
    for ray, expected in enumerate(reference):
        assert ordered(fast, ray) == expected, f"ray {ray}: {origins[ray]} -> {ends[ray]}"


def test_traversal_edge_cases():
    grid = SMALL
    # a segment entirely outside the grid, one inside a single voxel, one of zero length
    origins = np.array([[10.0, 10.0, 10.0], [0.1, 0.1, 0.1], [0.3, 0.3, 0.3]])
    ends = np.array([[12.0, 10.0, 10.0], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3]])
    voxels = traverse(origins, ends, grid)
    assert ordered(voxels, 0) == []
    only = grid.flat_of(grid.index_of(origins[1:2]))[0]
    assert ordered(voxels, 1) == [only]
    assert ordered(voxels, 2) == [grid.flat_of(grid.index_of(origins[2:3]))[0]]
    # a ray along +x through a row: every voxel of the row between the ends, in order
    voxels = traverse(np.array([[-3.9, 0.25, 0.25]]), np.array([[3.9, 0.25, 0.25]]), grid)
    row = [grid.flat_of(np.array([[i, 8, 2]]))[0] for i in range(16)]
    assert ordered(voxels, 0) == row
    # unordered output is the same set
    loose = traverse(np.array([[-3.9, 0.25, 0.25]]), np.array([[3.9, 0.25, 0.25]]), grid, ordered=False)
    assert sorted(loose.flat) == sorted(row)


def test_lidar_visibility_hit_passed_and_guard():
    grid = SMALL
    origin = np.array([[0.25, 0.25, 1.75]])
    # a steep ray to the ground: everything but its last voxels is passed
    steep = np.array([[0.25, 2.25, 0.05]])
    view = lidar_visibility(origin, steep, grid)
    path = traverse_reference(origin, steep, grid)[0]
    end = grid.flat_of(grid.index_of(steep))[0]
    assert path[-1] == end and view.hit.ravel()[end] and view.hit.sum() == 1
    t_guard = guard_parameter(origin, steep, GrazingGuard(), grid)[0]
    assert 0 < t_guard < 1
    passed = set(np.flatnonzero(view.passed))
    assert end not in passed and passed < set(path)
    assert passed  # the voxels near the sensor are observed free
    # a shallow ray to the ground frees nothing within 1.25 voxel heights above the ground point
    graze_end = np.array([[0.25, 3.9, 0.05]])
    view = lidar_visibility(origin, graze_end, grid)
    low_layers = np.zeros(grid.shape, dtype=bool)
    low_layers[:, :, : int((0.05 + 1.25 * 0.5 + 1.0) // 0.5)] = True
    assert not (view.passed & low_layers).any()
    assert view.passed.any()  # but it does free the space high above the ground
    # no guard: the same ray frees voxels down to the ground layer
    loose = lidar_visibility(origin, graze_end, grid, guard=GrazingGuard(near=0.0, height=0.0))
    assert (loose.passed & low_layers).any()


def test_dedupe_rays_keeps_one_per_sweep_and_end_voxel():
    grid = SMALL
    origins = np.zeros((6, 3))
    ends = np.array([[1.1, 1.1, 1.1], [1.2, 1.2, 1.2], [1.1, 1.1, 1.1], [20.0, 0.1, 0.1], [30.0, 0.12, 0.1], [2.6, 0.1, 0.1]])
    group = np.array([0, 0, 1, 0, 0, 0])
    kept = dedupe_rays(origins, ends, grid, group)
    # rays 0 and 1 share an end voxel in sweep 0; ray 2 is another sweep; rays 3 and 4 leave the
    # grid through the same voxel; ray 5 ends elsewhere
    assert list(kept) == [0, 2, 3, 5]


def wall_camera(width=64, height=48, focal=32.0) -> Camera:
    ego_from_cam = np.eye(4)
    ego_from_cam[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # looks along +x
    ego_from_cam[:3, 3] = (0.0, 0.0, 1.0)
    return Camera("CAM_FRONT", np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]]), ego_from_cam, width, height)


def test_camera_mask_stops_at_the_first_occupied_voxel():
    grid = SMALL
    occupied = np.zeros(grid.shape, dtype=bool)
    occupied[12, :, :] = True  # a wall across the grid at x in [2, 2.5)
    seen = camera_mask([wall_camera()], occupied, grid)
    assert seen[12, 8, 4]  # the wall in front of the camera is seen
    assert not seen[14:].any()  # nothing behind the wall
    assert seen[9, 8, 4] and seen[10, 7, 3]  # free space between camera and wall
    assert not seen[:8].any()  # nothing behind the camera
    # without the wall the camera sees through to the end of the grid
    assert camera_mask([wall_camera()], np.zeros_like(occupied), grid)[15, 8, 4]


def test_ray_depths_treat_ground_voxels_as_a_thin_surface():
    grid = SMALL
    occupied = np.zeros(grid.shape, dtype=bool)
    occupied[:, :, 2] = True  # ground layer z in [0, 0.5)
    height = np.full(grid.shape[:2], 0.1)
    origin = np.array([-3.5, 0.0, 1.0])
    direction = np.array([[1.0, 0.0, -0.9 / 5.0]])
    direction /= np.linalg.norm(direction)
    flat_ground = _Scene(occupied.ravel(), None, None, 0.0)
    thin_ground = _Scene(occupied.ravel(), occupied.ravel(), height.ravel(), 0.0)
    blocky = ray_depths(origin, direction, flat_ground, grid, 0.0, 20.0)[0]
    thin = ray_depths(origin, direction, thin_ground, grid, 0.0, 20.0)[0]
    surface = 0.9 / direction[0, 2] * -1  # where the ray meets z = 0.1
    assert thin == pytest.approx(surface, abs=1e-6)
    assert blocky < thin - 1.0  # the voxel block stops the skimming ray metres too early


def test_coarse_to_fine_camera_mask_agrees_with_the_reference():
    rng = np.random.default_rng(5)
    grid = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 3.0), (0.25, 0.25, 0.25), "mid")
    occupied = np.zeros(grid.shape, dtype=bool)
    occupied[:, :, 4] = True  # ground layer
    for _ in range(40):  # random posts and blocks
        i, j = rng.integers(0, 64, 2)
        occupied[i : i + rng.integers(1, 4), j : j + rng.integers(1, 4), 4 : 4 + rng.integers(2, 12)] = True
    occupied[30:34, 30:34, :] = False  # clear space around the camera
    cameras = []
    for k in range(4):
        cam = wall_camera(96, 64, 48.0)
        yaw = k * np.pi / 2
        turn = np.eye(4)
        turn[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
        cam.ego_from_cam = turn @ cam.ego_from_cam
        cameras.append(cam)
    fast = camera_mask(cameras, occupied, grid)
    reference = camera_mask(cameras, occupied, grid, levels=1)
    assert reference.sum() > 20_000
    assert (fast != reference).sum() < 0.04 * reference.sum()  # 2.8 %: silhouettes of near objects
