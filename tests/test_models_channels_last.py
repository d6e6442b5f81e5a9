"""``OccupancyModel.use_channels_last`` is a layout change only: the same outputs and gradients as the
model as built (the slow reference), and checkpoints that load either way."""

from __future__ import annotations

import copy

import pytest
import torch

from b2s_core.models import build_model, model_config
from b2s_core.models.camera_rig import surround_rig

torch.set_num_threads(1)

GRID = "-12.8,-12.8,-1,12.8,12.8,2.2:0.4"  # 64 x 64 x 8 output, coarse volumes: this is about the images' path
STRIDES = {"compact_stride": (8, 8, 4), "binary_stride": (4, 4, 2)}


def _outputs_and_gradients(model: torch.nn.Module, images: torch.Tensor, img_from_cam: torch.Tensor,
                           ego_from_cam: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    out = model(images, img_from_cam, ego_from_cam)
    logits = [t for t in (out.binary_logits, out.semantic_logits, out.depth_logits) if t is not None]
    sum(t.square().mean() for t in logits).backward()
    return logits, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["sparse-ls", "ls", "sparse-bevformer", "bevformer"])
def test_channels_last_gives_the_outputs_and_gradients_of_the_model_as_built(variant):
    torch.manual_seed(0)
    cfg = model_config(variant, "tiny", grid=GRID, **STRIDES)
    reference = build_model(cfg).train()
    fast = copy.deepcopy(reference).use_channels_last()
    assert fast.image_encoder.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    H, W = cfg.image_size
    img_from_cam, ego_from_cam = surround_rig(2, 2, (H, W))
    images = torch.randn(2, 2, 3, H, W, generator=g)

    expected, expected_grads = _outputs_and_gradients(reference, images, img_from_cam, ego_from_cam)
    got, got_grads = _outputs_and_gradients(fast, images, img_from_cam, ego_from_cam)
    # Bitwise at the reproduction's shapes on the CPUs measured; other shapes can take another oneDNN kernel
    # per layout, which sums in another order (measured here: <= 2e-5 of the largest logit).
    for e, o in zip(expected, got):
        assert (o - e).abs().max() <= 1e-4 * e.abs().max()
    # The gradients pass ReLUs: a pre-activation within rounding of 0 that flips moves its unit's share of
    # a weight's gradient, so they are compared as one vector (measured: <= 5e-3 relative; a 1e-7 relative
    # change of the input images moves the reference's by up to 8e-4); a layout mistake moves them by O(1).
    assert expected_grads.keys() == got_grads.keys()
    expected_flat = torch.cat([grad.flatten() for grad in expected_grads.values()])
    got_flat = torch.cat([got_grads[name].flatten() for name in expected_grads])
    assert (got_flat - expected_flat).norm() <= 2e-2 * expected_flat.norm()


def test_a_channels_last_checkpoint_loads_into_a_model_as_built_and_back():
    torch.manual_seed(0)
    cfg = model_config("sparse-ls", "tiny", grid=GRID, **STRIDES)
    fast = build_model(cfg).use_channels_last()
    plain = build_model(cfg)
    plain.load_state_dict(fast.state_dict())
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in fast.state_dict().items())
    assert plain.image_encoder.backbone.conv1.weight.is_contiguous()  # the loading model keeps its own layout
    again = build_model(cfg).use_channels_last()
    again.load_state_dict(plain.state_dict())
    assert again.image_encoder.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in plain.state_dict().items())
