"""``b2s evaluate``: score a predictions file (or a checkpoint run over a data file) against ground truth.

Load -> evaluate -> render, as in nuscenes-devkit's detection evaluation:

1. load: open the ground-truth data file and the predictions file (same unified HDF5 format:
   ``semantics`` = predicted labels, ``occupancy`` = predicted non-free, ``binary_pred`` = the
   binary decoder's output; or a folder of per-token ``<token>.npz`` files as SparseOcc / FlashOcc
   write them, :mod:`b2s_core.apps.export`), check they share grid and taxonomy, pair frames by token;
2. evaluate: stream the frames in batches through :class:`b2s_core.metrics.OccupancyEvaluator`
   (one confusion matrix over the whole split, binary-decoder IoU, RayIoU);
3. render: a rich per-class table and a JSON file.

From a checkpoint, :func:`evaluate_checkpoint` first writes the model's predictions with
:func:`b2s_core.apps.predict.predict_to_file` (kept, so that ``b2s visualize`` can show them), then
scores that file: one code path for both ways in.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.table import Table

from b2s_core.apps.export import PredictionFolder
from b2s_core.apps.launch import Ranks, inside_torchrun, join_ranks, launch, my_scenes
from b2s_core.apps.predict import predict_checkpoint_to_file
from b2s_core.errors import B2SError
from b2s_core.metrics import (
    EvaluationResult,
    OccupancyEvaluator,
    Protocol,
    get_protocol,
    lidar_ray_directions,
    protocol_for_taxonomy,
    ray_origins,
)
from b2s_core.metrics.protocols import MASKS
from b2s_core.occfile import FLAG_BINARY_PRED, FLAG_MASK_CAMERA, FLAG_MASK_LIDAR, OccDataset
from b2s_core.output_paths import Output, atomic_path, check_apart
from b2s_core.records import OccFrame

# Where rays start when a file carries no LiDAR origin: the nuScenes LIDAR_TOP position in the
# ego frame (the default SparseOcc's RayIoU code notes for nuScenes).
DEFAULT_LIDAR_ORIGIN = (0.986, 0.0, 1.84)

Progress = Callable[[int, int], None]  # (frames done, frames in all)
Predictions = OccDataset | PredictionFolder  # a unified predictions file, or other tools' per-token files


class EvaluateError(B2SError):
    """Files that cannot be scored against each other."""


@dataclass(frozen=True)
class EvaluateConfig:
    protocol: str | None = None  # 'occ3d' | 'openoccupancy' | 'openscene'; None: the data file's taxonomy
    mask: str | None = None  # 'camera' | 'lidar' | 'none'; None: the protocol's (if the data have it)
    rayiou: bool = True
    batch_size: int = 8  # frames per confusion-matrix update
    ray_azimuth_step: float = 1.0  # degrees between RayIoU rays (1 = SparseOcc's definition)
    default_lidar_origin: tuple[float, float, float] = DEFAULT_LIDAR_ORIGIN
    device: str | None = None  # torch device for RayIoU ray marching (None: CPU)

    def __post_init__(self) -> None:
        if self.mask is not None and self.mask not in MASKS:
            raise EvaluateError(f"mask must be one of {', '.join(MASKS)}, got '{self.mask}'")
        if self.batch_size < 1:
            raise EvaluateError(f"batch size must be >= 1, got {self.batch_size}")


# -- 1. load ---------------------------------------------------------------------------------------
def _open(path: Path, what: str) -> OccDataset:
    if not path.is_file():
        raise EvaluateError(f"{path}: {what} file not found")
    return OccDataset(path)


def _open_predictions(path: Path, data: OccDataset) -> Predictions:
    """A unified predictions file, or a folder of other tools' per-token ``<token>.npz`` files read on
    the data file's grid and taxonomy (:class:`b2s_core.apps.export.PredictionFolder`, docs/evaluation.md)."""
    if path.is_dir():
        return PredictionFolder(path, data)
    return _open(path, "predictions")


@contextlib.contextmanager
def _opened(data_path: Path, predictions_path: Path) -> Iterator[tuple[OccDataset, Predictions]]:
    """The data file and the predictions, both closed on the way out."""
    with contextlib.ExitStack() as stack:
        data = _open(data_path, "data")
        stack.callback(data.close)
        predictions = _open_predictions(predictions_path, data)
        stack.callback(predictions.close)
        yield data, predictions


def pair_frames(data: OccDataset, predictions: Predictions, data_path: Path, pred_path: Path,
                scenes: Collection[str] | None = None) -> list[tuple[int, int]]:
    """(data index, prediction index) for every data frame (of ``scenes`` only, when given), paired by (scene, token).

    Every frame of the data file must have a prediction: a partial predictions file would make
    the scores of the missing frames silently vanish.
    """
    if not data.grid.same_geometry(predictions.grid):
        raise EvaluateError(f"{pred_path}: grid {predictions.grid.describe()} differs from the data file's "
                            f"{data.grid.describe()} ({data_path})")
    if data.taxonomy.name != predictions.taxonomy.name:
        raise EvaluateError(f"{pred_path}: taxonomy '{predictions.taxonomy.name}' differs from the data file's "
                            f"'{data.taxonomy.name}'")
    pred_keys = {key: j for j, key in enumerate(frame_keys(predictions))}
    pairs, missing = [], []
    for i, key in enumerate(frame_keys(data)):
        if scenes is not None and key[0] not in scenes:
            continue
        j = pred_keys.get(key)
        if j is None:
            missing.append(key[1])
        else:
            pairs.append((i, j))
    if missing:
        raise EvaluateError(
            f"{pred_path}: no prediction for {len(missing)} of {len(missing) + len(pairs)} frames of {data_path} "
            f"(first: token '{missing[0]}')"
        )
    return pairs


def frame_keys(dataset: OccDataset | PredictionFolder) -> list[tuple[str, str]]:
    """(scene, token) of every frame, in dataset order, without decoding any grid."""
    tokens = dataset.tokens()
    return [(dataset.scene_of(i), token) for i, token in enumerate(tokens)]


def choose_protocol(config: EvaluateConfig, data: OccDataset) -> Protocol:
    """The protocol asked for, or the data taxonomy's; its default mask falls back to 'none' when
    the data carry no such mask (e.g. binary-built data), while an explicitly asked mask is required."""
    if config.protocol:
        protocol = get_protocol(config.protocol, config.mask)
    else:
        protocol = protocol_for_taxonomy(data.taxonomy, config.mask)
    if protocol.taxonomy.name != data.taxonomy.name:
        raise EvaluateError(f"protocol '{protocol.name}' scores '{protocol.taxonomy.name}' labels, "
                            f"the data are '{data.taxonomy.name}'")
    flag = {"camera": FLAG_MASK_CAMERA, "lidar": FLAG_MASK_LIDAR}.get(protocol.mask)
    if flag is not None and data.count_flag(flag) < len(data):
        if config.mask is None:
            return protocol.with_mask("none")
        raise EvaluateError(f"{data.paths[0]}: --mask {protocol.mask} asked, but {len(data) - data.count_flag(flag)} "
                            f"frames have no mask_{protocol.mask}")
    return protocol


class _SceneOrigins:
    """RayIoU ray origins of each frame, from the poses and LiDAR origins of its whole scene (cached per scene)."""

    def __init__(self, data: OccDataset, config: EvaluateConfig) -> None:
        self.data = data
        self.default = np.asarray(config.default_lidar_origin, dtype=np.float64)
        self.cache: dict[str, tuple[range, np.ndarray, np.ndarray]] = {}

    def __call__(self, index: int) -> np.ndarray:
        scene = self.data.scene_of(index)
        if scene not in self.cache:
            indices = self.data.scene_indices(scene)
            poses, lidar = [], []
            for i in indices:
                frame = self.data.read(i, fields=("points",))  # the reader returns lidar_origin with the points
                poses.append(frame.global_from_ego)
                origin = frame.lidar_origin
                known = origin is not None and np.any(np.asarray(origin) != 0)  # the writer stores zeros for "unknown"
                lidar.append(np.asarray(origin, dtype=np.float64) if known else self.default)
            # one scene at a time: frames come in order
            self.cache = {scene: (indices, np.stack(poses), np.stack(lidar))}
        indices, poses, lidar = self.cache[scene]
        return ray_origins(poses, lidar, index - indices.start, self.data.grid)


@dataclass(frozen=True)
class _Plan:
    """What one process scores: its frame pairs, the protocol, and what each pair reads."""

    data_path: Path
    predictions_path: Path
    pairs: list[tuple[int, int]]  # (data index, prediction index), data order
    protocol: Protocol
    with_binary: bool  # every paired prediction has the binary decoder's output: its IoU is scored

    @property
    def mask_field(self) -> str | None:
        """The frame field of the protocol's mask, None when every voxel counts."""
        return {"camera": "mask_camera", "lidar": "mask_lidar"}.get(self.protocol.mask)


def _plan(data: OccDataset, predictions: Predictions, data_path: Path, predictions_path: Path, config: EvaluateConfig,
          ranks: Ranks | None) -> _Plan:
    mine = None if ranks is None else {scene.name for scene in my_scenes(data.scenes, ranks)}
    pairs = pair_frames(data, predictions, data_path, predictions_path, scenes=mine)
    with_binary = all(predictions.flags(j) & FLAG_BINARY_PRED for _, j in pairs)
    return _Plan(data_path, predictions_path, pairs, choose_protocol(config, data), with_binary)


# -- 2. evaluate ----------------------------------------------------------------------------------------
def evaluate_files(
    data_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
    config: EvaluateConfig = EvaluateConfig(),
    progress: Progress | None = None,
    *,
    ranks: Ranks | None = None,
) -> EvaluationResult | None:
    """Score a predictions file against a data file; see the module docstring.

    1. open both, pair the frames (of this process's scenes) and fix the protocol;
    2. stream the pairs in batches through the evaluator;
    3. as one of ``ranks`` (a data-parallel job, ``b2s_core.apps.launch``): sum the counts over the
       ranks; rank 0 goes on with the counts of the whole file, the others return None;
    4. the scores, with what was scored, how and how fast.
    """
    started = time.perf_counter()
    data_path, predictions_path = Path(data_path), Path(predictions_path)
    with _opened(data_path, predictions_path) as (data, predictions):
        plan = _plan(data, predictions, data_path, predictions_path, config, ranks)
        evaluator = _score(plan, data, predictions, config, progress)
    if ranks is not None:
        _sum_over_ranks(evaluator, plan.with_binary, ranks)
        if not ranks.is_main:
            return None
    result = evaluator.result()
    seconds = time.perf_counter() - started
    result.extra = {
        "data": str(data_path),
        "predictions": str(predictions_path),
        "seconds": round(seconds, 3),
        "frames_per_second": round(result.frames / seconds, 3) if seconds > 0 else None,
        "units": "percent",
        "rayiou_azimuth_step_deg": config.ray_azimuth_step if config.rayiou else None,
        "config": asdict(config),
    }
    return result


@dataclass
class _Batch:
    """Frame pairs stacked for the evaluator: (B, X, Y, Z) each."""

    gt: np.ndarray  # uint8 labels
    pred: np.ndarray  # uint8 labels
    mask: np.ndarray | None  # bool, the protocol's mask; None: every voxel counts
    binary: np.ndarray | None  # bool, the binary decoder's output
    origins: list[np.ndarray] | None  # B arrays (O, 3) of ray origins, for RayIoU


def _score(plan: _Plan, data: OccDataset, predictions: Predictions, config: EvaluateConfig,
           progress: Progress | None) -> OccupancyEvaluator:
    """The evaluator after every pair of ``plan``, in batches of ``config.batch_size`` frames."""
    directions = lidar_ray_directions(config.ray_azimuth_step) if config.rayiou else None
    evaluator = OccupancyEvaluator(plan.protocol, grid=data.grid, rayiou=config.rayiou, ray_directions=directions,
                                   device=config.device)
    origins_of = _SceneOrigins(data, config) if config.rayiou else None
    total = len(plan.pairs)
    for start in range(0, total, config.batch_size):
        batch = _read_batch(plan, plan.pairs[start:start + config.batch_size], data, predictions, origins_of)
        evaluator.add_batch(batch.gt, batch.pred,
                            mask_camera=batch.mask if plan.protocol.mask == "camera" else None,
                            mask_lidar=batch.mask if plan.protocol.mask == "lidar" else None,
                            binary_pred=batch.binary, origins=batch.origins)
        if progress is not None:
            progress(min(start + config.batch_size, total), total)
    return evaluator


def _read_batch(plan: _Plan, pairs: list[tuple[int, int]], data: OccDataset, predictions: Predictions,
                origins_of: _SceneOrigins | None) -> _Batch:
    truths = [_read_truth(plan, data, i) for i, _ in pairs]
    guesses = [_read_guess(plan, predictions, j) for _, j in pairs]
    return _Batch(
        gt=np.stack([truth.semantics for truth in truths]),
        pred=np.stack([guess.semantics for guess in guesses]),
        mask=np.stack([getattr(truth, plan.mask_field) for truth in truths]) if plan.mask_field else None,
        binary=np.stack([guess.binary_pred for guess in guesses]) if plan.with_binary else None,
        origins=None if origins_of is None else [origins_of(i) for i, _ in pairs],
    )


def _read_truth(plan: _Plan, data: OccDataset, index: int) -> OccFrame:
    truth = data.read(index, fields=("semantics", plan.mask_field) if plan.mask_field else ("semantics",))
    if truth.semantics is None:
        raise EvaluateError(f"{plan.data_path}: frame {index} ('{truth.token}') has no semantic labels "
                            "to score against")
    return truth


def _read_guess(plan: _Plan, predictions: Predictions, index: int) -> OccFrame:
    guess = predictions.read(index, fields=("semantics", "binary_pred") if plan.with_binary else ("semantics",))
    if guess.semantics is None:
        raise EvaluateError(f"{plan.predictions_path}: frame {index} ('{guess.token}') has no predicted semantics")
    return guess


def _sum_over_ranks(evaluator: OccupancyEvaluator, with_binary: bool, ranks: Ranks) -> None:
    """Replace one rank's counts by the sums over all ranks (integers: the scores equal one process's).

    The binary-decoder IoU is scored when every frame, over all ranks, has a binary prediction.
    """
    rays = evaluator.rays
    binary = evaluator.binary_confusion if evaluator.binary_confusion is not None else np.zeros((2, 2), np.int64)
    counts = np.array([evaluator.frames, 0 if with_binary else 1, 0 if rays is None else rays.rays])
    arrays = [evaluator.confusion, binary, counts]
    if rays is not None:
        arrays += [rays.gt_count, rays.pred_count, rays.tp]
    summed = ranks.sum(arrays)
    evaluator.confusion, binary, counts = summed[:3]
    evaluator.frames = int(counts[0])
    evaluator.binary_confusion = binary if counts[1] == 0 else None
    if rays is not None:
        rays.rays = int(counts[2])
        rays.gt_count, rays.pred_count, rays.tp = summed[3:]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    device: str = "cpu",
    batch_size: int = 1,
    num_workers: int = 0,
    tta: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    gpus: int = 1,
) -> EvaluationResult | None:
    """Run a trained model over a data file, write its predictions file, and score it.

    progress(done, total, stage) is called with stage 'predicting', then 'scoring'. gpus > 1: as
    that many data-parallel processes through torchrun (``b2s_core.apps.launch``; with
    ``device='cpu'``, Gloo processes), the same predictions file and scores as one process. Inside
    a torchrun job, each process predicts and scores its share and rank 0 returns the result (the
    others None).
    """
    if gpus < 1:
        raise EvaluateError(f"--gpus must be at least 1, got {gpus}")
    # The model's predictions must never land on the file they are scored against (a 100 % score
    # over a destroyed ground truth); the CLI also checks this, library callers get it here.
    check_apart([Output(predictions_path, option="predictions", parts=gpus > 1)],
                {"data": data_path, "checkpoint": checkpoint})
    if gpus > 1 and not inside_torchrun():
        args = {"checkpoint": str(checkpoint), "data_path": str(data_path), "predictions_path": str(predictions_path),
                "config": asdict(config), "device": device, "batch_size": batch_size, "num_workers": num_workers,
                "tta": tta}
        return EvaluationResult(**launch("evaluate-checkpoint", args, gpus=gpus, device=device))
    ranks = join_ranks(device)
    if ranks is not None:
        device = ranks.device(device)
        if config.device is not None:  # the ray marching runs beside the model
            config = replace(config, device=device)

    def staged(stage: str) -> Progress | None:
        return None if progress is None else (lambda done, total: progress(done, total, stage))

    predict_checkpoint_to_file(checkpoint, data_path, predictions_path, device=device, batch_size=batch_size,
                               num_workers=num_workers, tta=tta, progress=staged("predicting"), ranks=ranks)
    result = evaluate_files(data_path, predictions_path, config, progress=staged("scoring"), ranks=ranks)
    if result is not None:
        result.extra["checkpoint"] = str(checkpoint)
    return result


# -- 3. render ----------------------------------------------------------------------------------------
def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def render_table(result: EvaluationResult) -> Table:
    """A rich table: one row per eval class (IoU, RayIoU@1/2/4), then the summary rows."""
    title = f"{result.protocol} · mask {result.mask} · {result.frames} frames"
    table = Table(title=title, show_lines=False)
    table.add_column("class")
    table.add_column("label", justify="right")
    table.add_column("IoU", justify="right")
    thresholds = list(result.rayiou_per_class)
    for t in thresholds:
        table.add_column(f"RayIoU@{t}", justify="right")
    for row, (name, label, iou) in enumerate(zip(result.class_names, result.class_labels, result.iou)):
        rays = [_cell(result.rayiou_per_class[t][row]) for t in thresholds]
        table.add_row(name, str(label), _cell(iou), *rays, end_section=row == len(result.class_names) - 1)
    blank = [""] * len(thresholds)
    table.add_row("[bold]mean (mIoU)[/]", "", f"[bold]{_cell(result.miou)}[/]",
                  *[f"[bold]{_cell(result.rayiou_at[t])}[/]" for t in thresholds])
    table.add_row("geometry IoU", "", _cell(result.geometry_iou), *blank)
    if result.binary_iou is not None:
        table.add_row("binary-decoder IoU", "", _cell(result.binary_iou), *blank)
    if result.rayiou is not None:
        table.add_row("RayIoU (mean of 1, 2, 4 m)", "", _cell(result.rayiou), *blank)
    return table


def write_json(result: EvaluationResult, path: str | os.PathLike) -> Path:
    """Write the result as JSON atomically (temp file + rename); NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def summary_line(result: EvaluationResult) -> str:
    parts = [f"mIoU {_cell(result.miou)}", f"IoU {_cell(result.geometry_iou)}"]
    if result.binary_iou is not None:
        parts.append(f"binary IoU {_cell(result.binary_iou)}")
    if result.rayiou is not None:
        parts.append(f"RayIoU {_cell(result.rayiou)}")
    return " · ".join(parts)


__all__ = [
    "EvaluateConfig",
    "EvaluateError",
    "evaluate_files",
    "evaluate_checkpoint",
    "pair_frames",
    "choose_protocol",
    "render_table",
    "write_json",
    "summary_line",
]
