"""A restricted unpickler for dataset metadata (OpenScene meta pickles, nuPlan SQLite blobs).

``pickle.load`` runs whatever callables a file names (``os.system`` through ``__reduce__`` is the
classic), so a downloaded pickle is as dangerous as a downloaded script. Metadata only needs plain
containers, scalars and numpy arrays, so this unpickler resolves only the few globals that numpy
uses to rebuild arrays and scalars and refuses every other global *before* anything is called.
"""

from __future__ import annotations

import _codecs
import io
import pickle
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
    import importlib
    import warnings

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


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, scalars and numpy arrays; refuses every other global.

    Every accepted global is an exact (module, name) pair; a refused one is refused before any
    module is imported (a check that imported the named module first would run its top-level code).
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        if module == "numpy.dtypes" and name in _DTYPE_CLASSES:
            return _DTYPE_CLASSES[name]
        raise pickle.UnpicklingError(f"refused to load global '{module}.{name}' (only containers, scalars and numpy arrays are allowed)")


def loads(data: bytes, *, source: object = "<bytes>") -> Any:
    """Unpickle ``data`` safely; any refusal or corruption becomes a :class:`ConverterError` naming ``source``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        raise ConverterError(source, f"unsafe or corrupt pickle: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError, MemoryError) as err:
        raise ConverterError(source, f"corrupt pickle ({type(err).__name__}: {err})") from None


def load(path: str | Path) -> Any:
    """Unpickle the file at ``path`` safely (see :func:`loads`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConverterError(path, "file not found") from None
    return loads(data, source=path)
