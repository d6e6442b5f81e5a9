"""``b2s build-binary``: raw LiDAR logs + boxes -> binary occupancy with visibility masks, per key frame.

Flow: a reader (:func:`converters.open_reader`) yields a scene's :class:`SensorFrame` s ->
:func:`b2s_core.binary.pipeline.build_scene` aggregates the sweeps and traces the rays (two
streaming passes, so the reader is asked for the scene twice) -> the scene's OccFrames go into
their own part file (:class:`b2s_core.occfile.ResumableWriter`) -> when every selected scene is
done the parts are merged into ``--out`` atomically. An interrupted run keeps its finished scenes;
a rerun whose output options differ (:meth:`BuildBinaryJob.output_options`) is refused.

The core (``b2s_core.binary``) never imports this package: everything source-specific (which
reader, which ego body, which default grid) is decided here; a plug-in reader states its own
(``ego_body``, ``default_grid``: :mod:`converters.readers.plugins`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from b2s_core.binary.aggregate import EGO_BODY_NUPLAN, EGO_BODY_NUSCENES, EgoBody
from b2s_core.binary.pipeline import BinaryBuildConfig, build_scene
from b2s_core.grids import get_grid
from b2s_core.occfile import ResumableWriter
from b2s_core.taxonomy import BINARY
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.convert import default_grid
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
from converters.readers.base import SceneReader
from converters.readers.plugins import plugin_ego_body, resolve_source

EGO_BODY = {"nuscenes": EGO_BODY_NUSCENES, "nuplan": EGO_BODY_NUPLAN, "openscene": EGO_BODY_NUPLAN}


def ego_body(source: str) -> EgoBody:
    """The vehicle body whose returns are dropped, for a source id: the table above, or a plug-in's ``ego_body``."""
    return EGO_BODY[source] if source in EGO_BODY else plugin_ego_body(source)


__all__ = ["BuildBinaryJob", "BuildBinarySummary", "build_binary"]


@dataclass
class BuildBinaryJob:
    """Everything ``b2s build-binary`` needs; the CLI fills it from its options."""

    source: str  # built-in name, b2s.readers entry point or module:Class; made a source id on creation
    dataroot: Path
    out: Path
    version: str | None = None
    scenes: list[str] | None = None
    split: str | None = None
    grid: str | None = None  # preset or custom spec; None = the source's usual grid
    sweeps: int = 0  # static aggregation window (sweeps centred on each key frame); 0 = whole scene
    ray_sweeps: int = 10  # sweeps whose rays make mask_lidar
    camera_stride: float | None = None  # pixels between camera rays; None = automatic
    exact_rays: bool = False  # trace every LiDAR point instead of one ray per (sweep, end voxel)
    keep_points: bool = False
    z_offset: float = 0.0  # metres, label z = ego z + z_offset (b2s_core.binary.convention); 0 = the ego frame
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    on_error: str = "skip"  # a frame the reader cannot read: 'skip' it or 'stop' the run
    overwrite: bool = False
    command: str = ""
    reader_options: dict = field(default_factory=dict)
    backend: str = "local"  # 'local' (this process or a process pool) or 'ray' (converters.jobs.ray_backend)
    ray_address: str | None = None  # a Ray cluster to join; None: a local Ray instance of `workers` CPUs
    # The core's settings, made once on creation from the options above; every scene is built with them.
    build_config: BinaryBuildConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dataroot, self.out = Path(self.dataroot), Path(self.out)
        self.source = resolve_source(self.source)  # workers and the resume record see the same id
        body = ego_body(self.source)  # a plug-in without one fails here, before the dataset is opened
        check_run_options(self.on_error, self.workers, self.shard)
        check_backend(self.backend, self.ray_address)
        if self.sweeps < 0 or self.ray_sweeps < 1:
            raise ConverterError(f"{self.sweeps}/{self.ray_sweeps}", "--sweeps must be >= 0 and --ray-sweeps >= 1")
        if self.camera_stride is not None and not (math.isfinite(self.camera_stride) and self.camera_stride > 0):
            # 0 would silently mean automatic (camera_seen): automatic is None ('auto' at the CLI)
            raise ConverterError(str(self.camera_stride), "--camera-stride must be a number of pixels > 0, or 'auto'")
        if not math.isfinite(self.z_offset):
            raise ConverterError(str(self.z_offset), "--z-offset must be a finite number of metres")
        # Parsed once, here: a bad spec fails before the dataset is opened, and every scene gets this grid.
        grid = get_grid(self.grid) if self.grid else default_grid(self.source)
        height = grid.range_max[2] - grid.range_min[2]
        if abs(self.z_offset) >= height:
            raise ConverterError(f"{self.z_offset:g}", f"--z-offset must lie within the grid's height ({height:g} m)")
        self.build_config = BinaryBuildConfig(
            grid=grid, sweeps=self.sweeps, ray_sweeps=self.ray_sweeps, ego_body=body, camera_stride=self.camera_stride,
            dedupe_rays=not self.exact_rays, keep_points=self.keep_points, z_offset=self.z_offset,
        )

    def reader_kwargs(self) -> dict:
        return dict(source=self.source, dataroot=self.dataroot, version=self.version, scenes=self.scenes,
                    split=self.split, **self.reader_options)

    def output_options(self) -> dict:
        """The options that shape a scene's frames, by flag: a resumed build must repeat them.

        Which scenes are built (--scenes, --split, --shard, --version: a scene's frames are the same
        whatever selects it) and how (--workers, --backend, --on-error) may change between runs.
        """
        return {
            "--source": self.source,
            "--dataroot": str(self.dataroot.resolve()),
            "--grid": grid_text(self.build_config.grid),
            "--sweeps": self.sweeps,
            "--ray-sweeps": self.ray_sweeps,
            "--camera-stride": self.camera_stride,
            "--exact-rays": self.exact_rays,
            "--points": self.keep_points,
            "reader options": self.reader_options or None,
            # Only when set: parts recorded before the option existed were built at offset 0 and resume.
            **({"--z-offset": self.z_offset} if self.z_offset else {}),
        }


@dataclass
class BuildBinarySummary:
    out: Path
    scenes: int
    resumed: int
    frames: int
    skipped: list[SkippedFrame]
    seconds: float = 0.0


@dataclass
class _BuildTask:
    """One build's per-scene work (picklable: it travels to worker processes, converters.jobs.scene_run)."""

    job: BuildBinaryJob
    writer: ResumableWriter

    @property
    def reader_kwargs(self) -> dict:
        return self.job.reader_kwargs()

    def run(self, reader: SceneReader, scene: str, on_frame) -> tuple[int, list[SkippedFrame]]:
        """Build one scene into its part file; returns (frames written, frames skipped)."""
        job = self.job
        skipped: list[SkippedFrame] = []
        seen_bad: set[str] = set()

        def handle(scene_name: str, token: str, err: ConverterError) -> None:
            if job.on_error == "stop":
                raise err
            if token not in seen_bad:  # both passes read the scene; report a bad frame once
                seen_bad.add(token)
                skipped.append(SkippedFrame(scene_name, token, str(err)))

        def frames():
            for frame in build_scene(lambda: reader.read_scene(scene, on_error=handle), job.build_config):
                yield frame
                if on_frame is not None:
                    on_frame(scene)

        return self.writer.write_scene(scene, frames()), skipped


def build_binary(job: BuildBinaryJob, progress: SceneProgress | None = None) -> BuildBinarySummary:
    """Run a build (see the module docstring); returns what was written and what was skipped."""
    started = time.perf_counter()
    progress = progress or SceneProgress()
    if job.out.exists() and not job.overwrite:
        raise ConverterError(job.out, "output exists; pass --overwrite to replace it")
    reader = open_reader(**job.reader_kwargs())
    config = job.build_config
    skipped = open_error_skips(reader, job.on_error)
    scenes = select_scenes(reader, job.shard, job.dataroot)
    writer_kwargs = dict(grid=config.grid, taxonomy=BINARY, source=job.source, command=job.command,
                         camera_names=reader.camera_names, image_root=str(Path(reader.image_root).resolve()),
                         z_offset=config.z_offset)
    writer = ResumableWriter(job.out, **writer_kwargs)
    check_resume_options(writer.parts_dir, job.output_options(), what="build")
    done = [s for s in scenes if writer.is_done(s)]
    todo = [s for s in scenes if s not in set(done)]
    progress.start(len(scenes), len(done))
    frames, bad = run_scenes(_BuildTask(job, writer), reader, todo, workers=job.workers, progress=progress,
                             backend=job.backend, ray_address=job.ray_address)
    skipped += bad
    writer.finalize(scene_order=scenes)
    return BuildBinarySummary(job.out, len(scenes), len(done), frames, skipped, time.perf_counter() - started)
