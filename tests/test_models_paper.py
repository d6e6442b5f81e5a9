"""Each paper-size model builds, reports its parameter count and runs one forward pass on CPU at
batch 1 (two cameras to keep the suite's time down; the camera count changes no shape)."""

from __future__ import annotations

import pytest
import torch

from b2s_core.models import build_model, model_config
from b2s_core.models.camera_rig import surround_rig

torch.set_num_threads(1)

# Parameter counts of the paper presets (occ3d grid, 18 classes), pinned so that a change in the
# architecture shows up here; update with a note when the architecture changes on purpose.
PAPER_PARAMETERS = {"sparse-ls": 26_940_075, "ls": 26_898_091, "sparse-bevformer": 29_147_987, "bevformer": 29_076_307}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sparse-ls", "ls", "sparse-bevformer", "bevformer"])
def test_paper_preset_builds_and_runs_one_forward(variant, record_property):
    cfg = model_config(variant, "paper")
    model = build_model(cfg).eval()
    count = model.num_parameters()
    record_property("parameters", count)
    print(f"{variant} paper preset: {count / 1e6:.2f} M parameters")
    assert count == PAPER_PARAMETERS[variant]
    H, W = cfg.image_size
    img_from_cam, ego_from_cam = surround_rig(1, 2, (H, W))
    images = torch.randn(1, 2, 3, H, W, generator=torch.Generator().manual_seed(0))
    given = None
    if cfg.is_sparse:  # about 10 % of B' occupied, as in driving scenes, instead of an untrained decoder's guess
        given = torch.rand(1, *cfg.binary_shape, generator=torch.Generator().manual_seed(1)) < 0.1
    with torch.no_grad():
        out = model(images, img_from_cam, ego_from_cam, given_occupancy=given)
    assert out.binary_logits.shape == (1, 100, 100, 16)
    assert out.semantic_logits.shape == (1, 18, 200, 200, 16)
    assert torch.isfinite(out.semantic_logits).all()
    if cfg.is_sparse:
        assert torch.equal(out.query_mask, given)
    else:
        assert out.query_mask is None
