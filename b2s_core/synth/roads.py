"""Road centre lines made of straight pieces and circular arcs, and the ground classes around them.

A :class:`RoadPath` is parameterised by arc length ``s``; positions and headings at any ``s`` are
analytic, and any ground point projects back to ``(s, lateral offset)`` (left of the direction of
travel is positive). The road cross-section is fixed (see :class:`CrossSection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.synth.geometry import wrap_angle
from b2s_core.taxonomy import OCC3D_NAMES

L = {name: i for i, name in enumerate(OCC3D_NAMES)}


@dataclass(frozen=True)
class CrossSection:
    """Lateral layout of every road, metres from the centre line (same on both sides)."""

    lane_width: float = 3.2  # one car lane per direction, centre at lane_width / 2
    bike_width: float = 1.0  # bike lane outside the car lane
    parking_width: float = 2.2  # parking strip at the kerb
    sidewalk_width: float = 3.0

    @property
    def road_half(self) -> float:
        return self.lane_width + self.bike_width + self.parking_width

    @property
    def sidewalk_outer(self) -> float:
        return self.road_half + self.sidewalk_width

    @property
    def lane_center(self) -> float:
        return self.lane_width / 2

    @property
    def bike_center(self) -> float:
        return self.lane_width + self.bike_width / 2

    @property
    def parking_center(self) -> float:
        return self.lane_width + self.bike_width + self.parking_width / 2


SECTION = CrossSection()


@dataclass(frozen=True)
class RoadPath:
    """A centre line from ``start`` with ``heading``, then pieces of (length, curvature 1/m)."""

    start: tuple[float, float]
    heading: float
    pieces: tuple[tuple[float, float], ...]

    @property
    def length(self) -> float:
        return float(sum(p[0] for p in self.pieces))

    def _piece_starts(self):
        """Per piece: start s, start point (2,), start heading."""
        out = []
        s, xy, h = 0.0, np.asarray(self.start, dtype=np.float64), self.heading
        for length, curvature in self.pieces:
            out.append((s, xy.copy(), h))
            xy, h = _advance(xy, h, length, curvature)
            s += length
        return out

    def pose_at(self, s) -> tuple[np.ndarray, np.ndarray]:
        """(N,) arc lengths -> (N, 2) points and (N,) headings; beyond the ends the line continues straight."""
        s = np.atleast_1d(np.asarray(s, dtype=np.float64))
        xy = np.zeros((s.shape[0], 2))
        heading = np.zeros(s.shape[0])
        starts = self._piece_starts()
        bounds = np.array([st[0] for st in starts])
        piece = np.clip(np.searchsorted(bounds, s, side="right") - 1, 0, len(starts) - 1)
        for i, ((s0, p0, h0), (length, curvature)) in enumerate(zip(starts, self.pieces)):
            sel = piece == i
            if not sel.any():
                continue
            ds = s[sel] - s0
            k = curvature
            if i == 0:
                k = np.where(ds < 0, 0.0, k)  # straight extension before the start
            if i == len(starts) - 1:
                k = np.where(ds > length, 0.0, k)
            k = np.broadcast_to(np.asarray(k, dtype=np.float64), ds.shape)
            # straight extension after an end piece that is curved: advance along the curve first
            if i == len(starts) - 1 and curvature != 0:
                over = np.maximum(ds - length, 0.0)
                on = np.minimum(ds, length)
                pe, he = _advance_many(p0, h0, on, np.full_like(on, curvature))
                pe = pe + over[:, None] * np.stack([np.cos(he), np.sin(he)], axis=1)
                xy[sel], heading[sel] = pe, he
            else:
                xy[sel], heading[sel] = _advance_many(p0, h0, ds, k)
        return xy, heading

    def project(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 2) points -> arc length s (N,), signed lateral offset (N,), distance to the line (N,).

        The line is extended straight beyond both ends, so the lateral offset is always defined.
        """
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        best_d = np.full(xy.shape[0], np.inf)
        best_s = np.zeros(xy.shape[0])
        best_lat = np.zeros(xy.shape[0])
        starts = self._piece_starts()
        for i, ((s0, p0, h0), (length, curvature)) in enumerate(zip(starts, self.pieces)):
            lo = -np.inf if i == 0 else 0.0
            hi = np.inf if i == len(starts) - 1 else length
            if curvature == 0.0:
                # straight piece: project onto its line directly (the common, hot case)
                c, s = np.cos(h0), np.sin(h0)
                dx, dy = xy[:, 0] - p0[0], xy[:, 1] - p0[1]
                along = c * dx + s * dy
                lat = -s * dx + c * dy
                ds = np.clip(along, lo, hi)
                dist = np.hypot(along - ds, lat)
            else:
                radius = 1.0 / curvature
                center = p0 + radius * np.array([-np.sin(h0), np.cos(h0)])
                angle0 = np.arctan2(*(p0 - center)[::-1])
                rel = xy - center
                angle = np.arctan2(rel[:, 1], rel[:, 0])
                # arcs are never the first or last piece of a layout: clamp to the piece itself
                ds = np.clip(wrap_angle((angle - angle0) * np.sign(curvature)) * abs(radius), 0.0, length)
                point, head = _advance_many(p0, h0, ds, np.full(ds.shape, curvature))
                delta = xy - point
                lat = -np.sin(head) * delta[:, 0] + np.cos(head) * delta[:, 1]
                dist = np.hypot(delta[:, 0], delta[:, 1])
            better = dist < best_d
            best_d[better], best_s[better], best_lat[better] = dist[better], (s0 + ds)[better], lat[better]
        return best_s, best_lat, best_d


def _advance(xy, heading, length, curvature):
    p, h = _advance_many(xy, heading, np.array([length]), np.array([curvature]))
    return p[0], float(h[0])


def _advance_many(p0: np.ndarray, h0: float, ds: np.ndarray, k: np.ndarray):
    """Move along a constant-curvature piece: (N,) distances and curvatures -> (N, 2), (N,)."""
    k = np.asarray(k, dtype=np.float64)
    straight = np.abs(k) < 1e-12
    ksafe = np.where(straight, 1.0, k)
    h = h0 + k * ds
    x = np.where(straight, p0[0] + ds * np.cos(h0), p0[0] + (np.sin(h) - np.sin(h0)) / ksafe)
    y = np.where(straight, p0[1] + ds * np.sin(h0), p0[1] - (np.cos(h) - np.cos(h0)) / ksafe)
    return np.stack([x, y], axis=1), h


@dataclass(frozen=True)
class OrientedRect:
    center: tuple[float, float]
    half: tuple[float, float]
    yaw: float

    def contains(self, xy: np.ndarray) -> np.ndarray:
        d = xy - np.asarray(self.center)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        u = c * d[:, 0] + s * d[:, 1]
        v = -s * d[:, 0] + c * d[:, 1]
        return (np.abs(u) <= self.half[0]) & (np.abs(v) <= self.half[1])


@dataclass(frozen=True)
class RoadNetwork:
    """All roads of one scene plus flat patches (car parks, driveways) labelled other_flat."""

    paths: tuple[RoadPath, ...]
    flat_patches: tuple[OrientedRect, ...] = ()
    section: CrossSection = SECTION

    def ground(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) global points -> Occ3D ground label (N,) uint8 and a lane-marking flag (N,) bool."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        label = np.full(xy.shape[0], L["terrain"], dtype=np.uint8)
        for patch in self.flat_patches:
            label[patch.contains(xy)] = L["other_flat"]
        marking = np.zeros(xy.shape[0], dtype=bool)
        road_count = np.zeros(xy.shape[0], dtype=np.int8)
        for path in self.paths:
            s, lat, dist = path.project(xy)
            label[(dist < self.section.sidewalk_outer) & (label != L["driveable_surface"])] = L["sidewalk"]
            on_road = dist < self.section.road_half
            label[on_road] = L["driveable_surface"]
            road_count += on_road
            # dashed centre line and solid edge lines of the car lanes
            centre = (np.abs(lat) < 0.08) & ((s % 6.0) < 3.0)
            edge = np.abs(np.abs(lat) - self.section.lane_width) < 0.07
            marking |= on_road & (centre | edge)
        marking &= road_count <= 1  # no markings inside the junction box
        return label, marking

    def clear_of_roads(self, xy: np.ndarray, radius: float, margin: float) -> np.ndarray:
        """(N, 2) -> (N,) bool: a disc of ``radius`` stays ``margin`` outside every road surface."""
        ok = np.ones(np.asarray(xy).reshape(-1, 2).shape[0], dtype=bool)
        for path in self.paths:
            ok &= path.project(xy)[2] - radius > self.section.road_half + margin
        return ok
