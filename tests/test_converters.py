"""Unit tests of the converter building blocks: restricted unpickler, PCD parser, label files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.errors import ConverterError
from converters.readers import safe_pickle
from converters.readers.labels import LabelSpec, read_occ3d, read_openoccupancy, read_openscene
from converters.readers.pcd import read_pcd, read_pcd_bytes, write_pcd

REPO = Path(__file__).resolve().parents[1]


# -- restricted unpickler ---------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/b2s-pwned-by-pickle",))


class _Evil2:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_loads_containers_and_arrays(protocol):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x", None, (True, b"raw")],
            "c": np.float64(1.25), "d": np.array(["CAM_F0", "CAM_B0"]), "e": {1, 2}, "f": np.int64(7)}
    out = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    assert out["a"].dtype == np.float32 and np.array_equal(out["a"], data["a"])
    assert out["b"] == data["b"] and out["c"] == 1.25 and list(out["d"]) == ["CAM_F0", "CAM_B0"] and out["e"] == {1, 2}


@pytest.mark.parametrize("payload", [_RunsCode(), _Evil2()])
def test_safe_pickle_refuses_code_and_never_runs_it(tmp_path, payload):
    marker = Path("/tmp/b2s-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps([{"token": "x", "evil": payload}]))
    with pytest.raises(ConverterError, match=r"meta\.pkl: unsafe or corrupt pickle: refused to load global"):
        safe_pickle.load(path)
    assert not marker.exists()


# Hostile pickles by hand (protocol 2 GLOBAL opcodes): each names a global that is not on the
# allow-list; some name modules whose import alone runs code ('this' prints, numpy.f2py.__main__
# runs f2py's command line). Each must be refused without importing the module it names.
HOSTILE_GLOBALS = [
    ("numpy.f2py.__main__", "XDType"),  # the old rule imported any numpy* module ending in DType
    ("this", "XDType"),
    ("numpy.dtypes", "__builtins__"),
    ("numpy", "load"),
    ("numpy.testing", "run_module_suite"),
    ("os", "system"),
    ("subprocess", "Popen"),
    ("builtins", "eval"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("collections", "namedtuple"),
    ("_codecs", "decode"),
]


@pytest.mark.parametrize("module,name", HOSTILE_GLOBALS)
def test_safe_pickle_refuses_hostile_globals_before_importing_them(module, name):
    script = f"""
import sys
from converters.readers import safe_pickle
from converters.errors import ConverterError
before = set(sys.modules)
try:
    safe_pickle.loads(b"\\x80\\x02c{module}\\n{name}\\n)R.", source="meta.pkl")
except ConverterError as err:
    print("refused:", err)
print("imported:", sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("this", "numpy", "os", "subprocess")))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith(f"refused: meta.pkl: unsafe or corrupt pickle: refused to load global '{module}.{name}'")
    assert lines[-1] == "imported: []" and len(lines) == 2  # nothing imported, nothing printed on import


def test_safe_pickle_corrupt_file_names_it(tmp_path):
    path = tmp_path / "log.pkl"
    path.write_bytes(pickle.dumps([{"a": np.zeros(100)}])[:-40])
    with pytest.raises(ConverterError, match="log.pkl: .*pickle"):
        safe_pickle.load(path)


# -- PCD ---------------------------------------------------------------------------------------------
def test_pcd_binary_mixed_types_roundtrip(tmp_path):
    points = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    points[:, 4] = np.arange(64) % 32
    points[:, 5] = 3
    write_pcd(tmp_path / "a.pcd", points, ("x", "y", "z", "intensity", "ring", "lidar_info"),
              types=("F", "F", "F", "F", "U", "U"), sizes=(4, 4, 4, 4, 2, 1))
    cloud = read_pcd(tmp_path / "a.pcd")
    assert cloud.columns == ("x", "y", "z", "intensity", "ring", "lidar_info")
    assert np.array_equal(cloud.points, points)
    assert np.array_equal(cloud.xyz(), points[:, :3])


def test_pcd_ascii_and_count_field():
    text = (b"VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 1\nTYPE F F F U\nCOUNT 1 1 1 3\nWIDTH 2\nHEIGHT 1\n"
            b"POINTS 2\nDATA ascii\n1 2 3 10 20 30\n4 5 6 40 50 60\n")
    cloud = read_pcd_bytes(text)
    assert cloud.columns == ("x", "y", "z", "rgb_0", "rgb_1", "rgb_2")
    assert cloud.points.tolist() == [[1, 2, 3, 10, 20, 30], [4, 5, 6, 40, 50, 60]]


def test_pcd_binary_with_count_and_double():
    header = b"FIELDS x y z n\nSIZE 8 8 8 2\nTYPE F F F I\nCOUNT 1 1 1 2\nWIDTH 3\nHEIGHT 1\nPOINTS 3\nDATA binary\n"
    dtype = np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("n", "<i2", (2,))])
    records = np.zeros(3, dtype)
    records["x"], records["n"] = [1.5, 2.5, 3.5], [[1, -2], [3, 4], [5, 6]]
    cloud = read_pcd_bytes(header + records.tobytes())
    assert cloud.points[:, 0].tolist() == [1.5, 2.5, 3.5] and cloud.points[:, 4].tolist() == [-2, 4, 6]


def test_pcd_truncated_and_bad_headers(tmp_path):
    points = np.ones((10, 3), np.float32)
    write_pcd(tmp_path / "a.pcd", points, ("x", "y", "z"))
    (tmp_path / "t.pcd").write_bytes((tmp_path / "a.pcd").read_bytes()[:-7])
    with pytest.raises(ConverterError, match=r"t\.pcd: truncated PCD"):
        read_pcd(tmp_path / "t.pcd")
    with pytest.raises(ConverterError, match="LiDAR file not found"):
        read_pcd(tmp_path / "missing.pcd")
    with pytest.raises(ConverterError, match="binary_compressed"):
        read_pcd_bytes(b"FIELDS x\nSIZE 4\nTYPE F\nPOINTS 1\nDATA binary_compressed\n\0\0\0\0")
    with pytest.raises(ConverterError, match="3 SIZE"):
        read_pcd_bytes(b"FIELDS x y\nSIZE 4 4 4\nTYPE F F\nPOINTS 1\nDATA binary\n")


# -- label files -------------------------------------------------------------------------------------
def test_occ3d_real_sample_reads_exactly(occ3d_sample):
    labels = read_occ3d(occ3d_sample)
    with np.load(occ3d_sample) as raw:
        assert np.array_equal(labels.semantics, raw["semantics"])
        assert np.array_equal(labels.mask_lidar, raw["mask_lidar"].astype(bool))
    assert labels.mask_lidar.sum() == 56601 and labels.mask_camera.sum() == 43355
    assert sorted(np.unique(labels.semantics).tolist()) == [0, 1, 3, 4, 6, 11, 13, 14, 15, 16, 17]


def test_occ3d_wrong_shape_names_file(tmp_path):
    np.savez_compressed(tmp_path / "labels.npz", semantics=np.zeros((200, 200, 8), np.uint8))
    with pytest.raises(ConverterError, match=r"labels\.npz: Occ3D 'semantics' has shape \(200, 200, 8\)"):
        read_occ3d(tmp_path / "labels.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConverterError, match="bad.npz: unreadable"):
        read_occ3d(tmp_path / "bad.npz")


# A LiDAR 1.8 m (9 voxels) above the ego origin, axes as the ego's: the file's LiDAR-frame voxel (x, y, z)
# is ego voxel (x, y, z) of the openoccupancy grid (tests/test_openoccupancy_official.py has real mounts).
LIFTED_LIDAR = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.8], [0, 0, 0, 1]], dtype=np.float64)


def test_openoccupancy_sparse_rows_and_noise(tmp_path):
    rows = np.array([[0, 1, 2, 4], [39, 511, 0, 0], [5, 5, 5, 16]], dtype=np.int64)  # z, y, x, label
    np.save(tmp_path / "o.npy", rows)
    labels = read_openoccupancy(tmp_path / "o.npy", LIFTED_LIDAR)
    assert labels.semantics.shape == (512, 512, 40)
    assert labels.semantics[2, 1, 0] == 4 and labels.semantics[0, 511, 39] == 255 and labels.semantics[5, 5, 5] == 16
    assert (labels.semantics == 0).sum() == 512 * 512 * 40 - 3


def test_openoccupancy_out_of_grid(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[40, 0, 0, 3]]))
    with pytest.raises(ConverterError, match="outside the"):
        read_openoccupancy(tmp_path / "o.npy", LIFTED_LIDAR)
    np.save(tmp_path / "p.npy", np.zeros((3, 2)))
    with pytest.raises(ConverterError, match=r"p\.npy: OpenOccupancy labels have shape \(3, 2\)"):
        read_openoccupancy(tmp_path / "p.npy", LIFTED_LIDAR)


def test_openscene_flat_index_is_x_fastest(tmp_path):
    flat = np.array([0, 1, 200, 40000, 200 * 200 * 16 - 1])
    np.save(tmp_path / "s.npy", np.stack([flat, [0, 4, 7, 9, 10]], axis=1))
    sem = read_openscene(tmp_path / "s.npy").semantics
    assert sem[0, 0, 0] == 0 and sem[1, 0, 0] == 4 and sem[0, 1, 0] == 7 and sem[0, 0, 1] == 9 and sem[199, 199, 15] == 10
    assert (sem == 16).sum() == 200 * 200 * 16 - 5
    np.save(tmp_path / "w.npy", np.zeros((4, 3)))
    with pytest.raises(ConverterError, match=r"w\.npy: OpenScene labels have shape"):
        read_openscene(tmp_path / "w.npy")


def test_label_spec_parsing(tmp_path):
    spec = LabelSpec.parse(f"occ3d:{tmp_path}")
    assert spec.kind == "occ3d" and spec.grid.shape == (200, 200, 16) and spec.taxonomy.free_index == 17
    with pytest.raises(ConverterError, match="KIND:PATH"):
        LabelSpec.parse("surroundocc:/x")
    with pytest.raises(ConverterError, match="label folder not found"):
        LabelSpec.parse(f"occ3d:{tmp_path / 'nope'}")
