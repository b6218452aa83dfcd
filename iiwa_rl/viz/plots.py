"""Learning curves from run directories' CSV logs.

One run: its training success rate and return (from metrics.csv) and its deterministic
evaluations (eval.csv) against environment steps. Several runs: grouped by their label
(default: the config's file stem recorded in the run, so seeds of one config group
together), each group drawn as the mean across runs with a min-max band.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_csv(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, np.ndarray] = {}
    for key in rows[0].keys() if rows else []:
        values = []
        for row in rows:
            try:
                values.append(float(row[key]))
            except (TypeError, ValueError):
                values.append(np.nan)
        columns[key] = np.asarray(values)
    return columns


def _label(run_dir: Path) -> str:
    import yaml

    config_path = run_dir / "config.yaml"
    if config_path.exists():
        config = yaml.safe_load(config_path.read_text()) or {}
        return f"{config.get('algorithm', '?')} on {config.get('env', {}).get('id', '?')}"
    return run_dir.name


def _band(
    curves: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max of curves resampled onto a shared step grid."""
    end = min(steps[-1] for steps, _ in curves)
    grid = np.linspace(max(steps[0] for steps, _ in curves), end, 200)
    stacked = np.stack([np.interp(grid, steps, values) for steps, values in curves])
    return grid, stacked.mean(0), stacked.min(0), stacked.max(0)


def plot_runs(
    run_dirs: list[Path | str],
    output: Path | str,
    labels: list[str] | None = None,
    x_axis: str = "step",
) -> Path:
    """Write a PNG of success rate and return against `x_axis` ('step' or 'wall_time')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    groups: dict[str, list[Path]] = defaultdict(list)
    for index, run_dir in enumerate(run_dirs):
        if not (run_dir / "metrics.csv").exists() and not (run_dir / "eval.csv").exists():
            raise ValueError(f"{run_dir}: no metrics.csv or eval.csv to plot")
        groups[labels[index] if labels else _label(run_dir)].append(run_dir)

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = [("success_rate", "success rate"), ("mean_return", "evaluation return")]
    drew = False
    for color_index, (label, dirs) in enumerate(groups.items()):
        color = f"C{color_index}"
        for axis, (column, title) in zip(axes, panels):
            curves = []
            for run_dir in dirs:
                data = read_csv(run_dir / "eval.csv")
                if column not in data or x_axis not in data or len(data[x_axis]) < 1:
                    continue
                mask = np.isfinite(data[column])
                if mask.sum() >= 1:
                    curves.append((data[x_axis][mask], data[column][mask]))
            if not curves:
                continue
            drew = True
            if len(curves) == 1:
                steps, values = curves[0]
                axis.plot(steps, values, "-o", color=color, markersize=3, label=label)
            else:
                grid, mean, low, high = _band(curves)
                axis.plot(grid, mean, color=color, label=f"{label} (mean of {len(curves)})")
                axis.fill_between(grid, low, high, color=color, alpha=0.2)
            axis.set_title(title)
            axis.set_xlabel("environment steps" if x_axis == "step" else "wall-clock time (s)")
            axis.grid(alpha=0.3)
    if not drew:
        plt.close(figure)
        raise ValueError("no evaluation rows to plot yet")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
