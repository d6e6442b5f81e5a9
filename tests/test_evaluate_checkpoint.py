"""Predictions files, and evaluate / autolabel from checkpoints of the real (tiny) model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _eval_data import StandInConfig, StandInModel, make_frames, write_file
from typer.testing import CliRunner

from b2s_core.apps.evaluate import EvaluateConfig, evaluate_files
from b2s_core.apps.predict import PredictError, open_inputs, predict_to_file
from b2s_core.grids import VoxelGrid
from b2s_core.occfile import OccDataset

GRID16 = VoxelGrid((-3.2, -3.2, -1.0), (3.2, 3.2, 2.2), (0.4, 0.4, 0.4), "grid16")  # 16 x 16 x 8
GRID16_SPEC = "-3.2,-3.2,-1,3.2,3.2,2.2:0.4"


@pytest.fixture(scope="module")
def semantic_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    rng = np.random.default_rng(7)
    small = write_file(root / "small.h5", {"a": make_frames(rng, "a", 2), "b": make_frames(rng, "b", 1)})
    grid16 = write_file(root / "grid16.h5", {"a": make_frames(rng, "a", 2, grid=GRID16)}, grid=GRID16)
    return small, grid16


def test_predictions_file(tmp_path, semantic_data):
    data, _ = semantic_data
    config = StandInConfig()
    model = StandInModel(config)
    out = predict_to_file(model, open_inputs(data, config), tmp_path / "pred.h5", model_config=config, batch_size=2)
    truth, pred = OccDataset(data), OccDataset(out)
    assert len(pred) == 3 and [s.name for s in pred.scenes] == ["a", "b"]
    inputs = open_inputs(data, config)
    for i in range(3):
        frame = pred.read(i, fields=("semantics", "binary_pred", "cameras"))
        sample = inputs[i]
        with torch.no_grad():
            output = model(images=sample["images"][None], img_from_cam=None, ego_from_cam=None)
        np.testing.assert_array_equal(frame.semantics, output.semantic_logits[0].argmax(0).numpy())
        np.testing.assert_array_equal(frame.occupancy, frame.semantics != 17)
        coarse = (output.binary_logits[0] > 0).numpy()  # probability > 0.5, (10, 10, 8)
        np.testing.assert_array_equal(frame.binary_pred, coarse.repeat(2, 0).repeat(2, 1))
        assert frame.token == truth.read(i, fields=()).token and frame.cameras[0].name == "CAM_FRONT"
    result = evaluate_files(data, out, EvaluateConfig(ray_azimuth_step=30.0))
    assert result.binary_iou is not None and 0 <= result.miou < 100


def test_model_and_data_must_agree(tmp_path, semantic_data):
    data, grid16 = semantic_data
    config = StandInConfig()
    with pytest.raises(PredictError, match="differs from the model's output grid"):
        predict_to_file(StandInModel(config), open_inputs(grid16, config), tmp_path / "x.h5", model_config=config)
    wrong = StandInConfig(num_classes=17, free_index=16)
    with pytest.raises(PredictError, match="the model predicts 17"):
        predict_to_file(StandInModel(wrong), open_inputs(data, wrong), tmp_path / "y.h5", model_config=wrong)


def save_tiny_checkpoint(path, offboard: bool, stage: str = "finetune"):
    from b2s_core.models import build_model, model_config
    from b2s_core.models.checkpoint import save_checkpoint
    from b2s_core.train.config import TrainConfig

    torch.manual_seed(0)
    config = model_config("sparse-ls", "tiny", grid=GRID16_SPEC, offboard=offboard, image_size=(32, 64))
    data = {"semantic_data": [str(path) + ".missing.h5"]} if stage == "finetune" else {"data": [str(path) + ".missing.h5"]}
    train = TrainConfig(stage=stage, offboard=offboard, **data)
    save_checkpoint(path, {"model_variant": config.variant, "model_config": config.to_dict(),
                           "train_config": train.to_dict(), "model": build_model(config).state_dict()})
    return path


def test_cli_evaluate_from_checkpoint(tmp_path, semantic_data):
    from b2s_cli.app import app

    _, data = semantic_data
    checkpoint = save_tiny_checkpoint(tmp_path / "online.pt", offboard=False)
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data),
                                      "--out", str(out), "--ray-step", "30", "--tta"])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert scores["frames"] == 2 and scores["extra"]["checkpoint"] == str(checkpoint)
    assert scores["binary_iou"] is not None and set(scores["rayiou_at"]) == {"1", "2", "4"}
    predictions = OccDataset(tmp_path / "scores.predictions.h5")
    assert len(predictions) == 2 and predictions.read(0, fields=("binary_pred",)).binary_pred.shape == GRID16.shape


def test_cli_evaluate_refuses_a_pretraining_checkpoint(tmp_path, semantic_data):
    """Its semantic head was never trained: an mIoU near zero without a word would mislead."""
    from b2s_cli.app import app

    _, data = semantic_data
    checkpoint = save_tiny_checkpoint(tmp_path / "pre.pt", offboard=False, stage="pretrain")
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data),
                                      "--out", str(tmp_path / "scores.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "a pre-training checkpoint, whose semantic head was never trained" in result.output
    assert not (tmp_path / "scores.json").exists() and not (tmp_path / "scores.predictions.h5").exists()


def test_cli_autolabel_from_checkpoint(tmp_path, semantic_data):
    from b2s_cli.app import app

    _, data = semantic_data
    checkpoint = save_tiny_checkpoint(tmp_path / "offboard.pt", offboard=True)
    runner = CliRunner()
    for mode, form in (("top1", "paper"), ("top2", "paper"), ("top2", "given-geometry")):
        out = tmp_path / f"{mode}-{form}.h5"
        args = ["autolabel", "--checkpoint", str(checkpoint), "--data", str(data), f"--{mode}", "--out", str(out), "--tta"]
        result = runner.invoke(app, args + ([] if form == "paper" else ["--form", form]))
        assert result.exit_code == 0, result.output
        assert "bytes per frame" in result.output and "Top1 classes" in result.output and f"{form} form" in result.output
        assert ("Top2 classes" in result.output) == (mode == "top2")
        labels, truth = OccDataset(out), OccDataset(data)
        frame = labels.read(0, fields=("semantics", "top2"))
        given = truth.read(0, fields=()).occupancy
        if form == "given-geometry":
            np.testing.assert_array_equal(frame.occupancy, given)
        else:  # the model's geometry, inside the given set on the binary grid (2 x 2 x 1 here)
            coarse = given.reshape(8, 2, 8, 2, 8).any(axis=(1, 3)).repeat(2, 0).repeat(2, 1)
            assert not np.any(frame.occupancy & ~coarse)
        assert (frame.top2_labels is not None) == (mode == "top2")
    both = runner.invoke(app, ["autolabel", "--checkpoint", str(checkpoint), "--data", str(data), "--top1", "--top2",
                               "--out", str(tmp_path / "z.h5")])
    assert both.exit_code == 1 and "exactly one of --top1 and --top2" in both.output
    online = save_tiny_checkpoint(tmp_path / "online.pt", offboard=False)
    refused = runner.invoke(app, ["autolabel", "--checkpoint", str(online), "--data", str(data), "--top1",
                                  "--out", str(tmp_path / "w.h5")])
    assert refused.exit_code == 1 and "offboard" in refused.output
