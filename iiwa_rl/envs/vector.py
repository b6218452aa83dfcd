"""N environments as one Gymnasium vector env: in-process, one subprocess per env, or
a few subprocess workers that each step a batch of envs.

Every mode uses SAME_STEP autoreset: when an episode ends, the returned observation is
already the next episode's first one and the ended episode's last observation is in
``infos["final_obs"]`` (its info in ``infos["final_info"]``), which a learner needs to
bootstrap a truncated episode.

`batched` is the fast one on a small machine: W workers (one per core, the main process
being one of them) each step N/W environments back to back, so the physics runs on every
core while the pipe traffic stays at one round trip per subprocess per step. Gymnasium's
`async` pays a process and a round trip per environment.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
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


class _EnvSlice:
    """A contiguous slice of the environments, stepped one after the other, in whichever
    process owns it. Each method answers one command of the batched vector env."""

    def __init__(self, factories: list[Callable[[], gym.Env]]):
        self.envs = [factory() for factory in factories]

    def step(self, actions) -> list[tuple]:
        results = []
        for env, action in zip(self.envs, actions):
            observation, reward, terminated, truncated, info = env.step(action)
            final = None
            if terminated or truncated:
                final = (observation, info)
                observation, info = env.reset()
            results.append((observation, reward, terminated, truncated, info, final))
        return results

    def reset(self, seeds, options) -> list[tuple]:
        return [env.reset(seed=seed, options=options) for env, seed in zip(self.envs, seeds)]

    def spaces(self) -> tuple:
        env = self.envs[0]
        return env.observation_space, env.action_space, env.metadata

    def close(self) -> None:
        for env in self.envs:
            env.close()


# How long a batched process polls for the other side's message before it blocks. Blocked,
# it hands its core back, and being woken again cost up to a millisecond a vector step on
# a 2-core virtual machine: 16 reach envs on 2 processes, the main process spent 3.9 CPU ms
# against 4.4 wall ms a vector step blocking, 3.4 against 3.4 polling (2026-12-02, RESULTS
# "fifth part"). The other side's message is usually due within that; a longer wait (the
# update) blocks after `spin_s` and costs no more CPU than that.
HANDOVER_SPIN_S = 0.002


def receive(connection, spin_s: float):
    """`connection.recv()`, polling for up to `spin_s` seconds before blocking."""
    if spin_s > 0.0 and not connection.poll():
        deadline = time.perf_counter() + spin_s
        while not connection.poll() and time.perf_counter() < deadline:
            pass
    return connection.recv()


def _batched_worker(connection, factories: list[Callable[[], gym.Env]], spin_s: float) -> None:
    """A subprocess owning one slice: answers each command with one message."""
    envs = _EnvSlice(factories)
    try:
        while True:
            command, arguments = receive(connection, spin_s)
            if command == "close":
                break
            connection.send(getattr(envs, command)(*arguments))
    except (EOFError, KeyboardInterrupt):  # the parent went away: just stop
        pass
    finally:
        envs.close()
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


def slice_bounds(num_envs: int, workers: int, main_process_share: float = 1.0) -> list[slice]:
    """The contiguous slices of `num_envs` environments over `workers` processes, the
    main process's first. Even shares by default; with `main_process_share` s < 1 the
    main process steps round(s * num_envs / workers) envs and the rest are spread evenly
    over the subprocesses. Which process steps an env never changes what it computes:
    env i is env i, seeded s + i, in every layout."""
    if not 0.0 <= main_process_share <= 1.0:
        raise ValueError(f"main_process_share must be in [0, 1], got {main_process_share}")
    if main_process_share == 1.0 or workers == 1:
        bounds = np.linspace(0, num_envs, workers + 1).round().astype(int)
    else:  # at most an even share, so every subprocess keeps at least one env
        main = round(main_process_share * num_envs / workers)
        bounds = np.concatenate([[0], np.linspace(main, num_envs, workers).round().astype(int)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class BatchedSubprocVectorEnv(VectorEnv):
    """The environments in `workers` contiguous slices, each stepped back to back by one
    process: the main process steps the first slice itself while `workers - 1`
    subprocesses step the others. The main process would otherwise sit idle waiting, and
    one more busy process than cores makes them preempt each other (measured: 2 workers
    plus an idle-waiting main ran 16 reach envs at half the expected rate on 2 cores).
    Each side polls for the other's message for up to `handover_spin_s` before it blocks
    (HANDOVER_SPIN_S)."""

    def __init__(
        self,
        factories: list[Callable[[], gym.Env]],
        workers: int,
        main_process_share: float = 1.0,
        handover_spin_s: float = HANDOVER_SPIN_S,
    ):
        if not handover_spin_s >= 0.0:
            raise ValueError(f"handover_spin_s must be >= 0, got {handover_spin_s}")
        self._spin_s = handover_spin_s
        self.num_envs = len(factories)
        workers = max(1, min(workers, self.num_envs))
        slices = slice_bounds(self.num_envs, workers, main_process_share)
        self._local_slice, self._remote_slices = slices[0], slices[1:]
        context = multiprocessing.get_context("spawn")  # no inherited threads or sim state
        self._connections, self._processes = [], []
        for part in self._remote_slices:
            parent, child = context.Pipe()
            process = context.Process(
                target=_batched_worker,
                args=(child, factories[part], handover_spin_s),
                daemon=True,
            )
            process.start()
            child.close()
            self._connections.append(parent)
            self._processes.append(process)
        self._local = _EnvSlice(factories[self._local_slice])
        if self._local.envs:
            observation_space, action_space, metadata = self._local.spaces()
        else:  # the main process only acts: ask the first subprocess
            self._connections[0].send(("spaces", ()))
            observation_space, action_space, metadata = self._connections[0].recv()
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self.metadata = {**metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.autoreset_mode = AutoresetMode.SAME_STEP
        self.closed = False

    def _run(self, command: str, per_slice) -> list[tuple]:
        """Send `command` to every subprocess, run the local slice meanwhile, gather all
        results in environment order. `per_slice(part)` gives a slice's arguments."""
        for connection, part in zip(self._connections, self._remote_slices):
            connection.send((command, per_slice(part)))
        results = getattr(self._local, command)(*per_slice(self._local_slice))
        for connection in self._connections:
            results += receive(connection, self._spin_s)
        return results

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        results = self._run("reset", lambda part: (seeds[part], options))
        observations = [observation for observation, _ in results]
        return np.stack(observations), stack_infos([info for _, info in results])

    def step(self, actions):
        actions = np.asarray(actions)
        results = self._run("step", lambda part: (actions[part],))
        observations, infos = [], []
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for index, (observation, reward, term, trunc, info, final) in enumerate(results):
            observations.append(observation)
            rewards[index], terminated[index], truncated[index] = reward, term, trunc
            if final is not None:
                info = {**info, "final_obs": final[0], "final_info": final[1]}
            infos.append(info)
        return np.stack(observations), rewards, terminated, truncated, stack_infos(infos)

    def close_extras(self, **kwargs) -> None:
        stop_workers(self._connections, self._processes)
        self._local.close()


def stop_workers(connections: list, processes: list, timeout_s: float = 5.0) -> None:
    """Ask each subprocess worker to close (a ("close", None) message), wait for it, and
    terminate one that has not stopped within `timeout_s`; a worker already gone is fine."""
    for connection in connections:
        try:
            connection.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
    for process in processes:
        process.join(timeout=timeout_s)
        if process.is_alive():
            process.terminate()
            process.join(timeout=timeout_s)
    for connection in connections:
        connection.close()


def make_vector_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict | None = None,
    mode: Literal["sync", "async", "batched"] = "sync",
    workers: int | None = None,
    main_process_share: float = 1.0,
    handover_spin_s: float | None = None,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id`; seed them with ``reset(seed=s)``, which gives env i the
    seed s + i. `workers` (batched mode: stepping processes, the main one included)
    defaults to the number of CPU cores; `main_process_share` (batched mode) is the main
    process's share of the envs relative to an even one (`slice_bounds`), and
    `handover_spin_s` (batched mode; None: HANDOVER_SPIN_S) how long its processes poll for
    each other's messages before they block."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    factories = [make_env_factory(env_id, env_kwargs) for _ in range(num_envs)]
    if mode == "batched":
        return BatchedSubprocVectorEnv(
            factories,
            workers or os.cpu_count() or 1,
            main_process_share,
            HANDOVER_SPIN_S if handover_spin_s is None else handover_spin_s,
        )
    if mode == "async":
        return AsyncVectorEnv(
            factories, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP, copy=False
        )
    if mode == "sync":
        return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    raise ValueError(f"vector mode must be 'sync', 'async' or 'batched', got {mode!r}")
