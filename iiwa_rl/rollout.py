"""One loop for a policy's episodes on one environment.

Evaluation, the recordings, the viewer, the export's parity observations, the scripted
grasp expert and the deploy parity helpers all step through `Rollout`:

    rollout = Rollout(env, policy, seed=0)       # policy: one observation -> one action
    episodes = rollout.run(episodes=3, on_step=hook)

Episode i (from 0) is reset with seed `seed + i` (or `seed(i)` for a callable) and the reset
options `options` (or `options(i)`); right after the environment, `policy_reset()` is
called (by default the policy's own `reset()`, if it has one: the scripted expert keeps a
phase). `run` takes an `on_step(step)` hook, called
after every step with what happened (`Step`), and a `stop(step)` condition that ends the
run after that step, mid-episode or not. The viewer, which answers keys between steps,
drives the same object by hand: `reset()` starts the next episode, `step()` takes one
action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Step:
    """One step of an episode, as an `on_step` hook sees it."""

    episode: int  # index of the episode in this rollout, from 0
    step: int  # actions taken in the episode, this one included
    observation: Any  # what the action was chosen on
    action: np.ndarray
    reward: float
    next_observation: Any
    terminated: bool
    truncated: bool
    info: dict
    episode_return: float  # this step's reward included

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class Episode:
    """A finished episode: its seed, return, length and the infos of its reset and end."""

    index: int
    seed: int | None
    episode_return: float
    length: int
    reset_info: dict = field(default_factory=dict)
    final_info: dict = field(default_factory=dict)

    @property
    def is_success(self) -> bool:
        return bool(self.final_info.get("is_success", False))


class Rollout:
    """Episodes of `policy` (observation -> action) on `env`; see the module docstring."""

    def __init__(
        self,
        env,
        policy: Callable[[Any], np.ndarray],
        seed: int | Callable[[int], int | None] | None = 0,
        options: dict | Callable[[int], dict | None] | None = None,
        policy_reset: Callable[[], None] | None = None,
    ):
        self.env = env
        self.policy = policy
        self._policy_reset = policy_reset or getattr(policy, "reset", None)
        self._seed = seed
        self._options = options
        self.episodes: list[Episode] = []  # finished ones, in order
        self.episode = -1  # index of the current episode; -1 before the first reset
        self.observation: Any = None
        self.reset_info: dict = {}
        self.done = True  # no episode under way
        self._seed_of_episode: int | None = None
        self._length = 0
        self._return = 0.0

    def reset(self) -> Any:
        """Start the next episode (the current one, if unfinished, is dropped); returns its
        first observation."""
        self.episode += 1
        index = self.episode
        seed = self._seed(index) if callable(self._seed) else self._seed
        if seed is not None and not callable(self._seed):
            seed += index
        options = self._options(index) if callable(self._options) else self._options
        self.observation, self.reset_info = self.env.reset(seed=seed, options=options)
        if self._policy_reset is not None:
            self._policy_reset()
        self._seed_of_episode = seed
        self._length, self._return = 0, 0.0
        self.done = False
        return self.observation

    def step(self) -> Step:
        """One action of the policy on the current episode (a new one when none is under
        way)."""
        if self.done:
            self.reset()
        observation = self.observation
        action = self.policy(observation)
        next_observation, reward, terminated, truncated, info = self.env.step(action)
        self._length += 1
        self._return += float(reward)
        step = Step(
            self.episode,
            self._length,
            observation,
            action,
            float(reward),
            next_observation,
            bool(terminated),
            bool(truncated),
            info,
            self._return,
        )
        self.observation = next_observation
        if step.done:
            self.done = True
            self.episodes.append(
                Episode(
                    self.episode,
                    self._seed_of_episode,
                    self._return,
                    self._length,
                    dict(self.reset_info),
                    dict(info),
                )
            )
        return step

    def run(
        self,
        episodes: int | None = None,
        on_step: Callable[[Step], None] | None = None,
        stop: Callable[[Step], bool] | None = None,
    ) -> list[Episode]:
        """Step until `episodes` more episodes have finished or `stop(step)` says so (one
        of them is needed); returns the episodes finished in this call."""
        if episodes is None and stop is None:
            raise ValueError("Rollout.run needs episodes or a stop condition")
        first = len(self.episodes)
        while episodes is None or len(self.episodes) - first < episodes:
            step = self.step()
            if on_step is not None:
                on_step(step)
            if stop is not None and stop(step):
                break
        return self.episodes[first:]
