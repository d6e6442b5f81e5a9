"""Reproduce the paper's claims in miniature on the synthetic world: one command, tables and plots.

    python examples/reproduce_paper.py --scale smoke                  # CI: the pipeline, minutes
    python examples/reproduce_paper.py --scale default --pilot --jobs 2 # the pilot curves that fixed the settings
    python examples/reproduce_paper.py --scale default --jobs 2       # the claims: ~90 min on 2 CPU cores
    python examples/reproduce_paper.py --scale gpu                    # bigger world and model

Builds the world with the toolkit's own engine (b2s synth -> build-binary for the binary-only
scenes, convert + Occ3D labels for the labelled and validation scenes), runs the cells of claims
C1..C5 (3 seeds per cell), and writes docs/results.md plus docs/images/results_*.png. --pilot runs
the few longer runs whose validation curves fixed the scale's training settings (docs/reproduce.md)
and draws docs/images/reproduce_pilot.png. Resumable: finished cells are cached under --work and
skipped; run the same command again to continue.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from reproduce.cells import make_cells, pilot_cells  # noqa: E402
from reproduce.report import log_new_verdicts, write_pilot_report, write_report  # noqa: E402
from reproduce.runner import check_settings, run_cells  # noqa: E402
from reproduce.scales import SCALES  # noqa: E402
from reproduce.world import build_world  # noqa: E402

from b2s_core.errors import B2SError  # noqa: E402


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def record_invocation(work: Path, scale: str, jobs: int, started: float, ended: float) -> None:
    """Append this invocation (when, how parallel, how long) to <work>/invocations.json for the report."""
    import json

    path = work / "invocations.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries.append({"scale": scale, "jobs": jobs, "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "wall_minutes": round((ended - started) / 60, 1), "host_cpus": os.cpu_count()})
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(entries, indent=1))
    temp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: python examples/reproduce_paper.py --scale smoke --work /tmp/repro")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="size of the world, model and runs")
    parser.add_argument("--work", type=Path, default=None, help="work folder (world, runs, cached cell results); "
                        "default runs/reproduce-<scale>")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where results.md and images/ go")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained in parallel (one CPU core each)")
    parser.add_argument("--seeds", type=int, default=None, help="use only the first S seeds of the scale (says so in the report)")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="start no new cell after this many minutes; the report shows what finished")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the cached cells")
    parser.add_argument("--pilot", action="store_true", help="run the pilot (longer runs of one seed, their curves) "
                        "instead of the claims")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    scale = SCALES[args.scale]
    if args.seeds is not None:
        if not 1 <= args.seeds <= len(scale.seeds):
            parser.error(f"--seeds must be between 1 and {len(scale.seeds)}")
        from dataclasses import replace

        scale = replace(scale, seeds=scale.seeds[: args.seeds])
    work = (args.work or REPO / "runs" / f"reproduce-{scale.name}").resolve()
    deadline = time.time() + 60 * args.deadline_minutes if args.deadline_minutes else None
    started = time.perf_counter()
    log(f"reproduce: scale '{scale.name}'{' pilot' if args.pilot else ''}, work folder {work}")
    # The pilot's cells live in their own folder: its runs are longer than the claims' and never mix with them.
    cells, cell_scale, cell_work = ((pilot_cells(scale), scale.pilot(), work / "pilot") if args.pilot
                                    else (make_cells(scale), scale, work))
    failed: dict[str, str] = {}
    if not args.report_only:
        try:
            world = build_world(work / "world", scale, workers=args.jobs, log=log)
            check_settings(cell_work, cell_scale)
        except B2SError as err:  # one line, no traceback (B2S_DEBUG=1 for the traceback)
            if os.environ.get("B2S_DEBUG"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 1
        verdicts = None if args.pilot else (lambda: log_new_verdicts(cells, scale, work, log))
        failed, ran = run_cells(cells, world, cell_scale, cell_work, jobs=args.jobs, log=log, deadline=deadline,
                                on_result=verdicts)
        if ran:
            record_invocation(cell_work, scale.name, args.jobs, started, time.perf_counter())
    if args.pilot:
        paths, table = write_pilot_report(cells, scale, cell_work, args.docs / "images")
        print(table)
    else:
        paths = write_report(cells, scale, work, args.docs, failed=failed)
    log(f"reproduce: wrote {', '.join(str(p) for p in paths)}")
    if failed:
        log(f"reproduce: {len(failed)} cell(s) did not finish: {', '.join(sorted(failed))[:400]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
