"""Vertical conventions of label sets, and estimating one from frames that a built file and a label file share.

A label set's grid says which ego heights each layer holds (Occ3D: ``[-40, -40, -1, 40, 40, 5.4]``,
layer k = ego z in ``[-1 + 0.4 k, -0.6 + 0.4 k)``). Its labels may sit elsewhere. We describe a
label set by ``z_offset`` (metres): **label z = ego z + z_offset**, i.e. what stands at ego height z
is labelled in the layer the grid assigns to ``z + z_offset``. ``b2s build-binary --z-offset``
builds binary occupancy in that convention (:class:`b2s_core.binary.pipeline.BinaryBuildConfig`),
so that a model pre-trained on it and fine-tuned on the labels sees the same layers.

Occ3D-nuScenes (``occ3d``, -0.8 m, two 0.4 m layers):

* the nuScenes ego frame has its origin on the ground under the rear axle (nuscenes-devkit issue
  #161, maintainer's correction), and the real key frame's LiDAR ground returns near the car lie at
  ego z in [-0.2, 0.2]: the ground belongs in layer 2 of the stated grid;
* the real Occ3D sample (``shared/data/occ3d-sample``, the same file as
  CVPR2023-3D-Occupancy-Prediction ``data/29796060110c4163b07f06eff4af0753/labels.npz``) has all
  8,433 driveable-surface voxels in layer 0, and 1,367 of the 1,551 occupied columns within 8 m
  (|x|, |y| < 8) start in layer 0; its cars reach from layer 0 to 5-6;
* the maintainers state the labels are in the ego frame (Occ3D issue #40; CVPR2023 challenge issues
  #8 and #36) and the challenge's ``utils/vis.py: voxel2points`` places layer k's centre at
  ``-1 + 0.4 (k + 0.5)``; users report the labels do not line up with the images (challenge issue
  #18: a pedestrian 7 voxels tall in scene-0061's first sample; #58: annotation centres above the
  labelled objects).

``benchmarks/measure_vertical_convention.py`` prints these measurements. OpenOccupancy and OpenScene
have no entry: no real sample is at hand to measure them (use :func:`score_shifts` through
``b2s align`` on frames both files share).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid


class ConventionError(B2SError):
    """An unknown label convention, or files that cannot be compared."""


@dataclass(frozen=True)
class LabelConvention:
    name: str
    z_offset: float  # metres: label z = ego z + z_offset
    evidence: str  # where the value comes from, in one phrase


LABEL_CONVENTIONS: dict[str, LabelConvention] = {
    "none": LabelConvention("none", 0.0, "the dataset's ego frame as the grid states it"),
    "occ3d": LabelConvention("occ3d", -0.8, "Occ3D-nuScenes puts the ground (ego z = 0) in layer 0, "
                                            "two 0.4 m layers below the stated grid's layer 2"),
}


def label_convention(name: str) -> LabelConvention:
    try:
        return LABEL_CONVENTIONS[name]
    except KeyError:
        raise ConventionError(f"unknown label convention '{name}': use one of {', '.join(LABEL_CONVENTIONS)}") from None


def shift_layers(grid: np.ndarray, shift: int) -> np.ndarray:
    """(X, Y, Z) -> (X, Y, Z): layer k moved to layer k + shift; vacated layers are False (zero)."""
    out = np.zeros_like(grid)
    Z = grid.shape[2]
    if abs(shift) >= Z:
        return out
    if shift >= 0:
        out[..., shift:] = grid[..., : Z - shift]
    else:
        out[..., :shift] = grid[..., -shift:]
    return out


def column_floors(occupancy: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool -> (X, Y) int64: the lowest occupied layer of each column, -1 where none is."""
    occupied = occupancy.any(axis=2)
    return np.where(occupied, np.argmax(occupancy, axis=2), -1)


@dataclass
class ShiftScore:
    """Agreement of built layer k with label layer k + shift, summed over frames."""

    shift: int  # layers
    intersection: int = 0
    union: int = 0

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 0.0


def score_shifts(pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]], shifts: Sequence[int]) -> list[ShiftScore]:
    """IoU of built and label occupancy for each vertical shift, over all frame pairs.

    ``pairs`` yields (built (X, Y, Z) bool, labels (X, Y, Z) bool, mask (X, Y, Z) bool or None) of
    one frame, on the same grid; the mask (the labels' own, e.g. mask_camera) limits where the
    frame is scored. For shift s, built layer k is compared with label layer k + s, on the layers
    where both exist (the layers a shift pushes out of the grid are not counted against it).
    """
    scores = [ShiftScore(int(s)) for s in shifts]
    for built, labels, mask in pairs:
        if built.shape != labels.shape or (mask is not None and mask.shape != labels.shape):
            raise ConventionError(f"grids of different shapes: built {built.shape}, labels {labels.shape}")
        Z = built.shape[2]
        for score in scores:
            s = score.shift
            lo, hi = max(0, -s), min(Z, Z - s)  # built layers k with 0 <= k + s < Z
            if lo >= hi:
                continue
            a = built[..., lo:hi]
            b = labels[..., lo + s : hi + s]
            m = mask[..., lo + s : hi + s] if mask is not None else None
            inter, union = a & b, a | b
            if m is not None:
                inter, union = inter & m, union & m
            score.intersection += int(np.count_nonzero(inter))
            score.union += int(np.count_nonzero(union))
    return scores


def best_shift(scores: Sequence[ShiftScore]) -> ShiftScore:
    """The shift of highest IoU; of equal ones, the smallest |shift| (no evidence for moving further)."""
    if not scores:
        raise ConventionError("no shift was scored")
    return max(scores, key=lambda s: (s.iou, -abs(s.shift)))


@dataclass
class OffsetEstimate:
    scores: list[ShiftScore]
    best: ShiftScore
    frames: int  # frames both files share, scored
    voxel_height: float  # metres per layer
    built_offset: float = 0.0  # the z_offset the built file was made with (its ``z_offset`` attribute)

    @property
    def z_offset(self) -> float:
        """The ``--z-offset`` to build with: the built file's own offset plus the best shift in metres."""
        return self.built_offset + self.best.shift * self.voxel_height


def estimate_offset(built, labels, *, max_shift: int = 4, mask: str = "camera") -> OffsetEstimate:
    """Score built vs label occupancy per vertical shift on the frames (tokens) both files hold.

    ``built`` and ``labels`` are :class:`b2s_core.occfile.OccDataset` s on grids of the same
    geometry; ``mask``: 'camera' or 'lidar' (score inside the labels' mask of that name; a label
    frame without it is an error) or 'none' (the whole grid).
    """
    if mask not in ("camera", "lidar", "none"):
        raise ConventionError(f"mask must be 'camera', 'lidar' or 'none', got '{mask}'")
    if max_shift < 0:
        raise ConventionError(f"max_shift must be >= 0, got {max_shift}")
    grid: VoxelGrid = labels.grid
    if not built.grid.same_geometry(grid):
        raise ConventionError(f"{built.paths[0]}: grid {built.grid.describe()} differs from {labels.paths[0]}'s "
                              f"{grid.describe()}; build on the labels' grid")
    label_index = {token: i for i, token in enumerate(labels.tokens())}
    shared = [(i, label_index[token]) for i, token in enumerate(built.tokens()) if token in label_index]
    if not shared:
        raise ConventionError(f"{built.paths[0]} and {labels.paths[0]} share no frame token: "
                              "build the scenes the labels cover")
    field = {"camera": "mask_camera", "lidar": "mask_lidar", "none": None}[mask]

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        for i, j in shared:
            label_frame = labels.read(j, fields=("occupancy",) + ((field,) if field else ()))
            region = getattr(label_frame, field) if field else None
            if field and region is None:
                raise ConventionError(f"{labels.paths[0]}: frame {label_frame.token} has no {field}; "
                                      "use --mask lidar or --mask none")
            yield built.read(i, fields=("occupancy",)).occupancy, label_frame.occupancy, region

    scores = score_shifts(pairs(), range(-max_shift, max_shift + 1))
    return OffsetEstimate(scores, best_shift(scores), len(shared), grid.voxel_size[2], built_offset=built.z_offset)
