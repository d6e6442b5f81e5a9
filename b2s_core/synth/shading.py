"""Image shading: per-class albedo (the Occ3D palette), procedural texture, sun lighting, haze, sky.

The images must let a network learn both geometry and class: the albedo is the class colour (so
classes stay recognisable), texture and lane markings give matching cues, Lambertian sun light
gives surface orientation, shapes cast sun shadows (on the ground and on each other), and haze
grows with distance.
"""

from __future__ import annotations

import numpy as np

from b2s_core.synth.raycast import RayHits, shadowed
from b2s_core.synth.sensors import SKY_LABEL
from b2s_core.synth.world import BUILDING, GLASS, HEDGE, SIGN, TRUNK
from b2s_core.taxonomy import OCC3D

ALBEDO = np.asarray(OCC3D.colors, dtype=np.float64) / 255.0  # (18, 3)
HAZE = np.array([0.80, 0.83, 0.87])
SKY_ZENITH = np.array([0.42, 0.58, 0.82])
SKY_HORIZON = np.array([0.80, 0.85, 0.90])
HAZE_DISTANCE = 220.0  # metres at which 63% of the colour is haze
MARKING = np.array([0.95, 0.95, 0.92])


_LATTICE = np.random.default_rng(1234).random(64**3)  # fixed random values on a 64^3 periodic lattice


def value_noise(p: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N,) smooth pseudo-random values in [0, 1] (trilinear lattice noise, period 64)."""
    base = np.floor(p)
    frac = p - base
    w = frac * frac * (3 - 2 * frac)
    b = base.astype(np.int64) & 63
    b1 = (b + 1) & 63
    out = np.zeros(p.shape[0])
    for ix, wx in ((b[:, 0], 1 - w[:, 0]), (b1[:, 0], w[:, 0])):
        for iy, wy in ((b[:, 1], 1 - w[:, 1]), (b1[:, 1], w[:, 1])):
            row = (ix * 64 + iy) * 64
            wxy = wx * wy
            out += wxy * ((1 - w[:, 2]) * _LATTICE[row + b[:, 2]] + w[:, 2] * _LATTICE[row + b1[:, 2]])
    return out


GROUND_MATERIAL = 45  # material index used for ground hits in the tables below
# Per material: albedo scale and offset (RGB 0..1), texture = a + b * noise at spatial frequency f.
_SCALE = np.ones(46)
_OFFSET = np.zeros((46, 3))
_TEX_A = np.full(46, 0.92)
_TEX_B = np.full(46, 0.16)
_FREQ = np.tile([2.0, 2.0, 2.0], (46, 1))
_SCALE[TRUNK], _OFFSET[TRUNK] = 0.5, 0.5 * np.array([0.45, 0.32, 0.2])  # brown-green trunks
_SCALE[SIGN], _OFFSET[SIGN] = 0.5, 0.5 * np.array([0.9, 0.2, 0.2])  # red sign faces
for _m, _a, _b in ((16, 0.6, 0.6), (HEDGE, 0.54, 0.54)):  # foliage: strong, coarser noise
    _TEX_A[_m], _TEX_B[_m], _FREQ[_m] = _a, _b, 3.0
_TEX_A[GROUND_MATERIAL], _TEX_B[GROUND_MATERIAL], _FREQ[GROUND_MATERIAL] = 0.85, 0.2, (6.0, 6.0, 0.0)  # asphalt grain


def shade(hits: RayHits, labels: np.ndarray, marking: np.ndarray, prims, world, dirs: np.ndarray) -> np.ndarray:
    """(H, W) hits of one camera, labels and lane-marking flags -> (H, W, 3) uint8 image."""
    H, W = labels.shape
    flat_labels = labels.reshape(-1)
    hit = flat_labels != SKY_LABEL
    dirs = dirs.reshape(-1, 3)
    rgb = np.empty((H * W, 3))
    # sky: a vertical gradient
    up = np.clip(dirs[~hit, 2] * 3.0, 0.0, 1.0)[:, None]
    rgb[~hit] = SKY_HORIZON * (1 - up) + SKY_ZENITH * up

    index = np.flatnonzero(hit)
    points = hits.points.reshape(-1, 3)[index]
    normal = hits.normal.reshape(-1, 3)[index]
    lab = flat_labels[index]
    prim = hits.primitive.reshape(-1)[index]
    material = np.where(prim >= 0, prims.material[np.maximum(prim, 0)], GROUND_MATERIAL)

    # albedo from the class colour, adjusted per material; one noise lookup per hit for texture
    color = ALBEDO[lab] * (0.9 * _SCALE[material])[:, None] + _OFFSET[material]
    texture = _TEX_A[material] + _TEX_B[material] * value_noise(points * _FREQ[material])
    color[marking.reshape(-1)[index]] = MARKING
    glass = np.flatnonzero(material == GLASS)
    upper = glass[points[glass, 2] > _glass_line(points[glass], prims, prim[glass])]
    color[upper] = 0.35 * color[upper] + np.array([0.08, 0.1, 0.14])
    building = np.flatnonzero((material == BUILDING) & (np.abs(normal[:, 2]) < 0.5))
    if building.size:
        along = (points[building, 1] * normal[building, 0] - points[building, 0] * normal[building, 1]) / 3.0 % 1.0
        z = points[building, 2]
        floor = z / 3.2 % 1.0
        window = building[(along > 0.3) & (along < 0.75) & (floor > 0.35) & (floor < 0.8) & (z > 1.2)]
        color[window] = 0.4 * color[window] + np.array([0.1, 0.12, 0.16])

    direct = np.clip(normal @ world.sun, 0.0, 1.0)
    lit_side = np.flatnonzero(direct > 0)
    direct[lit_side[shadowed(prims, points[lit_side], normal[lit_side], world.sun)]] = 0.0
    light = texture * (0.42 + 0.58 * direct)
    fog = np.exp(-hits.distance.reshape(-1)[index] / HAZE_DISTANCE)  # share of the surface colour kept
    rgb[index] = color * (light * fog)[:, None] + HAZE * (1.0 - fog)[:, None]
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(H, W, 3)


def _glass_line(points, prims, prim) -> np.ndarray:
    """Height above which a 'glass' shape (vehicle cabin) shows windows: its upper 70%."""
    idx = np.maximum(prim, 0)
    return prims.center[idx, 2] - 0.4 * prims.half[idx, 2]
