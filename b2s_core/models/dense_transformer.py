"""The transformer layer (BEVFormer's encoder layer) and the dense transformer over the compact volume.

One layer: 3D deformable attention into a volume -> add & norm -> spatial cross-attention into the
images -> add & norm -> MLP -> add & norm. The dense transformer runs it with every voxel of the
compact volume as a query and the volume itself as the attended value (deformable self-attention);
the sparse transformer runs the same layer with only the occupied voxels as queries.
"""

from __future__ import annotations

from torch import Tensor, nn

from b2s_core.grids import VoxelGrid
from b2s_core.models.deformable import DeformableAttention3D
from b2s_core.models.spatial_cross_attention import CameraViews, SpatialCrossAttention
from b2s_core.models.volume import AxisEmbedding3D, reference_points


class TransformerLayer(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, self_points: int, cross_points: int, num_levels: int,
                 ffn_dim: int) -> None:
        super().__init__()
        self.volume_attn = DeformableAttention3D(dim=dim, num_heads=num_heads, num_points=self_points)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = SpatialCrossAttention(dim=dim, num_heads=num_heads, num_levels=num_levels, num_points=cross_points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: Tensor, query_pos: Tensor, ref_fractions: Tensor, ref_ego: Tensor, value_volume: Tensor,
                views: CameraViews, query_valid: Tensor | None = None) -> Tensor:
        """query, query_pos (B, Q, C); ref_fractions, ref_ego (B, Q, 3); value_volume (B, C, X, Y, Z) -> (B, Q, C)."""
        query = self.norm1(query + self.volume_attn(query + query_pos, ref_fractions, value_volume))
        query = self.norm2(query + self.cross_attn(query + query_pos, ref_ego, views, query_valid))
        return self.norm3(query + self.ffn(query))


class DenseTransformer(nn.Module):
    """Every voxel of the compact volume is a query: (B, C, X, Y, Z) -> (B, C, X, Y, Z)."""

    def __init__(self, *, layers: list[TransformerLayer], grid: VoxelGrid, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shape = grid.shape
        self.pos = AxisEmbedding3D(grid.shape, dim) if layers else None  # no unused parameters at 0 layers
        centers, fractions = reference_points(grid)
        self.register_buffer("ref_ego", centers, persistent=False)  # (X*Y*Z, 3)
        self.register_buffer("ref_fractions", fractions, persistent=False)  # (X*Y*Z, 3)

    def forward(self, volume: Tensor, views: CameraViews) -> Tensor:
        if not self.layers:
            return volume
        B, C, X, Y, Z = volume.shape
        query = volume.flatten(2).transpose(1, 2)  # (B, X*Y*Z, C)
        pos = self.pos()[None]  # (1, X*Y*Z, C)
        ref_fractions = self.ref_fractions[None].expand(B, -1, -1)
        ref_ego = self.ref_ego[None].expand(B, -1, -1)
        for layer in self.layers:
            value = query.transpose(1, 2).reshape(B, C, X, Y, Z)  # self-attention: the volume attends to itself
            query = layer(query, pos, ref_fractions, ref_ego, value, views)
        return query.transpose(1, 2).reshape(B, C, X, Y, Z)
