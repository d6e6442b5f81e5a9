"""Start a training run in this process, or as N processes through ``torch.distributed.run``.

``b2s pretrain --gpus 4 ...`` writes the resolved config to ``<out>/launch.yaml`` and runs

    python -m torch.distributed.run --standalone --nproc_per_node 4 -m b2s_core.train.launch <out>/launch.yaml

which is also the command to use (with torchrun's multi-node flags instead of ``--standalone``) to
run the same job across machines. On CPU (``--device cpu``) the processes talk over Gloo, so the
multi-process path can be tested without GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from b2s_core.errors import B2SError
from b2s_core.train.config import ConfigError, TrainConfig, read_config_file
from b2s_core.train.loop import CHECKPOINT_NAME, TrainResult, train
from b2s_core.train.slurm import slurm_ranks


class LaunchError(B2SError):
    """The worker processes of a multi-process run failed."""


def torchrun_command(config_path: str | Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "b2s_core.train.launch", str(config_path)]


def launch(config: TrainConfig, gpus: int = 1, *, show_progress: bool = True) -> TrainResult | Path:
    """Train with ``gpus`` processes on this machine.

    One process (or already inside torchrun): trains here and returns the TrainResult. Several:
    re-launches through torch.distributed.run, waits, and returns the run's checkpoint path.
    """
    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    srun = slurm_ranks(os.environ)
    if srun is not None:
        # Every task of a bare srun runs this whole command and claims --out, so only one of them
        # gets here. It leaves the resolved config for the worker module (one rank per task, no claim).
        config_path = Path(config.out) / "launch.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config.save_yaml(config_path)
        raise ConfigError(f"{config.out}: started as one of {srun['WORLD_SIZE']} srun tasks, which would each train "
                          f"alone; wrote {config_path}: run 'srun python -m b2s_core.train.launch {config_path}' (one "
                          "rank per task) or one task per node running torchrun (docs/training.md, Multi-node and "
                          "SLURM)")
    if gpus == 1 or "WORLD_SIZE" in os.environ:
        return train(config, show_progress=show_progress)
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if wants_cuda and torch.cuda.device_count() < gpus:
        raise ConfigError(f"--gpus {gpus} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "launch.yaml"
    config.save_yaml(config_path)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if not show_progress:
        env["B2S_NO_PROGRESS"] = "1"
    result = subprocess.run(torchrun_command(config_path, gpus), env=env)
    if result.returncode != 0:
        raise LaunchError(f"{config_path}: {gpus}-process training failed with exit code {result.returncode} "
                          "(see the messages above)")
    return out / CHECKPOINT_NAME


def main(argv: list[str] | None = None) -> int:
    """Entry point of each torchrun worker: ``python -m b2s_core.train.launch CONFIG.yaml``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m b2s_core.train.launch CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        config = TrainConfig.from_dict(read_config_file(argv[0]), where=argv[0])
        train(config, show_progress=not os.environ.get("B2S_NO_PROGRESS"))
    except B2SError as err:
        if os.environ.get("B2S_DEBUG"):
            raise
        print(f"error (rank {os.environ.get('RANK', '0')}): {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
