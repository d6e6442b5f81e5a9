"""Training: config, schedule, checkpoints, strategies, exact resume, DDP with two processes, overfitting."""

from __future__ import annotations

import csv
import fractions
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from b2s_core.data.toy import write_toy_dataset
from b2s_core.models import build_model, model_config
from b2s_core.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from b2s_core.train.config import ConfigError, TrainConfig, resolve_config
from b2s_core.train.logging import read_metrics
from b2s_core.train.loop import lr_factor, train
from b2s_core.train.strategies import (
    OFFBOARD,
    PRETRAIN_DENSE,
    PRETRAIN_SPARSE,
    REPLACE_HEAD,
    TrainingPlan,
    plan_for,
    select_trainable,
)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(preset="tiny", workers=0, log_every_steps=1, warmup_steps=0, batch_size=2)


# -- configuration ------------------------------------------------------------------------------------
def test_config_precedence_file_then_options_then_set(tmp_path):
    (tmp_path / "run.yaml").write_text("lr: 1.0e-3\nepochs: 3\nbatch_size: 4\ndata: [a.h5]\n")
    (tmp_path / "run.toml").write_text('lr = 5e-4\ndata = ["b.h5"]\n')
    config = resolve_config(config_file=tmp_path / "run.yaml", options={"epochs": 5, "batch_size": None},
                            overrides=["grad_clip=1.5", "model_overrides={embed_dim: 32}"])
    assert (config.lr, config.epochs, config.batch_size, config.grad_clip) == (1e-3, 5, 4, 1.5)
    assert config.model_overrides == {"embed_dim": 32} and config.data == ["a.h5"]
    assert resolve_config(config_file=tmp_path / "run.toml").lr == 5e-4
    (tmp_path / "bad.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        resolve_config(config_file=tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="epochs must be int"):
        resolve_config(options={"data": "a.h5", "epochs": "many"})
    with pytest.raises(ConfigError, match="strategy must be one of"):
        TrainConfig(stage="finetune", semantic_data=["s.h5"], strategy="best")
    with pytest.raises(ConfigError, match="--pretrain-data"):
        TrainConfig(stage="finetune", semantic_data=["s.h5"], binary_data="b")


def test_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, total_steps=100, warmup_steps=10, schedule="cosine", min_ratio=0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.01, abs=1e-3)
    assert lr_factor(50, total_steps=100, warmup_steps=10, schedule="constant", min_ratio=0.01) == 1.0
    # a short run still decays: warm-up is capped at a tenth of the run
    assert lr_factor(0, total_steps=20, warmup_steps=500, schedule="cosine", min_ratio=0.0) == pytest.approx(0.5)


# -- checkpoints ------------------------------------------------------------------------------------------
def test_checkpoint_errors_are_clear(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model_variant": "sparse-ls", "model": {}})
    assert read_checkpoint(path)["model_variant"] == "sparse-ls"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    torch.save({"format": "b2s-checkpoint", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        read_checkpoint(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a b2s checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable") as err:
        read_checkpoint(tmp_path / "junk.pt")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value) and "weights_only" not in str(err.value)
    torch.save({"format": "b2s-checkpoint", "version": 1, "extra": fractions.Fraction(1, 3)}, tmp_path / "global.pt")
    with pytest.raises(CheckpointError, match=r"global\.pt: not a readable b2s checkpoint \(refused: it names the "
                                              r"Python global 'fractions\.Fraction'"):
        read_checkpoint(tmp_path / "global.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


# -- strategies on built models (no training) ----------------------------------------------------------------
def _names(params, model):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("variant,stage,strategy,offboard,expect", [
    ("sparse-ls", "pretrain", "intermediate", False, "binary-path"),
    ("ls", "pretrain", "multi-head", False, "binary-path"),
    ("sparse-ls", "finetune", "intermediate", False, "all"),
    ("ls", "finetune", "multi-head", False, "all"),
    ("ls", "finetune", "replace-head", False, "all-but-binary-head"),
    ("sparse-ls", "finetune", "intermediate", True, "all"),
])
def test_each_strategy_selects_its_parameters(variant, stage, strategy, offboard, expect):
    config = TrainConfig(stage=stage, data=["b.h5"], semantic_data=["s.h5"], strategy=strategy, offboard=offboard)
    plan = plan_for(config, variant)
    model = build_model(model_config(variant, "tiny", arrangement=plan.arrangement, offboard=plan.offboard))
    trained = set(select_trainable(model, plan))
    everything = {n for n, _ in model.named_parameters()}
    if expect == "binary-path":
        assert trained == _names(model.binary_path_parameters(), model)
        assert not trained & _names(model.semantic_parameters(), model)
    elif expect == "all-but-binary-head":
        assert trained == everything - _names(model.binary_head_parameters(), model) and trained != everything
    else:
        assert trained == everything
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trained


def test_fixed_plans_are_named_and_the_others_built_by_keyword():
    finetune = dict(stage="finetune", semantic_data=["s.h5"])
    assert plan_for(TrainConfig(stage="pretrain", data=["b.h5"]), "sparse-bevformer") is PRETRAIN_SPARSE
    assert plan_for(TrainConfig(stage="pretrain", data=["b.h5"]), "bevformer") is PRETRAIN_DENSE
    assert PRETRAIN_DENSE.arrangement == "multi-head" and PRETRAIN_DENSE.up_to_binary
    assert plan_for(TrainConfig(**finetune, offboard=True), "sparse-ls") is OFFBOARD
    assert plan_for(TrainConfig(**finetune, strategy="replace-head"), "ls") is REPLACE_HEAD
    sb = plan_for(TrainConfig(**finetune, binary_data="b", pretrain_data=["b.h5"], strategy="multi-head"), "ls")
    assert (sb.name, sb.arrangement, sb.pretrain_batches, sb.binary_loss, sb.trains) == ("multi-head", "multi-head",
                                                                                          True, True, "all")
    assert not plan_for(TrainConfig(**finetune), "sparse-ls").pretrain_batches  # B*: no extra batch
    with pytest.raises(TypeError):
        TrainingPlan("finetune", "offboard", "intermediate", True, False, True, False, False, "all")


def test_strategy_and_variant_must_fit():
    with pytest.raises(ConfigError, match="dense baseline"):
        plan_for(TrainConfig(stage="finetune", semantic_data=["s"], strategy="intermediate"), "ls")
    with pytest.raises(ConfigError, match="baseline of the dense models"):
        plan_for(TrainConfig(stage="finetune", semantic_data=["s"], strategy="replace-head"), "sparse-ls")
    with pytest.raises(ConfigError, match="sparse variant"):
        plan_for(TrainConfig(stage="finetune", semantic_data=["s"], offboard=True, strategy="multi-head"), "ls")


# -- real (tiny) training runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    binary = write_toy_dataset(root / "binary.h5", 4, scenes=2, seed=1, with_semantics=False)
    semantic = write_toy_dataset(root / "semantic.h5", 2, seed=2)
    pseudo = write_toy_dataset(root / "pseudo.h5", 2, seed=3, top2=True)
    pre_sparse = train(TrainConfig(stage="pretrain", model="sparse-ls", data=[binary], out=str(root / "pre-sparse"),
                                   epochs=1, **TINY), show_progress=False)
    pre_dense = train(TrainConfig(stage="pretrain", model="ls", data=[binary], out=str(root / "pre-dense"),
                                  epochs=1, max_steps=1, **TINY), show_progress=False)
    return dict(root=root, binary=binary, semantic=semantic, pseudo=pseudo, pre_sparse=pre_sparse.checkpoint,
                pre_dense=pre_dense.checkpoint)


def _weights(path):
    return read_checkpoint(path)["model"]


def test_pretraining_trains_only_the_binary_path(toy):
    loaded = load_checkpoint(toy["pre_sparse"])
    assert loaded.model_config.variant == "sparse-ls" and loaded.train_settings["stage"] == "pretrain"
    torch.manual_seed(loaded.train_settings["seed"])  # the loop builds the model right after seeding
    initial = build_model(loaded.model_config).state_dict()
    trained = loaded.model.state_dict()
    semantic = _names(loaded.model.semantic_parameters(), loaded.model)
    binary = _names(loaded.model.binary_path_parameters(), loaded.model)
    assert all(torch.equal(trained[n], initial[n]) for n in semantic)
    changed = {n for n in binary if not torch.equal(trained[n], initial[n])}
    assert len(changed) >= 0.9 * len(binary)
    records = read_metrics(toy["root"] / "pre-sparse" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all("semantic" not in r for r in records)
    assert (toy["root"] / "pre-sparse" / "config.yaml").is_file() and (toy["root"] / "pre-sparse" / "train.csv").is_file()
    with pytest.raises(CheckpointError, match="holds a 'sparse-ls' model"):
        load_checkpoint(toy["pre_sparse"], expect_model="ls")


@pytest.mark.parametrize("name,init,options,frozen,losses", [
    ("intermediate-bstar", "pre_sparse", dict(strategy="intermediate", binary_data="bstar"), "none", {"binary", "semantic"}),
    ("intermediate-b", "pre_sparse", dict(strategy="intermediate", binary_data="b"), "none", {"binary", "binary_b", "semantic"}),
    ("multi-head-b", "pre_dense", dict(strategy="multi-head", binary_data="b"), "none", {"binary", "binary_b", "semantic"}),
    ("replace-head", "pre_dense", dict(strategy="replace-head"), "binary_decoder", {"semantic"}),
    ("offboard", "pre_sparse", dict(offboard=True), "none", {"semantic"}),
])
def test_finetuning_strategy_trains_what_it_should_on_the_data_it_should(toy, name, init, options, frozen, losses):
    out = toy["root"] / f"ft-{name}"
    result = train(TrainConfig(stage="finetune", init=str(toy[init]), semantic_data=[toy["semantic"]],
                               pseudo_data=[toy["pseudo"]], pretrain_data=[toy["binary"]], out=str(out),
                               epochs=1, max_steps=2, **TINY, **options), show_progress=False)
    records = read_metrics(out / "metrics.jsonl")
    fixed = ("kind", "step", "epoch", "lr", "loss", "grad_norm", "samples_per_s", "dropped_queries")
    assert {k for k in records[-1] if k not in fixed} == losses
    assert ("dropped_queries" in records[-1]) == result.model.config.is_sparse
    state = read_checkpoint(result.checkpoint)
    # S+B draws one pre-training batch per step; the other strategies none
    assert state["progress"]["pretrain_batches"] == (2 if "binary_b" in losses else 0)
    before, after = _weights(toy[init]), state["model"]
    model = result.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    params = {n for n, _ in model.named_parameters()}
    changed = {n for n in params if n in before and before[n].shape == after[n].shape and not torch.equal(before[n], after[n])}
    assert changed <= trained
    if frozen == "binary_decoder":
        decoder = {n for n in params if n.startswith("binary_decoder.")}
        assert decoder and not decoder & trained and not decoder & changed
    else:
        assert trained == params
    assert state["model_config"]["offboard"] == options.get("offboard", False)


def test_class_weights_count_the_training_labels(toy):
    from b2s_core.occfile import OccDataset
    from b2s_core.train.class_weights import count_labels, labels_of_frame, weights_from_counts

    files = [toy["semantic"], toy["pseudo"]]  # hard labels and Top2 pseudo-labels
    counts = count_labels(files, 18, 17, use_camera_mask=True)
    expected = np.zeros(18, dtype=np.int64)
    for path in files:
        data = OccDataset(path)
        for i in range(len(data)):
            frame = data.read(i)
            labels = labels_of_frame(frame, 17)
            labels = labels if frame.mask_camera is None else labels[frame.mask_camera]
            expected += np.bincount(labels[labels != 255], minlength=18)
    assert counts.tolist() == expected.tolist() and counts[17] == counts.max() and (counts[:17] > 0).sum() >= 3
    assert count_labels(files, 18, 17, use_camera_mask=True, max_frames=1).sum() < counts.sum()
    weights = weights_from_counts(np.array([100, 25, 0, 400]), 0.5)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(2.0) and weights[0] / weights[3] == pytest.approx(2.0)
    assert weights[2] / weights[0] == pytest.approx(10.0)  # never seen: weighed as if seen once
    assert np.allclose(weights_from_counts(np.array([100, 25, 400]), 0.0), 1.0)  # the paper's unweighted loss


def test_binary_pos_weight_counts_the_decoder_grid(toy):
    from b2s_core.occfile import OccDataset
    from b2s_core.train.class_weights import binary_pos_weight

    occupied = free = 0
    data = OccDataset(toy["binary"])
    for i in range(len(data)):  # the toy grid 32 x 32 x 8 pooled 2 x 2 x 2 onto 16 x 16 x 4
        grid = data.read(i, fields=()).occupancy.reshape(16, 2, 16, 2, 4, 2).any(axis=(1, 3, 5))
        occupied, free = occupied + int(grid.sum()), free + int((~grid).sum())
    assert binary_pos_weight([toy["binary"]], (16, 16, 4), 17, 0.5, use_camera_mask=False) == pytest.approx((free / occupied) ** 0.5)
    assert binary_pos_weight([toy["binary"]], (16, 16, 4), 17, 0.0, use_camera_mask=False) == 1.0


def test_resumed_run_gives_the_same_losses(toy):
    """S+B fine-tuning with augmentation and class weights, interrupted mid-epoch at step 3, then resumed to step 5."""
    common = dict(stage="finetune", init=str(toy["pre_sparse"]), semantic_data=[toy["semantic"]],
                  pseudo_data=[toy["pseudo"]], pretrain_data=[toy["binary"]], binary_data="b", epochs=2,
                  class_balance=0.5, **{**TINY, "batch_size": 1}, max_steps=5)
    straight = train(TrainConfig(out=str(toy["root"] / "straight"), **common), show_progress=False)
    part = train(TrainConfig(out=str(toy["root"] / "parts"), stop_after_steps=3, **common), show_progress=False)
    assert not part.finished and part.state.step == 3
    resumed = train(TrainConfig(out=str(toy["root"] / "parts"), resume=True, **common), show_progress=False)
    assert resumed.finished and resumed.state.step == 5
    a = read_metrics(toy["root"] / "straight" / "metrics.jsonl")
    b = read_metrics(toy["root"] / "parts" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in ("loss", "binary", "binary_b", "semantic", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)
    infos = [json.loads(line) for line in (toy["root"] / "straight" / "metrics.jsonl").read_text().splitlines()]
    weights = next(r["class_weights"] for r in infos if r["kind"] == "info")
    assert len(weights) == 18 and weights[17] == min(weights)  # free, the commonest class, weighs least
    final_a, final_b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.allclose(final_a[k].float(), final_b[k].float(), atol=1e-5) for k in final_a)


def test_resume_without_checkpoint_is_a_clear_error(toy, tmp_path):
    config = TrainConfig(stage="pretrain", model="sparse-ls", data=[toy["binary"]], out=str(tmp_path / "none"),
                         resume=True, **TINY)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(config, show_progress=False)


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PRETRAIN = dict(stage="pretrain", model="sparse-ls", epochs=1, **TINY)  # as the toy fixture's pre-sparse run


# A setting that shapes what a run learns, given differently on --resume: (stage, setting, value or a toy-data key).
RESUME_REFUSALS = [
    ("pretrain", "lr", 0.1),
    ("pretrain", "data", ["semantic"]),
    ("pretrain", "seed", 1),
    ("pretrain", "batch_size", 1),
    ("pretrain", "model_overrides", {"embed_dim": 16}),
    ("finetune", "lr", 0.1),
    ("finetune", "semantic_data", ["pseudo"]),
    ("finetune", "class_balance", 0.5),
    ("finetune", "init", "binary"),
]


@pytest.mark.parametrize("stage,name,value", RESUME_REFUSALS, ids=[f"{s}-{n}" for s, n, _ in RESUME_REFUSALS])
def test_resume_with_other_settings_is_refused_naming_them(toy, tmp_path, stage, name, value):
    def data(value):  # toy-data keys -> their paths
        if isinstance(value, list):
            return [str(toy[key]) for key in value]
        return str(toy[value]) if isinstance(value, str) and value in toy else value

    run = tmp_path / "run"
    if stage == "pretrain":  # the real run of the toy fixture
        shutil.copytree(Path(toy["pre_sparse"]).parent, run)
        settings = dict(PRETRAIN, data=[str(toy["binary"])])
    else:  # only its saved config matters: the refusal comes before anything else is read
        settings = dict(stage="finetune", init=str(toy["pre_sparse"]), semantic_data=[str(toy["semantic"])], epochs=1, **TINY)
        save_checkpoint(run / "checkpoint.pt", {"model_variant": "sparse-ls",
                                                "train_config": TrainConfig(**settings, model="sparse-ls", out=str(run)).to_dict()})
    before = _hash(run / "checkpoint.pt")
    given = TrainConfig(**{**settings, name: data(value)}, out=str(run), resume=True)
    with pytest.raises(ConfigError, match=rf"checkpoint\.pt: --resume continues the run with its own settings; "
                                          rf"these differ from it: {name} \(run .*, given .*\)\. Leave them out"):
        train(given, show_progress=False)
    assert _hash(run / "checkpoint.pt") == before


def test_resume_accepts_the_same_files_by_another_path_and_changes_of_how_it_runs(toy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(Path(toy["pre_sparse"]).parent, run)
    monkeypatch.chdir(toy["root"])
    given = TrainConfig(**{**PRETRAIN, "log_every_steps": 5}, data=["binary.h5"], device="cpu", out=str(run), resume=True)
    result = train(given, show_progress=False)
    assert result.finished and result.config.device == "cpu" and result.config.log_every_steps == 5
    assert result.config.data == [str(toy["binary"])]  # the run's own setting


def test_cli_resume_refuses_a_given_lr_and_ignores_the_unset_options(toy, tmp_path):
    from typer.testing import CliRunner

    from b2s_cli.app import app

    run = tmp_path / "run"
    shutil.copytree(Path(toy["pre_sparse"]).parent, run)
    refused = CliRunner().invoke(app, ["pretrain", "--resume", "--out", str(run), "--lr", "0.1", "--data", str(toy["semantic"])])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert "lr (run 0.0002, given 0.1)" in refused.output and "data (run [" in refused.output
    resumed = CliRunner().invoke(app, ["pretrain", "--resume", "--out", str(run), "--device", "cpu", "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output


def test_steps_redone_after_a_resume_are_logged_once(toy, tmp_path):
    """A run killed after step 4 whose last checkpoint is at step 2 redoes steps 3 and 4."""
    settings = dict(PRETRAIN, data=[str(toy["binary"])], epochs=2, max_steps=5, **{"batch_size": 1})
    straight = tmp_path / "straight"
    train(TrainConfig(**settings, out=str(straight)), show_progress=False)
    run = tmp_path / "run"
    train(TrainConfig(**settings, out=str(run), stop_after_steps=2), show_progress=False)
    shutil.copy(run / "checkpoint.pt", tmp_path / "step2.pt")
    train(TrainConfig(**settings, out=str(run), resume=True, stop_after_steps=4), show_progress=False)
    shutil.copy(tmp_path / "step2.pt", run / "checkpoint.pt")  # killed after step 4: the last checkpoint is step 2's
    assert train(TrainConfig(**settings, out=str(run), resume=True), show_progress=False).finished

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in lines if r["kind"] == "info"] == [0, 2, 2]  # one per start
    with open(run / "train.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5]
    for a, b in zip(read_metrics(straight / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7), a["step"]


def test_torchrun_two_processes_end_with_identical_parameters(toy, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, torch
        from b2s_core.train.config import TrainConfig
        from b2s_core.train.loop import train
        config = TrainConfig(stage="pretrain", model="sparse-ls", preset="tiny", data=[{str(toy["binary"])!r}],
                             out={str(tmp_path / "ddp")!r}, epochs=1, batch_size=2, workers=0, device="cpu",
                             log_every_steps=1, warmup_steps=0)
        result = train(config, show_progress=False)
        torch.save(result.model.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver)],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0 if not k.endswith("num_batches_tracked") and "running" not in k)
    records = read_metrics(tmp_path / "ddp" / "metrics.jsonl", kind="info")
    assert records[0]["world_size"] == 2
    # 4 frames, global batch 2 over 2 processes: 2 steps; the weights moved away from the pre-training start
    assert [r["step"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_tiny_model_overfits_two_synthetic_frames(tmp_path):
    """Binary IoU >= 90 and mIoU >= 80 on the two training frames after 120 steps (~1-2 min on one core).

    The toy grid is 16 m wide, so the depth bins are set to cover 1-13 m at 1 m (instead of the
    road-scale 1-45 m at 4 m of the tiny preset) and the volumes run at half the tiny preset's strides.
    """
    data = write_toy_dataset(tmp_path / "two.h5", 2, seed=5, boxes=5, box_size=(4, 9))
    config = TrainConfig(stage="finetune", model="sparse-ls", preset="tiny", semantic_data=[data], val_data=[data],
                         out=str(tmp_path / "overfit"), epochs=120, batch_size=2, workers=0, augment=False, lr=3e-3,
                         schedule="constant", warmup_steps=0, log_every_steps=20, val_every_epochs=120, ckpt_every_epochs=120,
                         model_overrides=dict(compact_stride=(4, 4, 2), binary_stride=(2, 2, 1), depth_max=13.0,
                                              depth_step=1.0))
    metrics = train(config, show_progress=False).state.metrics
    assert metrics["binary_iou"] >= 90.0, metrics
    assert metrics["miou"] >= 80.0, metrics


def test_finetuning_on_another_grid_of_the_same_shape_keeps_every_weight(toy):
    from b2s_core.grids import VoxelGrid

    grid = VoxelGrid((-6.4, -6.4, -1.0), (6.4, 6.4, 2.2), (0.4, 0.4, 0.4), "toy-0.4")  # 32 x 32 x 8 like the toy grid
    semantic = write_toy_dataset(toy["root"] / "semantic04.h5", 2, seed=4, grid=grid)
    out = toy["root"] / "ft-grid"
    result = train(TrainConfig(stage="finetune", init=str(toy["pre_sparse"]), semantic_data=[semantic], out=str(out),
                               epochs=1, max_steps=1, **TINY), show_progress=False)
    info = read_metrics(out / "metrics.jsonl", kind="info")[0]
    assert info["init"].endswith("new: 0")
    assert result.model.config.output_grid.same_geometry(grid)
