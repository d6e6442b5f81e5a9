"""The sparse transformer: only the voxels of B' predicted (or given) occupied become queries.

1. select the occupied voxels (probability > threshold, or the given GT set offboard), at most
   ``max_queries`` per sample: above the cap the highest-priority voxels are kept (priority = binary
   logit online; nearness to the ego vehicle when the set is given) and the rest are counted as dropped;
2. gather their features from B' (+ a learned position embedding);
3. transformer layers: 3D deformable attention from each query into the dense volume B' (the
   sparse stand-in for deformable self-attention), spatial cross-attention into the images, MLP;
4. hand back the refined features with their voxel indices; the semantic head scatters them next to
   B' (see ``heads.SemanticHead.fuse``; ``SparseOutput.dense_features`` is the literal scatter).

Samples with different numbers of queries are padded to the largest count (at least 1 so that every
parameter stays in the graph, which DDP needs); padded queries never reach the images or the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from b2s_core.grids import VoxelGrid
from b2s_core.models.dense_transformer import TransformerLayer
from b2s_core.models.spatial_cross_attention import CameraViews
from b2s_core.models.volume import AxisEmbedding3D, reference_points


@dataclass
class SparseQueries:
    index: Tensor  # (B, Q) long flat voxel index into B' (C order)
    valid: Tensor  # (B, Q) bool, False for padding
    dropped: Tensor  # (B,) long occupied voxels left out by the cap


@dataclass
class SparseOutput:
    features: Tensor  # (B, Q, C) refined query features (padding slots hold garbage: use valid)
    index: Tensor  # (B, Q) long flat voxel index into B'
    valid: Tensor  # (B, Q) bool
    query_mask: Tensor  # (B, X, Y, Z) bool, the voxels that were queries
    dropped: Tensor  # (B,) long occupied voxels left out by the cap

    def dense_features(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Scatter into a zero volume (B, C, X, Y, Z) shaped like B' (the paper's "scatter back")."""
        B, C = shape[:2]
        Q = self.index.shape[1]
        flat = self.features.new_zeros(B, C, self.query_mask[0].numel())
        # topk gives distinct indices, so padded slots (zeroed) never overwrite a real query
        flat.scatter_(2, self.index[:, None, :].expand(B, C, Q), (self.features * self.valid[..., None]).transpose(1, 2))
        return flat.reshape(shape)


def select_queries(occupied: Tensor, priority: Tensor, max_queries: int) -> SparseQueries:
    """occupied (B, V) bool, priority (B, V) float -> the occupied voxels, at most max_queries per
    sample, highest priority first."""
    B, V = occupied.shape
    counts = occupied.sum(1)  # (B,)
    Q = max(min(int(counts.max()) if B else 0, max_queries), 1)
    score = torch.where(occupied, priority.float(), torch.full_like(priority, float("-inf"), dtype=torch.float32))
    top = torch.topk(score, Q, dim=1, sorted=True)
    valid = torch.isfinite(top.values)
    return SparseQueries(index=top.indices, valid=valid, dropped=counts - valid.sum(1))


class SparseTransformer(nn.Module):
    def __init__(self, *, layers: list[TransformerLayer], grid: VoxelGrid, dim: int, max_queries: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.shape = grid.shape
        self.max_queries = max_queries
        self.pos = AxisEmbedding3D(grid.shape, dim)
        centers, fractions = reference_points(grid)
        self.register_buffer("ref_ego", centers, persistent=False)  # (V, 3)
        self.register_buffer("ref_fractions", fractions, persistent=False)  # (V, 3)
        # Offboard priority: nearer voxels (horizontal distance) first.
        self.register_buffer("nearness", -centers[:, :2].norm(dim=-1), persistent=False)  # (V,)

    def forward(self, volume: Tensor, occupied: Tensor, views: CameraViews, priority: Tensor | None = None) -> SparseOutput:
        """volume B' (B, C, X, Y, Z), occupied (B, X, Y, Z) bool, priority (B, X, Y, Z) or None (nearness)."""
        B, C, X, Y, Z = volume.shape
        V = X * Y * Z
        flat_priority = self.nearness[None].expand(B, V) if priority is None else priority.reshape(B, V).detach()
        queries = select_queries(occupied.reshape(B, V), flat_priority, self.max_queries)
        index, valid = queries.index, queries.valid  # (B, Q)
        Q = index.shape[1]
        feats = torch.gather(volume.flatten(2).transpose(1, 2), 1, index[..., None].expand(B, Q, C))  # (B, Q, C)
        pos = self.pos.at(index)  # (B, Q, C)
        ref_fractions, ref_ego = self.ref_fractions[index], self.ref_ego[index]  # (B, Q, 3)
        for layer in self.layers:
            feats = layer(feats, pos, ref_fractions, ref_ego, volume, views, query_valid=valid)
        query_mask = torch.zeros(B, V, dtype=torch.bool, device=volume.device).scatter(1, index, valid)
        return SparseOutput(features=feats, index=index, valid=valid, query_mask=query_mask.reshape(B, X, Y, Z),
                            dropped=queries.dropped)
