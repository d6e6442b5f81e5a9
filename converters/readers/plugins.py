"""Plug-in readers: a dataset reader of your own (a :class:`SceneReader` subclass) in ``b2s convert``
and ``b2s build-binary``.

``--source`` names a reader in one of three ways, tried in this order:

1. a built-in source: ``nuscenes``, ``nuplan``, ``openscene`` (:data:`converters.readers.base.SOURCES`);
2. the name of an entry point in the ``b2s.readers`` group of an installed package
   (``toyfleet = "toy_fleet.reader:ToyFleetReader"`` in its pyproject.toml);
3. ``package.module:Class``, imported as written (installed, or on ``PYTHONPATH``).

:func:`resolve_source` turns each into a *source id*: the built-in name, or the reader class's
``module:Class`` path. The id is a plain string: it is what a worker process re-creates its reader
from (``converters.jobs.scene_run``), what the resume record compares and what the output's ``source``
attribute holds, so the entry-point name and the ``module:Class`` spelling of one reader are the same
source. A class is never passed around itself: one defined in ``__main__`` could not be re-created.

What a reader provides (docs/converters.md, "Your own dataset"); each missing or wrong piece is one
:class:`ConverterError` naming the reader:

class attributes, read before the dataset is opened:
    ``default_grid``  grid preset or spec of an unlabelled conversion and of build-binary without
                      ``--grid`` (default :data:`PLUGIN_DEFAULT_GRID`)
    ``ego_body``      :class:`b2s_core.binary.aggregate.EgoBody`, the vehicle's box in the ego frame
                      whose LiDAR returns build-binary drops (required by build-binary only)
the constructor:
    ``Class(dataroot: Path, **options)``, given only the options the user set: ``scenes`` (list of
    names), ``split``, ``version`` (str), ``labels`` (:class:`converters.readers.labels.LabelSpec`) and the
    library caller's reader options
instance attributes, checked once it is made:
    ``camera_names``  list of str, the cameras every frame lists (required; empty without cameras)
    ``taxonomy``      a taxonomy of :data:`b2s_core.taxonomy.TAXONOMIES` (default OCC3D): the
                      output records its name only
    ``label_grid``    VoxelGrid of the frames' ``labels``, or None (default: no labels)
    ``image_root``    folder the cameras' ``image_path`` are relative to (default: the dataroot)
    ``open_errors``   list of ConverterError found while opening (default: none)
"""

from __future__ import annotations

import functools
import importlib
import inspect
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from b2s_core.binary.aggregate import EgoBody
from b2s_core.grids import GridError, VoxelGrid, get_grid
from b2s_core.taxonomy import OCC3D, TAXONOMIES, Taxonomy
from converters.errors import ConverterError
from converters.readers.base import SOURCES, SceneReader

READER_GROUP = "b2s.readers"
PLUGIN_DEFAULT_GRID = "occ3d"  # the grid most occupancy benchmarks score on (200 x 200 x 16, 0.4 m)

# Constructor keyword -> the command-line option that sets it, for "takes no --labels".
_OPTION_FLAGS = {"scenes": "--scenes", "split": "--split", "version": "--version", "labels": "--labels"}


def installed_readers() -> dict[str, list[str]]:
    """Entry points of the ``b2s.readers`` group: name -> the ``module:Class`` values installed under it."""
    readers: dict[str, list[str]] = {}
    for point in entry_points(group=READER_GROUP):
        values = readers.setdefault(point.name, [])
        if point.value not in values:
            values.append(point.value)
    return readers


def source_choices() -> str:
    """'nuscenes, nuplan, openscene (built in), toyfleet (installed under b2s.readers) or package.module:Class'."""
    installed = sorted(set(installed_readers()) - set(SOURCES))
    text = f"{', '.join(SOURCES)} (built in)"
    if installed:
        text += f", {', '.join(installed)} (installed under {READER_GROUP})"
    return text + " or package.module:Class"


def resolve_source(source: str) -> str:
    """A ``--source`` value -> its source id (built-in name or ``module:Class``), the reader class checked.

    A name that is neither built in, nor installed, nor ``module:Class`` is a :class:`ConverterError`
    listing the choices; so is a spec whose module cannot be imported, that names no attribute of it,
    or whose attribute is not a usable SceneReader subclass.
    """
    source = source.strip()
    if source in SOURCES:
        return source
    if ":" in source:  # entry-point names hold no colon; a worker re-opening a source id skips the scan
        return _source_id(source, reader_class(source))
    values = installed_readers().get(source)
    if not values:
        raise ConverterError(source, f"unknown source; use one of {source_choices()}")
    if len(values) > 1:
        raise ConverterError(source, f"installed twice under {READER_GROUP} ({', '.join(values)}); "
                                     "uninstall one or give package.module:Class")
    where = f"entry point {source} = {values[0]} of {READER_GROUP}"
    return _source_id(values[0], reader_class(values[0], where=where))


def _source_id(spec: str, cls: type) -> str:
    """``module:Class`` by the class's own module and name, when that leads back to it; else ``spec``.

    ``toy_fleet:ToyFleetReader`` (a re-export) and ``toy_fleet.reader:ToyFleetReader`` then record
    the same source, so a run resumes whichever spelling started it.
    """
    own = f"{cls.__module__}:{cls.__qualname__}"
    try:
        return own if own == spec or _load(own) is cls else spec
    except (ImportError, AttributeError):
        return spec


@functools.cache
def reader_class(spec: str, where: str | None = None) -> type[SceneReader]:
    """Import ``module:Class`` and check it is a concrete SceneReader with usable class attributes.

    ``where`` names the entry point the spec came from, for the message. Cached: resolving a source
    and opening its reader (in every worker) both ask for the class.
    """
    name = where or spec
    module_name, attribute = _split_spec(spec, name)
    cls = _import_reader(spec, module_name, name)
    _check_reader_class(cls, attribute, name)
    _check_class_attributes(cls, attribute, name)
    return cls


def _split_spec(spec: str, name: str) -> tuple[str, str]:
    """``module:Class`` -> (module, Class); refused when malformed or defined in ``__main__``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute or ":" in attribute:
        raise ConverterError(name, "a reader is named package.module:Class")
    if module_name.split(".")[0] == "__main__":
        raise ConverterError(name, "a reader defined in __main__ cannot be re-created in worker processes; "
                                   "move it into a module and name it module:Class")
    return module_name, attribute


def _import_reader(spec: str, module_name: str, name: str) -> Any:
    """The object ``spec`` names; a module that is missing or fails while importing is one line."""
    try:
        return _load(spec)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConverterError(name, f"module {err.name} not found; install its package or put its folder "
                                       "on PYTHONPATH") from err
        raise ConverterError(name, f"importing {module_name} failed: {type(err).__name__}: {err}") from err
    except AttributeError as err:
        raise ConverterError(name, f"{err}") from err  # "module 'm' has no attribute 'C'", the missing part named
    except Exception as err:  # the plug-in's own code failed while importing: say so in one line
        raise ConverterError(name, f"importing {module_name} failed: {type(err).__name__}: {err}") from err


def _check_reader_class(cls: Any, attribute: str, name: str) -> None:
    """A class, a SceneReader subclass, with every abstract method implemented."""
    if not inspect.isclass(cls):
        raise ConverterError(name, f"{attribute} is a {type(cls).__name__}, not a subclass of converters.readers.base.SceneReader")
    if not issubclass(cls, SceneReader):
        raise ConverterError(name, f"{attribute} is not a subclass of converters.readers.base.SceneReader")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConverterError(name, f"{attribute} does not implement {', '.join(missing)}")


def _check_class_attributes(cls: type, attribute: str, name: str) -> None:
    """``default_grid`` makes a grid; ``ego_body``, when given, is an EgoBody."""
    grid = getattr(cls, "default_grid", PLUGIN_DEFAULT_GRID)
    try:
        get_grid(grid)
    except (GridError, TypeError, AttributeError) as err:
        raise ConverterError(name, f"{attribute}.default_grid {grid!r} is not a grid: {err}") from None
    body = getattr(cls, "ego_body", None)
    if body is not None and not isinstance(body, EgoBody):
        raise ConverterError(name, f"{attribute}.ego_body must be a b2s_core.binary.aggregate.EgoBody, "
                                   f"got {type(body).__name__}")


def _load(spec: str) -> Any:
    """``module:Outer.Inner`` -> the object (ImportError / AttributeError when it is not there)."""
    module_name, _, attribute = spec.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def plugin_default_grid(source: str) -> VoxelGrid:
    """The ``default_grid`` of the plug-in reader ``source`` (a source id), as a grid."""
    return get_grid(getattr(reader_class(source), "default_grid", PLUGIN_DEFAULT_GRID))


def plugin_ego_body(source: str) -> EgoBody:
    """The ``ego_body`` (:class:`~b2s_core.binary.aggregate.EgoBody`) of the plug-in reader ``source``."""
    body = getattr(reader_class(source), "ego_body", None)
    if body is None:
        raise ConverterError(source, "build-binary needs the reader's ego_body: set the class attribute ego_body = "
                                     "EgoBody((xmin, ymin, zmin), (xmax, ymax, zmax)), the vehicle's box in the ego "
                                     "frame whose LiDAR returns are dropped (b2s_core.binary.aggregate)")
    return body


def open_plugin(source: str, dataroot: Path, **options: Any) -> SceneReader:
    """Make the plug-in reader ``source`` (a source id) for ``dataroot`` and check what it provides.

    ``options`` that are None were not given and are not passed, so a reader need only take the
    options its dataset has; one it does not take is refused naming its flag.
    """
    cls = reader_class(source)
    given = {key: value for key, value in options.items() if value is not None}
    _check_signature(cls, source, dataroot, given)
    reader = cls(dataroot, **given)
    _complete(reader, source, dataroot)
    return reader


def _check_signature(cls: type, source: str, dataroot: Path, given: dict[str, Any]) -> None:
    """Refuse, naming its flag, an option the constructor does not take, before calling it (a TypeError
    raised inside the constructor would be the reader's own bug, not the user's option)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to read: the call itself will tell
        return
    parameters = signature.parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        refused = [key for key in given
                   if key not in parameters or parameters[key].kind is inspect.Parameter.POSITIONAL_ONLY]
        if refused:
            raise ConverterError(source, f"the reader takes no {', '.join(_OPTION_FLAGS.get(k, k) for k in refused)}")
    try:
        signature.bind(dataroot, **given)
    except TypeError as err:
        raise ConverterError(source, f"the reader must be made as Class(dataroot, **options): {err}") from None


def _complete(reader: SceneReader, source: str, dataroot: Path) -> None:
    """Check the instance attributes convert and build-binary read; fill in the defaults."""
    reader.camera_names = _camera_names(reader, source)
    reader.taxonomy = _taxonomy(reader, source)
    reader.label_grid = _label_grid(reader, source)
    reader.image_root = _image_root(reader, source, dataroot)
    reader.open_errors = _open_errors(reader, source)


def _camera_names(reader: SceneReader, source: str) -> list[str]:
    names = getattr(reader, "camera_names", None)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise ConverterError(source, f"camera_names must be a list of camera names (empty without cameras), got {names!r}")
    if len(set(names)) != len(names):
        raise ConverterError(source, f"camera_names {list(names)} name a camera twice")
    return list(names)


def _taxonomy(reader: SceneReader, source: str) -> Taxonomy:
    taxonomy = getattr(reader, "taxonomy", OCC3D)
    if not isinstance(taxonomy, Taxonomy) or TAXONOMIES.get(taxonomy.name) != taxonomy:
        shown = taxonomy.name if isinstance(taxonomy, Taxonomy) else repr(taxonomy)
        raise ConverterError(source, f"taxonomy {shown} is not one a b2s file can record; use one of "
                                     f"b2s_core.taxonomy.TAXONOMIES ({', '.join(TAXONOMIES)})")
    return taxonomy


def _label_grid(reader: SceneReader, source: str) -> VoxelGrid | None:
    label_grid = getattr(reader, "label_grid", None)
    if label_grid is not None and not isinstance(label_grid, VoxelGrid):
        raise ConverterError(source, f"label_grid must be a b2s_core.grids.VoxelGrid or None, got {type(label_grid).__name__}")
    return label_grid


def _image_root(reader: SceneReader, source: str, dataroot: Path) -> Path:
    image_root = getattr(reader, "image_root", dataroot)
    if not isinstance(image_root, (str, Path)):
        raise ConverterError(source, f"image_root must be a folder path, got {type(image_root).__name__}")
    return Path(image_root)


def _open_errors(reader: SceneReader, source: str) -> list[ConverterError]:
    open_errors = getattr(reader, "open_errors", [])
    if not isinstance(open_errors, list) or not all(isinstance(e, ConverterError) for e in open_errors):
        raise ConverterError(source, "open_errors must be a list of ConverterError")
    return open_errors


__all__ = ["PLUGIN_DEFAULT_GRID", "READER_GROUP", "installed_readers", "open_plugin",
           "plugin_default_grid", "plugin_ego_body", "reader_class", "resolve_source", "source_choices"]
