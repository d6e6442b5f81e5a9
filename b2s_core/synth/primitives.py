"""The solid shapes the synthetic world is made of, as one flat table.

Three kinds, all upright (their only rotation is a yaw about +z):

* ``BOX``: centre, half sizes (half length along the box x, half width, half height), yaw;
* ``CYLINDER``: vertical axis, centre of the axis, half sizes (radius, radius, half height);
* ``SPHERE``: centre, half sizes (radius, radius, radius).

Each shape carries its Occ3D label, the instance it belongs to (-1 for scenery) and a material
index used only for shading. A world snapshot, a sensor's view of it and the ground truth all use
this one table, so the LiDAR, the cameras and the occupancy can never disagree about geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX, CYLINDER, SPHERE = 0, 1, 2


@dataclass
class Primitives:
    kind: np.ndarray  # (P,) int8: BOX / CYLINDER / SPHERE
    center: np.ndarray  # (P, 3) float64, metres
    half: np.ndarray  # (P, 3) float64, half extents (see module docstring)
    yaw: np.ndarray  # (P,) float64, radians about +z
    label: np.ndarray  # (P,) uint8, Occ3D label
    instance: np.ndarray  # (P,) int32, object instance id, -1 for scenery
    material: np.ndarray  # (P,) int16, shading material (texture pattern) id

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @staticmethod
    def empty() -> Primitives:
        return Primitives(
            np.zeros(0, np.int8), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.uint8),
            np.zeros(0, np.int32), np.zeros(0, np.int16),
        )

    @staticmethod
    def concat(parts: list[Primitives]) -> Primitives:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Primitives.empty()
        return Primitives(*(np.concatenate([getattr(p, f) for p in parts]) for f in Primitives.FIELDS))

    FIELDS = ("kind", "center", "half", "yaw", "label", "instance", "material")

    def select(self, index) -> Primitives:
        return Primitives(*(getattr(self, f)[index] for f in self.FIELDS))

    def transformed(self, a_from_b: np.ndarray) -> Primitives:
        """The same shapes expressed in frame a; ``a_from_b`` must be a yaw-only rigid transform."""
        rotation = a_from_b[:3, :3]
        dyaw = np.arctan2(rotation[1, 0], rotation[0, 0])
        center = self.center @ rotation.T + a_from_b[:3, 3]
        return Primitives(self.kind, center, self.half, self.yaw + dyaw, self.label, self.instance, self.material)

    def bounding_radius(self) -> np.ndarray:
        """(P,) radius of a sphere around ``center`` that contains each shape."""
        radius = np.linalg.norm(self.half, axis=1)
        cyl = self.kind == CYLINDER
        radius[cyl] = np.hypot(self.half[cyl, 0], self.half[cyl, 2])
        radius[self.kind == SPHERE] = self.half[self.kind == SPHERE, 0]
        return radius

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) axis-aligned lower and upper corners of each shape."""
        c, s = np.abs(np.cos(self.yaw)), np.abs(np.sin(self.yaw))
        ext = self.half.copy()
        box = self.kind == BOX
        ext[box, 0] = c[box] * self.half[box, 0] + s[box] * self.half[box, 1]
        ext[box, 1] = s[box] * self.half[box, 0] + c[box] * self.half[box, 1]
        return self.center - ext, self.center + ext


def make(kind: int, center, half, yaw: float, label: int, instance: int = -1, material: int | None = None) -> Primitives:
    """One shape as a one-row table."""
    return Primitives(
        np.array([kind], np.int8), np.array([center], np.float64), np.array([half], np.float64),
        np.array([yaw], np.float64), np.array([label], np.uint8), np.array([instance], np.int32),
        np.array([label if material is None else material], np.int16),
    )
