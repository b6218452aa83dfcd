"""Acting where the environments are: rollout workers that each act and step their slice of
the environments for a whole collection, and the collectors that gather them.

    learner (the training loop)                  K RolloutWorkers (M = N / K envs each)
    ---------------------------                  --------------------------------------
    acting weights, obs statistics  -----------> load them into a CPU copy of the
                                                 algorithm and the normaliser;
                                                 act + step M envs `steps` times
    <--- arrays [steps, M, ...] per worker       (a LocalCollector, the code every
    the loop replays the N = K * M wide           other mode acts with)
    steps one by one: reward scaling,
    observe, statistics, update, schedules

Two transports share everything else (`WorkerCollector`):
- `ProcessCollector` (`env.vector_mode: rollout_workers`): worker 0 runs in the learner's
  process and workers 1..K-1 in spawned subprocesses, one message each way per collection
  where batched mode hands actions and results over once per vector step. Ray mode's
  semantics on one machine, without Ray's processes. Measured on 2 idle cores it is not
  the faster one for the reach (benchmarks/RESULTS.md: 3,905 steps/s against batched
  mode's 4,159): the hand-over it saves costs less than acting twice on half batches and
  gathering the rollout.
- `ray_rollouts.RayCollector` (`env.vector_mode: ray`): the workers are Ray actors, on
  one machine or a cluster, restarted by Ray when they die.

Semantics, the same in both (so a fixed seed and worker count give the same learning
curve in either):
- One collection per PPO/TRPO rollout (`rollout_steps`), so every stored step was acted by
  the weights being updated, as in the other modes. DDPG (ray mode only) collects
  `env.ray.steps_per_collect` (default 32) vector steps with the weights of the
  collection's start: the staleness is the price of not handing over every step.
- Observation statistics: a worker normalises with the learner's statistics of the
  collection's start, updated by its own observations as it goes (as the learner's are in
  the other modes); the learner updates its own with every worker's raw observations,
  step by step in environment order, so its statistics are those of a local run.
  Reward scaling, episode statistics and step counts stay in the learner.
- Environment seeds: environment i of the N gets `seed + i` at the start, as in the other
  modes. Each collection reseeds a worker's action sampling from (seed, worker,
  collection index).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import traceback
from abc import abstractmethod

import numpy as np

from iiwa_rl.collectors import Acting, CollectedStep, LocalCollector, RolloutCollector
from iiwa_rl.envs.vector import stop_workers

DDPG_STEPS_PER_COLLECT = 32


def steps_per_collect(config) -> int:
    """Vector steps one collection brings back: a whole rollout for PPO and TRPO."""
    if config.algorithm == "ddpg":
        return config.env.ray.steps_per_collect or DDPG_STEPS_PER_COLLECT
    return config.algorithm_section.rollout_steps


def worker_count(config) -> int:
    """K: `env.ray.workers` in ray mode, `env.workers` (default: the CPU cores) otherwise."""
    if config.env.vector_mode == "ray":
        return config.env.ray.workers
    return config.env.worker_processes


class RolloutWorker:
    """`envs_per_worker` environments (stepped back to back in this process) and a CPU copy
    of the algorithm that only acts. Built from the run's config as a plain mapping, so it
    can be built in another process from what a pipe or Ray carries."""

    def __init__(self, config_data: dict, worker_index: int):
        import torch

        from iiwa_rl.algos import ALGORITHMS
        from iiwa_rl.config import config_from_dict
        from iiwa_rl.envs import make_vector_env
        from iiwa_rl.normalization import ObservationNormalizer
        from iiwa_rl.spaces import ActionScaler, ObservationFlattener, flat_size

        config = config_from_dict(config_data, "<rollout worker>")
        if config.algorithm == "ddpg":
            # This copy only acts: a replay of buffer_size rows would be memory for nothing.
            config = dataclasses.replace(
                config, ddpg=dataclasses.replace(config.ddpg, buffer_size=config.ddpg.batch_size)
            )
        self.worker_index = worker_index
        count = config.env.num_envs // worker_count(config)
        # Batched mode with one worker: the slice is stepped in this process, infos stacked
        # in one pass (Gymnasium's sync env stacks them key by key, env by env).
        envs = make_vector_env(config.env.id, count, config.env.kwargs, "batched", workers=1)
        observation_space, action_space = envs.single_observation_space, envs.single_action_space
        self.spaces = (observation_space, action_space)
        observation_size = flat_size(observation_space)
        self.algorithm = ALGORITHMS[config.algorithm](
            config,
            observation_size,
            int(np.prod(action_space.shape)),
            count,
            torch.device("cpu"),
            config.seed,
        )
        normalizer = ObservationNormalizer(
            observation_size, config.normalize.clip, config.normalize.observations
        )
        self.acting = Acting(
            self.algorithm,
            normalizer,
            ObservationFlattener(observation_space),
            ActionScaler(action_space),
        )
        self.collector = LocalCollector(envs)
        self.started = False

    def collect(
        self,
        acting_state: dict,
        normalizer_state: dict,
        steps: int,
        reset_seed: int,
        sampling_seed: list[int],
    ) -> dict:
        """`steps` vector steps acted with `acting_state`, as arrays [steps, M, ...].
        `reset_seed` is used only where this worker has not reset its environments yet
        (its first collection, or a restarted Ray actor's first)."""
        self.algorithm.load_acting_state(acting_state)
        self.acting.obs_normalizer.load_state_dict(normalizer_state)
        reset_observations = None
        if self.started:
            self.collector.renormalize()
        else:
            self.collector.start(self.acting, reset_seed)
            reset_observations = self.collector.flat_observations
            self.started = True
        # Acting draws from the algorithm's numpy generator alone (torch's is left alone).
        # In place: DDPG's exploration noise holds this same generator.
        self.algorithm.rng.bit_generator.state = np.random.default_rng(
            sampling_seed
        ).bit_generator.state
        collected = []
        for _ in range(steps):
            step = self.collector.next_step()
            self.algorithm.note_acted(step.done)
            collected.append(step)
        return {
            "steps": _stack_steps(collected),
            "reset_observations": reset_observations,
            "pid": os.getpid(),
        }

    def close(self) -> None:
        self.collector.close()


_ARRAY_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "terminated",
    "truncated",
    "next_observations",
    "final_observations",
    "flat_next_observations",
)


def _stack_steps(steps: list[CollectedStep]) -> dict:
    """A worker's steps as a few arrays (one transfer), infos as a list."""
    stacked = {name: np.stack([getattr(step, name) for step in steps]) for name in _ARRAY_FIELDS}
    stacked["extras"] = {
        key: np.stack([step.extras[key] for step in steps]) for key in steps[0].extras
    }
    stacked["info"] = [step.info for step in steps]
    return stacked


def _concatenate_infos(infos: list[dict], sizes: list[int]) -> dict:
    """Per-env infos of consecutive env slices as one; a key some slices lack is 0 there
    (what `merge_final_info`'s consumers read for an absent entry)."""
    keys = dict.fromkeys(key for info in infos for key in info)
    merged = {}
    for key in keys:
        sample = next(np.asarray(info[key]) for info in infos if key in info)
        merged[key] = np.concatenate(
            [
                np.asarray(info[key]) if key in info else np.zeros(size, dtype=sample.dtype)
                for info, size in zip(infos, sizes)
            ]
        )
    return merged


class WorkerCollector(RolloutCollector):
    """Gathers one collection from every worker and hands the loop its steps one by one.
    A transport says how a collection is asked for and received (`_gather`)."""

    def __init__(self, config):
        self.config = config
        self.num_envs = config.env.num_envs
        self.worker_count = worker_count(config)
        self.envs_per_worker = self.num_envs // self.worker_count
        self.steps = steps_per_collect(config)
        self.acting: Acting | None = None
        self._pending: list[CollectedStep] = []
        self._pending_reset = None

    def collection_arguments(self, index: int) -> tuple:
        """Worker `index`'s arguments of `RolloutWorker.collect` after the acting state and
        the statistics: this collection's length, reset seed and sampling seed."""
        first_env = index * self.envs_per_worker
        return (
            self.steps,
            # a restarted worker's envs begin new episodes with seeds not used before
            self.seed + first_env + 7919 * self.collections,
            [self.config.seed, index, self.seed, self.collections],
        )

    @abstractmethod
    def _gather(self, acting_state: dict, normalizer_state: dict) -> list[dict]:
        """Every worker's `collect` result for this collection, in worker order."""

    def start(self, acting: Acting, seed: int) -> None:
        self.acting = acting
        self.seed = seed
        self.collections = 0  # since this start; seeds derive from (seed, worker, this)
        self._pending = []
        self._pending_reset = None

    def next_step(self) -> CollectedStep:
        if not self._pending:
            self._collect()
        normalizer = self.acting.obs_normalizer
        if self._pending_reset is not None:  # the start: as a local reset updates it
            normalizer.update(self._pending_reset)
            self._pending_reset = None
        step = self._pending.pop()
        # Step by step, as the loop consumes them: a checkpoint or an evaluation between
        # two steps sees the statistics a local run would have there.
        normalizer.update(step.flat_next_observations)
        return step

    def _collect(self) -> None:
        results = self._gather(
            self.acting.algorithm.acting_state(), self.acting.obs_normalizer.state_dict()
        )
        self.collections += 1
        resets = [r["reset_observations"] for r in results]
        if all(reset is not None for reset in resets):
            self._pending_reset = np.concatenate(resets)
        parts = [r["steps"] for r in results]
        sizes = [self.envs_per_worker] * self.worker_count
        # One concatenation per field over the workers' [steps, M, ...] arrays; each step
        # is then a row of it.
        arrays = {
            name: np.concatenate([part[name] for part in parts], axis=1) for name in _ARRAY_FIELDS
        }
        extras = {
            key: np.concatenate([part["extras"][key] for part in parts], axis=1)
            for key in parts[0]["extras"]
        }
        steps = [
            CollectedStep(
                **{name: array[t] for name, array in arrays.items()},
                extras={key: array[t] for key, array in extras.items()},
                info=_concatenate_infos([part["info"][t] for part in parts], sizes),
            )
            for t in range(self.steps)
        ]
        self._pending = steps[::-1]  # popped from the end, in order


def _serve_rollout_worker(connection, config_data: dict, worker_index: int) -> None:
    """A subprocess's life: build worker `worker_index`, answer `collect` until `close`.
    Every answer is ("ok", value) or ("error", the traceback's text)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # one core per worker: more threads oversubscribe
    worker = None
    try:
        worker = RolloutWorker(config_data, worker_index)
        connection.send(("ok", worker.spaces))
        while True:
            command, arguments = connection.recv()
            if command == "close":
                break
            connection.send(("ok", worker.collect(*arguments)))
    except (EOFError, KeyboardInterrupt):  # the learner went away: just stop
        pass
    except Exception:
        try:
            connection.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if worker is not None:
            worker.close()
        connection.close()


class RolloutWorkerError(RuntimeError):
    """A subprocess rollout worker failed or died; the message says which and why."""


class ProcessCollector(WorkerCollector):
    """`env.vector_mode: rollout_workers`: worker 0 in this process, the others in
    subprocesses (see the module docstring)."""

    def __init__(self, config):
        super().__init__(config)
        config_data = config.to_dict()
        context = multiprocessing.get_context("spawn")  # no inherited threads or sim state
        self._connections, self._processes = [], []
        self._local: RolloutWorker | None = None
        try:
            for index in range(1, self.worker_count):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_serve_rollout_worker,
                    args=(child, config_data, index),
                    daemon=True,
                    name=f"iiwa-rl rollout worker {index}",
                )
                process.start()
                child.close()
                self._connections.append(parent)
                self._processes.append(process)
            # Built while the subprocesses build theirs. Its own torch generator state is
            # kept apart from the learner's (`_in_own_torch_rng`).
            self._local = _in_own_torch_rng(RolloutWorker, config_data, 0)
            for index in range(1, self.worker_count):
                self._receive(index)
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = self._local.spaces

    def _died(self, index: int) -> RolloutWorkerError:
        process = self._processes[index - 1]
        process.join(timeout=5)
        return RolloutWorkerError(
            f"rollout worker {index} (pid {process.pid}) exited with code {process.exitcode} "
            "without answering"
        )

    def _send(self, index: int, message: tuple) -> None:
        try:
            self._connections[index - 1].send(message)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died(index) from None

    def _receive(self, index: int):
        try:
            status, value = self._connections[index - 1].recv()
        except (EOFError, ConnectionResetError):
            raise self._died(index) from None
        if status == "error":
            raise RolloutWorkerError(f"rollout worker {index} failed:\n{value}")
        return value

    def _gather(self, acting_state: dict, normalizer_state: dict) -> list[dict]:
        for index in range(1, self.worker_count):
            arguments = (acting_state, normalizer_state, *self.collection_arguments(index))
            self._send(index, ("collect", arguments))
        results = [
            self._local.collect(acting_state, normalizer_state, *self.collection_arguments(0))
        ]
        results += [self._receive(index) for index in range(1, self.worker_count)]
        return results

    def close(self) -> None:
        stop_workers(self._connections, self._processes)
        self._connections, self._processes = [], []
        if self._local is not None:
            self._local.close()
            self._local = None


def _in_own_torch_rng(function, *arguments):
    """`function(*arguments)` with torch's global generator saved and restored around it:
    building an in-process worker seeds it and draws its networks' initial weights, as a
    worker in its own process does, and the learner's draws must not depend on that."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return function(*arguments)
