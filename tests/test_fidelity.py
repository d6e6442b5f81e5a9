"""Where the paper says how, the code follows it: one mask policy for every binary loss, the same
offboard input in training and inference, the offboard output rule, and the paper's defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from b2s_core.data.toy import TOY_GRID, toy_cameras, toy_frames, write_toy_dataset
from b2s_core.models import build_model, model_config
from b2s_core.models.occupancy_model import OccupancyModel
from b2s_core.models.occupied_set import given_occupancy, upsample_occupancy
from b2s_core.occfile import OccDataset, OccWriter
from b2s_core.taxonomy import OCC3D
from b2s_core.train import loop as train_loop
from b2s_core.train.config import ConfigError, TrainConfig
from b2s_core.train.logging import read_metrics
from b2s_core.train.loop import train

TINY = dict(preset="tiny", workers=0, log_every_steps=1, warmup_steps=0, device="cpu")


def _write_half_hidden(path, seed: int, with_semantics: bool):
    """Two toy frames whose camera mask hides the half x < 0 of the grid (whole binary-grid blocks,
    occupied ones included), as the cameras of a real rig hide what is behind them."""
    frames = toy_frames(2, seed=seed, with_semantics=with_semantics, scene=path.stem)
    for frame in frames:
        frame.mask_camera = np.zeros(TOY_GRID.shape, dtype=bool)
        frame.mask_camera[TOY_GRID.shape[0] // 2:] = True
    with OccWriter(path, grid=TOY_GRID, taxonomy=OCC3D, source="toy", camera_names=[c.name for c in toy_cameras((96, 264))]) as w:
        w.write_scene(path.stem, frames)
    return path


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    return dict(root=root, binary=_write_half_hidden(root / "binary.h5", 1, with_semantics=False),
                semantic=_write_half_hidden(root / "semantic.h5", 2, with_semantics=True))


def _pooled_counts(path, binary_shape) -> int:
    """Occupied voxels of every frame's *whole* GT binary grid, pooled to the binary grid."""
    data = OccDataset(path)
    total = 0
    for i in range(len(data)):
        frame = data.read(i, fields=("semantics",))
        binary = torch.from_numpy(frame.occupancy.astype(np.uint8))[None]
        total += int(given_occupancy(binary, binary_shape).sum())
    return total


def test_sb_extra_batch_follows_the_camera_mask(masked, monkeypatch):
    """S+B with the camera mask: the extra pre-training batch's BCE ignores the unobserved voxels,
    as the main batch's does (before: it was trained on every voxel, unobserved ones as free)."""
    seen = []
    original = train_loop.binary_loss

    def recording(logits, binary, pos_weight=None):
        seen.append(binary.clone())
        return original(logits, binary, pos_weight)

    monkeypatch.setattr(train_loop, "binary_loss", recording)
    train(TrainConfig(stage="finetune", model="sparse-ls", semantic_data=[masked["semantic"]],
                      pretrain_data=[masked["binary"]], binary_data="b", use_camera_mask=True, out=str(masked["root"] / "sb"),
                      epochs=1, batch_size=2, augment=False, **TINY), show_progress=False)
    extra, main = seen  # one step: the S+B batch first, then the semantic batch's B*
    binary_files = OccDataset(masked["binary"])
    hidden = sum(int((~binary_files.read(i, fields=("mask_camera",)).mask_camera).sum()) for i in range(2))
    assert int((extra == 255).sum()) == hidden > 0
    assert int((main == 255).sum()) > 0


def test_sb_refuses_pretraining_data_without_a_camera_mask(masked):
    unmasked = write_toy_dataset(masked["root"] / "no-mask.h5", 2, seed=3, with_semantics=False)
    with pytest.raises(Exception, match="no-mask.h5: 2 of 2 frames have no mask_camera"):
        train(TrainConfig(stage="finetune", model="sparse-ls", semantic_data=[masked["semantic"]],
                          pretrain_data=[unmasked], binary_data="b", use_camera_mask=True,
                          out=str(masked["root"] / "refused"), epochs=1, batch_size=2, **TINY), show_progress=False)


def test_offboard_model_is_given_the_whole_occupancy_in_training_and_validation(masked, monkeypatch):
    """The camera mask limits the loss, never the input: training and validation hand the offboard
    model the same occupied set as prediction and autolabel do (before: the masked one)."""
    given_counts = []
    original = OccupancyModel.forward

    def recording(self, images, img_from_cam, ego_from_cam, given_occupancy=None, run_semantic=True):
        given_counts.append(int(given_occupancy.sum()))
        return original(self, images, img_from_cam, ego_from_cam, given_occupancy, run_semantic)

    monkeypatch.setattr(OccupancyModel, "forward", recording)
    result = train(TrainConfig(stage="finetune", model="sparse-ls", offboard=True, semantic_data=[masked["semantic"]],
                               val_data=[masked["semantic"]], use_camera_mask=True, out=str(masked["root"] / "off"),
                               epochs=1, batch_size=2, augment=False, **TINY), show_progress=False)
    whole = _pooled_counts(masked["semantic"], result.model.config.binary_shape)
    visible_half = sum(int(given_occupancy(torch.from_numpy(f.occupancy[TOY_GRID.shape[0] // 2:].astype(np.uint8))[None],
                                           (result.model.config.binary_shape[0] // 2, *result.model.config.binary_shape[1:])).sum())
                       for f in OccDataset(masked["semantic"]))
    assert visible_half < whole  # the mask hides occupied blocks: a masked input would be smaller
    assert given_counts == [whole, whole]  # one training step over both frames, then validation


def test_offboard_output_is_free_outside_the_given_set():
    config = model_config("sparse-ls", "tiny", grid="-6.4,-6.4,-1,6.4,6.4,2.2:0.4", offboard=True, image_size=(32, 64))
    torch.manual_seed(0)
    model = build_model(config).eval()
    Xb, Yb, Zb = config.binary_shape
    given = torch.rand(1, Xb, Yb, Zb) < 0.2
    images = torch.randn(1, 1, 3, 32, 64)
    intrinsic = torch.tensor([[[[30.0, 0, 32], [0, 30.0, 16], [0, 0, 1]]]])
    extrinsic = torch.eye(4).reshape(1, 1, 4, 4).clone()
    extrinsic[..., :3, :3] = torch.tensor([[0, 0, 1.0], [-1, 0, 0], [0, -1, 0]])
    with torch.no_grad():
        out = model(images, intrinsic, extrinsic, given_occupancy=given)
        head = model.semantic_head(model.binary_features(model.image_to_3d_volume(
            model.encode_images(images, intrinsic, extrinsic))[0], None), None)
    inside = upsample_occupancy(given, config.output_from_binary)[0]  # (X, Y, Z)
    labels = out.semantic_logits[0].argmax(0)
    assert torch.all(labels[~inside] == config.free_index)
    assert out.semantic_logits[0][:, ~inside].max() <= 0 and torch.isfinite(out.semantic_logits).all()
    # inside, the model's own output (free included) stays: it is not forced to be occupied
    assert not torch.equal(out.semantic_logits[0][:, inside], torch.zeros_like(out.semantic_logits[0][:, inside]))
    assert head.shape == out.semantic_logits.shape


def test_evaluate_offboard_checkpoint_scores_the_given_geometry(tmp_path):
    """A model handed the occupancy that calls every voxel it may label occupied scores the given
    set's own geometry IoU (100 when the binary grid is the label grid), not ~0 as before."""
    from b2s_core.apps.evaluate import EvaluateConfig, evaluate_checkpoint
    from b2s_core.models.checkpoint import save_checkpoint

    data = write_toy_dataset(tmp_path / "val.h5", 2, seed=4, image_hw=(32, 64))
    grid = OccDataset(data).grid
    spec = ",".join(f"{v:g}" for v in (*grid.range_min, *grid.range_max)) + ":" + ",".join(f"{v:g}" for v in grid.voxel_size)
    config = model_config("sparse-ls", "tiny", grid=spec, offboard=True, image_size=(32, 64), binary_stride=(1, 1, 1),
                          compact_stride=(4, 4, 2))
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # the semantic head says "car" everywhere
        model.semantic_head.classifier.bias.fill_(-50.0)
        model.semantic_head.classifier.bias[4] = 50.0
    train_config = TrainConfig(stage="finetune", offboard=True, semantic_data=[str(data)])
    checkpoint = save_checkpoint(tmp_path / "off.pt", {"model_variant": config.variant, "model_config": config.to_dict(),
                                                       "train_config": train_config.to_dict(), "model": model.state_dict()})
    result = evaluate_checkpoint(checkpoint, data, tmp_path / "pred.h5", EvaluateConfig(rayiou=False, mask="none"))
    assert result.geometry_iou == pytest.approx(100.0)


def test_paper_defaults():
    assert TrainConfig(stage="finetune", semantic_data=["s.h5"]).epochs == 24  # section 4.1
    assert TrainConfig(stage="finetune", semantic_data=["s.h5"], offboard=True).epochs == 64  # section 4.2
    assert TrainConfig(stage="finetune", semantic_data=["s.h5"], offboard=True, epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="--init already brings"):
        TrainConfig(stage="finetune", semantic_data=["s.h5"], init="pre.pt", backbone_weights="r50.pth")


def test_random_backbone_says_so_once_and_frozen_stages_stay_frozen(masked, tmp_path):
    with pytest.warns(UserWarning, match="random initialisation") as caught:
        result = train(TrainConfig(stage="pretrain", model="sparse-ls", data=[masked["binary"]], out=str(tmp_path / "pre"),
                                   epochs=1, batch_size=2, frozen_stages=1, norm_eval=True, **TINY), show_progress=False)
    assert sum("random initialisation" in str(w.message) for w in caught) == 1
    info = read_metrics(tmp_path / "pre" / "metrics.jsonl", kind="info")[0]
    assert info["backbone"] == "random initialisation"
    backbone = result.model.image_encoder.backbone
    torch.manual_seed(0)  # the loop builds the model right after seeding with the run's seed
    initial = build_model(result.model.config).image_encoder.backbone
    for name in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.1.bn2.running_mean"):
        assert torch.equal(backbone.state_dict()[name], initial.state_dict()[name]), name
    assert not torch.equal(backbone.layer2[0].conv1.weight, initial.layer2[0].conv1.weight)
    # norm_eval: no BatchNorm of the backbone updated its running statistics
    assert torch.equal(backbone.layer3[0].bn1.running_mean, initial.layer3[0].bn1.running_mean)
    assert not any(p.requires_grad for p in backbone.layer1.parameters())


def test_lift_splat_runs_are_supervised_by_lidar_depth(tmp_path):
    """The paper's code base (COTR, after BEVDet) supervises the Lift-Splat depth distribution with
    LiDAR depth (loss_depth_weight 0.05); frames that carry points get that term, others none."""
    frames = toy_frames(2, seed=6, scene="pts")
    for frame in frames:  # a LiDAR that sees the centre of every occupied voxel
        frame.points = TOY_GRID.center_of(np.argwhere(frame.occupancy)).astype(np.float32)
    with_points = tmp_path / "pts.h5"
    with OccWriter(with_points, grid=TOY_GRID, taxonomy=OCC3D, source="toy", camera_names=[c.name for c in frames[0].cameras]) as w:
        w.write_scene("pts", frames)
    without_points = write_toy_dataset(tmp_path / "nopts.h5", 2, seed=7)
    common = dict(stage="finetune", model="sparse-ls", epochs=1, batch_size=2, **TINY)
    train(TrainConfig(semantic_data=[with_points], out=str(tmp_path / "d"), **common), show_progress=False)
    record = read_metrics(tmp_path / "d" / "metrics.jsonl")[-1]
    assert record["depth"] > 0
    train(TrainConfig(semantic_data=[with_points], out=str(tmp_path / "off"), depth_loss_weight=0.0, **common), show_progress=False)
    assert "depth" not in read_metrics(tmp_path / "off" / "metrics.jsonl")[-1]
    with pytest.warns(UserWarning, match="nopts.h5: no LiDAR points"):
        train(TrainConfig(semantic_data=[without_points], out=str(tmp_path / "none"), **common), show_progress=False)
    assert "depth" not in read_metrics(tmp_path / "none" / "metrics.jsonl")[-1]


def test_binary_balance_weighs_the_occupied_voxels_of_every_binary_loss(masked, monkeypatch):
    """binary_balance > 0 (an option; the paper's BCE is unweighted): the run counts free / occupied
    on its data, logs the weight and hands it to the main and the S+B extra batch's BCE alike."""
    seen = []
    original = train_loop.binary_loss

    def recording(logits, binary, pos_weight=None):
        seen.append(pos_weight)
        return original(logits, binary, pos_weight)

    monkeypatch.setattr(train_loop, "binary_loss", recording)
    out = masked["root"] / "balanced"
    train(TrainConfig(stage="finetune", model="sparse-ls", semantic_data=[masked["semantic"]], pretrain_data=[masked["binary"]],
                      binary_data="b", use_camera_mask=True, binary_balance=0.5, out=str(out), epochs=1, batch_size=2,
                      **TINY), show_progress=False)
    weight = read_metrics(out / "metrics.jsonl", kind="info")[0]["binary_pos_weight"]
    assert weight > 1 and seen == [pytest.approx(weight, abs=1e-3)] * 2
    seen.clear()
    train(TrainConfig(stage="finetune", model="sparse-ls", semantic_data=[masked["semantic"]], out=str(masked["root"] / "plain"),
                      epochs=1, batch_size=2, **TINY), show_progress=False)
    assert seen == [None]  # the paper's unweighted BCE by default
