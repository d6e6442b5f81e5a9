"""Other occupancy tools' files: write them from a unified file (``b2s export``), and read their
per-token prediction folders back for scoring (``b2s evaluate --predictions DIR``).

Formats written, one file per frame (``FORMATS``):

* ``occ3d``: ``<out>/gts/<scene>/<token>/labels.npz`` with ``semantics``, ``mask_lidar`` and
  ``mask_camera``, each uint8 (200, 200, 16), x/y/z, free = 17, written with
  ``np.savez_compressed`` in that key order, as the Occ3D-nuScenes files are (CVPR2023-3D-Occupancy-Prediction
  README "Dataset" / ``gts/[scene_name]/[frame_token]/labels.npz``; read by that repository's
  ``projects/mmdet3d_plugin/datasets/pipelines/loading.py: LoadOccGTFromFile`` and FlashOCC's of the
  same name, which index all three keys). Labels converted from such files come back bit for bit.
* ``npz``: ``<out>/<token>.npz`` with one array ``pred``, uint8 (X, Y, Z) on the file's grid, as
  SparseOcc asks for RayIoU (README "evaluate your own model": ``np.savez_compressed(save_path,
  pred=sem_pred)``; ``ray_metrics.py: main`` and ``old_metrics.py: main`` load ``<pred_dir>/<token>.npz``
  and read ``['pred']``, reshaped to [200, 200, 16] as uint8).
* ``openoccupancy``: ``<out>/scene_<scene_token>/occupancy/<lidar_token>.npy``, int64 rows
  ``[z, y, x, label]`` of the listed voxels of the 512 x 512 x 40 grid **in the key frame's
  LIDAR_TOP frame** (OpenOccupancy ``projects/occ_plugin/datasets/pipelines/loading.py:
  LoadOccupancy.__call__``: the path, ``pcd[..., [2, 1, 0]] + 0.5`` -> metres over ``pc_range``,
  label 0 = noise; :data:`b2s_core.grids.OPENOCCUPANCY_LIDAR_GRID`). The frame's stored LiDAR
  calibration (``ego_from_lidar``) moves the ego-frame labels back: each LiDAR voxel takes the label
  of the ego voxel holding its centre, the rule ``b2s convert`` reads these files with.

Prediction folders read (:class:`PredictionFolder`): per data frame, ``<dir>/<token>.npz``
(SparseOcc, the CVPR 2023 challenge submission) or ``<dir>/<scene>/<token>/pred.npz`` (FlashOCC
``nuscenes_dataset_occ.py: evaluate`` with ``show_dir``) or ``<dir>[/gts]/<scene>/<token>/labels.npz``
(an Occ3D tree, e.g. this module's own ``occ3d`` export); the array is ``pred``, else ``semantics``,
else a file's only array (the challenge's ``np.savez_compressed(save_path, occ_pred.astype(np.uint8))``
stores it as ``arr_0``). Nothing is unpickled.

Every name that becomes a path (scene, token) must be one file name (:func:`b2s_core.paths.name_problem`):
a token such as ``../x`` is refused before anything is written. Files are written atomically
(temporary file + rename); the CLI guards the output folder (``b2s_core.output_paths``).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import GRID_PRESETS, OPENOCCUPANCY_LIDAR_GRID, VoxelGrid, resample_rigid
from b2s_core.occfile import FLAG_SEMANTICS, OccDataset
from b2s_core.output_paths import atomic_path
from b2s_core.paths import name_problem
from b2s_core.records import OccFrame
from b2s_core.taxonomy import IGNORE_INDEX

FORMATS = ("occ3d", "npz", "openoccupancy")
OCC3D_KEYS = ("semantics", "mask_lidar", "mask_camera")  # the official files' keys, in their order
Progress = Callable[[int, int], None]  # (frames done, frames in all)


class ExportError(B2SError):
    """A unified file (or frame) that cannot be written in the asked format, or a prediction folder that
    cannot be read."""


@dataclass
class ExportSummary:
    out: Path
    format: str
    frames: int  # frames written (one file each)
    filled_masks: int = 0  # occ3d: frames without a mask, written with an all-ones mask (every voxel observed)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Planned:
    index: int  # frame index in the data file
    relative: str  # the file to write, relative to the output folder


# -- planning: every path checked before the first file is written -----------------------------------
def _named(data_path: Path, label: str, what: str, value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ExportError(f"{data_path}: {label}: {what} {value!r} {problem}, "
                          "so it cannot name a file inside the output folder")
    return value


def _frame_label(scene: str, token: str, index: int) -> str:
    return f"frame {index} (scene {scene}, token {token})"


def _source_tokens(dataset: OccDataset) -> list[dict]:
    """Every frame's ``source_tokens`` (read from the small per-frame table, no grid decoded; linear time)."""
    out: list[dict] = []
    for raw in dataset.h5(0)["frames/source_tokens"][:]:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            out.append(json.loads(text or "{}"))
        except ValueError:
            raise ExportError(f"{dataset.paths[0]}: frames/source_tokens holds a row that is not JSON") from None
    return out


def plan_export(dataset: OccDataset, data_path: Path, fmt: str) -> list[_Planned]:
    """The file of each frame, relative to the output folder; refuses names that are not one file
    name and two frames that would write the same file. Linear in frames, no grid decoded."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    sources = _source_tokens(dataset) if fmt == "openoccupancy" else None
    planned, seen = [], {}
    for i, token in enumerate(dataset.tokens()):
        scene = dataset.scene_of(i)
        label = _frame_label(scene, token, i)
        named = functools.partial(_named, data_path, label)  # (what, value) -> value, if it can name a file
        if fmt == "occ3d":
            relative = f"gts/{named('scene name', scene)}/{named('token', token)}/labels.npz"
        elif fmt == "npz":
            relative = f"{named('token', token)}.npz"
        else:
            relative = _openoccupancy_path(data_path, label, sources[i])
        if relative in seen:
            raise ExportError(f"{data_path}: {label} and frame {seen[relative]} would both write {relative}; "
                              "a frame's file must be unique")
        seen[relative] = i
        planned.append(_Planned(i, relative))
    return planned


def _openoccupancy_path(data_path: Path, label: str, source_tokens: object) -> str:
    """``scene_<scene token>/occupancy/<LiDAR sample_data token>.npy``, from the frame's nuScenes tokens."""
    ids = source_tokens if isinstance(source_tokens, dict) else {}
    missing = [key for key in ("scene", "lidar_sample_data") if not ids.get(key)]
    if missing:
        raise ExportError(f"{data_path}: {label} has no nuScenes {' / '.join(missing)} token in source_tokens, "
                          "which OpenOccupancy names its files by (convert the data with --source nuscenes)")
    named = functools.partial(_named, data_path, label)
    return (f"scene_{named('scene token', ids['scene'])}/occupancy/"
            f"{named('LiDAR sample_data token', ids['lidar_sample_data'])}.npy")


def _check_layout(dataset: OccDataset, data_path: Path, fmt: str) -> None:
    """The grid / taxonomy the format holds, and the fields every frame needs, before any writing."""
    if fmt == "occ3d" and (dataset.taxonomy.name != "occ3d" or not dataset.grid.same_geometry(GRID_PRESETS["occ3d"])):
        raise ExportError(f"{data_path}: Occ3D files hold occ3d labels on the {GRID_PRESETS['occ3d'].describe()} grid; "
                          f"this file has '{dataset.taxonomy.name}' labels on {dataset.grid.describe()}")
    if fmt == "openoccupancy" and dataset.taxonomy.name != "openoccupancy":
        raise ExportError(f"{data_path}: OpenOccupancy files hold openoccupancy labels; "
                          f"this file has '{dataset.taxonomy.name}' labels")
    if dataset.count_flag(FLAG_SEMANTICS) < len(dataset):
        first = next(i for i in range(len(dataset)) if not dataset.flags(i) & FLAG_SEMANTICS)
        raise ExportError(f"{data_path}: frame {first} ('{dataset.tokens()[first]}') has no semantic labels; "
                          "b2s export writes labels, predictions or pseudo-labels, not binary occupancy")


# -- writing ----------------------------------------------------------------------------------------
def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:  # a file object: np.savez would append '.npz' to the temporary name
            np.savez_compressed(handle, **arrays)


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.save(handle, array)


def occ3d_arrays(frame: OccFrame) -> tuple[dict[str, np.ndarray], bool]:
    """An Occ3D ``labels.npz``'s arrays, each (200, 200, 16) uint8, and whether a mask was missing
    (written as all ones: every voxel counts as observed, as the loaders that index it need the key)."""
    grids = {"semantics": np.asarray(frame.semantics, dtype=np.uint8), "mask_lidar": frame.mask_lidar,
             "mask_camera": frame.mask_camera}
    filled = frame.mask_lidar is None or frame.mask_camera is None
    shape = grids["semantics"].shape
    arrays = {key: np.ones(shape, np.uint8) if grids[key] is None else np.asarray(grids[key]).astype(np.uint8)
              for key in OCC3D_KEYS}
    return arrays, filled


def openoccupancy_rows(semantics: np.ndarray, grid: VoxelGrid, ego_from_lidar: np.ndarray,
                       z_offset: float = 0.0) -> np.ndarray:
    """(X, Y, Z) uint8 openoccupancy labels on an ego-frame ``grid`` -> (N, 4) int64 rows ``[z, y, x, label]``
    on OPENOCCUPANCY_LIDAR_GRID (the key frame's LIDAR_TOP frame), C order of (x, y, z).

    ``ego_from_lidar``: (4, 4) the frame's LiDAR calibration. ``z_offset``: the file's vertical
    convention (label z = ego z + z_offset). Empty (0) voxels are not listed; 255 becomes label 0
    (OpenOccupancy's noise), except where the ego voxel lay outside the LiDAR volume when the file
    was read (255 there means "no label", not noise), which stays unlisted.
    """
    lidar = OPENOCCUPANCY_LIDAR_GRID
    # The file's grid in the ego frame: its z range is in the labels' convention, ego z = label z - z_offset.
    ego = VoxelGrid(np.subtract(grid.range_min, (0, 0, z_offset)), np.subtract(grid.range_max, (0, 0, z_offset)),
                    grid.voxel_size, grid.name)
    labels = np.array(semantics, dtype=np.uint8)  # a copy: "no label" voxels are cleared below
    ignored = np.flatnonzero(labels == IGNORE_INDEX)  # (M,) flat, usually a small part of the grid
    centres = ego.center_of(np.stack(np.unravel_index(ignored, ego.shape), axis=1))  # (M, 3) ego frame
    lidar_from_ego = np.linalg.inv(ego_from_lidar)
    beyond = ~lidar.inside(lidar.index_of(centres @ lidar_from_ego[:3, :3].T + lidar_from_ego[:3, 3]))  # (M,)
    labels.ravel()[ignored[beyond]] = 0
    on_lidar = resample_rigid(labels, ego, lidar, lidar_from_ego, outside=0)  # outside the ego grid: not listed
    x, y, z = np.nonzero(on_lidar)
    values = on_lidar[x, y, z].astype(np.int64)
    values[values == IGNORE_INDEX] = 0  # b2s reads OpenOccupancy's noise (0) as 255: back to 0
    return np.stack([z, y, x, values], axis=1).astype(np.int64)


def _check_calibration(dataset: OccDataset, data_path: Path) -> None:
    """OpenOccupancy needs each frame's LiDAR calibration: refuse before writing if one has none."""
    h5 = dataset.h5(0)
    if "frames/ego_from_lidar" not in h5:
        raise ExportError(f"{data_path}: has no LiDAR calibration (written before frames/ego_from_lidar existed); "
                          "convert the data again with this b2s to export OpenOccupancy files")
    known = np.isfinite(h5["frames/ego_from_lidar"][:]).all(axis=(1, 2))  # (N,)
    if not known.all():
        first = int(np.flatnonzero(~known)[0])
        raise ExportError(f"{data_path}: frame {first} ('{dataset.tokens()[first]}') has no LiDAR calibration "
                          "(ego_from_lidar), which OpenOccupancy's LiDAR-frame files need")


def export(data_path: str | os.PathLike, out: str | os.PathLike, fmt: str, *,
           progress: Progress | None = None) -> ExportSummary:
    """Write every frame of a unified file as ``fmt`` files under ``out`` (see the module docstring).

    Checks the whole file first (grid, taxonomy, labels, calibration, names), then writes one file per
    frame, each atomically. Linear in frames; ~1 s per OpenOccupancy frame (two 10 M-voxel resamplings).
    """
    started = time.perf_counter()
    data_path, out = Path(data_path), Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    if not data_path.is_file():
        raise ExportError(f"{data_path}: data file not found")
    dataset = OccDataset(data_path)
    try:
        _check_layout(dataset, data_path, fmt)
        planned = plan_export(dataset, data_path, fmt)
        if fmt == "openoccupancy":
            _check_calibration(dataset, data_path)
        fields = ("semantics", "mask_lidar", "mask_camera") if fmt == "occ3d" else ("semantics",)
        filled = 0
        for done, item in enumerate(planned, start=1):
            frame = dataset.read(item.index, fields=fields)
            target = out / item.relative
            if fmt == "occ3d":
                arrays, missing_mask = occ3d_arrays(frame)
                filled += missing_mask
                _write_npz(target, arrays)
            elif fmt == "npz":
                _write_npz(target, {"pred": np.asarray(frame.semantics, dtype=np.uint8)})
            else:
                rows = openoccupancy_rows(frame.semantics, dataset.grid, frame.ego_from_lidar, dataset.z_offset)
                _write_npy(target, rows)
            if progress is not None:
                progress(done, len(planned))
    finally:
        dataset.close()
    return ExportSummary(out, fmt, len(planned), filled, time.perf_counter() - started)


def replaced_members(data_path: str | os.PathLike, fmt: str) -> tuple[str, ...]:
    """What an export replaces in its output folder, as ``Output.members`` glob patterns (names escaped):
    the scene folders (occ3d ``gts/<scene>``, openoccupancy ``scene_<token>``) or the files (npz
    ``<token>.npz``) it writes; anything else in the folder is not its output. Linear in frames."""
    data_path = Path(data_path)
    if not data_path.is_file():
        raise ExportError(f"{data_path}: data file not found")
    dataset = OccDataset(data_path)
    try:
        relatives = [item.relative for item in plan_export(dataset, data_path, fmt)]
    finally:
        dataset.close()
    depth = {"occ3d": 2, "npz": 1, "openoccupancy": 1}[fmt]  # path components of one member
    members = {"/".join(glob.escape(part) for part in relative.split("/")[:depth]) for relative in relatives}
    return tuple(sorted(members))


# -- reading other tools' prediction folders ---------------------------------------------------------
PREDICTION_KEYS = ("pred", "semantics")  # SparseOcc / FlashOCC, then an Occ3D labels file


def prediction_candidates(folder: Path, scene: str, token: str) -> list[Path]:
    """Where a frame's prediction may lie in ``folder``, in the layouts listed in the module docstring
    (``token`` must be one file name; a scene name that is not one has no nested layouts)."""
    flat = [folder / f"{token}.npz"]
    if name_problem(scene):
        return flat
    return flat + [folder / scene / token / "pred.npz", folder / scene / token / "labels.npz",
                   folder / "gts" / scene / token / "labels.npz"]


def read_prediction(path: Path, shape: tuple[int, int, int], num_labels: int) -> np.ndarray:
    """One per-token prediction file -> (X, Y, Z) uint8 labels; ExportError naming the file otherwise."""
    key, array = _prediction_array(path)
    if array.shape != shape:
        raise ExportError(f"{path}: '{key}' has shape {array.shape}, the data grid is {shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ExportError(f"{path}: '{key}' holds {array.dtype} values; predicted labels are integers")
    bad = array[(array < 0) | (array >= num_labels)]
    if bad.size:
        raise ExportError(f"{path}: '{key}' holds label {int(bad[0])}, outside the taxonomy's 0..{num_labels - 1}")
    return array.astype(np.uint8)


def _prediction_array(path: Path) -> tuple[str, np.ndarray]:
    """(name, array) of the prediction in an ``.npz`` file: ``PREDICTION_KEYS`` first, else its only array."""
    try:
        loaded = np.load(path, allow_pickle=False)  # allow_pickle=False: an object array is refused, never run
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ExportError(f"{path}: a bare .npy array, not an .npz archive of named arrays")
        with loaded as npz:
            names = list(npz.files)
            key = next((k for k in PREDICTION_KEYS if k in names), names[0] if len(names) == 1 else None)
            if key is None:
                raise ExportError(f"{path}: no prediction array: expected 'pred' (or 'semantics', or a single array), "
                                  f"found {names}")
            return key, npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ExportError(f"{path}: not a readable .npz prediction file ({err})") from None


class PredictionFolder:
    """A folder of per-token prediction files, read like a predictions file by ``b2s_core.apps.evaluate``.

    Built over the data file it will be scored against: it holds the frames of ``data`` that have a
    file (same (scene, token) keys, so ``pair_frames`` reports any frame without one), on the data's
    grid and taxonomy. Opening checks which files exist (a few ``stat`` calls per frame, linear
    time); ``read`` loads one file (constant time). Predictions carry labels only: no binary-decoder
    output (flags are 0).
    """

    def __init__(self, folder: str | os.PathLike, data: OccDataset) -> None:
        self.folder = Path(folder)
        self.grid: VoxelGrid = data.grid
        self.taxonomy = data.taxonomy
        self.paths = [self.folder]
        self._keys: list[tuple[str, str]] = []
        self._files: list[Path] = []
        for i, token in enumerate(data.tokens()):
            scene = data.scene_of(i)
            problem = name_problem(token)
            if problem:
                raise ExportError(f"{data.paths[0]}: {_frame_label(scene, token, i)}: token {token!r} {problem}, "
                                  "so it cannot name a prediction file")
            found = [p for p in prediction_candidates(self.folder, scene, token) if p.is_file()]
            if len(found) > 1:
                raise ExportError(f"{self.folder}: two predictions for token {token}: {found[0]} and {found[1]}; "
                                  "keep one")
            if found:
                self._keys.append((scene, token))
                self._files.append(found[0])

    def __len__(self) -> int:
        return len(self._files)

    def tokens(self) -> list[str]:
        return [token for _, token in self._keys]

    def scene_of(self, index: int) -> str:
        return self._keys[index][0]

    def flags(self, index: int) -> int:
        return 0  # labels only: no binary_pred, no masks

    def read(self, index: int, fields: Sequence[str] = ()) -> OccFrame:
        """Frame ``index``: ``semantics`` (X, Y, Z) uint8 from its file; ``occupancy`` = not free."""
        semantics = read_prediction(self._files[index], self.grid.shape, self.taxonomy.num_labels)
        scene, token = self._keys[index]
        return OccFrame(scene=scene, token=token, timestamp=0, global_from_ego=np.eye(4), cameras=[],
                        occupancy=semantics != self.taxonomy.free_index, semantics=semantics)

    def close(self) -> None:
        """Nothing held open (each read opens and closes its file)."""


__all__ = ["ExportError", "ExportSummary", "FORMATS", "PredictionFolder", "export", "occ3d_arrays",
           "openoccupancy_rows",
           "plan_export", "prediction_candidates", "read_prediction", "replaced_members"]
