"""Unit tests of the model library's parts: config, backbone, kernels against their slow references,
projection, splat, heads, losses. Whole-model tests live in test_models_model.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from b2s_core.errors import B2SError
from b2s_core.grids import VoxelGrid
from b2s_core.models import ModelConfig, ModelConfigError, build_model, model_config
from b2s_core.models.camera_rig import surround_rig
from b2s_core.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from b2s_core.models.deformable import (
    DeformableAttention3D,
    deform_attn_3d,
    deform_attn_3d_gather,
    deform_attn_3d_reference,
    ms_deform_attn,
    ms_deform_attn_gather,
    ms_deform_attn_reference,
)
from b2s_core.models.dense_transformer import DenseTransformer, TransformerLayer
from b2s_core.models.fpn import FPN, ImageEncoder
from b2s_core.models.heads import BinaryDecoder, SemanticHead, Upsample3D, VolumeBlock
from b2s_core.models.lift_splat import DepthNet, LiftSplat, splat, splat_reference
from b2s_core.models.losses import binary_occupancy_loss, depth_loss, focal_loss, soft_focal_loss
from b2s_core.models.resnet import BackboneWeightsError, ResNet, load_backbone_weights
from b2s_core.models.sparse_transformer import SparseOutput, SparseTransformer, select_queries
from b2s_core.models.spatial_cross_attention import CameraViews, SpatialCrossAttention, project_to_images
from b2s_core.models.volume import LearnedQueries

torch.set_num_threads(1)


# -- config ----------------------------------------------------------------------------------------
def test_paper_preset_sizes_follow_the_paper():
    ls = model_config("sparse-ls", "paper")
    assert ls.image_size == (256, 704) and ls.backbone_depth == 50 and ls.embed_dim == 256
    assert (ls.num_heads, ls.self_attn_points, ls.cross_attn_points) == (8, 4, 8)
    assert ls.compact_shape == (50, 50, 16) and ls.binary_shape == (100, 100, 16) and ls.output_shape == (200, 200, 16)
    assert ls.num_depth_bins == 88 and ls.depth_bins[0] == 1.0 and ls.depth_bins[-1] == 44.5
    assert model_config("bevformer", "paper").image_size == (450, 800)
    layers = {v: (model_config(v, "paper").dense_layers, model_config(v, "paper").sparse_layers)
              for v in ("sparse-ls", "ls", "sparse-bevformer", "bevformer")}
    assert layers == {"sparse-ls": (0, 1), "ls": (1, 0), "sparse-bevformer": (2, 1), "bevformer": (3, 0)}
    off = model_config("sparse-ls", "paper", grid="openoccupancy", num_classes=17, free_index=0, offboard=True)
    assert off.compact_shape == off.binary_shape == (256, 256, 40) and off.output_shape == (512, 512, 40)
    assert off.embed_dim == 64 and off.offboard and not off.has_binary_decoder


@pytest.mark.parametrize("preset", ["paper", "small", "tiny"])
@pytest.mark.parametrize("variant", ["sparse-ls", "sparse-bevformer", "ls", "bevformer"])
def test_config_round_trips_through_json(variant, preset):
    cfg = model_config(variant, preset)
    assert cfg.arrangement == ("intermediate" if variant.startswith("sparse") else "multi-head")
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("kwargs, words", [
    (dict(variant="sparse-ls", arrangement="multi-head"), "intermediate"),
    (dict(variant="ls", arrangement="intermediate"), "multi-head"),
    (dict(variant="ls", arrangement="multi-head", offboard=True), "offboard"),
    (dict(variant="sparse-ls", compact_stride=(3, 4, 1)), "compact_stride"),
    (dict(variant="sparse-ls", binary_stride=(8, 8, 1)), "binary_stride"),
    (dict(variant="sparse-ls", embed_dim=30, num_heads=8), "divisible"),
    (dict(variant="bevformer", arrangement="multi-head", dense_layers=0, sparse_layers=0), "dense_layers"),
    # the constructor takes the grid itself; model_config and from_dict read names and specs
    (dict(variant="sparse-ls", grid="occ3d"), "grid must be a VoxelGrid"),
])
def test_bad_configs_fail_with_a_clear_error(kwargs, words):
    with pytest.raises(ModelConfigError, match=words):
        ModelConfig(**kwargs)


def test_model_config_rejects_unknown_names():
    with pytest.raises(ModelConfigError, match="variant"):
        model_config("sparse-lss", "small")
    with pytest.raises(ModelConfigError, match="preset"):
        model_config("ls", "huge")
    with pytest.raises(ModelConfigError, match="model_overrides: unknown model config field 'embed_dims'"):
        model_config("ls", "small", embed_dims=3)
    with pytest.raises(ModelConfigError, match="unknown grid 'nowhere'"):
        model_config("ls", "small", grid="nowhere")
    saved = model_config("ls", "tiny").to_dict()
    with pytest.raises(ModelConfigError, match=r"^run\.pt model_config: unknown model config fields 'colour', 'size'$"):
        ModelConfig.from_dict({**saved, "colour": 1, "size": 2}, where="run.pt model_config")
    with pytest.raises(ModelConfigError, match="model config: no 'variant'"):
        ModelConfig.from_dict({"arrangement": "multi-head"})
    with pytest.raises(ModelConfigError, match="model config: grid: unknown grid 'nowhere'"):
        ModelConfig.from_dict({**saved, "grid": "nowhere"})
    with pytest.raises(ModelConfigError, match="grid must be a preset name"):
        ModelConfig.from_dict({**saved, "grid": 3})
    with pytest.raises(ModelConfigError, match="disagrees with its range"):
        ModelConfig.from_dict({**saved, "grid": {**saved["grid"], "shape": [1, 2, 3]}})


def test_config_survives_a_json_round_trip():
    cfg = model_config("sparse-bevformer", "tiny", grid="-6.4,-6.4,-1,6.4,6.4,2.2:0.4")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_stores_its_grid_once_and_saves_it_as_plain_values(tmp_path):
    grid = VoxelGrid((-6.4, -6.4, -1.0), (6.4, 6.4, 2.2), (0.4, 0.4, 0.4), "small")
    cfg = model_config("sparse-ls", "tiny", grid=grid)
    assert cfg.grid is grid and cfg.output_grid is grid and cfg.binary_grid.shape == (16, 16, 8)
    assert model_config("sparse-ls", "tiny", grid="-6.4,-6.4,-1,6.4,6.4,2.2:0.4").grid.same_geometry(grid)
    assert cfg.to_dict()["grid"] == {"name": "small", "range_min": [-6.4, -6.4, -1.0], "range_max": [6.4, 6.4, 2.2],
                                     "voxel_size": [0.4, 0.4, 0.4], "shape": [32, 32, 8]}
    assert len({cfg, model_config("sparse-ls", "tiny", grid=grid), cfg.replace(embed_dim=64)}) == 2  # hashable
    torch.save({"model_config": cfg.to_dict()}, tmp_path / "c.pt")  # a checkpoint's plain values
    assert ModelConfig.from_dict(torch.load(tmp_path / "c.pt", weights_only=True)["model_config"]) == cfg


@pytest.mark.parametrize("spec", ["occ3d", "openoccupancy", "-6.4,-6.4,-1,6.4,6.4,2.2:0.4"])
def test_checkpoints_that_hold_the_grid_as_a_name_or_spec_still_load(spec):
    cfg = model_config("sparse-ls", "paper", grid=spec)
    old_style = {**cfg.to_dict(), "grid": spec}  # what ModelConfig.to_dict wrote before it stored the grid whole
    assert ModelConfig.from_dict(old_style) == cfg


def test_the_paper_sizes_for_openoccupancy_follow_its_geometry_not_its_name():
    renamed = VoxelGrid((-51.2, -51.2, -3.2), (51.2, 51.2, 4.8), (0.2, 0.2, 0.2), "from-a-file")
    assert model_config("sparse-ls", "paper", grid=renamed).compact_shape == (256, 256, 40)


def test_load_checkpoint_reads_old_grids_and_refuses_unknown_fields_by_name(tmp_path):
    spec = "-3.2,-3.2,-1,3.2,3.2,2.2:0.4"  # 16 x 16 x 8
    cfg = model_config("sparse-ls", "tiny", grid=spec, image_size=(32, 64))
    weights = build_model(cfg).state_dict()
    old = save_checkpoint(tmp_path / "old.pt", {"model_variant": cfg.variant, "model": weights,
                                                "model_config": {**cfg.to_dict(), "grid": spec}})
    assert load_checkpoint(old).model_config == cfg
    odd = save_checkpoint(tmp_path / "odd.pt", {"model_variant": cfg.variant, "model": weights,
                                                "model_config": {**cfg.to_dict(), "colour": "red"}})
    with pytest.raises(CheckpointError, match=r"odd\.pt: .*model_config: unknown model config field 'colour'"):
        load_checkpoint(odd)


# -- backbone --------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, params", [(18, 11_176_512), (50, 23_508_032)])
def test_resnet_matches_torchvision_sizes_and_names(depth, params):
    # torchvision's resnet18 / resnet50 hold 11,689,512 / 25,557,032 parameters including the
    # 1000-way classifier (fc: 513,000 / 2,049,000), which a backbone leaves out.
    net = ResNet(depth)
    assert sum(p.numel() for p in net.parameters()) == params
    keys = set(net.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.num_batches_tracked",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var"} <= keys
    assert ("layer3.5.conv3.weight" in keys) == (depth == 50)
    feats = net(torch.randn(1, 3, 64, 96))
    assert {s: tuple(f.shape[-2:]) for s, f in feats.items()} == {4: (16, 24), 8: (8, 12), 16: (4, 6), 32: (2, 3)}
    assert feats[32].shape[1] == net.out_channels[32]


def test_backbone_weights_load_and_mismatches_are_named(tmp_path):
    source = ResNet(18)
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    target = ResNet(18)
    report = load_backbone_weights(target, path)
    assert report.skipped == ["fc.bias", "fc.weight"] and report.prefix == "" and report.filled == []
    assert torch.equal(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight)

    broken = dict(state)
    broken.pop("layer1.0.bn1.running_var")
    broken["layer9.0.conv1.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(BackboneWeightsError, match=r"r18\.pth.*1 missing .*layer1\.0\.bn1\.running_var.*1 unexpected"):
        load_backbone_weights(ResNet(18), path)
    with pytest.raises(BackboneWeightsError, match="ResNet-50.*another shape"):
        torch.save(state, path)
        load_backbone_weights(ResNet(50), path)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="junk.pth: not a readable"):
        load_backbone_weights(ResNet(18), tmp_path / "junk.pth")
    with pytest.raises(B2SError, match="not found"):
        load_backbone_weights(ResNet(18), tmp_path / "absent.pth")


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["B2S_TEST_MARKER"]),))


def test_backbone_weights_naming_other_globals_are_refused_in_one_line(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("B2S_TEST_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCodeWhenUnpickled()}, path)
    refusal = r"evil\.pth: not a readable torch checkpoint \(refused: it names the Python global 'getattr'"
    with pytest.raises(BackboneWeightsError, match=refusal) as err:
        load_backbone_weights(ResNet(18), path)
    assert "\n" not in str(err.value) and not marker.exists()


def test_backbone_weights_from_detector_checkpoints_and_old_torchvision_files(tmp_path):
    """The layouts users start from, built as their code saves them:
    - mmcv's ``save_checkpoint`` (mmcv/runner/checkpoint.py) writes {'meta', 'state_dict', 'optimizer'};
      mmdetection3d detectors (BEVDet, mmdet3d/models/detectors/bevdet.py) name the image backbone
      ``img_backbone`` and its neck ``img_neck``; mmdetection's single-stage detectors name it ``backbone``;
    - torchvision's original ImageNet files (resnet18-5c106cde.pth, 2017) predate ``num_batches_tracked``."""
    source = ResNet(18)
    backbone = source.state_dict()
    others = {"img_neck.lateral_convs.0.conv.weight": torch.zeros(256, 256, 1, 1),
              "pts_bbox_head.cls.weight": torch.zeros(10, 256)}
    for prefix in ("img_backbone.", "backbone."):
        state = {**{prefix + k: v for k, v in backbone.items()}, **others}
        torch.save({"meta": {"epoch": 24}, "state_dict": state, "optimizer": {}}, tmp_path / "det.pth")
        target = ResNet(18)
        report = load_backbone_weights(target, tmp_path / "det.pth")
        assert report.prefix == prefix and report.skipped == sorted(others) and report.loaded == len(backbone)
        assert torch.equal(target.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    old = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    torch.save({**old, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, tmp_path / "old.pth")
    report = load_backbone_weights(ResNet(18), tmp_path / "old.pth")
    assert len(report.filled) == sum(k.endswith("num_batches_tracked") for k in backbone) > 0
    # a detector whose backbone has extra layers (e.g. deformable convolutions) is named, not half-loaded
    dcn = {**{f"img_backbone.{k}": v for k, v in backbone.items()}, "img_backbone.layer4.0.conv2.conv_offset.weight": torch.zeros(1)}
    torch.save({"state_dict": dcn}, tmp_path / "dcn.pth")
    with pytest.raises(BackboneWeightsError, match="1 unexpected .*img_backbone.layer4.0.conv2.conv_offset.weight"):
        load_backbone_weights(ResNet(18), tmp_path / "dcn.pth")


def test_image_encoder_pads_to_a_multiple_of_32_and_returns_every_level():
    backbone = ResNet(18)
    neck = FPN(in_channels=backbone.out_channels, out_dim=16, out_strides=(8, 32, 16))
    encoder = ImageEncoder(backbone=backbone, neck=neck)
    levels = encoder(torch.randn(2, 3, 3, 70, 100))  # padded to 96 x 128
    assert [tuple(f.shape) for f in levels] == [(2, 3, 16, 12, 16), (2, 3, 16, 6, 8), (2, 3, 16, 3, 4)]


# -- deformable attention kernels against per-query loops ------------------------------------------
def test_multiscale_deformable_attention_equals_the_loop_reference():
    g = torch.Generator().manual_seed(0)
    B, Q, M, Ch, P = 2, 5, 2, 3, 3
    shapes = [(6, 7), (3, 4)]
    values = [torch.randn(B, M, Ch, H, W, generator=g, dtype=torch.float64, requires_grad=True) for H, W in shapes]
    locations = torch.rand(B, Q, M, len(shapes), P, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside
    weights = torch.rand(B, Q, M, len(shapes), P, generator=g, dtype=torch.float64, requires_grad=True)
    fast = ms_deform_attn(values, locations, weights)
    slow = ms_deform_attn_reference(values, locations, weights)
    assert fast.shape == (B, Q, M * Ch)
    torch.testing.assert_close(fast, slow)
    channels_last = [v.detach().permute(0, 3, 4, 1, 2).contiguous() for v in values]  # (B, H, W, M, Ch)
    torch.testing.assert_close(ms_deform_attn_gather(channels_last, locations, weights.detach()), slow.detach())
    grad = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, [*values, weights], grad)
    slow_grads = torch.autograd.grad(slow, [*values, weights], grad)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b)


def test_3d_deformable_attention_equals_the_loop_reference():
    g = torch.Generator().manual_seed(1)
    B, Q, M, Ch, P = 2, 4, 2, 3, 3
    value = torch.randn(B, M, Ch, 5, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    locations = torch.rand(B, Q, M, P, 3, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, P, generator=g, dtype=torch.float64, requires_grad=True)
    fast = deform_attn_3d(value, locations, weights)
    slow = deform_attn_3d_reference(value, locations, weights)
    assert fast.shape == (B, Q, M * Ch)
    torch.testing.assert_close(fast, slow)
    channels_last = value.detach().permute(0, 3, 4, 5, 1, 2).contiguous()  # (B, X, Y, Z, M, Ch)
    torch.testing.assert_close(deform_attn_3d_gather(channels_last, locations, weights.detach()), slow.detach())
    grad = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, [value, weights], grad), torch.autograd.grad(slow, [value, weights], grad)):
        torch.testing.assert_close(a, b)


def test_3d_attention_at_a_voxel_centre_reads_that_voxel():
    attn = DeformableAttention3D(dim=4, num_heads=2, num_points=3)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()  # every point exactly at the reference
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    volume = torch.randn(1, 4, 5, 4, 3)
    reference = torch.tensor([[[(2 + 0.5) / 5, (1 + 0.5) / 4, (0 + 0.5) / 3]]])  # voxel (2, 1, 0)
    out = attn(torch.randn(1, 1, 4), reference, volume)  # training kernel (parameters need gradients)
    torch.testing.assert_close(out[0, 0], volume[0, :, 2, 1, 0])
    with torch.no_grad():  # inference kernel
        torch.testing.assert_close(attn(torch.randn(1, 1, 4), reference, volume)[0, 0], volume[0, :, 2, 1, 0])


def test_3d_attention_module_gives_the_same_result_with_and_without_gradients():
    torch.manual_seed(0)
    attn = DeformableAttention3D(dim=8, num_heads=2, num_points=3)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    query, reference, volume = torch.randn(2, 9, 8), torch.rand(2, 9, 3), torch.randn(2, 8, 5, 4, 3)
    training = attn(query, reference, volume)
    with torch.no_grad():
        torch.testing.assert_close(attn(query, reference, volume), training.detach(), atol=1e-5, rtol=1e-4)


# -- projection and spatial cross-attention ---------------------------------------------------------
def _views(batch: int, cams: int, hw=(64, 96), dim=8, levels=((4, 6), (2, 3)), seed=0) -> CameraViews:
    g = torch.Generator().manual_seed(seed)
    img_from_cam, ego_from_cam = surround_rig(batch, cams, hw)
    feats = [torch.randn(batch, cams, dim, h, w, generator=g) for h, w in levels]
    return CameraViews(feats=feats, img_from_cam=img_from_cam, ego_from_cam=ego_from_cam, image_hw=hw,
                       padded_hw=(levels[0][0] * 16, levels[0][1] * 16))


def test_projection_hits_the_camera_in_front_only():
    views = _views(1, 4, hw=(64, 96))
    points = torch.tensor([[[10.0, 0.0, 1.5], [-10.0, 0.0, 1.5], [0.0, 0.0, 30.0]]])  # ahead, behind, overhead
    fractions, hit = project_to_images(points, views)
    assert hit[0, :, 0].tolist() == [True, False, False, False]
    assert hit[0, :, 1].tolist() == [False, False, True, False]  # camera 2 looks backwards
    assert not hit[0, :, 2].any()
    torch.testing.assert_close(fractions[0, 0, 0], torch.tensor([48.0 / 96, 32.0 / 64]))  # image centre


def test_spatial_cross_attention_equals_masked_dense_reference():
    torch.manual_seed(0)
    views = _views(2, 3, dim=8)
    sca = SpatialCrossAttention(dim=8, num_heads=2, num_levels=2, num_points=2)
    with torch.no_grad():
        for p in sca.parameters():
            p.normal_(0, 0.3)
    Q = 7
    query = torch.randn(2, Q, 8)
    points = torch.randn(2, Q, 3) * torch.tensor([8.0, 8.0, 1.0]) + torch.tensor([0.0, 0.0, 1.0])
    points[0, 0] = torch.tensor([0.0, 0.0, 40.0])  # overhead: hits no camera
    valid = torch.ones(2, Q, dtype=torch.bool)
    valid[1, 3] = False
    out = sca(query, points, views, valid)

    # reference: every query x every camera, no re-batching; then the mean over valid hits
    fractions, hit = project_to_images(points, views)
    hit = hit & valid[:, None]
    B, N = 2, 3
    values = [sca.value_proj(f.flatten(3).transpose(2, 3)).reshape(B * N, *f.shape[-2:], 2, 4).permute(0, 3, 4, 1, 2)
              for f in views.feats]
    q = query[:, None].expand(B, N, Q, 8).reshape(B * N, Q, 8)
    sizes = torch.tensor([[f.shape[-1], f.shape[-2]] for f in views.feats], dtype=torch.float32)
    offsets = sca.sampling_offsets(q).reshape(B * N, Q, 2, 2, 2, 2) / sizes[None, None, None, :, None, :]
    locations = fractions.reshape(B * N, Q, 1, 1, 1, 2) + offsets
    weights = sca.attention_weights(q).reshape(B * N, Q, 2, 4).softmax(-1).reshape(B * N, Q, 2, 2, 2)
    sampled = ms_deform_attn_reference([v.detach() for v in values], locations.detach(), weights.detach())
    sampled = sampled.reshape(B, N, Q, 8)
    mean = (sampled * hit[..., None]).sum(1) / hit.sum(1).clamp(min=1)[..., None]
    torch.testing.assert_close(out, sca.output_proj(mean), atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the inference (gather) kernel
        torch.testing.assert_close(sca(query, points, views, valid), sca.output_proj(mean), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[0, 0], sca.output_proj.bias)  # no hit: only the projection bias
    torch.testing.assert_close(out[1, 3], sca.output_proj.bias)  # invalid query: ignored


# -- Lift-Splat ------------------------------------------------------------------------------------
def test_splat_equals_the_per_point_reference():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(300, 5, generator=g, requires_grad=True)
    index = torch.randint(0, 41, (300,), generator=g)  # 40 = outside
    fast = splat(feats, index, 40)
    torch.testing.assert_close(fast, splat_reference(feats.detach(), index, 40))
    fast.sum().backward()
    assert torch.equal(feats.grad[:, 0], (index < 40).float())


def _lift_splat(grid: VoxelGrid, dim=4, bins=(2.0, 4.0, 6.0, 8.0)) -> LiftSplat:
    return LiftSplat(depth_net=DepthNet(in_dim=dim, context_dim=dim, num_bins=len(bins)),
                     depth_bins=torch.tensor(bins), compact_grid=grid)


def test_frustum_points_land_where_the_camera_looks():
    grid = VoxelGrid((-10, -10, -2), (10, 10, 4), (1, 1, 1))
    ls = _lift_splat(grid)
    views = _views(1, 2, hw=(64, 96), levels=((4, 6),))
    points, inside = ls.get_geometry((4, 6), views)  # (1, 2, D, 4, 6, 3)
    assert points.shape == (1, 2, 4, 4, 6, 3) and inside.all()
    # the cell grid is symmetric about the principal point, so the mean ray is the optical axis
    centre = points[0, :, :, :, :, :].mean((2, 3))  # (N, D, 3)
    torch.testing.assert_close(centre[0], torch.tensor([[d, 0.0, 1.5] for d in (2.0, 4.0, 6.0, 8.0)]), atol=1e-4, rtol=0)
    torch.testing.assert_close(centre[1], torch.tensor([[-d, 0.0, 1.5] for d in (2.0, 4.0, 6.0, 8.0)]), atol=1e-4, rtol=0)


def test_lift_splat_conserves_context_inside_the_grid():
    grid = VoxelGrid((-20, -20, -10), (20, 20, 10), (2, 2, 2))  # holds every frustum point
    ls = _lift_splat(grid).eval()
    views = _views(2, 3, dim=4, levels=((4, 6),))
    volume, depth_logits = ls(views)
    assert volume.shape == (2, 4, 20, 20, 10) and depth_logits.shape == (2, 3, 4, 4, 6)
    _, context = ls.get_cam_feats(views.feats[0])
    # depth probabilities sum to 1 per pixel, so the volume holds exactly the summed context
    torch.testing.assert_close(volume.sum((2, 3, 4)), context.sum((1, 3, 4)), rtol=1e-4, atol=1e-4)


def test_padded_image_rows_are_not_lifted():
    grid = VoxelGrid((-20, -20, -10), (20, 20, 10), (2, 2, 2))
    ls = _lift_splat(grid).eval()
    views = _views(1, 1, hw=(40, 96), dim=4, levels=((4, 6),))  # padded to 64 rows; cell centres at rows 8, 24, 40, 56
    views.img_from_cam[..., 1, 2] = 19.5
    _, inside = ls.frustum((4, 6), views)
    assert inside.tolist() == [[True] * 6] * 2 + [[False] * 6] * 2  # centres at 40 and 56 lie below the image
    volume, _ = ls(views)
    _, context = ls.get_cam_feats(views.feats[0])
    torch.testing.assert_close(volume.sum((2, 3, 4)), context[:, :, :, :2].sum((1, 3, 4)), rtol=1e-4, atol=1e-4)


def test_lidar_depth_targets_keep_the_nearest_return_per_cell():
    from b2s_core.data.targets import lidar_depth_target

    views = _views(1, 2, hw=(64, 96), levels=((4, 6),))
    # (the point behind sits 0.3 m to the side: on the optical axis it would lie on a cell boundary)
    points = np.array([[10.0, 0.0, 1.5], [7.0, 0.0, 1.5], [-5.0, 0.3, 1.5], [0.0, 0.0, 20.0]])
    target = lidar_depth_target(points, views.img_from_cam[0].numpy(), views.ego_from_cam[0].numpy(),
                                image_hw=(64, 96), padded_hw=views.padded_hw, feature_hw=(4, 6))
    assert target.shape == (2, 4, 6)
    assert target[0, 2, 3] == pytest.approx(7.0) and target[1, 2, 3] == pytest.approx(5.0)
    assert (target > 0).sum() == 2


# -- transformers and volume blocks: shapes -----------------------------------------------------------
def test_dense_and_sparse_transformers_keep_the_volume_shape():
    grid = VoxelGrid((-8, -8, -1), (8, 8, 2.2), (2, 2, 0.8))  # 8 x 8 x 4
    views = _views(2, 3, dim=8)

    def layer():
        return TransformerLayer(dim=8, num_heads=2, self_points=2, cross_points=2, num_levels=2, ffn_dim=16)

    queries = LearnedQueries(shape=grid.shape, dim=8)(2)
    assert queries.shape == (2, 8, 8, 8, 4)
    dense = DenseTransformer(layers=[layer(), layer()], grid=grid, dim=8)
    volume = dense(queries, views)
    assert volume.shape == (2, 8, 8, 8, 4) and not torch.allclose(volume[0], queries[0])
    assert VolumeBlock(8)(volume).shape == volume.shape
    sparse = SparseTransformer(layers=[layer()], grid=grid, dim=8, max_queries=20)
    occupied = torch.zeros(2, 8, 8, 4, dtype=torch.bool)
    occupied[0, :3] = True  # 3 x 8 x 4 = 96 voxels, capped at 20
    occupied[1, 0, 0, 0] = True
    out = sparse(volume, occupied, views)
    assert out.features.shape == (2, 20, 8) and out.index.shape == (2, 20)
    assert out.valid.sum(1).tolist() == [20, 1] and out.dropped.tolist() == [76, 0]
    assert out.query_mask.shape == (2, 8, 8, 4) and out.query_mask.sum().item() == 21
    assert out.dense_features(volume.shape).shape == volume.shape


# -- heads and the sparse query set -------------------------------------------------------------------
def test_block_upsampling_is_a_transposed_convolution():
    up = Upsample3D(3, 5, (2, 3, 1)).eval()
    x = torch.randn(2, 3, 4, 2, 3)
    with torch.no_grad():  # non-trivial running statistics, so that a channel mix-up shows
        up.norm.running_mean.uniform_(-1, 1)
        up.norm.running_var.uniform_(0.5, 2)
    expected = F.relu(up.norm(F.conv_transpose3d(x, up.conv_transpose_weight(), stride=(2, 3, 1)).flatten(2)))
    out = up(x)
    assert out.shape == (2, 5, 8, 6, 3)
    torch.testing.assert_close(out, expected.reshape(out.shape))


def test_semantic_head_fuse_equals_concatenation_and_one_convolution():
    head = SemanticHead(in_dim=6, hidden_dim=4, num_classes=3, scale=(2, 2, 1), sparse_dim=6).eval()
    volume = torch.randn(2, 6, 3, 3, 2)
    occupied = torch.rand(2, 18) < 0.5
    queries = select_queries(occupied, torch.randn(2, 18), max_queries=100)
    Q = queries.index.shape[1]
    sparse = SparseOutput(features=torch.randn(2, Q, 6), index=queries.index, valid=queries.valid,
                          query_mask=occupied.reshape(2, 3, 3, 2), dropped=queries.dropped)
    torch.testing.assert_close(head.fuse(volume, sparse), head.fuse_reference(volume, sparse))
    assert head(volume, sparse).shape == (2, 3, 6, 6, 2)
    assert BinaryDecoder(in_dim=6, hidden_dim=4)(volume).shape == (2, 3, 3, 2)


def test_query_cap_keeps_the_highest_priority_and_counts_the_rest():
    occupied = torch.tensor([[True, False, True, True, True], [False] * 5])
    priority = torch.tensor([[0.1, 9.0, 0.5, -1.0, 0.3], [0.0] * 5])
    queries = select_queries(occupied, priority, max_queries=2)
    assert queries.index[0].tolist() == [2, 4] and queries.valid[0].tolist() == [True, True]
    assert queries.valid[1].tolist() == [False, False] and queries.dropped.tolist() == [2, 0]
    empty = select_queries(torch.zeros(1, 5, dtype=torch.bool), torch.zeros(1, 5), max_queries=3)
    assert empty.index.shape == (1, 1) and not empty.valid.any()  # one padded slot keeps the graph whole


# -- losses ------------------------------------------------------------------------------------------
def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy_and_focuses_otherwise():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3, 4, 2, generator=g)
    target = torch.randint(0, 5, (2, 3, 4, 2), generator=g)
    target[0, 0] = 255
    weights = torch.rand(5, generator=g) + 0.1
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0, class_weights=weights), expected)
    assert focal_loss(logits, target, gamma=2.0) < focal_loss(logits, target, gamma=0.0)
    mask = torch.zeros(2, 3, 4, 2, dtype=torch.bool)
    mask[1] = True
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0, mask=mask), F.cross_entropy(logits[1:], target[1:]))
    nothing = logits.clone().requires_grad_()
    zero = focal_loss(nothing, torch.full_like(target, 255))
    zero.backward()
    assert zero.item() == 0.0 and nothing.grad is not None


def test_binary_loss_respects_the_observed_mask():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])
    target = torch.tensor([[[[True, False], [False, True]]]])
    mask = torch.tensor([[[[True, True], [False, False]]]])
    expected = F.binary_cross_entropy_with_logits(logits[mask], target[mask].float())
    torch.testing.assert_close(binary_occupancy_loss(logits, target, mask), expected)
    expected_all = F.binary_cross_entropy_with_logits(logits, target.float())
    torch.testing.assert_close(binary_occupancy_loss(logits, target), expected_all)
    assert binary_occupancy_loss(logits, target, torch.zeros_like(mask)).item() == 0.0


def test_top2_soft_targets_and_soft_focal_loss():
    """Top2 pairs -> the training data path's distribution (dense_top2, then soft_target) -> the soft focal loss."""
    from b2s_core.data.targets import dense_top2
    from b2s_core.train.objectives import soft_target

    occupancy = np.zeros((2, 2, 1), dtype=bool)
    occupancy[0, 1, 0] = occupancy[1, 1, 0] = True
    labels, probs = dense_top2(occupancy, np.array([[1, 2], [0, 0]], np.uint8),
                               np.array([[0.0, 0.0], [1.0, 2.0]], np.float16), free_index=3)
    soft, valid = soft_target(torch.from_numpy(labels)[None], torch.from_numpy(probs)[None], num_classes=4)
    soft = soft[0]
    assert soft.shape == (4, 2, 2, 1) and bool(valid.all())
    torch.testing.assert_close(soft[:, 0, 1, 0], torch.tensor([0.0, 0.5, 0.5, 0.0]))
    torch.testing.assert_close(soft[:, 1, 1, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # one class named twice
    torch.testing.assert_close(soft[:, 0, 0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0]))  # free elsewhere
    support = occupancy | np.array([[[True], [False]], [[False], [False]]])  # paper form: one more voxel
    labels, probs = dense_top2(occupancy, np.array([[3, 1], [1, 2], [0, 0]], np.uint8),
                               np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 2.0]], np.float16), free_index=3, support=support)
    assert labels[0, 0, 0].tolist() == [3, 1] and probs[0, 0, 0].tolist() == [0.5, 0.5]  # free is one of the two
    with pytest.raises(ValueError, match="2 occupied"):
        dense_top2(occupancy, np.zeros((3, 2), np.uint8), np.zeros((3, 2), np.float16), 3)
    with pytest.raises(ValueError, match="3 voxels in its Top2 support"):
        dense_top2(occupancy, np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.float16), 3, support=support)
    logits = torch.randn(1, 4, 2, 2, 1)
    expected = -(soft[None] * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(soft_focal_loss(logits, soft[None], gamma=0.0), expected)
    hard = soft.argmax(0)[None]  # a one-hot soft target is the hard focal loss
    one_hot = F.one_hot(hard, 4).permute(0, 4, 1, 2, 3).float()
    torch.testing.assert_close(soft_focal_loss(logits, one_hot, gamma=2.0), focal_loss(logits, hard, gamma=2.0))
    weights = torch.tensor([0.5, 2.0, 1.0, 0.25])  # ... and so is it with class weights
    torch.testing.assert_close(soft_focal_loss(logits, one_hot, gamma=2.0, class_weights=weights),
                               focal_loss(logits, hard, gamma=2.0, class_weights=weights))
    mask = torch.tensor([[[[True], [False]], [[True], [True]]]])
    torch.testing.assert_close(soft_focal_loss(logits, one_hot, class_weights=weights, mask=mask),
                               focal_loss(logits, hard, class_weights=weights, mask=mask))
    # A mixed target's terms are weighted per class: weighting class 1 up moves the loss towards its term.
    mixed = soft[None]
    up = soft_focal_loss(logits, mixed, gamma=0.0, class_weights=torch.tensor([1.0, 100.0, 1.0, 1.0]))
    term_1 = -logits.log_softmax(1)[0, 1, 0, 1, 0]
    assert abs(up.item() - term_1.item()) < abs(soft_focal_loss(logits, mixed, gamma=0.0).item() - term_1.item())


def test_depth_loss_is_cross_entropy_on_the_lidar_bin():
    bins = np.array([1.0, 1.5, 2.0, 2.5])
    logits = torch.randn(1, 1, 4, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.5, 0.0], [2.6, 50.0]]]])  # bin 1, none, bin 3 (nearest), out of range
    expected = F.cross_entropy(torch.stack([logits[0, 0, :, 0, 0], logits[0, 0, :, 1, 0]]), torch.tensor([1, 3]))
    torch.testing.assert_close(depth_loss(logits, target, bins), expected)
    assert depth_loss(logits, torch.zeros(1, 1, 2, 2), bins).item() == 0.0
