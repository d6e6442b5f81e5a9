"""The training / validation dataset over unified HDF5 shards, and its collate function.

``OccTrainDataset`` wraps :class:`b2s_core.occfile.OccDataset` (which opens its h5 handles
lazily in each DataLoader worker) and turns one frame into model inputs and targets:

    images        (N, 3, H, W) float32, ImageNet-normalised, augmented
    img_from_cam  (N, 3, 3)    float32, intrinsics with the image augmentation folded in
    ego_from_cam  (N, 4, 4)    float32, extrinsics with the BEV augmentation folded in
    binary        (X, Y, Z)    uint8   0 free / 1 occupied / 255 ignore (B* for labelled frames)
    semantics     (X, Y, Z)    uint8   labels (255 ignore); only on labelled frames
    top2_labels   (X, Y, Z, 2) uint8 and top2_probs (X, Y, Z, 2) float32: Top2 pseudo-labels
    mask_camera   (X, Y, Z)    bool    when the file has it
    depth         (N, Hf, Wf)  float32 with ``DataConfig.depth_stride``: the nearest LiDAR return per
                                       cell of the lifted feature map, 0 where none (frames without points: all 0)
    index         ()           int64   frame index in the dataset

Keys (what a sampler yields) are ``(epoch, index)`` pairs: the augmentation of a sample is drawn
from ``default_rng([seed, epoch, index])`` so it does not depend on the worker that loads it,
which makes resumed runs exact. A plain ``int`` key means "no augmentation" (validation).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from b2s_core.data.augment import (
    BevAugConfig,
    ImageAugConfig,
    aug_from_img_matrix,
    bev_from_ego_matrix,
    draw_bev_aug,
    draw_image_aug,
    flip_grid,
    warp_image,
)
from b2s_core.data.targets import (
    binary_from_occupancy,
    binary_from_semantics,
    dense_top2,
    hard_as_top2,
    lidar_depth_target,
)
from b2s_core.errors import B2SError
from b2s_core.models.fpn import ImageEncoder
from b2s_core.occfile import FLAG_MASK_CAMERA, FLAG_POINTS, OccDataset
from b2s_core.records import OccFrame

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class DataError(B2SError):
    """A dataset that cannot be used for training (missing images, labels, mismatched shards)."""


@dataclass(frozen=True)
class DataConfig:
    image_hw: tuple[int, int]  # model input size (H, W), e.g. (256, 704) for LS
    augment: bool = True
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)
    bev_aug: BevAugConfig = field(default_factory=BevAugConfig)
    seed: int = 0
    need_semantics: bool = False  # every frame must carry semantics (or Top2 pseudo-labels)
    # Stride of the Lift-Splat feature map that the depth loss supervises; None: no depth targets.
    depth_stride: int | None = None


def open_occ_dataset(paths: Sequence[str | Path]) -> OccDataset:
    """Open one or more shards as one :class:`OccDataset`; DataError naming a missing file."""
    paths = [str(p) for p in paths]
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: data file not found")
    return OccDataset(paths if len(paths) > 1 else paths[0])


class OccTrainDataset(torch.utils.data.Dataset):
    """Frames of one or more shards as model inputs + targets (see the module docstring)."""

    def __init__(self, paths: Sequence[str | Path], config: DataConfig) -> None:
        self.paths = [str(p) for p in paths]
        self.config = config
        self.occ = open_occ_dataset(self.paths)
        self.grid = self.occ.grid
        self.taxonomy = self.occ.taxonomy
        self.free_index = int(self.taxonomy.free_index)

    def __len__(self) -> int:
        return len(self.occ)

    def files_without_points(self) -> list[str]:
        """The files none of whose frames carry LiDAR points (no depth supervision from them)."""
        out = []
        for path in self.paths:
            occ = open_occ_dataset([path])
            if occ.count_flag(FLAG_POINTS) == 0:
                out.append(path)
            occ.close()
        return out

    def require_camera_mask(self) -> None:
        """Raise DataError naming the first file whose frames do not all carry mask_camera (linear in files)."""
        for path in self.paths:
            occ = open_occ_dataset([path])
            missing = len(occ) - occ.count_flag(FLAG_MASK_CAMERA)
            occ.close()
            if missing:
                raise DataError(f"{path}: {missing} of {len(occ)} frames have no mask_camera, which camera-mask "
                                "training needs on every frame (train without --camera-mask, or use data from "
                                "b2s build-binary or Occ3D labels)")

    # -- one sample ---------------------------------------------------------------------------
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(key, (tuple, list)):
            epoch, index = int(key[0]), int(key[1])
            rng = np.random.default_rng([self.config.seed, epoch, index]) if self.config.augment else None
        else:
            index, rng = int(key), None
        fields = ("occupancy", "semantics", "mask_camera", "top2", "cameras")
        if self.config.depth_stride:
            fields += ("points",)
        frame = self.occ.read(index, fields=fields)
        images, img_from_cam, ego_from_cam = self._cameras(frame, index, rng)
        depth = self._depth_target(frame, img_from_cam, ego_from_cam) if self.config.depth_stride else None
        bev = draw_bev_aug(rng, self.config.bev_aug)
        bev_from_ego = bev_from_ego_matrix(bev, self.grid)
        ego_from_cam = bev_from_ego[None] @ ego_from_cam  # (N, 4, 4): the model sees the flipped world

        sample: dict[str, torch.Tensor] = {
            "images": torch.from_numpy(images),
            "img_from_cam": torch.from_numpy(img_from_cam.astype(np.float32)),
            "ego_from_cam": torch.from_numpy(ego_from_cam.astype(np.float32)),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if depth is not None:
            sample["depth"] = torch.from_numpy(depth)
        if frame.semantics is not None:
            binary = binary_from_semantics(frame.semantics, self.free_index)
            sample["semantics"] = torch.from_numpy(flip_grid(frame.semantics, bev))
        else:
            binary = binary_from_occupancy(frame.occupancy)
        sample["binary"] = torch.from_numpy(flip_grid(binary, bev))
        if frame.top2_labels is not None and frame.top2_logits is not None:
            labels, probs = dense_top2(frame.occupancy, frame.top2_labels, frame.top2_logits, self.free_index,
                                       frame.top2_support)
            sample["top2_labels"] = torch.from_numpy(flip_grid(labels, bev))
            sample["top2_probs"] = torch.from_numpy(flip_grid(probs, bev))
        if self.config.need_semantics and "semantics" not in sample and "top2_labels" not in sample:
            raise DataError(f"{self._where(index)}: frame has no semantic labels (needed for fine-tuning)")
        if frame.mask_camera is not None:
            sample["mask_camera"] = torch.from_numpy(flip_grid(frame.mask_camera, bev))
        return sample

    def _cameras(self, frame: OccFrame, index: int,
                 rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode and augment every camera image.

        Returns images (N, 3, H, W) float32, img_from_cam (N, 3, 3), ego_from_cam (N, 4, 4).
        """
        fH, fW = self.config.image_hw
        images, intrinsics, extrinsics = [], [], []
        if len(frame.cameras) != len(self.occ.camera_names) or not frame.cameras:
            raise DataError(
                f"{self._where(index)}: frame has {len(frame.cameras)} of the file's {len(self.occ.camera_names)} "
                "cameras; training needs every camera in every frame"
            )
        for camera in frame.cameras:
            data = self.occ.image(index, camera.name)
            image = Image.open(io.BytesIO(data))
            W, H = image.size
            aug = draw_image_aug(rng, self.config.image_aug, (H, W), (fH, fW))
            # JPEG decode at 1/2, 1/4 or 1/8 scale when the augmented image is that much smaller:
            # decoding is the data loader's main cost and this cuts it several-fold.
            image.draft("RGB", (max(1, int(W * aug.scale)), max(1, int(H * aug.scale))))
            image = image.convert("RGB")
            dW, dH = image.size
            img_from_decoded = np.diag([W / dW, H / dH, 1.0])  # decoded pixel -> source pixel
            aug_from_img = aug_from_img_matrix(aug, (fH, fW))
            warped = warp_image(image, aug_from_img @ img_from_decoded, (fH, fW))
            array = (np.asarray(warped, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # (H, W, 3)
            images.append(array.transpose(2, 0, 1))
            intrinsics.append(aug_from_img @ np.asarray(camera.intrinsic, dtype=np.float64))
            extrinsics.append(np.asarray(camera.ego_from_cam, dtype=np.float64))
        return np.stack(images), np.stack(intrinsics), np.stack(extrinsics)

    def _depth_target(self, frame: OccFrame, img_from_cam: np.ndarray, ego_from_cam: np.ndarray) -> np.ndarray:
        """(N, Hf, Wf) depth targets on the lifted feature map (before the BEV flip, which moves
        points and cameras alike); all 0 for a frame without LiDAR points."""
        H, W = self.config.image_hw
        Hp, Wp = ImageEncoder.padded_size((H, W))
        stride = self.config.depth_stride
        feature_hw = (Hp // stride, Wp // stride)
        if frame.points is None or not len(frame.points):
            return np.zeros((len(img_from_cam), *feature_hw), dtype=np.float32)
        return lidar_depth_target(frame.points, img_from_cam, ego_from_cam, (H, W), (Hp, Wp), feature_hw)

    def _where(self, index: int) -> str:
        return f"{', '.join(self.paths)} frame {index}"


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch; a batch mixing hard and Top2 targets gets Top2 form for all.

    Optional keys (semantics, mask_camera) are kept only when every sample has them.
    """
    if any("top2_labels" in s for s in samples):
        for s in samples:
            if "top2_labels" not in s and "semantics" in s:
                labels, probs = hard_as_top2(s["semantics"].numpy())
                s["top2_labels"], s["top2_probs"] = torch.from_numpy(labels), torch.from_numpy(probs)
    batch: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        if all(key in s for s in samples):
            batch[key] = torch.stack([s[key] for s in samples])
    return batch
