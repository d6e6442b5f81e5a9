"""The unified HDF5 occupancy format, version 1: writer, resumable per-scene writer, reader, validation.

Every group, dataset and attribute is documented in ``docs/format.md``. In short: one row per key
frame in ``/frames`` and ``/cameras``; binary grids bit-packed (one compressed chunk per frame);
semantic labels stored only for occupied voxels, concatenated in ``/ragged/labels`` with a
``(start, count)`` range per frame; scenes as ``[start, stop)`` frame ranges in ``/scenes``.

Atomicity: a writer works on a hidden temporary file next to the target and renames it over the
target only after the last byte is flushed and the ``complete`` attribute is set, so a crash at any
point leaves either the previous file or nothing, never a half-written file under the target name.
A write that fails (disk full, read-only, I/O error) raises ``OSError(errno, problem, <target>)``
and removes the temporary file; a killed run's temporary file is removed by the next writer of the
same target (see :func:`_remove_dead_temps`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Zstd filter with HDF5 for both writing and reading)
import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import GridError, VoxelGrid
from b2s_core.output_paths import process_alive, temp_path_for
from b2s_core.paths import inside, relative_path_problem
from b2s_core.records import Camera, OccFrame
from b2s_core.taxonomy import Taxonomy, get_taxonomy

FORMAT_NAME = "b2s-occupancy"
FORMAT_VERSION = 1

# Compression of the grids and tables, by name. 'bzip2' (default) makes the smallest files; 'zstd'
# decodes a chunk ~5x faster, yet whole-frame random reads were not faster with it under glibc's
# default malloc (the decoded grids then land on freshly mapped pages): docs/format.md has the
# figures of benchmarks/bench_format.py. Readers need nothing to choose: HDF5 records the filter.
COMPRESSIONS = {
    "zstd": lambda: hdf5plugin.Zstd(clevel=9),
    "bzip2": lambda: hdf5plugin.BZip2(blocksize=9),
    "gzip": lambda: {"compression": "gzip", "compression_opts": 6},
}
_RAGGED_CHUNK = 1 << 16  # elements per chunk of the concatenated (ragged) datasets

# Bits of /frames/flags: which optional fields a frame carries.
FLAG_SEMANTICS = 1
FLAG_MASK_LIDAR = 2
FLAG_MASK_CAMERA = 4
FLAG_TOP2 = 8
FLAG_BINARY_PRED = 16
FLAG_POINTS = 32
FLAG_TOP2_SUPPORT = 64
_PACKED_FIELDS = {  # field -> flag, for the bit-packed (N, P) grids
    "occupancy": 0,
    "mask_lidar": FLAG_MASK_LIDAR,
    "mask_camera": FLAG_MASK_CAMERA,
    "binary_pred": FLAG_BINARY_PRED,
    "top2_support": FLAG_TOP2_SUPPORT,
}
# What OccDataset.read can decode; pass a subset to skip the rest.
FIELDS = ("occupancy", "semantics", "mask_lidar", "mask_camera", "binary_pred", "top2", "points", "cameras")
_STR = h5py.string_dtype("utf-8")


class OccFormatError(B2SError):
    """A file that is not a complete, valid b2s occupancy file of a version this code reads."""


@dataclass(frozen=True)
class SceneInfo:
    name: str
    start: int  # first global frame index (over all opened shards)
    stop: int  # one past the last

    def __len__(self) -> int:
        return self.stop - self.start


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _unpack(packed: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    count = shape[0] * shape[1] * shape[2]
    return np.unpackbits(packed, count=count).view(bool).reshape(shape)


# Masks are stored relative to a reference grid the reader already has, because they are highly
# predictable from it (measured on the real Occ3D sample, bytes after Zstd: mask_lidar 18.2 k
# plain vs 9.3 k as XOR with occupancy; mask_camera 15.0 k plain vs 2.9 k reordered by mask_lidar).
def _encode_xor(grid: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Bits of ``grid XOR reference`` (few ones where the two mostly agree)."""
    return np.logical_xor(grid, reference)


def _encode_reordered(grid: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The bits of ``grid`` at the reference's voxels first, then at the others (C order each).

    A mask that lies (almost) inside its reference becomes a run of ones followed by zeros.
    """
    flat, ref = grid.reshape(-1), reference.reshape(-1)
    return np.concatenate([flat[ref], flat[~ref]])


def _decode_reordered(bits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    ref = reference.reshape(-1)
    inside = np.flatnonzero(ref)
    out = np.zeros(ref.size, dtype=bool)
    out[inside] = bits[: inside.size]
    outside_ones = np.flatnonzero(bits[inside.size:])
    if outside_ones.size:  # rare: only then pay for the (large) list of outside voxels
        out[np.flatnonzero(~ref)[outside_ones]] = True
    return out.reshape(reference.shape)


def _remove_dead_temps(target: Path) -> None:
    """Remove the temporary files of ``target`` (our naming, ``temp_path_for``) whose writer process is gone.

    A killed run (SIGKILL, power loss) leaves ``.<name>.tmp-<pid>-<hex>``; the next writer of the
    same target clears it. A pid that is alive (on this host) may be a writer at work: kept.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.tmp-(\d+)-[0-9a-f]{{8}}")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return  # no folder yet (or unreadable): nothing of ours to clear
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            try:
                (target.parent / name).unlink()
            except OSError:
                pass  # gone meanwhile, or not ours to remove: the write itself reports real problems


_WRITE_ERRNO = re.compile(r"errno = (\d+)")  # h5py: "... file write failed: ..., errno = 28, ..."


def _write_failure(err: BaseException, target: Path) -> BaseException:
    """An HDF5 write failure as ``OSError(errno, problem, target)``; other errors as they are.

    h5py raises OSError or RuntimeError with the temporary file's name and the HDF5 call chain in
    the text; the user needs the target and the problem ("no space left on device").
    """
    if not isinstance(err, (OSError, RuntimeError)) or getattr(err, "filename", None):
        return err  # not HDF5's, or a Python-level file error that names its own file
    code = getattr(err, "errno", None)
    if not code:
        found = _WRITE_ERRNO.search(str(err))
        code = int(found.group(1)) if found else None
    if not code:
        return err
    return OSError(code, os.strerror(code), str(target))


def _discard_writes(h5: h5py.File) -> None:
    """Point the file's descriptor at an anonymous in-memory file, so closing it can no longer fail.

    An HDF5 file whose writes fail cannot be closed (H5Fclose flushes and fails again), and one
    left open crashes the interpreter at exit (a segfault in H5_term_library). A file being
    abandoned needs none of its remaining bytes: they go to memory and vanish.
    """
    try:
        fd = h5.id.get_vfd_handle()
    except (OSError, RuntimeError, ValueError):
        return
    if not isinstance(fd, int) or fd < 0:
        return
    if hasattr(os, "memfd_create"):
        sink = os.memfd_create("b2s-discarded")
    else:  # not Linux: an unnamed temporary file
        sink = os.dup(tempfile.TemporaryFile().fileno())
    try:
        os.dup2(sink, fd)
    finally:
        os.close(sink)


class OccWriter:
    """Writes one complete file; frames are appended one scene at a time.

    ``with OccWriter(path, grid=..., taxonomy=..., source=..., command=...) as w:
    w.write_scene(name, frames)``. The file appears under ``path`` only when the block exits
    without an exception.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        grid: VoxelGrid,
        taxonomy: Taxonomy | str,
        source: str,
        command: str = "",
        camera_names: Sequence[str] = (),
        image_root: str | os.PathLike | None = None,
        compression: str = "bzip2",
        z_offset: float = 0.0,
    ) -> None:
        self.path = Path(path)
        if compression not in COMPRESSIONS:
            raise OccFormatError(f"unknown compression '{compression}': use one of {', '.join(COMPRESSIONS)}")
        filter_ = COMPRESSIONS[compression]()
        self._compression = filter_ if isinstance(filter_, dict) else {"compression": filter_}
        self.grid = grid
        self.taxonomy = get_taxonomy(taxonomy)
        self.camera_names = list(camera_names)
        self.z_offset = float(z_offset)
        self._temp = temp_path_for(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(self.path)
        # libver="latest": compact chunk indexes (~80 KB less fixed overhead per file than the v1 B-trees).
        try:
            self._h5 = h5py.File(self._temp, "w", libver="latest")
        except (OSError, RuntimeError) as err:
            self._temp.unlink(missing_ok=True)
            raise _write_failure(err, self.path) from None
        self._scene_names: set[str] = set()
        self._num_frames = 0
        self._closed = False
        # Every dataset stays open until close: h5py closes a dataset when its last Python object
        # dies, which writes its cached chunks, and a write failing there (disk full) is printed
        # and swallowed, leaving a file with missing chunks. Kept open, chunks are written in a
        # call that raises (a write, or the flush in close).
        self._datasets: dict[str, h5py.Dataset] = {}
        try:
            self._init_layout(source, command, image_root, compression)
        except BaseException as err:
            self.abort()
            raise _write_failure(err, self.path) from None

    # -- layout ---------------------------------------------------------------------------------
    def _init_layout(self, source: str, command: str, image_root: str | os.PathLike | None, compression: str) -> None:
        """The header attributes and every table, empty and growable (docs/format.md lists them)."""
        self._write_header(source, command, image_root, compression)
        self._create_frame_tables()
        self._create_ragged_tables()
        self._create_camera_tables()
        self._create_scene_tables()

    def _write_header(self, source: str, command: str, image_root: str | os.PathLike | None, compression: str) -> None:
        attrs = self._h5.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["complete"] = 0
        attrs["grid"] = self.grid.to_json()
        attrs["taxonomy"] = self.taxonomy.name
        attrs["class_names"] = json.dumps(list(self.taxonomy.class_names))
        attrs["free_index"] = self.taxonomy.free_index
        attrs["source"] = source
        attrs["command"] = command
        attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        attrs["camera_names"] = json.dumps(self.camera_names)
        attrs["image_root"] = str(image_root) if image_root is not None else ""
        attrs["compression"] = compression
        # Label z = ego z + z_offset: the vertical convention the grid's z range is in (0: the ego frame).
        attrs["z_offset"] = self.z_offset

    def _table(self, group: h5py.Group, name: str, shape: tuple[int, ...], dtype: np.dtype | type,
               chunks: tuple[int, ...] | None = None, compress: bool = True) -> None:
        """An empty table of ``shape`` rows, growable along its first axis, kept open (see __init__)."""
        # Small per-frame tables are compressed too: their unused chunk tails are zeros.
        self._datasets[f"{group.name.strip('/')}/{name}"] = group.create_dataset(
            name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks or (1024, *shape),
            **(self._compression if compress else {}))

    def _create_frame_tables(self) -> None:
        P = (self.grid.num_voxels + 7) // 8  # bytes of one bit-packed grid
        frames = self._h5.create_group("frames")
        self._table(frames, "scene_index", (), np.int32)
        self._table(frames, "token", (), _STR)
        self._table(frames, "timestamp", (), np.int64)
        self._table(frames, "global_from_ego", (4, 4), np.float64, chunks=(256, 4, 4))
        self._table(frames, "source_tokens", (), _STR)
        self._table(frames, "flags", (), np.uint8)
        for name in ("labels_range", "top2_range", "points_range"):  # (start, count) in the ragged tables
            self._table(frames, name, (2,), np.int64)
        self._table(frames, "lidar_origin", (3,), np.float32)
        self._table(frames, "ego_from_lidar", (4, 4), np.float64, chunks=(256, 4, 4))
        for name in _PACKED_FIELDS:
            # One chunk per frame: O(1) random access decodes exactly one frame's bytes.
            self._table(frames, name, (P,), np.uint8, chunks=(1, P))

    def _create_ragged_tables(self) -> None:
        ragged = self._h5.create_group("ragged")
        self._table(ragged, "labels", (), np.uint8, chunks=(_RAGGED_CHUNK,))
        self._table(ragged, "top2_labels", (2,), np.uint8, chunks=(_RAGGED_CHUNK // 2, 2))
        self._table(ragged, "top2_logits", (2,), np.float16, chunks=(_RAGGED_CHUNK // 2, 2))
        self._table(ragged, "points", (3,), np.float32, chunks=(_RAGGED_CHUNK // 4, 3))
        # Encoded images are already compressed (JPEG / PNG): stored as they are.
        self._table(ragged, "images", (), np.uint8, chunks=(1 << 20,), compress=False)

    def _create_camera_tables(self) -> None:
        C = max(len(self.camera_names), 1)
        cams = self._h5.create_group("cameras")
        self._table(cams, "intrinsic", (C, 3, 3), np.float64, chunks=(256, C, 3, 3))
        self._table(cams, "ego_from_cam", (C, 4, 4), np.float64, chunks=(256, C, 4, 4))
        self._table(cams, "width", (C,), np.int32)
        self._table(cams, "height", (C,), np.int32)
        self._table(cams, "timestamp", (C,), np.int64)
        self._table(cams, "image_path", (C,), _STR)
        self._table(cams, "image_range", (C, 2), np.int64)

    def _create_scene_tables(self) -> None:
        scenes = self._h5.create_group("scenes")
        self._table(scenes, "name", (), _STR, chunks=(256,))
        self._table(scenes, "start", (), np.int64, chunks=(256,))
        self._table(scenes, "stop", (), np.int64, chunks=(256,))

    # -- appending ------------------------------------------------------------------------------
    def _ds(self, name: str) -> h5py.Dataset:
        return self._datasets[name]

    @staticmethod
    def _append(dataset: h5py.Dataset, values: np.ndarray) -> tuple[int, int]:
        start = dataset.shape[0]
        count = len(values)
        if count:
            dataset.resize(start + count, axis=0)
            dataset[start:start + count] = values
        return start, count

    def write_scene(self, name: str, frames: Iterable[OccFrame]) -> int:
        """Append one scene's frames (in time order); returns the number of frames written.

        A failed write raises ``OSError(errno, problem, <path>)``; the file is then abandoned
        (nothing more can be written, ``close`` raises, the temporary file is removed on exit).
        """
        try:
            return self._write_scene(name, frames)
        except (OSError, RuntimeError) as err:
            raise self._failed(err) from None

    def _failed(self, err: BaseException) -> BaseException:
        """``err`` as the caller should see it; an HDF5 write failure abandons the file at once."""
        failure = _write_failure(err, self.path)
        if failure is not err:
            self.abort()
        return failure

    def _write_scene(self, name: str, frames: Iterable[OccFrame]) -> int:
        if self._closed:
            raise OccFormatError(f"{self.path}: writer already closed")
        if name in self._scene_names:
            raise OccFormatError(f"{self.path}: scene '{name}' written twice")
        start = self._num_frames
        scene_index = len(self._scene_names)
        for frame in frames:
            self._write_frame(scene_index, frame)
        self._append_scene(name, start)
        return self._num_frames - start

    def _append_scene(self, name: str, start: int) -> None:
        """The scene's row in /scenes: its frames are ``[start, frames written so far)``."""
        self._append(self._ds("scenes/name"), np.array([name], dtype=object))
        self._append(self._ds("scenes/start"), np.array([start]))
        self._append(self._ds("scenes/stop"), np.array([self._num_frames]))
        self._scene_names.add(name)

    def _write_frame(self, scene_index: int, frame: OccFrame) -> None:
        """Append one frame: its ragged rows and bit-packed grids, then its rows in /frames and
        /cameras, each part checked before it is written (OccFormatError naming the frame)."""
        where = f"frame {self._num_frames} ('{frame.token}')"
        occupancy = np.asarray(frame.occupancy, dtype=bool)
        labels_range = self._write_labels(frame, occupancy, where)
        flags = self._write_grids(frame, occupancy, where)
        top2_range = self._write_top2(frame, occupancy, where)
        points_range = (self._ds("ragged/points").shape[0], 0)
        if frame.points is not None:
            points_range = self._append(self._ds("ragged/points"), np.asarray(frame.points, dtype=np.float32)[:, :3])
        flags |= ((FLAG_SEMANTICS if frame.semantics is not None else 0)
                  | (FLAG_TOP2 if frame.top2_labels is not None else 0)
                  | (FLAG_POINTS if frame.points is not None else 0))
        self._write_frame_row(scene_index, frame, flags, (labels_range, top2_range, points_range), where)
        self._write_cameras(frame.cameras, where)
        self._num_frames += 1

    def _write_labels(self, frame: OccFrame, occupancy: np.ndarray, where: str) -> tuple[int, int]:
        """The labels of the occupied voxels into ragged/labels; their (start, count) there."""
        if frame.semantics is None:
            return self._ds("ragged/labels").shape[0], 0
        shape = self.grid.shape
        semantics = np.asarray(frame.semantics)
        if semantics.shape != shape or semantics.dtype != np.uint8:
            raise OccFormatError(f"{self.path}: {where} semantics must be uint8 {shape}, "
                                 f"got {semantics.dtype} {semantics.shape}")
        # Labels are stored for occupied voxels only; free must be exactly the non-occupied set.
        if not np.array_equal(semantics != self.taxonomy.free_index, occupancy):
            raise OccFormatError(f"{self.path}: {where} semantics disagree with occupancy "
                                 "(free voxels must be exactly the unoccupied ones)")
        return self._append(self._ds("ragged/labels"), semantics.ravel()[occupancy.ravel()])

    def _write_grids(self, frame: OccFrame, occupancy: np.ndarray, where: str) -> int:
        """The frame's bit-packed grids, one chunk each; the flags of those it has."""
        flags, i = 0, self._num_frames
        for name, bits in self._encode_grids(frame, occupancy, where).items():
            flags |= _PACKED_FIELDS[name]
            ds = self._ds(f"frames/{name}")
            ds.resize(i + 1, axis=0)
            ds[i] = np.packbits(bits)  # the rows of absent fields are never allocated: no space used
        return flags

    def _write_top2(self, frame: OccFrame, occupancy: np.ndarray, where: str) -> tuple[int, int]:
        """Top-2 labels and logits (one row per voxel of the support) into ragged/; their (start, count)."""
        if frame.top2_support is not None and frame.top2_labels is None:
            raise OccFormatError(f"{self.path}: {where} has a top2_support grid but no top2 arrays")
        if frame.top2_labels is None:
            return self._ds("ragged/top2_labels").shape[0], 0
        support = occupancy if frame.top2_support is None else np.asarray(frame.top2_support, dtype=bool)
        rows = int(support.sum())
        top2_labels = np.asarray(frame.top2_labels, dtype=np.uint8)
        top2_logits = np.asarray(frame.top2_logits, dtype=np.float16)
        if top2_labels.shape != (rows, 2) or top2_logits.shape != (rows, 2):
            what = "occupied voxel" if frame.top2_support is None else "voxel of top2_support"
            raise OccFormatError(f"{self.path}: {where} top2 arrays must be ({rows}, 2), one row per {what}")
        top2_range = self._append(self._ds("ragged/top2_labels"), top2_labels)
        self._append(self._ds("ragged/top2_logits"), top2_logits)
        return top2_range

    def _write_frame_row(self, scene_index: int, frame: OccFrame, flags: int,
                         ranges: tuple[tuple[int, int], tuple[int, int], tuple[int, int]], where: str) -> None:
        """The frame's row of every /frames table; ``ranges``: its (start, count) in ragged/labels,
        ragged/top2_* and ragged/points."""
        # NaN marks "unknown" so that readers can tell it from a sensor at the ego origin.
        origin = (np.full(3, np.nan, np.float32) if frame.lidar_origin is None
                  else np.asarray(frame.lidar_origin, np.float32))
        ego_from_lidar = (np.full((4, 4), np.nan) if frame.ego_from_lidar is None
                          else np.asarray(frame.ego_from_lidar, np.float64))
        if ego_from_lidar.shape != (4, 4):
            raise OccFormatError(f"{self.path}: {where} ego_from_lidar must be 4x4, got {ego_from_lidar.shape}")
        pose = np.asarray(frame.global_from_ego, dtype=np.float64)
        if pose.shape != (4, 4):
            raise OccFormatError(f"{self.path}: {where} global_from_ego must be 4x4, got {pose.shape}")
        source_tokens = json.dumps(frame.source_tokens, sort_keys=True)
        labels_range, top2_range, points_range = ranges
        self._append(self._ds("frames/scene_index"), np.array([scene_index]))
        self._append(self._ds("frames/token"), np.array([frame.token], dtype=object))
        self._append(self._ds("frames/timestamp"), np.array([frame.timestamp], dtype=np.int64))
        self._append(self._ds("frames/global_from_ego"), pose[None])
        self._append(self._ds("frames/source_tokens"), np.array([source_tokens], dtype=object))
        self._append(self._ds("frames/flags"), np.array([flags], dtype=np.uint8))
        self._append(self._ds("frames/labels_range"), np.array([labels_range]))
        self._append(self._ds("frames/top2_range"), np.array([top2_range]))
        self._append(self._ds("frames/points_range"), np.array([points_range]))
        self._append(self._ds("frames/lidar_origin"), origin[None])
        self._append(self._ds("frames/ego_from_lidar"), ego_from_lidar[None])

    def copy_scene(self, source: OccDataset, name: str) -> int:
        """Append a scene of another file of the same grid, taxonomy, cameras and compression,
        copying the compressed grid chunks as they are (no decode / re-encode); returns frames.
        A failed write raises like :meth:`write_scene`; a source that cannot be read raises
        :class:`OccFormatError` naming it."""
        try:
            return self._copy_scene(source, name)
        except (OSError, RuntimeError) as err:
            failure = self._failed(err)
            if failure is err:  # no errno: HDF5 could not read (decode) the source's data
                where = source._scene_location(name)[0].path
                raise OccFormatError(f"{where}: scene '{name}' cannot be read (corrupt or truncated data: "
                                     f"{_h5_reason(err)})") from None
            raise failure from None

    def _copy_scene(self, source: OccDataset, name: str) -> int:
        if name in self._scene_names:
            raise OccFormatError(f"{self.path}: scene '{name}' written twice")
        shard, first, count = source._scene_location(name)
        self._check_copyable(shard)
        src, rows = shard.h5(), slice(first, first + count)
        start = self._num_frames
        ranges = self._copy_ragged(src, rows)
        self._copy_tables(src, rows, ranges)
        self._copy_grid_chunks(src, first, count)
        self._num_frames += count
        self._append_scene(name, start)
        return count

    def _check_copyable(self, shard: _Shard) -> None:
        """Chunks and rows copy as they are only between files of one layout and encoding."""
        if (shard.camera_names != self.camera_names or not shard.grid.same_geometry(self.grid)
                or shard.attrs.get("compression") != self._h5.attrs["compression"]
                or _z_offset(shard) != self.z_offset):
            raise OccFormatError(f"{shard.path}: cameras, grid, vertical offset or compression differ from "
                                 f"{self.path}'s; cannot copy scenes")

    def _copy_ragged(self, src: h5py.File, rows: slice) -> dict[str, np.ndarray]:
        """Append the ragged rows of the source frames ``rows``; range table -> the frames' ranges,
        shifted to where the rows now lie."""
        # Ragged data of a scene are contiguous (frames are appended in order): copy each block
        # once and shift the frames' ranges by the block's new position.
        count = rows.stop - rows.start
        ranges = {}
        for table, ragged in (("frames/labels_range", ("ragged/labels",)),
                              ("frames/top2_range", ("ragged/top2_labels", "ragged/top2_logits")),
                              ("frames/points_range", ("ragged/points",)),
                              ("cameras/image_range", ("ragged/images",))):
            old = src[table][rows]
            lo = int(old[..., 0].min(initial=0)) if count else 0
            hi = int((old[..., 0] + old[..., 1]).max(initial=lo)) if count else 0
            new_base = self._ds(ragged[0]).shape[0]
            for name in ragged:
                self._append(self._ds(name), src[name][lo:hi])
            shifted = old.copy()
            shifted[..., 0] += new_base - lo
            ranges[table] = shifted
        return ranges

    def _copy_tables(self, src: h5py.File, rows: slice, ranges: dict[str, np.ndarray]) -> None:
        """Append the source frames' rows of every /frames and /cameras table but the packed grids;
        ranges from :meth:`_copy_ragged`, the scene index of the scene being added."""
        count = rows.stop - rows.start
        for group in ("frames", "cameras"):
            for key, dataset in src[group].items():
                path = f"{group}/{key}"
                if key in _PACKED_FIELDS:
                    continue
                if path in ranges:
                    values = ranges[path]
                elif path == "frames/scene_index":
                    values = np.full(count, len(self._scene_names), np.int32)
                else:
                    values = dataset[rows]
                self._append(self._ds(path), values)
        if "ego_from_lidar" not in src["frames"]:  # a file written before the calibration was stored: unknown
            self._append(self._ds("frames/ego_from_lidar"), np.full((count, 4, 4), np.nan))

    def _copy_grid_chunks(self, src: h5py.File, first: int, count: int) -> None:
        """The source frames' compressed grid chunks, copied as they are to the next ``count`` rows."""
        start = self._num_frames
        flags = src["frames/flags"][first:first + count]
        for key, flag in _PACKED_FIELDS.items():
            target = self._ds(f"frames/{key}")
            target.resize(start + count, axis=0)
            for k in range(count):
                if flag == 0 or flags[k] & flag:  # rows of absent fields were never allocated
                    filter_mask, chunk = src[f"frames/{key}"].id.read_direct_chunk((first + k, 0))
                    target.id.write_direct_chunk((start + k, 0), chunk, filter_mask)

    def _encode_grids(self, frame: OccFrame, occupancy: np.ndarray, where: str) -> dict[str, np.ndarray]:
        """The bit-packed grids of a frame, masks relative to their references (see _encode_xor)."""
        shape = self.grid.shape
        grids = {name: getattr(frame, name) for name in ("mask_lidar", "mask_camera", "binary_pred", "top2_support")}
        for name, grid in grids.items():
            if grid is not None and np.shape(grid) != shape:
                raise OccFormatError(f"{self.path}: {where} {name} has shape {np.shape(grid)}, "
                                     f"the file's grid is {shape}")
        if occupancy.shape != shape:
            raise OccFormatError(f"{self.path}: {where} occupancy has shape {occupancy.shape}, "
                                 f"the file's grid is {shape}")
        out = {"occupancy": occupancy.reshape(-1)}
        mask_lidar = grids["mask_lidar"]
        if mask_lidar is not None:
            mask_lidar = np.asarray(mask_lidar, dtype=bool)
            out["mask_lidar"] = _encode_xor(mask_lidar, occupancy).reshape(-1)
        if grids["mask_camera"] is not None:
            reference = mask_lidar if mask_lidar is not None else occupancy
            out["mask_camera"] = _encode_reordered(np.asarray(grids["mask_camera"], dtype=bool), reference)
        if grids["binary_pred"] is not None:
            out["binary_pred"] = _encode_xor(np.asarray(grids["binary_pred"], dtype=bool), occupancy).reshape(-1)
        if grids["top2_support"] is not None:
            support = np.asarray(grids["top2_support"], dtype=bool)
            if np.any(occupancy & ~support):
                raise OccFormatError(f"{self.path}: {where} top2_support must contain every occupied voxel")
            out["top2_support"] = _encode_xor(support, occupancy).reshape(-1)
        return out

    def _write_cameras(self, cameras: list[Camera], where: str) -> None:
        C = max(len(self.camera_names), 1)
        if len(cameras) > len(self.camera_names):
            raise OccFormatError(f"{self.path}: {where} has {len(cameras)} cameras, "
                                 f"the file declares {self.camera_names}")
        intrinsic = np.zeros((C, 3, 3))
        ego_from_cam = np.zeros((C, 4, 4))
        width = np.zeros(C, np.int32)
        height = np.zeros(C, np.int32)
        stamp = np.zeros(C, np.int64)
        paths = np.array([""] * C, dtype=object)
        image_range = np.zeros((C, 2), np.int64)
        image_range[:, 0] = self._ds("ragged/images").shape[0]
        for cam in cameras:
            if cam.name not in self.camera_names:
                raise OccFormatError(f"{self.path}: {where} camera '{cam.name}' is not one of {self.camera_names}")
            c = self.camera_names.index(cam.name)
            intrinsic[c] = cam.intrinsic
            ego_from_cam[c] = cam.ego_from_cam
            width[c], height[c], stamp[c] = cam.width, cam.height, cam.timestamp
            paths[c] = cam.image_path or ""
            if cam.image_bytes is not None:
                image_range[c] = self._append(self._ds("ragged/images"), np.frombuffer(cam.image_bytes, dtype=np.uint8))
        for name, value in (("intrinsic", intrinsic), ("ego_from_cam", ego_from_cam), ("width", width),
                            ("height", height), ("timestamp", stamp), ("image_path", paths),
                            ("image_range", image_range)):
            self._append(self._ds(f"cameras/{name}"), value[None])

    # -- finishing --------------------------------------------------------------------------------
    def close(self) -> Path:
        """Mark complete, flush to disk and move into place atomically.

        Any failure (disk full, I/O error) raises ``OSError(errno, problem, <path>)`` and removes
        the temporary file: the target keeps what it held before.
        """
        if self._closed:
            return self.path
        try:
            self._h5.attrs["complete"] = 1
            self._h5.attrs["num_frames"] = self._num_frames
            self._h5.attrs["num_scenes"] = len(self._scene_names)
            # Every data byte is written here, where a failure still leaves a file that closes cleanly.
            self._h5.flush()
        except (OSError, RuntimeError) as err:
            self.abort()
            raise _write_failure(err, self.path) from None
        self._closed = True
        try:
            self._h5.close()  # writes the superblock once more; never retried (a second close crashes HDF5)
            with open(self._temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(self._temp, self.path)
        except (OSError, RuntimeError) as err:
            self._remove_temp()
            raise _write_failure(err, self.path) from None
        return self.path

    def abort(self) -> None:
        """Abandon the file: close it without writing anything more, remove the temporary file."""
        if self._closed:
            return
        self._closed = True
        _discard_writes(self._h5)
        try:
            self._h5.close()
        except (OSError, RuntimeError):
            pass  # the bytes went nowhere anyway; what matters is the temporary file's removal
        self._remove_temp()

    def _remove_temp(self) -> None:
        try:
            self._temp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the folder became read-only; the next writer of this target clears it

    def __enter__(self) -> OccWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ResumableWriter:
    """Builds ``out`` scene by scene so that an interrupted job resumes where it stopped.

    Each scene goes to its own complete part file under ``<out>.parts/`` (atomic, like any
    OccWriter file); ``is_done(scene)`` tells which scenes a previous run finished;
    ``finalize()`` merges the parts into ``out`` (atomically) and removes them. Part files are
    independent, so several worker processes may write scenes of the same output at once.
    """

    def __init__(self, out: str | os.PathLike, **writer_kwargs: Any) -> None:  # OccWriter's keywords
        self.out = Path(out)
        self.parts_dir = self.out.with_name(self.out.name + ".parts")
        self.writer_kwargs = writer_kwargs
        self.parts_dir.mkdir(parents=True, exist_ok=True)

    def part_path(self, scene: str) -> Path:
        digest = hashlib.sha1(scene.encode()).hexdigest()[:10]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in scene)[:60]
        return self.parts_dir / f"{safe}-{digest}.h5"

    def is_done(self, scene: str) -> bool:
        path = self.part_path(scene)
        if not path.exists():
            return False
        try:
            validate_file(path)
        except (OccFormatError, OSError, RuntimeError):
            path.unlink(missing_ok=True)  # an unreadable part is redone, never trusted
            return False
        return True

    def write_scene(self, scene: str, frames: Iterable[OccFrame]) -> int:
        with OccWriter(self.part_path(scene), **self.writer_kwargs) as writer:
            return writer.write_scene(scene, frames)

    def finalize(self, scene_order: Sequence[str] | None = None) -> Path:
        """Merge the finished scenes (in ``scene_order``, default: by name) into ``out``."""
        parts = {}
        for path in sorted(self.parts_dir.glob("*.h5")):
            try:
                dataset = OccDataset(path)
            except OccFormatError as err:  # damaged since is_done checked it: redone by the next run
                path.unlink(missing_ok=True)
                raise OccFormatError(f"{err}; removed it, rerun the same command to redo its scene") from None
            for scene in dataset.scenes:
                parts[scene.name] = dataset
        order = list(scene_order) if scene_order is not None else sorted(parts)
        missing = [s for s in order if s not in parts]
        if missing:
            raise OccFormatError(f"{self.parts_dir}: scenes not finished yet: {', '.join(missing[:5])}")
        try:
            with OccWriter(self.out, **self.writer_kwargs) as writer:
                for scene in order:
                    writer.copy_scene(parts[scene], scene)
        finally:
            for dataset in set(parts.values()):
                dataset.close()
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _open_checked(path: Path) -> h5py.File:
    if not path.exists():
        raise OccFormatError(f"{path}: no such file")
    if path.is_dir():
        raise OccFormatError(f"{path}: is a directory, expected a .h5 file")
    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise OccFormatError(f"{path}: not a readable HDF5 file (truncated, corrupt or another format)") from None
    attrs = h5.attrs
    name = attrs.get("format")
    if name != FORMAT_NAME:
        h5.close()
        raise OccFormatError(f"{path}: HDF5 file but not a b2s occupancy file (format attribute {name!r})")
    version = int(attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        h5.close()
        raise OccFormatError(f"{path}: format version {version}, this b2s reads version {FORMAT_VERSION}; "
                             f"convert it again with this version of b2s")
    if int(attrs.get("complete", 0)) != 1:
        h5.close()
        raise OccFormatError(f"{path}: incomplete file (the writer did not finish)")
    return h5


@dataclass
class _Shard:
    path: Path
    grid: VoxelGrid
    taxonomy: Taxonomy
    attrs: dict
    num_frames: int
    scene_names: list[str]
    scene_ranges: np.ndarray  # (S, 2) local [start, stop)
    flags: np.ndarray  # (N,) uint8
    labels_range: np.ndarray  # (N, 2)
    top2_range: np.ndarray  # (N, 2)
    points_range: np.ndarray  # (N, 2)
    scene_index: np.ndarray  # (N,)
    camera_names: list[str]
    has_ego_from_lidar: bool = False  # files written before frames/ego_from_lidar existed read it as unknown
    handles: dict = field(default_factory=dict)  # pid -> (h5py.File, {path: Dataset}); never shared across fork

    def h5(self) -> h5py.File:
        return self._open()[0]

    def ds(self, name: str) -> h5py.Dataset:
        """A dataset by path; objects are cached because h5py's group lookup costs ~80 us each."""
        cache = self._open()[1]
        dataset = cache.get(name)
        if dataset is None:
            dataset = cache[name] = self._open()[0][name]
        return dataset

    def _open(self) -> tuple[h5py.File, dict]:
        pid = os.getpid()
        entry = self.handles.get(pid)
        if entry is None:
            entry = self.handles[pid] = (h5py.File(self.path, "r"), {})
        return entry


def _load_shard(path: Path) -> _Shard:
    h5 = _open_checked(path)
    try:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
        grid, taxonomy, camera_names = _header_facts(path, attrs)
        frames = _group(h5, path, "frames")
        scenes = _group(h5, path, "scenes")
        names = [_text(n) for n in _whole(path, scenes, "scenes/name")]
        ranges = (np.stack([_whole(path, scenes, "scenes/start"), _whole(path, scenes, "scenes/stop")], axis=1)
                  if names else np.zeros((0, 2), np.int64))
        flags = _whole(path, frames, "frames/flags")
        shard = _Shard(
            path=path, grid=grid, taxonomy=taxonomy, attrs=attrs, num_frames=int(flags.shape[0]),
            scene_names=names, scene_ranges=ranges, flags=flags,
            labels_range=_whole(path, frames, "frames/labels_range"),
            top2_range=_whole(path, frames, "frames/top2_range"),
            points_range=_whole(path, frames, "frames/points_range"),
            scene_index=_whole(path, frames, "frames/scene_index"),
            camera_names=camera_names, has_ego_from_lidar="ego_from_lidar" in frames,
        )
        _check_table_shapes(shard, frames)
        _check_frame_count(shard)
    finally:
        h5.close()
    return shard


def _header_facts(path: Path, attrs: dict) -> tuple[VoxelGrid, Taxonomy, list[str]]:
    """The grid, taxonomy and camera names the header attributes declare."""
    try:
        grid = VoxelGrid.from_dict(json.loads(attrs["grid"]))
        taxonomy = get_taxonomy(attrs["taxonomy"])
    except (KeyError, TypeError, ValueError, GridError, B2SError) as err:  # ValueError: JSONDecodeError too
        raise OccFormatError(f"{path}: bad grid / taxonomy attributes: {err}") from None
    camera_names = _json_attr(path, attrs, "camera_names", [])
    if not isinstance(camera_names, list) or not all(isinstance(c, str) for c in camera_names):
        raise OccFormatError(f"{path}: bad camera_names attribute (expected a JSON list of names)")
    return grid, taxonomy, camera_names


def _check_table_shapes(shard: _Shard, frames: h5py.Group) -> None:
    """Every per-frame table has one row per frame, and the grids one packed grid of the file's size."""
    path, N = shard.path, shard.num_frames
    if shard.has_ego_from_lidar and frames["ego_from_lidar"].shape != (N, 4, 4):
        raise OccFormatError(f"{path}: frames/ego_from_lidar has shape {frames['ego_from_lidar'].shape}, "
                             f"expected ({N}, 4, 4)")
    for name in ("labels_range", "top2_range", "points_range"):
        if getattr(shard, name).shape != (N, 2):
            raise OccFormatError(f"{path}: frames/{name} has shape {getattr(shard, name).shape}, expected ({N}, 2)")
    if shard.scene_index.shape != (N,):
        raise OccFormatError(f"{path}: frames/scene_index has shape {shard.scene_index.shape}, expected ({N},)")
    P = (shard.grid.num_voxels + 7) // 8  # bytes of one bit-packed grid
    if "occupancy" not in frames:
        raise OccFormatError(f"{path}: missing dataset frames/occupancy")
    if frames["occupancy"].shape != (N, P):
        raise OccFormatError(f"{path}: frames/occupancy has shape {frames['occupancy'].shape}, "
                             f"expected ({N}, {P}) for the grid")


def _check_frame_count(shard: _Shard) -> None:
    """The frames stored are those the header declares, and the scenes tile them in order."""
    path, attrs, ranges = shard.path, shard.attrs, shard.scene_ranges
    try:
        declared = int(attrs.get("num_frames", shard.num_frames))
    except (TypeError, ValueError):
        raise OccFormatError(f"{path}: bad num_frames attribute {attrs.get('num_frames')!r}") from None
    if shard.num_frames != declared:
        raise OccFormatError(f"{path}: {shard.num_frames} frames stored, header says {attrs['num_frames']}")
    if len(ranges) and (ranges[-1, 1] != shard.num_frames or np.any(ranges[1:, 0] != ranges[:-1, 1])):
        raise OccFormatError(f"{path}: scene ranges do not tile the frames")


def _z_offset(shard: _Shard) -> float:
    return float(shard.attrs.get("z_offset", 0.0))


def _json_attr(path: Path, attrs: dict, name: str, default: object) -> object:
    try:
        return json.loads(attrs[name]) if name in attrs else default
    except (TypeError, ValueError):  # JSONDecodeError is a ValueError
        raise OccFormatError(f"{path}: attribute {name} is not valid JSON") from None


def _group(h5: h5py.File, path: Path, name: str) -> h5py.Group:
    if not isinstance(h5.get(name), h5py.Group):
        raise OccFormatError(f"{path}: missing group /{name}")
    return h5[name]


def _whole(path: Path, group: h5py.Group, name: str) -> np.ndarray:
    """One small per-frame (or per-scene) table read whole at open, its faults named."""
    key = name.split("/")[-1]
    if not isinstance(group.get(key), h5py.Dataset):
        raise OccFormatError(f"{path}: missing dataset {name}")
    try:
        return group[key][:]
    except OSError as err:  # h5py: a chunk whose compressed bytes do not decode
        raise OccFormatError(f"{path}: {name} cannot be decoded "
                             f"(corrupt or truncated data: {_h5_reason(err)})") from None


def _h5_reason(err: OSError) -> str:
    # h5py's messages repeat the call chain ("Can't synchronously read data (...)"): keep the innermost part.
    text = str(err)
    return text[text.rfind("(") + 1:].rstrip(")") if "(" in text else text


def validate_file(path: str | os.PathLike) -> dict:
    """Check a file and return its header attributes; raises OccFormatError naming the problem."""
    return dict(_load_shard(Path(path)).attrs)


def check_frames(path: str | os.PathLike) -> Iterator[OccFormatError]:
    """Decode every stored chunk of every frame of one file (grids, ragged rows, embedded images);
    yields one :class:`OccFormatError` per damaged frame, in frame order. A file that does not open
    raises. Linear time: reads the whole file (images referenced by path are not read)."""
    dataset = OccDataset(path)
    try:
        for index in range(len(dataset)):
            try:
                dataset.read(index, images="embedded")
            except OccFormatError as err:
                yield err
    finally:
        dataset.close()


class _FrameDamage(Exception):
    """What is wrong with one frame's stored data; ``OccDataset.read`` adds the file and frame."""


def _row(shard: _Shard, name: str, i: int) -> np.ndarray:
    """Row ``i`` of a per-frame dataset; a missing dataset or an undecodable chunk is frame damage."""
    try:
        return shard.ds(name)[i]
    except KeyError:
        raise _FrameDamage(f"missing dataset {name}") from None
    except OSError as err:  # h5py: the chunk's compressed bytes do not decode
        raise _FrameDamage(f"{name} cannot be decoded (corrupt or truncated data: {_h5_reason(err)})") from None
    except IndexError:
        raise _FrameDamage(f"{name} has no row {i}") from None


def _ragged(shard: _Shard, name: str, range_name: str, start_count: np.ndarray, expected: int | None = None,
            what: str = "") -> np.ndarray:
    """The rows ``[start, start + count)`` of a ragged dataset, checked against its length and,
    when ``expected`` is given, against the number of rows the frame needs."""
    start, count = (int(v) for v in start_count)
    if expected is not None and count != expected:
        raise _FrameDamage(f"{range_name} count {count} does not match the frame's {expected} {what}")
    try:
        dataset = shard.ds(name)
    except KeyError:
        raise _FrameDamage(f"missing dataset {name}") from None
    if start < 0 or count < 0 or start + count > dataset.shape[0]:
        raise _FrameDamage(f"{range_name} ({start}, {count}) lies outside {name} ({dataset.shape[0]} rows)")
    try:
        return dataset[start:start + count]
    except OSError as err:
        raise _FrameDamage(f"{name} rows {start}..{start + count} cannot be decoded "
                           f"(corrupt or truncated data: {_h5_reason(err)})") from None


def _frame_label(shard: _Shard, i: int) -> str:
    """" (scene S, token T)" of a frame, as far as those can still be read."""
    try:
        scene = shard.scene_names[int(shard.scene_index[i])]
    except (IndexError, ValueError):
        return ""
    try:
        return f" (scene {scene}, token {_text(shard.ds('frames/token')[i])})"
    except (KeyError, OSError, IndexError):
        return f" (scene {scene})"


def _decode_masks(frame: OccFrame, shard: _Shard, i: int, fields: Sequence[str]) -> None:
    """Set the frame's mask_lidar and mask_camera, those asked for and stored; mask_lidar is decoded
    for mask_camera too, being its reference (see _encode_reordered)."""
    flags, shape = int(shard.flags[i]), shard.grid.shape
    mask_lidar = None
    if flags & FLAG_MASK_LIDAR and {"mask_lidar", "mask_camera"} & set(fields):
        mask_lidar = np.logical_xor(_unpack(_row(shard, "frames/mask_lidar", i), shape), frame.occupancy)
        if "mask_lidar" in fields:
            frame.mask_lidar = mask_lidar
    if "mask_camera" in fields and flags & FLAG_MASK_CAMERA:
        reference = mask_lidar if mask_lidar is not None else frame.occupancy
        bits = _unpack(_row(shard, "frames/mask_camera", i), shape).reshape(-1)
        frame.mask_camera = _decode_reordered(bits, reference)


def _decode_top2(frame: OccFrame, shard: _Shard, i: int) -> None:
    """Set the frame's top2_support, top2_labels and top2_logits, those stored; the arrays have one row
    per voxel of the support (the occupied voxels when the frame stores none)."""
    flags = int(shard.flags[i])
    if flags & FLAG_TOP2_SUPPORT:
        frame.top2_support = np.logical_xor(_unpack(_row(shard, "frames/top2_support", i), shard.grid.shape),
                                            frame.occupancy)
    if flags & FLAG_TOP2:
        support = frame.top2_support if frame.top2_support is not None else frame.occupancy
        voxels = int(support.sum())
        frame.top2_labels = _ragged(shard, "ragged/top2_labels", "frames/top2_range", shard.top2_range[i], voxels,
                                    "Top2 voxels")
        frame.top2_logits = _ragged(shard, "ragged/top2_logits", "frames/top2_range", shard.top2_range[i], voxels,
                                    "Top2 voxels")


class OccDataset:
    """Read-only view of one or several shards as one sequence of frames.

    Cost: opening reads each shard's small per-frame index (linear in frames, a few bytes each);
    ``ds[i]`` is constant time (one chunk per grid). HDF5 handles are opened lazily per process,
    so a dataset created before DataLoader workers fork is safe to use in them.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                 image_root: str | None = None) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise OccFormatError("no occupancy files given")
        self._shards = [_load_shard(Path(p)) for p in paths]
        first = self._shards[0]
        for shard in self._shards[1:]:
            if not shard.grid.same_geometry(first.grid):
                raise OccFormatError(f"{shard.path}: grid {shard.grid.describe()} differs from {first.path}'s "
                                     f"{first.grid.describe()}")
            if shard.taxonomy.name != first.taxonomy.name:
                raise OccFormatError(f"{shard.path}: taxonomy '{shard.taxonomy.name}' differs from "
                                     f"{first.path}'s '{first.taxonomy.name}'")
            if _z_offset(shard) != _z_offset(first):
                raise OccFormatError(f"{shard.path}: vertical offset z_offset={_z_offset(shard):g} m differs from "
                                     f"{first.path}'s {_z_offset(first):g} m")
        self.grid: VoxelGrid = first.grid
        self.taxonomy: Taxonomy = first.taxonomy
        self.source: str = first.attrs.get("source", "")
        self.z_offset: float = _z_offset(first)  # label z = ego z + z_offset (files before it: 0)
        self.camera_names: list[str] = list(first.camera_names)
        self._image_root_override = image_root
        self._offsets = np.cumsum([0] + [s.num_frames for s in self._shards])
        self.scenes: list[SceneInfo] = []
        self._scene_by_name: dict[str, SceneInfo] = {}
        self._scene_shard: dict[str, tuple[int, int, int]] = {}  # name -> (shard index, local start, frames)
        for shard_index, (offset, shard) in enumerate(zip(self._offsets, self._shards)):
            for name, (start, stop) in zip(shard.scene_names, shard.scene_ranges):
                if name in self._scene_by_name:
                    raise OccFormatError(f"{shard.path}: scene '{name}' also appears in another shard")
                info = SceneInfo(name, int(offset + start), int(offset + stop))
                self.scenes.append(info)
                self._scene_by_name[name] = info
                self._scene_shard[name] = (shard_index, int(start), int(stop - start))

    # -- sizes and lookup -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self._shards]

    def _locate(self, index: int) -> tuple[_Shard, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range (0..{len(self) - 1})")
        shard_index = bisect_right(self._offsets, index) - 1
        return self._shards[shard_index], int(index - self._offsets[shard_index])

    def scene_indices(self, name: str) -> range:
        """Global frame indices of a scene, in time order (constant time)."""
        try:
            info = self._scene_by_name[name]
        except KeyError:
            raise OccFormatError(f"scene '{name}' not in {', '.join(str(p) for p in self.paths)}") from None
        return range(info.start, info.stop)

    def _scene_location(self, name: str) -> tuple[_Shard, int, int]:
        self.scene_indices(name)  # the error for an unknown scene
        shard_index, start, count = self._scene_shard[name]
        return self._shards[shard_index], start, count

    def tokens(self) -> list[str]:
        """Every frame's token, in frame order, without decoding any grid (linear time)."""
        out: list[str] = []
        for shard in self._shards:
            try:
                out.extend(_text(t) for t in shard.ds("frames/token")[:])
            except (KeyError, OSError) as err:
                raise OccFormatError(f"{shard.path}: frames/token cannot be read ({err})") from None
        return out

    def scene_of(self, index: int) -> str:
        shard, local = self._locate(index)
        return shard.scene_names[int(shard.scene_index[local])]

    def flags(self, index: int) -> int:
        shard, local = self._locate(index)
        return int(shard.flags[local])

    def count_flag(self, flag: int) -> int:
        """How many frames carry the optional field ``flag`` (FLAG_SEMANTICS, ...)."""
        return int(sum(np.count_nonzero(s.flags & flag) for s in self._shards))

    # -- frames -----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> OccFrame:
        return self.read(index)

    def __iter__(self) -> Iterator[OccFrame]:
        for i in range(len(self)):
            yield self.read(i)

    def read(self, index: int, fields: Sequence[str] = FIELDS, images: bool | str = False) -> OccFrame:
        """One frame; ``fields`` limits what is decoded. ``images``: False (paths only), True
        (bytes of every image, embedded or read from image_root) or "embedded" (embedded ones only).
        A frame whose stored data are damaged raises :class:`OccFormatError` naming the file, the
        frame and what is wrong."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise OccFormatError(f"unknown fields {sorted(unknown)}; choose from {FIELDS}")
        shard, i = self._locate(index)
        try:
            return self._decode(shard, i, fields, images)
        except _FrameDamage as damage:
            raise OccFormatError(f"{shard.path}: frame {i}{_frame_label(shard, i)}: {damage}") from None

    def _decode(self, shard: _Shard, i: int, fields: Sequence[str], images: bool | str) -> OccFrame:
        """Frame ``i`` of ``shard``: its fixed fields, then the optional ones asked for and stored
        (grids relative to their references: see _encode_xor)."""
        flags = int(shard.flags[i])
        # always decoded: it locates the stored labels and is the reference of the other grids
        occupancy = _unpack(_row(shard, "frames/occupancy", i), shard.grid.shape)
        frame = self._decode_fixed(shard, i, occupancy, fields, images)
        if "semantics" in fields and flags & FLAG_SEMANTICS:
            labels = _ragged(shard, "ragged/labels", "frames/labels_range", shard.labels_range[i], int(occupancy.sum()),
                             "occupied voxels")
            semantics = np.full(shard.grid.shape, shard.taxonomy.free_index, dtype=np.uint8)
            semantics.reshape(-1)[occupancy.reshape(-1)] = labels
            frame.semantics = semantics
        _decode_masks(frame, shard, i, fields)
        if "binary_pred" in fields and flags & FLAG_BINARY_PRED:
            bits = _unpack(_row(shard, "frames/binary_pred", i), shard.grid.shape)
            frame.binary_pred = np.logical_xor(bits, occupancy)
        if "top2" in fields:
            _decode_top2(frame, shard, i)
        if "points" in fields and flags & FLAG_POINTS:
            frame.points = _ragged(shard, "ragged/points", "frames/points_range", shard.points_range[i])
        origin = _row(shard, "frames/lidar_origin", i)
        frame.lidar_origin = origin if np.isfinite(origin).all() else None
        if shard.has_ego_from_lidar:
            ego_from_lidar = _row(shard, "frames/ego_from_lidar", i)
            frame.ego_from_lidar = ego_from_lidar if np.isfinite(ego_from_lidar).all() else None
        return frame

    def _decode_fixed(self, shard: _Shard, i: int, occupancy: np.ndarray, fields: Sequence[str],
                      images: bool | str) -> OccFrame:
        """The fields every frame has (and its cameras, when asked for)."""
        row = functools.partial(_row, shard)
        scene_index = int(shard.scene_index[i])
        if not 0 <= scene_index < len(shard.scene_names):
            raise _FrameDamage(f"frames/scene_index {scene_index} names no scene "
                               f"(the file has {len(shard.scene_names)})")
        try:
            source_tokens = json.loads(_text(row("frames/source_tokens", i)) or "{}")
        except ValueError:
            raise _FrameDamage("frames/source_tokens is not valid JSON") from None
        return OccFrame(
            scene=shard.scene_names[scene_index],
            token=_text(row("frames/token", i)),
            timestamp=int(row("frames/timestamp", i)),
            global_from_ego=row("frames/global_from_ego", i),
            cameras=self._cameras(shard, i, images) if "cameras" in fields else [],
            occupancy=occupancy,
            source_tokens=source_tokens,
        )

    def _cameras(self, shard: _Shard, i: int, images: bool | str) -> list[Camera]:
        cams = lambda name: _row(shard, f"cameras/{name}", i)  # noqa: E731
        names = shard.camera_names
        width, height = cams("width"), cams("height")
        intrinsic, ego_from_cam = cams("intrinsic"), cams("ego_from_cam")
        stamps, paths, ranges = cams("timestamp"), cams("image_path"), cams("image_range")
        if len(width) < len(names):
            raise _FrameDamage(f"cameras/width has {len(width)} slots, camera_names lists {len(names)}")
        out = []
        for c, name in enumerate(names):
            if width[c] == 0:
                continue  # camera absent in this frame
            camera = Camera(name=name, intrinsic=intrinsic[c], ego_from_cam=ego_from_cam[c], width=int(width[c]),
                            height=int(height[c]), image_path=_text(paths[c]) or None, timestamp=int(stamps[c]))
            if images is True or (images == "embedded" and ranges[c][1] > 0):
                camera.image_bytes = self._image_bytes(shard, paths[c], ranges[c])
            out.append(camera)
        return out

    def _image_bytes(self, shard: _Shard, path: str | bytes, image_range: np.ndarray) -> bytes:
        if int(image_range[1]):
            return _ragged(shard, "ragged/images", "cameras/image_range", image_range).tobytes()
        path = _text(path)
        if not path:
            raise OccFormatError(f"{shard.path}: frame has neither an embedded image nor an image path")
        # The path comes from the file: it must stay inside image_root (b2s_core.paths has the rule).
        problem = relative_path_problem(path)
        if problem:
            raise OccFormatError(f"{shard.path}: image path {path!r} {problem}; it must stay inside the image root")
        root = self._image_root_override or shard.attrs.get("image_root", "")
        full = inside(Path(root), path) if root else Path(posixpath.normpath(path))
        try:
            return full.read_bytes()
        except OSError:
            raise OccFormatError(f"{full}: image file missing (image_root {root!r}; "
                                 "pass image_root= to OccDataset to relocate)") from None

    def image(self, index: int, camera: int | str) -> bytes:
        """The encoded image file of one camera of a frame (embedded, or read from image_root)."""
        shard, i = self._locate(index)
        names = shard.camera_names
        c = names.index(camera) if isinstance(camera, str) else int(camera)
        try:
            return self._image_bytes(shard, _row(shard, "cameras/image_path", i)[c],
                                     _row(shard, "cameras/image_range", i)[c])
        except _FrameDamage as damage:
            raise OccFormatError(f"{shard.path}: frame {i}{_frame_label(shard, i)}: {damage}") from None

    # -- file facts -------------------------------------------------------------------------------
    def attrs(self, shard: int = 0) -> dict:
        return dict(self._shards[shard].attrs)

    def h5(self, shard: int = 0) -> h5py.File:
        """This process's read-only handle of one shard, for low-level inspection."""
        return self._shards[shard].h5()

    def close(self) -> None:
        for shard in self._shards:
            entry = shard.handles.pop(os.getpid(), None)
            if entry is not None:
                entry[0].close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into DataLoader workers (spawn): send paths and indexes, never open handles.
        state = self.__dict__.copy()
        state["_shards"] = [_Shard(**{**s.__dict__, "handles": {}}) for s in self._shards]
        return state


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
