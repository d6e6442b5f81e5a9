"""Volume blocks and heads: the conv encoder after image-to-3D, upsampling, binary decoder, semantic head.

Cost notes (CPU profiles of the paper preset): convolutions and re-layouts at the output resolution
(200 x 200 x 16 = 640 k voxels) dominate a 3D head, so
- the 3x3x3 context convolution runs at the binary resolution;
- upsampling is a "each voxel paints its own sx x sy x sz block" linear map (= a transposed
  convolution with stride = kernel) computed as one channels-last matmul in *block layout*
  (B, X, Y, Z, sx, sy, sz, C); BN and the classifier run in that layout and only the K-channel
  logits are re-laid out;
- the sparse path's "concatenate [B', scattered sparse features] then 1x1 reduce" is computed as
  W_dense @ B' + scatter(W_sparse @ sparse features): the same numbers, without building the
  2C-channel volume (``SemanticHead.fuse_reference`` is the literal concatenation, for tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from b2s_core.models.sparse_transformer import SparseOutput


def pointwise(volume: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1x1 convolution as a matmul: (B, C_in, *S) with weight (C_out, C_in) -> (B, C_out, *S)."""
    B, C = volume.shape[:2]
    out = torch.matmul(weight, volume.reshape(B, C, -1))  # (B, C_out, prod(S))
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(B, weight.shape[0], *volume.shape[2:])


class VolumeBlock(nn.Module):
    """Depthwise 3x3x3 convolution + per-voxel MLP, residual (cheap mixing across neighbouring voxels)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, volume: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, C, X, Y, Z)."""
        x = self.depthwise(volume).permute(0, 2, 3, 4, 1)  # (B, X, Y, Z, C)
        # back to channel-first memory: the matmuls downstream would otherwise copy a 4x larger output
        return volume + self.mlp(self.norm(x)).permute(0, 4, 1, 2, 3).contiguous()


class Upsample3D(nn.Module):
    """(B, C_in, X, Y, Z) -> (B, C_out, X * sx, Y * sy, Z * sz): each input voxel paints its own block
    through a learned linear map (a transposed convolution with stride = kernel = scale), then BN + ReLU.

    Computed channels-last: one matmul (B*X*Y*Z, C_in) @ (C_in, s*C_out) gives the block layout
    (B, X, Y, Z, sx, sy, sz, C_out), where per-channel work (BN, a following classifier) needs no
    re-layout; ``unblock`` re-lays out once at the end.
    """

    def __init__(self, in_dim: int, out_dim: int, scale: tuple[int, int, int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        self.out_dim = out_dim
        # rows ordered (sx, sy, sz, C_out); conv_transpose3d's weight is this reshaped and permuted
        self.weight = nn.Parameter(torch.empty(math.prod(self.scale) * out_dim, in_dim))
        self.norm = nn.BatchNorm1d(out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.norm.reset_parameters()

    def conv_transpose_weight(self) -> Tensor:
        """The same map as a ``conv_transpose3d`` weight (C_in, C_out, sx, sy, sz) (reference for tests)."""
        return self.weight.reshape(*self.scale, self.out_dim, -1).permute(4, 3, 0, 1, 2)

    def blocks(self, volume: Tensor) -> Tensor:
        """(B, C_in, X, Y, Z) -> block layout (B, X, Y, Z, sx, sy, sz, C_out), after BN + ReLU."""
        B, C, X, Y, Z = volume.shape
        rows = volume.permute(0, 2, 3, 4, 1).reshape(B * X * Y * Z, C)  # free when the input is channels-last
        out = F.linear(rows, self.weight).reshape(-1, self.out_dim)  # (B*X*Y*Z*s, C_out)
        out = F.relu(self.norm(out), inplace=True)
        return out.reshape(B, X, Y, Z, *self.scale, self.out_dim)

    @staticmethod
    def unblock(blocks: Tensor) -> Tensor:
        """(B, X, Y, Z, sx, sy, sz, C) block layout -> (B, C, X * sx, Y * sy, Z * sz)."""
        B, X, Y, Z, sx, sy, sz, C = blocks.shape
        out = blocks.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, X, sx, Y, sy, Z, sz)
        return out.reshape(B, C, X * sx, Y * sy, Z * sz)

    def forward(self, volume: Tensor) -> Tensor:
        return self.unblock(self.blocks(volume))


class BinaryDecoder(nn.Module):
    """B' (B, C, X, Y, Z) -> occupancy logits (B, X, Y, Z), one per voxel."""

    def __init__(self, *, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(in_dim, hidden_dim, 1, bias=False), nn.BatchNorm3d(hidden_dim),
                                  nn.ReLU(inplace=True), nn.Conv3d(hidden_dim, 1, 1))

    def forward(self, volume: Tensor) -> Tensor:
        return self.body(volume)[:, 0]


class SemanticHead(nn.Module):
    """B' (B, C, Xb, Yb, Zb) [+ sparse transformer output] -> semantic logits (B, K, Xb*sx, Yb*sy, Zb*sz).

    reduce (1x1 on [B', sparse]) -> BN, ReLU -> 3x3x3 context conv -> upsample -> 1x1 classifier.
    """

    def __init__(self, *, in_dim: int, hidden_dim: int, num_classes: int, scale: tuple[int, int, int],
                 sparse_dim: int = 0) -> None:
        super().__init__()
        self.reduce_dense = nn.Parameter(torch.empty(hidden_dim, in_dim))
        self.reduce_sparse = nn.Parameter(torch.empty(hidden_dim, sparse_dim)) if sparse_dim else None
        self.reduce_norm = nn.BatchNorm3d(hidden_dim)
        self.context = nn.Sequential(nn.Conv3d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
                                     nn.BatchNorm3d(hidden_dim), nn.ReLU(inplace=True))
        self.upsample = Upsample3D(hidden_dim, hidden_dim, scale)
        self.classifier = nn.Conv3d(hidden_dim, num_classes, 1)  # applied in block layout via its weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh initial weights (a new head for the Replacing-Head / Multi-Head fine-tuning)."""
        # fan-in of the reduction is the concatenated width, as for one 1x1 conv over [B', sparse]
        fan_in = self.reduce_dense.shape[1] + (self.reduce_sparse.shape[1] if self.reduce_sparse is not None else 0)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.reduce_dense, -bound, bound)
        if self.reduce_sparse is not None:
            nn.init.uniform_(self.reduce_sparse, -bound, bound)
        for module in (self.reduce_norm, *self.context, self.upsample, self.classifier):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def fuse(self, volume: Tensor, sparse: SparseOutput | None) -> Tensor:
        """1x1 reduction of [B', scattered sparse features] -> (B, hidden, X, Y, Z), before BN."""
        fused = pointwise(volume, self.reduce_dense)  # (B, hidden, X, Y, Z)
        if sparse is None:
            return fused
        B, hidden = fused.shape[:2]
        Q = sparse.index.shape[1]
        at_queries = torch.matmul(sparse.features * sparse.valid[..., None], self.reduce_sparse.t())  # (B, Q, hidden)
        flat = fused.reshape(B, hidden, -1).scatter_add(2, sparse.index[:, None, :].expand(B, hidden, Q),
                                                        at_queries.transpose(1, 2))
        return flat.reshape(fused.shape)

    def fuse_reference(self, volume: Tensor, sparse: SparseOutput) -> Tensor:
        """The literal form of :meth:`fuse`: scatter, concatenate, one 1x1 convolution (tests only)."""
        scattered = sparse.dense_features(volume.shape)
        weight = torch.cat([self.reduce_dense, self.reduce_sparse], 1)
        return F.conv3d(torch.cat([volume, scattered], 1), weight[:, :, None, None, None])

    def forward(self, volume: Tensor, sparse: SparseOutput | None = None) -> Tensor:
        x = F.relu(self.reduce_norm(self.fuse(volume, sparse)), inplace=True)
        blocks = self.upsample.blocks(self.context(x))  # (B, X, Y, Z, sx, sy, sz, hidden)
        logits = F.linear(blocks, self.classifier.weight.flatten(1), self.classifier.bias)  # (..., K)
        return self.upsample.unblock(logits)  # (B, K, X*sx, Y*sy, Z*sz)
