"""Data-parallel inference: ``b2s autolabel`` / ``b2s evaluate --checkpoint`` as N processes.

``--gpus N`` (N > 1) re-launches the job through ``torch.distributed.run``:

    python -m torch.distributed.run --standalone --nproc_per_node N -m b2s_core.apps.worker JOB.json

Each worker (rank r of N) takes its share of the scenes (:func:`b2s_core.shards.balanced_shares`: equal total
frames, whole scenes), runs the model on ``cuda:LOCAL_RANK`` (or the CPU, over Gloo), and writes
its part; rank 0 merges the parts in the data file's scene order and sums the metric counts, so the
outputs equal those of a one-process run. The launching process keeps the output locks
(``b2s_core.output_paths.claim_outputs`` in the CLI): the workers claim nothing.

This module holds both sides of that plumbing and knows nothing of the jobs: :func:`launch` in the
launching process, :class:`Ranks` / :func:`join_ranks` in the workers. The applications import it;
:mod:`b2s_core.apps.worker`, which each worker runs, imports the applications.

Training has its own launcher (``b2s_core.train.launch``); this one does not import the training
package, so that inference does not load it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.distributed as dist

from b2s_core.errors import B2SError
from b2s_core.occfile import SceneInfo
from b2s_core.shards import balanced_shares

# A finished rank waits at the merge for the slowest one; with balanced shares that is short, but a
# long labelling job on unequal GPUs must not hit the process group's default 30-minute timeout.
_WAIT = timedelta(hours=12)
# What the workers leave in the job's folder for the launching process.
ERROR_NAME = "error-rank{rank}.txt"
RESULT_NAME = "result.json"
WORKER_MODULE = "b2s_core.apps.worker"

JobKind = Literal["autolabel", "evaluate-checkpoint"]  # the jobs b2s_core.apps.worker runs
JOB_KINDS: tuple[str, ...] = get_args(JobKind)


class InferenceLaunchError(B2SError):
    """The worker processes of a multi-process inference run failed."""


# -- inside the workers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranks:
    """This process's place among the workers of one job (torchrun's RANK / WORLD_SIZE / LOCAL_RANK)."""

    rank: int
    world_size: int
    local_rank: int
    cuda: bool  # NCCL over CUDA devices, else Gloo over the CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this rank for a job that asked for ``device``: its own GPU, or the CPU."""
        return f"cuda:{self.local_rank}" if self.cuda else device

    def share(self, sizes: Sequence[int]) -> list[int]:
        """Indices of the scenes (``sizes``: frames per scene) this rank handles, ascending."""
        return balanced_shares(sizes, self.world_size)[self.rank]

    def barrier(self) -> None:
        dist.barrier()

    def sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The element-wise sums over all ranks of integer arrays (one all-reduce for all of them)."""
        if arrays:
            flat = np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays])
        else:
            flat = np.zeros(0, np.int64)
        total = torch.from_numpy(flat).to(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        dist.all_reduce(total)
        summed, out, start = total.cpu().numpy(), [], 0
        for a in arrays:
            size = int(np.asarray(a).size)
            out.append(summed[start:start + size].reshape(np.shape(a)))
            start += size
        return out


def my_scenes(scenes: Sequence[SceneInfo], ranks: Ranks | None) -> list[SceneInfo]:
    """The scenes this process handles: all of them alone, its balanced share as one of ``ranks``."""
    if ranks is None:
        return list(scenes)
    return [scenes[i] for i in ranks.share([len(scene) for scene in scenes])]


def inside_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def join_ranks(device: str) -> Ranks | None:
    """The process group of the torchrun job this process belongs to, or None outside torchrun (or
    in a one-process job): the caller then does the whole job alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    cuda = device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=_WAIT)
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, cuda=cuda)


def leave_ranks() -> None:
    """Close this worker's process group, if it joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- the launching process ---------------------------------------------------------------------------
def torchrun_command(job_path: str | Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", WORKER_MODULE, str(job_path)]


def launch(kind: JobKind, args: dict, *, gpus: int, device: str) -> dict:
    """Run job ``kind`` with ``args`` as ``gpus`` torchrun workers; rank 0's result.

    The workers' output goes to a log that is shown only when they fail; a worker's B2SError comes
    back as that one line.
    """
    if kind not in JOB_KINDS:
        raise InferenceLaunchError(f"unknown job '{kind}' (known: {', '.join(JOB_KINDS)})")
    if device.startswith("cuda") and torch.cuda.device_count() < gpus:
        raise InferenceLaunchError(f"--gpus {gpus} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    folder = Path(tempfile.mkdtemp(prefix="b2s-launch-"))
    try:
        job = folder / "job.json"
        job.write_text(json.dumps({"kind": kind, "args": args}))
        env = dict(os.environ)
        # torchrun would pin every worker to one thread; share the cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
        log = folder / "workers.log"
        with open(log, "wb") as sink:
            command = torchrun_command(job, gpus)
            code = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
        errors = sorted(folder.glob(ERROR_NAME.format(rank="*")))
        if errors:
            raise InferenceLaunchError(errors[0].read_text().strip())
        if code != 0 or not (folder / RESULT_NAME).is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise InferenceLaunchError(f"{gpus}-process {kind} failed with exit code {code}; "
                                       f"the workers' last output:\n{tail}")
        return json.loads((folder / RESULT_NAME).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
