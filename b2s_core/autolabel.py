"""``b2s autolabel``: an offboard model labels binary-only data; the labels are written as pseudo-labels.

The offboard model takes the ground-truth binary grid as input (free space is known), so only the
occupied voxels need a class. The pseudo-label file is the unified format with the data file's
grid, scenes, poses, cameras (and visibility masks), the model's taxonomy, and per frame:

* Top1: ``semantics`` = the best non-free class of each occupied voxel (the format stores one
  byte per occupied voxel; free elsewhere).
* Top2: as Top1, plus ``top2_labels`` / ``top2_logits`` (M, 2): the two best non-free classes of
  the M occupied voxels (C order) and their logits (float16), best first. Training turns them into
  soft targets (softmax over the two logits, ``b2s_core.data.targets.dense_top2``).

Free is excluded from the choice because the binary input already says these voxels are occupied
(and the format requires ``semantics != free`` exactly on the occupied voxels).
Optional test-time augmentation averages the logits of the four BEV flips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from b2s_core.errors import B2SError
from b2s_core.predict import ALL_FLIPS, NO_FLIP, Progress, check_grid, copy_frame, given_occupancy_of, iterate_batches, open_inputs, run_model
from b2s_core.records import OccFrame
from b2s_core.taxonomy import TAXONOMIES, Taxonomy, get_taxonomy

MODES = ("top1", "top2")


class AutolabelError(B2SError):
    """A checkpoint or data file that cannot produce pseudo-labels."""


@dataclass(frozen=True)
class AutolabelConfig:
    mode: str = "top2"  # 'top1' (best class) or 'top2' (two best classes and their logits)
    tta: bool = False  # average the logits of the four BEV flips
    batch_size: int = 1
    device: str = "cpu"
    num_workers: int = 0
    taxonomy: str | None = None  # label set of the model; None: inferred from the checkpoint

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AutolabelError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.batch_size < 1:
            raise AutolabelError(f"batch size must be >= 1, got {self.batch_size}")


@dataclass
class AutolabelReport:
    path: Path
    mode: str
    frames: int
    occupied_voxels: int  # over all frames
    bytes_per_frame: dict[str, float] = field(default_factory=dict)  # see pseudo_label_bytes


# -- the labelling itself (pure) -----------------------------------------------------------------------
def pseudo_labels(
    semantic_logits: torch.Tensor, occupancy: np.ndarray, free_index: int, mode: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One frame's pseudo-labels.

    semantic_logits: (K, X, Y, Z) float; occupancy: (X, Y, Z) bool, the given binary grid.
    Returns semantics (X, Y, Z) uint8 (best non-free class where occupied, free elsewhere) and, for
    'top2', top2_labels (M, 2) uint8 and top2_logits (M, 2) float16 of the M occupied voxels in C order.
    """
    K = semantic_logits.shape[0]
    flat = torch.from_numpy(np.flatnonzero(occupancy)).to(semantic_logits.device)  # (M,)
    logits = semantic_logits.reshape(K, -1)[:, flat].float()  # (K, M)
    logits[free_index] = -torch.inf  # occupied is given: free is not a candidate
    values, labels = torch.topk(logits, k=2, dim=0)  # (2, M) each, best first
    semantics = np.full(occupancy.shape, free_index, dtype=np.uint8)
    semantics.reshape(-1)[flat.cpu().numpy()] = labels[0].to(torch.uint8).cpu().numpy()
    if mode == "top1":
        return semantics, None, None
    top2_labels = labels.T.to(torch.uint8).cpu().numpy()  # (M, 2)
    top2_logits = values.T.to(torch.float16).cpu().numpy()  # (M, 2)
    return semantics, top2_labels, top2_logits


def model_taxonomy(model_config, train_config, override: str | None) -> Taxonomy:
    """The label set a model predicts: given, else that of its fine-tuning data, else the only
    known taxonomy with its number of labels and free index."""
    if override:
        taxonomy = get_taxonomy(override)
    else:
        taxonomy = None
        from b2s_core.occfile import OccDataset, OccFormatError

        for path in list(getattr(train_config, "semantic_data", []) or []):
            try:
                taxonomy = OccDataset(path).taxonomy
                break
            except (OccFormatError, OSError):
                continue
        if taxonomy is None:
            fits = [t for t in TAXONOMIES.values() if t.num_labels == model_config.num_classes and t.free_index == model_config.free_index]
            if len(fits) != 1:
                names = ", ".join(t.name for t in fits) or "none"
                raise AutolabelError(
                    f"cannot tell the model's taxonomy ({model_config.num_classes} labels, free {model_config.free_index}; "
                    f"candidates: {names}): pass --taxonomy"
                )
            taxonomy = fits[0]
    if taxonomy.num_labels != model_config.num_classes or taxonomy.free_index != model_config.free_index:
        raise AutolabelError(
            f"taxonomy '{taxonomy.name}' has {taxonomy.num_labels} labels (free {taxonomy.free_index}), "
            f"the model predicts {model_config.num_classes} (free {model_config.free_index})"
        )
    return taxonomy


# -- writing ------------------------------------------------------------------------------------------------
def autolabel_to_file(
    model: torch.nn.Module,
    dataset,
    out_path: str | os.PathLike,
    *,
    model_config,
    taxonomy: Taxonomy,
    config: AutolabelConfig = AutolabelConfig(),
    command: str = "",
    progress: Progress | None = None,
) -> AutolabelReport:
    """Label every frame of ``dataset`` (an OccTrainDataset over the binary data) and write ``out_path``.

    Long runs resume: each scene is written to its own part file under ``<out>.parts/`` as soon as
    it is labelled, a rerun of the same command skips the scenes already there, and the parts are
    merged into ``out_path`` (atomically) at the end.
    """
    from b2s_core.occfile import ResumableWriter

    if not model_config.offboard:
        raise AutolabelError("the checkpoint is an online model; autolabel needs an offboard model (trained with the GT binary as input)")
    occ = dataset.occ
    check_grid(model_config, occ, occ.paths[0])
    model = model.to(config.device).eval()
    flips = ALL_FLIPS if config.tta else NO_FLIP
    # Images travel with the labels so that the file trains on its own: embedded images are copied,
    # images stored by path keep their paths and the data file's image root.
    image_root = occ.attrs().get("image_root") or None
    total, done = len(occ), 0

    def scene_frames(indices: range) -> Iterator[OccFrame]:
        nonlocal done
        for frame_ids, batch in iterate_batches(dataset, indices, config.batch_size, config.num_workers):
            given = given_occupancy_of(batch, model_config.binary_shape)  # (B, Xb, Yb, Zb)
            logits = run_model(model, batch, occ.grid, given_occupancy=given, flips=flips, device=config.device)
            if logits.semantic is None:
                raise AutolabelError("the model returned no semantic logits")
            for b, index in enumerate(frame_ids):
                source = occ.read(index, fields=("mask_camera", "mask_lidar", "points", "cameras"), images="embedded")
                frame = copy_frame(source)
                frame.mask_camera, frame.mask_lidar = source.mask_camera, source.mask_lidar
                frame.occupancy = np.asarray(source.occupancy, dtype=bool)
                frame.semantics, frame.top2_labels, frame.top2_logits = pseudo_labels(
                    logits.semantic[b], frame.occupancy, taxonomy.free_index, config.mode
                )
                yield frame
            done += len(frame_ids)
            if progress is not None:
                progress(done, total)

    writer = ResumableWriter(out_path, grid=occ.grid, taxonomy=taxonomy, source=occ.source, command=command,
                             camera_names=occ.camera_names, image_root=image_root)
    for scene in occ.scenes:
        if writer.is_done(scene.name):
            _check_part_mode(writer.part_path(scene.name), config.mode)
            done += len(scene)
            continue
        writer.write_scene(scene.name, scene_frames(range(scene.start, scene.stop)))
    path = writer.finalize(scene_order=[scene.name for scene in occ.scenes])
    sizes = pseudo_label_bytes(path)
    return AutolabelReport(path=path, mode=config.mode, frames=total,
                           occupied_voxels=int(round(sizes["labels_raw"] * total)), bytes_per_frame=sizes)


def _check_part_mode(part: Path, mode: str) -> None:
    """A scene finished by an interrupted earlier run is reused only if it was labelled the same way."""
    from b2s_core.occfile import FLAG_TOP2, OccDataset

    dataset = OccDataset(part)
    with_top2 = dataset.count_flag(FLAG_TOP2)
    dataset.close()
    if with_top2 != (len(dataset) if mode == "top2" else 0):
        raise AutolabelError(
            f"{part.parent}: scenes left by an earlier {'top1' if mode == 'top2' else 'top2'} run; "
            f"delete that folder or label with the same mode"
        )


def pseudo_label_bytes(path: str | os.PathLike) -> dict[str, float]:
    """Storage per frame of a pseudo-label file, in bytes.

    ``labels`` / ``top2``: the compressed bytes of the per-voxel classes (Top1) and of the Top2
    classes + logits on disk; ``labels_raw`` / ``top2_raw``: the same before compression (1 and
    6 bytes per occupied voxel); ``file``: the whole file (grids, cameras, images) per frame.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as h5:
        frames = max(int(h5.attrs.get("num_frames", 0)), 1)
        ragged = h5["ragged"]

        def stored(*names: str) -> int:
            return sum(ragged[n].id.get_storage_size() for n in names if n in ragged)

        def raw(*names: str) -> int:
            return sum(ragged[n].size * ragged[n].dtype.itemsize for n in names if n in ragged)

        out = {
            "labels": stored("labels") / frames,
            "labels_raw": raw("labels") / frames,
            "top2": stored("top2_labels", "top2_logits") / frames,
            "top2_raw": raw("top2_labels", "top2_logits") / frames,
        }
    out["file"] = path.stat().st_size / frames
    return {k: round(v, 1) for k, v in out.items()}


def autolabel(
    checkpoint: str | os.PathLike,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    config: AutolabelConfig = AutolabelConfig(),
    progress: Progress | None = None,
) -> AutolabelReport:
    """Load an offboard checkpoint and write pseudo-labels for a (binary) data file."""
    from b2s_core.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, map_location=config.device)
    taxonomy = model_taxonomy(loaded.model_config, loaded.train_config, config.taxonomy)
    dataset = open_inputs(data_path, loaded.model_config)
    command = f"b2s autolabel --checkpoint {checkpoint} --data {data_path} --{config.mode} --out {out_path}" + (" --tta" if config.tta else "")
    return autolabel_to_file(loaded.model, dataset, out_path, model_config=loaded.model_config, taxonomy=taxonomy,
                             config=config, command=command, progress=progress)
