"""Readers that turn raw datasets (nuScenes, nuPlan, OpenScene) into the core's frame records, and the
jobs that run them.

- ``converters.readers``: one reader per source (``nuscenes``, ``nuplan``, ``openscene``), the label
  files (``labels``), the file formats they need (``pcd``, ``safe_pickle``), the reader interface
  (``base``) and readers of the user's own (``plugins``). Readers never import the jobs.
- ``converters.jobs``: the drivers of ``b2s convert`` (``convert``) and ``b2s build-binary``
  (``build_binary``), and what runs their scenes: scene selection, shards, resume and the worker
  pool (``scene_run``), the Ray backend (``ray_backend``) and progress (``progress``).

``open_reader(source, dataroot, ...)`` returns a :class:`converters.readers.base.SceneReader`:
``reader.scene_names()`` and ``reader.read_scene(name)`` -> key frames
(:class:`b2s_core.records.SensorFrame`) in time order. ``source`` is a built-in source or a reader
of the user's own (an installed ``b2s.readers`` entry point or ``package.module:Class``,
:mod:`converters.readers.plugins`). The core never imports this package.
"""

from __future__ import annotations

from pathlib import Path

from converters.errors import ConverterError
from converters.readers.base import SOURCES, SceneReader
from converters.readers.labels import LabelSpec
from converters.readers.nuplan import NuPlanReader
from converters.readers.nuscenes import NuScenesReader
from converters.readers.openscene import OpenSceneReader
from converters.readers.plugins import open_plugin, resolve_source


def open_reader(source: str, dataroot: str | Path, *, version: str | None = None, labels: str | LabelSpec | None = None,
                scenes: list[str] | None = None, split: str | None = None, **options) -> SceneReader:
    """Open a raw dataset.

    ``version``: nuScenes table folder (default v1.0-mini). ``labels``: ``KIND:PATH`` with KIND
    occ3d / openoccupancy (nuScenes) or openscene (OpenScene). ``scenes``: scene names to read;
    ``split``: nuScenes official split (train, val, test, mini_train, mini_val), or the OpenScene /
    nuPlan split folder. ``options`` go to the source's reader (e.g. ``max_sweeps``). A plug-in
    reader gets those of these that are given (:func:`converters.readers.plugins.open_plugin`).
    """
    source = resolve_source(source)  # an unknown name or a broken plug-in fails before the dataset is read
    dataroot = Path(dataroot).expanduser()
    if not dataroot.exists():
        raise ConverterError(dataroot, "dataset root not found")
    spec = LabelSpec.parse(labels) if isinstance(labels, str) else labels
    if source not in SOURCES:
        return open_plugin(source, dataroot, version=version, labels=spec, scenes=scenes, split=split, **options)
    if source == "nuscenes":
        return NuScenesReader(dataroot, version=version or "v1.0-mini", labels=spec, scenes=scenes, split=split, **options)
    if source == "nuplan":
        if spec is not None:
            raise ConverterError(spec.root, "nuPlan logs carry no semantic labels; use --source openscene for OpenScene labels")
        return NuPlanReader(dataroot, scenes=scenes, split=split, **options)
    return OpenSceneReader(dataroot, labels=spec, scenes=scenes, split=split, **options)  # the last of SOURCES


__all__ = ["ConverterError", "LabelSpec", "SOURCES", "SceneReader", "open_reader"]
