"""Metrics of a run: JSONL (every record), CSV (one file per record kind), TensorBoard with the
``tensorboard`` extra (without it, one warning).

Only the main process writes. Files are appended to, so a resumed run continues the same logs. A
run killed after its last checkpoint logged steps that the resumed run does again: resuming from
the checkpoint's step first drops the records of later steps (metrics.jsonl, the CSV files and
TensorBoard's events through its ``purge_step``), so each step appears once, as the run that went on
logged it. ``read_metrics`` still keeps the last record of a step (logs of older versions).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

from b2s_core.output_paths import atomic_path


class MetricsLog:
    def __init__(self, out_dir: str | Path, enabled: bool = True, *, resumed_at: int | None = None):
        """``resumed_at``: the step of the checkpoint a resumed run starts from; records of later steps are dropped."""
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if resumed_at is not None:
                self._drop_after(resumed_at)
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard extra
            except ImportError as err:
                # An optional extra: the run goes on with its JSONL and CSV logs, and says once why
                # there are no TensorBoard scalars.
                reason = ("the tensorboard package is not installed (pip install 'b2s[tensorboard]')"
                          if importlib.util.find_spec("tensorboard") is None else str(err))
                warnings.warn(f"no TensorBoard logs: {reason}; metrics.jsonl and the CSV files are written")
            else:
                purge = None if resumed_at is None else resumed_at + 1  # hides the events of steps >= purge
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

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

    def _drop_after(self, step: int) -> None:
        """Rewrite metrics.jsonl and the CSV files without the records of steps after ``step``."""
        kinds = set()
        if self.jsonl_path.is_file():
            kept = []
            for line in self.jsonl_path.read_text().splitlines():
                record = json.loads(line)
                kinds.add(record.get("kind"))
                if not _after(record.get("step"), step):
                    kept.append(line + "\n")
            _replace(self.jsonl_path, "".join(kept))
        for kind in sorted(k for k in kinds if k):
            csv_path = self.out_dir / f"{kind}.csv"
            if not csv_path.is_file():
                continue
            with open(csv_path, newline="") as f:
                rows = list(csv.reader(f))
            if not rows or "step" not in rows[0]:
                continue
            column = rows[0].index("step")
            kept_rows = [rows[0]] + [row for row in rows[1:]
                                     if not _after(row[column] if column < len(row) else None, step)]
            text = io.StringIO()
            csv.writer(text).writerows(kept_rows)
            _replace(csv_path, text.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _after(value: Any, step: int) -> bool:
    """Whether a record's step (a number, or its text in a CSV cell) lies after ``step``; no step: no."""
    try:
        return int(float(value)) > step
    except (TypeError, ValueError):
        return False


def _replace(path: Path, text: str) -> None:
    # Temporary file + rename: a crash leaves the old log or the new one, never half of one.
    with atomic_path(path) as temp:
        temp.write_text(text, newline="")  # CSV rows keep their own line ends


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
