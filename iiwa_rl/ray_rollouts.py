"""`env.vector_mode: ray`: the environments in Ray actors, on one machine or a cluster.

`RayCollector` is a `collectors.RolloutCollector` (read that module's docstring for the
seam): the training loop stays the one in train.py, and only where its vector steps come
from changes.

    learner (driver)                             K RolloutWorker actors (M envs each)
    ----------------                             -----------------------------------
    ray.put(acting weights, obs statistics) ---> load them into a CPU copy of the
                                                 algorithm and the normaliser;
                                                 act + step M envs `steps` times
    <--- arrays [steps, M, ...] per worker       (a LocalCollector, the code every
    the loop replays the N = K * M wide           other mode acts with)
    steps one by one: reward scaling,
    observe, statistics, update, schedules

- One collection per PPO/TRPO rollout (`rollout_steps`; the config refuses anything
  else), so every stored step was acted by the weights being updated, as in the other
  modes. DDPG collects `env.ray.steps_per_collect` (default 32) vector steps at a time
  with the weights of the collection's start: that staleness is the price of not making a
  remote call per step.
- Observation statistics: a worker normalises with the learner's statistics of the
  collection's start, updated by its own observations as it goes (as the learner's are in
  the other modes); the learner updates its own with every worker's raw observations,
  step by step in environment order, so its statistics are those of a local run.
  Reward scaling, episode statistics and step counts stay in the learner.
- Environment seeds: environment i of the N gets `seed + i` at the start, as in the other
  modes. Each collection reseeds a worker's action sampling from (seed, worker,
  collection index), so a fixed seed and worker count give the same learning curve twice.
- Faults: an actor whose process dies is restarted by Ray (`max_restarts`) with fresh
  environments; the collection it was part of asks it for its whole slice again, so every
  one of the loop's steps is counted once. The loop's progress messages say when it
  happened. Resuming a killed driver is the loop's ordinary `--resume`.
- Code: workers import iiwa_rl (and iiwa_deploy) from where the driver imported them
  (`PYTHONPATH` in the actors' runtime_env), so a checkout's code runs on every node of
  this machine; another machine needs the same checkout at the same path.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

from iiwa_rl.collectors import Acting, CollectedStep, LocalCollector, RolloutCollector
from iiwa_rl.schema import ConfigError

DDPG_STEPS_PER_COLLECT = 32
START_TIMEOUT_S = 180.0  # workers not placed by then: the cluster lacks their resources
RESTART_TIMEOUT_S = 120.0  # a failed worker not back by then is not coming back


def _require_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "env.vector_mode: ray needs Ray: pip install 'iiwa-rl[ray]' (or pip install 'ray[tune]')"
        ) from None
    return ray


def _code_paths() -> list[str]:
    """Directories that hold this process's iiwa_rl and iiwa_deploy, first on the
    workers' PYTHONPATH: a worktree's code, not another installed copy, runs there."""
    paths = []
    for name in ("iiwa_rl", "iiwa_deploy"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            paths.append(str(Path(spec.origin).resolve().parent.parent))
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys(paths + existing))


def steps_per_collect(config) -> int:
    if config.algorithm == "ddpg":
        return config.env.ray.steps_per_collect or DDPG_STEPS_PER_COLLECT
    return config.algorithm_section.rollout_steps


class RolloutWorker:
    """One Ray actor: `envs_per_worker` environments (a sync vector env) and a CPU copy of
    the algorithm that only acts. Built from the run's config as a plain mapping."""

    def __init__(self, config_data: dict, worker_index: int):
        import torch

        from iiwa_rl.algos import ALGORITHMS
        from iiwa_rl.config import config_from_dict
        from iiwa_rl.envs import make_vector_env
        from iiwa_rl.normalization import ObservationNormalizer
        from iiwa_rl.spaces import ActionScaler, ObservationFlattener, flat_size

        torch.set_num_threads(1)  # one core per worker: more threads oversubscribe
        config = config_from_dict(config_data, "<ray worker>")
        if config.algorithm == "ddpg":
            # This copy only acts: a replay of buffer_size rows would be memory for nothing.
            config = dataclasses.replace(
                config, ddpg=dataclasses.replace(config.ddpg, buffer_size=config.ddpg.batch_size)
            )
        self.worker_index = worker_index
        count = config.env.num_envs // config.env.ray.workers
        envs = make_vector_env(config.env.id, count, config.env.kwargs, "sync")
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

    def describe(self) -> dict:
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "spaces": self.spaces,
        }

    def collect(
        self,
        acting_state: dict,
        normalizer_state: dict,
        steps: int,
        reset_seed: int,
        sampling_seed: list[int],
    ) -> dict:
        """`steps` vector steps acted with `acting_state`, as arrays [steps, M, ...].
        `reset_seed` is used only where this incarnation of the actor has not reset its
        environments yet (its first collection, or its first after a restart)."""
        import ray
        import torch

        self.algorithm.load_acting_state(acting_state)
        self.acting.obs_normalizer.load_state_dict(normalizer_state)
        reset_observations = None
        if self.started:
            self.collector.renormalize()
        else:
            self.collector.start(self.acting, reset_seed)
            reset_observations = self.collector.flat_observations
            self.started = True
        torch.manual_seed(int(np.random.SeedSequence(sampling_seed).generate_state(1)[0]))
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
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }


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
    """A worker's steps as a few arrays (one object-store transfer), infos as a list."""
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


class RayCollector(RolloutCollector):
    """K RolloutWorker actors; see the module docstring."""

    def __init__(self, config):
        ray = _require_ray()
        self.ray = ray
        self.config = config
        section = config.env.ray
        self.num_envs = config.env.num_envs
        self.worker_count = section.workers
        self.envs_per_worker = self.num_envs // section.workers
        self.steps = steps_per_collect(config)
        self.max_restarts = section.max_restarts
        self.restarts = 0  # worker failures survived, over this run
        self.notify = lambda text: print(text, file=sys.stderr, flush=True)
        self._owns_ray = False
        if not ray.is_initialized():
            ray.init(
                address=section.address,
                include_dashboard=False,
                logging_level="warning",
                configure_logging=True,
            )
            self._owns_ray = True
        self.workers = []
        needed = section.workers * section.cpus_per_worker
        available = ray.cluster_resources().get("CPU", 0.0)
        if self._owns_ray and needed > available:
            # A local instance does not grow: the workers would wait for CPUs forever.
            self.close()
            raise ConfigError(
                f"env.ray: {section.workers} workers x cpus_per_worker "
                f"{section.cpus_per_worker:g} = {needed:g} CPUs, but the local Ray instance "
                f"has {available:g}; lower cpus_per_worker (e.g. {available / section.workers:g}) "
                "or the workers"
            )
        try:
            actor_class = ray.remote(RolloutWorker).options(
                num_cpus=section.cpus_per_worker,
                resources=dict(section.resources),
                max_restarts=section.max_restarts,
                max_task_retries=0,  # a failed collection is resubmitted here, and logged
                scheduling_strategy="SPREAD",
                runtime_env={
                    "env_vars": {
                        "PYTHONPATH": os.pathsep.join(_code_paths()),
                        "OMP_NUM_THREADS": "1",
                    }
                },
            )
            config_data = config.to_dict()
            self.workers = [
                actor_class.remote(config_data, index) for index in range(self.worker_count)
            ]
            described = self._get_with_deadline(
                [worker.describe.remote() for worker in self.workers]
            )
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = described[0]["spaces"]
        self.worker_nodes = [entry["node_id"] for entry in described]
        self.worker_pids = [entry["pid"] for entry in described]
        self.worker_hosts = [entry["hostname"] for entry in described]
        self.acting: Acting | None = None
        self._pending: list[CollectedStep] = []
        self._expect_started = [False] * self.worker_count

    def _get_with_deadline(self, refs: list) -> list:
        ray = self.ray
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
        if waiting:
            section = self.config.env.ray
            raise ConfigError(
                f"env.ray: {len(waiting)} of {self.worker_count} rollout workers were not "
                f"placed within {START_TIMEOUT_S:.0f} s; each needs {section.cpus_per_worker:g} "
                f"CPU and resources {dict(section.resources)}, the cluster has "
                f"{ray.cluster_resources()}"
            )
        return ray.get(refs)

    # ------------------------------------------------------------------ collecting
    def start(self, acting: Acting, seed: int) -> None:
        self.acting = acting
        self.seed = seed
        self.collections = 0  # since this start; seeds derive from (seed, worker, this)
        self._pending = []
        self._pending_reset = None
        self._expect_started = [False] * self.worker_count

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

    def _submit(self, index: int, acting_ref, normalizer_ref):
        first_env = index * self.envs_per_worker
        return self.workers[index].collect.remote(
            acting_ref,
            normalizer_ref,
            self.steps,
            # a restarted worker's envs begin new episodes with seeds not used before
            self.seed + first_env + 7919 * self.collections,
            [self.config.seed, index, self.seed, self.collections],
        )

    def _collect(self) -> None:
        ray = self.ray
        acting_ref = ray.put(self.acting.algorithm.acting_state())  # once, for every worker
        normalizer_ref = ray.put(self.acting.obs_normalizer.state_dict())
        refs = [self._submit(i, acting_ref, normalizer_ref) for i in range(self.worker_count)]
        results = []
        for index in range(self.worker_count):
            result, failed = self._result_of(index, refs[index], acting_ref, normalizer_ref)
            # (a failure during the collection was counted and told in _result_of)
            if (
                not failed
                and self._expect_started[index]
                and result["reset_observations"] is not None
            ):
                # Died between two collections: the restarted actor reset fresh environments.
                self.restarts += 1
                self.notify(
                    f"rollout worker {index} was restarted by Ray; its environments began "
                    "new episodes"
                )
            self._expect_started[index] = True
            self.worker_nodes[index], self.worker_pids[index] = result["node_id"], result["pid"]
            results.append(result)
        self.collections += 1

        resets = [r["reset_observations"] for r in results]
        if all(reset is not None for reset in resets):
            self._pending_reset = np.concatenate(resets)
        parts = [r["steps"] for r in results]
        sizes = [self.envs_per_worker] * self.worker_count
        steps = []
        for t in range(self.steps):
            fields = {
                name: np.concatenate([part[name][t] for part in parts]) for name in _ARRAY_FIELDS
            }
            fields["extras"] = {
                key: np.concatenate([part["extras"][key][t] for part in parts])
                for key in parts[0]["extras"]
            }
            fields["info"] = _concatenate_infos([part["info"][t] for part in parts], sizes)
            steps.append(CollectedStep(**fields))
        self._pending = steps[::-1]  # popped from the end, in order

    def _result_of(self, index: int, ref, acting_ref, normalizer_ref) -> tuple[dict, bool]:
        """Worker `index`'s collection; where its actor died, the whole slice again from
        the restarted actor. Also whether it failed (counted and told here)."""
        ray = self.ray
        failed_at = None
        while True:
            try:
                return ray.get(ref), failed_at is not None
            except ray.exceptions.RayActorError as error:
                now = time.monotonic()
                if failed_at is None:
                    failed_at = now
                    self.restarts += 1
                    self.notify(
                        f"rollout worker {index} failed ({type(error).__name__}); Ray restarts "
                        "it and it collects its slice again"
                    )
                elif now - failed_at > RESTART_TIMEOUT_S:
                    raise RuntimeError(
                        f"rollout worker {index} did not come back within {RESTART_TIMEOUT_S:.0f} s "
                        f"(env.ray.max_restarts = {self.max_restarts} used up?)"
                    ) from error
                # While Ray restarts the actor, calls to it fail at once: wait a little.
                time.sleep(0.25)
                ref = self._submit(index, acting_ref, normalizer_ref)

    def close(self) -> None:
        ray = self.ray
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # already gone
                pass
        self.workers = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False
