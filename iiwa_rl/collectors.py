"""Where the training loop's vector steps come from: the seam between the loop and the
environments.

The loop (train.py) consumes one `CollectedStep` at a time: the observations the actions
were chosen from, the stored actions and their extras, the raw rewards, the ends, the
successors, the step's info. What it then does with a step (reward scaling,
`algorithm.observe`, episode statistics, update, evaluation and checkpoint schedules) is
the same whatever produced it, so every vector mode shares it:

- `LocalCollector`: acts and steps a Gymnasium vector env (sync, async or batched) one
  vector step per `next_step`, as the loop always did.
- `rollout_workers.ProcessCollector` and `ray_rollouts.RayCollector`: rollout workers (this
  process and subprocesses, or Ray actors) each run a `LocalCollector` on their slice of
  the environments for a whole rollout at a time; `next_step` hands the loop those steps
  one by one from the gathered arrays (no hand-over between processes per step).

Why this seam, and not a Ray `VectorEnv`: a vector env is stepped once per vector step
by the learner's actions, so a Ray one costs a remote round trip per step; acting must
move to the workers, and with it the observation normalisation acting needs. Why not a
separate Ray training loop: the loop's bookkeeping (step counts, schedules, resume)
would exist twice. A collector owns acting and stepping; the loop keeps the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from iiwa_rl.episode_stats import merge_final_info


@dataclass
class CollectedStep:
    """One vector step as the loop needs it (observations already normalised)."""

    observations: np.ndarray  # [N, obs] what the actions were chosen from
    actions: np.ndarray  # [N, act] as act() asked to store them
    extras: dict  # act()'s extras (log-probs, values)
    rewards: np.ndarray  # [N] raw, unscaled
    terminated: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    next_observations: np.ndarray  # [N, obs] a new episode's first where one ended
    final_observations: np.ndarray  # [N, obs] the true successors
    info: dict  # per env, the finished envs' entries from their last step
    flat_next_observations: np.ndarray  # [N, obs] next observations before normalisation

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class RolloutCollector(ABC):
    """Produces the loop's vector steps; knows the environments' spaces."""

    num_envs: int
    single_observation_space: object
    single_action_space: object
    notify = staticmethod(print)  # what a collector has to tell (the loop sets its own)

    @abstractmethod
    def start(self, acting, seed: int) -> None:
        """Reset the environments (env i gets seed `seed + i`) and act from now on with
        `acting` (an `Acting`); the reset's observations update its normaliser."""

    @abstractmethod
    def next_step(self) -> CollectedStep:
        """The next vector step."""

    @abstractmethod
    def close(self) -> None:
        """Stop the environments (and workers)."""


@dataclass
class Acting:
    """What choosing actions needs: the algorithm's `act`, the observation normaliser (its
    statistics updated by every observation acted on), and the environment adapters."""

    algorithm: object  # algos.Algorithm
    obs_normalizer: object  # normalization.ObservationNormalizer
    flatten: object  # spaces.ObservationFlattener
    scale_action: object  # spaces.ActionScaler


class LocalCollector(RolloutCollector):
    """Acts in this process and steps `envs`, a Gymnasium vector env in SAME_STEP
    autoreset mode (iiwa_rl/envs/vector.py)."""

    def __init__(self, envs):
        self.envs = envs
        self.num_envs = envs.num_envs
        self.single_observation_space = envs.single_observation_space
        self.single_action_space = envs.single_action_space
        self.acting: Acting | None = None
        self.flat_observations: np.ndarray | None = None  # before normalisation
        self.observations: np.ndarray | None = None

    def start(self, acting: Acting, seed: int) -> None:
        self.acting = acting
        raw, _ = self.envs.reset(seed=seed)
        self.flat_observations = acting.flatten(raw)
        self.observations = acting.obs_normalizer(self.flat_observations, update=True)

    def renormalize(self) -> None:
        """Normalise the current observations again, with statistics loaded since (a Ray
        worker's normaliser gets the learner's before each collection)."""
        self.observations = self.acting.obs_normalizer(self.flat_observations)

    def next_step(self) -> CollectedStep:
        acting = self.acting
        env_actions, stored_actions, extras = acting.algorithm.act(self.observations)
        raw_next, rewards, terminated, truncated, infos = self.envs.step(
            acting.scale_action(env_actions)
        )
        done = terminated | truncated
        flat_next = acting.flatten(raw_next)
        next_observations = acting.obs_normalizer(flat_next, update=True)
        final_observations = next_observations
        step_info = infos
        if done.any():
            final_observations = next_observations.copy()
            ended = np.flatnonzero(done)
            finals = acting.flatten.batch([infos["final_obs"][i] for i in ended])
            final_observations[ended] = acting.obs_normalizer(finals)
            step_info = merge_final_info(infos, done)
        step = CollectedStep(
            observations=self.observations,
            actions=stored_actions,
            extras=extras,
            rewards=rewards,
            terminated=terminated,
            truncated=truncated,
            next_observations=next_observations,
            final_observations=final_observations,
            info=step_info,
            flat_next_observations=flat_next,
        )
        self.flat_observations, self.observations = flat_next, next_observations
        return step

    def close(self) -> None:
        self.envs.close()


def make_collector(config) -> RolloutCollector:
    """The collector `config.env` (a config.TrainConfig's) asks for."""
    env_config = config.env
    if env_config.vector_mode == "ray":
        from iiwa_rl.ray_rollouts import RayCollector  # Ray is imported only where it is used

        return RayCollector(config)
    if env_config.vector_mode == "rollout_workers":
        from iiwa_rl.rollout_workers import ProcessCollector  # (it imports this module)

        return ProcessCollector(config)
    from iiwa_rl.envs import make_vector_env

    return LocalCollector(
        make_vector_env(
            env_config.id,
            env_config.num_envs,
            env_config.kwargs,
            env_config.vector_mode,
            env_config.workers,
            env_config.main_process_share,
            env_config.handover_spin_s,
        )
    )
