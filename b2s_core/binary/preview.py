"""A bird's-eye picture of one built frame: occupancy by height, LiDAR and camera visibility.

Three panels side by side, x (forward) up and y (left) to the left, like a map seen from above:

1. occupancy: each column coloured by the height of its highest occupied voxel (viridis, low =
   dark blue, high = yellow); black where the column is empty;
2. mask_lidar: the share of the column's voxels the LiDAR observed (black none, white all);
3. mask_camera: the same for the cameras.

The ego vehicle's body is outlined in red on every panel when given.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from b2s_core.binary.aggregate import EgoBody
from b2s_core.grids import VoxelGrid


def _to_image(rgb: np.ndarray) -> Image.Image:
    """(X, Y, 3) float in [0, 1], grid order -> image with +x up and +y left."""
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)[::-1, ::-1])


def bev_panels(occupancy: np.ndarray, mask_lidar: np.ndarray | None, mask_camera: np.ndarray | None, grid: VoxelGrid,
               ego_body: EgoBody | None = None, scale: int = 2) -> Image.Image:
    """(X, Y, Z) bool grids -> one RGB picture of the three panels (see the module docstring)."""
    from matplotlib import colormaps

    X, Y, Z = occupancy.shape
    has = occupancy.any(axis=2)
    top = Z - 1 - np.argmax(occupancy[:, :, ::-1], axis=2)  # (X, Y) highest occupied layer
    colour = colormaps["viridis"](top / max(Z - 1, 1))[..., :3]
    panels = [_to_image(np.where(has[..., None], colour, 0.0))]
    for mask in (mask_lidar, mask_camera):
        share = mask.mean(axis=2) if mask is not None else np.zeros((X, Y))
        panels.append(_to_image(np.repeat(share[..., None], 3, axis=2)))
    gap = 4
    sheet = Image.new("RGB", (len(panels) * (Y + gap) - gap, X), (255, 255, 255))
    for k, panel in enumerate(panels):
        sheet.paste(panel, (k * (Y + gap), 0))
    if ego_body is not None:
        draw = ImageDraw.Draw(sheet)
        lo = grid.index_of(np.array([ego_body.min_xyz]))[0]
        hi = grid.index_of(np.array([ego_body.max_xyz]))[0]
        for k in range(len(panels)):
            # image row = X - 1 - i, column = Y - 1 - j (x up, y left)
            j0_column = k * (Y + gap) + Y - 1  # panel k's column of j = 0
            draw.rectangle([j0_column - hi[1], X - 1 - hi[0], j0_column - lo[1], X - 1 - lo[0]], outline=(255, 0, 0))
    return sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
