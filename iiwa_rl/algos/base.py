"""What every algorithm offers the one training loop (iiwa_rl/train.py), and the
on-policy machinery PPO and TRPO share: Gaussian actor, critic, rollout buffer, GAE and
time-limit bootstrapping. An algorithm differs from another only in its `update`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from iiwa_rl.buffers import RolloutBatch, RolloutBuffer
from iiwa_rl.config import TrainConfig
from iiwa_rl.nn import ArrayForward, ArrayGaussianActor, GaussianActor, ValueCritic


@dataclass
class Transition:
    """One vector step, as the trainer hands it over (observations already normalised,
    rewards already scaled)."""

    observations: np.ndarray  # [N, obs] what the action was chosen from
    actions: np.ndarray  # [N, act] as act() asked to store them
    extras: dict  # whatever act() returned alongside (log-probs, values)
    rewards: np.ndarray  # [N]
    terminated: np.ndarray  # [N] bool: the task ended; nothing follows
    truncated: np.ndarray  # [N] bool: cut by the time limit; the episode would go on
    next_observations: np.ndarray  # [N, obs] as returned: a new episode's first where one ended
    final_observations: np.ndarray  # [N, obs] the true successors (== next where none ended)


class Algorithm(ABC):
    """The contract between an algorithm and the training loop."""

    def __init__(
        self,
        config: TrainConfig,
        observation_size: int,
        action_size: int,
        num_envs: int,
        device: torch.device,
        seed: int,
    ):
        self.config = config
        self.observation_size, self.action_size = observation_size, action_size
        self.num_envs = num_envs
        self.device = device
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    @abstractmethod
    def act(
        self, observations: np.ndarray, deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """(action for the env, action to store, extras to store) for a batch of normalised
        observations."""

    @abstractmethod
    def observe(self, transition: Transition) -> None:
        """Store what happened."""

    @abstractmethod
    def ready_to_update(self) -> bool:
        """Whether `update` should run now."""

    @abstractmethod
    def update(self, progress: float) -> dict[str, float] | None:
        """One update; `progress` in [0, 1] drives schedules. Returns the metrics to log,
        or None where the algorithm logs less often than it updates (DDPG updates every
        few environment steps and reports every `ddpg.log_every_steps`)."""

    @abstractmethod
    def deterministic_actor(self) -> nn.Module:
        """Module mapping normalised observations to the deterministic action in [-1, 1]
        (a `deterministic(obs)` method); what evaluation runs and export bakes."""

    def acting_state(self) -> dict:
        """What a copy of this algorithm elsewhere (a rollout worker, built
        on the CPU with the same arguments) needs to act as this one acts now: the acting
        networks' weights on the CPU and the counters acting reads."""
        raise NotImplementedError(f"{type(self).__name__} cannot act in rollout workers")

    def load_acting_state(self, state: dict) -> None:
        """Inverse of `acting_state`, in the copy."""
        raise NotImplementedError(f"{type(self).__name__} cannot act in rollout workers")

    def note_acted(self, done: np.ndarray) -> None:
        """A vector step this copy acted in but does not learn from (a rollout worker's):
        advance what acting depends on (exploration noise, schedules). `observe` does the
        same for the learner's own steps. PPO and TRPO act from the weights alone."""
        return None

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to resume: networks, optimisers, buffers, counters."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""


class OnPolicyAlgorithm(Algorithm):
    """Shared by PPO and TRPO: sample from the Gaussian actor, store the rollout, compute
    GAE, and hand `update` a `RolloutBatch` on the training device.

    Actions: the sampled, unclipped action is stored and its exact log-probability used;
    the environment clips to [-1, 1]. Squashing with tanh would need a log-det correction
    and makes the mean's gradient vanish at the bounds; clipping outside the distribution
    keeps the likelihood ratio exact (the stored action is the one whose density we have).

    Acting happens on the CPU copy of the networks: for small MLPs at a batch of a few
    environments the CPU answers faster than a GPU round trip, and the rollout reaches
    the training device in one transfer per rollout (`RolloutBuffer.finish`)."""

    def __init__(self, config, observation_size, action_size, num_envs, device, seed):
        super().__init__(config, observation_size, action_size, num_envs, device, seed)
        section = config.algorithm_section
        self.gamma, self.gae_lambda = section.gamma, section.gae_lambda
        self.actor = GaussianActor(observation_size, action_size, config.policy).to(device)
        self.critic = ValueCritic(observation_size, config.critic).to(device)
        if device.type == "cpu":
            self.acting_actor, self.acting_critic = self.actor, self.critic
        else:
            self.acting_actor = copy.deepcopy(self.actor).cpu()
            self.acting_critic = copy.deepcopy(self.critic).cpu()
        # Acting's forward in numpy on the acting networks' own weights (nn.ArrayForward).
        self.array_actor = ArrayGaussianActor(self.acting_actor, config.policy.activation)
        self.array_critic = ArrayForward(self.acting_critic, config.critic.activation)
        self.buffer = RolloutBuffer(section.rollout_steps, num_envs, observation_size, action_size)
        self.updates = 0
        self.generator = torch.Generator(device="cpu").manual_seed(seed)  # minibatch order

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The algorithm's optimisers by checkpoint key."""

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            **{name: optimizer.state_dict() for name, optimizer in self.optimizers().items()},
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "rng": self.rng.bit_generator.state,
        }

    def acting_state(self) -> dict:
        return {
            "actor": self.acting_actor.state_dict(),
            "critic": self.acting_critic.state_dict(),  # act() also returns V(s)
        }

    def load_acting_state(self, state: dict) -> None:
        self.acting_actor.load_state_dict(state["actor"])
        self.acting_critic.load_state_dict(state["critic"])

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state[name])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.sync_acting_networks()

    def act(self, observations, deterministic=False):
        """Sampled in numpy (nn.ArrayGaussianActor) with the algorithm's own generator,
        which checkpoints save and rollout workers reseed; the deterministic action is the
        torch actor's, as evaluation and export compute it."""
        obs = np.asarray(observations, dtype=np.float32)
        if deterministic:
            with torch.no_grad():
                action = self.acting_actor.deterministic(torch.from_numpy(obs)).numpy()
            return action, action, {}
        action, log_prob = self.array_actor.sample(obs, self.rng)
        return (
            np.clip(action, -1.0, 1.0),
            action,
            {"log_prob": log_prob, "value": self.value(obs)},
        )

    def value(self, observations: np.ndarray) -> np.ndarray:
        """V(s) from the acting critic, float32 (batch,)."""
        return self.array_critic(np.asarray(observations, dtype=np.float32))[0][:, 0]

    def observe(self, transition: Transition) -> None:
        # A time-limit truncation is not an end: bootstrap with V(final observation).
        bootstrap = np.zeros(self.num_envs, dtype=np.float32)
        cut = transition.truncated & ~transition.terminated
        if cut.any():
            bootstrap[cut] = self.value(transition.final_observations[cut])
        self.buffer.add(
            transition.observations,
            transition.actions,
            transition.extras["log_prob"],
            transition.extras["value"],
            transition.rewards,
            transition.terminated | transition.truncated,
            bootstrap,
        )
        self._last_observations = transition.next_observations

    def ready_to_update(self) -> bool:
        return self.buffer.full

    def finish_rollout(self) -> RolloutBatch:
        last_values = self.value(self._last_observations)
        return self.buffer.finish(last_values, self.gamma, self.gae_lambda, self.device)

    def sync_acting_networks(self) -> None:
        """After an update on an accelerator, copy the weights back to the acting copies."""
        if self.acting_actor is not self.actor:
            self.acting_actor.load_state_dict(
                {k: v.cpu() for k, v in self.actor.state_dict().items()}
            )
            self.acting_critic.load_state_dict(
                {k: v.cpu() for k, v in self.critic.state_dict().items()}
            )

    def deterministic_actor(self) -> nn.Module:
        return self.actor

    def policy_std(self) -> float:
        with torch.no_grad():
            if self.actor.state_dependent_std:
                return float("nan")
            return float(self.actor._squash(self.actor.log_std_raw).exp().mean())
