"""Readers that turn raw datasets (nuScenes, nuPlan, OpenScene) into the core's frame records.

``open_reader(source, dataroot, ...)`` returns a :class:`converters.readers.base.SceneReader`:
``reader.scene_names()`` and ``reader.read_scene(name)`` -> key frames
(:class:`b2s_core.records.SensorFrame`) in time order. ``source`` is a built-in source or a reader
of the user's own (an installed ``b2s.readers`` entry point or ``package.module:Class``,
:mod:`converters.readers.plugins`). The core never imports this package.
"""

from __future__ import annotations

from pathlib import Path

from converters.readers.base import SceneReader
from converters.errors import ConverterError
from converters.readers.labels import LabelSpec

SOURCES = ("nuscenes", "nuplan", "openscene")


def open_reader(source: str, dataroot: str | Path, *, version: str | None = None, labels: str | LabelSpec | None = None,
                scenes: list[str] | None = None, split: str | None = None, **options) -> SceneReader:
    """Open a raw dataset.

    ``version``: nuScenes table folder (default v1.0-mini). ``labels``: ``KIND:PATH`` with KIND
    occ3d / openoccupancy (nuScenes) or openscene (OpenScene). ``scenes``: scene names to read;
    ``split``: nuScenes official split (train, val, test, mini_train, mini_val), or the OpenScene /
    nuPlan split folder. ``options`` go to the source's reader (e.g. ``max_sweeps``). A plug-in
    reader gets those of these that are given (:func:`converters.readers.plugins.open_plugin`).
    """
    from converters.readers.plugins import open_plugin, resolve_source

    source = resolve_source(source)  # an unknown name or a broken plug-in fails before the dataset is read
    dataroot = Path(dataroot).expanduser()
    if not dataroot.exists():
        raise ConverterError(dataroot, "dataset root not found")
    spec = LabelSpec.parse(labels) if isinstance(labels, str) else labels
    if source not in SOURCES:
        return open_plugin(source, dataroot, version=version, labels=spec, scenes=scenes, split=split, **options)
    if source == "nuscenes":
        from converters.readers.nuscenes import NuScenesReader

        return NuScenesReader(dataroot, version=version or "v1.0-mini", labels=spec, scenes=scenes, split=split, **options)
    if source == "nuplan":
        from converters.readers.nuplan import NuPlanReader

        if spec is not None:
            raise ConverterError(spec.root, "nuPlan logs carry no semantic labels; use --source openscene for OpenScene labels")
        return NuPlanReader(dataroot, scenes=scenes, split=split, **options)
    from converters.readers.openscene import OpenSceneReader  # the last of SOURCES

    return OpenSceneReader(dataroot, labels=spec, scenes=scenes, split=split, **options)


__all__ = ["ConverterError", "LabelSpec", "SOURCES", "SceneReader", "open_reader"]
