"""A header-driven reader (and a small writer) for PCD point-cloud files (nuPlan / OpenScene LiDAR).

The header says everything about the payload, so nothing is assumed about the field list:
``FIELDS`` names, ``SIZE`` bytes per value, ``TYPE`` (F float, I signed, U unsigned), ``COUNT``
values per field, ``WIDTH`` x ``HEIGHT`` = ``POINTS`` points, ``DATA ascii|binary``
(``binary_compressed`` needs LZF, which is not bundled: it is refused with a clear message).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import ConverterError

_NUMPY_KIND = {"F": "f", "I": "i", "U": "u"}


@dataclass
class PointCloud:
    """Points of one PCD file: ``points`` (N, C) float32, one column per field value, named in ``columns``."""

    columns: tuple[str, ...]
    points: np.ndarray  # (N, C) float32

    def column(self, name: str) -> np.ndarray:
        return self.points[:, self.columns.index(name)]

    def xyz(self) -> np.ndarray:
        """(N, 3) float32 x, y, z."""
        return self.points[:, [self.columns.index(c) for c in ("x", "y", "z")]]


@dataclass
class PcdHeader:
    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    num_points: int
    data: str  # 'ascii' | 'binary' | 'binary_compressed'

    def dtype(self) -> np.dtype:
        """The numpy record type of one point as stored (little-endian, packed)."""
        return np.dtype([
            (name, f"<{_NUMPY_KIND[kind]}{size}", (count,)) if count > 1 else (name, f"<{_NUMPY_KIND[kind]}{size}")
            for name, size, kind, count in zip(self.fields, self.sizes, self.types, self.counts)
        ])

    def columns(self) -> tuple[str, ...]:
        names: list[str] = []
        for name, count in zip(self.fields, self.counts):
            names += [name] if count == 1 else [f"{name}_{i}" for i in range(count)]
        return tuple(names)


def parse_header(data: bytes, source: object) -> tuple[PcdHeader, int]:
    """The header of a PCD file and the byte offset where its payload starts."""
    entries, offset = _header_entries(data, source)
    fields, sizes, types, counts = _field_layout(entries, source)
    return PcdHeader(fields, sizes, types, counts, _num_points(entries, source), _data_mode(entries, source)), offset


def _header_entries(data: bytes, source: object) -> tuple[dict[str, list[str]], int]:
    """The header's lines up to DATA as {KEY: values} (comments and blank lines skipped), and the offset after it."""
    entries: dict[str, list[str]] = {}
    offset = 0
    while "DATA" not in entries:
        end = data.find(b"\n", offset)
        if end < 0:
            raise ConverterError(source, "PCD header ends before its DATA line (truncated or not a PCD file)")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if line and not line.startswith("#"):
            key, *values = line.split()
            entries[key.upper()] = values
    return entries, offset


def _field_layout(entries: dict[str, list[str]], source: object) -> tuple[tuple[str, ...], tuple[int, ...],
                                                                      tuple[str, ...], tuple[int, ...]]:
    """(fields, sizes, types, counts) of FIELDS, SIZE, TYPE and COUNT: one each per field, of a type numpy reads."""
    for key in ("FIELDS", "SIZE", "TYPE"):
        if key not in entries:
            raise ConverterError(source, f"PCD header has no {key} line")
    fields = tuple(entries["FIELDS"])
    n = len(fields)
    if len(set(fields)) != n:
        raise ConverterError(source, f"PCD FIELDS repeat a name: {' '.join(fields)}")
    counts = _counts(entries.get("COUNT", ["1"] * n), "COUNT", source, minimum=1)
    sizes = _counts(entries["SIZE"], "SIZE", source, minimum=1)
    types = tuple(t.upper() for t in entries["TYPE"])
    if not (len(sizes) == len(types) == len(counts) == n):
        raise ConverterError(source, f"PCD header lists {n} FIELDS but {len(sizes)} SIZE, {len(types)} TYPE, {len(counts)} COUNT")
    for kind, size in zip(types, sizes):
        if kind not in _NUMPY_KIND or (kind == "F" and size not in (4, 8)) or size not in (1, 2, 4, 8):
            raise ConverterError(source, f"PCD field type {kind}{size} is not supported")
    return fields, sizes, types, counts


def _num_points(entries: dict[str, list[str]], source: object) -> int:
    """POINTS, else WIDTH x HEIGHT."""
    if "POINTS" in entries:
        (num_points,) = _counts(entries["POINTS"][:1], "POINTS", source, minimum=0)
        return num_points
    width, height = _counts(entries.get("WIDTH", ["0"])[:1] + entries.get("HEIGHT", ["1"])[:1], "WIDTH / HEIGHT", source, minimum=0)
    return width * height


def _data_mode(entries: dict[str, list[str]], source: object) -> str:
    mode = entries["DATA"][0].lower() if entries["DATA"] else ""
    if mode not in ("ascii", "binary", "binary_compressed"):
        raise ConverterError(source, f"PCD DATA '{mode}' is not ascii or binary")
    return mode


def _counts(values: list[str], key: str, source: object, minimum: int) -> tuple[int, ...]:
    # Header numbers size the payload: a non-integer or negative one (e.g. ``POINTS -5``) is refused here.
    try:
        numbers = tuple(int(v) for v in values)
    except ValueError:
        raise ConverterError(source, f"PCD {key} line is not integers: {' '.join(values)}") from None
    if not numbers or any(v < minimum for v in numbers):
        raise ConverterError(source, f"PCD {key} must be integers >= {minimum}, got '{' '.join(values)}'")
    return numbers


def check_pcd_file(path: str | Path, max_header_bytes: int = 1 << 20) -> PcdHeader:
    """The header of a PCD file, checked against the file's size without reading the points.

    Lets a reader refuse a truncated or malformed cloud when it lists a frame, before anything
    loads it (a ``binary`` payload must hold ``POINTS x point size`` bytes; the ascii and
    compressed payloads are checked when read). Reads the header only, normally under 1 KB.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(4096)
            while True:
                try:
                    header, offset = parse_header(head, path)
                    break
                except ConverterError:
                    if len(head) >= min(size, max_header_bytes):
                        raise
                    head += file.read(4096)  # a long header (many comment lines): read on
    except FileNotFoundError:
        raise ConverterError(path, "LiDAR file not found") from None
    except OSError as err:
        raise ConverterError(path, f"LiDAR file unreadable ({err.strerror or err})") from None
    if header.data == "binary":
        need = header.num_points * header.dtype().itemsize
        if size - offset < need:
            raise ConverterError(path, f"truncated PCD: {size - offset} payload bytes, header promises {need} "
                                       f"({header.num_points} points x {header.dtype().itemsize} B)")
    return header


def read_pcd_bytes(data: bytes, source: object = "<bytes>") -> PointCloud:
    """Parse a whole PCD file held in memory."""
    header, offset = parse_header(data, source)
    columns = header.columns()
    if header.data == "binary_compressed":
        raise ConverterError(source, "PCD DATA binary_compressed (LZF) is not supported; re-save the cloud as binary")
    if header.data == "binary":
        dtype = header.dtype()
        need = header.num_points * dtype.itemsize
        if len(data) - offset < need:
            raise ConverterError(source, f"truncated PCD: {len(data) - offset} payload bytes, header promises {need} "
                                         f"({header.num_points} points x {dtype.itemsize} B)")
        records = np.frombuffer(data, dtype=dtype, count=header.num_points, offset=offset)
        flat = [records[name].reshape(header.num_points, -1).astype(np.float32) for name in header.fields]
        points = np.concatenate(flat, axis=1) if flat else np.zeros((header.num_points, 0), np.float32)
    else:
        text = data[offset:].decode("ascii", errors="replace").split()
        need = header.num_points * len(columns)
        if len(text) < need:
            raise ConverterError(source, f"truncated PCD: {len(text)} ascii values, header promises {need}")
        try:
            points = np.asarray(text[:need], dtype=np.float64).astype(np.float32).reshape(header.num_points, len(columns))
        except ValueError:
            raise ConverterError(source, "PCD ascii payload holds a value that is not a number") from None
    return PointCloud(columns, points)


def read_pcd(path: str | Path) -> PointCloud:
    """Read a PCD file; a missing, truncated or malformed file raises :class:`ConverterError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConverterError(path, "LiDAR file not found") from None
    except OSError as err:  # a folder, no permission, an I/O error: this file's problem, not the run's
        raise ConverterError(path, f"LiDAR file unreadable ({err.strerror or err})") from None
    return read_pcd_bytes(data, source=path)


def write_pcd(path: str | Path, points: np.ndarray, fields: tuple[str, ...], *, types: tuple[str, ...] | None = None,
              sizes: tuple[int, ...] | None = None, data: str = "binary") -> None:
    """Write (N, C) points as a PCD v0.7 file, one field per column (default F4); used for tests and tools."""
    points = np.asarray(points)
    n, c = points.shape
    types = types or ("F",) * c
    sizes = sizes or (4,) * c
    header = PcdHeader(tuple(fields), tuple(sizes), tuple(types), (1,) * c, n, data)
    lines = [
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(fields),
        "SIZE " + " ".join(map(str, sizes)), "TYPE " + " ".join(types), "COUNT " + " ".join(["1"] * c),
        f"WIDTH {n}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {data}",
    ]
    if data == "binary":
        records = np.empty(n, dtype=header.dtype())
        for i, name in enumerate(fields):
            records[name] = points[:, i]
        payload = records.tobytes()
    elif data == "ascii":
        payload = "".join(" ".join(repr(float(v)) if t == "F" else str(int(v)) for v, t in zip(row, types)) + "\n"
                          for row in points).encode("ascii")
    else:
        raise ValueError(f"write_pcd supports ascii and binary, not {data}")
    Path(path).write_bytes(("\n".join(lines) + "\n").encode("ascii") + payload)
