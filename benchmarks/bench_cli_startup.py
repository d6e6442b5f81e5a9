"""Start-up time and memory of ``b2s`` commands, against a bare ``python -c pass``.

Each command runs in a fresh process, ``--repeats`` times; the table shows the median wall time, its
ratio to the bare interpreter's, the peak resident memory, and, from ``python -X importtime``,
which chain of imports brought torch in (none: the command never loads it). ``b2s info`` reads a
real file: the Occ3D sample (../shared/data/occ3d-sample/labels.npz) written as a one-frame
unified file, as a user's first look at a file would be.

    python benchmarks/bench_cli_startup.py [--repeats 5] [--out benchmarks/results/cli_startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "occ3d-sample" / "labels.npz"
B2S = [sys.executable, "-m", "b2s_cli.app"]  # the interpreter of this run, whatever `b2s` is on PATH


def write_sample(path: Path) -> Path:
    """The real Occ3D frame as a one-frame unified file (what ``b2s convert`` would write of it)."""
    # Imported here, not at the top: the measuring process (--measure) must stay a bare interpreter,
    # since a child's peak memory counts what it shared with its parent before exec.
    import numpy as np

    from b2s_core.grids import GRID_PRESETS
    from b2s_core.occfile import OccWriter
    from b2s_core.records import OccFrame
    from b2s_core.taxonomy import OCC3D

    raw = np.load(SAMPLE)
    semantics = raw["semantics"]
    frame = OccFrame(scene="sample", token="sample-0", timestamp=0, global_from_ego=np.eye(4), cameras=[],
                     occupancy=semantics != OCC3D.free_index, semantics=semantics,
                     mask_lidar=raw["mask_lidar"].astype(bool), mask_camera=raw["mask_camera"].astype(bool))
    with OccWriter(path, grid=GRID_PRESETS["occ3d"], taxonomy=OCC3D, source="occ3d", command="bench") as writer:
        writer.write_scene("sample", [frame])
    return path


def run_once(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak resident MB, exit code) of one run of ``argv``."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # wait4: this child's own resource usage
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)  # ru_maxrss: KB on Linux


def torch_chain(argv: list[str]) -> str:
    """'a > b > torch': the imports that led to torch in one run of ``argv``; '' when torch was not imported.

    ``-X importtime`` prints a module after everything it imported, indented two spaces per level,
    so a module's importer is the next line printed one level shallower.
    """
    lines = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True).stderr.splitlines()
    modules = []
    for line in lines:
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.split("|")[2]
            modules.append(((len(name) - len(name.lstrip())) // 2, name.strip()))
    start = next((i for i, (_, name) in enumerate(modules) if name == "torch"), None)
    if start is None:
        return ""
    chain, depth = ["torch"], modules[start][0]
    for level, name in modules[start + 1:]:
        if level < depth:
            chain.append(name)
            depth = level
    return " > ".join(reversed(chain))


def measure(cases: dict[str, list[str]], repeats: int) -> list[dict]:
    rows = []
    for label, argv in cases.items():
        runs = [run_once(argv) for _ in range(repeats)]
        rows.append({"command": label, "seconds": statistics.median(s for s, _, _ in runs),
                     "peak_mb": max(m for _, m, _ in runs), "exit_code": runs[-1][2], "torch_via": torch_chain(argv)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # internal: cases JSON on stdin
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.load(sys.stdin), args.repeats)))
        return
    if not SAMPLE.is_file():
        sys.exit(f"error: {SAMPLE}: Occ3D sample not found")
    with tempfile.TemporaryDirectory() as tmp:
        sample = write_sample(Path(tmp) / "occ3d-sample.h5")
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "b2s --help": [*B2S, "--help"],
            "b2s --version": [*B2S, "--version"],
            f"b2s info ({sample.stat().st_size / 1024:.0f} KB file)": [*B2S, "info", str(sample)],
            **{f"b2s {name} --help": [*B2S, name, "--help"]
               for name in ("align", "curves", "export", "synth", "convert", "build-binary", "visualize", "evaluate")},
        }
        # Measured from a fresh, bare interpreter (see write_sample), not from this one.
        measured = subprocess.run([sys.executable, __file__, "--measure", "--repeats", str(args.repeats)],
                                  input=json.dumps(cases), capture_output=True, text=True, check=True)
    rows = json.loads(measured.stdout)
    bare = rows[0]["seconds"]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"b2s start-up, median of {args.repeats} fresh processes ({os.cpu_count()} cores)")
    for column in ("command", "seconds", "x python -c pass", "peak MB", "exit", "torch imported via"):
        table.add_column(column, justify="right" if column in ("seconds", "x python -c pass", "peak MB", "exit") else "left")
    for row in rows:
        table.add_row(row["command"], f"{row['seconds']:.2f}", f"{row['seconds'] / bare:.1f}", f"{row['peak_mb']:.0f}",
                      str(row["exit_code"]), row["torch_via"] or "-")
    Console(width=max(Console().width, 160)).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "python_c_pass_seconds": bare, "rows": rows}, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
