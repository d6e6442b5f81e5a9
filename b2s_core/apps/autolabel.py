"""``b2s autolabel``: an offboard model labels binary-only data; the labels are written as pseudo-labels.

The offboard model takes the ground-truth binary grid as input; its output is certain free outside
that occupied set (on the model's binary grid) and its own choice, free included, inside it. The
pseudo-label file is the unified format with the data file's grid, scenes, poses, cameras (and
visibility masks), the model's taxonomy, and per frame one of two forms:

* ``paper`` (default; the paper's App. D): Top1 is the class of highest probability over *all*
  classes, free included, so the file's geometry is the model's. Top2 keeps the two highest, free
  included, for every voxel the model could label (``top2_support``: the given occupied set on the
  binary grid, painted on the file grid), with their logits; elsewhere the voxel is free for sure.
* ``given-geometry`` (an option, not the paper): the occupied voxels of the given binary grid keep
  their geometry and get the best non-free class(es), so Top1 and Top2 share the GT geometry.

Either way ``semantics`` holds the Top1 label and ``occupancy`` is ``semantics != free``; Top2 adds
``top2_labels`` / ``top2_logits`` (M, 2) for the M voxels of the support (C order), best first,
logits as float16. Training turns them into soft targets (softmax over the two logits,
``b2s_core.data.targets.dense_top2``). Optional test-time augmentation averages the logits of the
four BEV flips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from b2s_core import ray_engine
from b2s_core.apps.launch import Ranks, inside_torchrun, join_ranks, launch, my_scenes
from b2s_core.apps.predict import FrameCounter, ModelRun, Progress, check_grid, copy_frame, open_inputs, output_attrs
from b2s_core.data.dataset import OccTrainDataset
from b2s_core.errors import B2SError
from b2s_core.models.checkpoint import load_checkpoint
from b2s_core.models.config import ModelConfig
from b2s_core.models.occupied_set import upsample_occupancy
from b2s_core.occfile import OccDataset, OccFormatError, ResumableWriter, SceneInfo
from b2s_core.output_paths import Output, atomic_path, check_apart
from b2s_core.records import OccFrame
from b2s_core.taxonomy import TAXONOMIES, Taxonomy, get_taxonomy

MODES = ("top1", "top2")
FORMS = ("paper", "given-geometry")


class AutolabelError(B2SError):
    """A checkpoint or data file that cannot produce pseudo-labels."""


@dataclass(frozen=True)
class AutolabelConfig:
    mode: str = "top2"  # 'top1' (best class) or 'top2' (two best classes and their logits)
    form: str = "paper"  # 'paper' (free among the candidates: the model's geometry) or 'given-geometry'
    tta: bool = False  # average the logits of the four BEV flips
    batch_size: int = 1
    device: str = "cpu"
    num_workers: int = 0
    taxonomy: str | None = None  # label set of the model; None: inferred from the checkpoint

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AutolabelError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.form not in FORMS:
            raise AutolabelError(f"pseudo-label form must be one of {', '.join(FORMS)}, got '{self.form}'")
        if self.batch_size < 1:
            raise AutolabelError(f"batch size must be >= 1, got {self.batch_size}")


@dataclass
class AutolabelReport:
    path: Path
    mode: str
    form: str
    frames: int
    occupied_voxels: int  # over all frames
    bytes_per_frame: dict[str, float] = field(default_factory=dict)  # see pseudo_label_bytes


@dataclass
class PseudoLabels:
    """One frame's pseudo-labels on the file grid (X, Y, Z)."""

    semantics: np.ndarray  # (X, Y, Z) uint8, the Top1 label (free where unoccupied)
    occupancy: np.ndarray  # (X, Y, Z) bool, semantics != free
    top2_labels: np.ndarray | None = None  # (M, 2) uint8, best first, for the M voxels of the support
    top2_logits: np.ndarray | None = None  # (M, 2) float16
    top2_support: np.ndarray | None = None  # (X, Y, Z) bool; None: the support is ``occupancy``


# -- the labelling itself (pure) -----------------------------------------------------------------------
def pseudo_labels(semantic_logits: torch.Tensor, *, given: np.ndarray, labelled: np.ndarray, free_index: int,
                  mode: str, form: str = "paper") -> PseudoLabels:
    """One frame's pseudo-labels.

    semantic_logits: (K, X, Y, Z) float, the offboard model's output; given: (X, Y, Z) bool, the
    given binary grid; labelled: (X, Y, Z) bool, the voxels the model labels (the given set on the
    model's binary grid, painted on the file grid: outside it the output is certain free).
    paper: top-k over all K classes on ``labelled``; given-geometry: top-k over the non-free classes
    on ``given``.
    """
    K = semantic_logits.shape[0]
    paper = form == "paper"
    voxels = labelled if paper else given
    flat = torch.from_numpy(np.flatnonzero(voxels)).to(semantic_logits.device)  # (M,) C order
    logits = semantic_logits.reshape(K, -1)[:, flat].float()  # (K, M)
    if not paper:
        logits[free_index] = -torch.inf  # the given geometry stays: free is not a candidate
    values, labels = torch.topk(logits, k=2, dim=0)  # (2, M) each, best first
    semantics = np.full(voxels.shape, free_index, dtype=np.uint8)
    semantics.reshape(-1)[flat.cpu().numpy()] = labels[0].to(torch.uint8).cpu().numpy()
    out = PseudoLabels(semantics=semantics, occupancy=semantics != free_index)
    if mode == "top2":
        out.top2_labels = labels.T.to(torch.uint8).cpu().numpy()  # (M, 2)
        out.top2_logits = values.T.to(torch.float16).cpu().numpy()  # (M, 2)
        out.top2_support = voxels.copy() if paper else None
    return out


def model_taxonomy(model_config: ModelConfig, train_settings: dict, override: str | None) -> Taxonomy:
    """The label set a model predicts: given, else that of its fine-tuning data, else the only
    known taxonomy with its number of labels and free index."""
    taxonomy = get_taxonomy(override) if override else _taxonomy_of_data(train_settings.get("semantic_data") or [])
    if taxonomy is None:
        taxonomy = _only_fitting_taxonomy(model_config)
    if not _fits(taxonomy, model_config):
        raise AutolabelError(
            f"taxonomy '{taxonomy.name}' has {taxonomy.num_labels} labels (free {taxonomy.free_index}), "
            f"the model predicts {model_config.num_classes} (free {model_config.free_index})"
        )
    return taxonomy


def _fits(taxonomy: Taxonomy, model_config: ModelConfig) -> bool:
    return taxonomy.num_labels == model_config.num_classes and taxonomy.free_index == model_config.free_index


def _taxonomy_of_data(paths: Sequence[str]) -> Taxonomy | None:
    """The taxonomy of the first of ``paths`` (the model's fine-tuning data) that still opens."""
    for path in paths:
        try:
            data = OccDataset(path)
        except (OccFormatError, OSError):
            continue
        try:
            return data.taxonomy
        finally:
            data.close()
    return None


def _only_fitting_taxonomy(model_config: ModelConfig) -> Taxonomy:
    fits = [t for t in TAXONOMIES.values() if _fits(t, model_config)]
    if len(fits) != 1:
        names = ", ".join(t.name for t in fits) or "none"
        raise AutolabelError(
            f"cannot tell the model's taxonomy ({model_config.num_classes} labels, free {model_config.free_index}; "
            f"candidates: {names}): pass --taxonomy"
        )
    return fits[0]


# -- writing ------------------------------------------------------------------------------------------------
def autolabel_to_file(
    model: torch.nn.Module,
    dataset: OccTrainDataset,
    out_path: str | os.PathLike,
    *,
    model_config: ModelConfig,
    taxonomy: Taxonomy,
    config: AutolabelConfig = AutolabelConfig(),
    command: str = "",
    labeller: str = "",
    progress: Progress | None = None,
    ranks: Ranks | None = None,
) -> AutolabelReport | None:
    """Label every frame of ``dataset`` (an OccTrainDataset over the binary data) and write ``out_path``.

    Long runs resume: each scene is written to its own part file under ``<out>.parts/`` as soon as
    it is labelled, a rerun of the same command skips the scenes already there, and the parts are
    merged into ``out_path`` (atomically) at the end. ``labeller`` names the model (``autolabel``
    passes the checkpoint's identity): a rerun with another model, other data or other settings is
    refused rather than mixed with the finished scenes.

    ranks: one worker of a data-parallel job (``b2s_core.apps.launch``): this process labels
    its share of the scenes only, and rank 0 merges every rank's parts once all are written (the
    other ranks return None).
    """
    occ = dataset.occ
    _check_model(model_config, occ)
    scenes = my_scenes(occ.scenes, ranks)
    writer = _open_writer(out_path, occ, taxonomy, command)
    if ranks is None or ranks.is_main:
        _check_resume_settings(writer.parts_dir, _settings(config, labeller, occ))
    if ranks is not None:
        ranks.barrier()  # no rank adds parts before the earlier run's settings are checked
    run = _model_run(model, dataset, model_config, config)
    _label_scenes(run, writer, scenes, taxonomy, config, FrameCounter(sum(len(scene) for scene in scenes), progress))
    if ranks is not None:
        ranks.barrier()  # every rank's parts are written
        if not ranks.is_main:
            return None
    return _merge(writer, occ, config)


def _check_model(model_config: ModelConfig, occ: OccDataset) -> None:
    if not model_config.offboard:
        raise AutolabelError("the checkpoint is an online model; autolabel needs an offboard model "
                             "(trained with the GT binary as input)")
    check_grid(model_config, occ)


def _model_run(model: torch.nn.Module, dataset: OccTrainDataset, model_config: ModelConfig,
               config: AutolabelConfig) -> ModelRun:
    return ModelRun(model.to(config.device).eval(), dataset, model_config, device=config.device,
                    batch_size=config.batch_size, num_workers=config.num_workers, tta=config.tta)


def _open_writer(out_path: str | os.PathLike, occ: OccDataset, taxonomy: Taxonomy, command: str) -> ResumableWriter:
    """The part-file writer of ``out_path``; every process that labels scenes of it opens the same one."""
    return ResumableWriter(out_path, **output_attrs(occ, taxonomy, command))


def _settings(config: AutolabelConfig, labeller: str, occ: OccDataset) -> dict:
    """What a resumed run must share with the run that wrote the finished parts."""
    return {"mode": config.mode, "form": config.form, "tta": config.tta, "labeller": labeller,
            "data": [str(Path(path).resolve()) for path in occ.paths]}


def _label_scenes(run: ModelRun, writer: ResumableWriter, scenes: Sequence[SceneInfo], taxonomy: Taxonomy,
                  config: AutolabelConfig, counter: FrameCounter) -> None:
    """Label ``scenes`` (of ``run.dataset.occ``) into their part files, skipping the parts already done."""
    for scene in scenes:
        if writer.is_done(scene.name):
            counter.add(len(scene))  # finished by an earlier run
            continue
        writer.write_scene(scene.name, _labelled_frames(run, scene, taxonomy, config, counter))


def _labelled_frames(run: ModelRun, scene: SceneInfo, taxonomy: Taxonomy, config: AutolabelConfig,
                     counter: FrameCounter) -> Iterator[OccFrame]:
    """The frames of ``scene`` with their pseudo-labels, the data's masks, and its images (embedded
    images are copied, images stored by path keep their paths): the file trains on its own."""
    occ = run.dataset.occ
    for frame_ids, given, logits in run.batches(range(scene.start, scene.stop)):
        if logits.semantic is None:
            raise AutolabelError("the model returned no semantic logits")
        labelled = upsample_occupancy(given, run.model_config.output_from_binary).cpu().numpy()  # (B, X, Y, Z)
        for b, index in enumerate(frame_ids):
            source = occ.read(index, fields=("mask_camera", "mask_lidar", "points", "cameras"), images="embedded")
            labels = pseudo_labels(logits.semantic[b], given=np.asarray(source.occupancy, dtype=bool),
                                   labelled=labelled[b], free_index=taxonomy.free_index, mode=config.mode,
                                   form=config.form)
            yield _labelled_frame(source, labels)
        counter.add(len(frame_ids))


def _labelled_frame(source: OccFrame, labels: PseudoLabels) -> OccFrame:
    frame = copy_frame(source)
    frame.mask_camera, frame.mask_lidar = source.mask_camera, source.mask_lidar
    frame.occupancy, frame.semantics = labels.occupancy, labels.semantics
    frame.top2_labels, frame.top2_logits = labels.top2_labels, labels.top2_logits
    frame.top2_support = labels.top2_support
    return frame


def _merge(writer: ResumableWriter, occ: OccDataset, config: AutolabelConfig) -> AutolabelReport:
    """The parts merged in the data file's scene order, and what the pseudo-labels cost per frame."""
    path = writer.finalize(scene_order=[scene.name for scene in occ.scenes])
    sizes = pseudo_label_bytes(path)
    frames = len(occ)
    return AutolabelReport(path=path, mode=config.mode, form=config.form, frames=frames,
                           occupied_voxels=int(round(sizes["labels_raw"] * frames)), bytes_per_frame=sizes)


_SETTINGS_NAME = "labelling.json"


def _check_resume_settings(parts_dir: Path, settings: dict) -> None:
    """Scenes finished by an interrupted earlier run are reused only if they were labelled the same
    way: the first run records its settings beside its parts; a rerun with others is refused."""
    record = parts_dir / _SETTINGS_NAME
    if record.is_file():
        try:
            earlier = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            earlier = None
        if earlier != settings:
            if isinstance(earlier, dict):
                described = ", ".join(f"{k} {earlier.get(k, '(none)')}" for k in settings
                                      if earlier.get(k) != settings[k])
            else:
                described = "unreadable settings"
            raise AutolabelError(f"{parts_dir}: scenes left by an earlier run with other settings ({described}); "
                                 "delete that folder or label with the same settings")
        return
    with atomic_path(record) as temp:
        temp.write_text(json.dumps(settings, sort_keys=True))


def pseudo_label_bytes(path: str | os.PathLike) -> dict[str, float]:
    """Storage per frame of a pseudo-label file, in bytes.

    ``labels`` / ``top2``: the compressed bytes of the per-voxel classes (Top1) and of the Top2
    classes + logits (+ the support grid of paper-form Top2) on disk; ``labels_raw`` / ``top2_raw``:
    the classes and logits before compression (1 byte per occupied voxel, 6 per voxel of the Top2
    support); ``file``: the whole file (grids, cameras, images) per frame.
    """
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
            "top2": (stored("top2_labels", "top2_logits") + h5["frames/top2_support"].id.get_storage_size()) / frames,
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
    *,
    gpus: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
) -> AutolabelReport | None:
    """Load an offboard checkpoint and write pseudo-labels for a (binary) data file.

    gpus > 1: as that many data-parallel processes through torchrun (``b2s_core.apps.launch``;
    with ``device='cpu'``, Gloo processes), the same file as one process writes. Inside a torchrun
    job, each process labels its share and rank 0 returns the report (the others None).
    backend 'ray': one Ray task per scene (:func:`_autolabel_ray`) on a local Ray instance or the
    cluster at ``ray_address``; the same file again.
    """
    _check_request(checkpoint, data_path, out_path, gpus=gpus, backend=backend, ray_address=ray_address)
    if gpus > 1 and not inside_torchrun():
        args = {"checkpoint": str(checkpoint), "data_path": str(data_path), "out_path": str(out_path),
                "config": asdict(config)}
        report = launch("autolabel", args, gpus=gpus, device=config.device)
        return AutolabelReport(**{**report, "path": Path(report["path"])})
    ranks = join_ranks(config.device)
    if ranks is not None:
        config = replace(config, device=ranks.device(config.device))
    # The Ray driver only reads the model's settings: the workers run it, each on its own device.
    loaded = load_checkpoint(checkpoint, map_location="cpu" if backend == "ray" else config.device)
    taxonomy = model_taxonomy(loaded.model_config, loaded.train_settings, config.taxonomy)
    dataset = open_inputs(data_path, loaded.model_config)
    command = (f"b2s autolabel --checkpoint {checkpoint} --data {data_path} --{config.mode} --form {config.form} "
               f"--out {out_path}" + (" --tta" if config.tta else ""))
    stat = Path(checkpoint).stat()
    labeller = f"{Path(checkpoint).resolve()} ({stat.st_size} bytes, modified {stat.st_mtime_ns})"
    if backend == "ray":
        job = _SceneJob(checkpoint=str(Path(checkpoint).resolve()), data_path=str(Path(data_path).resolve()),
                        out_path=str(Path(out_path).resolve()), config=config, command=command, labeller=labeller)
        return _autolabel_ray(job, dataset, loaded.model_config, taxonomy, address=ray_address, progress=progress)
    return autolabel_to_file(loaded.model, dataset, out_path, model_config=loaded.model_config, taxonomy=taxonomy,
                             config=config, command=command, labeller=labeller, progress=progress, ranks=ranks)


def _check_request(checkpoint: str | os.PathLike, data_path: str | os.PathLike, out_path: str | os.PathLike, *,
                   gpus: int, backend: str, ray_address: str | None) -> None:
    """What :func:`autolabel` refuses before it loads a model or starts a process."""
    if gpus < 1:
        raise AutolabelError(f"--gpus must be at least 1, got {gpus}")
    if backend == "ray" and (gpus > 1 or inside_torchrun()):
        raise AutolabelError("--backend ray schedules one task per scene on the Ray cluster's GPUs; "
                             "it does not combine with --gpus or torchrun")
    # before the checkpoint is loaded: a missing extra is told at once
    ray_engine.check_backend(backend, ray_address, lambda where, problem: AutolabelError(f"{where}: {problem}"))
    # Labels written over their own data (or the model) would destroy it; the CLI checks this too.
    check_apart([Output(out_path, option="out", parts=True)], {"data": data_path, "checkpoint": checkpoint})


# -- on Ray: one task per scene ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SceneJob:
    """What a Ray worker needs to label any scene of the run (paths absolute: workers start elsewhere)."""

    checkpoint: str
    data_path: str
    out_path: str
    config: AutolabelConfig
    command: str
    labeller: str  # the checkpoint's identity (path, size, modification time)

    @property
    def cuda(self) -> bool:
        return self.config.device.startswith("cuda")


def _autolabel_ray(job: _SceneJob, dataset: OccTrainDataset, model_config: ModelConfig, taxonomy: Taxonomy, *,
                   address: str | None, progress: Progress | None) -> AutolabelReport:
    """The Ray driver: the settings check, one task per unfinished scene (longest first), the merge.

    Each task labels its scene into that scene's part file exactly as :func:`autolabel_to_file`
    does (same batches, same writer), so the merged file equals the local backend's. A task takes
    one GPU when the device is CUDA (Ray assigns it: the worker sees it as ``cuda``), else one CPU.
    A worker that dies mid-scene leaves only a temporary file; Ray re-runs the scene
    (:data:`b2s_core.ray_engine.MAX_RETRIES`).
    """
    occ = dataset.occ
    _check_model(model_config, occ)
    writer = _open_writer(job.out_path, occ, taxonomy, job.command)
    _check_resume_settings(writer.parts_dir, _settings(job.config, job.labeller, occ))
    todo = [i for i, scene in enumerate(occ.scenes) if not writer.is_done(scene.name)]
    counter = FrameCounter(len(occ), progress)
    counter.add(len(occ) - sum(len(occ.scenes[i]) for i in todo))  # the scenes an earlier run finished
    if todo:
        with ray_engine.ray_session(address) as ray:
            remote = ray_engine.task(ray, _scene_task, num_cpus=1, num_gpus=1 if job.cuda else 0)
            job_ref = ray.put(job)  # shipped to the object store once, not once per scene
            # Longest first; sorted() is stable, so scenes of equal length keep the file's order.
            order = sorted(todo, key=lambda i: -len(occ.scenes[i]))
            ray_engine.run_tasks(ray, {remote.remote(job_ref, i): occ.scenes[i].name for i in order}, counter.add)
    return _merge(writer, occ, job.config)


@dataclass(frozen=True)
class _WorkerState:
    """A Ray worker's model and data for one job, loaded once for all the scenes it labels."""

    run: ModelRun
    taxonomy: Taxonomy
    writer: ResumableWriter
    config: AutolabelConfig  # the job's, on this worker's device


# In a Ray worker process: the state of the last job.
_WORKER: dict[tuple, _WorkerState] = {}


def _worker_state(job: _SceneJob) -> _WorkerState:
    # Ray hides the other GPUs from a task (CUDA_VISIBLE_DEVICES): its GPU is always 'cuda' here.
    config = replace(job.config, device="cuda") if job.cuda else job.config
    data_stat = Path(job.data_path).stat()
    key = (job.labeller, job.data_path, data_stat.st_size, data_stat.st_mtime_ns, job.out_path, job.command,
           config.device, config.taxonomy)
    if key not in _WORKER:
        _WORKER.clear()  # one model at a time: a second one would hold its memory for nothing
        loaded = load_checkpoint(job.checkpoint, map_location=config.device)
        taxonomy = model_taxonomy(loaded.model_config, loaded.train_settings, config.taxonomy)
        dataset = open_inputs(job.data_path, loaded.model_config)
        writer = _open_writer(job.out_path, dataset.occ, taxonomy, job.command)
        run = _model_run(loaded.model, dataset, loaded.model_config, config)
        _WORKER[key] = _WorkerState(run, taxonomy, writer, config)
    return _WORKER[key]


def _label_one_scene(job: _SceneJob, index: int) -> int:
    state = _worker_state(job)
    scene = state.run.dataset.occ.scenes[index]
    _label_scenes(state.run, state.writer, [scene], state.taxonomy, state.config, FrameCounter(len(scene)))
    return len(scene)


def _scene_task(job: _SceneJob, index: int) -> int | B2SError:
    """Scene ``index`` of the data file labelled in a Ray worker -> its frame count, or the error that stops the run."""
    return ray_engine.errors_as_values(_label_one_scene, job, index)
