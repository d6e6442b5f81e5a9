"""BEVFormer-style spatial cross-attention from 3D queries into multi-view image features.

Each query owns one 3D reference point in the ego frame (its voxel centre). The point is projected
into every camera; only the cameras it actually hits (in front of the camera, inside the real image)
are attended. Queries are re-batched per camera (only the hits, padded to the largest hit count), so
the cost follows the number of hits rather than queries x cameras. A query's result is the mean over
the cameras it hits; a query that hits none gets zeros (the residual keeps it unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from b2s_core.models.deformable import (
    _init_direction_offsets,
    init_attention_projections,
    ms_deform_attn,
    ms_deform_attn_gather,
    needs_grad,
)

_MIN_DEPTH = 0.1  # metres in front of the camera for a projection to count


@dataclass
class CameraViews:
    """Encoded images and the geometry needed to look into them.

    feats:        list over levels of (B, N, C, H_l, W_l), computed from the padded image
    img_from_cam: (B, N, 3, 3) pixel ~ img_from_cam @ x_cam (OpenCV camera frame), augmentation folded in
    ego_from_cam: (B, N, 4, 4) BEV augmentation folded in
    image_hw:     (H, W) of the real (unpadded) network input
    padded_hw:    (Hp, Wp) the size the features were computed from
    """

    feats: list[Tensor]
    img_from_cam: Tensor
    ego_from_cam: Tensor
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]


def project_to_images(points_ego: Tensor, views: CameraViews) -> tuple[Tensor, Tensor]:
    """points (B, Q, 3) ego metres -> (fractions (B, N, Q, 2) of the padded image as (x, y), hit (B, N, Q) bool).

    Always float32 (autocast off): in half precision a pixel coordinate near 800 is off by 0.5 px."""
    with torch.autocast(device_type=points_ego.device.type, enabled=False):
        return _project(points_ego.float(), views)


def _project(points_ego: Tensor, views: CameraViews) -> tuple[Tensor, Tensor]:
    cam_from_ego = torch.linalg.inv(views.ego_from_cam)  # (B, N, 4, 4)
    rotation, translation = cam_from_ego[..., :3, :3], cam_from_ego[..., :3, 3]
    x_cam = torch.einsum("bnij,bqj->bnqi", rotation, points_ego) + translation[:, :, None, :]  # (B, N, Q, 3)
    pixels_h = torch.einsum("bnij,bnqj->bnqi", views.img_from_cam, x_cam)  # (B, N, Q, 3) homogeneous
    depth = pixels_h[..., 2]
    pixels = pixels_h[..., :2] / depth.clamp(min=_MIN_DEPTH)[..., None]  # (B, N, Q, 2) OpenCV (u, v)
    H, W = views.image_hw
    Hp, Wp = views.padded_hw
    # OpenCV puts pixel centres at integers; +0.5 turns (u, v) into the distance from the image edge.
    edge = pixels + 0.5
    hit = (depth > _MIN_DEPTH) & (edge[..., 0] >= 0) & (edge[..., 0] < W) & (edge[..., 1] >= 0) & (edge[..., 1] < H)
    fractions = edge / pixels.new_tensor([Wp, Hp])
    return fractions, hit


class SpatialCrossAttention(nn.Module):
    """Multi-scale deformable attention from 3D reference points into the cameras they project into."""

    def __init__(self, *, dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        _init_direction_offsets(self.sampling_offsets, num_heads, num_levels, num_points, 2)
        init_attention_projections(self)

    def forward(self, query: Tensor, points_ego: Tensor, views: CameraViews, query_valid: Tensor | None = None) -> Tensor:
        """query (B, Q, C), points_ego (B, Q, 3), optional query_valid (B, Q) bool -> (B, Q, C)."""
        B, Q, C = query.shape
        N = views.img_from_cam.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        fractions, hit = project_to_images(points_ego, views)  # (B, N, Q, 2), (B, N, Q)
        if query_valid is not None:
            hit = hit & query_valid[:, None, :]

        # Re-batch: per (sample, camera) the indices of the queries that hit it, first, padded to S.
        counts = hit.sum(-1)  # (B, N)
        S = max(int(counts.max()) if counts.numel() else 0, 1)
        order = torch.sort((~hit).to(torch.uint8), dim=-1, stable=True).indices[..., :S]  # (B, N, S)
        slot_used = torch.arange(S, device=query.device) < counts[..., None]  # (B, N, S)
        gathered = torch.gather(query[:, None].expand(B, N, Q, C), 2, order[..., None].expand(B, N, S, C))  # (B, N, S, C)
        reference = torch.gather(fractions, 2, order[..., None].expand(B, N, S, 2))  # (B, N, S, 2)

        use_gather = not needs_grad(query, self.value_proj.weight, *views.feats)
        values = []
        level_sizes = []
        for feat in views.feats:  # (B, N, C, H_l, W_l)
            H_l, W_l = feat.shape[-2:]
            value = self.value_proj(feat.flatten(3).transpose(2, 3)).reshape(B * N, H_l, W_l, M, C // M)
            # the gather kernel reads channels-last; grid_sample wants (B*N, M, Ch, H_l, W_l)
            values.append(value if use_gather else value.permute(0, 3, 4, 1, 2))
            level_sizes.append((W_l, H_l))
        gathered = gathered.reshape(B * N, S, C)
        offsets = self.sampling_offsets(gathered).reshape(B * N, S, M, L, P, 2)  # feature cells of each level
        offsets = offsets / query.new_tensor(level_sizes)[None, None, None, :, None, :]
        locations = reference.reshape(B * N, S, 1, 1, 1, 2) + offsets.float()  # (B*N, S, M, L, P, 2), float32
        weights = self.attention_weights(gathered).reshape(B * N, S, M, L * P).softmax(-1).reshape(B * N, S, M, L, P)
        sampled = (ms_deform_attn_gather if use_gather else ms_deform_attn)(values, locations, weights)  # (B*N, S, C)
        sampled = sampled.reshape(B, N, S, C) * slot_used[..., None]

        # Mean over the cameras each query hits (scatter the per-camera results back to their queries).
        flat_index = (torch.arange(B, device=query.device)[:, None, None] * Q + order).reshape(-1)  # (B*N*S,)
        summed = sampled.new_zeros(B * Q, C).index_add_(0, flat_index, sampled.reshape(-1, C))
        hits_per_query = hit.sum(1).reshape(B * Q, 1).clamp(min=1)
        return self.output_proj((summed / hits_per_query).reshape(B, Q, C))
