"""N environments as one Gymnasium vector env: in-process, one subprocess per env, or
a few subprocess workers that each step a batch of envs.

Every mode uses SAME_STEP autoreset: when an episode ends, the returned observation is
already the next episode's first one and the ended episode's last observation is in
``infos["final_obs"]`` (its info in ``infos["final_info"]``), which a learner needs to
bootstrap a truncated episode.

`batched` is the fast one on a small machine: with W workers (one per core) each worker
steps N/W environments back to back and answers with one message, so the physics runs
on every core while the pipe traffic stays at one round trip per worker per step.
Gymnasium's `async` pays a process and a round trip per environment.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable
from typing import Literal

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space


def _single_thread_env(env_id: str, kwargs: dict) -> gym.Env:
    # Each subprocess worker stays on one thread: on a 2-core machine torch's or BLAS's
    # default thread pools in every worker oversubscribe the cores many times over.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import iiwa_rl.envs  # noqa: F401  (registers the ids in the worker)

    return gym.make(env_id, **kwargs)


def make_env_factory(env_id: str, env_kwargs: dict | None = None) -> Callable[[], gym.Env]:
    # A partial, not a lambda: subprocess workers receive it pickled.
    return functools.partial(_single_thread_env, env_id, dict(env_kwargs or {}))


def _batched_worker(connection, factories: list[Callable[[], gym.Env]]) -> None:
    """Owns a slice of the environments; answers each command with one message."""
    envs = [factory() for factory in factories]
    try:
        while True:
            command, payload = connection.recv()
            if command == "step":
                results = []
                for env, action in zip(envs, payload):
                    observation, reward, terminated, truncated, info = env.step(action)
                    final = None
                    if terminated or truncated:
                        final = (observation, info)
                        observation, info = env.reset()
                    results.append((observation, reward, terminated, truncated, info, final))
                connection.send(results)
            elif command == "reset":
                seeds, options = payload
                connection.send([env.reset(seed=s, options=options) for env, s in zip(envs, seeds)])
            elif command == "spaces":
                connection.send((envs[0].observation_space, envs[0].action_space, envs[0].metadata))
            elif command == "close":
                break
    except (EOFError, KeyboardInterrupt):  # the parent went away: just stop
        pass
    finally:
        for env in envs:
            env.close()
        connection.close()


def stack_infos(infos: list[dict]) -> dict:
    """Per-env info dicts as one vector info dict, in Gymnasium's layout (an array per key
    and a ``_key`` mask of the envs that reported it), built in one pass per key:
    Gymnasium's incremental `_add_info` copies arrays for every env and key, which cost
    more than the physics with 16 envs."""
    count = len(infos)
    keys: dict[str, None] = {}
    for info in infos:
        keys.update(dict.fromkeys(info))
    stacked: dict = {}
    for key in keys:
        present = np.fromiter((key in info for info in infos), dtype=bool, count=count)
        values = [info.get(key) for info in infos]
        sample = values[int(np.argmax(present))]
        if isinstance(sample, dict):
            stacked[key] = stack_infos([v if isinstance(v, dict) else {} for v in values])
        elif isinstance(sample, (bool, np.bool_)):
            stacked[key] = np.array([bool(v) if p else False for v, p in zip(values, present)])
        elif isinstance(sample, (int, float, np.integer, np.floating)):
            dtype = np.int64 if isinstance(sample, (int, np.integer)) else np.float64
            stacked[key] = np.array([v if p else 0 for v, p in zip(values, present)], dtype=dtype)
        else:
            column = np.empty(count, dtype=object)
            column[:] = [v if p else None for v, p in zip(values, present)]
            stacked[key] = column
        stacked["_" + key] = present
    return stacked


class BatchedSubprocVectorEnv(VectorEnv):
    """`num_workers` processes, each stepping a contiguous slice of the environments."""

    def __init__(self, factories: list[Callable[[], gym.Env]], num_workers: int):
        self.num_envs = len(factories)
        num_workers = max(1, min(num_workers, self.num_envs))
        bounds = np.linspace(0, self.num_envs, num_workers + 1).round().astype(int)
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        context = multiprocessing.get_context("spawn")  # no inherited threads or sim state
        self._connections, self._processes = [], []
        for part in self._slices:
            parent, child = context.Pipe()
            process = context.Process(
                target=_batched_worker, args=(child, factories[part]), daemon=True
            )
            process.start()
            child.close()
            self._connections.append(parent)
            self._processes.append(process)
        self._connections[0].send(("spaces", None))
        observation_space, action_space, metadata = self._connections[0].recv()
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self.metadata = {**metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.autoreset_mode = AutoresetMode.SAME_STEP
        self.closed = False

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        for connection, part in zip(self._connections, self._slices):
            connection.send(("reset", (seeds[part], options)))
        observations, infos = [], []
        for connection in self._connections:
            for observation, info in connection.recv():
                observations.append(observation)
                infos.append(info)
        return np.stack(observations), stack_infos(infos)

    def step(self, actions):
        actions = np.asarray(actions)
        for connection, part in zip(self._connections, self._slices):
            connection.send(("step", actions[part]))
        observations = []
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict] = []
        index = 0
        for connection in self._connections:
            for observation, reward, term, trunc, info, final in connection.recv():
                observations.append(observation)
                rewards[index], terminated[index], truncated[index] = reward, term, trunc
                if final is not None:
                    info = {**info, "final_obs": final[0], "final_info": final[1]}
                infos.append(info)
                index += 1
        return np.stack(observations), rewards, terminated, truncated, stack_infos(infos)

    def close_extras(self, **kwargs) -> None:
        for connection in self._connections:
            try:
                connection.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


def make_vector_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict | None = None,
    mode: Literal["sync", "async", "batched"] = "sync",
    workers: int | None = None,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id`; seed them with ``reset(seed=s)``, which gives env i the
    seed s + i. `workers` (batched mode) defaults to the number of CPU cores."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    factories = [make_env_factory(env_id, env_kwargs) for _ in range(num_envs)]
    if mode == "batched":
        return BatchedSubprocVectorEnv(factories, workers or os.cpu_count() or 1)
    if mode == "async":
        return AsyncVectorEnv(
            factories, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP, copy=False
        )
    if mode == "sync":
        return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    raise ValueError(f"vector mode must be 'sync', 'async' or 'batched', got {mode!r}")
