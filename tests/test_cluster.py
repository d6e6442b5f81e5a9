"""Running on a cluster: balanced shards, ``--shard auto`` from a SLURM job array, training under a
bare ``srun`` (SLURM tasks mapped to ranks) and across two torchrun "nodes" on this machine."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _convert_data import wrap_nuscenes_keyframe, write_tiny_nuplan, write_tiny_openscene

from b2s_core.data.toy import write_toy_dataset
from b2s_core.models.checkpoint import read_checkpoint
from b2s_core.train.config import ConfigError, TrainConfig
from b2s_core.train.launch import launch
from b2s_core.train.logging import read_metrics
from b2s_core.train.slurm import slurm_ranks
from converters import open_reader
from converters.errors import ConverterError
from converters.jobs.scene_run import balanced_shards, parse_shard, select_scenes
from converters.readers.base import SceneReader

REPO = Path(__file__).resolve().parents[1]


# -- balanced shards ---------------------------------------------------------------------------------
def test_greedy_longest_first_on_a_hand_computed_case():
    # a(5) -> 0; b(4) -> 1; d(3) -> 1 (4 < 5; d comes before c in the dataset); c(3) -> 0 (5 < 7): totals 8 and 7
    assert balanced_shards({"d": 3, "c": 3, "b": 4, "a": 5}, 2) == [["c", "a"], ["d", "b"]]
    # equal lengths: ties go by dataset order, then to the lowest shard (the same in every process)
    assert balanced_shards({"s2": 1, "s0": 1, "s1": 1}, 2) == [["s2", "s1"], ["s0"]]


class _Lengths(SceneReader):
    """A plug-in reader of scenes of known, unequal lengths; reads no frame."""

    def __init__(self, lengths: dict[str, int], counted: bool = True) -> None:
        self.lengths, self.counted, self.asked = lengths, counted, []

    def scene_names(self):
        return list(self.lengths)

    def read_scene(self, name, on_error=None):
        raise AssertionError("sharding must not read frames")

    def scene_length(self, name):
        self.asked.append(name)
        return self.lengths[name] if self.counted else super().scene_length(name)


LENGTHS = {"scene-a": 40, "scene-b": 3, "scene-c": 17, "scene-d": 25, "scene-e": 8, "scene-f": 30, "scene-g": 1,
           "scene-h": 12, "scene-i": 19, "scene-j": 6}


@pytest.mark.parametrize("count", [2, 3, 4])
def test_shards_hold_every_scene_once_with_frame_totals_within_the_longest_scene(count):
    reader = _Lengths(LENGTHS)
    shards = [select_scenes(reader, (i, count), Path("root")) for i in range(count)]
    names = [name for shard in shards for name in shard]
    assert sorted(names) == sorted(LENGTHS) and len(names) == len(set(names))
    totals = [sum(LENGTHS[n] for n in shard) for shard in shards]
    assert max(totals) - min(totals) <= max(LENGTHS.values())
    for shard in shards:  # dataset order within a shard, as an unsharded run writes them
        assert shard == [n for n in LENGTHS if n in shard]
    # every N-th scene (the old rule) gives 3 shards of 72, 23 and 66 frames; these are 55, 53 and 53
    if count == 3:
        assert max(totals) - min(totals) <= 2


def test_an_unsharded_run_asks_no_length_and_a_plugin_without_one_gets_equal_scene_counts():
    reader = _Lengths(LENGTHS)
    assert select_scenes(reader, (0, 1), Path("root")) == list(LENGTHS) and reader.asked == []
    plain = _Lengths(LENGTHS, counted=False)  # the SceneReader default: 1 per scene
    sizes = [len(select_scenes(plain, (i, 3), Path("root"))) for i in range(3)]
    assert sorted(sizes) == [3, 3, 4]


def test_a_bad_scene_length_and_an_empty_shard_are_one_line_errors():
    with pytest.raises(ConverterError, match=r"scene_length\('scene-a'\) returned -1"):
        select_scenes(_Lengths({"scene-a": -1, "scene-b": 2}), (0, 2), Path("root"))
    with pytest.raises(ConverterError, match=r"root: no scene selected \(shard 2/3 of 2 scenes\)"):
        select_scenes(_Lengths({"scene-a": 1, "scene-b": 2}), (2, 3), Path("root"))


def test_builtin_readers_count_the_frames_they_read(tmp_path, nuscenes_keyframe):
    # nuPlan: 3 scenes of 32 sweeps (4 key frames at 0.5 s), then scene-0001 cut to its first 12 sweeps
    root = tmp_path / "nuplan"
    truth = write_tiny_nuplan(root, scenes=3, sweeps_per_scene=32)
    with sqlite3.connect(truth["db"]) as con:
        (scene_token,) = con.execute("SELECT token FROM scene WHERE name = 'scene-0001'").fetchone()
        late = con.execute("SELECT token FROM lidar_pc WHERE scene_token = ? ORDER BY timestamp", (scene_token,)).fetchall()[12:]
        con.executemany("DELETE FROM lidar_pc WHERE token = ?", late)
    wrap_nuscenes_keyframe(nuscenes_keyframe, tmp_path / "nuscenes")
    write_tiny_openscene(tmp_path / "openscene", tmp_path / "os-labels", scenes=2, frames_per_scene=3)
    readers = {"nuplan": open_reader("nuplan", root), "nuscenes": open_reader("nuscenes", tmp_path / "nuscenes"),
               "openscene": open_reader("openscene", tmp_path / "openscene")}
    lengths = {source: {name: reader.scene_length(name) for name in reader.scene_names()}
               for source, reader in readers.items()}
    assert lengths["nuplan"] == {"scene-0000": 4, "scene-0001": 2, "scene-0002": 4}
    assert list(lengths["nuscenes"].values()) == [1] and list(lengths["openscene"].values()) == [3, 3]
    for source, reader in readers.items():
        for name, length in lengths[source].items():
            assert length == sum(1 for _ in reader.read_scene(name, on_error=lambda *a: None)), (source, name)
    # 2 shards of the unequal nuPlan scenes: 4 + 2 frames against 4 (every other scene: 4 + 4 against 2)
    assert [select_scenes(readers["nuplan"], (i, 2), root) for i in (0, 1)] == [["scene-0000", "scene-0001"], ["scene-0002"]]


# -- --shard auto --------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}, (3, 8)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}, (3, 8)),  # --array=1-8
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_MAX": "6"}, (3, 5)),  # no COUNT
    ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "12",
      "SLURM_ARRAY_TASK_STEP": "4"}, (2, 4)),  # --array=0-12:4
])
def test_shard_auto_reads_the_slurm_array(monkeypatch, env, expected):
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parse_shard("auto") == expected


@pytest.mark.parametrize("env, message", [
    ({}, "--shard auto: not inside a SLURM job array"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, "but not SLURM_ARRAY_TASK_MAX"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not a whole number"),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, "array task 7 is not one of 3"),
])
def test_shard_auto_outside_a_usable_array_is_one_line(env, message):
    with pytest.raises(ConverterError, match=message) as caught:
        parse_shard("auto", env)
    assert "\n" not in str(caught.value)


def test_cli_shard_auto_outside_an_array_exits_with_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from b2s_cli.app import app

    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    result = CliRunner().invoke(app, ["build-binary", "--source", "nuplan", "--dataroot", str(tmp_path),
                                      "--out", str(tmp_path / "b.h5"), "--shard", "auto"])
    assert result.exit_code == 1 and "not inside a SLURM job array" in result.output
    assert "Traceback" not in result.output


# -- srun without torchrun -----------------------------------------------------------------------------
SRUN = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu[07-08]"}


def _fake_scontrol(folder: Path) -> str:
    """A PATH with an 'scontrol' that expands gpu[07-08] as SLURM's does (one host a line)."""
    folder.mkdir()
    tool = folder / "scontrol"
    tool.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    tool.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_srun_tasks_become_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_scontrol(tmp_path / "bin"))
    assert slurm_ranks(SRUN) == {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                                 "MASTER_PORT": str(20000 + 123456 % 20000)}
    # srun's own step variables first; a set MASTER_ADDR / MASTER_PORT is kept
    step = {**SRUN, "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "cpu3,cpu4", "MASTER_PORT": "29400"}
    assert slurm_ranks(step) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "cpu3", "MASTER_PORT": "29400"}
    assert slurm_ranks({**SRUN, "MASTER_ADDR": "10.0.0.1"})["MASTER_ADDR"] == "10.0.0.1"


def test_nothing_to_map_under_torchrun_one_task_or_no_slurm():
    assert slurm_ranks({**SRUN, "RANK": "0", "WORLD_SIZE": "8"}) is None  # srun around torchrun
    assert slurm_ranks({**SRUN, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert slurm_ranks({"PATH": "/bin"}) is None


def test_srun_without_a_way_to_find_the_first_host_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    with pytest.raises(ConfigError, match=r"first host of 'gpu\[07-08\]' needs 'scontrol show hostnames'"):
        slurm_ranks(SRUN)
    with pytest.raises(ConfigError, match="SLURM_PROCID 4 is not a task of 4"):
        slurm_ranks({**SRUN, "SLURM_PROCID": "4", "MASTER_ADDR": "h"})


def test_the_cli_path_under_a_bare_srun_refuses_and_leaves_the_config_for_the_worker_module(tmp_path, monkeypatch):
    for name, value in {**SRUN, "SLURM_JOB_NODELIST": "gpu07"}.items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = TrainConfig(stage="pretrain", model="sparse-ls", data=["x.h5"], out=str(tmp_path / "run"), preset="tiny")
    with pytest.raises(ConfigError, match=r"one of 4 srun tasks, which would each train alone; wrote .*launch.yaml") as caught:
        launch(config, 1)
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path / "run") == ["launch.yaml"]  # nothing trained


# -- two processes that find each other as a cluster would -----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launch_yaml(tmp_path_factory):
    """A tiny pre-training run (4 frames, global batch 2: 2 steps) as the launch.yaml of two runs."""
    root = tmp_path_factory.mktemp("cluster")
    binary = write_toy_dataset(root / "binary.h5", 4, scenes=2, seed=1, with_semantics=False)

    def make(name: str) -> Path:
        config = TrainConfig(stage="pretrain", model="sparse-ls", preset="tiny", data=[binary], out=str(root / name),
                             epochs=1, batch_size=2, workers=0, device="cpu", log_every_steps=1, warmup_steps=0)
        (root / name).mkdir()
        config.save_yaml(root / name / "launch.yaml")
        return root / name / "launch.yaml"

    return make


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "B2S_NO_PROGRESS": "1"}


def _finish(processes: list[subprocess.Popen]) -> None:
    try:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoint.pt")["model"]


@pytest.fixture(scope="module")
def srun_run(launch_yaml):
    """2 'srun tasks' (SLURM variables only, no torchrun) each running the worker module."""
    config = launch_yaml("srun")
    port = str(_free_port())
    tasks = [subprocess.Popen([sys.executable, "-m", "b2s_core.train.launch", str(config)], cwd=config.parent,
                              env={**_base_env(), "SLURM_PROCID": str(i), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(i),
                                   "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    _finish(tasks)
    return config.parent


def test_srun_tasks_train_as_one_run_of_two_ranks(srun_run):
    assert read_metrics(srun_run / "metrics.jsonl", kind="info")[0]["world_size"] == 2
    assert [r["step"] for r in read_metrics(srun_run / "metrics.jsonl")] == [1, 2]  # 4 frames / global batch 2, logged once
    assert sorted(p.name for p in srun_run.glob("*.pt")) == ["checkpoint.pt"]


def test_two_torchrun_nodes_on_localhost_equal_the_srun_run(launch_yaml, srun_run):
    config = launch_yaml("nodes")
    endpoint = f"localhost:{_free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "b2s-test",
                               "-m", "b2s_core.train.launch", str(config)],
                              cwd=config.parent, env=_base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    _finish(nodes)
    run = config.parent
    assert read_metrics(run / "metrics.jsonl", kind="info")[0]["world_size"] == 2
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in run.glob("*.pt")) == ["checkpoint.pt"]
    # the same 2-rank job however the ranks found each other: the same weights, bit for bit
    nodes_weights, srun_weights = _weights(run), _weights(srun_run)
    assert nodes_weights.keys() == srun_weights.keys()
    assert all(torch.equal(nodes_weights[k], srun_weights[k]) for k in nodes_weights)


@pytest.mark.parametrize("script", sorted((REPO / "examples" / "slurm").glob("*.sbatch")), ids=lambda p: p.name)
def test_example_sbatch_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH" in script.read_text()
