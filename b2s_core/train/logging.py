"""Metrics of a run: JSONL (every record), CSV (one file per record kind), TensorBoard if installed.

Only the main process writes. Files are appended to, so a resumed run continues the same logs;
readers take the last record of each step when a crash made a step appear twice.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                self._tb = None

    @property
    def jsonl_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def log(self, kind: str, record: dict[str, Any]) -> None:
        """Append one record of ``kind`` ('train' or 'val'); scalar values only."""
        if not self.enabled:
            return
        record = {"kind": kind, **record}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        csv_path = self.out_dir / f"{kind}.csv"
        new_file = not csv_path.exists()
        columns = list(record) if new_file else _header(csv_path)
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(record)
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_metrics(path: str | Path, kind: str = "train") -> list[dict[str, Any]]:
    """Records of ``kind`` from a run's metrics.jsonl, the last one per step kept, in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == kind:
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]
