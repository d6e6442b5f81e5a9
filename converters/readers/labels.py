"""Semantic occupancy label files: Occ3D ``labels.npz``, OpenOccupancy and OpenScene sparse ``.npy``.

Each reader returns the dense labels exactly as the file means them, in the file's own taxonomy
and grid, so that converting them is lossless:

* Occ3D: ``semantics``, ``mask_lidar``, ``mask_camera`` uint8 (200, 200, 16), x/y/z, free = 17.
* OpenOccupancy: rows ``[z, y, x, ..., label]`` on 512 x 512 x 40 in the key frame's LIDAR_TOP
  frame (``OPENOCCUPANCY_LIDAR_GRID``); unlisted voxels are empty (0); file label 0 (noise) becomes
  255 (ignore). The only reader that does not keep the file's grid: b2s grids are ego-frame, so the
  labels are resampled onto the ego-frame openoccupancy grid with the frame's LiDAR calibration.
* OpenScene: rows ``[flat, label]`` with ``flat = x + X * y + X * Y * z`` on 200 x 200 x 16;
  unlisted voxels are free (16).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b2s_core.grids import OPENOCCUPANCY_LIDAR_GRID, SOURCE_GRIDS, VoxelGrid, resample_rigid
from b2s_core.paths import name_problem
from b2s_core.records import SemanticLabels
from b2s_core.taxonomy import IGNORE_INDEX, OCC3D, OPENOCCUPANCY, OPENSCENE, Taxonomy, get_taxonomy
from converters.errors import ConverterError

LABEL_KINDS = ("occ3d", "openoccupancy", "openscene")


@dataclass(frozen=True)
class LabelSpec:
    """``--labels KIND:PATH``: which label format, and the folder that holds its files."""

    kind: str
    root: Path

    @classmethod
    def parse(cls, text: str) -> LabelSpec:
        kind, sep, path = text.partition(":")
        if not sep or kind not in LABEL_KINDS or not path:
            raise ConverterError(text, f"labels must be KIND:PATH with KIND one of {', '.join(LABEL_KINDS)}")
        root = Path(path).expanduser()
        if not root.exists():
            raise ConverterError(root, f"{kind} label folder not found")
        return cls(kind, root)

    @property
    def taxonomy(self) -> Taxonomy:
        return get_taxonomy(self.kind)

    @property
    def grid(self) -> VoxelGrid:
        return SOURCE_GRIDS[self.kind]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConverterError(path, "label file not found") from None
    except (ValueError, OSError, EOFError) as err:
        raise ConverterError(path, f"unreadable label file ({err})") from None


def read_occ3d(path: str | Path) -> SemanticLabels:
    """An Occ3D ``labels.npz`` -> labels on the occ3d grid (masks as bool)."""
    path = Path(path)
    shape = SOURCE_GRIDS["occ3d"].shape
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("semantics", "mask_lidar", "mask_camera") if key in npz.files}
    except FileNotFoundError:
        raise ConverterError(path, "label file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConverterError(path, f"unreadable Occ3D label file ({err})") from None
    if "semantics" not in arrays:
        raise ConverterError(path, "Occ3D label file has no 'semantics' array")
    for key, array in arrays.items():
        if array.shape != shape:
            raise ConverterError(path, f"Occ3D '{key}' has shape {array.shape}, expected {shape}")
    semantics = arrays["semantics"]
    if semantics.dtype != np.uint8:
        if semantics.min(initial=0) < 0 or semantics.max(initial=0) > 255:
            raise ConverterError(path, f"Occ3D semantics of dtype {semantics.dtype} hold values outside 0..255")
        semantics = semantics.astype(np.uint8)
    _check_values(path, semantics, OCC3D)
    masks = {key: arrays[key].astype(bool) if key in arrays else None for key in ("mask_lidar", "mask_camera")}
    return SemanticLabels(semantics, "occ3d", "occ3d", masks["mask_lidar"], masks["mask_camera"], str(path))


def read_openoccupancy(path: str | Path, ego_from_lidar: np.ndarray, grid: VoxelGrid | None = None) -> SemanticLabels:
    """An OpenOccupancy sparse ``.npy`` (LIDAR_TOP frame) -> dense labels on the ego-frame ``grid``.

    ``ego_from_lidar``: (4, 4) the key frame's LIDAR_TOP calibrated_sensor. ``grid``: default the
    openoccupancy grid of :data:`b2s_core.grids.SOURCE_GRIDS`. Returns (X, Y, Z) uint8 OpenOccupancy
    labels; ego voxels whose centre lies outside the file's LiDAR-frame volume are 255 (unknown: not
    scored, not trained on).
    """
    path = Path(path)
    grid = grid or SOURCE_GRIDS["openoccupancy"]
    rows = _load_npy(path)
    source = OPENOCCUPANCY_LIDAR_GRID
    if rows.ndim != 2 or rows.shape[1] < 4:
        raise ConverterError(path, f"OpenOccupancy labels have shape {rows.shape}, expected (N, >=4) rows [z, y, x, ..., label]")
    ego_from_lidar = np.asarray(ego_from_lidar, dtype=np.float64)
    rotation = ego_from_lidar[:3, :3] if ego_from_lidar.shape == (4, 4) else None
    if rotation is None or not np.all(np.isfinite(ego_from_lidar)) or not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-6):
        raise ConverterError(path, "the frame's LIDAR_TOP calibration is not a finite rigid (4, 4) transform, "
                                   "so its labels cannot be placed")
    rows = rows.astype(np.int64)
    z, y, x, label = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, -1]
    index = np.stack([x, y, z], axis=1)
    if len(index) and (index.min() < 0 or np.any(index.max(axis=0) >= np.asarray(source.shape))):
        raise ConverterError(path, f"OpenOccupancy voxel index outside the {source.shape} grid")
    if len(label) and (label.min() < 0 or label.max() >= OPENOCCUPANCY.num_labels):
        raise ConverterError(path, f"OpenOccupancy label {int(label.max())} outside 0..{OPENOCCUPANCY.num_labels - 1}")
    lidar_labels = np.full(source.shape, OPENOCCUPANCY.free_index, dtype=np.uint8)
    lidar_labels[x, y, z] = np.where(label == 0, IGNORE_INDEX, label).astype(np.uint8)  # 0 = noise -> ignore
    semantics = resample_rigid(lidar_labels, source, grid, ego_from_lidar, outside=IGNORE_INDEX)
    return SemanticLabels(semantics, "openoccupancy", grid.name, path=str(path))


def read_openscene(path: str | Path, grid: VoxelGrid | None = None) -> SemanticLabels:
    """An OpenScene sparse ``.npy`` of ``[flat, label]`` rows -> dense labels (default: the openscene grid of SOURCE_GRIDS)."""
    path = Path(path)
    grid = grid or SOURCE_GRIDS["openscene"]
    rows = _load_npy(path)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise ConverterError(path, f"OpenScene labels have shape {rows.shape}, expected (N, 2) rows [flat_index, label]")
    rows = rows.astype(np.int64)
    X, Y, Z = grid.shape
    flat, label = rows[:, 0], rows[:, 1]
    if len(flat) and (flat.min() < 0 or flat.max() >= X * Y * Z):
        raise ConverterError(path, f"OpenScene flat index outside the {grid.shape} grid")
    # Labels must be classes of the taxonomy or 255 (invalid): e.g. 77 is refused here, not in a later training step.
    bad = np.unique(label[((label < 0) | (label >= OPENSCENE.num_labels)) & (label != IGNORE_INDEX)])
    if len(bad):
        raise ConverterError(path, f"label values {bad.tolist()[:10]} are not in the openscene taxonomy "
                                   f"(0..{OPENSCENE.num_labels - 1}, 255 invalid)")
    semantics = np.full(grid.shape, OPENSCENE.free_index, dtype=np.uint8)
    # The file's flat index runs x fastest: flat = x + X * y + X * Y * z.
    semantics[flat % X, (flat // X) % Y, flat // (X * Y)] = label.astype(np.uint8)
    return SemanticLabels(semantics, "openscene", grid.name, path=str(path))


def _check_values(path: Path, semantics: np.ndarray, taxonomy: Taxonomy) -> None:
    values = np.unique(semantics)
    bad = values[(values >= taxonomy.num_labels) & (values != IGNORE_INDEX)]
    if len(bad):
        raise ConverterError(path, f"label values {bad.tolist()} are not in the {taxonomy.name} taxonomy")


def occ3d_path(root: Path, scene: str, sample_token: str) -> Path:
    """``<root>/gts/<scene>/<sample_token>/labels.npz`` (``root`` may also be the ``gts`` folder itself)."""
    base = root / "gts" if (root / "gts").is_dir() else root
    return base / _folder_name(scene, "scene name", root) / _folder_name(sample_token, "sample token", root) / "labels.npz"


def openoccupancy_path(root: Path, scene_token: str, lidar_token: str) -> Path:
    """``<root>/scene_<scene_token>/occupancy/<lidar_sample_data_token>.npy``."""
    scene_folder = "scene_" + _folder_name(scene_token, "scene token", root)
    return root / scene_folder / "occupancy" / f"{_folder_name(lidar_token, 'sample_data token', root)}.npy"


def _folder_name(value: str, what: str, root: Path) -> str:
    # Names from the dataset tables become folders under the label root: one name each, never a path out of it.
    problem = name_problem(value)
    if problem:
        raise ConverterError(root, f"{what} {value!r} {problem}, so it cannot name a label file under this folder")
    return value
