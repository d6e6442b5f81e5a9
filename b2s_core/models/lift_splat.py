"""Lift-Splat image-to-3D: per-pixel depth distribution x context, splatted into the compact volume.

Stages (lift-splat-shoot's boundaries): ``get_geometry`` (frustum -> ego points) ->
``get_cam_feats`` (depth distribution and context) -> ``splat`` (sum into voxels). The splat is one
``index_add_`` over all points of all cameras; :func:`splat_reference` is the per-point loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from b2s_core.grids import VoxelGrid
from b2s_core.models.spatial_cross_attention import CameraViews


def splat(features: Tensor, voxel_index: Tensor, num_voxels: int) -> Tensor:
    """Sum point features into voxels: features (P, C), voxel_index (P,) long in [0, num_voxels]
    where num_voxels marks "outside" -> (num_voxels, C)."""
    out = features.new_zeros(num_voxels + 1, features.shape[1])  # last row collects the outside points
    out.index_add_(0, voxel_index, features)
    return out[:num_voxels]


def splat_reference(features: Tensor, voxel_index: Tensor, num_voxels: int) -> Tensor:
    """Same contract as :func:`splat`, one point at a time (tests only)."""
    out = torch.zeros(num_voxels, features.shape[1], dtype=features.dtype)
    for feature, index in zip(features, voxel_index.tolist()):
        if index < num_voxels:
            out[index] += feature
    return out


class DepthNet(nn.Module):
    """Stride-s image features -> depth logits over D bins and a context vector per pixel."""

    def __init__(self, *, in_dim: int, context_dim: int, num_bins: int) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.body = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, padding=1, bias=False), nn.BatchNorm2d(in_dim),
                                  nn.ReLU(inplace=True), nn.Conv2d(in_dim, num_bins + context_dim, 1))

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(B', C, H, W) -> depth logits (B', D, H, W), context (B', C_ctx, H, W)."""
        out = self.body(feats)
        return out[:, : self.num_bins], out[:, self.num_bins:]


class LiftSplat(nn.Module):
    """Images -> compact volume (B, C, Xc, Yc, Zc) and depth logits (B, N, D, Hf, Wf)."""

    def __init__(self, *, depth_net: DepthNet, depth_bins: Tensor, compact_grid: VoxelGrid, level: int = 0) -> None:
        super().__init__()
        self.depth_net = depth_net
        self.level = level  # which FPN level is lifted
        self.register_buffer("depth_bins", depth_bins.float(), persistent=False)  # (D,)
        self.register_buffer("range_min", torch.tensor(compact_grid.range_min, dtype=torch.float32), persistent=False)
        self.register_buffer("voxel_size", torch.tensor(compact_grid.voxel_size, dtype=torch.float32), persistent=False)
        self.grid_shape = compact_grid.shape

    def frustum(self, feature_hw: tuple[int, int], views: CameraViews) -> tuple[Tensor, Tensor]:
        """(D, Hf, Wf, 3) points (u * d, v * d, d) at the feature cells' pixel centres, and (Hf, Wf) bool
        marking the cells whose centre lies inside the real (unpadded) image."""
        Hf, Wf = feature_hw
        Hp, Wp = views.padded_hw
        stride_y, stride_x = Hp / Hf, Wp / Wf
        device = self.depth_bins.device
        u = (torch.arange(Wf, device=device) + 0.5) * stride_x - 0.5  # OpenCV pixel coordinates
        v = (torch.arange(Hf, device=device) + 0.5) * stride_y - 0.5
        d = self.depth_bins
        dd, vv, uu = torch.meshgrid(d, v, u, indexing="ij")  # (D, Hf, Wf)
        points = torch.stack([uu * dd, vv * dd, dd], -1)
        H, W = views.image_hw
        inside = ((v + 0.5) < H)[:, None] & ((u + 0.5) < W)[None, :]
        return points, inside

    def get_geometry(self, feature_hw: tuple[int, int], views: CameraViews) -> tuple[Tensor, Tensor]:
        """-> frustum points in the ego frame (B, N, D, Hf, Wf, 3) and (Hf, Wf) inside-image mask.

        Always float32 (autocast off): a half-precision point at 45 m is off by ~3 cm, enough to move
        it across a voxel boundary."""
        with torch.autocast(device_type=views.img_from_cam.device.type, enabled=False):
            return self._geometry(feature_hw, views)

    def _geometry(self, feature_hw: tuple[int, int], views: CameraViews) -> tuple[Tensor, Tensor]:
        frustum, inside = self.frustum(feature_hw, views)
        cam_from_img = torch.linalg.inv(views.img_from_cam)  # (B, N, 3, 3)
        ego_from_img = views.ego_from_cam[..., :3, :3] @ cam_from_img  # (B, N, 3, 3)
        points = torch.einsum("bnij,dhwj->bndhwi", ego_from_img, frustum)
        return points + views.ego_from_cam[..., None, None, None, :3, 3], inside

    def get_cam_feats(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, C, Hf, Wf) -> depth logits (B, N, D, Hf, Wf), context (B, N, C_ctx, Hf, Wf)."""
        B, N = feats.shape[:2]
        depth_logits, context = self.depth_net(feats.flatten(0, 1))
        return depth_logits.reshape(B, N, *depth_logits.shape[1:]), context.reshape(B, N, *context.shape[1:])

    def voxel_index(self, points: Tensor, inside: Tensor) -> Tensor:
        """(B, N, D, Hf, Wf, 3) ego points -> (B*N*D*Hf*Wf,) flat index into (B, X, Y, Z); B*X*Y*Z = outside."""
        B = points.shape[0]
        X, Y, Z = self.grid_shape
        index = torch.floor((points - self.range_min) / self.voxel_size).long()  # (B, N, D, Hf, Wf, 3)
        i, j, k = index.unbind(-1)
        valid = (i >= 0) & (i < X) & (j >= 0) & (j < Y) & (k >= 0) & (k < Z) & inside
        batch = torch.arange(B, device=points.device).reshape(B, 1, 1, 1, 1)
        flat = ((batch * X + i) * Y + j) * Z + k
        return torch.where(valid, flat, torch.full_like(flat, B * X * Y * Z)).reshape(-1)

    def forward(self, views: CameraViews) -> tuple[Tensor, Tensor]:
        """-> volume (B, C_ctx, X, Y, Z), depth logits (B, N, D, Hf, Wf)."""
        feats = views.feats[self.level]
        B, N, _, Hf, Wf = feats.shape
        X, Y, Z = self.grid_shape
        points, inside = self.get_geometry((Hf, Wf), views)
        depth_logits, context = self.get_cam_feats(feats)
        depth = depth_logits.softmax(2)  # (B, N, D, Hf, Wf)
        # Outer product depth x context per pixel: (B, N, D, Hf, Wf, C) as (P, C); freed after the splat.
        lifted = depth[..., None] * context.permute(0, 1, 3, 4, 2)[:, :, None]
        C = lifted.shape[-1]
        volume = splat(lifted.reshape(-1, C), self.voxel_index(points, inside), B * X * Y * Z)  # (B*X*Y*Z, C)
        return volume.reshape(B, X, Y, Z, C).permute(0, 4, 1, 2, 3).contiguous(), depth_logits


__all__ = ["LiftSplat", "DepthNet", "splat", "splat_reference"]
