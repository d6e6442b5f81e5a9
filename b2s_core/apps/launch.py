"""Data-parallel inference: ``b2s autolabel`` / ``b2s evaluate --checkpoint`` as N processes.

``--gpus N`` (N > 1) re-launches the job through ``torch.distributed.run``:

    python -m torch.distributed.run --standalone --nproc_per_node N -m b2s_core.apps.launch JOB.json

Each worker (rank r of N) takes its share of the scenes (:func:`b2s_core.shards.balanced_shares`: equal total
frames, whole scenes), runs the model on ``cuda:LOCAL_RANK`` (or the CPU, over Gloo), and writes
its part; rank 0 merges the parts in the data file's scene order and sums the metric counts, so the
outputs equal those of a one-process run. The launching process keeps the output locks
(``b2s_core.output_paths.claim_outputs`` in the CLI): the workers claim nothing.

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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from b2s_core.errors import B2SError
from b2s_core.output_paths import atomic_path
from b2s_core.shards import balanced_shares

# A finished rank waits at the merge for the slowest one; with balanced shares that is short, but a
# long labelling job on unequal GPUs must not hit the process group's default 30-minute timeout.
_WAIT = timedelta(hours=12)
_ERROR_NAME = "error-rank{rank}.txt"
_RESULT_NAME = "result.json"


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
        import torch.distributed as dist

        dist.barrier()

    def sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The element-wise sums over all ranks of integer arrays (one all-reduce for all of them)."""
        import torch.distributed as dist

        flat = np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays]) if arrays else np.zeros(0, np.int64)
        total = torch.from_numpy(flat).to(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        dist.all_reduce(total)
        summed, out, start = total.cpu().numpy(), [], 0
        for a in arrays:
            size = int(np.asarray(a).size)
            out.append(summed[start:start + size].reshape(np.shape(a)))
            start += size
        return out


def inside_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def join_ranks(device: str) -> Ranks | None:
    """The process group of the torchrun job this process belongs to, or None outside torchrun (or
    in a one-process job): the caller then does the whole job alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=_WAIT)
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, cuda=cuda)


# -- the launching process ---------------------------------------------------------------------------
def torchrun_command(job_path: str | Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "b2s_core.apps.launch", str(job_path)]


def launch(kind: str, args: dict, *, gpus: int, device: str) -> dict:
    """Run job ``kind`` (see :data:`JOBS`) with ``args`` as ``gpus`` torchrun workers; rank 0's result.

    The workers' output goes to a log that is shown only when they fail; a worker's B2SError comes
    back as that one line.
    """
    if kind not in JOBS:
        raise InferenceLaunchError(f"unknown job '{kind}' (known: {', '.join(JOBS)})")
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
            code = subprocess.run(torchrun_command(job, gpus), env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
        errors = sorted(folder.glob(_ERROR_NAME.format(rank="*")))
        if errors:
            raise InferenceLaunchError(errors[0].read_text().strip())
        if code != 0 or not (folder / _RESULT_NAME).is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise InferenceLaunchError(f"{gpus}-process {kind} failed with exit code {code}; the workers' last output:\n{tail}")
        return json.loads((folder / _RESULT_NAME).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _autolabel(args: dict) -> dict | None:
    from dataclasses import asdict

    from b2s_core.apps.autolabel import AutolabelConfig, autolabel

    report = autolabel(args["checkpoint"], args["data_path"], args["out_path"], AutolabelConfig(**args["config"]))
    if report is None:
        return None
    out = asdict(report)
    out["path"] = str(report.path)
    return out


def _evaluate_checkpoint(args: dict) -> dict | None:
    from dataclasses import asdict

    from b2s_core.apps.evaluate import EvaluateConfig, evaluate_checkpoint

    config = dict(args["config"])
    config["default_lidar_origin"] = tuple(config["default_lidar_origin"])
    result = evaluate_checkpoint(args["checkpoint"], args["data_path"], args["predictions_path"], EvaluateConfig(**config),
                                 device=args["device"], batch_size=args["batch_size"], num_workers=args["num_workers"],
                                 tta=args["tta"])
    return None if result is None else asdict(result)  # full precision (NaN kept): the parent prints these numbers


JOBS = {"autolabel": _autolabel, "evaluate-checkpoint": _evaluate_checkpoint}


def main(argv: list[str] | None = None) -> int:
    """Entry point of each torchrun worker: ``python -m b2s_core.apps.launch JOB.json``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m b2s_core.apps.launch JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    try:
        job = json.loads(job_path.read_text())
        result = JOBS[job["kind"]](job["args"])
        if result is not None:  # rank 0 only
            with atomic_path(job_path.with_name(_RESULT_NAME)) as temp:
                temp.write_text(json.dumps(result))
    except B2SError as err:
        if os.environ.get("B2S_DEBUG"):
            raise
        job_path.with_name(_ERROR_NAME.format(rank=rank)).write_text(f"{err} (rank {rank})\n")
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
