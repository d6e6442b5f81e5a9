"""``write_dataset``: simulate scenes and write them in the requested real formats, plus exact truth.

Output layout under ``out_dir`` (details in docs/synth.md)::

    nuscenes/        nuScenes v1.0 dataroot (<version>/, samples/, sweeps/, maps/)
    occ3d/gts/       Occ3D labels
    openoccupancy/   OpenOccupancy sparse labels
    nuplan/          nuPlan .db logs + sensor_blobs/
    openscene/       OpenScene meta_datas/ + occupancy + sensor_blobs/
    ground_truth/    exact truth per key frame (b2s_core.synth.truth_file)
    synth_manifest.json
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from b2s_core.errors import B2SError
from b2s_core.grids import SOURCE_GRIDS, VoxelGrid, get_grid
from b2s_core.paths import name_problem
from b2s_core.synth.labels import LabelTarget
from b2s_core.synth.scene import MASK_MAX_VOXELS, KeyFrameRecord, SceneSpec, simulate_scene
from b2s_core.synth.sensors import NUPLAN_CAMERAS, NUSCENES_CAMERAS, LidarSpec
from b2s_core.synth.truth_file import GroundTruthFrame, load_ground_truth, write_ground_truth
from b2s_core.synth.writers.common import atomic_write_json
from b2s_core.synth.writers.nuscenes import NuScenesWriter, log_name
from b2s_core.synth.writers.occ3d import Occ3DWriter
from b2s_core.synth.writers.openoccupancy import OpenOccupancyWriter, openoccupancy_target

MANIFEST = "synth_manifest.json"
FORMATS = ("nuscenes", "occ3d", "openoccupancy", "nuplan", "openscene")
LABEL_FORMATS = ("occ3d", "openoccupancy", "openscene")  # formats whose files hold labels, on SOURCE_GRIDS[format]
FORMAT_RIGS = {"nuscenes": "nuscenes", "nuplan": "nuplan", "openscene": "nuplan"}


class SynthError(B2SError, ValueError):
    """Bad options for the synthetic world, or a missing / foreign manifest."""


@dataclass
class SynthManifest:
    """What ``write_dataset`` wrote: paths per format, scenes, key-frame tokens, truth files."""

    root: Path
    data: dict

    @property
    def scene_names(self) -> list[str]:
        return [s["name"] for s in self.data["scenes"]]

    def path(self, fmt: str) -> Path:
        """Root folder of one written format (e.g. the nuScenes dataroot)."""
        try:
            return self.root / self.data["formats"][fmt]["root"]
        except KeyError:
            raise SynthError(f"{self.root / MANIFEST}: format '{fmt}' was not written") from None

    @property
    def nuscenes_version(self) -> str:
        return self.data["formats"]["nuscenes"]["version"]

    def key_frames(self, scene: str) -> list[dict]:
        for s in self.data["scenes"]:
            if s["name"] == scene:
                return s["key_frames"]
        raise SynthError(f"{self.root / MANIFEST}: no scene '{scene}'")

    def ground_truth(self, scene: str, key_index: int) -> GroundTruthFrame:
        return load_ground_truth(self.root / self.key_frames(scene)[key_index]["ground_truth"])


def load_manifest(out_dir: str | Path) -> SynthManifest:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise SynthError(f"{path}: not a synthetic dataset (no {MANIFEST})")
    return SynthManifest(Path(out_dir), json.loads(path.read_text()))


def write_dataset(
    out_dir: str | Path,
    *,
    scenes: int = 2,
    frames: int = 3,
    formats: Iterable[str] = ("nuscenes", "occ3d"),
    seed: int = 0,
    image_size: tuple[int, int] | None = (400, 225),
    grids: Iterable[str | VoxelGrid] = (),
    nuscenes_version: str = "v1.0-mini",
    lidar: LidarSpec = LidarSpec(),
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthManifest:
    """Simulate ``scenes`` scenes of ``frames`` key frames (2 Hz; 20 Hz LiDAR sweeps between them)
    and write them in ``formats``. ``image_size`` is the (W, H) of the nuScenes images (None: the
    real 1600x900). ``grids`` adds grids to the exact truth beyond those the formats need, each with
    a label set and its visibility masks. ``progress(done, total)`` is called after every sweep.
    Deterministic given ``seed``. A non-empty ``out_dir`` is refused unless ``overwrite`` (then
    files of the same names are replaced); the manifest is written last, so a dataset without one
    is incomplete.
    """
    formats = tuple(dict.fromkeys(formats))
    _check_options(formats, scenes, frames, image_size, nuscenes_version)
    requested = [get_grid(g) for g in grids]
    grid_list = _truth_grids(formats, requested)
    root = _prepare_folder(Path(out_dir), overwrite)
    writers = _writers(root, formats, nuscenes_version)
    specs = [
        SceneSpec(seed=seed, index=i, key_frames=frames, lidar=lidar, rigs=_rigs(formats), image_size=image_size,
                  grids=tuple(grid_list.values()), labels=_label_targets(formats, grid_list, requested, lidar))
        for i in range(scenes)
    ]
    counter = _SweepCounter(sum(s.num_sweeps for s in specs), progress)
    scene_entries = [_write_scene(root, spec, writers, counter) for spec in specs]
    manifest = {
        "format": "b2s-synth", "format_version": 1, "seed": seed, "num_scenes": scenes, "key_frames_per_scene": frames,
        "image_size": list(image_size) if image_size else None, "grids": {n: g.to_dict() for n, g in grid_list.items()},
        "formats": _format_entries(root, writers), "scenes": scene_entries,
    }
    atomic_write_json(root / MANIFEST, manifest)
    return SynthManifest(root, manifest)


def _check_options(formats: tuple[str, ...], scenes: int, frames: int, image_size, nuscenes_version: str) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SynthError(f"unknown format(s) {', '.join(unknown)}: use {', '.join(FORMATS)}")
    if scenes < 1 or frames < 1:
        raise SynthError(f"need at least one scene and one key frame, got scenes={scenes}, frames={frames}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 8):
        raise SynthError(f"image size must be two numbers >= 8 (W, H), got {image_size}")
    if name_problem(nuscenes_version):  # it names the tables' folder under <out>/nuscenes, never a path out of it
        raise SynthError(f"nuScenes version {nuscenes_version!r} {name_problem(nuscenes_version)}; give a folder name such as v1.0-mini")


def _truth_grids(formats: tuple[str, ...], requested: list[VoxelGrid]) -> dict[str, VoxelGrid]:
    """Grids of the exact truth: those asked for, then those the formats need."""
    grid_list: dict[str, VoxelGrid] = {}
    for grid in requested + [SOURCE_GRIDS[f] for f in formats if f in LABEL_FORMATS]:
        grid_list.setdefault(grid.name, grid)
    return grid_list


def _label_targets(formats: tuple[str, ...], grid_list: dict[str, VoxelGrid], requested: list[VoxelGrid],
                   lidar: LidarSpec) -> tuple[LabelTarget, ...]:
    """The label sets to make: Occ3D's and the asked-for grids' (with masks), OpenScene's, OpenOccupancy's."""
    targets: dict[str, LabelTarget] = {}
    for grid in requested + ([grid_list["occ3d"]] if "occ3d" in grid_list else []):
        if grid.num_voxels <= MASK_MAX_VOXELS:
            targets.setdefault(grid.name, LabelTarget(grid.name, grid, masks=True))
    if "openscene" in formats:
        targets.setdefault("openscene", LabelTarget("openscene", grid_list["openscene"]))
    if "openoccupancy" in formats:
        target = openoccupancy_target(lidar)
        targets[target.name] = target
    return tuple(targets.values())


def _rigs(formats: tuple[str, ...]) -> dict[str, tuple]:
    rigs = {}
    for f in formats:
        rig = FORMAT_RIGS.get(f)
        if rig:
            rigs[rig] = NUSCENES_CAMERAS if rig == "nuscenes" else NUPLAN_CAMERAS
    if not rigs:
        rigs["nuscenes"] = NUSCENES_CAMERAS  # the truth's class-id images and the camera masks need a rig
    return rigs


def _prepare_folder(root: Path, overwrite: bool) -> Path:
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise SynthError(f"{root}: folder is not empty (choose an empty folder, or overwrite)")
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)
    return root


@dataclass
class _SweepCounter:
    """Sweeps written so far, reported to the progress callback."""

    total: int
    progress: Callable[[int, int], None] | None
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _write_scene(root: Path, spec: SceneSpec, writers: dict, counter: _SweepCounter) -> dict:
    """Simulate one scene into every writer and the truth files; returns its manifest entry."""
    for w in writers.values():
        w.begin_scene(spec)
    key_frames = []
    world = None
    for record in simulate_scene(spec):
        if isinstance(record, KeyFrameRecord):
            world = record.world
            key_frames.append(_write_key_frame(root, spec, record, writers))
        else:
            for w in writers.values():
                w.add_sweep(record)
            counter.step()
    for w in writers.values():
        w.end_scene(world)
    return {
        "name": spec.name, "index": spec.index, "layout": world.layout,
        "nuscenes_scene_token": NuScenesWriter.scene_token(spec), "log_name": log_name(spec),
        "num_sweeps": spec.num_sweeps, "key_frames": key_frames,
        **{k: v for w in writers.values() for k, v in getattr(w, "scene_tokens", lambda s: {})(spec).items()},
    }


def _write_key_frame(root: Path, spec: SceneSpec, record: KeyFrameRecord, writers: dict) -> dict:
    """Hand a key frame to every writer, write its truth file; returns its manifest entry."""
    for w in writers.values():
        w.add_key_frame(record)
    truth_rel = f"ground_truth/{spec.name}/{record.key_index:03d}.npz"
    write_ground_truth(root / truth_rel, record)
    return {
        "index": record.key_index, "timestamp": record.timestamp, "sweep_index": record.sweep.sweep_index,
        "nuscenes_sample_token": NuScenesWriter.sample_token(spec, record.key_index),
        "nuscenes_lidar_token": NuScenesWriter.sample_data_token(spec, "LIDAR_TOP", record.sweep.sweep_index),
        "ground_truth": truth_rel,
        **{k: v for w in writers.values() for k, v in getattr(w, "key_tokens", lambda s, r: {})(spec, record).items()},
    }


def _format_entries(root: Path, writers: dict) -> dict:
    """Each writer's manifest entry; paths inside the output folder are stored relative to it."""
    entries = {}
    for name, w in writers.items():
        entry = w.finish()
        entries[name] = {
            k: str(Path(v).relative_to(root)) if isinstance(v, str) and Path(v).is_relative_to(root) else v
            for k, v in entry.items()
        }
    return entries


def _writers(root: Path, formats: tuple[str, ...], nuscenes_version: str) -> dict:
    writers = {}
    for f in formats:
        if f == "nuscenes":
            writers[f] = NuScenesWriter(root / "nuscenes", nuscenes_version)
        elif f == "occ3d":
            writers[f] = Occ3DWriter(root / "occ3d")
        else:
            writers[f] = _optional_writer(f, root)
    return writers


def _optional_writer(fmt: str, root: Path):
    if fmt == "openoccupancy":
        return OpenOccupancyWriter(root / "openoccupancy")
    if fmt == "nuplan":
        from b2s_core.synth.writers.nuplan import NuPlanWriter

        return NuPlanWriter(root / "nuplan")
    from b2s_core.synth.writers.openscene import OpenSceneWriter

    return OpenSceneWriter(root / "openscene")
