"""``b2s convert``: raw dataset -> unified HDF5 file, scene by scene, resumable, in parallel.

Flow: a reader (:func:`converters.open_reader`) yields :class:`SensorFrame` per key frame ->
:func:`occ_frame_of` turns it into an :class:`OccFrame` on the labels' grid -> the scene goes into
its own part file (:class:`b2s_core.occfile.ResumableWriter`) -> when every selected scene is done the
parts are merged into ``--out`` atomically. An interrupted run keeps its finished scenes and
redoes only the others; a rerun whose output options differ (:func:`output_options`) is refused.
Frames with bad inputs are skipped and listed (``on_error='skip'``) or stop the run (``'stop'``)
after the finished scenes have been kept.

Without labels a frame's occupancy is its key LiDAR sweep voxelised on the grid (one sweep, no
aggregation, no free-space reasoning): a quick look at a dataset. Dense binary occupancy for
training comes from ``b2s build-binary``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from b2s_core.grids import SOURCE_GRIDS, VoxelGrid, get_grid
from b2s_core.occfile import ResumableWriter, validate_file
from b2s_core.records import Camera, LidarSweep, OccFrame, SemanticLabels, SensorFrame
from b2s_core.taxonomy import Taxonomy
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.progress import SceneProgress
from converters.jobs.ray_backend import check_backend
from converters.jobs.scene_run import (
    SkippedFrame,
    check_resume_options,
    check_run_options,
    grid_text,
    open_error_skips,
    run_scenes,
    select_scenes,
)
from converters.readers.base import SOURCES, SceneReader
from converters.readers.labels import LabelSpec
from converters.readers.plugins import plugin_default_grid, resolve_source


def default_grid(source: str) -> VoxelGrid:
    """The grid of an unlabelled conversion, and of build-binary without --grid, for a source id
    (:func:`converters.readers.plugins.resolve_source`): a built-in source's from
    :data:`b2s_core.grids.SOURCE_GRIDS`, or a plug-in reader's ``default_grid``."""
    return SOURCE_GRIDS[source] if source in SOURCES else plugin_default_grid(source)


@dataclass
class ConvertConfig:
    """Everything ``b2s convert`` needs; the CLI fills it from its options."""

    source: str  # built-in name, b2s.readers entry point or module:Class; made a source id on creation
    dataroot: Path
    out: Path
    version: str | None = None  # nuScenes version folder (default v1.0-mini)
    labels: str | None = None  # 'occ3d:PATH' | 'openoccupancy:PATH' | 'openscene:PATH'
    scenes: list[str] | None = None
    split: str | None = None
    workers: int = 1
    shard: tuple[int, int] = (0, 1)  # (i, N): this job converts shard i of N (scene_run.balanced_shards)
    embed_images: bool = False  # copy the encoded image bytes into the file (else paths under image_root)
    on_error: str = "skip"  # 'skip' a bad frame (and list it) or 'stop' the run
    store_points: bool = True  # keep the key-frame LiDAR points (ego frame) in the file
    grid: str | None = None  # unlabelled conversions only; labels fix their own grid
    overwrite: bool = False
    command: str = ""
    reader_options: dict = field(default_factory=dict)
    backend: str = "local"  # 'local' (this process or a process pool) or 'ray' (converters.jobs.ray_backend)
    ray_address: str | None = None  # a Ray cluster to join; None: a local Ray instance of `workers` CPUs

    def __post_init__(self) -> None:
        self.dataroot, self.out = Path(self.dataroot), Path(self.out)
        self.source = resolve_source(self.source)  # workers and the resume record see the same id
        check_run_options(self.on_error, self.workers, self.shard)
        check_backend(self.backend, self.ray_address)
        if self.grid is not None:
            get_grid(self.grid)  # a bad spec fails here, before the dataset is opened

    def reader_kwargs(self) -> dict:
        return dict(source=self.source, dataroot=self.dataroot, version=self.version, labels=self.labels,
                    scenes=self.scenes, split=self.split, **self.reader_options)


@dataclass
class ConvertSummary:
    out: Path
    scenes: int  # scenes in the output
    resumed: int  # scenes a previous run had finished
    frames: int  # frames written by this run
    skipped: list[SkippedFrame]
    seconds: float = 0.0  # wall time of the whole run
    merge_seconds: float = 0.0  # of which: merging the per-scene parts into the output


# -- one frame ------------------------------------------------------------------------------------
def occ_frame_of(frame: SensorFrame, *, grid: VoxelGrid, taxonomy: Taxonomy, image_root: Path,
                 embed_images: bool, store_points: bool) -> OccFrame:
    """A reader's frame -> one frame of the unified format (loads the key LiDAR sweep and, if asked, images)."""
    lidar, labels = frame.lidar, frame.labels
    # The points are loaded when they are kept, or when they are the occupancy (no labels).
    points_ego = _points_ego(lidar) if lidar is not None and (store_points or labels is None) else None
    occupancy, semantics = _occupancy(labels, points_ego, grid, taxonomy)
    mask_lidar, mask_camera = (labels.mask_lidar, labels.mask_camera) if labels is not None else (None, None)
    ego_from_lidar = np.asarray(lidar.ego_from_sensor, np.float64) if lidar is not None else None
    return OccFrame(
        scene=frame.scene,
        token=frame.token,
        timestamp=frame.timestamp,
        global_from_ego=frame.global_from_ego,
        cameras=[_camera(cam, image_root, embed_images) for cam in frame.cameras],
        occupancy=occupancy,
        semantics=semantics,
        mask_lidar=mask_lidar,
        mask_camera=mask_camera,
        points=points_ego if store_points else None,
        lidar_origin=ego_from_lidar[:3, 3].astype(np.float32) if ego_from_lidar is not None else None,
        ego_from_lidar=ego_from_lidar,
        source_tokens=dict(frame.source_tokens),
    )


def _points_ego(lidar: LidarSweep) -> np.ndarray:
    """The sweep's points -> (N, 3) float32 in the ego frame."""
    points = lidar.load()  # (N, C) sensor frame
    if points.ndim != 2 or points.shape[1] < 3:
        raise ConverterError(lidar.path, f"LiDAR points have shape {points.shape}, expected (N, >=3)")
    ego_from_sensor = lidar.ego_from_sensor
    return (points[:, :3].astype(np.float64) @ ego_from_sensor[:3, :3].T + ego_from_sensor[:3, 3]).astype(np.float32)


def _occupancy(labels: SemanticLabels | None, points_ego: np.ndarray | None, grid: VoxelGrid,
               taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, Y, Z) bool occupancy and uint8 semantics: the labels' non-free voxels, or without labels the
    voxels the key sweep's points fall in (semantics None)."""
    if labels is None:
        occupancy = grid.voxelize(points_ego) if points_ego is not None else np.zeros(grid.shape, dtype=bool)
        return occupancy, None
    if labels.semantics.shape != grid.shape:
        raise ConverterError(labels.path, f"labels have shape {labels.semantics.shape}, the {grid.name} grid is {grid.shape}")
    return labels.semantics != taxonomy.free_index, labels.semantics


def _camera(cam: Camera, image_root: Path, embed: bool) -> Camera:
    if not embed or cam.image_bytes is not None:
        return cam
    path = image_root / (cam.image_path or "")
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise ConverterError(path, f"{cam.name} image not found") from None
    return Camera(cam.name, cam.intrinsic, cam.ego_from_cam, cam.width, cam.height, cam.image_path, data, cam.timestamp)


# -- one scene ------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One conversion's per-scene work (picklable: it travels to worker processes, converters.jobs.scene_run)."""

    reader_kwargs: dict
    writer: ResumableWriter
    embed_images: bool
    store_points: bool
    on_error: str

    def run(self, reader: SceneReader, scene: str, on_frame: Callable[[str], None] | None) -> tuple[int, list[SkippedFrame]]:
        """Convert one scene into its part file; returns (frames written, frames skipped)."""
        skipped: list[SkippedFrame] = []
        # The skip list goes next to the part before the part is committed, so a resumed run can report it.
        log = _skip_log(self.writer, scene)
        frames = _then_write_skip_log(_scene_frames(reader, self, scene, skipped, on_frame), skipped, log)
        return self.writer.write_scene(scene, frames), skipped


def _scene_frames(reader: SceneReader, job: _Job, scene: str, skipped: list[SkippedFrame],
                  on_frame: Callable[[str], None] | None) -> Iterator[OccFrame]:
    grid, taxonomy = job.writer.writer_kwargs["grid"], job.writer.writer_kwargs["taxonomy"]

    def handle(scene_name: str, token: str, err: ConverterError) -> None:
        if job.on_error == "stop":
            raise err
        skipped.append(SkippedFrame(scene_name, token, str(err)))

    for frame in reader.read_scene(scene, on_error=handle):
        try:
            occ = occ_frame_of(frame, grid=grid, taxonomy=taxonomy, image_root=reader.image_root,
                               embed_images=job.embed_images, store_points=job.store_points)
        except ConverterError as err:
            handle(scene, frame.token, err)
            continue
        yield occ
        if on_frame is not None:
            on_frame(scene)


def _skip_log(writer: ResumableWriter, scene: str) -> Path:
    return writer.part_path(scene).with_suffix(".skipped.json")


def _then_write_skip_log(frames: Iterator[OccFrame], skipped: list[SkippedFrame], log: Path) -> Iterator[OccFrame]:
    """Pass the frames through; once they are exhausted, record the skipped ones in ``log``."""
    yield from frames
    log.write_text(json.dumps([asdict(s) for s in skipped]))


# -- the whole run --------------------------------------------------------------------------------
def output_layout(reader: SceneReader, config: ConvertConfig) -> tuple[VoxelGrid, Taxonomy]:
    """The output's grid and taxonomy: those of the labels, else ``--grid`` (default per source)."""
    if reader.label_grid is not None:
        if config.grid and not get_grid(config.grid).same_geometry(reader.label_grid):
            raise ConverterError(config.grid, f"--grid disagrees with the {reader.label_grid.name} grid of the labels; leave it out")
        return reader.label_grid, reader.taxonomy
    return get_grid(config.grid) if config.grid else default_grid(config.source), reader.taxonomy


def convert(config: ConvertConfig, progress: SceneProgress | None = None) -> ConvertSummary:
    """Run a conversion (see module docstring); returns what was written and what was skipped."""
    started = time.perf_counter()
    progress = progress or SceneProgress()
    if config.out.exists() and not config.overwrite:
        raise ConverterError(config.out, "output exists; pass --overwrite to replace it")
    reader = open_reader(**config.reader_kwargs())
    grid, taxonomy = output_layout(reader, config)
    skipped = open_error_skips(reader, config.on_error)  # e.g. a corrupt OpenScene meta pickle: its log is left out
    scenes = select_scenes(reader, config.shard, config.dataroot)
    writer_kwargs = dict(grid=grid, taxonomy=taxonomy, source=config.source, command=config.command,
                         camera_names=reader.camera_names,
                         image_root=None if config.embed_images else str(Path(reader.image_root).resolve()))
    writer = ResumableWriter(config.out, **writer_kwargs)
    check_resume_options(writer.parts_dir, output_options(config, grid), what="conversion")
    job = _Job(config.reader_kwargs(), writer, config.embed_images, config.store_points, config.on_error)

    done = [s for s in scenes if writer.is_done(s)]
    for scene in done:
        _check_part_matches(writer.part_path(scene), writer_kwargs)
    todo = [s for s in scenes if s not in set(done)]
    for scene in done:
        log = _skip_log(writer, scene)
        if log.is_file():
            skipped += [SkippedFrame(**row) for row in json.loads(log.read_text())]
    progress.start(len(scenes), len(done))
    frames, bad = run_scenes(job, reader, todo, workers=config.workers, progress=progress, backend=config.backend,
                             ray_address=config.ray_address)
    skipped += bad
    merge_started = time.perf_counter()
    writer.finalize(scene_order=scenes)
    finished = time.perf_counter()
    return ConvertSummary(config.out, len(scenes), len(done), frames, skipped, finished - started, finished - merge_started)


def output_options(config: ConvertConfig, grid: VoxelGrid) -> dict:
    """The options that shape a scene's frames, by flag: a resumed run must repeat them.

    Which scenes are converted (--scenes, --split, --shard, --version: a scene's frames are the same
    whatever selects it) and how (--workers, --backend, --on-error) may change between runs.
    """
    labels = LabelSpec.parse(config.labels) if config.labels else None
    return {
        "--source": config.source,
        "--dataroot": str(config.dataroot.resolve()),
        "--labels": f"{labels.kind}:{labels.root.resolve()}" if labels else None,
        "--grid": grid_text(grid),
        "--embed-images": config.embed_images,
        "--points": config.store_points,
        "reader options": config.reader_options or None,
    }


def _check_part_matches(part: Path, writer_kwargs: dict) -> None:
    """A finished part from an earlier run must come from the same conversion, or merging would mix files."""
    attrs = validate_file(part)
    grid = VoxelGrid.from_dict(json.loads(attrs["grid"]))
    theirs = (attrs["source"], attrs["taxonomy"], json.loads(attrs["camera_names"]), attrs["image_root"] or None)
    ours = (writer_kwargs["source"], writer_kwargs["taxonomy"].name, list(writer_kwargs["camera_names"]), writer_kwargs["image_root"])
    if theirs != ours or not grid.same_geometry(writer_kwargs["grid"]):
        raise ConverterError(part.parent, "holds scenes of a different conversion (source, labels, grid, cameras or "
                                          "--embed-images differ); delete it or choose another --out")


__all__ = ["ConvertConfig", "ConvertSummary", "convert", "default_grid", "occ_frame_of"]
