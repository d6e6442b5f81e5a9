"""Simulated sensors: a 32-beam spinning LiDAR and pinhole camera rigs (nuScenes and nuPlan).

All sensors cast exact rays against a world snapshot (:mod:`b2s_core.synth.raycast`); the whole
sweep (or image) is taken at one instant, i.e. as if perfectly motion compensated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from b2s_core.synth.geometry import pose_matrix, yaw_rotation
from b2s_core.synth.primitives import Primitives
from b2s_core.synth.raycast import GROUND, NOTHING, RayBundle, RayHits, cast_bundle
from b2s_core.synth.roads import L

FREE_LABEL = 17  # Occ3D free; used for rays that hit nothing (sky)
SKY_LABEL = 255  # label image value for sky pixels

# Surface reflectivity per Occ3D label (0..1), the basis of LiDAR intensity.
REFLECTIVITY = np.array(
    [0.35, 0.6, 0.4, 0.5, 0.45, 0.5, 0.45, 0.3, 0.9, 0.45, 0.5, 0.12, 0.2, 0.25, 0.3, 0.35, 0.25, 0.0]
)


@dataclass(frozen=True)
class LidarSpec:
    """A spinning LiDAR like nuScenes' LIDAR_TOP (Velodyne HDL-32E at 20 Hz)."""

    channel: str = "LIDAR_TOP"
    translation: tuple[float, float, float] = (0.943, 0.0, 1.84)  # in the ego frame, metres
    yaw: float = -np.pi / 2  # sensor x points to the ego's right, y forward (as in nuScenes)
    beams: int = 32
    elevation_deg: tuple[float, float] = (-30.67, 10.67)  # lowest and highest beam
    azimuth_steps: int = 1084  # firings per revolution
    min_range: float = 1.0
    max_range: float = 70.0
    range_noise: float = 0.015  # metres, 1 sigma
    dropout: float = 0.03  # probability that a return is lost

    @property
    def ego_from_sensor(self) -> np.ndarray:
        return pose_matrix(self.translation, yaw_rotation(self.yaw))

    def directions(self) -> np.ndarray:
        """(beams, azimuth_steps, 3) unit ray directions in the sensor frame; row 0 is the lowest beam."""
        elevation = np.radians(np.linspace(*self.elevation_deg, self.beams))
        azimuth = np.linspace(-np.pi, np.pi, self.azimuth_steps, endpoint=False)
        el, az = np.meshgrid(elevation, azimuth, indexing="ij")
        return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


@dataclass
class LidarSweep:
    """One simulated sweep. Point rows are the returned rays, in ring-major order."""

    points: np.ndarray  # (N, 5) float32 sensor frame: x, y, z (with noise), intensity 0..255, ring 0..beams-1
    exact_points: np.ndarray  # (N, 3) float64 sensor frame, noise-free hit points
    labels: np.ndarray  # (N,) uint8 Occ3D label of the surface hit
    instance: np.ndarray  # (N,) int32 track id of the object hit, -1 for scenery and ground


def simulate_lidar(
    prims: Primitives, ground_label, global_from_ego: np.ndarray, spec: LidarSpec, rng: np.random.Generator
) -> LidarSweep:
    """One sweep at a world snapshot. ``ground_label(xy (N, 2)) -> (labels, markings)`` in the global frame."""
    global_from_sensor = global_from_ego @ spec.ego_from_sensor
    rotation, origin = global_from_sensor[:3, :3], global_from_sensor[:3, 3]
    bundle = _lidar_bundle(spec)
    dirs_sensor = bundle.dirs  # (B, A, 3)
    hits = cast_bundle(prims, origin, bundle, rotation, max_range=spec.max_range)
    keep = hits.hit & (hits.distance >= spec.min_range) & (rng.random(hits.distance.shape) >= spec.dropout)
    ring = np.broadcast_to(np.arange(spec.beams)[:, None], keep.shape)[keep]
    distance = hits.distance[keep]
    dirs = dirs_sensor[keep]
    labels, instance = surface_labels(prims, ground_label, hits)
    labels, instance = labels[keep], instance[keep]
    normal_sensor = hits.normal[keep] @ rotation
    incidence = np.abs((normal_sensor * dirs).sum(axis=1))
    intensity = 255.0 * REFLECTIVITY[np.minimum(labels, 17)] * (0.3 + 0.7 * incidence) * np.exp(-distance / 120.0)
    intensity = np.clip(intensity * rng.uniform(0.85, 1.15, distance.shape), 0, 255).round()
    noisy = distance + rng.normal(0.0, spec.range_noise, distance.shape)
    points = np.concatenate([dirs * noisy[:, None], intensity[:, None], ring[:, None]], axis=1).astype(np.float32)
    return LidarSweep(points=points, exact_points=dirs * distance[:, None], labels=labels, instance=instance)


@functools.lru_cache(maxsize=8)
def _lidar_bundle(spec: LidarSpec) -> RayBundle:
    return RayBundle(spec.directions(), tile=(4, 16))


def surface_labels(prims: Primitives, ground_label, hits: RayHits, with_marking: bool = False):
    """Occ3D label (SKY_LABEL where nothing was hit) and instance id (-1) of each ray's hit
    (and, with ``with_marking``, whether a ground hit is on a lane marking)."""
    shape = hits.distance.shape
    labels = np.full(shape, SKY_LABEL, dtype=np.uint8)
    instance = np.full(shape, -1, dtype=np.int32)
    on_shape = hits.primitive >= 0
    labels[on_shape] = prims.label[hits.primitive[on_shape]]
    instance[on_shape] = prims.instance[hits.primitive[on_shape]]
    on_ground = hits.primitive == GROUND
    marking = np.zeros(shape, dtype=bool)
    if on_ground.any():
        labels[on_ground], marking[on_ground] = ground_label(hits.points[on_ground][:, :2])
    return (labels, instance, marking) if with_marking else (labels, instance)


# -- cameras ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera on the ego vehicle, looking horizontally along ``yaw`` (ego frame)."""

    name: str
    translation: tuple[float, float, float]  # ego frame, metres
    yaw_deg: float  # 0 = forward, +90 = left
    horizontal_fov_deg: float
    full_size: tuple[int, int]  # (width, height) of the dataset's real images

    def intrinsic(self, size: tuple[int, int]) -> np.ndarray:
        """(3, 3) pixel intrinsics for an image of ``size`` = (W, H); principal point at the centre."""
        W, H = size
        focal = (W / 2) / np.tan(np.radians(self.horizontal_fov_deg) / 2)
        return np.array([[focal, 0.0, W / 2], [0.0, focal, H / 2], [0.0, 0.0, 1.0]])

    @property
    def ego_from_cam(self) -> np.ndarray:
        """(4, 4): OpenCV camera (x right, y down, z forward) -> ego (x forward, y left, z up)."""
        yaw = np.radians(self.yaw_deg)
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return pose_matrix(self.translation, np.stack([right, down, forward], axis=1))

    def size_for(self, image_size: tuple[int, int] | None) -> tuple[int, int]:
        """The rendered size: ``image_size`` scaled to this camera's aspect ratio, or the full size."""
        if image_size is None:
            return self.full_size
        W = int(image_size[0])
        return W, int(round(W * self.full_size[1] / self.full_size[0]))


# nuScenes rig: positions and yaws close to the real calibration, 1600x900 images.
NUSCENES_CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 64.6, (1600, 900)),
    CameraSpec("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 64.0, (1600, 900)),
    CameraSpec("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 64.0, (1600, 900)),
    CameraSpec("CAM_BACK", (0.03, 0.00, 1.57), 180.0, 109.0, (1600, 900)),
    CameraSpec("CAM_BACK_LEFT", (1.04, 0.48, 1.56), 110.0, 64.0, (1600, 900)),
    CameraSpec("CAM_BACK_RIGHT", (1.05, -0.48, 1.56), -110.0, 64.0, (1600, 900)),
)
# nuPlan rig: eight cameras, 1920x1080.
NUPLAN_CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec("CAM_F0", (1.65, 0.0, 1.55), 0.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_L0", (1.55, 0.45, 1.55), 50.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_R0", (1.55, -0.45, 1.55), -50.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_L1", (1.00, 0.50, 1.55), 100.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_R1", (1.00, -0.50, 1.55), -100.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_L2", (0.10, 0.45, 1.55), 145.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_R2", (0.10, -0.45, 1.55), -145.0, 65.0, (1920, 1080)),
    CameraSpec("CAM_B0", (-0.10, 0.0, 1.55), 180.0, 65.0, (1920, 1080)),
)


def camera_rays(camera: CameraSpec, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) unit directions through the pixel centres, camera frame."""
    W, H = size
    K = camera.intrinsic(size)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=32)
def _camera_bundle(camera: CameraSpec, size: tuple[int, int]) -> RayBundle:
    return RayBundle(camera_rays(camera, size), tile=(8, 8))


@dataclass
class CameraView:
    """A rendered camera: colour image, class-id image and per-pixel ray depth."""

    camera: CameraSpec
    size: tuple[int, int]  # (W, H)
    intrinsic: np.ndarray  # (3, 3)
    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 Occ3D label of the visible surface, SKY_LABEL for sky
    distance: np.ndarray  # (H, W) float32 metres along the pixel ray, inf for sky
    extras: dict = field(default_factory=dict)


def render_camera(
    prims: Primitives, world, global_from_ego: np.ndarray, camera: CameraSpec, size: tuple[int, int], max_range: float = 160.0
) -> CameraView:
    """Ray-trace one camera at a world snapshot and shade it (see :mod:`b2s_core.synth.shading`)."""
    from b2s_core.synth.shading import shade  # here: shading imports SKY_LABEL from this module (a cycle)

    global_from_cam = global_from_ego @ camera.ego_from_cam
    bundle = _camera_bundle(camera, tuple(size))
    dirs = bundle.dirs @ global_from_cam[:3, :3].T  # (H, W, 3)
    hits = cast_bundle(prims, global_from_cam[:3, 3], bundle, global_from_cam[:3, :3], max_range=max_range)
    labels, _, marking = surface_labels(prims, world.ground, hits, with_marking=True)
    rgb = shade(hits, labels, marking, prims, world, dirs)
    return CameraView(camera, size, camera.intrinsic(size), rgb, labels, hits.distance.astype(np.float32))


__all__ = [
    "LidarSpec", "LidarSweep", "simulate_lidar", "CameraSpec", "NUSCENES_CAMERAS", "NUPLAN_CAMERAS", "camera_rays",
    "CameraView", "render_camera", "surface_labels", "NOTHING", "GROUND", "L", "FREE_LABEL", "SKY_LABEL",
]
