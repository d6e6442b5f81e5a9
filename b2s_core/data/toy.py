"""A tiny structured world written in the unified format, for tests, benchmarks and smoke runs.

Each frame is a flat road plus a few boxes of random classes on a small grid; each camera image
is painted by projecting the occupied voxels (far to near) in their class colours, so that a
model can actually learn binary and semantic occupancy from the pictures. It needs neither the
synthetic world nor a converter: just :class:`b2s_core.occfile.OccWriter`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from b2s_core.grids import VoxelGrid
from b2s_core.occfile import OccWriter
from b2s_core.records import Camera, OccFrame
from b2s_core.taxonomy import OCC3D, Taxonomy

TOY_GRID = VoxelGrid((-8.0, -8.0, -1.0), (8.0, 8.0, 3.0), (0.5, 0.5, 0.5), "toy")  # 32 x 32 x 8
TOY_BOX_CLASSES = (OCC3D.class_names.index("car"), OCC3D.class_names.index("pedestrian"),
                   OCC3D.class_names.index("vegetation"))
TOY_ROAD_CLASS = OCC3D.class_names.index("driveable_surface")
TOY_IMAGE_HW = (96, 264)  # (H, W) of each camera image


def toy_cameras(image_hw: tuple[int, int], yaws_deg: Sequence[float] = (0.0, 180.0),
                pitch_deg: float = 20.0) -> list[Camera]:
    """Pinhole cameras 1.5 m above the ego origin, looking along the given yaws and ``pitch_deg``
    down (so that the small grid fills the pictures), OpenCV axes."""
    H, W = image_hw
    focal = 0.5 * W  # ~90 degrees horizontal field of view
    intrinsic = np.array([[focal, 0, (W - 1) / 2], [0, focal, (H - 1) / 2], [0, 0, 1.0]])
    # Camera axes in the ego frame for yaw 0: x_cam = -y_ego, y_cam = -z_ego, z_cam = +x_ego.
    ego_from_cam0 = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]])
    p = np.deg2rad(pitch_deg)
    cam0_from_pitched = np.array([[1.0, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    ego_from_cam0 = ego_from_cam0 @ cam0_from_pitched
    cameras = []
    for k, yaw in enumerate(yaws_deg):
        a = np.deg2rad(yaw)
        yaw_rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
        ego_from_cam = np.eye(4)
        ego_from_cam[:3, :3] = yaw_rot @ ego_from_cam0
        ego_from_cam[:3, 3] = (0.0, 0.0, 1.5)
        cameras.append(Camera(name=f"CAM_{k}", intrinsic=intrinsic, ego_from_cam=ego_from_cam, width=W, height=H))
    return cameras


def toy_semantics(rng: np.random.Generator, grid: VoxelGrid, taxonomy: Taxonomy, boxes: int = 3,
                  box_size: tuple[int, int] = (2, 6)) -> np.ndarray:
    """(X, Y, Z) uint8: a road layer and ``boxes`` boxes of random classes, free elsewhere."""
    X, Y, Z = grid.shape
    sem = np.full((X, Y, Z), taxonomy.free_index, dtype=np.uint8)
    sem[:, :, 0] = TOY_ROAD_CLASS
    for _ in range(boxes):
        sx, sy, sz = rng.integers(*box_size), rng.integers(*box_size), rng.integers(2, Z)
        x0, y0 = rng.integers(0, X - sx), rng.integers(0, Y - sy)
        if abs(x0 + sx / 2 - X / 2) < 3 and abs(y0 + sy / 2 - Y / 2) < 3:
            x0 = (x0 + X // 3) % (X - sx)  # keep the ego vehicle's own cell free
        sem[x0:x0 + sx, y0:y0 + sy, 1:1 + sz] = rng.choice(TOY_BOX_CLASSES)
    return sem


def paint_image(semantics: np.ndarray, grid: VoxelGrid, camera: Camera, colors: np.ndarray,
                free_index: int) -> Image.Image:
    """Render the occupied voxels into one camera: discs at projected centres, far to near."""
    H, W = camera.height, camera.width
    image = Image.new("RGB", (W, H), (135, 170, 210))  # sky
    draw = ImageDraw.Draw(image)
    index = np.argwhere(semantics != free_index)  # (M, 3)
    centers = grid.center_of(index)  # (M, 3) ego metres
    cam_from_ego = np.linalg.inv(camera.ego_from_cam)
    x_cam = centers @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]  # (M, 3)
    front = x_cam[:, 2] > 0.3
    index, x_cam = index[front], x_cam[front]
    pix = x_cam @ np.asarray(camera.intrinsic).T  # (M, 3) homogeneous pixels
    uv = pix[:, :2] / pix[:, 2:3]
    radius = 0.7 * grid.voxel_size[0] * camera.intrinsic[0, 0] / x_cam[:, 2]  # about one voxel wide
    for m in np.argsort(-x_cam[:, 2]):  # far first: near voxels paint over them
        u, v, r = uv[m, 0], uv[m, 1], max(1.0, radius[m])
        if -r <= u < W + r and -r <= v < H + r:
            color = tuple(int(c) for c in colors[semantics[tuple(index[m])]])
            draw.ellipse((u - r, v - r, u + r, v + r), fill=color)
    return image


def toy_frames(num_frames: int, *, seed: int = 0, grid: VoxelGrid = TOY_GRID, taxonomy: Taxonomy = OCC3D,
               image_hw: tuple[int, int] = TOY_IMAGE_HW, with_semantics: bool = True, top2: bool = False,
               mask_camera: bool = False, scene: str = "toy-0", boxes: int = 3,
               box_size: tuple[int, int] = (2, 6)) -> list[OccFrame]:
    rng = np.random.default_rng(seed)
    colors = taxonomy.color_array()
    frames = []
    for i in range(num_frames):
        sem = toy_semantics(rng, grid, taxonomy, boxes, box_size)
        cameras = toy_cameras(image_hw)
        for camera in cameras:
            buffer = io.BytesIO()
            paint_image(sem, grid, camera, colors, taxonomy.free_index).save(buffer, format="JPEG", quality=92)
            camera.image_bytes = buffer.getvalue()
        occupancy = sem != taxonomy.free_index
        frame = OccFrame(scene=scene, token=f"{scene}-{i}", timestamp=i * 500_000, global_from_ego=np.eye(4),
                         cameras=cameras, occupancy=occupancy, semantics=sem if with_semantics else None)
        if top2:
            labels = sem[occupancy]  # (M,) C order
            second = np.where(labels == TOY_BOX_CLASSES[0], TOY_BOX_CLASSES[1], TOY_BOX_CLASSES[0])
            frame.top2_labels = np.stack([labels, second], axis=1).astype(np.uint8)
            frame.top2_logits = np.tile(np.array([[2.0, 0.5]], np.float16), (len(labels), 1))
            frame.semantics = sem if with_semantics else None
        if mask_camera:
            frame.mask_camera = rng.uniform(size=sem.shape) < 0.8
        frames.append(frame)
    return frames


def write_toy_dataset(path: str | Path, num_frames: int, *, scenes: int = 1, seed: int = 0, grid: VoxelGrid = TOY_GRID,
                      taxonomy: Taxonomy = OCC3D, image_hw: tuple[int, int] = TOY_IMAGE_HW,
                      **frame_options: Any) -> Path:
    """Write ``num_frames`` toy frames split over ``scenes`` scenes to one unified HDF5 file;
    ``frame_options``: the other keywords of :func:`toy_frames` (with_semantics, top2, boxes, ...)."""
    per_scene = int(np.ceil(num_frames / scenes))
    cameras = toy_cameras(image_hw)
    with OccWriter(path, grid=grid, taxonomy=taxonomy, source="toy", command="b2s_core.data.toy",
                   camera_names=[c.name for c in cameras]) as writer:
        done = 0
        for s in range(scenes):
            count = min(per_scene, num_frames - done)
            if count <= 0:
                break
            name = f"{Path(path).stem}-{s}"
            writer.write_scene(name, toy_frames(count, seed=seed * 1000 + s, scene=name, grid=grid, taxonomy=taxonomy,
                                                image_hw=image_hw, **frame_options))
            done += count
    return Path(path)
