"""Rollout storage with GAE(lambda) for PPO and TRPO; a replay buffer for DDPG."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    bootstrap_values: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns, arrays shaped [steps, envs].

    `dones[t]` marks the end of an episode at step t, by termination or truncation.
    `bootstrap_values[t]` is V(final observation) where step t was truncated by a time
    limit (the episode would have gone on), and 0 where it terminated (nothing follows).
    `last_values` is V of the observation after the last step, for unfinished episodes.
    """
    steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    running = np.zeros_like(last_values)
    for t in reversed(range(steps)):
        following = last_values if t == steps - 1 else values[t + 1]
        next_value = np.where(dones[t], bootstrap_values[t], following)
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * gae_lambda * (1.0 - dones[t]) * running
        advantages[t] = running
    return advantages, advantages + values


@dataclass
class RolloutBatch:
    """A finished rollout, flattened over steps and envs, on the training device."""

    observations: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @property
    def size(self) -> int:
        return self.observations.shape[0]


class RolloutBuffer:
    """Fixed-length on-policy storage, filled on the host one vector step at a time and
    moved to the training device in one transfer per rollout."""

    def __init__(self, steps: int, num_envs: int, observation_size: int, action_size: int):
        self.steps, self.num_envs = steps, num_envs
        self.observations = np.zeros((steps, num_envs, observation_size), np.float32)
        self.actions = np.zeros((steps, num_envs, action_size), np.float32)
        self.log_probs = np.zeros((steps, num_envs), np.float32)
        self.values = np.zeros((steps, num_envs), np.float32)
        self.rewards = np.zeros((steps, num_envs), np.float32)
        self.dones = np.zeros((steps, num_envs), np.float32)
        self.bootstrap_values = np.zeros((steps, num_envs), np.float32)
        self.position = 0

    @property
    def full(self) -> bool:
        return self.position == self.steps

    def add(
        self, observations, actions, log_probs, values, rewards, dones, bootstrap_values
    ) -> None:
        t = self.position
        self.observations[t] = observations
        self.actions[t] = actions
        self.log_probs[t] = log_probs
        self.values[t] = values
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.bootstrap_values[t] = bootstrap_values
        self.position += 1

    def finish(
        self, last_values: np.ndarray, gamma: float, gae_lambda: float, device: torch.device
    ) -> RolloutBatch:
        advantages, returns = compute_gae(
            self.rewards,
            self.values,
            self.dones,
            self.bootstrap_values,
            last_values,
            gamma,
            gae_lambda,
        )
        self.position = 0

        def flat(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array.reshape(self.steps * self.num_envs, *array.shape[2:]))

        # One contiguous block, one host-to-device copy, then views into it.
        parts = [self.observations, self.actions]
        scalars = np.stack([self.log_probs, self.values, advantages, returns], axis=-1)
        block = torch.cat([flat(p) for p in parts] + [flat(scalars)], dim=1).to(device)
        obs_size, act_size = self.observations.shape[2], self.actions.shape[2]
        o, a = obs_size, obs_size + act_size
        return RolloutBatch(
            observations=block[:, :o],
            actions=block[:, o:a],
            log_probs=block[:, a],
            values=block[:, a + 1],
            advantages=block[:, a + 2],
            returns=block[:, a + 3],
        )


class ReplayBuffer:
    """A ring buffer of transitions kept on the training device, so sampling a batch is an
    index into device memory rather than a copy from the host."""

    def __init__(
        self,
        capacity: int,
        observation_size: int,
        action_size: int,
        device: torch.device,
        generator: torch.Generator | None = None,
    ):
        self.capacity, self.device = capacity, device
        self.observations = torch.zeros((capacity, observation_size), device=device)
        self.actions = torch.zeros((capacity, action_size), device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.next_observations = torch.zeros((capacity, observation_size), device=device)
        self.terminated = torch.zeros(capacity, device=device)
        self.position = 0
        self.size = 0
        self.generator = generator

    def add(self, observations, actions, rewards, next_observations, terminated) -> None:
        """Store a batch of transitions (arrays with a leading batch axis); `terminated`
        is true only for real terminations: a time-limit truncation still bootstraps."""
        batch = len(rewards)
        index = (self.position + torch.arange(batch)) % self.capacity
        index = index.to(self.device)
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.device)  # noqa: E731
        self.observations[index] = as_tensor(observations)
        self.actions[index] = as_tensor(actions)
        self.rewards[index] = as_tensor(rewards)
        self.next_observations[index] = as_tensor(next_observations)
        self.terminated[index] = as_tensor(terminated)
        self.position = (self.position + batch) % self.capacity
        self.size = min(self.size + batch, self.capacity)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(
            0, self.size, (batch_size,), device=self.device, generator=self.generator
        )
        return {
            "observations": self.observations[index],
            "actions": self.actions[index],
            "rewards": self.rewards[index],
            "next_observations": self.next_observations[index],
            "terminated": self.terminated[index],
        }

    def state_dict(self) -> dict:
        """The stored rows only, as copies: a slice is a view, and saving a view saves the
        whole preallocated storage (276 MB for a 1M-row reach buffer)."""
        n = self.size
        return {
            "observations": self.observations[:n].cpu().clone(),
            "actions": self.actions[:n].cpu().clone(),
            "rewards": self.rewards[:n].cpu().clone(),
            "next_observations": self.next_observations[:n].cpu().clone(),
            "terminated": self.terminated[:n].cpu().clone(),
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        n = state["rewards"].shape[0]
        for key in ("observations", "actions", "rewards", "next_observations", "terminated"):
            getattr(self, key)[:n] = state[key].to(self.device)
        self.size, self.position = n, int(state["position"])
