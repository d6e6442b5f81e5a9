"""What every source reader has in common: the reader interface, per-frame error handling, pose helpers."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from b2s_core.grids import VoxelGrid
from b2s_core.paths import inside, relative_path_problem
from b2s_core.records import SensorFrame
from b2s_core.taxonomy import IGNORE_INDEX, Taxonomy, TaxonomyError
from converters.errors import ConverterError

# The built-in sources (their readers: converters.readers.{nuscenes,nuplan,openscene}); any other
# --source is a plug-in reader (converters.readers.plugins).
SOURCES = ("nuscenes", "nuplan", "openscene")

# Called with (scene, frame token, error) when one frame cannot be read; it may re-raise to stop.
FrameErrorHandler = Callable[[str, str, ConverterError], None]


class SceneReader(abc.ABC):
    """A raw dataset opened scene by scene.

    ``read_scene`` yields one :class:`SensorFrame` per key frame in time order. LiDAR points are
    loaded only when a sweep's ``load`` is called, so a long log is streamed, never held at once.
    A frame whose inputs are bad (missing file, missing token, label of the wrong shape) raises
    :class:`ConverterError`, or, when ``on_error`` is given, is reported to it and left out.

    A reader of your own (``--source package.module:Class`` or a ``b2s.readers`` entry point) is a
    subclass too: :mod:`converters.readers.plugins` lists what b2s reads of it and the defaults it fills in.
    """

    source: str  # built-in readers: 'nuscenes' | 'nuplan' | 'openscene' (a plug-in needs none)
    image_root: Path  # camera image paths are relative to this folder
    taxonomy: Taxonomy  # labels' taxonomy, else the source's default (box labels use it)
    label_grid: VoxelGrid | None  # the grid of the semantic labels, None when no labels are read
    camera_names: list[str]
    open_errors: list[ConverterError]  # bad inputs found while opening (e.g. a corrupt log), reported per run

    @abc.abstractmethod
    def scene_names(self) -> list[str]:
        """Names of the selected scenes, in dataset order."""

    @abc.abstractmethod
    def read_scene(self, name: str, on_error: FrameErrorHandler | None = None) -> Iterator[SensorFrame]:
        """Key frames of scene ``name`` in time order."""

    def scene_length(self, name: str) -> int:
        """Key frames scene ``name`` holds, from the dataset's index alone (no sensor file is read).

        It weighs scenes when they are spread over shards (``--shard``, longest first), so it must be
        cheap and the same in every process. The built-in readers count from their tables; this
        default, which a plug-in reader inherits unless it overrides it, weighs every scene as 1 frame
        (the shards then hold equal numbers of scenes).
        """
        return 1

    def box_label(self, category: str, mapping: Callable[[str], int]) -> int:
        # A category the taxonomy does not know (e.g. a custom class) is kept as a box but not scored.
        try:
            return mapping(category)
        except TaxonomyError:
            return IGNORE_INDEX


def report(on_error: FrameErrorHandler | None, scene: str, token: str, err: ConverterError) -> None:
    """Hand a frame's error to the handler, or raise it when there is none."""
    if on_error is None:
        raise err
    on_error(scene, token, err)


def transform(rotation: np.ndarray, translation) -> np.ndarray:
    """(3, 3) rotation and (3,) translation -> (4, 4) float64 ``a_from_b``."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return out


def quaternion_matrix(wxyz, source: object = "rotation") -> np.ndarray:
    """Quaternion (w, x, y, z) -> (3, 3) float64 rotation (normalised first; ``source`` names it in errors)."""
    q = np.asarray(wxyz, dtype=np.float64).reshape(4)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ConverterError(source, f"rotation quaternion {q.tolist()} is not a rotation")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`ConverterError` naming it."""
    if not path.is_file():
        raise ConverterError(path, f"{what} not found")
    return path


def dataset_file(root: Path, relative: object, what: str, source: object) -> Path:
    """The file a dataset table names by a path relative to ``root`` (b2s_core.paths has the rule).

    A path that is absolute or climbs out of ``root`` is refused with a :class:`ConverterError`
    naming ``source`` (the table and record that hold it), so the frame is skipped and nothing
    outside the dataset is read; a missing file is refused naming the file.
    """
    problem = relative_path_problem(relative)
    if problem:
        raise ConverterError(source, f"{what} path {relative!r} {problem}; it must stay inside {root}")
    return require_file(inside(root, str(relative)), what)


# Image files the datasets hold. Only the header is parsed (a few KB): decoding every image to find a
# truncated tail would cost ~10 ms per 1600x900 JPEG, more than the rest of a frame.
IMAGE_FORMATS = ("JPEG", "PNG")


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the header of a JPEG / PNG; anything else is a :class:`ConverterError`."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            size = image.size
            image.verify()  # PNG: chunk checksums; JPEG: the markers parsed by open
    except FileNotFoundError:
        raise ConverterError(path, f"{what} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise ConverterError(path, f"{what} is not a readable {' or '.join(IMAGE_FORMATS)} image ({err})") from None
    return int(size[0]), int(size[1])


def count_float32_points(path: Path, columns: int) -> int:
    """Points in a raw float32 point file, from its size alone: a missing, empty or truncated file
    is a :class:`ConverterError` before any point is read."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConverterError(path, "LiDAR file not found") from None
    except OSError as err:
        raise ConverterError(path, f"LiDAR file unreadable ({err.strerror or err})") from None
    if size % (4 * columns):
        raise ConverterError(path, f"truncated LiDAR file: {size} bytes is not a whole number of {columns} x float32 points")
    if size == 0:
        raise ConverterError(path, "empty LiDAR file (0 points)")
    return size // (4 * columns)


def load_float32_bin(path: Path, columns: int) -> np.ndarray:
    """A raw little-endian float32 point file of ``columns`` values per point -> (N, columns) float32."""
    count = count_float32_points(path, columns)
    try:
        return np.fromfile(path, dtype="<f4", count=count * columns).reshape(count, columns)
    except (OSError, ValueError) as err:
        raise ConverterError(path, f"LiDAR file unreadable ({err})") from None
