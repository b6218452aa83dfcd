"""Training-episode statistics: returns, success and reward terms of the episodes the
vector environment finishes, in raw (unscaled) reward units, over the last 100 episodes.

The training loop feeds every vector step in (`record`); a metrics row reads the running
figures (`row`). Reward terms are whatever the environment reports as `reward/<name>` in
its step info, so a new task's terms appear in the logs without a change here.
"""

from __future__ import annotations

from collections import deque

import numpy as np

WINDOW = 100  # episodes the running figures average over


class EpisodeStatistics:
    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.returns: deque[float] = deque(maxlen=WINDOW)
        self.successes: deque[float] = deque(maxlen=WINDOW)
        self.terms: dict[str, deque[float]] = {}
        self.episodes_done = 0  # over the whole run, resumes included (set from a checkpoint)
        self._episode_return = np.zeros(num_envs)
        self._episode_terms: dict[str, np.ndarray] = {}

    def record(self, rewards: np.ndarray, step_info: dict, done: np.ndarray) -> None:
        """One vector step: `step_info` is per env, with the finished envs' entries taken
        from their last step (see `merge_final_info`)."""
        self._episode_return += rewards
        for key, values in step_info.items():
            if key.startswith("reward/"):
                sums = self._episode_terms.setdefault(key, np.zeros(self.num_envs))
                sums += np.where(step_info.get("_" + key, True), values, 0.0)
        for i in np.flatnonzero(done):
            self.returns.append(float(self._episode_return[i]))
            self.successes.append(float(step_info.get("is_success", np.zeros(self.num_envs))[i]))
            for key, sums in self._episode_terms.items():
                self.terms.setdefault(key, deque(maxlen=WINDOW)).append(float(sums[i]))
                sums[i] = 0.0
            self._episode_return[i] = 0.0
            self.episodes_done += 1

    def row(self) -> dict[str, float]:
        """The running figures for a metrics row (NaN until an episode has finished)."""
        return {
            "episodes": self.episodes_done,
            "episode_return": _mean(self.returns),
            "success_rate": _mean(self.successes),
            **{f"episode_{key}": _mean(values) for key, values in self.terms.items()},
        }


def merge_final_info(infos: dict, done: np.ndarray) -> dict:
    """Per-env step info where the finished envs' entries come from their last step
    (SAME_STEP autoreset puts those under `final_info`, the reset's info at top level)."""
    final = infos.get("final_info", {})
    merged = {}
    for key, values in final.items():
        if key.startswith("_"):
            continue
        current = infos.get(key)
        if current is None:
            current = np.zeros_like(values)
        merged[key] = np.where(done, values, current)
    for key, values in infos.items():
        if key not in merged and not key.startswith("_") and key not in ("final_info", "final_obs"):
            merged[key] = values
    return merged


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
