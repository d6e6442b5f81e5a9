"""A tiny analytic world for build-binary tests: flat ground, static boxes, one moving car.

Independent of ``b2s_core.synth`` on purpose, so that these unit tests pin the builder alone: the
LiDAR is simulated by exact ray-box and ray-ground intersection, and the true occupancy of a key
frame is computed from the same boxes (see :func:`true_occupancy`).
"""

from __future__ import annotations

import numpy as np

from b2s_core.binary.aggregate import voxels_in_extents
from b2s_core.grids import VoxelGrid
from b2s_core.records import Box, Camera, LidarSweep, SensorFrame

GRID = VoxelGrid((-16.0, -16.0, -1.0), (16.0, 16.0, 5.4), (0.4, 0.4, 0.4), "test")
SENSOR_HEIGHT = 1.8
SWEEP_US = 50_000  # 20 Hz
SWEEPS_PER_KEY = 5


def yaw_pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    pose[:3, 3] = (x, y, z)
    return pose


# Static scenery: (centre x, y, z, length, width, height, yaw), global frame.
STATIC_BOXES = [
    (0.0, 9.0, 1.5, 30.0, 0.6, 3.0, 0.0),  # a long wall on the left
    (9.0, -7.0, 1.5, 1.2, 1.2, 3.0, 0.3),  # a pillar
]
CAR_SIZE = (4.0, 1.8, 1.5)  # length, width, height
CAR_Y = -3.07
CAR_SPEED = 6.0  # m/s along +x


def car_pose(t_s: float) -> np.ndarray:
    return yaw_pose(-8.13 + CAR_SPEED * t_s, CAR_Y, CAR_SIZE[2] / 2, 0.0)  # off the voxel lattice


def ego_pose(t_s: float) -> np.ndarray:
    """The ego drives along +x and turns a little; z = 0 like nuScenes poses."""
    return yaw_pose(4.0 * t_s, 0.0, 0.0, 0.05 * t_s)


def all_boxes(t_s: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(global_from_box (4, 4), size (3,))] of every solid at time t."""
    boxes = [(yaw_pose(x, y, z, yaw), np.array([length, w, h])) for x, y, z, length, w, h, yaw in STATIC_BOXES]
    boxes.append((car_pose(t_s), np.array(CAR_SIZE)))
    return boxes


def cast(origin: np.ndarray, directions: np.ndarray, t_s: float, max_range: float = 60.0) -> np.ndarray:
    """(R,) distance of the first hit along unit directions (R, 3) from origin (3,), inf for none."""
    best = np.full(len(directions), np.inf)
    down = directions[:, 2] < -1e-9
    best[down] = -origin[2] / directions[down, 2]
    for pose, size in all_boxes(t_s):
        inv = np.linalg.inv(pose)
        o = inv[:3, :3] @ origin + inv[:3, 3]
        d = directions @ inv[:3, :3].T
        half = size / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t_a, t_b = (-half - o) / d, (half - o) / d
        t_near = np.nanmax(np.minimum(t_a, t_b), axis=1)
        t_far = np.nanmin(np.maximum(t_a, t_b), axis=1)
        ok = (t_near <= t_far) & (t_near > 0)
        best = np.where(ok & (t_near < best), t_near, best)
    best[best > max_range] = np.inf
    return best


def lidar_directions(rings: int = 40, azimuths: int = 360) -> np.ndarray:
    elevation = np.radians(np.linspace(-25.0, 5.0, rings))
    azimuth = np.linspace(-np.pi, np.pi, azimuths, endpoint=False)
    e, a = np.meshgrid(elevation, azimuth, indexing="ij")
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)


def make_sweep(t_us: int, is_key: bool) -> LidarSweep:
    t_s = t_us / 1e6
    ego_from_sensor = yaw_pose(0.5, 0.0, SENSOR_HEIGHT, 0.0)
    global_from_ego = ego_pose(t_s)

    def load() -> np.ndarray:
        global_from_sensor = global_from_ego @ ego_from_sensor
        directions_sensor = lidar_directions()
        directions = directions_sensor @ global_from_sensor[:3, :3].T
        distance = cast(global_from_sensor[:3, 3], directions, t_s)
        keep = np.isfinite(distance)
        points = directions_sensor[keep] * distance[keep, None]  # sensor frame
        return np.hstack([points, np.ones((len(points), 1))]).astype(np.float32)

    return LidarSweep(ego_from_sensor, global_from_ego, t_us, is_key, load, path=f"sweep@{t_us}")


def front_camera(width: int = 96, height: int = 54, focal: float = 48.0) -> Camera:
    intrinsic = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    ego_from_cam = np.eye(4)
    ego_from_cam[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # OpenCV camera looking along ego +x
    ego_from_cam[:3, 3] = (1.5, 0.0, 1.6)
    return Camera("CAM_FRONT", intrinsic, ego_from_cam, width, height)


def cameras() -> list[Camera]:
    """Four cameras looking front, left, back and right."""
    result = []
    for k, name in enumerate(("CAM_FRONT", "CAM_LEFT", "CAM_BACK", "CAM_RIGHT")):
        cam = front_camera()
        cam.name = name
        cam.ego_from_cam = yaw_pose(0, 0, 0, k * np.pi / 2) @ cam.ego_from_cam
        result.append(cam)
    return result


def scene(keys: int = 4) -> list[SensorFrame]:
    """Key frames every SWEEPS_PER_KEY sweeps; the car's box is given at each key frame."""
    frames = []
    for k in range(keys):
        key_us = k * SWEEPS_PER_KEY * SWEEP_US
        sweeps = [make_sweep(key_us - j * SWEEP_US, False) for j in range(SWEEPS_PER_KEY - 1, 0, -1)] if k else []
        boxes = [Box(car_pose(key_us / 1e6), np.array(CAR_SIZE), "car-1", "vehicle.car", 0)]
        frames.append(
            SensorFrame(
                scene="toy",
                token=f"key{k}",
                timestamp=key_us,
                global_from_ego=ego_pose(key_us / 1e6),
                cameras=cameras(),
                lidar=make_sweep(key_us, True),
                sweeps=sweeps,
                boxes=boxes,
            )
        )
    return frames


def true_occupancy(t_s: float, grid: VoxelGrid = GRID, split: bool = False):
    """(X, Y, Z) bool true occupancy in the ego frame at time t (optionally (static, car)).

    A voxel is occupied when a box covers any of 5x5x5 points spread over it (out to 5 % of its
    size from its faces), or when it holds the ground plane z = 0.
    """
    ego_from_global = np.linalg.inv(ego_pose(t_s))
    boxes = [(ego_from_global @ pose, -size / 2, size / 2) for pose, size in all_boxes(t_s)]
    static = voxels_in_extents(grid, boxes[:-1], samples=5)
    car = voxels_in_extents(grid, boxes[-1:], samples=5)
    ground_layer = int(np.floor((0.0 - grid.range_min[2]) / grid.voxel_size[2]))
    static[:, :, ground_layer] = True  # the ego's yaw-only poses keep z = 0 level in the ego frame
    if split:
        return static, car
    return static | car
