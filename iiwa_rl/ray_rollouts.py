"""`env.vector_mode: ray`: the environments in Ray actors, on one machine or a cluster.

`RayCollector` is a `rollout_workers.WorkerCollector`: each actor is a `RolloutWorker`
that acts and steps its slice for a whole collection (read rollout_workers.py for the
picture and the semantics it shares with `vector_mode: rollout_workers`, and
collectors.py for the seam), so the training loop stays the one in train.py. What Ray
adds:

- Placement: `env.ray.address` starts a local instance or joins a cluster; the actors
  ask for `cpus_per_worker` and `resources` each and are spread over the nodes.
- Faults: an actor whose process dies is restarted by Ray (`max_restarts`) with fresh
  environments; the collection it was part of asks it for its whole slice again, so every
  one of the loop's steps is counted once. The loop's progress messages say when it
  happened. Resuming a killed driver is the loop's ordinary `--resume`.
- Code: workers import iiwa_rl (and iiwa_deploy) from where the driver imported them
  (`PYTHONPATH` in the actors' runtime_env), so a checkout's code runs on every node of
  this machine; another machine needs the same checkout at the same path.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

from iiwa_rl.rollout_workers import RolloutWorker, WorkerCollector
from iiwa_rl.schema import ConfigError

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


class RayRolloutWorker(RolloutWorker):
    """A `RolloutWorker` as a Ray actor: on one thread, and saying where it runs."""

    def __init__(self, config_data: dict, worker_index: int):
        import torch

        torch.set_num_threads(1)  # one core per worker: more threads oversubscribe
        super().__init__(config_data, worker_index)

    def describe(self) -> dict:
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "spaces": self.spaces,
        }

    def collect(self, *arguments) -> dict:
        import ray

        return {**super().collect(*arguments), "node_id": ray.get_runtime_context().get_node_id()}


class RayCollector(WorkerCollector):
    """K RayRolloutWorker actors; see the module docstring."""

    def __init__(self, config):
        ray = _require_ray()
        super().__init__(config)
        self.ray = ray
        section = config.env.ray
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
            actor_class = ray.remote(RayRolloutWorker).options(
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
    def start(self, acting, seed: int) -> None:
        super().start(acting, seed)
        self._expect_started = [False] * self.worker_count

    def _submit(self, index: int, acting_ref, normalizer_ref):
        return self.workers[index].collect.remote(
            acting_ref, normalizer_ref, *self.collection_arguments(index)
        )

    def _gather(self, acting_state: dict, normalizer_state: dict) -> list[dict]:
        ray = self.ray
        acting_ref = ray.put(acting_state)  # once, for every worker
        normalizer_ref = ray.put(normalizer_state)
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
        return results

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
