"""How the algorithms see any Gymnasium environment's spaces: one flat float observation
vector (a Dict observation flattened in a fixed key order) and actions in [-1, 1] (mapped
to the environment's Box bounds). Training and evaluation both go through these, so a
policy meets its observations in one layout everywhere."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def flat_size(space: gym.Space) -> int:
    """The length of a flattened observation of `space`."""
    if isinstance(space, gym.spaces.Dict):
        return int(gym.spaces.flatdim(space))
    return int(np.prod(space.shape))


def check_action_space(space: gym.Space, env_id: str) -> None:
    """The algorithms emit continuous actions: a Discrete or MultiBinary env is refused."""
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"env.id {env_id}: the trainer needs a Box action space, got {space}")


class ActionScaler:
    """Maps the algorithms' [-1, 1] actions to an environment's Box bounds (identity for
    the IIWA environments, whose actions already live in [-1, 1])."""

    def __init__(self, space):
        self.low = space.low.astype(np.float32)
        self.high = space.high.astype(np.float32)
        self.identity = bool(np.all(self.low == -1.0) and np.all(self.high == 1.0))

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if self.identity:
            return action
        return self.low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)


class ObservationFlattener:
    """Dict observations are flattened in a fixed key order; Box ones pass through."""

    def __init__(self, space):
        self.space = space
        self.is_dict = isinstance(space, gym.spaces.Dict)

    def __call__(self, observation) -> np.ndarray:
        if not self.is_dict:
            return np.asarray(observation, dtype=np.float64)
        keys = sorted(self.space.spaces)
        return np.concatenate(
            [
                np.asarray(observation[k], dtype=np.float64).reshape(len(observation[keys[0]]), -1)
                for k in keys
            ],
            axis=-1,
        )

    def batch(self, observations: list) -> np.ndarray:
        """Flat [len, obs] rows from a list of single (unbatched) observations."""
        if not self.is_dict:
            return np.stack([np.asarray(o, dtype=np.float64) for o in observations])
        return self({k: np.stack([o[k] for o in observations]) for k in sorted(self.space.spaces)})
