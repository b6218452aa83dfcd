"""The one training loop, shared by every algorithm.

    collect a vector step -> normalise -> algorithm.observe -> (update when ready)
    -> log -> evaluate and checkpoint on schedule

The loop owns everything that is not the algorithm's math: environments, observation
normalisation and reward scaling, episode statistics, evaluation, checkpoints (written
atomically, so a kill -9 loses at most one checkpoint interval), resume, logs and the
final learning curve. Algorithms see normalised observations and scaled rewards only.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from iiwa_rl.algos import ALGORITHMS, Algorithm, Transition
from iiwa_rl.config import TrainConfig, config_from_dict
from iiwa_rl.envs import make_vector_env
from iiwa_rl.logger import CsvLog, Progress, TensorBoardLog
from iiwa_rl.normalization import ObservationNormalizer, RewardScaler


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _flat_size(space) -> int:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        return int(gym.spaces.flatdim(space))
    return int(np.prod(space.shape))


class ActionScaler:
    """Maps the algorithms' [-1, 1] actions to an environment's Box bounds (identity for
    the IIWA environments, whose actions already live in [-1, 1])."""

    def __init__(self, space):
        self.low = space.low.astype(np.float32)
        self.high = space.high.astype(np.float32)
        self.identity = bool(np.all(self.low == -1.0) and np.all(self.high == 1.0))

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if self.identity:
            return action
        return self.low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)


class ObservationFlattener:
    """Dict observations are flattened in a fixed key order; Box ones pass through."""

    def __init__(self, space):
        import gymnasium as gym

        self.space = space
        self.is_dict = isinstance(space, gym.spaces.Dict)

    def __call__(self, observation) -> np.ndarray:
        if not self.is_dict:
            return np.asarray(observation, dtype=np.float64)
        keys = sorted(self.space.spaces)
        return np.concatenate(
            [
                np.asarray(observation[k], dtype=np.float64).reshape(len(observation[keys[0]]), -1)
                for k in keys
            ],
            axis=-1,
        )

    def batch(self, observations: list) -> np.ndarray:
        """Flat [len, obs] rows from a list of single (unbatched) observations."""
        if not self.is_dict:
            return np.stack([np.asarray(o, dtype=np.float64) for o in observations])
        return self({k: np.stack([o[k] for o in observations]) for k in sorted(self.space.spaces)})


def deterministic_policy(actor, normalizer, device: torch.device | str = "cpu"):
    """raw observation batch -> deterministic action batch, with frozen normalisation:
    how a trained actor is run for evaluation, viewing and benchmarks."""

    @torch.no_grad()
    def act(raw_observation: np.ndarray) -> np.ndarray:
        normalized = torch.from_numpy(normalizer(raw_observation)).to(device)
        return actor.deterministic(normalized).cpu().numpy()

    return act


def _check_action_space(space, env_id: str) -> None:
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"env.id {env_id}: the trainer needs a Box action space, got {space}")


# --------------------------------------------------------------------- evaluation
@dataclass
class EpisodeResult:
    episode_return: float
    length: int
    is_success: bool
    final_info: dict = field(default_factory=dict)


def run_episodes(
    act: Callable[[np.ndarray], np.ndarray],
    env,
    episodes: int,
    seed: int,
    on_step: Callable[[object], None] | None = None,
) -> list[EpisodeResult]:
    """Run `episodes` episodes of `act` (raw observation batch [1, obs] -> action batch) on
    one environment, episode i seeded `seed + i`, so results do not depend on how many
    environments training used."""
    results = []
    flatten = ObservationFlattener(env.observation_space)
    scale = ActionScaler(env.action_space)
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        total, length = 0.0, 0
        while True:
            action = scale(act(flatten.batch([observation]))[0])
            observation, reward, terminated, truncated, info = env.step(action)
            if on_step is not None:
                on_step(env)
            total += float(reward)
            length += 1
            if terminated or truncated:
                results.append(
                    EpisodeResult(total, length, bool(info.get("is_success", False)), dict(info))
                )
                break
    return results


def summarize_episodes(results: list[EpisodeResult]) -> dict[str, float]:
    summary = {
        "episodes": len(results),
        "success_rate": float(np.mean([r.is_success for r in results])),
        "mean_return": float(np.mean([r.episode_return for r in results])),
        "mean_length": float(np.mean([r.length for r in results])),
    }
    for key in ("tcp_distance", "tcp_to_cube_distance", "max_cube_lift", "cube_lift"):
        values = [r.final_info[key] for r in results if key in r.final_info]
        if values:
            summary[f"final_{key}" if not key.startswith("max") else key] = float(np.mean(values))
    if any("max_cube_lift" in r.final_info for r in results):
        from iiwa_rl.envs.tasks.grasp import failure_reason

        # Success latches; this says how many still hold the cube high when the episode ends.
        summary["held_at_end"] = float(
            np.mean([r.final_info.get("held_steps", 0) > 0 for r in results])
        )
        for reason in ("missed", "not lifted", "dropped", "timed out"):
            count = sum(failure_reason(r.final_info) == reason for r in results)
            summary[f"failed_{reason.replace(' ', '_')}"] = count
    return summary


# ------------------------------------------------------------------------ trainer
CHECKPOINT_VERSION = 1


class Trainer:
    """Trains `config` into `run_dir` (a new run, or a resumed one)."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, resume: bool = False):
        self.config = config
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if not resume and (self.checkpoint_dir / "last.pt").exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run; resume it with --resume or pick another --run-dir"
            )
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(config.train.torch_threads)
        self.device = resolve_device(config.device)

        env_cfg = config.env
        self.envs = make_vector_env(
            env_cfg.id, env_cfg.num_envs, env_cfg.kwargs, env_cfg.vector_mode
        )
        _check_action_space(self.envs.single_action_space, env_cfg.id)
        self.flatten = ObservationFlattener(self.envs.single_observation_space)
        self.scale_action = ActionScaler(self.envs.single_action_space)
        self.observation_size = _flat_size(self.envs.single_observation_space)
        self.action_size = int(np.prod(self.envs.single_action_space.shape))

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
        self.episodes_done = 0
        if resume:
            self._load_checkpoint(self.checkpoint_dir / "last.pt")
        else:
            (self.run_dir / "config.yaml").write_text(config.to_yaml())
        self.metrics_log = CsvLog(self.run_dir / "metrics.csv")
        self.eval_log = CsvLog(self.run_dir / "eval.csv")
        if resume:
            self.metrics_log.truncate_after(self.global_step)
            self.eval_log.truncate_after(self.global_step)
        self.tensorboard = TensorBoardLog(
            self.run_dir / "tensorboard", purge_step=self.global_step or None
        )
        self._eval_env = None
        self._last_eval_step = -1

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg = self.config.train
        num_envs = self.config.env.num_envs
        progress = Progress(cfg.total_steps, cfg.progress)
        recent_returns: deque[float] = deque(maxlen=100)
        recent_success: deque[float] = deque(maxlen=100)
        recent_terms: dict[str, deque[float]] = {}
        episode_return = np.zeros(num_envs)
        episode_length = np.zeros(num_envs, dtype=int)
        episode_terms: dict[str, np.ndarray] = {}

        # Resumed runs restart their episodes: environment state is not checkpointed.
        raw, _ = self.envs.reset(seed=self.config.seed + 7919 * (self.global_step // num_envs))
        observations = self.obs_normalizer(self.flatten(raw), update=True)
        next_eval = (self.global_step // cfg.eval_every_steps + 1) * cfg.eval_every_steps
        next_checkpoint = (
            self.global_step // cfg.checkpoint_every_steps + 1
        ) * cfg.checkpoint_every_steps
        started = time.monotonic()
        steps_at_start = self.global_step
        summary: dict = {}
        stop_reason = "step budget reached"

        while self.global_step < cfg.total_steps:
            env_actions, stored_actions, extras = self.algorithm.act(observations)
            raw_next, rewards, terminated, truncated, infos = self.envs.step(
                self.scale_action(env_actions)
            )
            done = terminated | truncated
            next_observations = self.obs_normalizer(self.flatten(raw_next), update=True)
            final_observations = next_observations
            step_info = infos
            if done.any():
                final_observations = next_observations.copy()
                ended = np.flatnonzero(done)
                finals = self.flatten.batch([infos["final_obs"][i] for i in ended])
                final_observations[ended] = self.obs_normalizer(finals)
                step_info = _merge_final_info(infos, done)
            self.algorithm.observe(
                Transition(
                    observations=observations,
                    actions=stored_actions,
                    extras=extras,
                    rewards=self.reward_scaler(rewards, done),
                    terminated=terminated,
                    truncated=truncated,
                    next_observations=next_observations,
                    final_observations=final_observations,
                )
            )
            observations = next_observations
            self.global_step += num_envs

            # Episode statistics in raw (unscaled) reward units.
            episode_return += rewards
            episode_length += 1
            for key, values in step_info.items():
                if key.startswith("reward/"):
                    episode_terms.setdefault(key, np.zeros(num_envs))
                    episode_terms[key] += np.where(step_info.get("_" + key, True), values, 0.0)
            for i in np.flatnonzero(done):
                recent_returns.append(float(episode_return[i]))
                recent_success.append(float(step_info.get("is_success", np.zeros(num_envs))[i]))
                for key, sums in episode_terms.items():
                    recent_terms.setdefault(key, deque(maxlen=100)).append(float(sums[i]))
                    sums[i] = 0.0
                episode_return[i], episode_length[i] = 0.0, 0
                self.episodes_done += 1

            if self.algorithm.ready_to_update():
                fraction = min(self.global_step / cfg.total_steps, 1.0)
                losses = self.algorithm.update(fraction)
                elapsed = time.monotonic() - started
                row = {
                    "step": self.global_step,
                    "wall_time": self.wall_time_before + elapsed,
                    "steps_per_second": (self.global_step - steps_at_start) / max(elapsed, 1e-9),
                    "episodes": self.episodes_done,
                    "episode_return": _mean(recent_returns),
                    "success_rate": _mean(recent_success),
                    **{f"episode_{k}": _mean(v) for k, v in recent_terms.items()},
                    **losses,
                }
                self.metrics_log.write(row)
                self.tensorboard.write("train", row, self.global_step)
                progress.update(
                    self.global_step,
                    row["steps_per_second"],
                    row["episode_return"],
                    row["success_rate"],
                )

            if self.global_step >= next_eval:
                next_eval += cfg.eval_every_steps
                summary = self.evaluate_and_log(progress, started)
            if self.global_step >= next_checkpoint:
                next_checkpoint += cfg.checkpoint_every_steps
                self.save_checkpoint("last", started)
            if (
                cfg.max_wall_seconds is not None
                and time.monotonic() - started >= cfg.max_wall_seconds
            ):
                stop_reason = f"max_wall_seconds ({cfg.max_wall_seconds:g} s) reached"
                break

        if self._last_eval_step != self.global_step:
            summary = self.evaluate_and_log(progress, started)
        self.save_checkpoint("last", started)
        progress.close()
        self.tensorboard.close()
        self.envs.close()
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None  # a later evaluate() builds a fresh one
        self._plot()
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

    def evaluate_and_log(self, progress: Progress, started: float) -> dict:
        cfg = self.config
        # Evaluation seeds differ per evaluation but never meet the final `iiwa-rl eval` ones.
        summary = self.evaluate(cfg.train.eval_episodes, cfg.eval.seed + 100_000 + self.global_step)
        self._last_eval_step = self.global_step
        row = {
            "step": self.global_step,
            "wall_time": self.wall_time_before + time.monotonic() - started,
            **summary,
        }
        self.eval_log.write(row)
        self.tensorboard.write("eval", row, self.global_step)
        progress.message(
            f"eval @ {self.global_step:,} steps ({row['wall_time']:.0f} s): success {summary['success_rate']:.1%}, "
            f"return {summary['mean_return']:.2f}"
            + (
                f", final TCP distance {summary['final_tcp_distance'] * 100:.1f} cm"
                if "final_tcp_distance" in summary
                else ""
            )
        )
        better = (summary["success_rate"], summary["mean_return"]) > (
            self.best_success,
            self.best_return,
        )
        if better:
            self.best_success, self.best_return = summary["success_rate"], summary["mean_return"]
            self.save_checkpoint("best", started)
        return summary

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, name: str, started: float) -> Path:
        state = {
            "version": CHECKPOINT_VERSION,
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
        path = self.checkpoint_dir / f"{name}.pt"
        partial = path.with_suffix(f".pt.partial.{os.getpid()}")
        with partial.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)  # atomic: a reader sees the old or the new file, never half
        return path

    def _load_checkpoint(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.algorithm.load_state_dict(state["algorithm"])
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.global_step = int(state["global_step"])
        self.episodes_done = int(state["episodes_done"])
        self.wall_time_before = float(state["wall_time"])
        self.best_success, self.best_return = state["best"]

    def _plot(self) -> None:
        from iiwa_rl.viz.plots import plot_runs

        try:
            plot_runs([self.run_dir], self.run_dir / "learning_curve.png")
        except ValueError as error:  # too few rows for a curve (a very short run)
            print(f"no learning curve: {error}")


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _merge_final_info(infos: dict, done: np.ndarray) -> dict:
    """Per-env step info where the finished envs' entries come from their last step
    (SAME_STEP autoreset puts those under `final_info`, the reset's info at top level)."""
    final = infos.get("final_info", {})
    merged = {}
    for key, values in final.items():
        if key.startswith("_"):
            continue
        current = infos.get(key)
        if current is None:
            current = np.zeros_like(values)
        merged[key] = np.where(done, values, current)
    for key, values in infos.items():
        if key not in merged and not key.startswith("_") and key not in ("final_info", "final_obs"):
            merged[key] = values
    return merged


# --------------------------------------------------------------- run directories
def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """(config, checkpoint state) of a run directory; `checkpoint` is best or last."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        fallback = run_dir / "checkpoints" / "last.pt"
        if checkpoint == "best" and fallback.exists():
            path = fallback
        else:
            raise FileNotFoundError(f"{path}: no such checkpoint")
    config = config_from_dict(yaml.safe_load(config_path.read_text()), str(config_path))
    state = torch.load(path, map_location=device, weights_only=False)
    return config, state


def build_policy(config: TrainConfig, state: dict, device: str = "cpu"):
    """(actor module, observation normaliser) restored from a checkpoint."""
    algorithm = ALGORITHMS[config.algorithm](
        config,
        state["observation_size"],
        state["action_size"],
        1,
        torch.device(device),
        config.seed,
    )
    algorithm.load_state_dict(state["algorithm"])
    normalizer = ObservationNormalizer(state["observation_size"], config.normalize.clip)
    normalizer.load_state_dict(state["obs_normalizer"])
    actor = algorithm.deterministic_actor().eval()
    return actor, normalizer
