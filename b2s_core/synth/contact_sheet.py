"""A picture to check a synthetic key frame by eye: the six cameras above a bird's-eye view of the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from b2s_core.synth.dataset import SynthManifest
from b2s_core.taxonomy import OCC3D

# nuScenes cameras laid out as a driver sees them: front row left-to-right, back row mirrored
SHEET_ORDER = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def bev_image(semantics: np.ndarray, free_index: int = 17) -> np.ndarray:
    """(X, Y, Z) labels -> (Y, X, 3) uint8 top view: the colour of the highest occupied voxel per column.

    Rows run from +y (left of the ego) at the top, columns from -x to +x, so forward is to the right.
    """
    X, Y, Z = semantics.shape
    occupied = semantics != free_index
    top = Z - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # (X, Y) highest occupied layer
    label = np.take_along_axis(semantics, top[:, :, None], axis=2)[:, :, 0]
    label = np.where(occupied.any(axis=2), label, free_index)
    rgb = OCC3D.color_array()[label]  # (X, Y, 3)
    shade = (0.55 + 0.45 * top / max(Z - 1, 1))[:, :, None]
    rgb = (rgb * shade).astype(np.uint8)
    rgb[label == free_index] = 255
    return rgb.transpose(1, 0, 2)[::-1]


def contact_sheet(manifest: SynthManifest, scene: str, key_index: int, grid: str = "occ3d") -> np.ndarray:
    """(H, W, 3) uint8: the key frame's six nuScenes images (as written) and the BEV of its truth."""
    frame = manifest.key_frames(scene)[key_index]
    truth = manifest.ground_truth(scene, key_index)
    root = manifest.path("nuscenes")
    log = next(s["log_name"] for s in manifest.data["scenes"] if s["name"] == scene)
    rows = []
    for names in SHEET_ORDER:
        images = [np.asarray(Image.open(root / "samples" / n / f"{log}__{n}__{frame['timestamp']}.jpg").convert("RGB")) for n in names]
        rows.append(np.concatenate(images, axis=1))
    cameras = np.concatenate(rows, axis=0)
    bev = bev_image(truth.semantics[grid])
    scale = max(1, cameras.shape[0] // bev.shape[0])
    bev = np.asarray(Image.fromarray(bev).resize((bev.shape[1] * scale, bev.shape[0] * scale), Image.NEAREST))
    height = max(cameras.shape[0], bev.shape[0])
    sheet = np.full((height, cameras.shape[1] + bev.shape[1] + 8, 3), 255, dtype=np.uint8)
    sheet[: cameras.shape[0], : cameras.shape[1]] = cameras
    sheet[: bev.shape[0], cameras.shape[1] + 8 :] = bev
    return sheet


def save_contact_sheet(manifest: SynthManifest, scene: str, key_index: int, path: str | Path) -> Path:
    path = Path(path)
    Image.fromarray(contact_sheet(manifest, scene, key_index)).save(path)
    return path
