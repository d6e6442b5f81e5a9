"""A seeded procedural driving world: roads, scenery, parked and moving objects, the ego's drive.

``build_world(seed, scene_index, duration)`` is fully deterministic. The world lives in the global
(map) frame, flat ground at z = 0. Scenery (buildings, trees, hedges, poles, signs) is a fixed
:class:`Primitives` table; every annotated object (vehicles, pedestrians, cyclists, cones,
barriers, ...) is an :class:`Agent` that follows a road path at a constant speed (0 when parked),
so its track is exact at any time. :meth:`World.snapshot` gives the shapes at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.synth.geometry import yaw_pose
from b2s_core.synth.primitives import BOX, CYLINDER, SPHERE, Primitives, make
from b2s_core.synth.roads import SECTION, L, OrientedRect, RoadNetwork, RoadPath

LAYOUTS = ("junction", "curve", "straight")
GLASS = 40  # material id of windows (shading only)
TRUNK = 41  # material id of tree trunks
SIGN, HEDGE, BUILDING = 42, 43, 44  # material ids (shading only)


@dataclass(frozen=True)
class ObjectKind:
    """One kind of annotated object: its categories in each dataset and its typical size."""

    name: str
    nuscenes: str  # nuScenes category name
    nuplan: str  # nuPlan / OpenScene category name
    label: int  # Occ3D label
    size: tuple[float, float, float]  # typical (length, width, height), metres
    jitter: float = 0.08  # relative size variation


KINDS = {
    k.name: k
    for k in (
        ObjectKind("car", "vehicle.car", "vehicle", L["car"], (4.5, 1.9, 1.6)),
        ObjectKind("truck", "vehicle.truck", "vehicle", L["truck"], (7.5, 2.5, 3.2)),
        ObjectKind("bus", "vehicle.bus.rigid", "vehicle", L["bus"], (11.5, 2.6, 3.3), 0.04),
        ObjectKind("trailer", "vehicle.trailer", "vehicle", L["trailer"], (8.0, 2.5, 3.4), 0.05),
        ObjectKind("construction", "vehicle.construction", "vehicle", L["construction_vehicle"], (6.0, 2.7, 3.0)),
        ObjectKind("pedestrian", "human.pedestrian.adult", "pedestrian", L["pedestrian"], (0.6, 0.6, 1.75), 0.06),
        ObjectKind("cyclist", "vehicle.bicycle", "bicycle", L["bicycle"], (1.8, 0.6, 1.75), 0.05),
        ObjectKind("motorcycle", "vehicle.motorcycle", "bicycle", L["motorcycle"], (2.1, 0.8, 1.6), 0.05),
        ObjectKind("cone", "movable_object.trafficcone", "traffic_cone", L["traffic_cone"], (0.4, 0.4, 0.75), 0.05),
        ObjectKind("barrier", "movable_object.barrier", "barrier", L["barrier"], (0.5, 2.0, 1.0), 0.05),
        ObjectKind("bin", "movable_object.pushable_pullable", "generic_object", L["others"], (0.7, 0.7, 1.1), 0.1),
    )
}


@dataclass
class Agent:
    """An annotated object moving along ``path`` at ``offset`` metres left of its centre line."""

    track: int  # instance id, unique in the scene
    kind: ObjectKind
    size: np.ndarray  # (3,) length, width, height
    path: int  # index into the road network's paths
    offset: float  # lateral offset, metres (left positive)
    s0: float  # arc length at time 0
    speed: float  # m/s along the path; 0 = parked
    direction: int  # +1 drives with the path, -1 against it
    parts: Primitives  # shapes in the box frame (origin at the box's bottom centre)

    def s_at(self, t) -> np.ndarray:
        return self.s0 + self.direction * self.speed * np.asarray(t, dtype=np.float64)


@dataclass
class World:
    seed: int
    scene_index: int
    layout: str
    roads: RoadNetwork
    scenery: Primitives
    agents: list[Agent]
    ego_path: int
    ego_offset: float
    ego_s0: float
    ego_speed: float
    sun: np.ndarray  # (3,) unit vector towards the sun, global frame
    ego_size: tuple[float, float, float] = (4.1, 1.85, 1.6)

    # -- ego ------------------------------------------------------------------------------------
    def global_from_ego(self, t: float) -> np.ndarray:
        """(4, 4) ego pose at time t (s); z = 0 like nuScenes poses, origin on the ground."""
        xy, heading = _pose_on(self.roads.paths[self.ego_path], self.ego_s0 + self.ego_speed * t, self.ego_offset, 1)
        return yaw_pose(xy[0, 0], xy[0, 1], 0.0, heading[0])

    # -- objects ----------------------------------------------------------------------------------
    def agent_poses(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(A, 2) ground positions of the box centres and (A,) headings at time t."""
        if not hasattr(self, "_tracks"):
            # per path: the agents on it and their track parameters as arrays (built once)
            self._tracks = []
            for p in range(len(self.roads.paths)):
                idx = np.array([i for i, a in enumerate(self.agents) if a.path == p], dtype=np.int64)
                if idx.size:
                    params = np.array([(self.agents[i].s0, self.agents[i].speed * self.agents[i].direction,
                                        self.agents[i].offset, self.agents[i].direction) for i in idx])
                    self._tracks.append((p, idx, params))
        xy = np.zeros((len(self.agents), 2))
        heading = np.zeros(len(self.agents))
        for p, idx, params in self._tracks:
            s = params[:, 0] + params[:, 1] * t
            xy[idx], heading[idx] = _pose_on(self.roads.paths[p], s, params[:, 2], params[:, 3])
        return xy, heading

    def boxes(self, t: float) -> dict[str, np.ndarray]:
        """Annotated boxes at time t, global frame: center (A, 3), size (A, 3) l/w/h, yaw (A,),
        velocity (A, 3), track (A,), label (A,)."""
        xy, heading = self.agent_poses(t)
        dt = 0.05
        xy2, _ = self.agent_poses(t + dt)
        size = np.array([a.size for a in self.agents]).reshape(-1, 3)
        center = np.concatenate([xy, size[:, 2:3] / 2], axis=1)
        velocity = np.concatenate([(xy2 - xy) / dt, np.zeros((len(self.agents), 1))], axis=1)
        return {
            "center": center,
            "size": size,
            "yaw": heading,
            "velocity": velocity,
            "track": np.array([a.track for a in self.agents], dtype=np.int64),
            "label": np.array([a.kind.label for a in self.agents], dtype=np.uint8),
        }

    def snapshot(self, t: float) -> Primitives:
        """Every shape of the world at time t (scenery first, then the agents' parts)."""
        if not hasattr(self, "_parts"):
            # all agents' parts in their box frames as one table, with the owning agent per row
            self._parts = Primitives.concat([a.parts for a in self.agents])
            self._part_owner = np.concatenate([np.full(len(a.parts), i) for i, a in enumerate(self.agents)] + [np.zeros(0, int)])
        xy, heading = self.agent_poses(t)
        parts, owner = self._parts, self._part_owner
        c, s = np.cos(heading[owner]), np.sin(heading[owner])
        local = parts.center
        center = np.stack([xy[owner, 0] + c * local[:, 0] - s * local[:, 1],
                           xy[owner, 1] + s * local[:, 0] + c * local[:, 1], local[:, 2]], axis=1)
        moved = Primitives(parts.kind, center, parts.half, parts.yaw + heading[owner], parts.label, parts.instance, parts.material)
        return Primitives.concat([self.scenery, moved])

    def ground(self, xy: np.ndarray):
        return self.roads.ground(xy)


def _pose_on(path: RoadPath, s, offset, direction):
    s = np.atleast_1d(np.asarray(s, dtype=np.float64))
    xy, heading = path.pose_at(s)
    normal = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    xy = xy + np.asarray(offset, dtype=np.float64).reshape(-1, 1) * normal
    heading = heading + np.where(np.asarray(direction).reshape(-1) < 0, np.pi, 0.0)
    return xy, heading


# -- object shapes in the box frame (origin at the bottom centre, x forward) ---------------------
def _parts(kind: ObjectKind, size: np.ndarray, track: int) -> Primitives:
    length, w, h = size
    lab = kind.label
    box = lambda c, half, mat=None: make(BOX, c, half, 0.0, lab, track, mat)  # noqa: E731
    if kind.name == "car":
        body_top = 0.58 * h  # body from 0.18 m (wheels' clearance) to here, cabin above
        return Primitives.concat([
            box((0, 0, (0.18 + body_top) / 2), (length / 2, w / 2, (body_top - 0.18) / 2)),
            box((-0.08 * length, 0, 0.79 * h), (0.27 * length, 0.45 * w, 0.21 * h), GLASS),
        ])
    if kind.name in ("truck", "construction"):
        cab_material = GLASS if kind.name == "truck" else None
        cab = box((0.37 * length, 0, 0.5 * h + 0.15), (0.13 * length, w / 2, 0.5 * h - 0.15), cab_material)
        body = box((-0.13 * length, 0, 0.55 * h + 0.05), (0.37 * length, w / 2, 0.45 * h - 0.05))
        extra = []
        if kind.name == "construction":
            extra = [make(BOX, (0.2 * length, 0, 0.9 * h), (0.3 * length, 0.12, 0.1 * h), 0.0, lab, track)]
        return Primitives.concat([cab, body] + extra)
    if kind.name in ("bus", "trailer"):
        lift = 0.1 * (kind.name == "trailer")
        return box((0, 0, 0.55 * h + lift), (length / 2, w / 2, 0.45 * h - lift))
    if kind.name == "pedestrian":
        r = 0.42 * w
        return Primitives.concat([
            make(CYLINDER, (0, 0, 0.43 * h), (r, r, 0.43 * h), 0.0, lab, track),
            make(SPHERE, (0, 0, h - 0.12), (0.12, 0.12, 0.12), 0.0, lab, track),
        ])
    if kind.name in ("cyclist", "motorcycle"):
        return Primitives.concat([
            box((0, 0, 0.31 * h), (length / 2, w / 2 * 0.7, 0.25 * h)),
            make(CYLINDER, (-0.1 * length, 0, 0.78 * h), (0.2, 0.2, 0.22 * h), 0.0, lab, track),
        ])
    if kind.name == "cone":
        return make(CYLINDER, (0, 0, h / 2), (length / 2 * 0.9, length / 2 * 0.9, h / 2), 0.0, lab, track)
    return box((0, 0, h / 2), (length / 2, w / 2, h / 2))


# -- world generation ---------------------------------------------------------------------------
def build_world(seed: int, scene_index: int, duration: float) -> World:
    """The world of one scene; ``duration`` (s) bounds where the ego and the movers go."""
    rng = np.random.default_rng([seed, scene_index, 7])
    layout = LAYOUTS[scene_index % len(LAYOUTS)]
    start = (200.0 + 400.0 * scene_index + rng.uniform(-50, 50), 600.0 + rng.uniform(-50, 50))
    heading = float(rng.uniform(-np.pi, np.pi))
    ego_speed = float(rng.uniform(5.0, 8.5))
    ego_s0 = 120.0
    travel = ego_speed * duration
    if layout == "curve":
        radius = float(rng.uniform(35.0, 60.0))
        angle = float(rng.uniform(np.radians(50), np.radians(90)))
        turn = 1.0 if rng.random() < 0.5 else -1.0
        main = RoadPath(start, heading, ((ego_s0 + 10.0, 0.0), (radius * angle, turn / radius), (250.0, 0.0)))
    else:
        main = RoadPath(start, heading, ((ego_s0 + travel + 200.0, 0.0),))
    paths = [main]
    if layout == "junction":
        s_junction = ego_s0 + max(travel / 2, 20.0) + rng.uniform(-5.0, 5.0)
        (jxy,), (jh,) = main.pose_at(np.array([s_junction]))
        cross_heading = jh + np.pi / 2
        cross_start = jxy - 160.0 * np.array([np.cos(cross_heading), np.sin(cross_heading)])
        paths.append(RoadPath(tuple(cross_start), float(cross_heading), ((320.0, 0.0),)))
    ego_path, ego_offset = 0, -SECTION.lane_center

    builder = _Builder(rng, paths, ego_s0, travel)
    patches = builder.flat_patches()
    roads = RoadNetwork(tuple(paths), tuple(patches))
    builder.roads = roads
    builder.scenery()
    builder.agents(ego_speed, duration)
    sun_az, sun_el = rng.uniform(-np.pi, np.pi), rng.uniform(np.radians(35), np.radians(65))
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)])
    return World(
        seed=seed, scene_index=scene_index, layout=layout, roads=roads,
        scenery=Primitives.concat(builder.shapes), agents=builder.placed_agents,
        ego_path=ego_path, ego_offset=ego_offset, ego_s0=ego_s0, ego_speed=ego_speed, sun=sun,
    )


class _Builder:
    """Places scenery and agents along the roads, rejecting anything that would collide."""

    def __init__(self, rng, paths, ego_s0, travel):
        self.rng = rng
        self.paths = paths
        self.roads: RoadNetwork | None = None
        self.shapes: list[Primitives] = []
        self.discs: list[tuple[float, float, float]] = []  # footprints of placed scenery (x, y, r)
        self.placed_agents: list[Agent] = []
        # the stretch of road the sensors see: ego travel plus ~80 m either side
        self.s_lo, self.s_hi = max(0.0, ego_s0 - 80.0), ego_s0 + travel + 80.0
        self.ego_s0 = ego_s0

    def _span(self, path_index: int):
        path = self.paths[path_index]
        if path_index == 0:
            return self.s_lo, min(self.s_hi, path.length)
        return 60.0, path.length - 60.0

    def _free(self, x, y, r) -> bool:
        if not self.discs:
            return True
        d = np.asarray(self.discs)
        return bool(np.all(np.hypot(d[:, 0] - x, d[:, 1] - y) > d[:, 2] + r))

    def _add(self, prim: Primitives, x, y, r):
        self.shapes.append(prim)
        self.discs.append((x, y, r))

    def _at(self, path_index, s, lateral):
        xy, h = _pose_on(self.paths[path_index], s, lateral, 1)
        return xy[0, 0], xy[0, 1], float(h[0])

    def flat_patches(self) -> list[OrientedRect]:
        patches = []
        for p in range(len(self.paths)):
            lo, hi = self._span(p)
            for _ in range(self.rng.integers(1, 3)):
                s = self.rng.uniform(lo, hi)
                side = self.rng.choice([-1.0, 1.0])
                depth, length = self.rng.uniform(6, 12), self.rng.uniform(8, 16)
                x, y, h = self._at(p, s, side * (SECTION.sidewalk_outer + depth / 2))
                patches.append(OrientedRect((x, y), (length / 2, depth / 2), h))
                self.discs.append((x, y, 0.5 * np.hypot(length, depth)))
        return patches

    def scenery(self):
        rng, R = self.rng, self.roads
        out = SECTION.sidewalk_outer
        for p in range(len(self.paths)):
            lo, hi = self._span(p)
            for side in (-1.0, 1.0):
                # poles with signs at the kerb, trees at the back of the sidewalk, bins between
                s = lo + rng.uniform(0, 10)
                while s < hi:
                    x, y, h = self._at(p, s, side * (SECTION.road_half + 0.35))
                    if _near_only(R, p, x, y) and self._free(x, y, 0.3):
                        height = rng.uniform(4.5, 7.0)
                        self._add(make(CYLINDER, (x, y, height / 2), (0.09, 0.09, height / 2), 0.0, L["manmade"]), x, y, 0.3)
                        if rng.random() < 0.6:
                            sign_h = rng.uniform(2.3, 3.0)
                            self.shapes.append(make(BOX, (x, y, sign_h), (0.03, 0.4, 0.35), h, L["manmade"], -1, SIGN))
                    s += rng.uniform(18, 35)
                s = lo + rng.uniform(0, 8)
                while s < hi:
                    x, y, h = self._at(p, s, side * (out - 0.45))
                    if _near_only(R, p, x, y) and self._free(x, y, 0.4):
                        trunk_h = rng.uniform(2.2, 3.2)
                        crown = rng.uniform(1.4, 2.4)
                        r_trunk = rng.uniform(0.12, 0.22)
                        trunk = make(CYLINDER, (x, y, trunk_h / 2), (r_trunk, r_trunk, trunk_h / 2), 0.0, L["vegetation"],
                                     -1, TRUNK)
                        self._add(trunk, x, y, 0.4)
                        self.shapes.append(make(SPHERE, (x, y, trunk_h + 0.7 * crown), (crown,) * 3, 0.0, L["vegetation"]))
                    s += rng.uniform(9, 16)
                # hedges and buildings behind the sidewalk
                s = lo + rng.uniform(0, 10)
                while s < hi:
                    length = rng.uniform(10, 26)
                    depth = rng.uniform(8, 18)
                    setback = out + rng.uniform(2.5, 7.0)
                    x, y, h = self._at(p, s + length / 2, side * (setback + depth / 2))
                    r = 0.5 * np.hypot(length, depth)
                    if R.clear_of_roads(np.array([[x, y]]), r, 3.2)[0] and self._free(x, y, r):
                        height = rng.uniform(5, 22)
                        building = make(BOX, (x, y, height / 2), (length / 2, depth / 2, height / 2), h, L["manmade"],
                                        -1, BUILDING)
                        self._add(building, x, y, r)
                    elif rng.random() < 0.7:
                        hl = rng.uniform(2.0, 5.0)
                        hx, hy, hh = self._at(p, s + hl, side * (out + 0.7))
                        if R.clear_of_roads(np.array([[hx, hy]]), hl, 0.5)[0] and self._free(hx, hy, hl):
                            height = rng.uniform(0.9, 1.6)
                            self._add(make(BOX, (hx, hy, height / 2), (hl, 0.45, height / 2), hh, L["vegetation"], -1, HEDGE), hx, hy, hl)
                    s += length + rng.uniform(2, 9)

    # -- agents ------------------------------------------------------------------------------
    def _try_agent(self, kind_name, path, offset, s0, speed, direction, duration) -> bool:
        kind = KINDS[kind_name]
        size = np.array(kind.size) * (1.0 + self.rng.uniform(-kind.jitter, kind.jitter, 3))
        track = len(self.placed_agents)
        agent = Agent(track, kind, size, path, offset, s0, speed, direction, Primitives.empty())
        times = np.linspace(0.0, duration + 0.5, max(3, int(duration * 4) + 3))
        s = agent.s_at(times)
        lo, hi = 5.0, self.paths[path].length - 5.0
        if s.min() < lo or s.max() > hi:
            return False
        xy, heading = _pose_on(self.paths[path], s, np.full(s.shape, offset), np.full(s.shape, direction))
        r = 0.5 * float(np.hypot(size[0], size[1]))
        # stay on this road: parked objects, pedestrians and bike-lane traffic never touch another
        # road's surface; vehicles in the car lanes drive straight through the junction box
        through_traffic = speed > 0 and abs(offset) < SECTION.lane_width and kind_name != "pedestrian"
        margin = 0.5 if speed == 0.0 else 0.0
        for q in range(len(self.paths)):
            if q != path and not through_traffic:
                if np.any(self.paths[q].project(xy)[2] < SECTION.road_half + r + margin):
                    return False
        # no scenery overlap and no overlap with other agents at any sampled time
        if self.discs:
            d = np.asarray(self.discs)
            gap = np.hypot(xy[:, None, 0] - d[None, :, 0], xy[:, None, 1] - d[None, :, 1]) - d[None, :, 2] - r
            if np.any(gap < 0.1):
                return False
        if self.tracks:
            # (A, T) every placed agent (and the ego) against the candidate at every sampled time
            oxy = np.stack([t[0] for t in self.tracks])  # (A, T, 2)
            oh = np.stack([t[1] for t in self.tracks])  # (A, T)
            osize = np.stack([t[2] for t in self.tracks])  # (A, 2)
            near = np.hypot(*(oxy - xy[None]).transpose(2, 0, 1)).min(axis=1) < r + 0.5 * np.hypot(*osize.T) + 1.0
            for a in np.flatnonzero(near):
                if np.any(_boxes_overlap(xy, heading, size[:2] + 0.6, oxy[a], oh[a], osize[a] + 0.6)):
                    return False
        agent.parts = _parts(kind, size, track)
        self.placed_agents.append(agent)
        self.tracks.append((xy, heading, size[:2]))
        return True

    def agents(self, ego_speed: float, duration: float):
        rng = self.rng
        lane, bike, park = SECTION.lane_center, SECTION.bike_center, SECTION.parking_center
        ego = Agent(-1, KINDS["car"], np.array([4.1, 1.85, 1.6]), 0, -lane, self.ego_s0, ego_speed, 1, Primitives.empty())
        times = np.linspace(0.0, duration + 0.5, max(3, int(duration * 4) + 3))
        exy, eh = _pose_on(self.paths[0], ego.s_at(times), np.full(times.shape, ego.offset), np.ones(times.shape))
        self.tracks = [(exy, eh, ego.size[:2])]
        for p in range(len(self.paths)):
            lo, hi = self._span(p)
            crossing = p > 0
            # vehicles in the two car lanes: same speed per lane so no one rear-ends anyone
            for direction in (1, -1):
                lane_speed = ego_speed if (p == 0 and direction == 1) else (0.0 if crossing else rng.uniform(4.0, 10.0))
                s = lo + rng.uniform(0, 15)
                while s < hi:
                    kind = rng.choice(["car"] * 5 + ["truck", "bus", "bus", "construction"])
                    half = KINDS[kind].size[0] / 2  # space objects by their own length
                    self._try_agent(kind, p, -direction * lane, s + half, lane_speed, direction, duration)
                    s += 2 * half + rng.uniform(10, 35)
                # cyclists and motorcycles in the bike lanes
                bike_speed = 0.0 if crossing else rng.uniform(2.5, 5.0)
                s = lo + rng.uniform(0, 20)
                while s < hi:
                    self._try_agent(rng.choice(["cyclist", "motorcycle"]), p, -direction * bike, s, bike_speed, direction, duration)
                    s += rng.uniform(20, 50)
                # parked vehicles, sometimes a construction zone with cones and barriers
                s = lo + rng.uniform(0, 10)
                while s < hi:
                    if rng.random() < 0.08:
                        for k in range(4):
                            self._try_agent("cone", p, -direction * (park + 0.6), s + 2.0 * k, 0.0, direction, duration)
                        self._try_agent("barrier", p, -direction * (park - 0.2), s + 9.0, 0.0, direction, duration)
                        s += 14
                        continue
                    kind = rng.choice(["car"] * 6 + ["truck", "trailer", "bus", "construction"])
                    half = KINDS[kind].size[0] / 2
                    self._try_agent(kind, p, -direction * park, s + half, 0.0, direction, duration)
                    s += 2 * half + rng.uniform(1.5, 9)
                # pedestrians on the sidewalks, bins at the back of the sidewalk
                s = lo + rng.uniform(0, 8)
                while s < hi:
                    off = SECTION.road_half + (0.9 if direction == 1 else 1.7)
                    speed = 0.0 if rng.random() < 0.25 else rng.uniform(0.8, 1.6)
                    self._try_agent("pedestrian", p, -direction * off, s, speed, direction, duration)
                    s += rng.uniform(5, 18)
                s = lo + rng.uniform(0, 30)
                while s < hi:
                    self._try_agent("bin", p, -direction * (SECTION.sidewalk_outer - 0.5), s, 0.0, direction, duration)
                    s += rng.uniform(25, 60)


def _near_only(roads: RoadNetwork, p: int, x: float, y: float) -> bool:
    """A point beside road p is not on any other road or sidewalk (keeps junction boxes clear)."""
    for q, path in enumerate(roads.paths):
        if q != p and path.project(np.array([[x, y]]))[2][0] < SECTION.sidewalk_outer + 0.5:
            return False
    return True


def _boxes_overlap(xy_a, yaw_a, size_a, xy_b, yaw_b, size_b) -> np.ndarray:
    """(T, 2) centres, (T,) yaws, (2,) sizes -> (T,) bool: do the rectangles overlap (2D SAT)?"""
    delta = xy_b - xy_a
    axes = []
    for yaw in (yaw_a, yaw_b):
        axes += [np.stack([np.cos(yaw), np.sin(yaw)], 1), np.stack([-np.sin(yaw), np.cos(yaw)], 1)]
    sep = np.zeros(xy_a.shape[0], dtype=bool)
    for ax in axes:
        dist = np.abs((delta * ax).sum(1))
        ra = _radius_on(ax, yaw_a, size_a)
        rb = _radius_on(ax, yaw_b, size_b)
        sep |= dist >= ra + rb
    return ~sep


def _radius_on(axis, yaw, size):
    u = np.stack([np.cos(yaw), np.sin(yaw)], 1)
    v = np.stack([-np.sin(yaw), np.cos(yaw)], 1)
    return size[0] / 2 * np.abs((axis * u).sum(1)) + size[1] / 2 * np.abs((axis * v).sum(1))
