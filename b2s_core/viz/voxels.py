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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid
from b2s_core.taxonomy import BINARY, IGNORE_INDEX, Taxonomy

SHADE_MIN = 0.55  # brightness of the lowest voxel layer; low enough to read height, high enough to read class
BACKGROUND = (28, 28, 32)  # dark, so that the near-white 'manmade' class stays visible


class VisualizeError(B2SError, ValueError):
    """Something cannot be drawn (shapes that disagree, a frame that does not exist)."""


@dataclass(frozen=True)
class VoxelLayer:
    """One labelled grid to draw. ``labels`` is (X, Y, Z) uint8 in ``taxonomy``'s label values."""

    labels: np.ndarray  # (X, Y, Z) uint8
    taxonomy: Taxonomy
    grid: VoxelGrid
    title: str = ""

    def __post_init__(self) -> None:
        if self.labels.shape != self.grid.shape:
            raise VisualizeError(f"layer '{self.title}': labels of shape {self.labels.shape} do not fit grid {self.grid.shape}")

    @classmethod
    def from_semantics(
        cls, semantics: np.ndarray, taxonomy: Taxonomy, grid: VoxelGrid, title: str = "", visible: np.ndarray | None = None
    ) -> "VoxelLayer":
        """Semantic labels; voxels where ``visible`` (X, Y, Z) bool is False are drawn as free."""
        labels = np.asarray(semantics, dtype=np.uint8)
        if visible is not None:
            labels = np.where(visible, labels, np.uint8(taxonomy.free_index))
        return cls(labels, taxonomy, grid, title)

    @classmethod
    def from_binary(cls, occupied: np.ndarray, grid: VoxelGrid, title: str = "", visible: np.ndarray | None = None) -> "VoxelLayer":
        """A bool occupancy grid, drawn in the ``binary`` taxonomy's 'occupied' colour."""
        occupied = np.asarray(occupied, dtype=bool)
        if visible is not None:
            occupied = occupied & visible
        return cls(occupied.astype(np.uint8), BINARY, grid, title)

    @property
    def occupied(self) -> np.ndarray:
        """(X, Y, Z) bool: voxels drawn. Free and ignore (255) voxels are not drawn."""
        return (self.labels != self.taxonomy.free_index) & (self.labels != IGNORE_INDEX)

    def present_labels(self) -> list[int]:
        """Label values of the drawn voxels, ascending."""
        return [int(v) for v in np.unique(self.labels[self.occupied])]


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
