"""A restricted unpickler for dataset metadata (OpenScene meta pickles, nuPlan SQLite blobs).

``pickle.load`` runs whatever callables a file names (``os.system`` through ``__reduce__`` is the
classic), so a downloaded pickle is as dangerous as a downloaded script. Metadata only needs plain
containers, scalars and numpy arrays, so this unpickler resolves only the few globals that numpy
uses to rebuild arrays and scalars, plus nuplan-devkit's three calibration value classes (see
``_DEVKIT_CLASSES``), and refuses every other global *before* anything is called.
"""

from __future__ import annotations

import _codecs
import collections
import importlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConverterError


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles store array bytes as latin-1 text re-encoded through _codecs.encode; only
    # that use is allowed (other codecs, e.g. zlib, could be used to inflate memory).
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding, errors)


# numpy's own core modules, both spellings: numpy 2 pickles name numpy._core, numpy 1 numpy.core.
_CORE_SPELLINGS = {"numpy.core.multiarray": ("numpy.core.multiarray", "numpy._core.multiarray"),
                   "numpy._core.multiarray": ("numpy._core.multiarray", "numpy.core.multiarray"),
                   "numpy.core.numeric": ("numpy.core.numeric", "numpy._core.numeric"),
                   "numpy._core.numeric": ("numpy._core.numeric", "numpy.core.numeric")}


def _numpy_global(module: str, name: str) -> Any:
    """One of the allowed numpy globals. Only called after the (module, name) pair passed the
    allow-list, so the modules imported here are numpy's own, never one a file names."""
    if module == "numpy":
        return getattr(np, name)
    for spelling in _CORE_SPELLINGS[module]:
        try:
            with warnings.catch_warnings():  # numpy 2 warns on numpy.core: the pickle's spelling, not ours
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(spelling), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy global '{module}.{name}' is not available")


# The numpy globals that rebuild arrays, dtypes and scalars (both spellings of numpy's core module).
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
# numpy >= 1.25 may name a dtype class (numpy.dtypes.Float64DType) when pickling dtypes: exactly the
# classes of numpy.dtypes, read from the numpy we run (nothing a file names is imported to check it).
_dtypes = getattr(np, "dtypes", None)
_DTYPE_CLASSES = {name: cls for name, cls in vars(_dtypes).items()
                  if isinstance(cls, type) and issubclass(cls, np.dtype)} if _dtypes else {}
_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "complex": complex,
             "bytearray": bytearray}


class _DevkitList(list):
    """Stands in, while unpickling, for one of nuplan-devkit's list subclasses; replaced by a float64
    array once the pickle is read (:func:`_plain`). Nothing of the devkit is imported."""

    __slots__ = ()  # the devkit classes carry no attributes: a pickle giving them state is refused

    def __setstate__(self, state) -> None:
        raise pickle.UnpicklingError(f"unexpected state for nuplan-devkit {type(self).__name__}")


# nuplan-devkit's calibration values (nuplan/database/common/data_types.py: Translation, Rotation,
# CameraIntrinsic, subclasses of list). The devkit's SQLAlchemy column types (nuplan/database/common/
# sql_types.py: SqlTranslation, SqlRotation, SqlCameraIntrinsic) store whatever value was set with
# pickle.dumps, and its own test database (nuplan/database/nuplan_db/test/minimal_db_test_utils.py)
# pickles these class instances into lidar.translation/rotation and camera.translation/rotation/
# intrinsic. Protocol >= 2 pickles rebuild them with NEWOBJ + APPENDS, which a list subclass serves.
_DEVKIT_MODULE = "nuplan.database.common.data_types"
_DEVKIT_CLASSES = {name: type(name, (_DevkitList,), {"__slots__": ()})
                   for name in ("Translation", "Rotation", "CameraIntrinsic")}


def _plain(obj: Any) -> Any:
    """``obj`` with every devkit stand-in (also inside lists, tuples and dict values) as a float64 array."""
    seen: set[int] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, _DevkitList):
            return np.asarray(value, dtype=np.float64)
        if id(value) in seen:  # shared or self-referencing containers are walked once
            return value
        if isinstance(value, list):
            seen.add(id(value))
            value[:] = [walk(v) for v in value]
        elif isinstance(value, dict):
            seen.add(id(value))
            for key in list(value):
                value[key] = walk(value[key])
        elif isinstance(value, tuple):
            seen.add(id(value))
            return tuple(walk(v) for v in value)
        return value

    return walk(obj)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, scalars, numpy arrays and the devkit's calibration classes (as
    stand-ins: :func:`loads` returns them as arrays); refuses every other global.

    Every accepted global is an exact (module, name) pair; a refused one is refused before any
    module is imported (a check that imported the named module first would run its top-level code).
    """

    devkit_values = False  # set when a devkit stand-in was handed out: the result then needs _plain

    def find_class(self, module: str, name: str) -> Any:
        if module == _DEVKIT_MODULE and name in _DEVKIT_CLASSES:
            self.devkit_values = True
            return _DEVKIT_CLASSES[name]
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        if module == "numpy.dtypes" and name in _DTYPE_CLASSES:
            return _DTYPE_CLASSES[name]
        raise pickle.UnpicklingError(f"refused to load global '{module}.{name}' (only containers, scalars, numpy arrays "
                                     f"and nuplan-devkit's {', '.join(_DEVKIT_CLASSES)} are allowed)")


def loads(data: bytes, *, source: object = "<bytes>") -> Any:
    """Unpickle ``data`` safely; any refusal or corruption becomes a :class:`ConverterError` naming ``source``.

    nuplan-devkit ``Translation`` / ``Rotation`` / ``CameraIntrinsic`` values come back as float64
    arrays of shape (3,), (4,) and (3, 3) (whatever the stored lists hold).
    """
    try:
        unpickler = RestrictedUnpickler(io.BytesIO(data))
        value = unpickler.load()
        return _plain(value) if unpickler.devkit_values else value
    except pickle.UnpicklingError as err:
        raise ConverterError(source, f"unsafe or corrupt pickle: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError, MemoryError,
            RecursionError) as err:
        raise ConverterError(source, f"corrupt pickle ({type(err).__name__}: {err})") from None


def load(path: str | Path) -> Any:
    """Unpickle the file at ``path`` safely (see :func:`loads`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConverterError(path, "file not found") from None
    return loads(data, source=path)
