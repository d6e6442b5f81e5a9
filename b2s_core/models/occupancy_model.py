"""The full occupancy model, read like the paper's figure 2, and the factory that builds it from a config.

    encode_images -> image_to_3d -> dense_transformer -> upsample_to_binary -> binary_decoder
                  -> sparse_transformer -> semantic_head

Which stages do work depends on the variant (layer counts of the paper, sec. 4.1):

    variant            image_to_3d            dense layers   sparse layers   heads (arrangement)
    sparse-ls          Lift-Splat             0              1               intermediate
    ls                 Lift-Splat             1              0               multi-head | replace-head
    sparse-bevformer   learned queries        2              1               intermediate
    bevformer          learned queries        3              0               multi-head | replace-head

(BEVFormer's image-to-3D *is* its dense layers' spatial cross-attention, filling learned queries.)
In the sparse variants the semantic head reads [B', scattered sparse features]; in the dense
baselines it reads B' directly, beside the binary decoder. Offboard models have no binary decoder:
the occupied set is an input, and their output is free wherever that set says free (the voxels
of an occupied coarse voxel are still the model's to label, free included).

Training strategies and the parameters they train (``b2s_core.train.strategies.select_trainable``
decides, from the parameter groups below; see docs/models.md):
    pretrain (stage 1, every variant): ``binary_path_parameters()``; loss BCE on binary_logits;
        call with ``run_semantic=False``.
    intermediate (proposed) / multi-head fine-tuning: all parameters; loss focal(semantic) + BCE(binary).
    replace-head fine-tuning: ``reset_semantic_head()``, then all but ``binary_head_parameters()``
        (the binary head is replaced); loss focal(semantic) only.
    offboard: all parameters (there is no binary decoder); loss focal(semantic) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from b2s_core.errors import B2SError
from b2s_core.models.config import ModelConfig
from b2s_core.models.dense_transformer import DenseTransformer, TransformerLayer
from b2s_core.models.fpn import FPN, ImageEncoder
from b2s_core.models.heads import BinaryDecoder, SemanticHead, Upsample3D, VolumeBlock
from b2s_core.models.lift_splat import DepthNet, LiftSplat
from b2s_core.models.occupied_set import free_outside
from b2s_core.models.resnet import BackboneWeightsReport, ResNet, load_backbone_weights
from b2s_core.models.sparse_transformer import SparseOutput, SparseTransformer
from b2s_core.models.spatial_cross_attention import CameraViews
from b2s_core.models.volume import LearnedQueries


class ModelInputError(B2SError, ValueError):
    """Inputs whose shapes do not fit the model."""


@dataclass
class ModelOutput:
    """What one forward pass returns. Shapes for batch B, N cameras, K classes.

    binary_logits:       (B, Xb, Yb, Zb) binary-decoder logits at the binary resolution; None offboard.
                         (replace-head: the pre-trained head, which that fine-tuning does not train.)
    semantic_logits:     (B, K, X, Y, Z) at the output resolution; None when run_semantic=False.
                         Offboard: certain free outside the given occupied set.
    depth_logits:        (B, N, D, Hf, Wf) Lift-Splat depth distribution logits; None for BEVFormer.
    query_mask:          (B, Xb, Yb, Zb) bool, the voxels the sparse transformer used as queries.
    num_dropped_queries: (B,) long, occupied voxels left out by max_sparse_queries (0 normally).
    """

    binary_logits: Tensor | None
    semantic_logits: Tensor | None
    depth_logits: Tensor | None = None
    query_mask: Tensor | None = None
    num_dropped_queries: Tensor | None = None


def _lift_splat_from_config(cfg: ModelConfig) -> LiftSplat:
    depth_net = DepthNet(in_dim=cfg.embed_dim, context_dim=cfg.embed_dim, num_bins=cfg.num_depth_bins)
    return LiftSplat(depth_net=depth_net, depth_bins=torch.as_tensor(cfg.depth_bins), compact_grid=cfg.compact_grid)


def _layer_from_config(cfg: ModelConfig) -> TransformerLayer:
    return TransformerLayer(dim=cfg.embed_dim, num_heads=cfg.num_heads, self_points=cfg.self_attn_points,
                            cross_points=cfg.cross_attn_points, num_levels=len(cfg.feature_strides), ffn_dim=cfg.ffn_dim)


class OccupancyModel(nn.Module):
    """Sparse-LS / Sparse-BEVFormer and their dense baselines; built by :func:`build_model`."""

    def __init__(self, *, config: ModelConfig, image_encoder: ImageEncoder, image_to_3d: LiftSplat | LearnedQueries,
                 dense_transformer: DenseTransformer, volume_encoder: nn.Sequential, upsample_to_binary: Upsample3D,
                 binary_decoder: BinaryDecoder | None, sparse_transformer: SparseTransformer | None,
                 semantic_head: SemanticHead) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.image_to_3d = image_to_3d
        self.dense_transformer = dense_transformer
        self.volume_encoder = volume_encoder
        self.upsample_to_binary = upsample_to_binary
        self.binary_decoder = binary_decoder
        self.sparse_transformer = sparse_transformer
        self.semantic_head = semantic_head

    # -- stages (figure 2) -----------------------------------------------------------------------
    def encode_images(self, images: Tensor, img_from_cam: Tensor, ego_from_cam: Tensor) -> CameraViews:
        """images (B, N, 3, H, W) -> multi-scale features (B, N, C, H_l, W_l) with the cameras' geometry."""
        H, W = images.shape[-2:]
        feats = self.image_encoder(images)
        return CameraViews(feats=feats, img_from_cam=img_from_cam.float(), ego_from_cam=ego_from_cam.float(),
                           image_hw=(H, W), padded_hw=ImageEncoder.padded_size((H, W)))

    def image_to_3d_volume(self, views: CameraViews) -> tuple[Tensor, Tensor | None]:
        """-> compact volume B (B, C, Xc, Yc, Zc) before the dense layers, and depth logits (LS) or None."""
        if isinstance(self.image_to_3d, LiftSplat):
            return self.image_to_3d(views)
        return self.image_to_3d(views.img_from_cam.shape[0]), None

    def binary_features(self, compact: Tensor, views: CameraViews) -> Tensor:
        """compact B (B, C, Xc, Yc, Zc) -> dense layers -> conv blocks -> B' (B, C, Xb, Yb, Zb)."""
        compact = self.dense_transformer(compact, views)
        return self.upsample_to_binary(self.volume_encoder(compact))

    def refine_sparse(self, binary_volume: Tensor, occupied: Tensor, priority: Tensor | None,
                      views: CameraViews) -> SparseOutput:
        """B' and the occupied set (B, Xb, Yb, Zb) -> refined features of the occupied voxels."""
        return self.sparse_transformer(binary_volume, occupied, views, priority)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, images: Tensor, img_from_cam: Tensor, ego_from_cam: Tensor, given_occupancy: Tensor | None = None,
                run_semantic: bool = True) -> ModelOutput:
        """images (B, N, 3, H, W) normalised; img_from_cam (B, N, 3, 3); ego_from_cam (B, N, 4, 4);
        given_occupancy (B, Xb, Yb, Zb) bool: the occupied set for the sparse transformer (required
        offboard; optional online, replacing the binary decoder's prediction as the query set)."""
        cfg = self.config
        self._check_inputs(images, img_from_cam, ego_from_cam, given_occupancy, run_semantic)
        views = self.encode_images(images, img_from_cam, ego_from_cam)
        compact, depth_logits = self.image_to_3d_volume(views)
        binary_volume = self.binary_features(compact, views)  # B'
        binary_logits = self.binary_decoder(binary_volume) if self.binary_decoder is not None else None
        if not run_semantic:
            return ModelOutput(binary_logits=binary_logits, semantic_logits=None, depth_logits=depth_logits)

        query_mask = dropped = None
        if self.sparse_transformer is not None:
            if given_occupancy is not None:
                occupied, priority = given_occupancy.to(binary_volume.device, torch.bool), None
            else:
                threshold = math.log(cfg.occupancy_threshold / (1.0 - cfg.occupancy_threshold))  # probability -> logit
                occupied, priority = binary_logits.detach() > threshold, binary_logits
            sparse = self.refine_sparse(binary_volume, occupied, priority, views)
            query_mask, dropped = sparse.query_mask, sparse.dropped
        else:
            sparse = None
        # semantic head on [B', scattered sparse features] (sparse variants) or on B' (dense baselines)
        semantic_logits = self.semantic_head(binary_volume, sparse)
        if cfg.offboard:
            # The occupancy was given: whatever lies outside it is free (docs/models.md, "offboard output").
            semantic_logits = free_outside(semantic_logits, occupied, cfg.free_index)
        return ModelOutput(
            binary_logits=binary_logits,
            semantic_logits=semantic_logits,
            depth_logits=depth_logits,
            query_mask=query_mask,
            num_dropped_queries=dropped,
        )

    def _check_inputs(self, images: Tensor, img_from_cam: Tensor, ego_from_cam: Tensor, given: Tensor | None,
                      run_semantic: bool) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ModelInputError(f"images must be (B, N, 3, H, W), got {tuple(images.shape)}")
        B, N = images.shape[:2]
        if tuple(img_from_cam.shape) != (B, N, 3, 3):
            raise ModelInputError(f"img_from_cam must be ({B}, {N}, 3, 3), got {tuple(img_from_cam.shape)}")
        if tuple(ego_from_cam.shape) != (B, N, 4, 4):
            raise ModelInputError(f"ego_from_cam must be ({B}, {N}, 4, 4), got {tuple(ego_from_cam.shape)}")
        if given is not None:
            if self.sparse_transformer is None:
                raise ModelInputError(f"given_occupancy needs a sparse variant, not '{self.config.variant}'")
            expected = (B, *self.config.binary_shape)
            if tuple(given.shape) != expected:
                raise ModelInputError(f"given_occupancy must be {expected} (the binary grid), got {tuple(given.shape)}")
        if self.config.offboard:
            if not run_semantic:
                raise ModelInputError("an offboard model has no binary decoder: run it with run_semantic=True")
            if given is None:
                raise ModelInputError("an offboard model needs given_occupancy (B, Xb, Yb, Zb)")

    # -- parameter groups for the training strategies --------------------------------------------
    def binary_path_parameters(self) -> list[nn.Parameter]:
        """Everything up to and including the binary decoder (trained in binary pre-training)."""
        modules = [self.image_encoder, self.image_to_3d, self.dense_transformer, self.volume_encoder,
                   self.upsample_to_binary]
        if self.binary_decoder is not None:
            modules.append(self.binary_decoder)
        return [p for m in modules for p in m.parameters()]

    def semantic_parameters(self) -> list[nn.Parameter]:
        """What only the semantic path uses: the sparse transformer and the semantic head."""
        modules = [self.semantic_head] + ([self.sparse_transformer] if self.sparse_transformer is not None else [])
        return [p for m in modules for p in m.parameters()]

    def binary_head_parameters(self) -> list[nn.Parameter]:
        return list(self.binary_decoder.parameters()) if self.binary_decoder is not None else []

    def reset_semantic_head(self) -> None:
        """Re-initialise the semantic head (a new head for Replacing-Head / Multi-Head fine-tuning)."""
        self.semantic_head.reset_parameters()

    def load_backbone_weights(self, path: str | Path) -> BackboneWeightsReport:
        """Load ImageNet (torchvision layout) or detector backbone weights into the image backbone (never downloads)."""
        return load_backbone_weights(self.image_encoder.backbone, path)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def use_channels_last(self) -> OccupancyModel:
        """Store every 2D convolution's weight channels-last (NHWC), in place; returns the model.

        The same numbers (bitwise on the CPUs measured, docs/training.md "Step cost"): a convolution
        follows its weight's layout, so the image encoder and the depth net then run NHWC end to end
        and oneDNN skips the per-call re-layouts of weights and activations, ~5 % of a tiny-preset CPU
        step. The 3D convolutions keep their layout (channels-last applies to 4D tensors only).
        Checkpoints are unaffected: ``state_dict`` keeps the values and ``load_state_dict`` copies
        into whichever layout the model has.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
        return self


def build_model(cfg: ModelConfig) -> OccupancyModel:
    """The one place where a config becomes modules."""
    backbone = ResNet(cfg.backbone_depth)
    neck = FPN(in_channels=backbone.out_channels, out_dim=cfg.embed_dim, out_strides=cfg.feature_strides)
    image_encoder = ImageEncoder(backbone=backbone, neck=neck)
    if cfg.uses_lift_splat:
        image_to_3d: LiftSplat | LearnedQueries = _lift_splat_from_config(cfg)
    else:
        image_to_3d = LearnedQueries(shape=cfg.compact_shape, dim=cfg.embed_dim)
    dense = DenseTransformer(layers=[_layer_from_config(cfg) for _ in range(cfg.dense_layers)], grid=cfg.compact_grid,
                             dim=cfg.embed_dim)
    volume_encoder = nn.Sequential(*[VolumeBlock(cfg.embed_dim) for _ in range(cfg.volume_encoder_blocks)])
    upsample = Upsample3D(cfg.embed_dim, cfg.embed_dim, cfg.binary_from_compact)
    binary_decoder = BinaryDecoder(in_dim=cfg.embed_dim, hidden_dim=cfg.head_dim) if cfg.has_binary_decoder else None
    sparse = None
    if cfg.is_sparse:
        sparse = SparseTransformer(layers=[_layer_from_config(cfg) for _ in range(cfg.sparse_layers)],
                                   grid=cfg.binary_grid, dim=cfg.embed_dim, max_queries=cfg.max_sparse_queries)
    semantic_head = SemanticHead(in_dim=cfg.embed_dim, hidden_dim=cfg.head_dim, num_classes=cfg.num_classes,
                                 scale=cfg.output_from_binary, sparse_dim=cfg.embed_dim if cfg.is_sparse else 0)
    return OccupancyModel(config=cfg, image_encoder=image_encoder, image_to_3d=image_to_3d, dense_transformer=dense,
                          volume_encoder=volume_encoder, upsample_to_binary=upsample, binary_decoder=binary_decoder,
                          sparse_transformer=sparse, semantic_head=semantic_head)
