"""Tiny hand-made unified files and a stand-in model for the evaluate / predict / autolabel tests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from b2s_core.grids import VoxelGrid
from b2s_core.occfile import OccWriter
from b2s_core.records import Camera, OccFrame
from b2s_core.taxonomy import OCC3D, Taxonomy

SMALL = VoxelGrid((-4.0, -4.0, -1.0), (4.0, 4.0, 2.2), (0.4, 0.4, 0.4), "small")  # 20 x 20 x 8
CAMERA = "CAM_FRONT"


def png_bytes(seed: int, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def camera(seed: int) -> Camera:
    ego_from_cam = np.eye(4)
    ego_from_cam[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # camera looks along ego x
    ego_from_cam[:3, 3] = [1.0, 0.0, 1.5]
    intrinsic = np.array([[30.0, 0, 24], [0, 30.0, 16], [0, 0, 1]])
    return Camera(CAMERA, intrinsic, ego_from_cam, 48, 32, image_bytes=png_bytes(seed))


def random_semantics(rng, taxonomy: Taxonomy, shape) -> np.ndarray:
    labels = rng.choice(list(taxonomy.eval_classes), size=shape).astype(np.uint8)
    labels[rng.random(shape) < 0.7] = taxonomy.free_index
    return labels


def make_frames(rng, scene: str, count: int, taxonomy=OCC3D, grid=SMALL, semantics=True, masks=True):
    frames = []
    for t in range(count):
        pose = np.eye(4)
        pose[0, 3] = 2.0 * t  # driving along x
        labels = random_semantics(rng, taxonomy, grid.shape)
        frame = OccFrame(
            scene=scene, token=f"{scene}-{t}", timestamp=1_000_000 * t, global_from_ego=pose,
            cameras=[camera(t)], occupancy=labels != taxonomy.free_index,
            semantics=labels if semantics else None,
            lidar_origin=np.array([0.5, 0.0, 1.2], np.float32),
            # the reader returns lidar_origin together with the points only
            points=rng.uniform(-3, 3, (20, 3)).astype(np.float32),
        )
        if masks:
            frame.mask_camera = rng.random(grid.shape) < 0.6
            frame.mask_lidar = rng.random(grid.shape) < 0.5
        frames.append(frame)
    return frames


def write_file(path: Path, scenes: dict[str, list[OccFrame]], taxonomy=OCC3D, grid=SMALL) -> Path:
    with OccWriter(path, grid=grid, taxonomy=taxonomy, source="test", command="test", camera_names=[CAMERA]) as writer:
        for name, frames in scenes.items():
            writer.write_scene(name, frames)
    return path


def prediction_of(frame: OccFrame, rng, taxonomy=OCC3D, keep=0.7, with_binary=True) -> OccFrame:
    labels = np.where(rng.random(frame.semantics.shape) < keep, frame.semantics,
                      random_semantics(rng, taxonomy, frame.semantics.shape)).astype(np.uint8)
    return OccFrame(
        scene=frame.scene, token=frame.token, timestamp=frame.timestamp, global_from_ego=frame.global_from_ego,
        cameras=[], occupancy=labels != taxonomy.free_index, semantics=labels,
        binary_pred=(rng.random(labels.shape) < 0.3) if with_binary else None,
    )


# -- a stand-in model following the b2s model contract ----------------------------------------------
@dataclass(frozen=True)
class StandInConfig:
    """The ModelConfig attributes that predict / autolabel read."""

    output_grid: VoxelGrid = SMALL
    binary_stride: tuple[int, int, int] = (2, 2, 1)
    num_classes: int = 18
    free_index: int = 17
    occupancy_threshold: float = 0.5
    offboard: bool = False
    image_size: tuple[int, int] = (32, 48)

    @property
    def binary_shape(self) -> tuple[int, int, int]:
        return tuple(s // f for s, f in zip(self.output_grid.shape, self.binary_stride))

    @property
    def output_from_binary(self) -> tuple[int, int, int]:
        return self.binary_stride


@dataclass
class StandInOutput:
    binary_logits: torch.Tensor | None
    semantic_logits: torch.Tensor | None


class StandInModel(torch.nn.Module):
    """Logits that depend on the images (mean brightness), on the voxel and, offboard, on the given
    occupancy through a kernel symmetric in x and y (so that flipping the world and flipping the
    logits back changes nothing: a test of the TTA bookkeeping)."""

    def __init__(self, config: StandInConfig, seed: int = 0):
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)
        X, Y, Z = config.output_grid.shape
        pattern = torch.randn(config.num_classes, X, Y, Z, generator=g)
        # symmetric in x and y: the logits of voxel (i, j, k) equal those of the mirrored voxels
        pattern = (pattern + pattern.flip(1) + pattern.flip(2) + pattern.flip(1, 2)) / 4
        self.register_buffer("pattern", pattern)  # (K, X, Y, Z)
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, config.num_classes))  # (K,)

    def forward(self, *, images, img_from_cam, ego_from_cam, given_occupancy=None):
        B = images.shape[0]
        brightness = images.mean(dim=(1, 2, 3, 4))  # (B,)
        semantic = self.pattern[None] + brightness[:, None, None, None, None] * self.weight[None, :, None, None, None]
        binary = None
        if given_occupancy is not None:
            sx, sy, sz = self.config.binary_stride
            given = given_occupancy.float().repeat_interleave(sx, 1).repeat_interleave(sy, 2).repeat_interleave(sz, 3)
            semantic = semantic + 3.0 * given[:, None] * self.weight.flip(0)[None, :, None, None, None]
        else:
            Xb, Yb, Zb = self.config.binary_shape
            binary = self.pattern[0, ::self.config.binary_stride[0], ::self.config.binary_stride[1]][None].expand(B, Xb, Yb, Zb)
        return StandInOutput(binary_logits=binary, semantic_logits=semantic)
