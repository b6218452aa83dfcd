"""Run logging: CSV files (the source for plots), TensorBoard, and the console progress.

metrics.csv holds one row per update (DDPG: per `ddpg.log_every_steps`), eval.csv one row per
evaluation. Both are appended as the run goes and truncated back to the checkpoint's
step on resume, so a resumed run's curves have no duplicated stretch.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path


class CsvLog:
    """Append-only CSV whose columns grow when a new key appears (the file is rewritten
    then, which happens a handful of times per run at most)."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        if path.exists() and path.stat().st_size > 0:
            with path.open() as handle:
                self.columns = next(csv.reader(handle), [])

    def write(self, row: dict) -> None:
        new = [key for key in row if key not in self.columns]
        if new:
            rows = self.read() if self.columns else []
            self.columns += new
            self._rewrite(rows)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns, restval="").writerow(row)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_after(self, step: int) -> None:
        """Drop rows logged past `step` (they belong to work a resume will redo)."""
        rows = [row for row in self.read() if float(row.get("step") or 0) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        partial = self.path.with_suffix(".csv.partial")
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        partial.replace(self.path)


class TensorBoardLog:
    """TensorBoard scalars, if the tensorboard package is importable."""

    def __init__(self, directory: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time: CSV always works
            self.writer = None
            return
        self.writer = SummaryWriter(str(directory), purge_step=purge_step)

    def write(self, prefix: str, row: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A live tqdm bar on a terminal; in quiet mode (logs, CI) a line per evaluation only."""

    def __init__(self, total_steps: int, mode: str = "auto", stream=None, initial: int = 0):
        self.stream = stream or sys.stderr
        self.live = mode == "bar" or (mode == "auto" and self.stream.isatty())
        self.bar = None
        if self.live:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=initial,  # a resumed run's bar starts where the checkpoint was
                unit="step",
                unit_scale=True,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.25,
            )

    def update(self, step: int, episode_return: float, success: float) -> None:
        if self.bar is None:
            return
        # tqdm shows the rate and the ETA itself; the postfix says how training goes.
        self.bar.set_postfix_str(
            f"return {episode_return:.2f}, success {success:.1%}", refresh=False
        )
        self.bar.update(step - self.bar.n)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)  # above the bar, which redraws below
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
