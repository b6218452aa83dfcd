"""The one training loop, shared by every algorithm.

    collect a vector step -> scale rewards -> algorithm.observe -> (update when ready)
    -> log -> evaluate and checkpoint on schedule

The loop owns the order of things: environments, observation normalisation and reward
scaling, when to update, log, evaluate and checkpoint, and resume. What each of those
does lives beside it: acting and stepping the environments in collectors.py (in this
process, or in Ray workers: ray_rollouts.py), episode statistics in episode_stats.py,
evaluation episodes in evaluation.py, checkpoint files in checkpoint.py, the run
directory's rules in run_dir.py. Algorithms see normalised observations and scaled rewards only.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from iiwa_rl import denormals
from iiwa_rl import run_dir as runs
from iiwa_rl.algos import ALGORITHMS, Algorithm, Transition
from iiwa_rl.checkpoint import load_checkpoint, remove_stale_partials, restore, save_checkpoint
from iiwa_rl.collectors import Acting, make_collector
from iiwa_rl.config import TrainConfig, TrainSection
from iiwa_rl.episode_stats import EpisodeStatistics
from iiwa_rl.evaluation import (
    BackgroundEvaluation,
    deterministic_policy,
    run_episodes,
    summarize_episodes,
)
from iiwa_rl.logger import CsvLog, Progress, TensorBoardLog
from iiwa_rl.metrics import format_value, headline_metric
from iiwa_rl.normalization import ObservationNormalizer, RewardScaler
from iiwa_rl.schema import ConfigError
from iiwa_rl.spaces import ActionScaler, ObservationFlattener, check_action_space, flat_size


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: cuda was asked for, but torch {torch.__version__} sees no CUDA device; "
            "set device: cpu, or auto to use a GPU only where there is one"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _update_thread_count(train: TrainSection) -> int:
    return train.torch_threads if train.update_threads is None else train.update_threads


@contextlib.contextmanager
def update_settings(train: TrainSection):
    """The algorithm's update runs on `train.update_threads` torch threads (the env
    workers are waiting then, not stepping), and with `train.flush_denormals` with denormal
    floats flushed to zero on every one of them (iiwa_rl/denormals.py); after it,
    `torch_threads` and IEEE denormals again, so acting, evaluation and whatever else shares
    the process compute as they would without it."""
    threads = _update_thread_count(train)
    if threads != train.torch_threads:
        torch.set_num_threads(threads)
    if train.flush_denormals:
        denormals.set_flush_denormal(True, threads)
    try:
        yield
    finally:
        if train.flush_denormals:
            denormals.set_flush_denormal(False, threads)
        if threads != train.torch_threads:
            torch.set_num_threads(train.torch_threads)


def check_update_settings(train: TrainSection) -> None:
    """Refuse, before any work, a flush of denormals that would not reach every update
    thread (a torch that does not run on libgomp)."""
    threads = _update_thread_count(train)
    if not train.flush_denormals or threads == 1:
        return
    with update_settings(train):
        flushed = denormals.flushed_on_threads(threads)
    if not flushed:
        raise ConfigError(
            f"train.flush_denormals: true cannot reach all {threads} update threads here "
            f"(torch {torch.__version__} does not run its threads on libgomp, or this CPU "
            "cannot flush denormals): set train.flush_denormals: false, or "
            "train.update_threads: 1"
        )


class Trainer:
    """Trains `config` into `run_dir` (a new run, or a resumed one).

    Everything that can be refused is checked before anything is written: the run
    directory (run_dir.py's rules), the device, the environment, the checkpoint of a
    resumed run. A fresh run's directory is created only once all of that has passed."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, resume: bool = False):
        self.config = config
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / runs.CHECKPOINT_DIR
        if resume:
            runs.check_resumable(self.run_dir)
        else:
            runs.check_fresh(self.run_dir)
        self.device = resolve_device(config.device)
        torch.set_num_threads(config.train.torch_threads)
        check_update_settings(config.train)

        self.collector = make_collector(config)
        try:
            self._build(resume)
        except BaseException:
            self.collector.close()  # no worker processes outlive a refused start
            raise

    def _build(self, resume: bool) -> None:
        config, env_cfg = self.config, self.config.env
        observation_space = self.collector.single_observation_space
        action_space = self.collector.single_action_space
        check_action_space(action_space, env_cfg.id)
        self.flatten = ObservationFlattener(observation_space)
        self.scale_action = ActionScaler(action_space)
        self.observation_size = flat_size(observation_space)
        self.action_size = int(np.prod(action_space.shape))

        norm = config.normalize
        gamma = getattr(config.algorithm_section, "gamma", 0.99)
        self.obs_normalizer = ObservationNormalizer(
            self.observation_size, norm.clip, norm.observations
        )
        self.reward_scaler = RewardScaler(env_cfg.num_envs, gamma, norm.clip, norm.rewards)
        self.algorithm: Algorithm = ALGORITHMS[config.algorithm](
            config,
            self.observation_size,
            self.action_size,
            env_cfg.num_envs,
            self.device,
            config.seed,
        )
        self.global_step = 0
        self.wall_time_before = 0.0  # seconds trained before a resume
        self.best_success, self.best_return = -1.0, -np.inf
        self.statistics = EpisodeStatistics(env_cfg.num_envs)
        if resume:
            self._load_checkpoint(runs.checkpoint_path(self.run_dir, "last"))
        else:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / runs.CONFIG_FILE).write_text(config.to_yaml())
        remove_stale_partials(self.checkpoint_dir)
        self.metrics_log = CsvLog(self.run_dir / "metrics.csv")
        self.eval_log = CsvLog(self.run_dir / "eval.csv")
        self._last_eval_step = -1
        self._last_eval_summary: dict = {}
        if resume:
            self.metrics_log.truncate_after(self.global_step)
            self.eval_log.truncate_after(self.global_step)
            self._recall_last_evaluation()
        self.tensorboard = TensorBoardLog(
            self.run_dir / "tensorboard", purge_step=self.global_step or None
        )
        self._eval_env = None
        self._background_evaluation: BackgroundEvaluation | None = None
        # (step, wall time, checkpoint state) of each evaluation submitted in the
        # background, in order: a result is logged, and saved as best, with its own.
        self._pending_evaluations: deque[tuple[int, float, dict]] = deque()

    @property
    def envs(self):
        """The vector env of an in-process collector (sync, async, batched modes)."""
        return self.collector.envs

    @property
    def episodes_done(self) -> int:
        return self.statistics.episodes_done

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg = self.config.train
        num_envs = self.config.env.num_envs
        progress = Progress(cfg.total_steps, cfg.progress, initial=self.global_step)

        # Resumed runs restart their episodes: environment state is not checkpointed.
        self.collector.notify = progress.message  # a worker restart, say
        if cfg.eval_in_background and self._background_evaluation is None:
            self._background_evaluation = BackgroundEvaluation(
                self.config.env.id, self.config.env.kwargs
            )
        self.collector.start(
            Acting(self.algorithm, self.obs_normalizer, self.flatten, self.scale_action),
            seed=self.config.seed + 7919 * (self.global_step // num_envs),
        )
        next_eval = (self.global_step // cfg.eval_every_steps + 1) * cfg.eval_every_steps
        next_checkpoint = (
            self.global_step // cfg.checkpoint_every_steps + 1
        ) * cfg.checkpoint_every_steps
        started = time.monotonic()
        steps_at_start = self.global_step
        summary: dict = {}
        stop_reason = "step budget reached"

        while self.global_step < cfg.total_steps:
            step = self.collector.next_step()
            done = step.done
            self.algorithm.observe(
                Transition(
                    observations=step.observations,
                    actions=step.actions,
                    extras=step.extras,
                    rewards=self.reward_scaler(step.rewards, done),
                    terminated=step.terminated,
                    truncated=step.truncated,
                    next_observations=step.next_observations,
                    final_observations=step.final_observations,
                )
            )
            self.global_step += num_envs
            self.statistics.record(step.rewards, step.info, done)  # raw (unscaled) rewards

            if self.algorithm.ready_to_update():
                fraction = min(self.global_step / cfg.total_steps, 1.0)
                with update_settings(cfg):
                    losses = self.algorithm.update(fraction)
                if losses is not None:  # None: the algorithm reports less often
                    elapsed = time.monotonic() - started
                    row = {
                        "step": self.global_step,
                        "wall_time": self.wall_time_before + elapsed,
                        "steps_per_second": (self.global_step - steps_at_start)
                        / max(elapsed, 1e-9),
                        **self.statistics.row(),
                        **losses,
                    }
                    self.metrics_log.write(row)
                    self.tensorboard.write("train", row, self.global_step)
                    progress.update(self.global_step, row["episode_return"], row["success_rate"])

            if self.global_step >= next_eval:
                next_eval += cfg.eval_every_steps
                if self._background_evaluation is None:
                    summary = self.evaluate_and_log(progress, started)
                else:
                    self._submit_evaluation(started)
            if self._pending_evaluations:
                summary = self._log_background_evaluations(progress) or summary
            if self.global_step >= next_checkpoint:
                next_checkpoint += cfg.checkpoint_every_steps
                self.save_checkpoint("last", started)
            if (
                cfg.max_wall_seconds is not None
                and time.monotonic() - started >= cfg.max_wall_seconds
            ):
                stop_reason = f"max_wall_seconds ({cfg.max_wall_seconds:g} s) reached"
                break

        if self._pending_evaluations:
            summary = self._log_background_evaluations(progress, wait=True) or summary
        if self._last_eval_step != self.global_step:
            summary = self.evaluate_and_log(progress, started)
        elif not summary:
            summary = self._last_eval_summary  # a resumed run that had already finished
        if self.global_step != steps_at_start:
            self.save_checkpoint("last", started)
        progress.close()
        self.tensorboard.close()
        self.collector.close()
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None  # a later evaluate() builds a fresh one
        if self._background_evaluation is not None:
            self._background_evaluation.close()
            self._background_evaluation = None
        return {**summary, "stop_reason": stop_reason, "step": self.global_step}

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, episodes: int, seed: int) -> dict:
        """Deterministic episodes with frozen normalisation statistics."""
        import gymnasium as gym

        if self._eval_env is None:
            self._eval_env = gym.make(self.config.env.id, **self.config.env.kwargs)
        act = deterministic_policy(
            self.algorithm.deterministic_actor(), self.obs_normalizer, self.device
        )
        return summarize_episodes(run_episodes(act, self._eval_env, episodes, seed))

    def _evaluation_seed(self) -> int:
        # Evaluation seeds differ per evaluation but never meet the final `iiwa-rl eval` ones.
        return self.config.eval.seed + 100_000 + self.global_step

    def evaluate_and_log(self, progress: Progress, started: float) -> dict:
        summary = self.evaluate(self.config.train.eval_episodes, self._evaluation_seed())
        wall_time = self.wall_time_before + time.monotonic() - started
        return self._log_evaluation(
            self.global_step, wall_time, summary, progress, lambda: self._state(started)
        )

    def _submit_evaluation(self, started: float) -> None:
        """Hand the policy as it is now to the background evaluation, and keep what its
        result will be logged with: this step, this wall time, this checkpoint state (a
        deep copy: training moves the networks on meanwhile)."""
        self._background_evaluation.submit(
            self.algorithm.deterministic_actor(),
            self.obs_normalizer,
            self.config.train.eval_episodes,
            self._evaluation_seed(),
        )
        state = copy.deepcopy(self._state(started))
        self._pending_evaluations.append((self.global_step, state["wall_time"], state))

    def _log_background_evaluations(self, progress: Progress, wait: bool = False) -> dict:
        """Log the background results that have arrived (all pending ones with `wait`);
        the last one's summary, or {} if none arrived."""
        summary: dict = {}
        for summary in self._background_evaluation.results(wait):
            step, wall_time, state = self._pending_evaluations.popleft()

            def best_state(state=state) -> dict:  # with the best this result just set
                return {**state, "best": (self.best_success, self.best_return)}

            self._log_evaluation(step, wall_time, summary, progress, best_state)
        return summary

    def _log_evaluation(
        self, step: int, wall_time: float, summary: dict, progress: Progress, state_at_step
    ) -> dict:
        """Write an evaluation of the policy at `step` (`wall_time` s into the run) and save
        `state_at_step()` as the best checkpoint if it beats the best so far."""
        self._last_eval_step = step
        row = {"step": step, "wall_time": wall_time, **summary}
        self.eval_log.write(row)
        self.tensorboard.write("eval", row, step)
        progress.message(
            f"eval @ {step:,} steps ({row['wall_time']:.0f} s): success {summary['success_rate']:.1%}, "
            f"return {summary['mean_return']:.2f}" + self._headline(summary)
        )
        better = (summary["success_rate"], summary["mean_return"]) > (
            self.best_success,
            self.best_return,
        )
        if better:
            self.best_success, self.best_return = summary["success_rate"], summary["mean_return"]
            self._write_checkpoint("best", state_at_step())
        return summary

    def _headline(self, summary: dict) -> str:
        """The task's headline figure for the progress line (", final TCP distance 6.3 cm")."""
        metric = headline_metric(self._eval_env)
        value = summary.get(metric.column_name) if metric else None
        if value is None:
            return ""
        return f", {metric.title or metric.column_name} {format_value(metric, value)}"

    def _recall_last_evaluation(self) -> None:
        """After a resume: whether the checkpoint's step was already evaluated (a finished
        run's final evaluation), so the end of `train` does not evaluate it again."""
        rows = self.eval_log.read()
        if rows and float(rows[-1].get("step") or -1) == self.global_step:
            self._last_eval_step = self.global_step
            self._last_eval_summary = {
                key: _number(value)
                for key, value in rows[-1].items()
                if key not in ("step", "wall_time")
            }

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, name: str, started: float) -> Path:
        return self._write_checkpoint(name, self._state(started))

    def _write_checkpoint(self, name: str, state: dict) -> Path:
        return save_checkpoint(runs.checkpoint_path(self.run_dir, name), state)

    def _state(self, started: float) -> dict:
        """Everything a checkpoint holds, as of now (the networks' own tensors: copy it
        to keep it)."""
        return {
            "config": self.config.to_dict(),
            "algorithm": self.algorithm.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "global_step": self.global_step,
            "episodes_done": self.episodes_done,
            "wall_time": self.wall_time_before + time.monotonic() - started,
            "best": (self.best_success, self.best_return),
            "observation_size": self.observation_size,
            "action_size": self.action_size,
        }

    def _load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        for key, ours in (
            ("observation_size", self.observation_size),
            ("action_size", self.action_size),
        ):
            if state[key] != ours:
                raise ConfigError(
                    f"{path}: {key} {state[key]}, but {self.config.env.id} has {ours}: "
                    "the checkpoint is not this run's"
                )
        restore(self.algorithm, state["algorithm"], str(path))
        restore(self.obs_normalizer, state["obs_normalizer"], str(path))
        restore(self.reward_scaler, state["reward_scaler"], str(path))
        self.global_step = int(state["global_step"])
        self.statistics.episodes_done = int(state["episodes_done"])
        self.wall_time_before = float(state["wall_time"])
        best = state.get("best", (-1.0, -np.inf))
        self.best_success, self.best_return = (float(value) for value in best)


def _number(text: str):
    """A CSV cell back as the number it was written as (int where it is one)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text else value
