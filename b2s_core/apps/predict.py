"""Run a model over a data file and write a predictions file (shared by evaluate, visualize and autolabel).

A predictions file is the unified HDF5 format with the data file's grid, taxonomy, scenes, tokens,
poses and camera calibration, and per frame:

    semantics    (X, Y, Z) uint8  arg-max of the semantic head
    occupancy    (X, Y, Z) bool   predicted non-free (the format stores labels of these voxels only)
    binary_pred  (X, Y, Z) bool   binary decoder output (probability > the model's threshold),
                                  upsampled from the decoder's coarser grid to the file grid

The model contract (``b2s_core.models``): ``model(images=(B, N, 3, H, W), img_from_cam=(B, N, 3, 3),
ego_from_cam=(B, N, 4, 4), given_occupancy=(B, Xb, Yb, Zb) bool | None)`` returns an object with
``binary_logits (B, Xb, Yb, Zb)`` (None for offboard models) and ``semantic_logits (B, K, X, Y, Z)``.

Test-time augmentation (TTA) uses the BEV flips of training: the world is mirrored in x and / or y
by folding the reflection into ``ego_from_cam`` (and flipping a given occupancy grid), and the
logits are flipped back before they are averaged.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from b2s_core.apps.launch import Ranks, my_scenes
from b2s_core.data.augment import BevAug, bev_from_ego_matrix
from b2s_core.data.dataset import DataConfig, OccTrainDataset, collate
from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid
from b2s_core.models.checkpoint import load_checkpoint
from b2s_core.models.config import ModelConfig
from b2s_core.models.occupied_set import given_occupancy, upsample_occupancy
from b2s_core.occfile import OccDataset, OccWriter, ResumableWriter, SceneInfo
from b2s_core.records import OccFrame
from b2s_core.taxonomy import Taxonomy

Progress = Callable[[int, int], None]  # (frames done, frames in all)
Flip = tuple[bool, bool]  # (flip x, flip y)
NO_FLIP: tuple[Flip, ...] = ((False, False),)
ALL_FLIPS: tuple[Flip, ...] = ((False, False), (True, False), (False, True), (True, True))


class PredictError(B2SError):
    """A model and a data file that do not fit together."""


@dataclass
class ModelLogits:
    """One batch of model outputs on the host's terms. Shapes as in the module docstring."""

    semantic: torch.Tensor | None  # (B, K, X, Y, Z) float32, mean over the TTA views
    binary: torch.Tensor | None  # (B, Xb, Yb, Zb) float32, mean over the TTA views


# -- running the model ----------------------------------------------------------------------------------
def _flip_dims(tensor: torch.Tensor, flip: Flip, x_dim: int) -> torch.Tensor:
    dims = [d for d, on in ((x_dim, flip[0]), (x_dim + 1, flip[1])) if on]
    return torch.flip(tensor, dims) if dims else tensor


def _bev_from_ego(flip: Flip, grid: VoxelGrid) -> torch.Tensor:
    return torch.from_numpy(bev_from_ego_matrix(BevAug(*flip), grid))


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    grid: VoxelGrid,
    *,
    given_occupancy: torch.Tensor | None = None,
    flips: Sequence[Flip] = NO_FLIP,
    device: str | torch.device = "cpu",
) -> ModelLogits:
    """The model's logits on the data grid ``grid``: one collated batch (keys images, img_from_cam,
    ego_from_cam) forwarded under each flip, flipped back and averaged.

    given_occupancy: (B, Xb, Yb, Zb) bool on the model's binary grid, or None (online models).
    """
    images = batch["images"].to(device)  # (B, N, 3, H, W)
    img_from_cam = batch["img_from_cam"].to(device)  # (B, N, 3, 3)
    ego_from_cam = batch["ego_from_cam"].to(device)  # (B, N, 4, 4)
    semantic_sum = binary_sum = None
    for flip in flips:
        bev_from_ego = _bev_from_ego(flip, grid).to(device=device, dtype=ego_from_cam.dtype)  # (4, 4)
        given = None if given_occupancy is None else _flip_dims(given_occupancy.to(device), flip, x_dim=1)
        out = model(images=images, img_from_cam=img_from_cam, ego_from_cam=bev_from_ego @ ego_from_cam,
                    given_occupancy=given)
        if out.semantic_logits is not None:
            semantic = _flip_dims(out.semantic_logits.float(), flip, x_dim=2)  # back to the unflipped world
            semantic_sum = semantic if semantic_sum is None else semantic_sum + semantic
        if out.binary_logits is not None:
            binary = _flip_dims(out.binary_logits.float(), flip, x_dim=1)
            binary_sum = binary if binary_sum is None else binary_sum + binary
    n = len(flips)
    return ModelLogits(
        semantic=None if semantic_sum is None else semantic_sum / n,
        binary=None if binary_sum is None else binary_sum / n,
    )


def binary_on_grid(binary_logits: torch.Tensor, shape: tuple[int, int, int], threshold: float) -> np.ndarray:
    """(B, Xb, Yb, Zb) logits -> (B, X, Y, Z) bool on the file grid (each coarse voxel repeated)."""
    occupied = binary_logits > math.log(threshold / (1.0 - threshold))  # probability > threshold
    B, Xb, Yb, Zb = occupied.shape
    X, Y, Z = shape
    if X % Xb or Y % Yb or Z % Zb:
        raise PredictError(f"binary decoder grid {(Xb, Yb, Zb)} does not divide the file grid {shape}")
    return upsample_occupancy(occupied, (X // Xb, Y // Yb, Z // Zb)).cpu().numpy()


def iterate_batches(dataset: OccTrainDataset, indices: Sequence[int], batch_size: int,
                    num_workers: int = 0) -> Iterator[tuple[list[int], dict]]:
    """(frame indices, collated batch) over ``indices`` in order, unaugmented."""
    loader = torch.utils.data.DataLoader(
        _Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate,
    )
    for batch in loader:
        yield [int(i) for i in batch["index"]], batch


class _Subset(torch.utils.data.Dataset):
    def __init__(self, dataset: OccTrainDataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.dataset[self.indices[i]]  # an int key: no augmentation


@dataclass(frozen=True)
class ModelRun:
    """A model over a data file, batch by batch: how predict and autolabel run it."""

    model: torch.nn.Module  # on ``device``, in eval mode
    dataset: OccTrainDataset
    model_config: ModelConfig
    device: str | torch.device = "cpu"
    batch_size: int = 1
    num_workers: int = 0
    tta: bool = False  # average the logits of the four BEV flips

    def batches(self, indices: Sequence[int]) -> Iterator[tuple[list[int], torch.Tensor | None, ModelLogits]]:
        """(frame indices, given occupancy, logits) per batch of ``indices``. The given occupancy is the
        offboard model's input, (B, Xb, Yb, Zb) bool: the GT binary grid pooled to the model's binary
        grid by the same call as in training; None for online models."""
        flips = ALL_FLIPS if self.tta else NO_FLIP
        config = self.model_config
        for frame_ids, batch in iterate_batches(self.dataset, indices, self.batch_size, self.num_workers):
            given = given_occupancy(batch["binary"], config.binary_shape) if config.offboard else None
            logits = predict_logits(self.model, batch, self.dataset.grid, given_occupancy=given, flips=flips,
                                    device=self.device)
            yield frame_ids, given, logits


@dataclass
class FrameCounter:
    """The frames a process has finished, told to ``progress`` after every batch."""

    total: int
    progress: Progress | None = None
    done: int = 0

    def add(self, frames: int) -> None:
        self.done += frames
        if self.progress is not None:
            self.progress(self.done, self.total)


def open_inputs(data_path: str | os.PathLike | Sequence[str | os.PathLike],
                model_config: ModelConfig) -> OccTrainDataset:
    """The model-input dataset over a data file, at the model's image size, without augmentation."""
    paths = [data_path] if isinstance(data_path, (str, os.PathLike)) else list(data_path)
    return OccTrainDataset(paths, DataConfig(image_hw=tuple(model_config.image_size), augment=False))


def check_grid(model_config: ModelConfig, occ: OccDataset) -> None:
    if not model_config.output_grid.same_geometry(occ.grid):
        raise PredictError(
            f"{occ.paths[0]}: grid {occ.grid.describe()} differs from the model's output grid "
            f"{model_config.output_grid.describe()}"
        )


def _check_taxonomy(model_config: ModelConfig, occ: OccDataset) -> None:
    taxonomy = occ.taxonomy
    if model_config.num_classes != taxonomy.num_labels or model_config.free_index != taxonomy.free_index:
        raise PredictError(
            f"{occ.paths[0]}: taxonomy '{taxonomy.name}' has {taxonomy.num_labels} labels "
            f"(free {taxonomy.free_index}), "
            f"the model predicts {model_config.num_classes} (free {model_config.free_index})"
        )


def copy_frame(frame: OccFrame) -> OccFrame:
    """The metadata of a data frame (scene, token, pose, cameras without image bytes), no grids."""
    return OccFrame(
        scene=frame.scene, token=frame.token, timestamp=frame.timestamp, global_from_ego=frame.global_from_ego,
        cameras=frame.cameras, occupancy=frame.occupancy, lidar_origin=frame.lidar_origin,
        ego_from_lidar=frame.ego_from_lidar, source_tokens=dict(frame.source_tokens),
    )


def output_attrs(occ: OccDataset, taxonomy: Taxonomy, command: str) -> dict:
    """The writer arguments of a file of model outputs over ``occ``: its grid, source, cameras, image root."""
    # Images stored by path keep their paths and the data file's image root.
    image_root = occ.attrs().get("image_root") or None
    return dict(grid=occ.grid, taxonomy=taxonomy, source=occ.source, command=command,
                camera_names=occ.camera_names, image_root=image_root)


# -- the predictions file -----------------------------------------------------------------------------
def predict_to_file(
    model: torch.nn.Module,
    dataset: OccTrainDataset,
    out_path: str | os.PathLike,
    *,
    model_config: ModelConfig,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    tta: bool = False,
    command: str = "",
    progress: Progress | None = None,
    ranks: Ranks | None = None,
) -> Path:
    """Write the predictions of ``model`` on every frame of ``dataset`` to ``out_path`` (atomically).

    dataset: over the data file (``dataset.occ``); model_config: the model's (output grid, free
    index, threshold). ranks: one worker of a data-parallel job (``b2s_core.apps.launch``): this
    process predicts its share of the scenes into ``<out>.parts/``, rank 0 merges the parts in the
    data's scene order, and every rank returns once ``out_path`` is complete.
    """
    occ = dataset.occ
    check_grid(model_config, occ)
    _check_taxonomy(model_config, occ)
    run = ModelRun(model.to(device).eval(), dataset, model_config, device=device, batch_size=batch_size,
                   num_workers=num_workers, tta=tta)
    scenes = my_scenes(occ.scenes, ranks)
    counter = FrameCounter(sum(len(scene) for scene in scenes), progress)
    attrs = output_attrs(occ, occ.taxonomy, command)
    if ranks is None:
        with OccWriter(out_path, **attrs) as writer:
            for scene in scenes:
                writer.write_scene(scene.name, _predicted_frames(run, scene, counter))
    else:
        _predict_parts(run, scenes, counter, out_path, attrs, ranks)
    return Path(out_path)


def _predicted_frames(run: ModelRun, scene: SceneInfo, counter: FrameCounter) -> Iterator[OccFrame]:
    """The frames of ``scene`` with the model's labels (and binary-decoder output, if it has one)."""
    occ = run.dataset.occ
    for frame_ids, _, logits in run.batches(range(scene.start, scene.stop)):
        if logits.semantic is None:
            raise PredictError("the model returned no semantic logits "
                               "(a binary-only pre-trained model cannot be evaluated semantically)")
        labels = logits.semantic.argmax(dim=1).to(torch.uint8).cpu().numpy()  # (B, X, Y, Z)
        threshold = run.model_config.occupancy_threshold
        binary = None if logits.binary is None else binary_on_grid(logits.binary, occ.grid.shape, threshold)
        for b, index in enumerate(frame_ids):
            frame = copy_frame(occ.read(index, fields=("points", "cameras")))
            frame.semantics = labels[b]
            frame.occupancy = labels[b] != occ.taxonomy.free_index
            frame.binary_pred = None if binary is None else binary[b]
            yield frame
        counter.add(len(frame_ids))


def _predict_parts(run: ModelRun, scenes: list[SceneInfo], counter: FrameCounter, out_path: str | os.PathLike,
                   attrs: dict, ranks: Ranks) -> None:
    """This rank's ``scenes`` into ``<out>.parts/``; rank 0 merges every rank's parts into ``out_path``."""
    # Predictions do not resume: parts an interrupted earlier run left could come from another model.
    parts_dir = Path(out_path).with_name(Path(out_path).name + ".parts")
    if ranks.is_main:
        shutil.rmtree(parts_dir, ignore_errors=True)
    ranks.barrier()
    parts = ResumableWriter(out_path, **attrs)
    for scene in scenes:
        parts.write_scene(scene.name, _predicted_frames(run, scene, counter))
    ranks.barrier()  # every rank's parts are written
    if ranks.is_main:
        parts.finalize(scene_order=[scene.name for scene in run.dataset.occ.scenes])
    ranks.barrier()  # the merged file is there for every rank to read


def predict_checkpoint_to_file(
    checkpoint: str | os.PathLike,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    num_workers: int = 0,
    tta: bool = False,
    progress: Progress | None = None,
    ranks: Ranks | None = None,
) -> Path:
    """Load a checkpoint (``b2s_core.models.checkpoint.load_checkpoint``) and write its predictions file
    (ranks: see :func:`predict_to_file`)."""
    loaded = load_checkpoint(checkpoint, map_location=device)
    if loaded.train_settings.get("stage") == "pretrain":
        # Pre-training trains the binary path only (Fig. 4): the semantic head is still its random
        # initialisation, and scoring it would print a meaningless mIoU near zero.
        raise PredictError(f"{checkpoint}: a pre-training checkpoint, whose semantic head was never trained; "
                           f"fine-tune it first (b2s finetune --init {checkpoint} ...)")
    dataset = open_inputs(data_path, loaded.model_config)
    command = f"b2s evaluate --checkpoint {checkpoint} --data {data_path}"
    return predict_to_file(loaded.model, dataset, out_path, model_config=loaded.model_config, batch_size=batch_size,
                           device=device, num_workers=num_workers, tta=tta, command=command, progress=progress,
                           ranks=ranks)
