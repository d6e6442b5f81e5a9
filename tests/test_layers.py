"""The layers of the whiteboard, enforced: which packages may import which.

    b2s_cli            the command line: may import everything below it
    converters.jobs    convert / build-binary drivers and their engines
    converters.readers dataset readers (never the jobs)
    b2s_core.train     training
    b2s_core.apps      predict, evaluate, autolabel, export, summary: never training
    b2s_core.{binary, data, metrics, models, synth, viz}   libraries: never apps or training
    b2s_core.*         the bottom layer and format (grids, taxonomy, records, occfile...): none of the above

Every import counts, at the top of a module or inside a function: a lazy import still ties the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("b2s_core", "converters", "b2s_cli")
LIBRARIES = ("binary", "data", "metrics", "models", "synth", "viz")
# Engines run work they are handed (scenes, ranks); what the work is stays with the caller.
ENGINES = ("b2s_core.ray_engine", "b2s_core.apps.launch", "converters.jobs.scene_run", "converters.jobs.ray_backend")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


MODULES = {module_name(p): project_imports(p) for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> str:
    if within(name, "b2s_cli"):
        return "cli"
    if within(name, "converters.jobs"):
        return "jobs"
    if within(name, "converters"):
        return "readers"  # converters.readers and the package's own errors / open_reader
    if within(name, "b2s_core.train"):
        return "train"
    if within(name, "b2s_core.apps"):
        return "apps"
    if any(within(name, f"b2s_core.{lib}") for lib in LIBRARIES):
        return "library"
    return "bottom"


# What each layer may not import.
FORBIDDEN = {
    "cli": (),
    "jobs": ("cli", "train", "apps"),
    "readers": ("cli", "jobs", "train", "apps"),
    "train": ("cli", "jobs", "readers", "apps"),
    "apps": ("cli", "jobs", "readers", "train"),
    "library": ("cli", "jobs", "readers", "train", "apps"),
    "bottom": ("cli", "jobs", "readers", "train", "apps", "library"),
}


def violations(modules: dict[str, set[str]]) -> list[str]:
    found = []
    for name, imports in modules.items():
        for imported in sorted(imports):
            if layer_of(imported) in FORBIDDEN[layer_of(name)] and not within(imported, "converters.errors"):
                found.append(f"{name} ({layer_of(name)}) imports {imported} ({layer_of(imported)})")
            if name in ENGINES and layer_of(imported) == "train":
                found.append(f"engine {name} imports {imported}")
    return found


def test_the_layers_hold():
    assert MODULES, "no module found"
    assert violations(MODULES) == []


def test_every_module_has_a_layer_the_test_knows():
    # a new top-level folder of b2s_core would otherwise land in 'bottom' unnoticed
    folders = {p.name for p in (ROOT / "b2s_core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= {*LIBRARIES, "train", "apps"}, folders - {*LIBRARIES, "train", "apps"}


@pytest.mark.parametrize("module, imported, layer", [
    ("b2s_core.apps.predict", "b2s_core.train.loop", "apps"),
    ("b2s_core.grids", "converters.readers.labels", "bottom"),
    ("b2s_core.models.heads", "b2s_cli.app", "library"),
    ("converters.readers.nuplan", "converters.jobs.convert", "readers"),
])
def test_a_wrong_import_is_caught(module, imported, layer):
    assert layer_of(module) == layer
    assert violations({module: {imported}}) != []


def test_an_engine_importing_training_is_caught():
    assert violations({"converters.jobs.scene_run": {"b2s_core.train.config"}}) != []
