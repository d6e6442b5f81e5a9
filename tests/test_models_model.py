"""Whole-model tests on the tiny preset over a small grid: shapes, gradients per variant and head
arrangement, the sparse path's edge cases, offboard mode, parameter groups, batching."""

from __future__ import annotations

import pytest
import torch

from b2s_core.models import ModelConfig, ModelInputError, build_model, model_config
from b2s_core.models.camera_rig import surround_rig
from b2s_core.models.losses import binary_occupancy_loss, focal_loss

torch.set_num_threads(1)

GRID = "-12.8,-12.8,-1,12.8,12.8,2.2:0.4"  # 64 x 64 x 8 output; here binary 16 x 16 x 4, compact 8 x 8 x 2
# Coarser volumes than the tiny preset's (which would be 32 x 32 x 8 / 16 x 16 x 4 here): these tests
# are about shapes and gradients, and eight times fewer voxels keep them quick.
STRIDES = dict(compact_stride=(8, 8, 4), binary_stride=(4, 4, 2))
CASES = [("sparse-ls", "intermediate", False), ("sparse-bevformer", "intermediate", False),
         ("sparse-ls", "intermediate", True), ("sparse-bevformer", "intermediate", True),
         ("ls", "multi-head", False), ("ls", "replace-head", False),
         ("bevformer", "multi-head", False), ("bevformer", "replace-head", False)]


def _config(variant: str, arrangement: str | None = None, offboard: bool = False, **overrides) -> ModelConfig:
    return model_config(variant, "tiny", grid=GRID, arrangement=arrangement, offboard=offboard, **{**STRIDES, **overrides})


def _inputs(cfg: ModelConfig, batch: int = 1, cams: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.image_size
    img_from_cam, ego_from_cam = surround_rig(batch, cams, (H, W))
    return torch.randn(batch, cams, 3, H, W, generator=g), img_from_cam, ego_from_cam


def _occupied(cfg: ModelConfig, batch: int = 1, fraction: float = 0.3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *cfg.binary_shape, generator=g) < fraction


@pytest.mark.parametrize("variant, arrangement, offboard", CASES)
def test_gradients_reach_every_trained_parameter(variant, arrangement, offboard):
    torch.manual_seed(0)
    cfg = _config(variant, arrangement, offboard)
    model = build_model(cfg).train()
    with torch.no_grad():  # leave the zero-initialised offset/weight projections: exact zeros hide a path
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    images, img_from_cam, ego_from_cam = _inputs(cfg)
    given = _occupied(cfg) if cfg.is_sparse else None  # a known non-empty query set
    out = model(images, img_from_cam, ego_from_cam, given_occupancy=given)
    assert out.semantic_logits.shape == (1, cfg.num_classes, 64, 64, 8)
    target = torch.randint(0, cfg.num_classes, (1, 64, 64, 8))
    loss = focal_loss(out.semantic_logits, target)
    if offboard:
        assert out.binary_logits is None  # the occupied set is an input, not a prediction
    else:
        assert out.binary_logits.shape == (1, 16, 16, 4)
        if arrangement != "replace-head":
            loss = loss + binary_occupancy_loss(out.binary_logits, given if given is not None else _occupied(cfg))
    if out.depth_logits is not None:
        loss = loss + out.depth_logits.float().mean()  # stands in for the depth loss
    loss.backward()
    # The loss reaches every parameter but the binary decoder's when it has no BCE (replace-head). Which
    # of them a strategy trains is b2s_core.train.strategies.select_trainable's (tests/test_train.py).
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert all(n.startswith("binary_decoder.") for n in no_gradient), f"no gradient: {no_gradient[:5]}"
    assert bool(no_gradient) == (arrangement == "replace-head")


@pytest.mark.parametrize("variant", ["sparse-ls", "sparse-bevformer"])
def test_pretraining_stops_at_the_binary_decoder(variant):
    cfg = _config(variant)
    model = build_model(cfg)
    out = model(*_inputs(cfg), run_semantic=False)
    assert out.semantic_logits is None and out.query_mask is None
    out.binary_logits.mean().backward()
    binary = {id(p) for p in model.binary_path_parameters()}
    semantic = {id(p) for p in model.semantic_parameters()}
    assert binary.isdisjoint(semantic) and binary | semantic == {id(p) for p in model.parameters()}
    assert all(p.grad is None for p in model.semantic_parameters())
    assert all(p.grad is not None for p in model.binary_path_parameters())


@pytest.mark.parametrize("variant", ["sparse-ls", "sparse-bevformer"])
def test_sparse_path_with_no_and_with_every_voxel_occupied(variant):
    cfg = _config(variant)
    model = build_model(cfg).eval()
    inputs = _inputs(cfg)
    with torch.no_grad():
        none = model(*inputs, given_occupancy=torch.zeros(1, *cfg.binary_shape, dtype=torch.bool))
        assert not none.query_mask.any() and none.num_dropped_queries.tolist() == [0]
        # with no queries the semantic head sees B' alone
        views = model.encode_images(*inputs)
        binary_volume = model.binary_features(model.image_to_3d_volume(views)[0], views)
        torch.testing.assert_close(none.semantic_logits, model.semantic_head(binary_volume, None))

        every = model(*inputs, given_occupancy=torch.ones(1, *cfg.binary_shape, dtype=torch.bool))
        assert every.query_mask.all() and every.num_dropped_queries.tolist() == [0]
        assert torch.isfinite(every.semantic_logits).all()
        assert not torch.allclose(every.semantic_logits, none.semantic_logits)


def test_online_queries_are_the_voxels_predicted_occupied_with_a_cap():
    cfg = _config("sparse-ls", max_sparse_queries=50)
    model = build_model(cfg).eval()
    with torch.no_grad():
        # shift the decoder so that about half of the 1024 voxels are predicted occupied
        model.binary_decoder.body[-1].bias -= model(*_inputs(cfg), run_semantic=False).binary_logits.median()
        out = model(*_inputs(cfg))
        logits = out.binary_logits
        predicted = logits > 0  # occupancy_threshold 0.5
        assert int(predicted.sum()) > 100
        assert int(out.query_mask.sum()) == 50 and out.num_dropped_queries.item() == int(predicted.sum()) - 50
        assert (out.query_mask <= predicted).all()
        assert logits[out.query_mask].min() >= logits[predicted & ~out.query_mask].max()  # the most confident


def test_offboard_uses_exactly_the_given_occupied_set_and_needs_it():
    cfg = _config("sparse-ls", offboard=True)
    model = build_model(cfg).eval()
    assert model.binary_decoder is None
    given = _occupied(cfg, batch=2, fraction=0.2)
    with torch.no_grad():
        out = model(*_inputs(cfg, batch=2), given_occupancy=given)
    assert torch.equal(out.query_mask, given) and out.binary_logits is None
    with pytest.raises(ModelInputError, match="needs given_occupancy"):
        model(*_inputs(cfg))
    with pytest.raises(ModelInputError, match=r"\(1, 16, 16, 4\)"):
        model(*_inputs(cfg), given_occupancy=torch.ones(1, 16, 16, 5, dtype=torch.bool))
    capped = build_model(_config("sparse-ls", offboard=True, max_sparse_queries=10)).eval()
    with torch.no_grad():
        out = capped(*_inputs(cfg), given_occupancy=torch.ones(1, *cfg.binary_shape, dtype=torch.bool))
    assert int(out.query_mask.sum()) == 10 and out.num_dropped_queries.item() == 16 * 16 * 4 - 10
    centres = torch.as_tensor(cfg.binary_grid.centers(), dtype=torch.float32)[..., :2].norm(dim=-1)
    assert centres[out.query_mask[0]].max() <= centres[~out.query_mask[0]].min() + 1e-6  # nearest first


@pytest.mark.parametrize("variant", ["sparse-bevformer", "ls"])
def test_a_sample_gives_the_same_result_alone_and_in_a_padded_batch(variant):
    torch.manual_seed(0)
    cfg = _config(variant)
    model = build_model(cfg).eval()
    images, img_from_cam, ego_from_cam = _inputs(cfg, batch=2)
    given = _occupied(cfg, batch=2)
    given[1] = False
    given[1, :3] = True  # far fewer queries in sample 1: sample 1 is padded
    sparse_given = given if cfg.is_sparse else None
    with torch.no_grad():
        both = model(images, img_from_cam, ego_from_cam, given_occupancy=sparse_given)
        for b in range(2):
            alone = model(images[b:b + 1], img_from_cam[b:b + 1], ego_from_cam[b:b + 1],
                          given_occupancy=None if sparse_given is None else sparse_given[b:b + 1])
            torch.testing.assert_close(both.semantic_logits[b:b + 1], alone.semantic_logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(both.binary_logits[b:b + 1], alone.binary_logits, atol=1e-4, rtol=1e-4)


def test_config_rebuilds_the_same_model_and_the_semantic_head_resets():
    cfg = _config("sparse-bevformer")
    model = build_model(cfg).eval()
    again = build_model(ModelConfig.from_dict(cfg.to_dict())).eval()
    again.load_state_dict(model.state_dict(), strict=True)
    inputs = _inputs(cfg)
    given = _occupied(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs, given_occupancy=given).semantic_logits,
                                   again(*inputs, given_occupancy=given).semantic_logits)
    before = {n: p.clone() for n, p in model.named_parameters()}
    torch.manual_seed(123)
    model.reset_semantic_head()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("semantic_head.") for n in changed)
    assert "semantic_head.reduce_dense" in changed and "semantic_head.classifier.weight" in changed


def test_bad_inputs_are_named():
    cfg = _config("ls")
    model = build_model(cfg)
    images, img_from_cam, ego_from_cam = _inputs(cfg)
    with pytest.raises(ModelInputError, match="images must be"):
        model(images[0], img_from_cam, ego_from_cam)
    with pytest.raises(ModelInputError, match="ego_from_cam"):
        model(images, img_from_cam, ego_from_cam[:, :1])
    with pytest.raises(ModelInputError, match="sparse variant"):
        model(images, img_from_cam, ego_from_cam, given_occupancy=torch.ones(1, 16, 16, 4, dtype=torch.bool))


@pytest.mark.parametrize("variant", ["sparse-ls", "sparse-bevformer"])
def test_runs_under_autocast(variant):
    # CPU bfloat16 autocast takes the same mixed-precision paths as CUDA float16 training
    cfg = _config(variant)
    model = build_model(cfg).train()
    images, img_from_cam, ego_from_cam = _inputs(cfg)
    given = _occupied(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, img_from_cam, ego_from_cam, given_occupancy=given)
        loss = focal_loss(out.semantic_logits, torch.randint(0, 18, (1, 64, 64, 8))) + \
            binary_occupancy_loss(out.binary_logits.float(), given)
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(out.query_mask, given)
    with torch.no_grad():
        reference = build_model(cfg).eval()
        reference.load_state_dict(model.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = reference(images, img_from_cam, ego_from_cam, given_occupancy=given).semantic_logits.float()
        full = reference(images, img_from_cam, ego_from_cam, given_occupancy=given).semantic_logits
    assert (half.argmax(1) == full.argmax(1)).float().mean() > 0.9


def test_a_pretrained_baseline_loads_into_either_arrangement():
    pretrained = build_model(_config("ls", "multi-head")).state_dict()
    replacing = build_model(_config("ls", "replace-head"))
    replacing.load_state_dict(pretrained, strict=True)  # arrangements differ in what trains, not in what exists
    online = build_model(_config("sparse-ls")).state_dict()
    offboard = build_model(_config("sparse-ls", offboard=True))
    missing, unexpected = offboard.load_state_dict(online, strict=False)
    assert not missing and unexpected and all(k.startswith("binary_decoder.") for k in unexpected)
