"""BEVDet-style augmentation: image resize / crop / flip / rotation and BEV flips.

Both kinds are represented as matrices that are folded into the camera geometry the model
receives, so that a voxel always projects onto the pixel that shows it:

* image augmentation: a 3x3 pixel transform ``aug_from_img`` (resize, crop, horizontal flip,
  rotation about the crop's centre), applied to the decoded image with ONE affine resampling and
  folded into the intrinsics: ``img_from_cam = aug_from_img @ intrinsic``
  (homogeneous pixel ~ img_from_cam @ x_cam);
* BEV augmentation: a 4x4 reflection ``bev_from_ego`` about the grid's centre in x and / or y,
  applied to every (X, Y, Z) grid of the frame (labels, masks, soft labels) with ``np.flip`` and
  folded into the extrinsics: ``ego_from_cam = bev_from_ego @ ego_from_cam``.

Why the reflection is about the grid centre: voxel ``i`` of a flipped grid is voxel ``X - 1 - i``
of the original, whose centre is ``(range_min + range_max) - x``; for the symmetric Occ3D and
OpenOccupancy grids this is the plain ``x -> -x`` of BEVDet.

All random draws come from a ``numpy.random.Generator`` the caller seeds, so that a sample's
augmentation depends only on (seed, epoch, index): exact resume and worker-count independence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from b2s_core.grids import VoxelGrid


@dataclass(frozen=True)
class ImageAugConfig:
    """Ranges of the image augmentation; BEVDet's defaults for nuScenes 256 x 704 input."""

    resize_jitter: tuple[float, float] = (-0.06, 0.11)  # added to the base scale final_W / W
    crop_h_range: tuple[float, float] = (0.0, 0.0)  # fraction of the resized height cut from the top (bottom-aligned crop)
    flip: bool = True  # horizontal flip with probability 0.5
    rotation_deg: tuple[float, float] = (-5.4, 5.4)


@dataclass(frozen=True)
class BevAugConfig:
    flip_x_prob: float = 0.5
    flip_y_prob: float = 0.5


@dataclass(frozen=True)
class ImageAug:
    """One drawn image augmentation (all in pixels / degrees of the source image)."""

    scale: float  # resized size = source size * scale
    crop_xy: tuple[int, int]  # top-left corner of the crop in the resized image
    flip: bool
    rotation_deg: float  # counter-clockwise as seen on screen, about the crop centre


@dataclass(frozen=True)
class BevAug:
    flip_x: bool
    flip_y: bool


def draw_image_aug(
    rng: np.random.Generator | None,
    config: ImageAugConfig,
    source_hw: tuple[int, int],
    final_hw: tuple[int, int],
) -> ImageAug:
    """Draw one image augmentation; ``rng=None`` gives the deterministic test-time transform
    (scale to the final width, bottom-aligned crop centred horizontally, no flip, no rotation)."""
    H, W = source_hw
    fH, fW = final_hw
    base = max(fW / W, fH / H)  # the resized image must cover the crop
    if rng is None:
        scale = base
        new_w, new_h = int(round(W * scale)), int(round(H * scale))
        crop_y = max(0, new_h - fH)  # keep the bottom: the road and objects are there
        crop_x = max(0, (new_w - fW) // 2)
        return ImageAug(scale, (crop_x, crop_y), False, 0.0)
    scale = max(base, base + rng.uniform(*config.resize_jitter))
    new_w, new_h = int(round(W * scale)), int(round(H * scale))
    crop_y = int((1.0 - rng.uniform(*config.crop_h_range)) * new_h) - fH
    crop_y = min(max(0, crop_y), max(0, new_h - fH))
    crop_x = int(rng.uniform(0, max(0, new_w - fW)))
    flip = bool(config.flip and rng.uniform() < 0.5)
    rotation = float(rng.uniform(*config.rotation_deg))
    return ImageAug(float(scale), (crop_x, crop_y), flip, rotation)


def aug_from_img_matrix(aug: ImageAug, final_hw: tuple[int, int]) -> np.ndarray:
    """(3, 3) float64 pixel transform: source pixel (u, v, 1) -> augmented pixel.

    Composed right to left: resize, crop, flip, rotation about the crop centre.
    """
    fH, fW = final_hw
    resize = np.diag([aug.scale, aug.scale, 1.0])
    crop = np.array([[1.0, 0, -aug.crop_xy[0]], [0, 1.0, -aug.crop_xy[1]], [0, 0, 1.0]])
    flip = np.eye(3)
    if aug.flip:
        flip = np.array([[-1.0, 0, fW], [0, 1.0, 0], [0, 0, 1.0]])
    # Counter-clockwise on screen with v pointing down: (du, dv) -> (c du + s dv, -s du + c dv),
    # the same convention as PIL's Image.rotate.
    a = np.deg2rad(aug.rotation_deg)
    c, s = np.cos(a), np.sin(a)
    center = np.array([fW / 2.0, fH / 2.0])
    rot2 = np.array([[c, s], [-s, c]])
    rotate = np.eye(3)
    rotate[:2, :2] = rot2
    rotate[:2, 2] = center - rot2 @ center
    return rotate @ flip @ crop @ resize


def warp_image(image: Image.Image, aug_from_img: np.ndarray, final_hw: tuple[int, int]) -> Image.Image:
    """Resample ``image`` into the (fH, fW) augmented image with one bilinear affine warp.

    One warp instead of BEVDet's resize-then-rotate halves the resampling cost and the blur.
    """
    fH, fW = final_hw
    # PIL's AFFINE maps OUTPUT pixel -> INPUT pixel, i.e. the inverse transform. PIL samples at
    # integer coordinates of pixel corners; shifting by half a pixel on both sides keeps
    # pixel centres aligned with the continuous transform used for the intrinsics.
    half = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    unhalf = np.array([[1.0, 0, -0.5], [0, 1.0, -0.5], [0, 0, 1.0]])
    img_from_aug = half @ np.linalg.inv(aug_from_img) @ unhalf
    coeffs = tuple(float(v) for v in img_from_aug[:2].ravel())
    return image.transform((fW, fH), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def draw_bev_aug(rng: np.random.Generator | None, config: BevAugConfig) -> BevAug:
    if rng is None:
        return BevAug(False, False)
    return BevAug(bool(rng.uniform() < config.flip_x_prob), bool(rng.uniform() < config.flip_y_prob))


def bev_from_ego_matrix(aug: BevAug, grid: VoxelGrid) -> np.ndarray:
    """(4, 4) float64 reflection of the ego frame about the grid centre (x and / or y)."""
    bev_from_ego = np.eye(4)
    for axis, flipped in ((0, aug.flip_x), (1, aug.flip_y)):
        if flipped:
            bev_from_ego[axis, axis] = -1.0
            bev_from_ego[axis, 3] = grid.range_min[axis] + grid.range_max[axis]
    return bev_from_ego


def flip_grid(values: np.ndarray, aug: BevAug) -> np.ndarray:
    """Apply the BEV flips to an (X, Y, Z, ...) array; returns a contiguous copy."""
    axes = tuple(axis for axis, flipped in ((0, aug.flip_x), (1, aug.flip_y)) if flipped)
    if axes:
        values = np.flip(values, axis=axes)
    return np.ascontiguousarray(values)
