"""N environments as one Gymnasium vector env, in-process or in subprocesses.

Both modes use SAME_STEP autoreset: when an episode ends, the returned observation is
already the next episode's first one and the ended episode's last observation is in
``infos["final_obs"]``, which a learner needs to bootstrap a truncated episode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv


def _single_thread_env(env_id: str, kwargs: dict) -> gym.Env:
    # Each subprocess worker stays on one thread: on a 2-core machine torch's or BLAS's
    # default thread pools in every worker oversubscribe the cores many times over.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import iiwa_rl.envs  # noqa: F401  (registers the ids in the worker)

    return gym.make(env_id, **kwargs)


def make_env_factory(env_id: str, env_kwargs: dict | None = None) -> Callable[[], gym.Env]:
    kwargs = dict(env_kwargs or {})
    return lambda: _single_thread_env(env_id, kwargs)


def make_vector_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict | None = None,
    mode: Literal["sync", "async"] = "sync",
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id`; seed them with ``reset(seed=s)``, which gives env i the
    seed s + i."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    factories = [make_env_factory(env_id, env_kwargs) for _ in range(num_envs)]
    if mode == "async":
        return AsyncVectorEnv(
            factories, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP, copy=False
        )
    if mode == "sync":
        return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    raise ValueError(f"vector mode must be 'sync' or 'async', got {mode!r}")
