"""`iiwa-rl sweep`: seeds x settings of one config, as trials on Ray Tune.

    iiwa-rl sweep CONFIG --seeds 0 1 2 [--grid key=v1,v2 ...] [--set key=value ...]
                  [--address auto|local|HOST:PORT] [--out DIR] [--cpus-per-trial C]
                  [--threshold 0.9]

Each trial is one ordinary training run (train.Trainer) in its own run directory,
OUT/<setting>/seed<N>, so `iiwa-rl eval`, `plot` and `train --resume` work on it as on any
run. Running the same command again resumes: a trial whose directory holds a checkpoint
continues from it (a finished one only reports again), one killed before its first
checkpoint starts over. Tune schedules the trials onto the cluster's CPUs
(`--cpus-per-trial` each); its own bookkeeping goes to OUT/tune.

At the end, from the run directories' eval.csv (not from Tune's results, so a resumed
sweep summarises every trial, old and new):

    OUT/summary.csv, OUT/summary.md  per setting: trials; final success and final return
                                     as mean, standard deviation and a 95 % confidence
                                     interval (Student t over the seeds); how many trials
                                     reached `--threshold` success, and the mean steps
                                     and wall-clock seconds they took to reach it
    OUT/curves.png                   every trial's evaluation curves, one colour per setting
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from iiwa_rl.schema import ConfigError

# Two-sided 95 % quantiles of Student's t by degrees of freedom (1..30); beyond, ~normal.
_T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
          2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
          2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


@dataclass(frozen=True)
class Trial:
    setting: tuple[tuple[str, object], ...]  # (key, value) pairs of the grid
    seed: int

    @property
    def label(self) -> str:
        return setting_label(self.setting)


def setting_label(setting) -> str:
    return ",".join(f"{key}={_yaml_value(value)}" for key, value in setting) or "default"


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", label)


def parse_grid(items: list[str]) -> list[tuple[str, list]]:
    """``["ppo.learning_rate=1e-3,3e-4"]`` as [(key, [values])]; values are YAML."""
    from iiwa_rl.config import parse_yaml

    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        parsed = [parse_yaml(text) for text in values.split(",")]
        if len(set(map(repr, parsed))) != len(parsed):
            raise ConfigError(f"--grid {item!r}: a value is given twice")
        grid.append((key, parsed))
    keys = [key for key, _ in grid]
    if len(set(keys)) != len(keys):
        raise ConfigError("--grid: a key is given twice")
    if "seed" in keys:
        raise ConfigError("--grid: give seeds with --seeds")
    return grid


def make_trials(grid: list[tuple[str, list]], seeds: list[int]) -> list[Trial]:
    keys = [key for key, _ in grid]
    settings = [tuple(zip(keys, values)) for values in itertools.product(*(v for _, v in grid))]
    return [Trial(setting, seed) for setting in settings for seed in seeds]


def trial_dir(out: Path, trial: Trial) -> Path:
    return Path(out) / _slug(trial.label) / f"seed{trial.seed}"


def trial_overrides(base: list[str], trial: Trial) -> list[str]:
    return [
        *base,
        *(f"{key}={_yaml_value(value)}" for key, value in trial.setting),
        f"seed={trial.seed}",
        "train.progress=quiet",
    ]


def run_trial(config_path: str, overrides: list[str], run_dir: str) -> dict:
    """One trial: train (or resume) the run in `run_dir`; the final evaluation's figures."""
    from iiwa_rl import run_dir as runs
    from iiwa_rl.config import load_config
    from iiwa_rl.train import Trainer

    run_dir_path = Path(run_dir)
    config = load_config(config_path, overrides)
    resume = runs.checkpoint_path(run_dir_path, "last").is_file()
    if not resume and run_dir_path.exists():
        # Killed before its first checkpoint: nothing to resume, and a fresh run does not
        # mix its logs with those rows.
        shutil.rmtree(run_dir_path)
    if resume:
        config = runs.read_run_config(run_dir_path)  # the run's own, as `train --resume`
    summary = Trainer(config, run_dir_path, resume=resume).train()
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def _trial_name(tune_trial) -> str:
    """Tune's name for a trial: its run directory's, e.g. default-seed0."""
    run_dir = Path(tune_trial.config["trial"]["run_dir"])
    return f"{run_dir.parent.name}-{run_dir.name}"


def _tune_trainable(params: dict) -> None:
    from ray import tune

    trial = params["trial"]  # grid_search puts the trial's entry under its key
    tune.report(run_trial(trial["config"], trial["overrides"], trial["run_dir"]))


def run_sweep(
    config_path: str | Path,
    seeds: list[int],
    grid_items: list[str] | None = None,
    out: str | Path = "runs/sweep",
    overrides: list[str] | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    threshold: float = 0.9,
) -> list[dict]:
    """Run the trials on Ray Tune, then write the summary and the figure; the summary rows."""
    from iiwa_rl.config import load_config

    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("sweep needs Ray Tune: pip install 'iiwa-rl[ray]'") from None
    from iiwa_rl.ray_rollouts import _code_paths

    out = Path(out).resolve()
    config_path = str(Path(config_path).resolve())  # trials run in other directories
    base = list(overrides or [])
    trials = make_trials(parse_grid(grid_items or []), seeds)
    for trial in trials:  # every trial's config is refused here, before any work
        load_config(config_path, trial_overrides(base, trial))
    out.mkdir(parents=True, exist_ok=True)

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(
            address=address or "local",
            include_dashboard=False,
            logging_level="warning",
            # Trials import this checkout's code on every node of the machine.
            runtime_env={
                "env_vars": {"PYTHONPATH": os.pathsep.join(_code_paths()), "OMP_NUM_THREADS": "1"}
            },
        )
    try:
        params = [
            {
                "config": config_path,
                "overrides": trial_overrides(base, trial),
                "run_dir": str(trial_dir(out, trial)),
            }
            for trial in trials
        ]
        tuner = tune.Tuner(
            tune.with_resources(_tune_trainable, {"cpu": cpus_per_trial}),
            param_space={"trial": tune.grid_search(params)},
            tune_config=tune.TuneConfig(
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(out),
                verbose=0,
                # a failed trial is tried again: it resumes from its run directory
                failure_config=tune.FailureConfig(max_failures=2),
            ),
        )
        results = tuner.fit()
        errors = [str(result.error) for result in results if result.error is not None]
    finally:
        if owns_ray:
            ray.shutdown()
    rows = summarize(out, trials, threshold)
    plot_trials(out, trials, out / "curves.png")
    if errors:
        raise RuntimeError(
            f"{len(errors)} trial(s) failed; the summary covers the others:\n" + "\n".join(errors)
        )
    return rows


# ---------------------------------------------------------------------- summary
def _mean_std_ci(values: list[float]) -> tuple[float, float, float, float]:
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = float(np.mean(values))
    if n == 1:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    t = _T_975[n - 2] if n - 1 <= len(_T_975) else 1.96
    half = t * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def _eval_rows(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "eval.csv"
    if not path.is_file():
        return []
    with path.open() as file:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(file)
        ]


def summarize(out: Path, trials: list[Trial], threshold: float) -> list[dict]:
    """Write OUT/summary.csv and OUT/summary.md; one row per setting."""
    by_setting: dict[str, list[Trial]] = {}
    for trial in trials:
        by_setting.setdefault(trial.label, []).append(trial)
    rows = []
    for label, group in by_setting.items():
        finals, returns, steps_to, seconds_to = [], [], [], []
        finished = 0
        for trial in group:
            evaluations = _eval_rows(trial_dir(out, trial))
            if not evaluations:
                continue
            finished += 1
            finals.append(evaluations[-1].get("success_rate", math.nan))
            returns.append(evaluations[-1].get("mean_return", math.nan))
            reached = next(
                (row for row in evaluations if row.get("success_rate", 0.0) >= threshold), None
            )
            if reached is not None:
                steps_to.append(reached["step"])
                seconds_to.append(reached["wall_time"])
        success = _mean_std_ci(finals)
        ret = _mean_std_ci(returns)
        rows.append(
            {
                "setting": label,
                "trials": finished,
                "success_mean": success[0],
                "success_std": success[1],
                "success_ci95_low": success[2],
                "success_ci95_high": success[3],
                "return_mean": ret[0],
                "return_std": ret[1],
                "return_ci95_low": ret[2],
                "return_ci95_high": ret[3],
                "threshold": threshold,
                "reached_threshold": len(steps_to),
                "steps_to_threshold_mean": float(np.mean(steps_to)) if steps_to else math.nan,
                "seconds_to_threshold_mean": float(np.mean(seconds_to)) if seconds_to else math.nan,
            }
        )
    with (out / "summary.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(summary_markdown(rows))
    return rows


def summary_markdown(rows: list[dict]) -> str:
    def pm(row, name, fmt):
        mean, std = row[f"{name}_mean"], row[f"{name}_std"]
        low, high = row[f"{name}_ci95_low"], row[f"{name}_ci95_high"]
        text = format(mean, fmt)
        if not math.isnan(std):
            text += f" ± {std:{fmt}} [{low:{fmt}}, {high:{fmt}}]"
        return text

    lines = [
        "| setting | trials | final success: mean ± std [95 % CI] | final return: mean ± std [95 % CI] "
        "| reached success >= threshold | steps to it (mean) | seconds to it (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['trials']} | {pm(row, 'success', '.3f')} "
            f"| {pm(row, 'return', '.2f')} | {row['reached_threshold']}/{row['trials']} "
            f"(>= {row['threshold']:g}) | {_or_dash(row['steps_to_threshold_mean'])} "
            f"| {_or_dash(row['seconds_to_threshold_mean'])} |"
        )
    return "\n".join(lines) + "\n"


def _or_dash(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0f}"


def plot_trials(out: Path, trials: list[Trial], path: Path) -> Path:
    """Every trial's evaluation success and return against steps; a colour per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(trial.label for trial in trials))
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for trial in trials:
        evaluations = _eval_rows(trial_dir(out, trial))
        if not evaluations:
            continue
        colour = colours(labels.index(trial.label) % 10)
        steps = [row["step"] for row in evaluations]
        for axis, column in zip(axes, ("success_rate", "mean_return")):
            axis.plot(
                steps,
                [row.get(column, math.nan) for row in evaluations],
                color=colour,
                marker="o",
                markersize=3,
                alpha=0.8,
                label=f"{trial.label} seed {trial.seed}",
            )
    for axis, title in zip(axes, ("evaluation success rate", "evaluation return")):
        axis.set_xlabel("environment steps")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
