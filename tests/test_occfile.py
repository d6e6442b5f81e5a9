"""The unified HDF5 format: round trips, shards, crash safety, validation, resumable writing."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.occfile import FORMAT_VERSION, OccDataset, OccFormatError, OccWriter, ResumableWriter, validate_file
from b2s_core.records import Camera, OccFrame
from b2s_core.taxonomy import OCC3D

SMALL = VoxelGrid((-4.0, -4.0, -1.0), (4.0, 4.0, 2.2), (0.4, 0.4, 0.4), "small")  # 20 x 20 x 8
CAMS = ["CAM_FRONT", "CAM_BACK"]


def make_frame(rng: np.random.Generator, scene: str, k: int, grid: VoxelGrid = SMALL, full: bool = True) -> OccFrame:
    shape = grid.shape
    semantics = rng.integers(0, 17, size=shape, dtype=np.uint8)
    semantics[rng.random(shape) < 0.7] = OCC3D.free_index
    occupancy = semantics != OCC3D.free_index
    cameras = [
        Camera("CAM_FRONT", rng.random((3, 3)), rng.random((4, 4)), 1600, 900, image_path=f"samples/f{k}.jpg",
               image_bytes=rng.integers(0, 255, 100 + k, dtype=np.uint8).tobytes() if full else None, timestamp=k * 10),
        Camera("CAM_BACK", rng.random((3, 3)), rng.random((4, 4)), 800, 450, image_path=f"samples/b{k}.jpg", timestamp=k * 10 + 1),
    ]
    frame = OccFrame(scene=scene, token=f"{scene}-tok{k}", timestamp=1_000_000 + k, global_from_ego=rng.random((4, 4)),
                     cameras=cameras, occupancy=occupancy, source_tokens={"sample": f"s{k}", "lidar": f"l{k}"})
    if full:
        M = int(occupancy.sum())
        frame.semantics = semantics
        frame.mask_lidar = rng.random(shape) < 0.5
        frame.mask_camera = frame.mask_lidar & (rng.random(shape) < 0.8)
        frame.mask_camera[0, 0, 0] = True  # a camera-visible voxel outside mask_lidar must survive too
        frame.binary_pred = rng.random(shape) < 0.3
        frame.top2_labels = rng.integers(0, 18, (M, 2), dtype=np.uint8)
        frame.top2_logits = rng.standard_normal((M, 2)).astype(np.float16)
        frame.points = rng.standard_normal((50 + k, 3)).astype(np.float32)
        frame.lidar_origin = np.array([0.9, 0.0, 1.8], np.float32)
    return frame


def write(path: Path, scenes: dict[str, list[OccFrame]], grid: VoxelGrid = SMALL) -> Path:
    with OccWriter(path, grid=grid, taxonomy=OCC3D, source="test", command="pytest", camera_names=CAMS, image_root="/data") as w:
        for name, frames in scenes.items():
            w.write_scene(name, frames)
    return path


def assert_same(a: OccFrame, b: OccFrame, images: bool = True) -> None:
    assert (a.scene, a.token, a.timestamp, a.source_tokens) == (b.scene, b.token, b.timestamp, b.source_tokens)
    np.testing.assert_array_equal(a.global_from_ego, b.global_from_ego)
    for name in ("occupancy", "semantics", "mask_lidar", "mask_camera", "binary_pred", "top2_labels", "top2_logits",
                 "points", "lidar_origin"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
            assert np.asarray(x).dtype == np.asarray(y).dtype, name
    assert [c.name for c in a.cameras] == [c.name for c in b.cameras]
    for ca, cb in zip(a.cameras, b.cameras):
        np.testing.assert_array_equal(ca.intrinsic, cb.intrinsic)
        np.testing.assert_array_equal(ca.ego_from_cam, cb.ego_from_cam)
        assert (ca.width, ca.height, ca.image_path, ca.timestamp) == (cb.width, cb.height, cb.image_path, cb.timestamp)
        if images:
            assert ca.image_bytes == cb.image_bytes


def test_round_trip_every_field_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    frames = {"scene-a": [make_frame(rng, "scene-a", k) for k in range(3)],
              "scene-b": [make_frame(rng, "scene-b", k, full=False) for k in range(2)]}
    path = write(tmp_path / "x.h5", frames)
    ds = OccDataset(path)
    assert len(ds) == 5 and [s.name for s in ds.scenes] == ["scene-a", "scene-b"]
    assert ds.grid.same_geometry(SMALL) and ds.taxonomy.name == "occ3d" and ds.camera_names == CAMS
    originals = frames["scene-a"] + frames["scene-b"]
    for i, original in enumerate(originals):
        assert_same(original, ds[i], images=False)
    assert ds.scene_indices("scene-b") == range(3, 5)
    assert ds.scene_of(4) == "scene-b"
    # Embedded images come back byte-identical; the back camera's image is only a path under
    # image_root (/data), which does not exist here.
    assert ds.image(0, "CAM_FRONT") == originals[0].cameras[0].image_bytes
    with pytest.raises(OccFormatError, match="image file missing"):
        ds.image(0, "CAM_BACK")
    # partial decoding returns only what was asked
    partial = ds.read(0, fields=("occupancy",))
    assert partial.semantics is None and partial.mask_camera is None and partial.cameras == []


def test_images_from_image_root(tmp_path):
    rng = np.random.default_rng(1)
    frame = make_frame(rng, "s", 0, full=False)
    path = write(tmp_path / "x.h5", {"s": [frame]})
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "f0.jpg").write_bytes(b"front-bytes")
    (tmp_path / "samples" / "b0.jpg").write_bytes(b"back-bytes")
    ds = OccDataset(path, image_root=str(tmp_path))
    assert ds.image(0, "CAM_BACK") == b"back-bytes"
    assert [c.image_bytes for c in ds.read(0, images=True).cameras] == [b"front-bytes", b"back-bytes"]


def test_several_shards_read_as_one(tmp_path):
    rng = np.random.default_rng(2)
    a = {"s1": [make_frame(rng, "s1", k) for k in range(2)]}
    b = {"s2": [make_frame(rng, "s2", k) for k in range(3)], "s3": [make_frame(rng, "s3", 0)]}
    ds = OccDataset([write(tmp_path / "a.h5", a), write(tmp_path / "b.h5", b)])
    assert len(ds) == 6
    assert [(s.name, s.start, s.stop) for s in ds.scenes] == [("s1", 0, 2), ("s2", 2, 5), ("s3", 5, 6)]
    for i, original in enumerate(a["s1"] + b["s2"] + b["s3"]):
        assert_same(original, ds[i], images=False)
    with pytest.raises(OccFormatError, match="also appears"):
        OccDataset([tmp_path / "a.h5", tmp_path / "a.h5"])
    other = VoxelGrid((-4.0, -4.0, -1.0), (4.0, 4.0, 2.2), (0.8, 0.8, 0.8))
    write(tmp_path / "c.h5", {"s9": [make_frame(rng, "s9", 0, other)]}, grid=other)
    with pytest.raises(OccFormatError, match="grid"):
        OccDataset([tmp_path / "a.h5", tmp_path / "c.h5"])


def test_real_occ3d_sample_round_trips(tmp_path, occ3d_sample):
    data = np.load(occ3d_sample)
    semantics = data["semantics"]
    frame = OccFrame("scene", "29796060110c4163b07f06eff4af0753", 0, np.eye(4), [], semantics != 17, semantics,
                     data["mask_lidar"].astype(bool), data["mask_camera"].astype(bool))
    with OccWriter(tmp_path / "o.h5", grid=GRID_PRESETS["occ3d"], taxonomy=OCC3D, source="occ3d") as w:
        w.write_scene("scene", [frame])
    got = OccDataset(tmp_path / "o.h5")[0]
    np.testing.assert_array_equal(got.semantics, semantics)
    np.testing.assert_array_equal(got.mask_lidar.astype(np.uint8), data["mask_lidar"])
    np.testing.assert_array_equal(got.mask_camera.astype(np.uint8), data["mask_camera"])
    assert (tmp_path / "o.h5").stat().st_size < 69_234  # smaller than Occ3D's own npz of this frame


def test_semantics_must_agree_with_occupancy(tmp_path):
    rng = np.random.default_rng(3)
    frame = make_frame(rng, "s", 0)
    frame.occupancy = ~frame.occupancy
    with pytest.raises(OccFormatError, match="disagree"):
        write(tmp_path / "x.h5", {"s": [frame]})
    assert not (tmp_path / "x.h5").exists()
    assert not list(tmp_path.glob(".x.h5.tmp*")), "an aborted writer removes its temporary file"


_KILL_SCRIPT = """
import sys, time, numpy as np
sys.path.insert(0, {tests!r})
from test_occfile import make_frame, SMALL, CAMS
from b2s_core.occfile import OccWriter
from b2s_core.taxonomy import OCC3D
rng = np.random.default_rng(0)
with OccWriter({path!r}, grid=SMALL, taxonomy=OCC3D, source="test", camera_names=CAMS) as w:
    def frames():
        k = 0
        while True:
            yield make_frame(rng, "s", k)
            if k == 3:
                print("writing", flush=True)
            k += 1
            time.sleep(0.01)
    w.write_scene("s", frames())
"""


def test_sigkill_mid_write_keeps_previous_file(tmp_path):
    rng = np.random.default_rng(4)
    path = write(tmp_path / "x.h5", {"old": [make_frame(rng, "old", 0)]})
    before = path.read_bytes()
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before, "the previous complete file is untouched"
    assert OccDataset(path).scenes[0].name == "old"
    leftovers = list(tmp_path.glob(".x.h5.tmp*"))
    assert leftovers, "the killed writer was working on a temporary file"
    for leftover in leftovers:
        with pytest.raises(OccFormatError):
            validate_file(leftover)


def test_validation_messages(tmp_path):
    with pytest.raises(OccFormatError, match="no such file"):
        validate_file(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(OccFormatError, match="not a readable HDF5"):
        validate_file(tmp_path / "text.h5")
    rng = np.random.default_rng(5)
    good = write(tmp_path / "good.h5", {"s": [make_frame(rng, "s", 0)]})
    (tmp_path / "trunc.h5").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OccFormatError, match="not a readable HDF5"):
        validate_file(tmp_path / "trunc.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.attrs["x"] = 1
    with pytest.raises(OccFormatError, match="not a b2s occupancy file"):
        validate_file(tmp_path / "other.h5")
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "a") as h5:
        h5.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(OccFormatError, match=f"format version {FORMAT_VERSION + 1}"):
        validate_file(newer)
    incomplete = tmp_path / "incomplete.h5"
    incomplete.write_bytes(good.read_bytes())
    with h5py.File(incomplete, "a") as h5:
        h5.attrs["complete"] = 0
    with pytest.raises(OccFormatError, match="incomplete"):
        validate_file(incomplete)


def test_resumable_writer_skips_finished_scenes_and_merges(tmp_path):
    rng = np.random.default_rng(6)
    # scene-1 carries occupancy only: its absent grids have no chunks to copy when merging
    scenes = {f"scene-{k}": [make_frame(rng, f"scene-{k}", j, full=k != 1) for j in range(2)] for k in range(3)}
    kwargs = dict(grid=SMALL, taxonomy=OCC3D, source="test", camera_names=CAMS)
    out = tmp_path / "out.h5"
    first = ResumableWriter(out, **kwargs)
    first.write_scene("scene-0", scenes["scene-0"])
    first.write_scene("scene-1", scenes["scene-1"])
    # a crash here: the second run redoes nothing that is finished
    second = ResumableWriter(out, **kwargs)
    assert second.is_done("scene-0") and second.is_done("scene-1") and not second.is_done("scene-2")
    second.part_path("scene-2").write_bytes(b"garbage from a crash")
    assert not second.is_done("scene-2")
    second.write_scene("scene-2", scenes["scene-2"])
    with pytest.raises(OccFormatError, match="not finished"):
        second.finalize(["scene-0", "scene-1", "scene-2", "scene-3"])
    second.finalize(["scene-2", "scene-0", "scene-1"])
    ds = OccDataset(out)
    assert [s.name for s in ds.scenes] == ["scene-2", "scene-0", "scene-1"]
    for i, original in enumerate(scenes["scene-2"] + scenes["scene-0"] + scenes["scene-1"]):
        got = ds.read(i, images="embedded")
        assert_same(original, got, images=False)
        assert got.cameras[0].image_bytes == original.cameras[0].image_bytes
    assert not second.parts_dir.exists()


def _read_in_child(ds: OccDataset, index: int, queue) -> None:
    frame = ds[index]
    queue.put((frame.token, int(frame.semantics.sum())))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataset_is_safe_in_worker_processes(tmp_path, method):
    rng = np.random.default_rng(7)
    frames = [make_frame(rng, "s", k) for k in range(3)]
    ds = OccDataset(write(tmp_path / "x.h5", {"s": frames}))
    _ = ds[0]  # the parent has an open handle before the workers start
    pickle.loads(pickle.dumps(ds))
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_in_child, args=(ds, k, queue)) for k in range(3)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    assert results == sorted((f.token, int(f.semantics.sum())) for f in frames)
    assert ds[2].token == frames[2].token  # the parent's handle still works


def test_cli_info_summary_and_errors(tmp_path):
    rng = np.random.default_rng(8)
    path = write(tmp_path / "x.h5", {"s": [make_frame(rng, "s", k) for k in range(2)]})
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run([sys.executable, "-m", "b2s_cli.app", "info", str(path)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    for text in ("occ3d", "20x20x8", "frames", "with semantics", "2 (100%)", "bytes per frame"):
        assert text in ok.stdout
    (tmp_path / "bad.h5").write_text("nope")
    for bad, message in ((tmp_path / "missing.h5", "no such file"), (tmp_path / "bad.h5", "not a readable HDF5")):
        result = subprocess.run([sys.executable, "-m", "b2s_cli.app", "info", str(bad)], capture_output=True, text=True, env=env)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and str(bad) in lines[0]
