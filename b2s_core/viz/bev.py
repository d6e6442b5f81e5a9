"""Bird's-eye view of a voxel layer: the top-most drawn voxel of each column, shaded by height.

Image orientation (the usual driving view): the ego's forward axis (+x) points up, its left (+y)
points left, so image row ``r`` and column ``c`` show grid column ``(X - 1 - r // scale,
Y - 1 - c // scale)``. Colour of a column whose top voxel has label ``l`` at height ``k``:
``shade(taxonomy colour of l, height_shade(k, Z))`` (see :mod:`b2s_core.viz.voxels`), or the
colour of ``l`` unshaded for layers that are not height-shaded (height ramp: ``l`` is the top
voxel's height band; errors: ``l`` is the top voxel's case); empty columns get ``BACKGROUND``.
"""

from __future__ import annotations

import numpy as np

from b2s_core.viz.voxels import BACKGROUND, VoxelLayer, height_shade, shade

EGO_COLOR = (255, 255, 255)
EGO_SIZE_M = (4.6, 1.9)  # length, width of a typical car, only to show where the ego is and where it faces


def top_voxels(occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) bool -> ((X, Y) bool any-occupied, (X, Y) int64 index of the top-most occupied voxel)."""
    Z = occupied.shape[2]
    any_occupied = occupied.any(axis=2)
    # argmax finds the first True; on the z-reversed column that is the highest occupied voxel.
    top = (Z - 1) - np.argmax(occupied[:, :, ::-1], axis=2)
    return any_occupied, top


def bev_image(
    layer: VoxelLayer, *, scale: int = 2, background: tuple[int, int, int] = BACKGROUND, draw_ego: bool = True
) -> np.ndarray:
    """(X, Y, Z) layer -> (X * scale, Y * scale, 3) uint8 RGB bird's-eye view."""
    X, Y, Z = layer.labels.shape
    occupied = layer.occupied
    any_occupied, top = top_voxels(occupied)  # (X, Y), (X, Y)
    top_labels = np.take_along_axis(layer.labels, top[:, :, None], axis=2)[:, :, 0]  # (X, Y)
    colors = layer.taxonomy.color_array()[top_labels]  # (X, Y, 3)
    if layer.height_shaded:
        colors = shade(colors, height_shade(top, Z))
    return columns_image(colors, any_occupied, layer, scale=scale, background=background, draw_ego=draw_ego)


def columns_image(colors: np.ndarray, drawn: np.ndarray, layer: VoxelLayer, *, scale: int = 2,
                  background: tuple[int, int, int] = BACKGROUND, draw_ego: bool = True) -> np.ndarray:
    """(X, Y, 3) uint8 colour per grid column, shown where (X, Y) ``drawn`` -> (X * scale, Y * scale, 3)
    uint8 in the BEV orientation, the ego footprint of ``layer``'s grid outlined."""
    image = np.where(drawn[:, :, None], colors, np.asarray(background, dtype=np.uint8))
    image = image[::-1, ::-1]  # rows: +x up; columns: +y left
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    image = np.ascontiguousarray(image)
    if draw_ego:
        draw_ego_marker(image, layer, scale)
    return image


def bev_image_reference(layer: VoxelLayer, *, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """Slow column-by-column version of ``bev_image(layer, scale=1, draw_ego=False)``, for tests."""
    X, Y, Z = layer.labels.shape
    table = layer.taxonomy.color_array()
    occupied = layer.occupied
    image = np.zeros((X, Y, 3), dtype=np.uint8)
    for i in range(X):
        for j in range(Y):
            color = np.asarray(background, dtype=np.uint8)
            for k in range(Z - 1, -1, -1):
                if occupied[i, j, k]:
                    color = table[layer.labels[i, j, k]]
                    if layer.height_shaded:
                        color = shade(color, height_shade(k, Z))
                    break
            image[X - 1 - i, Y - 1 - j] = color
    return image


def ego_pixel_box(layer: VoxelLayer, scale: int) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) pixel rectangle (end exclusive) of the ego footprint, or None if outside."""
    grid = layer.grid
    X, Y, _ = grid.shape
    length, width = EGO_SIZE_M
    # Grid index (fractional) of the ego footprint's corners, then the flipped image axes.
    i0, i1 = (np.array([-length / 2, length / 2]) - grid.range_min[0]) / grid.voxel_size[0]
    j0, j1 = (np.array([-width / 2, width / 2]) - grid.range_min[1]) / grid.voxel_size[1]
    row0, row1 = int(np.floor((X - i1) * scale)), int(np.ceil((X - i0) * scale))
    col0, col1 = int(np.floor((Y - j1) * scale)), int(np.ceil((Y - j0) * scale))
    row0, col0 = max(row0, 0), max(col0, 0)
    row1, col1 = min(row1, X * scale), min(col1, Y * scale)
    if row0 >= row1 or col0 >= col1:
        return None
    return row0, row1, col0, col1


def draw_ego_marker(image: np.ndarray, layer: VoxelLayer, scale: int) -> None:
    """Outline the ego footprint in place, with a filled front third to show the heading."""
    box = ego_pixel_box(layer, scale)
    if box is None:
        return
    row0, row1, col0, col1 = box
    color = np.asarray(EGO_COLOR, dtype=np.uint8)
    image[row0:row1, col0] = color
    image[row0:row1, col1 - 1] = color
    image[row0, col0:col1] = color
    image[row1 - 1, col0:col1] = color
    image[row0 : row0 + max((row1 - row0) // 3, 1), col0:col1] = color  # the front (+x is up)
