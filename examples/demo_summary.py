"""The demo's last screen: the wall time of every step and the scores on the held-out scene against
the targets the demo is meant to reach (examples/run_demo.sh; docs/demo.md says where they come from).

    python examples/demo_summary.py demo_out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

# What "the model has learned the scene" means for the demo (issue 13 of the project): the online
# model finds the ground *and* what stands on it; the offboard model, handed the occupancy, does
# clearly better.
ONLINE_TARGETS = {"miou": 20.0, "geometry_iou": 50.0, "car": 15.0, "manmade": 15.0, "vegetation": 15.0}
OFFBOARD_OVER_ONLINE = 1.5


def class_iou(scores: dict, name: str) -> float | None:
    if name not in scores["class_names"]:
        return None
    return scores["iou"][scores["class_names"].index(name)]


def main(out: Path) -> int:
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the score table
        console = Console(width=100)
    times = out / "step_times.tsv"
    if times.is_file():
        table = Table(title="wall time of each step (this run; a finished step is skipped when rerun)")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        total = 0.0
        for line in times.read_text().splitlines():
            name, seconds = line.rsplit("\t", 1)
            table.add_row(name, f"{float(seconds):.0f}")
            total += float(seconds)
        table.add_row("[bold]all[/]", f"[bold]{total:.0f}[/] ({total / 60:.1f} min)")
        console.print(table)

    online = json.loads((out / "evaluation.json").read_text())
    offboard = json.loads((out / "evaluation-offboard.json").read_text())
    table = Table(title="held-out scene-0003: IoU in % (Occ3D protocol, camera mask); ✓ / ✗ against the targets")
    for column in ("Sparse-LS", "mIoU", "geometry IoU", "car", "manmade", "vegetation", "binary decoder", "RayIoU"):
        table.add_column(column, justify="left" if column == "Sparse-LS" else "right", no_wrap=True)

    def cell(value: float | None, target: float | None = None) -> str:
        if value is None:
            return "-"
        if target is None:
            return f"{value:.1f}"
        return f"{value:.1f} [green]✓[/]" if value >= target else f"{value:.1f} [red]✗[/]"

    for name, scores in (("online", online), ("offboard", offboard)):
        is_online = scores is online
        miou_target = ONLINE_TARGETS["miou"] if is_online else OFFBOARD_OVER_ONLINE * online["miou"]
        table.add_row(name, cell(scores["miou"], miou_target),
                      cell(scores["geometry_iou"], ONLINE_TARGETS["geometry_iou"] if is_online else None),
                      *(cell(class_iou(scores, c), ONLINE_TARGETS[c] if is_online else None)
                        for c in ("car", "manmade", "vegetation")),
                      cell(scores.get("binary_iou")), cell(scores.get("rayiou")))
    console.print(table)
    console.print("online: pre-trained on binary logs, fine-tuned S+B; offboard: handed the GT binary grid")
    console.print(f"targets: online mIoU >= {ONLINE_TARGETS['miou']:g}, geometry IoU >= {ONLINE_TARGETS['geometry_iou']:g}, "
                  f"car / manmade / vegetation >= 15 each; offboard mIoU >= {OFFBOARD_OVER_ONLINE:g} x the online model's "
                  f"({OFFBOARD_OVER_ONLINE * online['miou']:.1f}). docs/demo.md: what the tiny CPU model reaches and why.")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out")))
