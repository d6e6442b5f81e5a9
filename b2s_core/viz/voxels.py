"""What every renderer draws: a labelled voxel layer, its colours and its visible voxels.

A :class:`VoxelLayer` is one grid to picture (ground truth, a prediction, the binary decoder's
output): ``(X, Y, Z)`` uint8 labels of a taxonomy on a :class:`~b2s_core.grids.VoxelGrid`. A binary
grid becomes a layer of the ``binary`` taxonomy (0 free, 1 occupied), so that every renderer has
one code path.

Shading rules, shared by all pictures so that a colour can be read back into a class:

* height shading (BEV, camera overlays): a voxel at height index ``k`` of ``Z`` is drawn with
  ``round(colour * (SHADE_MIN + (1 - SHADE_MIN) * k / (Z - 1)))``; the top of the grid keeps the
  class colour exactly.
* face shading (3D views): each face direction has a fixed brightness (``FACE_SHADE``), as if lit
  by one sun from above; the top face keeps the class colour exactly.

Two layer kinds carry their own meaning in the colour, so they skip height shading
(``height_shaded=False``) and keep their colours exactly:

* height layers (:meth:`VoxelLayer.from_heights`, binary grids): the label of an occupied voxel is
  its height band, coloured along ``HEIGHT_RAMP`` from the grid's bottom (blue) to its top (red);
  :func:`height_taxonomy` names each band by its metres.
* error layers (:func:`error_layer`): each voxel's case of a prediction against the ground truth
  (``ERRORS``: correct, wrong class, missed, false positive).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid
from b2s_core.taxonomy import BINARY, IGNORE_INDEX, Taxonomy

SHADE_MIN = 0.55  # brightness of the lowest voxel layer; low enough to read height, high enough to read class
BACKGROUND = (28, 28, 32)  # dark, so that the near-white 'manmade' class stays visible
# Height ramp (ours, turbo-like): (position 0..1, RGB) stops, interpolated linearly in RGB. Its dark
# ends are cut off so that the lowest band (ground) still stands out from BACKGROUND; hue changes
# fast enough that 16 bands all differ (adjacent samples >= 40 apart in summed RGB).
HEIGHT_RAMP = (
    (0.0, (62, 76, 205)), (0.2, (36, 150, 235)), (0.4, (30, 205, 170)),
    (0.6, (140, 225, 60)), (0.8, (250, 195, 40)), (1.0, (225, 65, 45)),
)
MAX_HEIGHT_BANDS = 16  # more bands than this would not read apart, nor fit a legend
# Error cases (label values of the ERRORS taxonomy); colours from the Okabe-Ito palette, which stays
# distinguishable with the common colour-vision deficiencies.
CORRECT, WRONG_CLASS, MISSED, FALSE_POSITIVE = 1, 2, 3, 4
ERRORS = Taxonomy(
    name="errors",
    class_names=("free in both or not scored", "correct", "wrong class", "missed", "false positive"),
    free_index=0,
    eval_classes=(CORRECT, WRONG_CLASS, MISSED, FALSE_POSITIVE),
    colors=((255, 255, 255), (0, 158, 115), (240, 228, 66), (86, 180, 233), (213, 94, 0)),
)


class VisualizeError(B2SError, ValueError):
    """Something cannot be drawn (shapes that disagree, a frame that does not exist)."""


@dataclass(frozen=True)
class VoxelLayer:
    """One labelled grid to draw. ``labels`` is (X, Y, Z) uint8 in ``taxonomy``'s label values."""

    labels: np.ndarray  # (X, Y, Z) uint8
    taxonomy: Taxonomy
    grid: VoxelGrid
    title: str = ""
    height_shaded: bool = True  # False: colours already say the height (ramp) or a case (errors); drawn exactly

    def __post_init__(self) -> None:
        if self.labels.shape != self.grid.shape:
            raise VisualizeError(f"layer '{self.title}': labels of shape {self.labels.shape} do not fit grid {self.grid.shape}")

    @classmethod
    def from_semantics(
        cls, semantics: np.ndarray, taxonomy: Taxonomy, grid: VoxelGrid, title: str = "", visible: np.ndarray | None = None
    ) -> VoxelLayer:
        """Semantic labels; voxels where ``visible`` (X, Y, Z) bool is False are drawn as free."""
        labels = np.asarray(semantics, dtype=np.uint8)
        if visible is not None:
            labels = np.where(visible, labels, np.uint8(taxonomy.free_index))
        return cls(labels, taxonomy, grid, title)

    @classmethod
    def from_binary(cls, occupied: np.ndarray, grid: VoxelGrid, title: str = "", visible: np.ndarray | None = None) -> VoxelLayer:
        """A bool occupancy grid, drawn in the ``binary`` taxonomy's 'occupied' colour."""
        occupied = np.asarray(occupied, dtype=bool)
        if visible is not None:
            occupied = occupied & visible
        return cls(occupied.astype(np.uint8), BINARY, grid, title)

    @classmethod
    def from_heights(cls, occupied: np.ndarray, grid: VoxelGrid, title: str = "", visible: np.ndarray | None = None) -> VoxelLayer:
        """A bool (X, Y, Z) occupancy grid coloured by height: each occupied voxel's label is its
        height band + 1 in :func:`height_taxonomy` (0 free), so that ground, cars, walls and trees differ."""
        occupied = np.asarray(occupied, dtype=bool)
        if visible is not None:
            occupied = occupied & visible
        band_label = (height_bands(grid.shape[2]) + 1).astype(np.uint8)  # (Z,)
        labels = np.where(occupied, band_label[None, None, :], np.uint8(0)).astype(np.uint8)
        return cls(labels, height_taxonomy(grid), grid, title, height_shaded=False)

    @property
    def occupied(self) -> np.ndarray:
        """(X, Y, Z) bool: voxels drawn. Free and ignore (255) voxels are not drawn."""
        return (self.labels != self.taxonomy.free_index) & (self.labels != IGNORE_INDEX)

    def present_labels(self) -> list[int]:
        """Label values of the drawn voxels, ascending."""
        return [int(v) for v in np.unique(self.labels[self.occupied])]


def error_layer(truth: VoxelLayer, guess: VoxelLayer, title: str = "") -> VoxelLayer:
    """Each voxel's case of ``guess`` against ``truth`` -> a layer of ``ERRORS`` labels (X, Y, Z).

    correct: both occupied with the same label; wrong class: both occupied, labels differ; missed:
    truth occupied, guess free; false positive: truth free, guess occupied. Labels are compared
    only when both layers use one taxonomy (otherwise occupancy alone: no 'wrong class'). Voxels
    the truth marks ignore (255) are not scored, as in :func:`b2s_core.metrics.confusion.confusion_matrix`;
    build both layers with the evaluation mask (``visible``) to score only inside it.
    """
    if not truth.grid.same_geometry(guess.grid):
        raise VisualizeError(f"layers '{truth.title}' and '{guess.title}' lie on different grids; errors need one grid")
    t_occ, g_occ = truth.occupied, guess.occupied  # (X, Y, Z) bool each
    if truth.taxonomy.name == guess.taxonomy.name:
        same = truth.labels == guess.labels
    else:
        same = np.ones(truth.labels.shape, dtype=bool)
    labels = np.zeros(truth.labels.shape, dtype=np.uint8)
    labels[t_occ & g_occ & same] = CORRECT
    labels[t_occ & g_occ & ~same] = WRONG_CLASS
    labels[t_occ & ~g_occ] = MISSED
    labels[~t_occ & g_occ] = FALSE_POSITIVE
    labels[truth.labels == IGNORE_INDEX] = 0
    return VoxelLayer(labels, ERRORS, truth.grid, title, height_shaded=False)


def ramp_colors(count: int) -> np.ndarray:
    """(count, 3) uint8: ``count`` evenly spaced samples of ``HEIGHT_RAMP``, lowest first."""
    stops = np.array([stop for stop, _ in HEIGHT_RAMP])
    rgb = np.array([color for _, color in HEIGHT_RAMP], dtype=np.float64)  # (S, 3)
    t = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)
    return np.round(np.stack([np.interp(t, stops, rgb[:, c]) for c in range(3)], axis=1)).astype(np.uint8)


def height_bands(num_z: int) -> np.ndarray:
    """(num_z,) int64: the band (0-based) of each height level; ``min(num_z, MAX_HEIGHT_BANDS)`` bands
    of (nearly) equal numbers of levels."""
    bands = min(num_z, MAX_HEIGHT_BANDS)
    return np.arange(num_z, dtype=np.int64) * bands // num_z


@functools.lru_cache(maxsize=8)
def height_taxonomy(grid: VoxelGrid) -> Taxonomy:
    """Labels of :meth:`VoxelLayer.from_heights` on ``grid``: 0 free, band + 1 named 'z LOW to HIGH m'
    (ego-frame metres of the band's bottom and top), coloured along ``HEIGHT_RAMP``."""
    band_of = height_bands(grid.shape[2])
    bands = int(band_of[-1]) + 1
    z0, dz = grid.range_min[2], grid.voxel_size[2]

    def metres(value: float) -> str:
        return f"{round(value, 1) + 0.0:.1f}"  # + 0.0: never '-0.0'

    names = ["free"]
    for band in range(bands):
        levels = np.flatnonzero(band_of == band)
        names.append(f"z {metres(z0 + levels[0] * dz)} to {metres(z0 + (levels[-1] + 1) * dz)} m")
    colors = ((255, 255, 255),) + tuple(tuple(int(v) for v in c) for c in ramp_colors(bands))
    return Taxonomy(name="height", class_names=tuple(names), free_index=0,
                    eval_classes=tuple(range(1, bands + 1)), colors=colors)


def height_shade(k: np.ndarray, num_z: int) -> np.ndarray:
    """Brightness factor of height index ``k`` (any shape) in a grid ``num_z`` voxels tall."""
    return SHADE_MIN + (1.0 - SHADE_MIN) * np.asarray(k, dtype=np.float64) / max(num_z - 1, 1)


def shade(colors: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """(..., 3) uint8 colours times (...) brightness factors, rounded -> (..., 3) uint8."""
    factor = np.asarray(factor, dtype=np.float64)[..., None]
    return np.clip(np.round(colors.astype(np.float64) * factor), 0, 255).astype(np.uint8)


def surface_mask(occupied: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool -> (X, Y, Z) bool: occupied voxels with at least one non-occupied face neighbour.

    Interior voxels can never be seen, so renderers that draw whole voxels skip them; voxels on
    the grid's border count as visible.
    """
    padded = np.pad(occupied, 1, constant_values=False)
    hidden = occupied.copy()
    for axis in range(3):
        for step in (1, -1):
            neighbour = np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
            hidden &= neighbour
    return occupied & ~hidden
