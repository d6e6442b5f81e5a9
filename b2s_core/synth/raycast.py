"""Analytic ray casting against the world's shapes and the ground plane.

Every sensor in the synthetic world is a bundle of rays from one origin laid out on a 2D grid
(camera pixels, LiDAR ring x azimuth). The fast path groups the rays into tiles, bounds each tile
by a cone and each shape by a sphere, and tests exactly (slab test for boxes, quadratics for
cylinders and spheres) only the ray-shape pairs whose cones overlap, all as flat numpy arrays.
:func:`cast_rays_reference` is the straightforward per-ray loop it must agree with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from b2s_core.synth.primitives import BOX, CYLINDER, SPHERE, Primitives

GROUND = -1  # RayHits.primitive value for a ground hit
NOTHING = -2  # ... and for a ray that hit nothing within range
_EPS = 1e-9
_PAIR_CHUNK = 1 << 20  # ray-shape pairs tested at once (bounds temporary memory to ~100 MB)


@dataclass
class RayHits:
    """First hits of a ray bundle; every array has the bundle's grid shape ``S`` (e.g. (H, W))."""

    distance: np.ndarray  # S float64, metres along the unit ray; inf where nothing was hit
    primitive: np.ndarray  # S int32, index of the shape hit, GROUND or NOTHING
    normal: np.ndarray  # S + (3,) float64, unit surface normal at the hit (zeros for nothing)
    points: np.ndarray  # S + (3,) float64, hit points (nan for nothing)

    @property
    def hit(self) -> np.ndarray:
        return np.isfinite(self.distance)


# -- exact ray-shape intersections (one ray per row) -------------------------------------------
def _to_local(prims: Primitives, index: np.ndarray, origin: np.ndarray, dirs: np.ndarray):
    """Origins (M, 3) and directions (M, 3) in each shape's own frame (centre at 0, yaw 0)."""
    c, s = np.cos(prims.yaw[index]), np.sin(prims.yaw[index])
    rel = origin - prims.center[index]  # (M, 3)
    o = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], axis=1)
    d = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], axis=1)
    return o, d


def _box_distance(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Slab test. (M, 3) local origins / directions / half sizes -> (M,) entry distance or inf."""
    d = np.where(np.abs(d) < _EPS, _EPS, d)
    inv = 1.0 / d
    t1 = (-half - o) * inv
    t2 = (half - o) * inv
    t_near = np.minimum(t1, t2).max(axis=1)
    t_far = np.maximum(t1, t2).min(axis=1)
    return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)


def _cylinder_distance(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Vertical capped cylinder (radius half[:, 0], half height half[:, 2]) -> (M,) distance or inf."""
    r, hz = half[:, 0], half[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a, _EPS)
    z_side = o[:, 2] + t_side * d[:, 2]
    side_ok = (disc >= 0) & (a > _EPS) & (t_side > 0) & (np.abs(z_side) <= hz)
    t = np.where(side_ok, t_side, np.inf)
    dz = np.where(np.abs(d[:, 2]) < _EPS, _EPS, d[:, 2])
    for cap in (hz, -hz):
        t_cap = (cap - o[:, 2]) / dz
        px = o[:, 0] + t_cap * d[:, 0]
        py = o[:, 1] + t_cap * d[:, 1]
        cap_ok = (t_cap > 0) & (px * px + py * py <= r * r)
        t = np.where(cap_ok & (t_cap < t), t_cap, t)
    return t


def _sphere_distance(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    r = half[:, 0]
    b = (o * d).sum(axis=1)
    c = (o * o).sum(axis=1) - r**2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def intersect(prims: Primitives, index: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance along each unit ray ``dirs[m]`` from ``origin`` to shape ``index[m]`` (inf on a miss).

    ``origin`` is (3,) or (M, 3); ``dirs`` (M, 3); returns (M,) float64.
    """
    o, d = _to_local(prims, index, origin, dirs)
    return _distances(prims.kind[index], o, d, prims.half[index])


_KERNELS = ((BOX, "_box_distance"), (CYLINDER, "_cylinder_distance"), (SPHERE, "_sphere_distance"))


def _distances(kind: np.ndarray, o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """(M,) kinds, (M, 3) local origins / directions / half sizes -> (M,) distances (inf on a miss)."""
    t = np.full(kind.shape[0], np.inf)
    if kind.size and np.all(kind[:-1] <= kind[1:]):
        # sorted by kind (the fast caster sorts its pairs): contiguous slices, no boolean gathers
        bounds = np.searchsorted(kind, [BOX, CYLINDER, SPHERE, SPHERE + 1])
        for (_kind, name), lo, hi in zip(_KERNELS, bounds[:-1], bounds[1:]):
            if hi > lo:
                t[lo:hi] = globals()[name](o[lo:hi], d[lo:hi], half[lo:hi])
        return t
    for k, name in _KERNELS:
        sel = kind == k
        if sel.any():
            t[sel] = globals()[name](o[sel], d[sel], half[sel])
    return t


class _SharedOrigin:
    """Per-shape quantities of a bundle whose rays share one origin, computed once per bundle."""

    def __init__(self, prims: Primitives, origin: np.ndarray):
        self.prims = prims
        self.cos, self.sin = np.cos(prims.yaw), np.sin(prims.yaw)
        rel = origin - prims.center  # (P, 3)
        # the origin in every shape's own frame: the same for all of that shape's rays
        self.origin_local = np.stack(
            [self.cos * rel[:, 0] + self.sin * rel[:, 1], -self.sin * rel[:, 0] + self.cos * rel[:, 1], rel[:, 2]], axis=1
        )

    def distances(self, index: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """(M,) shape indices and (M, 3) ray directions -> (M,) distances; same as :func:`intersect`."""
        c, s = self.cos[index], self.sin[index]
        d = np.empty_like(dirs)
        d[:, 0] = c * dirs[:, 0] + s * dirs[:, 1]
        d[:, 1] = c * dirs[:, 1] - s * dirs[:, 0]
        d[:, 2] = dirs[:, 2]
        return _distances(self.prims.kind[index], self.origin_local[index], d, self.prims.half[index])


def surface_normal(prims: Primitives, index: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M,) shape indices and (M, 3) points on their surfaces -> (M, 3) outward unit normals."""
    c, s = np.cos(prims.yaw[index]), np.sin(prims.yaw[index])
    rel = points - prims.center[index]
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], axis=1)
    half = prims.half[index]
    kind = prims.kind[index]
    n = np.zeros_like(local)
    box = kind == BOX
    if box.any():
        ratio = np.abs(local[box]) / half[box]
        axis = ratio.argmax(axis=1)
        nb = np.zeros((int(box.sum()), 3))
        nb[np.arange(axis.shape[0]), axis] = np.sign(local[box][np.arange(axis.shape[0]), axis])
        n[box] = nb
    cyl = kind == CYLINDER
    if cyl.any():
        lc, hc = local[cyl], half[cyl]
        radial = np.hypot(lc[:, 0], lc[:, 1]) / hc[:, 0]
        on_cap = np.abs(lc[:, 2]) / hc[:, 2] > radial
        nc = np.stack([lc[:, 0], lc[:, 1], np.zeros(lc.shape[0])], axis=1)
        nc[on_cap] = np.stack([np.zeros(on_cap.sum()), np.zeros(on_cap.sum()), np.sign(lc[on_cap, 2])], axis=1)
        n[cyl] = nc
    sph = kind == SPHERE
    n[sph] = local[sph]
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), _EPS)
    # back to the world frame (inverse yaw of the local transform)
    return np.stack([c * n[:, 0] - s * n[:, 1], s * n[:, 0] + c * n[:, 1], n[:, 2]], axis=1)


# -- the fast bundle caster ---------------------------------------------------------------------
def _ground_distance(origin: np.ndarray, dirs: np.ndarray, ground_z: float | None) -> np.ndarray:
    if ground_z is None:
        return np.full(dirs.shape[0], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ground_z - origin[2]) / dirs[:, 2]
    return np.where((dirs[:, 2] < -_EPS) & (t > 0), t, np.inf)


def _tiles(shape: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
    """(T, th * tw) flat ray indices of each tile of a (H, W) grid; -1 pads the ragged edge."""
    H, W = shape
    th, tw = min(tile[0], H), min(tile[1], W)
    Hp, Wp = -(-H // th) * th, -(-W // tw) * tw
    flat = np.full((Hp, Wp), -1, dtype=np.int64 if H * W >= 2**31 else np.int32)
    flat[:H, :W] = np.arange(H * W).reshape(H, W)
    return flat.reshape(Hp // th, th, Wp // tw, tw).transpose(0, 2, 1, 3).reshape(-1, th * tw)


class RayBundle:
    """Unit ray directions on a 2D grid in a sensor's own frame, with their tile cones precomputed.

    A sensor's rays never change in its own frame, so one bundle serves every frame: casting only
    rotates the tile axes. dirs (H, W, 3); tiles (T, K) flat ray indices (-1 = padding); axis (T, 3)
    unit cone axes; angle (T,) cone half-angles; bundle_axis / bundle_angle bound all rays.
    """

    def __init__(self, dirs: np.ndarray, tile: tuple[int, int] = (16, 16)):
        self.dirs = np.ascontiguousarray(dirs, dtype=np.float64)
        self.shape = dirs.shape[:2]
        flat = self.dirs.reshape(-1, 3)
        self.tiles = _tiles(self.shape, tile)
        self.valid = self.tiles >= 0
        tile_dirs = np.where(self.valid[..., None], flat[np.maximum(self.tiles, 0)], 0.0)  # (T, K, 3)
        axis = tile_dirs.sum(axis=1)
        self.axis = axis / np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), _EPS)
        cos_in = np.where(self.valid, (tile_dirs * self.axis[:, None, :]).sum(axis=2), 1.0)
        self.angle = np.arccos(np.clip(cos_in.min(axis=1), -1.0, 1.0))  # (T,)
        whole = flat.sum(axis=0)
        norm = np.linalg.norm(whole)
        self.bundle_axis = whole / norm if norm > 1e-6 else np.array([1.0, 0.0, 0.0])
        self.bundle_angle = float(np.arccos(np.clip((flat @ self.bundle_axis).min(), -1.0, 1.0))) if norm > 1e-6 else np.pi


def cast_rays(
    prims: Primitives,
    origin: np.ndarray,
    dirs: np.ndarray,
    *,
    max_range: float,
    ground_z: float | None = 0.0,
    tile: tuple[int, int] = (16, 16),
) -> RayHits:
    """First hit of every ray of a bundle.

    origin (3,) float64, shared by all rays; dirs (H, W, 3) unit directions in the same frame as
    ``prims``; the ground is the plane z = ``ground_z`` (None: no ground). Hits beyond
    ``max_range`` count as nothing. Sensors that cast the same rays every frame use
    :func:`cast_bundle` with a cached :class:`RayBundle` instead.
    """
    return cast_bundle(prims, origin, RayBundle(dirs, tile), np.eye(3), max_range=max_range, ground_z=ground_z)


def cast_bundle(
    prims: Primitives,
    origin: np.ndarray,
    bundle: RayBundle,
    rotation: np.ndarray,
    *,
    max_range: float,
    ground_z: float | None = 0.0,
) -> RayHits:
    """:func:`cast_rays` for ``bundle`` rotated by ``rotation`` (3, 3) (world_from_sensor) to ``origin``."""
    H, W = bundle.shape
    origin = np.asarray(origin, dtype=np.float64)
    flat_dirs = bundle.dirs.reshape(-1, 3) @ rotation.T  # (N, 3) world frame
    best = _ground_distance(origin, flat_dirs, ground_z)
    best[best > max_range] = np.inf

    # 1. keep the shapes that can be within range and inside the whole bundle's cone
    radius = prims.bounding_radius()
    to_center = prims.center - origin  # (P, 3)
    dist = np.linalg.norm(to_center, axis=1)
    u_all = to_center / np.maximum(dist[:, None], _EPS)
    prim_angle_all = np.where(dist > radius, np.arcsin(np.clip(radius / np.maximum(dist, _EPS), 0, 1)), np.pi)
    limit = np.minimum(bundle.bundle_angle + prim_angle_all + 1e-6, np.pi)
    in_view = (limit >= np.pi) | (u_all @ (rotation @ bundle.bundle_axis) >= np.cos(limit))
    near = np.flatnonzero((dist - radius < max_range) & in_view)
    hit_ray, hit_prim, hit_t = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    if near.size:
        # 2. tile cones vs shape cones (and depth: shapes behind every ground hit of a tile are hidden)
        axis = bundle.axis @ rotation.T  # (T, 3)
        prim_angle = prim_angle_all[near]
        limit = bundle.angle[:, None] + prim_angle[None, :] + 1e-6  # (T, P')
        overlap = (limit >= np.pi) | (axis @ u_all[near].T >= np.cos(np.minimum(limit, np.pi)))
        tile_far = np.where(bundle.valid, best[np.maximum(bundle.tiles, 0)], -np.inf).max(axis=1)  # (T,)
        overlap &= (dist[near] - radius[near])[None, :] < tile_far[:, None]
        pair_tile, pair_prim = np.nonzero(overlap)
        pair_prim = near[pair_prim]
        by_kind = np.argsort(prims.kind[pair_prim], kind="stable")  # lets the kernels work on slices
        pair_tile, pair_prim = pair_tile[by_kind], pair_prim[by_kind]
        # 3. per ray: the shape's bounding cone first (3 multiply-adds), then the exact test
        cos_limit = np.where(prim_angle_all >= np.pi / 2, -2.0, np.cos(np.minimum(prim_angle_all, np.pi / 2)))
        shared = _SharedOrigin(prims, origin)
        K = bundle.tiles.shape[1]
        step = max(1, _PAIR_CHUNK // K)
        for start in range(0, pair_tile.size, step):
            rays = bundle.tiles[pair_tile[start : start + step]].ravel()  # (n * K,)
            shapes = np.repeat(pair_prim[start : start + step], K)
            keep = rays >= 0
            rays, shapes = rays[keep], shapes[keep]
            d = flat_dirs[rays]
            inside = np.einsum("ij,ij->i", d, u_all[shapes]) >= cos_limit[shapes]
            rays, shapes, d = rays[inside], shapes[inside], d[inside]
            t = shared.distances(shapes, d)
            ok = t <= max_range
            hit_ray.append(rays[ok])
            hit_prim.append(shapes[ok])
            hit_t.append(t[ok])
    rays, shapes, t = np.concatenate(hit_ray), np.concatenate(hit_prim), np.concatenate(hit_t)
    # 4. nearest hit per ray
    np.minimum.at(best, rays, t)
    primitive = np.full(H * W, NOTHING, dtype=np.int32)
    primitive[np.isfinite(best)] = GROUND
    winner = t == best[rays]
    primitive[rays[winner]] = shapes[winner]
    return _finish(prims, origin, flat_dirs, best, primitive, (H, W))


def shadowed(prims: Primitives, points: np.ndarray, normals: np.ndarray, light: np.ndarray, cell: float = 3.0) -> np.ndarray:
    """(M, 3) surface points and normals, (3,) unit direction to a distant light -> (M,) bool in shadow.

    Rays start at every point (no shared origin), so candidates come from a 2D hash on the plane
    perpendicular to the light: a shape can shade a point only if the point's projection lies
    within the shape's bounding radius of the shape's projection.
    """
    M = points.shape[0]
    out = np.zeros(M, dtype=bool)
    if M == 0 or len(prims) == 0:
        return out
    basis, radius, c2, key, shape_of = _light_hash(prims, light, cell)
    p2 = points @ basis  # (M, 2)
    pc = np.floor(p2 / cell).astype(np.int64)
    pkey = pc[:, 0] * 1_000_003 + pc[:, 1]
    first = np.searchsorted(key, pkey, side="left")
    n = np.searchsorted(key, pkey, side="right") - first
    point_of = np.repeat(np.arange(M), n)
    shape = shape_of[np.repeat(first, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))]
    near = np.linalg.norm(p2[point_of] - c2[shape], axis=1) < radius[shape]
    ahead = (prims.center[shape] - points[point_of]) @ light > -radius[shape]
    point_of, shape = point_of[near & ahead], shape[near & ahead]
    by_kind = np.argsort(prims.kind[shape], kind="stable")  # the kernels then work on slices
    point_of, shape = point_of[by_kind], shape[by_kind]
    origin = points[point_of] + 1e-3 * normals[point_of]  # leave the surface the point lies on
    t = intersect(prims, shape, origin, np.broadcast_to(light, origin.shape))
    out[point_of[np.isfinite(t)]] = True
    return out


_LIGHT_HASH: dict = {}


def _light_hash(prims: Primitives, light: np.ndarray, cell: float):
    """The shapes' discs on the plane perpendicular to the light, hashed into cells (sorted keys).

    Every camera of a frame shares one world snapshot, so the last result is kept.
    """
    key_id = (id(prims), len(prims), tuple(np.round(light, 12)), cell)
    if _LIGHT_HASH.get("key") == key_id:
        return _LIGHT_HASH["value"]
    e1 = np.cross(light, [0.0, 0.0, 1.0] if abs(light[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(light, e1)
    basis = np.stack([e1, e2], axis=1)  # (3, 2)
    radius = prims.bounding_radius()
    c2 = prims.center @ basis  # (P, 2)
    lo = np.floor((c2 - radius[:, None]) / cell).astype(np.int64)
    hi = np.floor((c2 + radius[:, None]) / cell).astype(np.int64)
    # (cell, shape) pairs of every cell each shape's disc touches
    span = hi - lo + 1
    count = span[:, 0] * span[:, 1]
    shape_of = np.repeat(np.arange(len(prims)), count)
    j = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    cx = lo[shape_of, 0] + j % span[shape_of, 0]
    cy = lo[shape_of, 1] + j // span[shape_of, 0]
    key = cx * 1_000_003 + cy
    order = np.argsort(key, kind="stable")
    value = (basis, radius, c2, key[order], shape_of[order])
    _LIGHT_HASH.update(key=key_id, value=value, prims=prims)  # holding prims keeps its id unique
    return value


def _finish(prims, origin, flat_dirs, best, primitive, shape) -> RayHits:
    hit = np.isfinite(best)
    points = np.full(flat_dirs.shape, np.nan)
    points[hit] = origin + best[hit, None] * flat_dirs[hit]
    normal = np.zeros(flat_dirs.shape)
    normal[primitive == GROUND, 2] = 1.0
    on_shape = primitive >= 0
    if on_shape.any():
        normal[on_shape] = surface_normal(prims, primitive[on_shape], points[on_shape])
    return RayHits(best.reshape(shape), primitive.reshape(shape), normal.reshape(shape + (3,)), points.reshape(shape + (3,)))


def cast_rays_reference(
    prims: Primitives, origin: np.ndarray, dirs: np.ndarray, *, max_range: float, ground_z: float | None = 0.0
) -> RayHits:
    """The straightforward version of :func:`cast_rays`: each ray against every shape, no culling."""
    shape = dirs.shape[:-1]
    flat_dirs = dirs.reshape(-1, 3)
    origin = np.asarray(origin, dtype=np.float64)
    best = np.full(flat_dirs.shape[0], np.inf)
    primitive = np.full(flat_dirs.shape[0], NOTHING, dtype=np.int32)
    every = np.arange(len(prims))
    for r in range(flat_dirs.shape[0]):
        d = flat_dirs[r : r + 1]
        t_ground = _ground_distance(origin, d, ground_z)[0]
        if t_ground <= max_range:
            best[r], primitive[r] = t_ground, GROUND
        if len(prims):
            t = intersect(prims, every, origin, np.repeat(d, len(prims), axis=0))
            p = int(np.argmin(t))
            if t[p] <= max_range and t[p] < best[r]:
                best[r], primitive[r] = t[p], p
    return _finish(prims, origin, flat_dirs, best, primitive, tuple(shape))
