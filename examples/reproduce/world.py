"""The synthetic world of the reproduction, built with the toolkit's own data engine.

    synth/                  b2s_core.synth.write_dataset: nuScenes-format logs + Occ3D labels
    data/binary_<b>.h5      b2s build-binary (LiDAR aggregation + ray casting) of block b of the
                            binary-only scenes, directly on the miniature grid
    data/semantic.h5        b2s convert (nuScenes + Occ3D labels) of the K labelled scenes, put on the
                            miniature grid (cropped)
    data/val.h5             the same for the held-out validation scenes
    data/pseudo_gt.h5       the same for the P auto-labelled scenes (C4's "K+P GT" reference)

Scene roles are fixed by index: validation first, then the labelled scenes, then the binary-only
scenes, so that changing N keeps K and the validation set identical. The world is cached: a
``world.json`` records the scale's world parameters and the files; a mismatch is an error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import crop_window, get_grid

Log = Callable[[str], None]

# The Occ3D classes that are the ground: a grid where these are most of the occupied voxels teaches
# little geometry (docs/reproduce.md measures their share per grid).
GROUND_CLASSES = ("driveable_surface", "other_flat", "sidewalk", "terrain")


class WorldError(B2SError):
    """A cached world that does not belong to the requested scale, or a stage that failed."""


@dataclass
class World:
    root: Path
    val: Path
    semantic: Path
    pseudo_gt: Path
    binary_blocks: list[Path]  # block b holds binary scenes [b * block, (b + 1) * block)
    block_size: int
    pseudo_blocks: int  # the first pseudo_blocks blocks are C4's P scenes
    scene_roles: dict[str, list[str]]

    def binary_files(self, scenes: int) -> list[Path]:
        """The pre-training set of ``scenes`` binary scenes (a union of whole blocks)."""
        if scenes % self.block_size:
            raise WorldError(f"{scenes} pre-training scenes is not a whole number of blocks of {self.block_size}")
        return self.binary_blocks[: scenes // self.block_size]

    @property
    def pseudo_binary(self) -> list[Path]:
        return self.binary_blocks[: self.pseudo_blocks]


def scene_roles(names: list[str], scale) -> dict[str, list[str]]:
    V, K, N = scale.val_scenes, scale.semantic_scenes, scale.binary_scenes
    return {"val": names[:V], "semantic": names[V:V + K], "binary": names[V + K:V + K + N]}


def _atomic_json(path: Path, data: dict) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=2))
    temp.replace(path)


def onto_grid(src: Path, dst: Path, grid_spec: str) -> Path:
    """Write ``src`` (a labelled unified HDF5 file) cropped to the grid ``grid_spec`` (atomically).

    The miniature grid keeps the labels' own voxels over a smaller box (b2s_core.grids.crop_window
    refuses a grid of other voxels or off their lattice), so labels, occupancy and masks are sliced.
    """
    from b2s_core.occfile import OccDataset, OccWriter

    target = get_grid(grid_spec)
    data = OccDataset(src)
    taxonomy, attrs = data.taxonomy, data.attrs()

    def frames(indices: range, window: tuple[slice, slice, slice]):
        for i in indices:
            frame = data.read(i)
            if frame.semantics is None:
                raise WorldError(f"{src}: frame {i} has no semantic labels to put on the miniature grid")
            frame.semantics = frame.semantics[window]
            frame.occupancy = frame.semantics != taxonomy.free_index
            for name in ("mask_camera", "mask_lidar"):
                mask = getattr(frame, name)
                if mask is not None:
                    setattr(frame, name, mask[window])
            yield frame

    try:
        window = crop_window(data.grid, target)
        with OccWriter(dst, grid=target, taxonomy=taxonomy, source=data.source,
                       command=f"examples/reproduce_paper.py: {src.name} on the grid {grid_spec}",
                       camera_names=data.camera_names, image_root=attrs.get("image_root") or None) as writer:
            for scene in data.scenes:
                writer.write_scene(scene.name, frames(range(scene.start, scene.stop), window))
    finally:
        data.close()
    return dst


def build_world(root: Path, scale, *, workers: int = 1, log: Log = print) -> World:
    """Build (or reuse) the world of ``scale`` under ``root``; each stage is skipped when its file exists."""
    from b2s_core.synth import load_manifest, write_dataset

    root.mkdir(parents=True, exist_ok=True)
    info_path = root / "world.json"
    key = scale.world_key()
    if info_path.is_file():
        saved = json.loads(info_path.read_text())
        if saved.get("key") != key:
            raise WorldError(f"{info_path}: this work folder holds a world of other parameters; use another --work folder")
    _atomic_json(info_path, {"key": key, "complete": False})
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)

    # 1. simulate: nuScenes-format logs (cameras, 20 Hz LiDAR, boxes) + Occ3D labels
    synth = root / "synth"
    total_scenes = scale.val_scenes + scale.semantic_scenes + scale.binary_scenes
    if not (synth / "synth_manifest.json").is_file():
        started = time.perf_counter()
        log(f"world: simulating {total_scenes} scenes x {scale.frames} key frames ({scale.image_size[0]}x{scale.image_size[1]} images)")
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 20 or done == total:
                last[0] = time.perf_counter()
                log(f"world:   sweeps {done}/{total}")

        write_dataset(synth, scenes=total_scenes, frames=scale.frames, formats=("nuscenes", "occ3d"), seed=scale.synth_seed,
                      image_size=tuple(scale.image_size), progress=progress)
        log(f"world: simulated in {time.perf_counter() - started:.0f} s")
    manifest = load_manifest(synth)
    roles = scene_roles(manifest.scene_names, scale)
    dataroot, version, labels = manifest.path("nuscenes"), manifest.nuscenes_version, f"occ3d:{manifest.path('occ3d')}"

    # 2. binary-only scenes through the real engine (b2s build-binary), block by block
    from converters.jobs.build_binary import BuildBinaryJob, build_binary

    block = scale.block_size
    blocks = []
    for b in range(scale.binary_scenes // block):
        out = data_dir / f"binary_{b}.h5"
        blocks.append(out)
        if out.is_file():
            continue
        scenes = roles["binary"][b * block:(b + 1) * block]
        started = time.perf_counter()
        summary = build_binary(BuildBinaryJob(
            source="nuscenes", dataroot=dataroot, out=out, version=version, scenes=scenes, grid=scale.grid,
            workers=workers, command=f"b2s build-binary --source nuscenes --grid {scale.grid} (reproduce_paper.py)"))
        if summary.skipped:
            log(f"world:   build-binary skipped {len(summary.skipped)} frame(s): {summary.skipped[0]}")
        log(f"world: build-binary block {b} ({len(scenes)} scenes, {summary.frames} frames) in {time.perf_counter() - started:.0f} s")

    # 3. labelled scenes through b2s convert, then cropped to the miniature grid
    from converters.jobs.convert import ConvertConfig, convert

    def labelled(name: str, scenes: list[str]) -> Path:
        out = data_dir / f"{name}.h5"
        if out.is_file():
            return out
        full = data_dir / f"{name}.occ3d.h5"
        started = time.perf_counter()
        if not full.is_file():
            summary = convert(ConvertConfig(source="nuscenes", dataroot=dataroot, out=full, version=version, labels=labels,
                                            scenes=scenes, workers=workers, store_points=False,
                                            command="b2s convert --source nuscenes --labels occ3d (reproduce_paper.py)"))
            if summary.skipped:
                log(f"world:   convert skipped {len(summary.skipped)} frame(s): {summary.skipped[0]}")
        onto_grid(full, out, scale.grid)
        full.unlink()
        log(f"world: {name}: {len(scenes)} labelled scenes converted and put on the miniature grid in "
            f"{time.perf_counter() - started:.0f} s")
        return out

    pseudo_scenes = roles["binary"][: scale.pseudo_scenes]
    if scale.pseudo_scenes % block:
        raise WorldError(f"P = {scale.pseudo_scenes} auto-labelled scenes must be whole blocks of {block} binary scenes")
    world = World(root=root, val=labelled("val", roles["val"]), semantic=labelled("semantic", roles["semantic"]),
                  pseudo_gt=labelled("pseudo_gt", pseudo_scenes), binary_blocks=blocks, block_size=block,
                  pseudo_blocks=scale.pseudo_scenes // block, scene_roles=roles)
    _atomic_json(info_path, {"key": key, "complete": True, "roles": roles,
                             "stats": world_stats(world)})
    return world


def world_stats(world: World) -> dict:
    """Occupancy statistics of each file (what the report prints about the world)."""
    from b2s_core.occfile import OccDataset

    out = {}
    for name, paths in (("val", [world.val]), ("semantic", [world.semantic]), ("pseudo_gt", [world.pseudo_gt]),
                        ("binary", world.binary_blocks)):
        data = OccDataset([str(p) for p in paths])
        ground = [data.taxonomy.class_names.index(c) for c in GROUND_CLASSES if c in data.taxonomy.class_names]
        occupied, observed, on_ground = [], [], []
        labelled = name != "binary"
        for i in range(len(data)):
            frame = data.read(i, fields=("occupancy", "mask_camera") + (("semantics",) if labelled else ()))
            mask = frame.mask_camera if frame.mask_camera is not None else np.ones_like(frame.occupancy)
            occupied.append(float((frame.occupancy & mask).sum()))
            observed.append(float(mask.sum()))
            if labelled:
                on_ground.append(float((np.isin(frame.semantics, ground) & mask).sum()))
        out[name] = {"scenes": len(data.scenes), "frames": len(data), "grid": list(data.grid.shape),
                     "occupied_in_camera_mask_per_frame": round(float(np.mean(occupied)), 1),
                     "camera_mask_per_frame": round(float(np.mean(observed)), 1)}
        if on_ground:  # the share of the geometry that is the ground (docs/reproduce.md compares real labels)
            out[name]["ground_share_of_occupied"] = round(100.0 * sum(on_ground) / max(sum(occupied), 1.0), 1)
        data.close()
    out["binary_vs_labels"] = binary_agreement(world)
    return out


def binary_agreement(world: World) -> dict:
    """How well build-binary's occupancy of the P scenes matches their (cropped) Occ3D labels.

    The pre-training data and the labels come from different processes (LiDAR aggregation vs the
    label writer), as in real life; this says how different, inside the labels' camera mask.
    """
    from b2s_core.occfile import OccDataset

    binary, labels = OccDataset([str(p) for p in world.pseudo_binary]), OccDataset(str(world.pseudo_gt))
    tp = fp = fn = 0
    for i in range(min(len(binary), len(labels))):
        b = binary.read(i, fields=("occupancy",)).occupancy
        truth = labels.read(i, fields=("occupancy", "mask_camera"))
        mask = truth.mask_camera if truth.mask_camera is not None else np.ones_like(b)
        t = truth.occupancy
        tp += int((b & t & mask).sum())
        fp += int((b & ~t & mask).sum())
        fn += int((~b & t & mask).sum())
    binary.close()
    labels.close()
    return {"iou": round(100.0 * tp / max(tp + fp + fn, 1), 2), "precision": round(100.0 * tp / max(tp + fp, 1), 2),
            "recall": round(100.0 * tp / max(tp + fn, 1), 2)}
