"""Small rigid-body helpers for the synthetic world (yaw-only poses on a flat world).

Frames follow ``b2s_core.records``: ``a_from_b`` maps points of frame b into frame a. The synthetic
world is flat (ground at global z = 0) and every pose is a yaw about +z plus a translation, like
nuScenes ego poses whose z is 0.
"""

from __future__ import annotations

import hashlib

import numpy as np


def yaw_rotation(yaw: float) -> np.ndarray:
    """(3, 3) rotation about +z by ``yaw`` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_matrix(translation, rotation: np.ndarray) -> np.ndarray:
    """(4, 4) float64 from a (3,) translation and a (3, 3) rotation."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


def yaw_pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    return pose_matrix((x, y, z), yaw_rotation(yaw))


def quaternion_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (4,) unit quaternion (w, x, y, z) with w >= 0."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def matrix_from_quaternion(q) -> np.ndarray:
    """(4,) quaternion (w, x, y, z) -> (3, 3) rotation."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def transform_points(a_from_b: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(4, 4) and (..., 3) points in b -> (..., 3) points in a."""
    return points @ a_from_b[:3, :3].T + a_from_b[:3, 3]


def wrap_angle(angle):
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def token(*parts, nbytes: int = 16) -> str:
    """A deterministic hex token (2 * nbytes characters) from any printable parts."""
    text = "/".join(str(p) for p in parts)
    return hashlib.sha1(text.encode()).hexdigest()[: 2 * nbytes]
