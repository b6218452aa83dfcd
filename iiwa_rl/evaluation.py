"""Evaluation: deterministic episodes of a policy on one environment, and their summary.

Used by the trainer's scheduled evaluations, `iiwa-rl eval`, the viewer and the
benchmarks, so every number called "success rate" comes from the same loop and seeds:
episode i of an evaluation is seeded `seed + i`, whatever the number of training envs.
The episodes step through the one rollout loop (rollout.py); the summary's task columns
are whatever metrics the environment reports (metrics.py).
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from iiwa_rl.metrics import EpisodeMetrics, Metric, declared_metrics, summarize_metrics
from iiwa_rl.rollout import Rollout, Step
from iiwa_rl.spaces import ActionScaler, ObservationFlattener


@dataclass
class EpisodeResult:
    episode_return: float
    length: int
    is_success: bool
    final_info: dict = field(default_factory=dict)
    metrics: dict[Metric, float] = field(default_factory=dict)  # the task's, reduced


def deterministic_policy(actor, normalizer, device: torch.device | str = "cpu"):
    """raw observation batch -> deterministic action batch, with frozen normalisation:
    how a trained actor is run for evaluation, viewing and benchmarks."""

    @torch.no_grad()
    def act(raw_observation: np.ndarray) -> np.ndarray:
        normalized = torch.from_numpy(normalizer(raw_observation)).to(device)
        return actor.deterministic(normalized).cpu().numpy()

    return act


def run_episodes(
    act: Callable[[np.ndarray], np.ndarray],
    env,
    episodes: int,
    seed: int,
    on_step: Callable[[object], None] | None = None,
) -> list[EpisodeResult]:
    """Run `episodes` episodes of `act` (raw observation batch [1, obs] -> action batch) on
    one environment, episode i seeded `seed + i`, so results do not depend on how many
    environments training used. `on_step(env)` is called after every step; the task's
    metrics (iiwa_rl/metrics.py) are reduced per episode as it declares them."""
    flatten = ObservationFlattener(env.observation_space)
    scale = ActionScaler(env.action_space)

    def policy(observation):
        return scale(act(flatten.batch([observation]))[0])

    # A stateful policy (an Actor with a reset) starts every episode anew.
    rollout = Rollout(env, policy, seed, policy_reset=getattr(act, "reset", None))
    metrics = EpisodeMetrics(declared_metrics(env))
    results = []

    def each_step(step: Step) -> None:
        metrics.observe(step.info)
        if on_step is not None:
            on_step(env)
        if step.done:
            results.append(
                EpisodeResult(
                    step.episode_return,
                    step.step,
                    bool(step.info.get("is_success", False)),
                    dict(step.info),
                    metrics.values(step.info),
                )
            )
            metrics.reset()

    rollout.run(episodes, on_step=each_step)
    return results


def summarize_episodes(results: list[EpisodeResult]) -> dict[str, float]:
    """Success rate, mean return and length, and one column per task metric."""
    return {
        "episodes": len(results),
        "success_rate": float(np.mean([r.is_success for r in results])),
        "mean_return": float(np.mean([r.episode_return for r in results])),
        "mean_length": float(np.mean([r.length for r in results])),
        **summarize_metrics([r.metrics for r in results]),
    }


def _evaluation_worker(connection, env_id: str, env_kwargs: dict) -> None:
    """A subprocess answering each (actor, normaliser, episodes, seed) with its summary."""
    os.nice(19)  # the cores' idle moments only: training keeps its share
    torch.set_num_threads(1)
    import gymnasium as gym

    import iiwa_rl.envs  # noqa: F401  (registers the ids in this process)

    env = gym.make(env_id, **env_kwargs)
    try:
        while True:
            request = connection.recv()
            if request is None:
                break
            actor, normalizer, episodes, seed = request
            act = deterministic_policy(actor, normalizer)
            connection.send(summarize_episodes(run_episodes(act, env, episodes, seed)))
    except (EOFError, KeyboardInterrupt):  # the parent went away: just stop
        pass
    finally:
        env.close()
        connection.close()


class BackgroundEvaluation:
    """Deterministic evaluations in a subprocess of their own, so the process that
    trains does not wait for them: `submit` hands over a snapshot of the policy (the
    actor and the normaliser as they are now, pickled on the spot) and returns at once;
    `results` gives the summaries back in the order they were submitted. The
    subprocess runs at nice 19, so on a small machine it takes the CPU the training
    leaves idle (the stepping workers wait on every update and on acting) rather than
    time from the training. Episodes and seeds are those of `run_episodes`: a summary is
    the one the same policy gets in the training process."""

    def __init__(self, env_id: str, env_kwargs: dict):
        context = multiprocessing.get_context("spawn")  # no inherited threads or sim state
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_evaluation_worker, args=(child, env_id, dict(env_kwargs)), daemon=True
        )
        self._process.start()
        child.close()
        self.pending = 0

    def submit(self, actor: torch.nn.Module, normalizer, episodes: int, seed: int) -> None:
        # A CPU copy: a CUDA actor's tensors would make the subprocess start CUDA.
        snapshot = copy.deepcopy(actor).cpu().eval()
        self._connection.send((snapshot, normalizer, episodes, seed))
        self.pending += 1

    def results(self, wait: bool = False) -> list[dict]:
        """The summaries that have arrived (with `wait`: all those submitted)."""
        summaries = []
        while self.pending and (wait or self._connection.poll()):
            try:
                summaries.append(self._connection.recv())
            except EOFError:
                raise RuntimeError(
                    f"the background evaluation process stopped (exit code "
                    f"{self._process.exitcode}) with {self.pending} evaluation(s) pending"
                ) from None
            self.pending -= 1
        return summaries

    def close(self) -> None:
        try:
            self._connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
        self._connection.close()
