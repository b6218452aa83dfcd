"""Task metrics: the figures a task reports beside its reward, and how an evaluation sums
them up.

A task puts its figures into every reset's and step's info as `metrics/<name>` (as reward
terms appear as `reward/<name>`) and declares them, one `Metric` each, in its `metrics`
class attribute. Evaluation, the learning-curve plots, the overlay and the robustness table
read them from there and from the declarations, never by a task's own names, so a new
task's figures appear in them without a change. Any Gymnasium environment that reports
`metrics/<name>` entries without declaring them gets each one as its final value per
episode (`final_<name>`).

An evaluation turns each declared metric into one column: every episode's steps are
reduced to one value (`episode`: the last step's, or the episode's min, max or mean), and
the episodes' values are averaged (`over_episodes="mean"`) or summed (`"count"`, for 0/1
flags: how many episodes had it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

PREFIX = "metrics/"
EPISODE_REDUCTIONS = ("last", "min", "max", "mean")
EPISODE_AGGREGATES = ("mean", "count")
# The column prefix of each reduction, as a reader meets it: final_distance, max_lift.
_COLUMN_PREFIX = {"last": "final", "min": "min", "max": "max", "mean": "mean"}


@dataclass(frozen=True)
class Metric:
    """One task figure: `info["metrics/<name>"]` and how an evaluation reports it."""

    name: str
    title: str = ""  # the column for people ("final TCP distance"); default: its name
    unit: str = ""  # "m" where it is a length in metres
    episode: Literal["last", "min", "max", "mean"] = "last"  # one value per episode
    over_episodes: Literal["mean", "count"] = "mean"  # one value per evaluation
    column: str = ""  # the evaluation column; default: final_<name>, max_<name>, ...
    evaluated: bool = True  # False: in info only (the overlay's figures), not a column
    log_scale: bool = False  # a curve that shrinks by orders of magnitude (a distance)

    def __post_init__(self) -> None:
        if self.episode not in EPISODE_REDUCTIONS:
            raise ValueError(
                f"metric {self.name!r}: episode must be one of {EPISODE_REDUCTIONS}, "
                f"got {self.episode!r}"
            )
        if self.over_episodes not in EPISODE_AGGREGATES:
            raise ValueError(
                f"metric {self.name!r}: over_episodes must be one of {EPISODE_AGGREGATES}, "
                f"got {self.over_episodes!r}"
            )

    @property
    def key(self) -> str:
        """Its info key."""
        return PREFIX + self.name

    @property
    def column_name(self) -> str:
        return self.column or f"{_COLUMN_PREFIX[self.episode]}_{self.name}"

    @property
    def column_title(self) -> str:
        """The column's title with its unit, for a plot's axis: "final TCP distance (m)"."""
        title = self.title or self.column_name.replace("_", " ")
        return f"{title} ({self.unit})" if self.unit else title


def with_prefix(values: Mapping[str, object]) -> dict[str, object]:
    """A task's figures as info entries: {"distance": d} -> {"metrics/distance": d}."""
    return {PREFIX + name: value for name, value in values.items()}


def task_metrics(info: Mapping[str, object]) -> dict[str, object]:
    """The `metrics/<name>` entries of an info, by name."""
    return {key[len(PREFIX) :]: value for key, value in info.items() if key.startswith(PREFIX)}


def _unwrapped(env):
    """The environment under its wrappers; a class (a plot has no environment) as it is."""
    return env if isinstance(env, type) else getattr(env, "unwrapped", env)


def declared_metrics(env) -> tuple[Metric, ...]:
    """The metrics an environment (or its class) declares; () for one that declares none."""
    return tuple(getattr(_unwrapped(env), "metrics", ()))


def find_metric(metrics: Iterable[Metric], name: str | None) -> Metric | None:
    return next((metric for metric in metrics if metric.name == name), None)


def headline_metric(env) -> Metric | None:
    """The metric a reader follows (the env's `headline_metric`): the evaluation curve
    beside success and return, the training progress line. None where there is none."""
    return find_metric(declared_metrics(env), getattr(_unwrapped(env), "headline_metric", None))


def format_value(metric: Metric, value: float) -> str:
    """A metric's value for people: a length in cm ("6.3 cm"), anything else as it is."""
    if metric.unit == "m":
        return f"{value * 100:.1f} cm"
    return f"{value:.4g}"


def distance_metric(env) -> Metric | None:
    """The task's distance (the env's `distance_metric`), for the robustness table."""
    return find_metric(declared_metrics(env), getattr(_unwrapped(env), "distance_metric", None))


class EpisodeMetrics:
    """Reduces one episode's `metrics/<name>` entries to one value per evaluated metric.

    `observe(info)` takes each step's info (a step without an entry, such as a physics
    blow-up's, adds nothing to it); `values(final_info)` gives the episode's values, keyed
    by their declarations (an undeclared entry counts as `Metric(name)`)."""

    def __init__(self, declared: Iterable[Metric]):
        self.declared = tuple(declared)
        self._declared_names = {metric.name for metric in self.declared}
        # Only what cannot be read from the final info alone is accumulated per step (once
        # per name: a final and a max column of one figure share one accumulator).
        self._running = {
            metric.name: metric.key for metric in self.declared if metric.episode != "last"
        }
        self._accumulated: dict[str, list[float]] = {}

    def reset(self) -> None:
        self._accumulated = {}

    def observe(self, info: Mapping[str, object]) -> None:
        for name, key in self._running.items():
            value = info.get(key)
            if value is None:
                continue
            value = float(value)
            slot = self._accumulated.get(name)
            if slot is None:
                self._accumulated[name] = [value, value, value, 1.0]
            else:  # min, max, sum, count
                slot[0] = min(slot[0], value)
                slot[1] = max(slot[1], value)
                slot[2] += value
                slot[3] += 1.0

    def values(self, final_info: Mapping[str, object]) -> dict[Metric, float]:
        values: dict[Metric, float] = {}
        for metric in self.declared:
            if not metric.evaluated:
                continue
            if metric.episode == "last":
                value = final_info.get(metric.key)
                if value is not None:
                    values[metric] = float(value)
                continue
            slot = self._accumulated.get(metric.name)
            if slot is not None:
                low, high, total, count = slot
                values[metric] = {
                    "min": low,
                    "max": high,
                    "mean": total / count,
                }[metric.episode]
        for name, value in task_metrics(final_info).items():
            if name not in self._declared_names:
                values[Metric(name)] = float(value)
        return values


def summarize_metrics(per_episode: list[dict[Metric, float]]) -> dict[str, float | int]:
    """One column per metric over the episodes that report it, in declaration order."""
    order = list(dict.fromkeys(metric for values in per_episode for metric in values))
    summary: dict[str, float | int] = {}
    for metric in order:
        values = [episode[metric] for episode in per_episode if metric in episode]
        if metric.over_episodes == "count":
            summary[metric.column_name] = int(sum(bool(value) for value in values))
        else:
            summary[metric.column_name] = float(np.mean(values))
    return summary


def status_lines(values: Mapping[str, object]) -> list[str]:
    """A task's figures as text lines, for a task that does not format its own."""
    lines = []
    for name, value in values.items():
        number = float(value)
        lines.append(f"{name.replace('_', ' ')} {number:.4g}" if math.isfinite(number) else name)
    return lines
