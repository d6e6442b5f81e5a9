"""Training under SLURM's ``srun`` without torchrun: each task becomes one rank.

``srun --ntasks 8 b2s pretrain ...`` starts 8 copies of the same command. Without help each would
see no ``RANK`` / ``WORLD_SIZE`` (torchrun sets those) and train alone, all 8 writing the same run
folder. :func:`slurm_ranks` turns the task's SLURM variables into torch.distributed's:

    RANK          SLURM_PROCID
    WORLD_SIZE    SLURM_STEP_NUM_TASKS (the tasks of this srun step), else SLURM_NTASKS
    LOCAL_RANK    SLURM_LOCALID (the GPU index on its node)
    MASTER_ADDR   first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST (task 0 runs there), through
                  ``scontrol show hostnames`` when the list is compressed (``node[01-03]``)
    MASTER_PORT   20000 + SLURM_JOB_ID mod 20000: the same in every task of the job, different for
                  jobs sharing a node

A MASTER_ADDR or MASTER_PORT already set is kept. When the first host cannot be found the run is
refused in one line rather than left to start N independent runs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

from b2s_core.train.config import ConfigError

_PORT_BASE = 20000  # above the well-known and registered ports most clusters use, below the ephemeral range


def slurm_ranks(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The torch.distributed variables for this srun task, or None when there is nothing to map.

    None: torchrun (or the user) already set RANK / WORLD_SIZE, or this is not a step of more than
    one SLURM task. Raises :class:`ConfigError` when the variables are malformed or the first host of
    the node list cannot be found.
    """
    if "RANK" in environ or "WORLD_SIZE" in environ:
        return None
    tasks_text = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
    if tasks_text is None or "SLURM_PROCID" not in environ:
        return None
    try:
        tasks, rank = int(tasks_text), int(environ["SLURM_PROCID"])
        local_rank = int(environ.get("SLURM_LOCALID", "0"))
        job = int(environ.get("SLURM_JOB_ID", "0"))
    except ValueError as err:
        raise ConfigError(f"srun: a SLURM task variable is not a whole number ({err})") from None
    if tasks <= 1:
        return None
    if not 0 <= rank < tasks:
        raise ConfigError(f"srun: SLURM_PROCID {rank} is not a task of {tasks}")
    address = environ.get("MASTER_ADDR") or _first_host(environ, tasks)
    port = environ.get("MASTER_PORT") or str(_PORT_BASE + job % _PORT_BASE)
    return {"RANK": str(rank), "WORLD_SIZE": str(tasks), "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": address, "MASTER_PORT": port}


def _first_host(environ: Mapping[str, str], tasks: int) -> str:
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodes:
        raise ConfigError(f"srun started {tasks} tasks but SLURM_JOB_NODELIST is not set: set MASTER_ADDR "
                          "to the host of task 0, or start one task per node running torchrun")
    if "[" not in nodes:  # a plain list: 'gpu7' or 'gpu7,gpu9'
        return nodes.split(",")[0]
    # Compressed lists ('gpu[07-09,12],cpu3') have a grammar of their own: SLURM's tool expands them.
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise ConfigError(f"srun started {tasks} tasks but finding the first host of {nodes!r} needs "
                          "'scontrol show hostnames', which is not on PATH: set MASTER_ADDR, or start one "
                          "task per node running torchrun")
    try:
        shown = subprocess.run([scontrol, "show", "hostnames", nodes], capture_output=True, text=True,
                               timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        raise ConfigError(f"srun: 'scontrol show hostnames {nodes}' failed ({err}): set MASTER_ADDR") from None
    if not shown:
        raise ConfigError(f"srun: 'scontrol show hostnames {nodes}' listed no host: set MASTER_ADDR")
    return shown[0]


__all__ = ["slurm_ranks"]
