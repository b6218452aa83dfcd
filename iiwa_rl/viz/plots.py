"""Learning curves from run directories' CSV logs.

    iiwa-rl plot RUN_DIR [RUN_DIR ...] -o curves.png [--x step|wall_time|both]

Top row, from eval.csv (deterministic evaluations): success rate, mean return and the
task's headline metric (its env's `headline_metric`, iiwa_rl/metrics.py: final TCP
distance for reach, max cube lift for grasp; the episode length for an env without one).
Bottom row, from metrics.csv (training): success rate and return over the last 100
training episodes, and the critic's loss. A row is left out when no run has its file.

Several runs are grouped by their configuration with the seed left out, so the seeds of one
config form one group, drawn as the mean across its runs with a min-max band. Groups are
labelled "<algorithm> on <env id>", plus the settings that tell apart groups that would
otherwise share a label (e.g. "ppo on IiwaReach-v0 (ppo.learning_rate=0.001)").
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from iiwa_rl.metrics import Metric

# Config keys that differ between runs of one experiment and must not split a group.
RUN_SPECIFIC_KEYS = {
    "seed",
    "device",
    "train.progress",
    "train.torch_threads",
    "train.update_threads",
    "env.handover_spin_s",  # how long processes poll: changes the speed, not a number
}

EVAL_PANELS: list[tuple[tuple[str, ...], str]] = [
    (("success_rate",), "evaluation success rate"),
    (("mean_return",), "evaluation return"),
    (("mean_length",), ""),  # after the runs' headline metrics: the first one present
]
TRAIN_PANELS: list[tuple[tuple[str, ...], str]] = [
    (("success_rate",), "training success rate (last 100 episodes)"),
    (("episode_return",), "training return (last 100 episodes)"),
    (("value_loss", "critic_loss"), ""),
]
COLUMN_TITLES = {
    "mean_length": "episode length (steps)",
    "value_loss": "value loss",
    "critic_loss": "critic loss",
}
LOG_SCALE_COLUMNS = {"value_loss", "critic_loss"}


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV log as float arrays (NaN where a cell is empty or not a number)."""
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


# ---------------------------------------------------------------------- grouping
def _flatten(mapping: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def _run_config(run_dir: Path) -> dict[str, str]:
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    flat = _flatten(data) if isinstance(data, dict) else {}
    return {k: v for k, v in flat.items() if k not in RUN_SPECIFIC_KEYS}


def _headline_metrics(run_dirs: list[Path]) -> dict[str, Metric]:
    """The headline metric of each run's environment (from its config's env.id), by its
    evaluation column, in the runs' order."""
    from iiwa_rl.metrics import headline_metric

    found: dict[str, Metric] = {}
    for env_id in dict.fromkeys(_env_id(run_dir) for run_dir in run_dirs):
        metric = headline_metric(_env_class(env_id)) if env_id else None
        if metric is not None:
            found.setdefault(metric.column_name, metric)
    return found


def _env_id(run_dir: Path) -> str | None:
    value = _run_config(run_dir).get("env.id")
    return json.loads(value) if value else None


def _env_class(env_id: str):
    """The class an env id names, without making the environment; None where it cannot be
    found (the plot then goes without the task's headline)."""
    from gymnasium.envs.registration import load_env_creator

    from iiwa_rl.env_ids import find_env_spec
    from iiwa_rl.schema import ConfigError

    try:
        entry_point = find_env_spec(str(env_id)).entry_point
        return load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    except (ConfigError, ImportError, AttributeError):
        return None


def _base_label(config: dict[str, str], run_dir: Path) -> str:
    if not config:
        return run_dir.name
    algorithm = json.loads(config.get("algorithm", '"?"'))
    env_id = json.loads(config.get("env.id", '"?"'))
    return f"{algorithm} on {env_id}"


def group_runs(run_dirs: list[Path], labels: list[str] | None = None) -> dict[str, list[Path]]:
    """Runs grouped by configuration (seed aside), keyed by a readable label."""
    if labels is not None:
        groups: dict[str, list[Path]] = defaultdict(list)
        for label, run_dir in zip(labels, run_dirs):
            groups[label].append(run_dir)
        return dict(groups)
    by_config: dict[str, list[Path]] = defaultdict(list)
    configs: dict[str, dict[str, str]] = {}
    for run_dir in run_dirs:
        config = _run_config(run_dir)
        # Runs without a config.yaml cannot be matched with anything: each is its own group.
        key = json.dumps(config, sort_keys=True) if config else f"dir:{run_dir.resolve()}"
        by_config[key].append(run_dir)
        configs[key] = config
    base = {key: _base_label(configs[key], dirs[0]) for key, dirs in by_config.items()}
    labelled: dict[str, list[Path]] = {}
    for key, dirs in by_config.items():
        label = base[key]
        siblings = [other for other in by_config if other != key and base[other] == label]
        if siblings:
            # Name the settings in which this group differs from the others of its label.
            mine = configs[key]
            differing = sorted(
                name
                for name in set(mine).union(*(configs[o] for o in siblings))
                if any(mine.get(name) != configs[o].get(name) for o in siblings)
            )
            shown = [
                f"{name}={json.loads(mine[name]) if name in mine else '-'}"
                for name in differing[:2]
            ]
            if len(differing) > 2:
                shown.append(f"+{len(differing) - 2} more")
            label = f"{label} ({', '.join(shown)})"
            if label in labelled:  # the shown settings did not tell them apart
                label = f"{label} [{dirs[0].name}]"
        labelled[label] = dirs
    return labelled


# ----------------------------------------------------------------------- curves
def _band(
    curves: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max of curves resampled onto a shared x grid (the span all cover)."""
    start = max(x[0] for x, _ in curves)
    end = min(x[-1] for x, _ in curves)
    grid = np.linspace(start, end, 200) if end > start else np.array([start])
    stacked = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, stacked.mean(0), stacked.min(0), stacked.max(0)


def _curves(
    dirs: list[Path], file: str, column: str, x_axis: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    curves = []
    for run_dir in dirs:
        data = read_csv(run_dir / file)
        if column not in data or x_axis not in data:
            continue
        mask = np.isfinite(data[column]) & np.isfinite(data[x_axis])
        if mask.any():
            order = np.argsort(data[x_axis][mask], kind="stable")
            curves.append((data[x_axis][mask][order], data[column][mask][order]))
    return curves


def _pick_column(
    groups: dict[str, list[Path]], file: str, candidates: tuple[str, ...]
) -> str | None:
    for column in candidates:
        for dirs in groups.values():
            if any(column in read_csv(d / file) for d in dirs):
                return column
    return None


def plot_runs(
    run_dirs: list[Path | str],
    output: Path | str,
    labels: list[str] | None = None,
    x_axis: str = "step",
) -> Path:
    """Write a PNG of the runs' evaluation and training curves against `x_axis`
    ('step', 'wall_time', or 'both': each row twice, against steps, then against
    wall-clock). Raises ValueError when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    if x_axis not in ("step", "wall_time", "both"):
        raise ValueError(f"x_axis must be 'step', 'wall_time' or 'both', got {x_axis!r}")
    x_axes = ("step", "wall_time") if x_axis == "both" else (x_axis,)
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("no run directories given")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    for run_dir in run_dirs:
        if not (run_dir / "metrics.csv").exists() and not (run_dir / "eval.csv").exists():
            raise ValueError(f"{run_dir}: no metrics.csv or eval.csv to plot")
    groups = group_runs(run_dirs, labels)
    headlines = _headline_metrics(run_dirs)
    # The third evaluation panel: the runs' headline metrics first, then the fallback.
    (fallback, fallback_title) = EVAL_PANELS[2]
    eval_panels = [*EVAL_PANELS[:2], ((*headlines, *fallback), fallback_title)]
    titles = {**{c: m.column_title for c, m in headlines.items()}, **COLUMN_TITLES}
    log_scale = LOG_SCALE_COLUMNS | {c for c, m in headlines.items() if m.log_scale}

    rows = []
    for x in x_axes:
        for file, panels in (("eval.csv", eval_panels), ("metrics.csv", TRAIN_PANELS)):
            chosen = [
                (_pick_column(groups, file, candidates), title) for candidates, title in panels
            ]
            if any(
                column and _curves(dirs, file, column, x)
                for column, _ in chosen
                for dirs in groups.values()
            ):
                rows.append((x, file, chosen))
    if not rows:
        raise ValueError("no rows to plot yet in eval.csv or metrics.csv")

    figure, axes = plt.subplots(len(rows), 3, figsize=(14, 3.6 * len(rows) + 0.6), squeeze=False)
    for row_axes, (x, file, chosen) in zip(axes, rows):
        x_label = "environment steps" if x == "step" else "wall-clock time (s)"
        for axis, (column, title) in zip(row_axes, chosen):
            axis.set_title(title or titles.get(column or "", column or ""), fontsize=10)
            axis.set_xlabel(x_label, fontsize=9)
            axis.grid(alpha=0.3)
            axis.xaxis.set_major_formatter(FuncFormatter(_short_number))
            if column is None:
                axis.set_axis_off()
                continue
            drew = _draw_groups(axis, groups, file, column, x)
            if not drew:
                axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
                continue
            axis.set_xlim(left=0)  # eval and training rows line up from the first step
            if column == "success_rate":
                axis.set_ylim(-0.02, 1.02)
            if column in log_scale and _all_positive(axis):
                axis.set_yscale("log")
    handles, legend_labels = [], []
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in legend_labels:
                handles.append(handle)
                legend_labels.append(label)
    figure.legend(
        handles,
        legend_labels,
        loc="lower center",
        ncol=min(3, len(legend_labels)),
        fontsize=9,
        frameon=False,
    )
    # Fixed margins: tight_layout measured every tick label and took most of the time.
    legend_band = 0.75 / figure.get_figheight()  # inches kept for the legend below
    figure.subplots_adjust(
        left=0.06,
        right=0.985,
        top=1 - 0.35 / figure.get_figheight(),
        bottom=legend_band + 0.45 / figure.get_figheight(),
        wspace=0.22,
        hspace=0.42,
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=90)
    plt.close(figure)
    return output


def _draw_groups(axis, groups: dict[str, list[Path]], file: str, column: str, x_axis: str) -> bool:
    drew = False
    for index, (label, dirs) in enumerate(groups.items()):
        curves = _curves(dirs, file, column, x_axis)
        if not curves:
            continue
        drew = True
        color = f"C{index % 10}"
        if len(curves) == 1:
            x, y = curves[0]
            style = "-o" if file == "eval.csv" else "-"
            axis.plot(x, y, style, color=color, markersize=3, linewidth=1.5, label=label)
        else:
            grid, mean, low, high = _band(curves)
            axis.plot(
                grid,
                mean,
                color=color,
                linewidth=1.5,
                label=f"{label}: mean, min-max of {len(curves)} runs",
            )
            axis.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    return drew


def _all_positive(axis) -> bool:
    values = [line.get_ydata() for line in axis.get_lines()]
    return bool(values) and all(np.all(np.asarray(v, dtype=float) > 0) for v in values)


def _short_number(value: float, _position=None) -> str:
    """Tick label: 250000 -> 250k, 1500000 -> 1.5M (full numbers overlap)."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"
