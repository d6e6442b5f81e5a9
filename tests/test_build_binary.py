"""build-binary core pipeline: the real nuScenes key frame, a small analytic world, the pieces."""

from __future__ import annotations

import _binary_world as world
import numpy as np
import pytest

from b2s_core.binary.aggregate import (
    EGO_BODY_NUSCENES,
    PointSet,
    assign_to_boxes,
    interpolate_boxes,
    voxels_in_boxes,
    voxels_in_extents,
)
from b2s_core.binary.camera_mask import _Scene, auto_stride, camera_mask, depth_image
from b2s_core.binary.densify import column_floor, ground_surface, ground_voxels
from b2s_core.binary.lidar_mask import GrazingGuard, guard_parameter
from b2s_core.binary.pipeline import BinaryBuildConfig, StageTimes, build_scene
from b2s_core.binary.preview import bev_panels
from b2s_core.binary.raycast import traverse
from b2s_core.errors import B2SError
from b2s_core.grids import get_grid
from b2s_core.records import Box, SensorFrame
from b2s_core.viz.samples import keyframe_sensor_frame


# -- the real key frame (single-frame input) ---------------------------------------------------
@pytest.fixture(scope="module")
def keyframe_build(nuscenes_keyframe):
    frame, points_ego = keyframe_sensor_frame(nuscenes_keyframe)
    grid = get_grid("occ3d")
    # exact rays: every point casts its own ray (the default keeps one per sweep and end voxel)
    built = next(build_scene(lambda: [frame], BinaryBuildConfig(grid=grid, ground_reach=0.0, dedupe_rays=False)))
    return built, points_ego, grid, frame


def test_keyframe_points_occupied_and_ego_body_empty(keyframe_build):
    built, points_ego, grid, frame = keyframe_build
    body = EGO_BODY_NUSCENES.contains(points_ego)
    assert 0 < body.sum() < 0.5 * len(points_ego)  # the roof bar's and body's own returns exist and are dropped
    cells = grid.index_of(points_ego[~body])
    inside = grid.inside(cells)
    assert inside.sum() > 20_000
    assert built.occupancy[tuple(cells[inside].T)].all()  # every kept point lies in an occupied voxel
    body_voxels = EGO_BODY_NUSCENES.contains(grid.centers().reshape(-1, 3)).reshape(grid.shape)
    assert body_voxels.sum() > 100
    assert not (built.occupancy & body_voxels).any()  # the ego body is free or unobserved
    # single frame, no ground completion: occupied where the kept points are, plus the solid part
    # of each annotated object its points span -- nothing outside the boxes is invented
    from_points = grid.voxelize(points_ego[~body])
    assert (built.occupancy >= from_points).all()
    extra = built.occupancy & ~from_points
    boxes = voxels_in_boxes(grid, frame.boxes, np.linalg.inv(frame.global_from_ego), 0.0, samples=3)
    assert extra.any() and not (extra & ~boxes).any()


def test_keyframe_rays_pass_only_through_empty_voxels(keyframe_build):
    built, points_ego, grid, _ = keyframe_build
    points = points_ego[~EGO_BODY_NUSCENES.contains(points_ego)]
    origins = np.broadcast_to(built.lidar_origin.astype(np.float64), points.shape)
    voxels = traverse(origins, points, grid, ordered=False)
    before_end = voxels.t < guard_parameter(origins, points, GrazingGuard(), grid)[voxels.ray]
    crossed = built.occupancy.ravel()[voxels.flat] & before_end
    blocked_rays = np.unique(voxels.ray[crossed]).size
    # 'Occupied wins': a voxel between a sensor and a hit is occupied only when another return
    # lies in it (see-through vegetation, grazing hits): ~6 % of this frame's rays.
    assert blocked_rays < 0.08 * len(points)
    # every voxel the rays observed free (outside the guard zone) and that holds no point is free
    holds_point = grid.voxelize(points).ravel()
    assert not (built.occupancy.ravel()[voxels.flat[before_end]] & ~holds_point[voxels.flat[before_end]]).any()
    # and it is marked observed in mask_lidar
    assert built.mask_lidar.ravel()[voxels.flat[before_end]].all()
    assert built.mask_lidar[tuple(grid.index_of(points)[grid.contains(points)].T)].all()


def test_keyframe_bev_picture(keyframe_build, tmp_path):
    built, _, grid, _ = keyframe_build
    picture = bev_panels(built.occupancy, built.mask_lidar, built.mask_camera, grid, EGO_BODY_NUSCENES)
    path = tmp_path / "keyframe_bev.png"
    picture.save(path)
    assert path.stat().st_size > 10_000
    assert picture.size == (2 * (3 * 200 + 8), 2 * 200)
    pixels = np.asarray(picture)
    assert (pixels[:, : 2 * 200].sum(axis=2) > 0).mean() > 0.05  # occupancy panel is not empty
    assert built.mask_camera.sum() > built.mask_lidar.sum() * 0.5


def test_keyframe_camera_mask_covers_the_views(keyframe_build):
    built, _, grid, _ = keyframe_build
    # six cameras all around: most free space near the car is seen, the ground voxels as well
    near = np.linalg.norm(grid.centers()[..., :2], axis=-1) < 15
    assert built.mask_camera[near].mean() > 0.5
    assert not built.mask_camera[built.occupancy].all()  # some occupied voxels hide behind others


# -- the analytic world --------------------------------------------------------------------------
def iou(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float((a & b & mask).sum() / max(((a | b) & mask).sum(), 1))


@pytest.fixture(scope="module")
def toy_builds():
    frames = world.scene(4)
    loads = {"count": 0}
    for frame in frames:
        for sweep in [frame.lidar, *frame.sweeps]:
            inner = sweep.load

            def counted(inner=inner):
                loads["count"] += 1
                return inner()

            sweep.load = counted
    whole = list(build_scene(lambda: frames, BinaryBuildConfig(grid=world.GRID, sweeps=0)))
    loads_whole = loads["count"]
    window = list(build_scene(lambda: frames, BinaryBuildConfig(grid=world.GRID, sweeps=10)))
    return frames, whole, window, loads_whole


def car_path(frames) -> list:
    """The car's box at every sweep time, for trail checks."""
    times = sorted({s.timestamp for f in frames for s in [f.lidar, *f.sweeps]})
    return [world.car_pose(t / 1e6) for t in times]


@pytest.mark.parametrize("mode", ["whole", "window"])
def test_toy_world_static_and_moving_car(toy_builds, mode):
    frames, whole, window, _ = toy_builds
    built = whole if mode == "whole" else window
    assert [f.token for f in built] == [f.token for f in frames]
    static_ious, car_ious = [], []
    for frame in built:
        t_s = frame.timestamp / 1e6
        static, car = world.true_occupancy(t_s, split=True)
        ego_from_global = np.linalg.inv(world.ego_pose(t_s))
        around_car = voxels_in_extents(world.GRID, [(ego_from_global @ world.car_pose(t_s), -np.array(world.CAR_SIZE) / 2 - 0.4,
                                                     np.array(world.CAR_SIZE) / 2 + 0.4)])
        static_ious.append(iou(frame.occupancy & ~around_car, static & ~around_car, frame.mask_camera))
        # the car's bottom voxels also hold the ground: score the car on the voxels it owns alone,
        # all of them (the object is filled), and check that none of its visible voxels is missed
        own = car & ~static
        built_car = frame.occupancy & around_car & ~static
        car_ious.append(iou(built_car, own, np.ones_like(own)))
        assert not (own & ~built_car & frame.mask_camera).any()
        # no trail: nothing occupied where the car was but is not now, apart from true structure
        path = voxels_in_extents(world.GRID, [(ego_from_global @ pose, -np.array(world.CAR_SIZE) / 2, np.array(world.CAR_SIZE) / 2)
                                              for pose in car_path(frames)])
        trail = frame.occupancy & path & ~around_car & ~static
        assert trail.sum() <= 0.01 * car.sum(), f"{frame.token}: {trail.sum()} trail voxels"
        # the masks: all occupied ground near the car is observed by both sensors
        assert frame.mask_lidar.sum() > 10_000 and frame.mask_camera.sum() > 30_000
    assert min(static_ious) > (0.9 if mode == "whole" else 0.8), static_ious
    assert min(car_ious) > 0.85, car_ious


def test_toy_world_streams_each_sweep_twice(toy_builds):
    frames, _, _, loads_whole = toy_builds
    sweeps = sum(1 + len(f.sweeps) for f in frames)
    assert loads_whole == 2 * sweeps  # two passes, every sweep loaded once per pass, none kept


def test_stage_times_are_recorded():
    frames = world.scene(2)
    times = StageTimes()
    list(build_scene(lambda: frames, BinaryBuildConfig(grid=world.GRID), times))
    assert {"load", "aggregate", "place", "mask_lidar", "densify", "mask_camera"} <= set(times.seconds)


# -- the pieces ----------------------------------------------------------------------------------
def test_interpolate_boxes_moves_and_turns_tracks():
    a = Box(world.yaw_pose(0, 0, 1, 0.0), np.array([4.0, 2.0, 1.5]), "t", "car", 0)
    b = Box(world.yaw_pose(10, 0, 1, np.pi / 2), np.array([4.0, 2.0, 1.5]), "t", "car", 0)
    only_before = Box(world.yaw_pose(5, 5, 1, 0.0), np.array([1.0, 1.0, 1.0]), "gone", "ped", 0)
    boxes = interpolate_boxes([a, only_before], 0, [b], 1_000_000, 250_000)
    moved = {box.track_id: box for box in boxes}
    assert np.allclose(moved["t"].center, [2.5, 0, 1])
    assert np.isclose(np.arctan2(moved["t"].global_from_box[1, 0], moved["t"].global_from_box[0, 0]), np.pi / 8)
    assert np.allclose(moved["gone"].center, [5, 5, 1])
    # the shorter arc: from +170 deg to -170 deg turns 20 deg, not 340
    c = Box(world.yaw_pose(0, 0, 0, np.radians(170)), np.ones(3), "u", "car", 0)
    d = Box(world.yaw_pose(0, 0, 0, np.radians(-170)), np.ones(3), "u", "car", 0)
    mid = interpolate_boxes([c], 0, [d], 10, 5)[0]
    assert np.isclose(abs(np.degrees(np.arctan2(mid.global_from_box[1, 0], mid.global_from_box[0, 0]))), 180.0)


def test_assign_to_boxes_uses_length_along_heading_and_margin():
    box = Box(world.yaw_pose(10, 0, 0.75, np.pi / 2), np.array([4.0, 1.0, 1.5]), "car", "car", 0)  # heading +y
    points = np.array([
        [10.0, 1.9, 0.5],   # inside: 1.9 < length / 2 along the heading (+y)
        [11.9, 0.0, 0.5],   # outside: 1.9 > width / 2 across it
        [10.0, 2.1, 0.5],   # outside the box, inside the 0.2 m margin
        [10.0, 0.0, -0.1],  # below the box: the margin does not reach down
        [30.0, 0.0, 0.5],
    ])
    static, objects = assign_to_boxes(points, [box], margin=0.2)
    assert list(static) == [False, True, False, True, True]
    (track, local), = objects
    assert track == "car" and np.allclose(local[0], [1.9, 0.0, -0.25])


def test_point_set_deduplicates_on_its_lattice():
    cells = PointSet(0.1)
    cells.add(np.array([[0.01, 0.01, 0.01], [0.02, 0.03, 0.04], [0.15, 0.0, 0.0]]))
    cells.add(np.array([[0.05, 0.05, 0.05], [-0.01, 0.0, 0.0]]))
    assert len(cells) == 3


def test_ground_completion_fills_between_scan_lines():
    grid = world.GRID
    # ground samples on rings every 3 m, a wall whose lowest points are 1 m up
    radius = np.linalg.norm(grid.centers()[..., 0, :2], axis=-1)
    rings = (np.abs(radius % 3.0) < 0.2) & (radius < 15)
    xy = grid.centers()[..., 0, :2][rings]
    ground_points = np.column_stack([xy, np.full(len(xy), 0.03)])
    wall = np.array([[x, 8.0, z] for x in np.arange(-5, 5, 0.1) for z in (1.0, 2.0)])
    floor = column_floor(np.vstack([ground_points, wall]), grid)
    height = ground_surface(floor, grid, reach=4.0)
    near = radius < 14
    assert np.isfinite(height[near]).all()
    assert np.allclose(height[near], 0.03)
    filled = ground_voxels(height, grid)
    layer = int((0.03 - grid.range_min[2]) // grid.voxel_size[2])
    assert filled[..., layer][near].all() and filled.sum() == np.isfinite(height).sum()
    assert not np.isfinite(height[radius > 22]).any()  # beyond the reach nothing is invented


# -- camera rays on small images (a coarse level once had no ray: IndexError in depth_image) ------
def tiny_cameras(frames: list[SensorFrame], focal: float = 16.0) -> list[SensorFrame]:
    """The toy world's four cameras at 32 x 18 pixels (the 96 x 54 field of view with focal 16)."""
    for frame in frames:
        for cam in frame.cameras:
            cam.intrinsic = np.array([[focal, 0.0, 16.0], [0.0, focal, 9.0], [0.0, 0.0, 1.0]])
            cam.width, cam.height = 32, 18
    return frames


def wall_and_ground(grid) -> np.ndarray:
    occupied = np.zeros(grid.shape, dtype=bool)
    occupied[:, :, 2] = True  # the ground layer, z in [-0.2, 0.2)
    occupied[60:62, 30:50, 2:10] = True  # a wall 8 m ahead of the front camera
    return occupied


@pytest.mark.parametrize("stride", [8.0, 30.0])
def test_camera_mask_of_a_tiny_image_with_a_coarse_stride(stride):
    grid = world.GRID
    camera = world.front_camera(32, 18, 16.0)
    occupied = wall_and_ground(grid)
    seen = camera_mask([camera], occupied, grid, stride)
    # rays this sparse are traced as they are at every level: the per-ray reference, exactly
    assert np.array_equal(seen, camera_mask([camera], occupied, grid, stride, levels=1))
    assert seen.any() and not seen[:40].any()  # the front camera (ego x 1.5 m) sees nothing behind it


def test_auto_stride_on_a_tiny_image():
    grid = world.GRID
    occupied = wall_and_ground(grid)
    camera = world.front_camera(32, 18, 16.0)
    fast, reference = camera_mask([camera], occupied, grid), camera_mask([camera], occupied, grid, levels=1)
    assert reference.sum() > 5000 and (fast != reference).sum() < 0.04 * reference.sum()
    assert fast[60, 35:45, 3:8].all() and not fast[62:, 35:45, 3:10].any()  # the wall's face, not its shadow
    # A telephoto whose one-voxel spacing asks for a stride wider than the image: capped to the
    # image's height, one row of two rays, both stopping on the wall 6.5 m ahead (it starts at x = 8).
    telephoto = world.front_camera(32, 18, 2000.0)
    assert auto_stride(telephoto, grid) == 18
    scene = _Scene(occupied.ravel(), None, None, 0.0)
    depth = depth_image(telephoto, scene, grid, auto_stride(telephoto, grid))
    assert depth.shape == (1, 2) and np.allclose(depth, 6.5, atol=1e-3)


def test_build_with_tiny_cameras_and_a_coarse_stride():
    """The pipeline path of the report: ``camera_stride=8`` on 18-pixel-high images."""
    (built,) = build_scene(lambda: tiny_cameras(world.scene(1)), BinaryBuildConfig(grid=world.GRID, camera_stride=8))
    (full,) = build_scene(lambda: world.scene(1), BinaryBuildConfig(grid=world.GRID))  # 96 x 54, automatic stride
    # four sparse rays per row still see most of what the full cameras see
    assert iou(built.mask_camera, full.mask_camera, np.ones_like(full.mask_camera)) > 0.6


def test_a_stride_that_leaves_no_ray_is_refused_in_one_line():
    camera = world.front_camera(32, 18, 16.0)
    occupied = wall_and_ground(world.GRID)
    camera_mask([camera], occupied, world.GRID, 35.9)  # one ray row at 17.95 px: still inside the image
    with pytest.raises(B2SError) as refused:
        camera_mask([camera], occupied, world.GRID, 36.0)
    message = str(refused.value)
    assert "\n" not in message and "CAM_FRONT (32x18 px)" in message
    assert "--camera-stride 36 leaves no camera ray" in message and "below 36 px" in message


def test_cli_builds_tiny_images_and_refuses_a_stride_wider_than_them(tmp_path):
    from typer.testing import CliRunner

    from b2s_cli.app import app
    from b2s_core.occfile import OccDataset
    from b2s_core.synth import write_dataset

    write_dataset(tmp_path / "synth", scenes=1, frames=1, formats=("nuscenes",), seed=0, image_size=(32, 18))

    def build(out: str, stride: str):
        return CliRunner().invoke(app, ["build-binary", "--source", "nuscenes", "--dataroot", str(tmp_path / "synth" / "nuscenes"),
                                        "--out", str(tmp_path / out), "--grid", "-16,-16,-1,16,16,5.4:0.4", "--ray-sweeps", "2",
                                        "--camera-stride", stride], env={"COLUMNS": "200"})

    built = build("ok.h5", "8")
    assert built.exit_code == 0, built.output
    assert OccDataset(tmp_path / "ok.h5")[0].mask_camera.any()
    refused = build("no.h5", "40")
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert len(errors) == 1 and "(32x18 px): --camera-stride 40 leaves no camera ray" in errors[0], refused.output
    assert not (tmp_path / "no.h5").exists()
