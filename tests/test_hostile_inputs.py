"""Hostile and corrupt inputs (issue 16).

* Nothing a dataset contains reads outside its root: a path from a dataset table that is absolute
  or climbs out of its folder skips its frame with a reason, and a *valid* secret file placed
  where the path points never reaches the output.
* Corrupt inputs give one line naming file, frame and problem: a skipped frame under the default
  ``--on-error skip`` (listed with its reason, the run goes on), or an error, never a traceback.

Each case builds a tiny dataset the way the converter tests do (``b2s_core.synth`` for nuScenes,
``_convert_data`` for nuPlan / OpenScene, ``test_occfile`` for the unified format) and breaks one
thing in it.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from _convert_data import write_tiny_nuplan, write_tiny_openscene
from PIL import Image
from test_occfile import make_frame, write
from typer.testing import CliRunner

from b2s_cli.app import app
from b2s_core.occfile import OccDataset, OccFormatError, check_frames
from b2s_core.synth import SynthError, write_dataset
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.build_binary import BuildBinaryJob, build_binary
from converters.jobs.convert import ConvertConfig, convert
from converters.readers.pcd import write_pcd

SMALL_GRID = "-16,-16,-1,16,16,5.4:0.4"  # build-binary plumbing only


# -- secrets: valid files of every kind, outside every dataset root ---------------------------------
def _secret_jpeg(path: Path) -> bytes:
    noise = np.random.default_rng(16).integers(0, 255, (24, 32, 3), dtype=np.uint8)  # high entropy: unmistakable bytes
    Image.fromarray(noise).save(path, format="JPEG", quality=95)
    return path.read_bytes()


@pytest.fixture
def secrets(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "secret"
    folder.mkdir()
    _secret_jpeg(folder / "secret.jpg")
    points = np.random.default_rng(17).normal(size=(64, 6)).astype(np.float32) * 3
    write_pcd(folder / "secret.pcd", points, ("x", "y", "z", "intensity", "ring", "lidar_info"))
    points[:, :5].tofile(folder / "secret.pcd.bin")
    np.save(folder / "secret.npy", np.array([[5, 4], [6, 7]], np.int64))  # valid OpenScene label rows
    return {p.name: p for p in folder.iterdir()}


def _assert_skipped_one(summary, reason: str, token: str | None = None) -> None:
    (row,) = summary.skipped
    assert reason in row.problem, row.problem
    assert "\n" not in row.problem  # one line
    if token is not None:
        assert row.token == token


def _assert_no_secret_in(out: Path, secrets: dict[str, Path]) -> None:
    # Embedded images are stored byte for byte: a run that read the secret JPEG would hold this slice of it.
    if out.exists():
        jpeg = secrets["secret.jpg"].read_bytes()
        assert jpeg[len(jpeg) // 2:len(jpeg) // 2 + 64] not in out.read_bytes()


# -- nuScenes (a one-frame synthetic dataset) ---------------------------------------------------------
@pytest.fixture(scope="module")
def nuscenes_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nus")
    write_dataset(root, scenes=1, frames=1, formats=("nuscenes",), image_size=(32, 18))
    return root / "nuscenes"


@pytest.fixture
def nuscenes(nuscenes_template, tmp_path) -> Path:
    root = tmp_path / "nuscenes"
    shutil.copytree(nuscenes_template, root)
    return root


def _set_filename(root: Path, channel: str, filename: str) -> None:
    table = root / "v1.0-mini" / "sample_data.json"
    rows = json.loads(table.read_text())
    for row in rows:
        if row["filename"].startswith(f"samples/{channel}/"):
            row["filename"] = filename
    table.write_text(json.dumps(rows))


def _sample_file(root: Path, channel: str) -> Path:
    return next((root / "samples" / channel).iterdir())


NUSCENES_CASES = {
    # case: (break the dataset (root, secrets), reason in the skip row)
    "camera filename climbs out": (lambda root, s: _set_filename(root, "CAM_FRONT", "../secret/secret.jpg"), "leads outside"),
    "camera filename climbs out through samples/": (
        lambda root, s: _set_filename(root, "CAM_BACK", "samples/CAM_BACK/../../../secret/secret.jpg"), "leads outside"),
    "camera filename absolute": (lambda root, s: _set_filename(root, "CAM_FRONT", str(s["secret.jpg"])), "is absolute"),
    "lidar filename climbs out": (lambda root, s: _set_filename(root, "LIDAR_TOP", "../secret/secret.pcd.bin"), "leads outside"),
    "empty .pcd.bin": (lambda root, s: _sample_file(root, "LIDAR_TOP").write_bytes(b""), "empty LiDAR file (0 points)"),
    "random bytes as a JPEG": (lambda root, s: _sample_file(root, "CAM_BACK").write_bytes(np.random.default_rng(3).bytes(4000)),
                               "CAM_BACK image is not a readable JPEG or PNG image"),
}


@pytest.mark.parametrize("case", NUSCENES_CASES)
def test_nuscenes_hostile_frame_is_skipped_and_nothing_outside_is_read(case, nuscenes, secrets, tmp_path):
    breaks, reason = NUSCENES_CASES[case]
    breaks(nuscenes, secrets)
    out = tmp_path / "out.h5"
    summary = convert(ConvertConfig("nuscenes", nuscenes, out, embed_images=True))  # the issue's --embed-images run
    assert summary.frames == 0
    _assert_skipped_one(summary, reason)
    _assert_no_secret_in(out, secrets)


def test_nuscenes_names_that_become_paths(nuscenes, tmp_path):
    # --version names a folder under the dataroot
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConverterError, match=r"nuScenes version holds a path separator"):
        open_reader("nuscenes", nuscenes, version="../elsewhere")
    # a scene name becomes a folder under the Occ3D label root
    table = nuscenes / "v1.0-mini" / "scene.json"
    rows = json.loads(table.read_text())
    rows[0]["name"] = "../../evil"
    table.write_text(json.dumps(rows))
    (tmp_path / "labels").mkdir()
    summary = convert(ConvertConfig("nuscenes", nuscenes, tmp_path / "out.h5", labels=f"occ3d:{tmp_path / 'labels'}"))
    _assert_skipped_one(summary, "scene name '../../evil' holds a path separator")


# -- nuPlan (the tiny log) ----------------------------------------------------------------------------
@pytest.fixture
def nuplan(tmp_path):
    return tmp_path / "nuplan", write_tiny_nuplan(tmp_path / "nuplan")


def _first_key(truth: dict) -> dict:
    return truth["scenes"]["scene-0000"][0]


def _sql(truth: dict, statement: str, params: tuple) -> None:
    con = sqlite3.connect(truth["db"])
    con.execute(statement, params)
    con.commit()
    con.close()


def _set_lidar_filename(truth: dict, filename: str) -> None:
    _sql(truth, "UPDATE lidar_pc SET filename = ? WHERE token = ?", (filename, bytes.fromhex(_first_key(truth)["token"])))


def _set_image_filename(truth: dict, filename: str) -> None:
    _sql(truth, "UPDATE image SET filename_jpg = ? WHERE filename_jpg = ?", (filename, _first_key(truth)["images"]["CAM_F0"]))


def _key_pcd(truth: dict) -> Path:
    return truth["sensor_root"] / _first_key(truth)["lidar"]


def _cut(path: Path, nbytes: int) -> None:
    path.write_bytes(path.read_bytes()[:-nbytes])


def _replace(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


NUPLAN_CASES = {
    "lidar filename climbs out": (lambda t, s: _set_lidar_filename(t, "../../secret/secret.pcd"), "leads outside"),
    "lidar filename absolute": (lambda t, s: _set_lidar_filename(t, str(s["secret.pcd"])), "is absolute"),
    "image filename climbs out": (lambda t, s: _set_image_filename(t, "../../secret/secret.jpg"), "leads outside"),
    "random bytes as a JPEG": (lambda t, s: (t["sensor_root"] / _first_key(t)["images"]["CAM_F0"]).write_bytes(b"\xff\xd8junk" * 99),
                               "CAM_F0 image is not a readable JPEG or PNG image"),
    "POINTS -5": (lambda t, s: _replace(_key_pcd(t), b"POINTS 50", b"POINTS -5"), "PCD POINTS must be integers >= 0"),
    "COUNT not a number": (lambda t, s: _replace(_key_pcd(t), b"COUNT 1 1 1 1 1 1", b"COUNT 1 1 1 1 x 1"),
                           "PCD COUNT line is not integers"),
    "PCD without points": (lambda t, s: write_pcd(_key_pcd(t), np.zeros((0, 6), np.float32),
                                                  ("x", "y", "z", "intensity", "ring", "lidar_info")),
                           "LiDAR file holds no points"),
}


@pytest.mark.parametrize("case", NUPLAN_CASES)
def test_nuplan_hostile_frame_is_skipped_and_the_run_goes_on(case, nuplan, secrets, tmp_path):
    root, truth = nuplan
    breaks, reason = NUPLAN_CASES[case]
    breaks(truth, secrets)
    out = tmp_path / "out.h5"
    summary = convert(ConvertConfig("nuplan", root, out, embed_images=True))
    assert summary.frames == 3  # the other key frames still convert
    _assert_skipped_one(summary, reason, _first_key(truth)["token"])
    _assert_no_secret_in(out, secrets)


def test_build_binary_skips_a_frame_whose_sweep_is_truncated(nuplan, tmp_path):
    # Skip means skip: a non-key sweep is loaded deep inside the aggregation, yet its frame is skipped, the run goes on.
    root, truth = nuplan
    _cut(truth["sensor_root"] / truth["scenes"]["scene-0000"][3]["lidar"], 10)  # a sweep of the second key frame
    summary = build_binary(BuildBinaryJob("nuplan", root, tmp_path / "b.h5", grid=SMALL_GRID, ray_sweeps=2, camera_stride=4.0))
    assert summary.frames == 3
    _assert_skipped_one(summary, "truncated PCD", truth["scenes"]["scene-0000"][10]["token"])


# -- OpenScene (the tiny log) -------------------------------------------------------------------------
@pytest.fixture
def openscene(tmp_path):
    return tmp_path / "openscene", tmp_path / "os-labels", write_tiny_openscene(tmp_path / "openscene", tmp_path / "os-labels")


def _edit_first_frame(truth: dict, edit) -> str:
    frames = pickle.loads(truth["meta"].read_bytes())
    edit(frames[0])
    truth["meta"].write_bytes(pickle.dumps(frames, protocol=4))
    return frames[0]["token"]


def _label_77(labels: Path, meta: dict) -> None:
    np.save(next(labels.rglob(f"{meta['token']}.npy")), np.array([[5, 4], [6, 77]], np.int64))


OPENSCENE_CASES = {
    "lidar_path absolute": (lambda m, s, labels: m.update(lidar_path=str(s["secret.pcd"])), "is absolute"),
    "camera data_path climbs out": (lambda m, s, labels: m["cams"]["CAM_F0"].update(data_path="../../../../secret/secret.jpg"),
                                    "leads outside"),
    # label paths are looked up under the label root by their trailing folders: a valid label file outside it is never opened
    "occ_gt_final_path absolute": (lambda m, s, labels: m.update(occ_gt_final_path=str(s["secret.npy"])), "label file not found"),
    "occ_gt_final_path climbs out": (lambda m, s, labels: m.update(occ_gt_final_path="../secret/secret.npy"), "label file not found"),
    "label outside the taxonomy": (lambda m, s, labels: _label_77(labels, m), "label values [77] are not in the openscene taxonomy"),
}


@pytest.mark.parametrize("case", OPENSCENE_CASES)
def test_openscene_hostile_frame_is_skipped(case, openscene, secrets, tmp_path):
    root, labels, truth = openscene
    breaks, reason = OPENSCENE_CASES[case]
    token = _edit_first_frame(truth, lambda meta: breaks(meta, secrets, labels))
    out = tmp_path / "out.h5"
    summary = convert(ConvertConfig("openscene", root, out, labels=f"openscene:{labels}", embed_images=True))
    assert summary.frames == 5
    _assert_skipped_one(summary, reason, token)
    _assert_no_secret_in(out, secrets)


def test_openscene_with_only_broken_meta_pickles_says_why(openscene):
    root, _, truth = openscene
    truth["meta"].write_bytes(b"\x80\x02cos\nsystem\n)R.")  # the only log: a pickle naming os.system
    with pytest.raises(ConverterError, match=r"\.pkl: unsafe or corrupt pickle: refused to load global 'os.system'"):
        open_reader("openscene", root)


def test_openscene_split_is_a_folder_name(openscene):
    root, _, _ = openscene
    with pytest.raises(ConverterError, match="OpenScene split holds a path separator"):
        open_reader("openscene", root, split="../../meta_datas/mini")


# -- b2s synth: names that become paths ---------------------------------------------------------------
def test_synth_version_cannot_leave_out(tmp_path):
    sentinel = tmp_path / "escape" / "scene.json"
    sentinel.parent.mkdir()
    sentinel.write_text("precious")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SynthError, match="holds a path separator"):
        write_dataset(tmp_path / "out", scenes=1, frames=1, nuscenes_version="../../escape")
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "out"), "--nuscenes-version", "../../escape", "--scenes", "1",
                                      "--frames", "1", "--no-preview"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: nuScenes version '../../escape' holds a path separator; give a folder name such as v1.0-mini"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before and sentinel.read_text() == "precious"


# -- the unified format: damaged files ----------------------------------------------------------------
@pytest.fixture
def occ_file(tmp_path) -> Path:
    rng = np.random.default_rng(16)
    return write(tmp_path / "x.h5", {"s": [make_frame(rng, "s", k) for k in range(3)]})


def _corrupt_chunk(path: Path, dataset: str, row: int) -> None:
    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info_by_coord((row,) + (0,) * (h5[dataset].ndim - 1))
    with path.open("r+b") as file:  # flip bytes in the middle of the compressed chunk
        file.seek(info.byte_offset + info.size // 2)
        data = file.read(16)
        file.seek(info.byte_offset + info.size // 2)
        file.write(bytes(b ^ 0x5A for b in data))


def _edit(path: Path, change) -> None:
    with h5py.File(path, "r+") as h5:
        change(h5)


def _set_row(name: str, row: int, value) -> Callable[[h5py.File], None]:
    def change(h5):
        h5[name][row] = value
    return change


def _shift_labels_range(h5) -> None:
    ranges = h5["frames/labels_range"][:]
    ranges[1, 1] += 1
    h5["frames/labels_range"][:] = ranges


def _labels_range_outside(h5) -> None:
    ranges = h5["frames/labels_range"][:]
    ranges[1, 0] = 10 ** 9
    h5["frames/labels_range"][:] = ranges


READ_DAMAGE = {
    # case: (damage, what the error says); the file opens, reading frame 1 fails naming file and frame
    "corrupt compressed occupancy chunk": (lambda p: _corrupt_chunk(p, "frames/occupancy", 1), "frames/occupancy cannot be decoded"),
    "labels_range count off by one": (lambda p: _edit(p, _shift_labels_range), "frames/labels_range count"),
    "labels_range outside the labels": (lambda p: _edit(p, _labels_range_outside), "lies outside ragged/labels"),
    "source_tokens not JSON": (lambda p: _edit(p, _set_row("frames/source_tokens", 1, "{not json")),
                               "frames/source_tokens is not valid JSON"),
    "scene_index names no scene": (lambda p: _edit(p, _set_row("frames/scene_index", 1, 7)), "frames/scene_index 7 names no scene"),
}


@pytest.mark.parametrize("case", READ_DAMAGE)
def test_damaged_frame_is_one_error_naming_file_and_frame(case, occ_file):
    damage, message = READ_DAMAGE[case]
    damage(occ_file)
    dataset = OccDataset(occ_file)
    assert dataset[0].token == "s-tok0" and dataset[2].token == "s-tok2"  # the other frames still read
    with pytest.raises(OccFormatError) as err:
        dataset.read(1)
    text = str(err.value)
    assert text.startswith(f"{occ_file}: frame 1") and message in text and "\n" not in text
    assert [str(e) for e in check_frames(occ_file)] == [text]  # what `b2s info --check` reports
    dataset.close()


OPEN_DAMAGE = {
    "missing frames/occupancy": (lambda h5: h5.__delitem__("frames/occupancy"), "missing dataset frames/occupancy"),
    "camera_names not JSON": (lambda h5: h5.attrs.__setitem__("camera_names", "[CAM_FRONT"), "attribute camera_names is not valid JSON"),
    "labels_range of the wrong shape": (lambda h5: (h5["frames"].__delitem__("labels_range"),
                                                    h5["frames"].create_dataset("labels_range", data=np.zeros((3,), np.int64))),
                                        "frames/labels_range has shape (3,)"),
}


@pytest.mark.parametrize("case", OPEN_DAMAGE)
def test_damaged_file_is_refused_on_open_in_one_line(case, occ_file):
    change, message = OPEN_DAMAGE[case]
    _edit(occ_file, change)
    with pytest.raises(OccFormatError, match=re.escape(message)):
        OccDataset(occ_file)
    result = CliRunner().invoke(app, ["info", str(occ_file)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(lines) == 1 and str(occ_file) in lines[0] and message in lines[0]


def test_info_check_reports_the_broken_frame(occ_file):
    healthy = CliRunner().invoke(app, ["info", "--check", str(occ_file)])
    assert healthy.exit_code == 0 and "all 3 frames decode" in healthy.output
    _corrupt_chunk(occ_file, "frames/occupancy", 1)
    assert CliRunner().invoke(app, ["info", str(occ_file)]).exit_code == 0  # the index alone looks fine
    result = CliRunner().invoke(app, ["info", "--check", str(occ_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    damaged = [line for line in result.stderr.splitlines() if line.startswith("damaged:")]
    assert len(damaged) == 1
    assert f"{occ_file}: frame 1 (scene s, token s-tok1): frames/occupancy cannot be decoded" in damaged[0]
    assert "1 of 3 frames damaged" in result.stderr


def test_image_path_in_a_file_cannot_leave_the_image_root(occ_file, secrets, tmp_path):
    _edit(occ_file, _set_row("cameras/image_path", 0, [b"samples/f0.jpg", b"../secret/secret.jpg"]))
    (tmp_path / "images").mkdir()
    dataset = OccDataset(occ_file, image_root=str(tmp_path / "images"))
    with pytest.raises(OccFormatError, match="image path '../secret/secret.jpg' leads outside its root folder"):
        dataset.image(0, "CAM_BACK")
    dataset.close()
