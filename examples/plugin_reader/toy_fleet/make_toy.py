"""Write a toy fleet dataset in the format ``toy_fleet.reader`` reads (seconds, a few MB).

    python -m toy_fleet.make_toy data/toy_fleet --drives 2 --frames 3

The world (global frame, metres): flat ground at z = 0, a wall along y = 7, a parked vehicle and a
walking pedestrian. The ego drives along +x at 5 m/s, one key frame every 0.5 s, with a LiDAR 2.5 m
up on a roof rack (turned 90 degrees, as on many cars) and two 64 x 48 cameras (front, left). LiDAR
points are surface samples of the world within 20 m, written in the LiDAR frame, plus a few returns
from the ego's own roof rack (inside ``ToyFleetReader.ego_body``, which reaches higher than the
built-in sources' bodies: build-binary drops them).

:func:`write_toy_dataset` returns the truth it wrote, for tests: per drive, per key frame, the
token, timestamp, ``global_from_ego`` and the points in the ego frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

KEY_PERIOD_US = 500_000  # one key frame every 0.5 s
SPEED = 5.0  # m/s along global +x
REACH = 20.0  # metres of world the LiDAR samples around itself
IMAGE_SIZE = (64, 48)  # width, height in pixels
EGO_FROM_LIDAR = np.array([[0.0, 1.0, 0.0, 1.0],  # LiDAR x -> ego -y, LiDAR y -> ego +x (yaw -90 degrees), 2.5 m up
                           [-1.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 1.0, 2.5],
                           [0.0, 0.0, 0.0, 1.0]])
INTRINSIC = [[40.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]]
# Camera axes are OpenCV's (x right, y down, z forward); the columns are those axes in the ego frame.
EGO_FROM_CAM = {
    "front": [[0.0, 0.0, 1.0, 1.5], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]],
    "left": [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.8], [0.0, -1.0, 0.0, 1.4], [0.0, 0.0, 0.0, 1.0]],
}


def _pose(x: float, yaw: float) -> np.ndarray:
    """(4, 4) global_from_ego of the ego at (x, 0, 0) heading ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[0, 3] = x
    return pose


def _objects(t: float) -> list[dict]:
    """The boxes at time ``t`` (seconds): a parked vehicle and a pedestrian walking along +x."""
    return [
        {"track": "parked", "category": "vehicle", "center": [15.0, 3.5, 0.8], "size": [4.2, 1.8, 1.6], "yaw": 0.1},
        {"track": "walker", "category": "pedestrian", "center": [10.0 + 1.2 * t, -4.0, 0.9], "size": [0.6, 0.6, 1.8], "yaw": 0.0},
    ]


def _box_surface(box: dict, rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) global points on the sides and top of a box."""
    length, width, height = box["size"]
    local = rng.uniform(-0.5, 0.5, size=(count, 3)) * [length, width, height]
    face = rng.integers(0, 3, size=count)  # push each point onto an x side, a y side or the top
    local[face == 0, 0] = np.sign(local[face == 0, 0]) * length / 2
    local[face == 1, 1] = np.sign(local[face == 1, 1]) * width / 2
    local[face == 2, 2] = height / 2
    c, s = np.cos(box["yaw"]), np.sin(box["yaw"])
    rotated = local @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
    return rotated + box["center"]


def _world_points(sensor: np.ndarray, boxes: list[dict], rng: np.random.Generator) -> np.ndarray:
    """(N, 3) global points on the world's surfaces within REACH of ``sensor`` (3,)."""
    gx, gy = np.meshgrid(np.arange(-REACH, REACH, 0.5), np.arange(-REACH, REACH, 0.5), indexing="ij")
    ground = np.stack([gx.ravel() + sensor[0], gy.ravel() + sensor[1], np.zeros(gx.size)], axis=1)
    wx, wz = np.meshgrid(np.arange(-REACH, REACH, 0.25), np.arange(0.0, 3.0, 0.25), indexing="ij")
    wall = np.stack([wx.ravel() + sensor[0], np.full(wx.size, 7.0), wz.ravel()], axis=1)
    points = np.concatenate([ground, wall, *(_box_surface(box, rng, 400) for box in boxes)])
    return points[np.linalg.norm(points[:, :2] - sensor[:2], axis=1) < REACH]


def _image(path: Path, shade: int) -> None:
    """A sky-over-ground gradient, tinted per frame: enough for a camera to have a real PNG."""
    width, height = IMAGE_SIZE
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, axis=1)  # (H, W)
    Image.fromarray(np.stack([rows, np.full_like(rows, shade), 255 - rows], axis=2)).save(path)  # (H, W, 3)


def write_toy_dataset(root: str | Path, *, drives: int = 2, frames: int = 3, seed: int = 0) -> dict:
    """Write ``drives`` drives of ``frames`` key frames under ``root``; returns the truth (see module docstring)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rig = {"lidar": {"ego_from_lidar": EGO_FROM_LIDAR.tolist()},
           "cameras": {name: {"intrinsic": INTRINSIC, "ego_from_cam": pose} for name, pose in EGO_FROM_CAM.items()}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "rig.json").write_text(json.dumps(rig, indent=1))
    truth: dict[str, list[dict]] = {}
    for d in range(drives):
        name = f"drive-{d:03d}"
        folder = root / "drives" / name
        folder.mkdir(parents=True, exist_ok=True)
        truth[name] = []
        for i in range(frames):
            t = i * KEY_PERIOD_US / 1e6
            global_from_ego = _pose(-5.0 + 10.0 * d + SPEED * t, 0.02 * i)
            boxes = _objects(t)
            global_from_lidar = global_from_ego @ EGO_FROM_LIDAR
            world = _world_points(global_from_lidar[:3, 3], boxes, rng)
            roof = rng.uniform([0.5, -0.5, 2.1], [2.5, 0.5, 2.3], size=(20, 3))  # ego frame, the roof rack
            points_ego = np.concatenate([(world - global_from_ego[:3, 3]) @ global_from_ego[:3, :3], roof])  # (N, 3)
            lidar_from_ego = np.linalg.inv(EGO_FROM_LIDAR)
            points_lidar = points_ego @ lidar_from_ego[:3, :3].T + lidar_from_ego[:3, 3]
            intensity = rng.uniform(0.0, 1.0, size=(len(points_lidar), 1))
            stem = f"{i:06d}"
            np.save(folder / f"{stem}.npy", np.concatenate([points_lidar, intensity], axis=1).astype(np.float32))  # (N, 4)
            images = {}
            for cam in EGO_FROM_CAM:
                images[cam] = f"{stem}_{cam}.png"
                _image(folder / images[cam], shade=40 * i % 256)
            timestamp = 1_700_000_000_000_000 + d * 60_000_000 + i * KEY_PERIOD_US
            record = {"timestamp": timestamp, "global_from_ego": global_from_ego.tolist(), "lidar": f"{stem}.npy",
                      "images": images, "boxes": boxes}
            (folder / f"{stem}.json").write_text(json.dumps(record, indent=1))
            truth[name].append({"token": f"{name}_{stem}", "timestamp": timestamp, "global_from_ego": global_from_ego,
                                "points_ego": points_ego, "boxes": boxes})
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a toy fleet dataset for the b2s plug-in reader example.")
    parser.add_argument("root", type=Path, help="folder to write (created)")
    parser.add_argument("--drives", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3, help="key frames per drive")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truth = write_toy_dataset(args.root, drives=args.drives, frames=args.frames, seed=args.seed)
    print(f"wrote {sum(len(f) for f in truth.values())} key frames in {len(truth)} drives under {args.root}")


if __name__ == "__main__":
    main()
