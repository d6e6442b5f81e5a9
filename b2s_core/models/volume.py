"""Voxel-volume helpers shared by the dense and sparse transformers: reference points and embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from b2s_core.grids import VoxelGrid


def reference_points(grid: VoxelGrid) -> tuple[Tensor, Tensor]:
    """-> voxel centres in ego metres (X*Y*Z, 3) and as fractions of the volume (X*Y*Z, 3), C order."""
    centers = torch.as_tensor(grid.centers(), dtype=torch.float32).reshape(-1, 3)
    fractions = (centers - torch.tensor(grid.range_min)) / (torch.tensor(grid.range_max) - torch.tensor(grid.range_min))
    return centers, fractions.float()


class AxisEmbedding3D(nn.Module):
    """A learned embedding per voxel, factorised as x_embed[i] + y_embed[j] + z_embed[k].

    Factorised so that its size grows with X + Y + Z rather than X * Y * Z (a full table for the
    OpenOccupancy 256 x 256 x 40 volume would hold 168 M parameters at C = 64).
    """

    def __init__(self, shape: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        X, Y, Z = shape
        self.shape = shape
        self.x_embed = nn.Parameter(torch.randn(X, dim) * 0.02)
        self.y_embed = nn.Parameter(torch.randn(Y, dim) * 0.02)
        self.z_embed = nn.Parameter(torch.randn(Z, dim) * 0.02)

    def forward(self) -> Tensor:
        """-> (X*Y*Z, C) in C order over (X, Y, Z)."""
        table = self.x_embed[:, None, None] + self.y_embed[None, :, None] + self.z_embed[None, None, :]  # (X, Y, Z, C)
        return table.reshape(-1, table.shape[-1])

    def at(self, flat_index: Tensor) -> Tensor:
        """flat voxel indices (...) -> (..., C), without building the whole table."""
        X, Y, Z = self.shape
        i, rest = flat_index // (Y * Z), flat_index % (Y * Z)
        return self.x_embed[i] + self.y_embed[rest // Z] + self.z_embed[rest % Z]


class LearnedQueries(nn.Module):
    """BEVFormer's image-to-3D starts from learned voxel queries; the dense layers' spatial
    cross-attention then fills them from the images."""

    def __init__(self, *, shape: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        self.embedding = AxisEmbedding3D(shape, dim)
        self.shape = shape

    def forward(self, batch_size: int) -> Tensor:
        """-> (B, C, X, Y, Z)."""
        X, Y, Z = self.shape
        table = self.embedding()  # (X*Y*Z, C)
        return table.t().reshape(1, -1, X, Y, Z).expand(batch_size, -1, -1, -1, -1)
