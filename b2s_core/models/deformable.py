"""Deformable attention in pure PyTorch: multi-scale 2D (into image features) and 3D (into a volume).

Sampling is bilinear / trilinear with zeros outside (``grid_sample``'s ``align_corners=False``), so a
location is a fraction of the map: 0 is the outer edge of the first cell, 1 the outer edge of the
last, and cell i's centre lies at (i + 0.5) / size.

Two fast kernels per kind, chosen by the modules:
- ``grid_sample`` then multiply by the attention weights and sum (``ms_deform_attn``,
  ``deform_attn_3d``): used whenever gradients are needed;
- ``*_gather``: the 2^D corner indices and (interpolation x attention) weights of every sample go to
  one ``F.embedding_bag(mode="sum", per_sample_weights=...)``, which gathers and sums without
  materialising the samples. About 3x faster forward on CPU, but its backward sorts all indices and is
  slower than grid_sample's, so it serves inference (no gradient needed) only.
Both are checked against a slow per-query loop reference (``*_reference``) with its own interpolation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# -- kernels -------------------------------------------------------------------------------------
def _wide(t: Tensor) -> Tensor:
    """Half / bfloat16 -> float32 (sampling precision under autocast); float32 / float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def ms_deform_attn(values: list[Tensor], locations: Tensor, weights: Tensor) -> Tensor:
    """Multi-scale 2D deformable attention sampling.

    values:    list over L levels of (B, M, Ch, H_l, W_l)   (M heads, Ch channels per head)
    locations: (B, Q, M, L, P, 2) fractions (x = column, y = row) of each level's map
    weights:   (B, Q, M, L, P) attention weights (normalised by the caller)
    returns    (B, Q, M * Ch)
    """
    B, Q, M, L, P, _ = locations.shape
    # Sampling runs in float32 whatever autocast chose: a bfloat16 location is off by up to ~1 cell.
    grids = 2.0 * _wide(locations) - 1.0  # grid_sample's [-1, 1]
    out = None
    for level, value in enumerate(values):
        _, _, Ch, H, W = value.shape
        grid = grids[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(B * M, Q, P, 2)  # (B*M, Q, P, 2)
        level_value = _wide(value.reshape(B * M, Ch, H, W))
        sampled = F.grid_sample(level_value, grid.to(level_value.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (B*M, Ch, Q, P)
        w = _wide(weights[:, :, :, level].permute(0, 2, 1, 3).reshape(B * M, 1, Q, P))
        term = (sampled * w).sum(-1)  # (B*M, Ch, Q)
        out = term if out is None else out + term
    out = out.reshape(B, M, -1, Q).permute(0, 3, 1, 2).reshape(B, Q, -1)  # (B, Q, M*Ch)
    return out.to(values[0].dtype)


def deform_attn_3d(value: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
    """3D deformable attention sampling into a volume indexed [x, y, z].

    value:     (B, M, Ch, X, Y, Z)
    locations: (B, Q, M, P, 3) fractions (x, y, z) of the volume
    weights:   (B, Q, M, P)
    returns    (B, Q, M * Ch)
    """
    B, M, Ch, X, Y, Z = value.shape
    Q, P = locations.shape[1], locations.shape[3]
    # grid_sample on (N, C, D, H, W) reads grid[..., 0] along W, [1] along H, [2] along D; our
    # volume is laid out (D, H, W) = (X, Y, Z), so the coordinates go in (z, y, x) order.
    grid = (2.0 * _wide(locations) - 1.0).flip(-1).to(_wide(value).dtype)  # at least float32, as in ms_deform_attn
    grid = grid.permute(0, 2, 1, 3, 4).reshape(B * M, Q, P, 1, 3)  # (B*M, Q, P, 1, 3)
    sampled = F.grid_sample(_wide(value.reshape(B * M, Ch, X, Y, Z)), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*M, Ch, Q, P, 1)
    w = _wide(weights.permute(0, 2, 1, 3).reshape(B * M, 1, Q, P, 1))
    out = (sampled * w).sum((-1, -2))  # (B*M, Ch, Q)
    return out.reshape(B, M, Ch, Q).permute(0, 3, 1, 2).reshape(B, Q, M * Ch).to(value.dtype)


def _corners(locations: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Interpolation corners: locations (..., D) fractions, axes in the order of ``sizes`` ->
    flat C-order cell index (..., 2^D) long (clamped into the map) and weight (..., 2^D), 0 outside."""
    D = len(sizes)
    coords = locations * locations.new_tensor(sizes) - 0.5  # cell centres at integers
    low = torch.floor(coords)
    frac = coords - low
    low = low.long()
    flats, weights = [], []
    for corner in range(2 ** D):
        flat, weight, inside = None, None, None
        for axis, size in enumerate(sizes):
            upper = (corner >> (D - 1 - axis)) & 1
            index = low[..., axis] + upper
            w = frac[..., axis] if upper else 1.0 - frac[..., axis]
            ok = (index >= 0) & (index < size)
            index = index.clamp(0, size - 1)
            flat = index if flat is None else flat * size + index
            weight = w if weight is None else weight * w
            inside = ok if inside is None else inside & ok
        flats.append(flat)
        weights.append(weight * inside)
    return torch.stack(flats, -1), torch.stack(weights, -1)


def _weighted_gather(table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """sum_j weights[b, j] * table[rows[b, j]]: table (R, Ch), rows / weights (bags, J) -> (bags, Ch), >= float32."""
    table = _wide(table)
    return F.embedding_bag(rows, table, per_sample_weights=weights.to(table.dtype), mode="sum")


def ms_deform_attn_gather(values: list[Tensor], locations: Tensor, weights: Tensor) -> Tensor:
    """Inference kernel with the contract of :func:`ms_deform_attn`, but channels-last values:
    list over levels of (B, H_l, W_l, M, Ch)."""
    B, Q, M, L, P, _ = locations.shape
    batch = torch.arange(B, device=locations.device).view(B, 1, 1, 1, 1)
    head = torch.arange(M, device=locations.device).view(1, 1, M, 1, 1)
    out = None
    for level, value in enumerate(values):
        _, H, W, _, Ch = value.shape
        flat, corner_w = _corners(_wide(locations[:, :, :, level]).flip(-1), (H, W))  # (B, Q, M, P, 4), (row, col)
        rows = (batch * (H * W) + flat) * M + head  # row of value.reshape(-1, Ch)
        w = corner_w * _wide(weights[:, :, :, level, :, None])
        term = _weighted_gather(value.reshape(-1, Ch), rows.reshape(B * Q * M, -1), w.reshape(B * Q * M, -1))
        out = term if out is None else out + term
    return out.reshape(B, Q, -1).to(values[0].dtype)  # bags ordered (b, q, m): (B, Q, M*Ch)


def deform_attn_3d_gather(value: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
    """Inference kernel with the contract of :func:`deform_attn_3d`, but a channels-last value
    (B, X, Y, Z, M, Ch)."""
    B, X, Y, Z, M, Ch = value.shape
    Q = locations.shape[1]
    batch = torch.arange(B, device=locations.device).view(B, 1, 1, 1, 1)
    head = torch.arange(M, device=locations.device).view(1, 1, M, 1, 1)
    flat, corner_w = _corners(_wide(locations), (X, Y, Z))  # (B, Q, M, P, 8)
    rows = (batch * (X * Y * Z) + flat) * M + head
    w = corner_w * _wide(weights)[..., None]
    out = _weighted_gather(value.reshape(-1, Ch), rows.reshape(B * Q * M, -1), w.reshape(B * Q * M, -1))
    return out.reshape(B, Q, M * Ch).to(value.dtype)


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd will record an op on these tensors (then the grid_sample kernels are used)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# -- slow references: one query, one head, one point at a time -----------------------------------
def _interpolate_reference(value: Tensor, fractions: list[float]) -> Tensor:
    """value (Ch, *S) at one location given as fractions per axis -> (Ch,); zeros outside."""
    sizes = value.shape[1:]
    coords = [f * n - 0.5 for f, n in zip(fractions, sizes)]  # continuous index, cell centres at integers
    lows = [math.floor(c) for c in coords]
    out = torch.zeros(value.shape[0], dtype=value.dtype)
    for corner in range(2 ** len(sizes)):
        index, weight = [], 1.0
        for axis, (c, low) in enumerate(zip(coords, lows)):
            upper = (corner >> axis) & 1
            i = low + upper
            weight *= (c - low) if upper else (1.0 - (c - low))
            index.append(i)
        if all(0 <= i < n for i, n in zip(index, sizes)):
            out = out + weight * value[(slice(None), *index)]
    return out


def ms_deform_attn_reference(values: list[Tensor], locations: Tensor, weights: Tensor) -> Tensor:
    """Same contract as :func:`ms_deform_attn`, as explicit loops (tests only)."""
    B, Q, M, L, P, _ = locations.shape
    Ch = values[0].shape[2]
    out = torch.zeros(B, Q, M * Ch, dtype=values[0].dtype)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                acc = torch.zeros(Ch, dtype=values[0].dtype)
                for level in range(L):
                    for p in range(P):
                        x, y = locations[b, q, m, level, p].tolist()
                        # value axes are (H, W) = (row, column): fractions go in (y, x) order
                        acc = acc + weights[b, q, m, level, p] * _interpolate_reference(values[level][b, m], [y, x])
                out[b, q, m * Ch:(m + 1) * Ch] = acc
    return out


def deform_attn_3d_reference(value: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
    """Same contract as :func:`deform_attn_3d`, as explicit loops (tests only)."""
    B, M, Ch = value.shape[:3]
    Q, P = locations.shape[1], locations.shape[3]
    out = torch.zeros(B, Q, M * Ch, dtype=value.dtype)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                acc = torch.zeros(Ch, dtype=value.dtype)
                for p in range(P):
                    acc = acc + weights[b, q, m, p] * _interpolate_reference(value[b, m], locations[b, q, m, p].tolist())
                out[b, q, m * Ch:(m + 1) * Ch] = acc
    return out


# -- modules -------------------------------------------------------------------------------------
def init_attention_projections(module: nn.Module) -> None:
    """Uniform attention over the sampling points at start (zero weights), Xavier value/output projections."""
    nn.init.zeros_(module.attention_weights.weight)
    nn.init.zeros_(module.attention_weights.bias)
    nn.init.xavier_uniform_(module.value_proj.weight)
    nn.init.zeros_(module.value_proj.bias)
    nn.init.xavier_uniform_(module.output_proj.weight)
    nn.init.zeros_(module.output_proj.bias)


def _init_direction_offsets(linear: nn.Linear, num_heads: int, groups: int, num_points: int, dims: int) -> None:
    """Deformable-DETR style start: each head looks in its own direction, point p at distance p + 1."""
    nn.init.zeros_(linear.weight)
    angles = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2) in the first two axes
    if dims == 3:
        # alternate heads tilt up and down so that the height axis is sampled too
        tilt = torch.where(torch.arange(num_heads) % 2 == 0, 0.5, -0.5)[:, None]
        directions = torch.cat([directions, tilt], -1)
    directions = directions / directions.abs().amax(-1, keepdim=True)  # unit step in the largest axis
    scale = torch.arange(1, num_points + 1, dtype=torch.float32)[None, None, :, None]  # (1, 1, P, 1)
    bias = directions[:, None, None, :] * scale  # (M, 1, P, dims)
    with torch.no_grad():
        linear.bias.copy_(bias.expand(num_heads, groups, num_points, dims).reshape(-1))


class DeformableAttention3D(nn.Module):
    """Each query attends to ``num_points`` learned offsets (in voxels) around its reference point in a
    volume. Used as the dense layers' self-attention and as the sparse layers' attention from the
    occupied voxels into the dense volume B'."""

    def __init__(self, *, dim: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_points * 3)
        self.attention_weights = nn.Linear(dim, num_heads * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        _init_direction_offsets(self.sampling_offsets, num_heads, 1, num_points, 3)
        init_attention_projections(self)

    def forward(self, query: Tensor, reference: Tensor, volume: Tensor) -> Tensor:
        """query (B, Q, C), reference (B, Q, 3) fractions of the volume, volume (B, C, X, Y, Z) -> (B, Q, C)."""
        B, C, X, Y, Z = volume.shape
        Q = query.shape[1]
        M, P = self.num_heads, self.num_points
        offsets = self.sampling_offsets(query).reshape(B, Q, M, P, 3)  # voxels
        size = torch.tensor([X, Y, Z], dtype=torch.float32, device=volume.device)
        locations = reference[:, :, None, None, :].float() + offsets.float() / size  # (B, Q, M, P, 3), float32
        weights = self.attention_weights(query).reshape(B, Q, M, P).softmax(-1)
        if needs_grad(volume, query, self.value_proj.weight):
            # Project channel-first, (C, C) @ (B, C, X*Y*Z): the result is already head-major, so the
            # (B, M, Ch, X, Y, Z) view below needs no copy of the whole volume.
            value = torch.matmul(self.value_proj.weight, volume.reshape(B, C, X * Y * Z)) + self.value_proj.bias[:, None]
            sampled = deform_attn_3d(value.reshape(B, M, C // M, X, Y, Z), locations, weights)
        else:
            value = self.value_proj(volume.reshape(B, C, X * Y * Z).transpose(1, 2))  # (B, X*Y*Z, C) channels-last
            sampled = deform_attn_3d_gather(value.reshape(B, X, Y, Z, M, C // M), locations, weights)
        return self.output_proj(sampled)
