"""Voxel grids in the ego frame.

Axis convention (stated once, used everywhere): a grid is indexed ``[x, y, z]`` in the ego frame
(x forward, y left, z up, metres); voxel ``(i, j, k)`` covers
``range_min + (i, j, k) * voxel_size`` up to ``range_min + (i + 1, j + 1, k + 1) * voxel_size``.
Flat indices are C order over ``(X, Y, Z)``: ``flat = (i * Y + j) * Z + k``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from b2s_core.errors import B2SError


class GridError(B2SError, ValueError):
    """A grid definition or a grid-to-grid operation that cannot be carried out."""


@dataclass(frozen=True)
class VoxelGrid:
    """An axis-aligned voxel grid; the shape is derived from range and voxel size, never given."""

    range_min: tuple[float, float, float]
    range_max: tuple[float, float, float]
    voxel_size: tuple[float, float, float]
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("range_min", "range_max", "voxel_size"):
            value = tuple(float(v) for v in getattr(self, field))
            if len(value) != 3:
                raise GridError(f"grid {field} needs 3 values, got {len(value)}")
            if not all(np.isfinite(value)):
                raise GridError(f"grid {field} must be finite numbers, got {value}")
            object.__setattr__(self, field, value)
        if any(v <= 0 for v in self.voxel_size):
            raise GridError(f"grid voxel_size must be positive, got {self.voxel_size}")
        extent = np.subtract(self.range_max, self.range_min)
        if np.any(extent <= 0):
            raise GridError(f"grid range_max must exceed range_min, got {self.range_min} .. {self.range_max}")
        cells = extent / np.asarray(self.voxel_size)
        if np.any(np.abs(cells - np.round(cells)) > 1e-4):
            raise GridError(f"grid extent {tuple(extent)} is not a whole number of voxels of {self.voxel_size}")

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        cells = (np.subtract(self.range_max, self.range_min) / np.asarray(self.voxel_size)).round()
        return tuple(int(c) for c in cells)  # type: ignore[return-value]

    @property
    def num_voxels(self) -> int:
        X, Y, Z = self.shape
        return X * Y * Z

    @property
    def origin(self) -> np.ndarray:
        """(3,) float64: the corner of voxel (0, 0, 0)."""
        return np.asarray(self.range_min, dtype=np.float64)

    # -- point <-> voxel -----------------------------------------------------------------------
    def index_of(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) ego-frame metres -> (N, 3) int64 voxel indices (may lie outside the grid)."""
        points = np.asarray(points, dtype=np.float64)
        return np.floor((points[..., :3] - self.origin) / np.asarray(self.voxel_size)).astype(np.int64)

    def inside(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) int voxel indices -> (N,) bool, True where the index lies in the grid."""
        index = np.asarray(index)
        return np.all((index >= 0) & (index < np.asarray(self.shape)), axis=-1)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) metres -> (N,) bool, True where the point lies in the grid's range."""
        return self.inside(self.index_of(points))

    def center_of(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices -> (N, 3) float64 voxel centres in metres."""
        return self.origin + (np.asarray(index, dtype=np.float64) + 0.5) * np.asarray(self.voxel_size)

    def centers(self) -> np.ndarray:
        """(X, Y, Z, 3) float64: the centre of every voxel."""
        axes = [self.range_min[a] + (np.arange(n) + 0.5) * self.voxel_size[a] for a, n in enumerate(self.shape)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def flat_of(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) in-grid voxel indices -> (N,) int64 C-order flat indices."""
        return np.ravel_multi_index(tuple(np.asarray(index).T), self.shape).astype(np.int64)

    def voxelize(self, points: np.ndarray) -> np.ndarray:
        """(N, >=3) ego-frame points -> (X, Y, Z) bool grid, True where at least one point falls."""
        index = self.index_of(points)
        index = index[self.inside(index)]
        grid = np.zeros(self.shape, dtype=bool)
        grid[index[:, 0], index[:, 1], index[:, 2]] = True
        return grid

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "range_min": list(self.range_min),
            "range_max": list(self.range_max),
            "voxel_size": list(self.voxel_size),
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: dict) -> VoxelGrid:
        try:
            grid = cls(tuple(data["range_min"]), tuple(data["range_max"]), tuple(data["voxel_size"]),
                       data.get("name", "custom"))
        except (KeyError, TypeError) as err:
            raise GridError(f"grid description is incomplete: {err}") from None
        if "shape" in data and tuple(data["shape"]) != grid.shape:
            raise GridError(f"grid shape {tuple(data['shape'])} disagrees with its range and voxel size {grid.shape}")
        return grid

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def describe(self) -> str:
        """Shape, voxel size and range in one phrase: two grids that differ say how (not only the shape)."""
        def numbers(values) -> str:
            return ", ".join(f"{v:g}" for v in values)

        size = f"{self.voxel_size[0]:g} m" if len(set(self.voxel_size)) == 1 else f"({numbers(self.voxel_size)}) m"
        X, Y, Z = self.shape
        return f"{X}x{Y}x{Z} of {size} over ({numbers(self.range_min)}) .. ({numbers(self.range_max)})"

    def same_geometry(self, other: VoxelGrid) -> bool:
        return (
            np.allclose(self.range_min, other.range_min)
            and np.allclose(self.range_max, other.range_max)
            and np.allclose(self.voxel_size, other.voxel_size)
        )

    def scaled(self, factor: tuple[int, int, int], name: str | None = None) -> VoxelGrid:
        """The grid over the same range with voxels ``factor`` times larger per axis (coarser)."""
        size = tuple(s * f for s, f in zip(self.voxel_size, factor))
        return VoxelGrid(self.range_min, self.range_max, size, name or f"{self.name}/{'x'.join(map(str, factor))}")


GRID_PRESETS: dict[str, VoxelGrid] = {
    "occ3d": VoxelGrid((-40.0, -40.0, -1.0), (40.0, 40.0, 5.4), (0.4, 0.4, 0.4), "occ3d"),
    # OpenOccupancy's volume (OPENOCCUPANCY_LIDAR_GRID below) moved into the ego frame: nuScenes'
    # LIDAR_TOP sits 1.84 m above the ego origin, so the labelled z range [-5, 3] (LiDAR) is
    # [-3.16, 4.84] (ego) at the sensor's column; the nearest 0.2 m lattice that keeps z = 0 on a
    # voxel boundary is [-3.2, 4.8]. Keeping [-5, 3] in the ego frame would cut the top 1.84 m
    # of every label file and leave the bottom 9 layers underground and unlabelled.
    "openoccupancy": VoxelGrid((-51.2, -51.2, -3.2), (51.2, 51.2, 4.8), (0.2, 0.2, 0.2), "openoccupancy"),
    "openscene": VoxelGrid((-50.0, -50.0, -4.0), (50.0, 50.0, 4.0), (0.5, 0.5, 0.5), "openscene"),
}

# The grid of OpenOccupancy (nuScenes-Occupancy) label files, in the key frame's LIDAR_TOP frame,
# not the ego frame: OpenOccupancy projects/occ_plugin/datasets/pipelines/loading.py (LoadOccupancy:
# pc_range, grid_size; voxel centre = pc_range[:3] + (index + 0.5) * voxel) and the configs'
# point_cloud_range / occ_size; "GT voxels are in LiDAR coordinate"
# (https://github.com/JeffWang987/OpenOccupancy/issues/19). Not a preset: b2s grids are ego-frame,
# and converters.readers.labels.read_openoccupancy resamples these files onto GRID_PRESETS["openoccupancy"].
OPENOCCUPANCY_LIDAR_GRID = VoxelGrid((-51.2, -51.2, -5.0), (51.2, 51.2, 3.0), (0.2, 0.2, 0.2), "openoccupancy-lidar")

# The grid of each built-in source and label format, the one place that says which is which. A label
# format's files lie on its grid (the readers of converters.readers.labels, synth's label writers); a
# source's grid is that of its usual labels (Occ3D for nuScenes, OpenScene for nuPlan logs): an
# unlabelled `b2s convert` and `b2s build-binary` without --grid use it.
SOURCE_GRIDS: dict[str, VoxelGrid] = {
    "nuscenes": GRID_PRESETS["occ3d"],
    "nuplan": GRID_PRESETS["openscene"],
    "openscene": GRID_PRESETS["openscene"],  # the source and the label format alike
    "occ3d": GRID_PRESETS["occ3d"],
    "openoccupancy": GRID_PRESETS["openoccupancy"],  # ego frame; the files' own is OPENOCCUPANCY_LIDAR_GRID
}


def get_grid(spec: str | VoxelGrid) -> VoxelGrid:
    """A preset name, a custom spec ``xmin,ymin,zmin,xmax,ymax,zmax:vx[,vy,vz]`` or a grid."""
    if isinstance(spec, VoxelGrid):
        return spec
    if spec in GRID_PRESETS:
        return GRID_PRESETS[spec]
    if ":" in spec:
        bounds_text, size_text = spec.split(":", 1)
        try:
            bounds = [float(v) for v in bounds_text.split(",")]
            size = [float(v) for v in size_text.split(",")]
        except ValueError:
            raise GridError(f"custom grid '{spec}' must be numbers: xmin,ymin,zmin,xmax,ymax,zmax:voxel") from None
        if len(bounds) != 6 or len(size) not in (1, 3):
            raise GridError(f"custom grid '{spec}' needs 6 bounds and 1 or 3 voxel sizes")
        size = size * 3 if len(size) == 1 else size
        try:
            return VoxelGrid(tuple(bounds[:3]), tuple(bounds[3:]), tuple(size), "custom")
        except GridError as err:  # NaN / inf, sizes <= 0, an empty range: say which spec
            raise GridError(f"custom grid '{spec}': {err}") from None
    raise GridError(f"unknown grid '{spec}': use one of {', '.join(GRID_PRESETS)} or xmin,ymin,zmin,xmax,ymax,zmax:voxel")


def resample_ratio(source: VoxelGrid, target: VoxelGrid) -> tuple[np.ndarray, bool]:
    """Per-axis integer ratio between two grids over the same range, and whether target is coarser."""
    if not (np.allclose(source.range_min, target.range_min) and np.allclose(source.range_max, target.range_max)):
        raise GridError(f"grids '{source.name}' and '{target.name}' cover different ranges; resampling needs the same range")
    src, dst = np.asarray(source.shape), np.asarray(target.shape)
    if np.all(src % dst == 0):
        return src // dst, True
    if np.all(dst % src == 0):
        return dst // src, False
    raise GridError(f"grid shapes {tuple(src)} and {tuple(dst)} are not integer multiples of each other")


def crop_window(source: VoxelGrid, target: VoxelGrid) -> tuple[slice, slice, slice]:
    """Index slices of ``source`` that are ``target``: a sub-box of the same voxels on the same lattice."""
    if not np.allclose(source.voxel_size, target.voxel_size):
        raise GridError(f"grids '{source.name}' and '{target.name}' have other voxel sizes; a crop keeps the voxels")
    start = (np.subtract(target.range_min, source.range_min) / np.asarray(source.voxel_size))
    if np.any(np.abs(start - np.round(start)) > 1e-4):
        raise GridError(f"grid '{target.name}' is not on the voxel lattice of '{source.name}'")
    start = np.round(start).astype(int)
    stop = start + np.asarray(target.shape)
    if np.any(start < 0) or np.any(stop > np.asarray(source.shape)):
        raise GridError(f"grid '{target.name}' reaches outside '{source.name}'")
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))  # type: ignore[return-value]


def resample_binary(occupied: np.ndarray, source: VoxelGrid, target: VoxelGrid) -> np.ndarray:
    """(X, Y, Z) bool on ``source`` -> bool on ``target``: a coarse voxel is occupied if any fine one is."""
    ratio, coarser = resample_ratio(source, target)
    if coarser:
        X, Y, Z = target.shape
        blocks = occupied.reshape(X, ratio[0], Y, ratio[1], Z, ratio[2])  # (X, rx, Y, ry, Z, rz)
        return blocks.any(axis=(1, 3, 5))
    return occupied.repeat(ratio[0], 0).repeat(ratio[1], 1).repeat(ratio[2], 2)


def resample_labels(labels: np.ndarray, source: VoxelGrid, target: VoxelGrid, free_index: int) -> np.ndarray:
    """(X, Y, Z) uint8 labels on ``source`` -> ``target``.

    Downsampling takes the most frequent non-free label of each block (ties to the lower label),
    and free only when the whole block is free, so that thin structures survive; upsampling repeats.
    """
    ratio, coarser = resample_ratio(source, target)
    if not coarser:
        return labels.repeat(ratio[0], 0).repeat(ratio[1], 1).repeat(ratio[2], 2)
    X, Y, Z = target.shape
    blocks = labels.reshape(X, ratio[0], Y, ratio[1], Z, ratio[2]).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(X * Y * Z, -1)  # (coarse voxels, fine voxels per block)
    num_labels = int(max(labels.max(initial=0), free_index)) + 1
    counts = np.zeros((blocks.shape[0], num_labels), dtype=np.int32)
    rows = np.repeat(np.arange(blocks.shape[0]), blocks.shape[1])
    np.add.at(counts, (rows, blocks.ravel().astype(np.int64)), 1)
    free_counts = counts[:, free_index].copy()
    counts[:, free_index] = -1
    best = counts.argmax(axis=1)
    best[free_counts == blocks.shape[1]] = free_index
    return best.astype(labels.dtype).reshape(X, Y, Z)


def resample_rigid(labels: np.ndarray, source: VoxelGrid, target: VoxelGrid, target_from_source: np.ndarray,
                   outside: int, chunk: int = 16) -> np.ndarray:
    """(Xs, Ys, Zs) uint8 labels on ``source`` (a grid in frame S) -> (Xt, Yt, Zt) uint8 on ``target`` (frame T).

    Each target voxel takes the label of the source voxel that contains its centre, mapped into
    frame S with ``inv(target_from_source)`` (4, 4); ``outside`` where that centre lies outside the
    source grid. Pulling from the target keeps one label per target voxel: no holes where a
    rotated source lattice skips a target voxel, no rule needed for two source voxels landing in
    one. A translation by whole voxels moves every label exactly.
    """
    rotation, translation = target_from_source[:3, :3], target_from_source[:3, 3]
    size_s, size_t = np.asarray(source.voxel_size), np.asarray(target.voxel_size)
    # Continuous source index of target voxel (i, j, k) along source axis a: step[a] @ (i, j, k) + u0[a].
    step = rotation.T * size_t[None, :] / size_s[:, None]  # (3, 3)
    u0 = (rotation.T @ (target.origin + 0.5 * size_t - translation) - source.origin) / size_s  # (3,)
    X, Y, Z = target.shape
    shape_s = np.asarray(source.shape)
    padded = np.append(labels.ravel(), np.uint8(outside))  # the last entry answers every centre outside
    # The (j, k) part of each axis once, as (Y, Z) float64; each x slab only adds step[a, 0] * i.
    plane = [step[a, 1] * np.arange(Y)[:, None] + step[a, 2] * np.arange(Z)[None, :] + u0[a] for a in range(3)]
    # int32 halves the memory traffic (~1.6x faster) when no index, even of a centre far outside,
    # can overflow it: u is linear in (i, j, k), so its extremes are at the grid's corners.
    corners = np.array(np.meshgrid([0, X - 1], [0, Y - 1], [0, Z - 1], indexing="ij")).reshape(3, -1)  # (3, 8)
    largest = float(np.abs(step @ corners + u0[:, None]).max()) + 1
    fits = max(largest * (shape_s[1] * shape_s[2] + shape_s[2] + 1), len(padded)) < 2**31
    index_dtype = np.int32 if fits else np.int64
    out = np.empty((X, Y, Z), dtype=np.uint8)
    for i0 in range(0, X, chunk):  # thin slabs of x keep the temporaries small (16 x 512 x 40: 1-3 MB each)
        i = np.arange(i0, min(i0 + chunk, X))[:, None, None]
        flat = np.zeros((len(i), Y, Z), dtype=index_dtype)
        inside = np.ones((len(i), Y, Z), dtype=bool)
        for axis in range(3):
            u = np.floor(step[axis, 0] * i + plane[axis][None]).astype(index_dtype)
            inside &= (u >= 0) & (u < shape_s[axis])
            flat *= shape_s[axis]
            flat += u  # C order over the source (X, Y, Z)
        flat[~inside] = len(padded) - 1
        out[i0:i0 + len(i)] = padded[flat]
    return out
