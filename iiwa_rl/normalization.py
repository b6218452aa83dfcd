"""Running statistics: observation normalisation and reward scaling.

Both are numpy (they act on the environment side of the loop, once per vector step) and
their state is saved in checkpoints; the observation statistics are baked into exported
policies so a deployed policy sees exactly what it was trained on.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Mean and variance over all batches seen (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = epsilon  # a tiny prior count keeps the first update well defined

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta**2 * self.count * batch_count / total
        )
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.var = np.asarray(state["var"], dtype=np.float64)
        self.count = float(state["count"])


class ObservationNormalizer:
    """(obs - mean) / sqrt(var + eps), clipped; statistics frozen during evaluation."""

    epsilon = 1e-8

    def __init__(self, size: int, clip: float, enabled: bool = True):
        self.enabled = enabled
        self.clip = clip
        self.stats = RunningMeanStd((size,))

    def __call__(self, observation: np.ndarray, update: bool = False) -> np.ndarray:
        if not self.enabled:
            return np.asarray(observation, dtype=np.float32)
        if update:
            self.stats.update(observation)
        normalized = (observation - self.stats.mean) / np.sqrt(self.stats.var + self.epsilon)
        return np.clip(normalized, -self.clip, self.clip).astype(np.float32)

    def update(self, observation: np.ndarray) -> None:
        """Update the statistics only (observations normalised elsewhere: a Ray worker's)."""
        if self.enabled:
            self.stats.update(observation)

    def scale_and_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """(1/std, mean) as float32, for the exported graph: (obs - mean) * scale."""
        if not self.enabled:
            size = self.stats.mean.shape[0]
            return np.ones(size, np.float32), np.zeros(size, np.float32)
        scale = 1.0 / np.sqrt(self.stats.var + self.epsilon)
        return scale.astype(np.float32), self.stats.mean.astype(np.float32)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "clip": self.clip, **self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.enabled, self.clip = bool(state["enabled"]), float(state["clip"])
        self.stats.load_state_dict(state)


class RewardScaler:
    """Divides rewards by the running std of the discounted return (not the reward's own
    std): it keeps value targets near unit scale whatever the reward weights are."""

    epsilon = 1e-8

    def __init__(self, num_envs: int, gamma: float, clip: float, enabled: bool = True):
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.stats = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(reward, dtype=np.float32)
        self.returns = self.returns * self.gamma + reward
        self.stats.update(self.returns)
        self.returns[done] = 0.0
        return np.clip(
            reward / np.sqrt(self.stats.var + self.epsilon), -self.clip, self.clip
        ).astype(np.float32)

    def scale(self, reward: np.ndarray) -> np.ndarray:
        """Scale without updating the statistics (for bootstrap values and evaluation)."""
        if not self.enabled:
            return np.asarray(reward, dtype=np.float32)
        return (np.asarray(reward) / np.sqrt(self.stats.var + self.epsilon)).astype(np.float32)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, **self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.enabled = bool(state["enabled"])
        self.stats.load_state_dict(state)
