"""A synthetic surround-view camera rig (level cameras evenly spread in yaw) for tests, benchmarks
and demos that need plausible geometry without a dataset."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Columns are the OpenCV camera axes (x right, y down, z forward) expressed in the ego frame
# (x forward, y left, z up) for a camera looking along ego +x.
_EGO_FROM_OPENCV = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def surround_rig(batch: int, num_cameras: int, image_hw: tuple[int, int], *, height: float = 1.5,
                 focal_fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """-> img_from_cam (B, N, 3, 3) and ego_from_cam (B, N, 4, 4); camera n looks at yaw 2 pi n / N,
    focal length = focal_fraction * image width, principal point at the image centre."""
    H, W = image_hw
    f = focal_fraction * W
    img_from_cam = torch.tensor([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])
    ego_from_cam = torch.zeros(num_cameras, 4, 4)
    for n in range(num_cameras):
        yaw = 2.0 * math.pi * n / num_cameras
        c, s = math.cos(yaw), math.sin(yaw)
        yaw_rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        ego_from_cam[n, :3, :3] = yaw_rotation @ _EGO_FROM_OPENCV
        ego_from_cam[n, :3, 3] = torch.tensor([0.0, 0.0, height])
        ego_from_cam[n, 3, 3] = 1.0
    return img_from_cam.expand(batch, num_cameras, 3, 3).clone(), ego_from_cam.expand(batch, -1, -1, -1).clone()
