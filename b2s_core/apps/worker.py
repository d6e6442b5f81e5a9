"""One torchrun worker of a data-parallel inference job: ``python -m b2s_core.apps.worker JOB.json``.

:func:`b2s_core.apps.launch.launch` writes ``JOB.json`` (``{"kind": ..., "args": ...}``) and starts
the workers; each runs the job's application (which takes its own share of the scenes through
``join_ranks``), rank 0 leaves the result beside the job file, and a rank that fails leaves its
one-line error there instead. The applications import :mod:`b2s_core.apps.launch`; only this module
imports both, so the two never import each other.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from b2s_core.apps.autolabel import AutolabelConfig, autolabel
from b2s_core.apps.evaluate import EvaluateConfig, evaluate_checkpoint
from b2s_core.apps.launch import ERROR_NAME, RESULT_NAME, WORKER_MODULE, JobKind, leave_ranks
from b2s_core.errors import B2SError
from b2s_core.output_paths import atomic_path


def _autolabel(args: dict) -> dict | None:
    report = autolabel(args["checkpoint"], args["data_path"], args["out_path"], AutolabelConfig(**args["config"]))
    if report is None:
        return None
    out = asdict(report)
    out["path"] = str(report.path)
    return out


def _evaluate_checkpoint(args: dict) -> dict | None:
    config = dict(args["config"])
    config["default_lidar_origin"] = tuple(config["default_lidar_origin"])
    result = evaluate_checkpoint(args["checkpoint"], args["data_path"], args["predictions_path"],
                                 EvaluateConfig(**config), device=args["device"], batch_size=args["batch_size"],
                                 num_workers=args["num_workers"], tta=args["tta"])
    return None if result is None else asdict(result)  # full precision (NaN kept): the parent prints these numbers


# Each job's result on rank 0 (JSON values), None on the other ranks.
JOBS: dict[JobKind, Callable[[dict], dict | None]] = {
    "autolabel": _autolabel,
    "evaluate-checkpoint": _evaluate_checkpoint,
}


def main(argv: list[str] | None = None) -> int:
    """Run the job of ``JOB.json`` as this rank; its B2SError goes to ``error-rank<r>.txt``, exit code 1."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {WORKER_MODULE} JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    try:
        job = json.loads(job_path.read_text())
        result = JOBS[job["kind"]](job["args"])
        if result is not None:  # rank 0 only
            with atomic_path(job_path.with_name(RESULT_NAME)) as temp:
                temp.write_text(json.dumps(result))
    except B2SError as err:
        if os.environ.get("B2S_DEBUG"):
            raise
        job_path.with_name(ERROR_NAME.format(rank=rank)).write_text(f"{err} (rank {rank})\n")
        return 1
    finally:
        leave_ranks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
