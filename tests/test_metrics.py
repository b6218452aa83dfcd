"""Task metrics (iiwa_rl/metrics.py) and the one rollout loop (iiwa_rl/rollout.py).

A task reports its figures as info["metrics/<name>"] and declares them; evaluation, the
trainer's eval.csv, the plots, the overlay and the robustness table take whatever a task
declares. A tiny task defined here (a point on a line, no simulator) shows a new task's
metrics reaching them with no change to them; the reach and grasp tasks are checked to
report every metric they declare."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from iiwa_rl.evaluation import run_episodes, summarize_episodes
from iiwa_rl.metrics import PREFIX, Metric, format_value, headline_metric, task_metrics
from iiwa_rl.rollout import Rollout

ROOT = Path(__file__).resolve().parents[1]
LINE_ID = "MetricLine-v0"


class MetricLine(gym.Env):
    """A point on a line, moved by the action; 4 steps an episode. It reports its position
    (final and max columns), its speed (mean), whether its last step crossed zero (counted
    over episodes), a figure kept out of evaluation and one it does not declare."""

    metrics = (
        Metric("position", "final position", "m", log_scale=True),
        Metric("position", episode="max"),
        Metric("speed", episode="mean"),
        Metric("crossed", over_episodes="count", column="crossings"),
        Metric("hidden", evaluated=False),
    )
    headline_metric = "position"
    episode_steps = 4

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.positions: list[float] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.0, 1.0))
        self.steps = 0
        self.positions = []
        return np.array([self.x], np.float32), {PREFIX + "position": self.x}

    def step(self, action):
        before = self.x
        self.x += float(action[0])
        self.steps += 1
        self.positions.append(self.x)
        info = {
            "is_success": abs(self.x) < 0.1,
            PREFIX + "position": self.x,
            PREFIX + "speed": abs(self.x - before),
            PREFIX + "crossed": (before < 0) != (self.x < 0),
            PREFIX + "hidden": 1.0,
            PREFIX + "undeclared": 2.0 * self.x,
        }
        return np.array([self.x], np.float32), -abs(self.x), False, self.steps >= 4, info


if LINE_ID not in gym.registry:
    gym.register(LINE_ID, entry_point=MetricLine, disable_env_checker=True)


def _by_hand(env: MetricLine, act, episodes: int, seed: int) -> dict:
    """The columns of `episodes` episodes, computed here from the positions."""
    finals, maxima, speeds, crossings = [], [], [], 0
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        start = env.x
        done = False
        while not done:
            observation, _, terminated, truncated, _ = env.step(act(observation[None])[0])
            done = terminated or truncated
        path = [start, *env.positions]
        finals.append(path[-1])
        maxima.append(max(env.positions))
        speeds.append(np.mean(np.abs(np.diff(path))))
        crossings += (path[-2] < 0) != (path[-1] < 0)  # episodes whose last step crossed
    return {
        "final_position": float(np.mean(finals)),
        "max_position": float(np.mean(maxima)),
        "mean_speed": float(np.mean(speeds)),
        "crossings": crossings,
        "final_undeclared": 2.0 * float(np.mean(finals)),
    }


def _swinging_policy(observations: np.ndarray) -> np.ndarray:
    # Towards and past zero: every episode crosses it, speeds differ step to step.
    return np.clip(-1.3 * observations.astype(np.float32), -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------- a new task's metrics
def test_evaluation_summarises_what_a_new_task_declares():
    env = MetricLine()
    results = run_episodes(_swinging_policy, env, episodes=3, seed=11)
    summary = summarize_episodes(results)
    expected = _by_hand(MetricLine(), _swinging_policy, episodes=3, seed=11)
    assert list(summary) == [
        "episodes",
        "success_rate",
        "mean_return",
        "mean_length",
        "final_position",
        "max_position",
        "mean_speed",
        "crossings",
        "final_undeclared",
    ]
    for column, value in expected.items():
        assert summary[column] == pytest.approx(value, rel=1e-12), column
    assert isinstance(summary["crossings"], int) and summary["crossings"] == 3
    assert summary["max_position"] != summary["final_position"]  # the reductions differ
    assert "final_hidden" not in summary  # evaluated=False: in info only


def test_a_new_tasks_metrics_reach_eval_csv_the_progress_line_and_the_plot(tmp_path, capsys):
    from iiwa_rl.config import config_from_dict
    from iiwa_rl.train import Trainer
    from iiwa_rl.viz.plots import _headline_metrics, plot_runs

    config = config_from_dict(
        {
            "env": {"id": LINE_ID, "num_envs": 2, "vector_mode": "sync"},
            "policy": {"hidden_sizes": [8]},
            "critic": {"hidden_sizes": [8]},
            "ppo": {"rollout_steps": 8, "minibatch_size": 16, "epochs": 1},
            "train": {
                "total_steps": 32,
                "eval_every_steps": 16,
                "eval_episodes": 2,
                "checkpoint_every_steps": 32,
                "progress": "quiet",
            },
        }
    )
    run_dir = tmp_path / "run"
    Trainer(config, run_dir).train()
    with (run_dir / "eval.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for column in ("final_position", "max_position", "mean_speed", "crossings"):
        assert all(row[column] != "" for row in rows), column
    assert "final position" in capsys.readouterr().err  # the headline, in the progress line
    assert list(_headline_metrics([run_dir])) == ["final_position"]
    assert plot_runs([run_dir], tmp_path / "curves.png").is_file()


def test_metric_declarations_are_checked():
    with pytest.raises(ValueError, match="episode must be one of"):
        Metric("x", episode="median")
    with pytest.raises(ValueError, match="over_episodes must be one of"):
        Metric("x", over_episodes="sum")
    assert Metric("tcp_distance").column_name == "final_tcp_distance"
    assert Metric("lift", "max lift", "m", episode="max").column_title == "max lift (m)"


# ------------------------------------------------------------- the shipped tasks
@pytest.mark.parametrize("env_id", ["IiwaReach-v0", "IiwaGrasp-v0"])
def test_the_tasks_report_every_metric_they_declare(env_id):
    env = gym.make(env_id, episode_steps=3)
    declared = {metric.key for metric in env.unwrapped.metrics}
    assert declared, f"{env_id} declares no metrics"
    try:
        _, reset_info = env.reset(seed=0)
        infos = []
        for _ in range(3):
            *_, info = env.step(np.zeros(env.action_space.shape, np.float32))
            infos.append(info)
    finally:
        env.close()
    # Every declared metric is in the episode's final info; the ones it reports at every
    # step are in the reset's info and every step's too.
    assert declared <= set(infos[-1]), declared - set(infos[-1])
    every_step = {key for key in reset_info if key.startswith(PREFIX)}
    assert headline_metric(env) is not None and headline_metric(env).key in every_step
    assert env.unwrapped.distance_metric is not None
    assert PREFIX + env.unwrapped.distance_metric in every_step
    for info in infos:
        assert every_step <= set(info)


@pytest.mark.parametrize("env_id", ["IiwaReach-v0", "IiwaGrasp-v0"])
def test_an_evaluation_of_a_task_has_a_column_per_evaluated_metric(env_id):
    env = gym.make(env_id, episode_steps=3)
    try:
        size = env.action_space.shape[0]
        summary = summarize_episodes(
            run_episodes(lambda o: np.zeros((len(o), size), np.float32), env, 2, 0)
        )
        metrics = env.unwrapped.metrics
    finally:
        env.close()
    columns = [metric.column_name for metric in metrics if metric.evaluated]
    assert list(summary)[4:] == columns


def test_the_generic_modules_name_no_tasks_metric():
    """Evaluation, training, the plots, the overlay, policies and the robustness table
    read a task's figures through its declarations only."""
    from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv
    from iiwa_rl.envs.tasks.reach import IiwaReachEnv

    names = set()
    for task in (IiwaReachEnv, IiwaGraspEnv):
        for metric in task.metrics:
            names.update((metric.name, metric.column_name))
    generic = [
        "iiwa_rl/evaluation.py",
        "iiwa_rl/train.py",
        "iiwa_rl/episode_stats.py",
        "iiwa_rl/rollout.py",
        "iiwa_rl/metrics.py",
        "iiwa_rl/robustness.py",
        "iiwa_rl/viz/overlay.py",
        "iiwa_rl/viz/plots.py",
        "iiwa_rl/viz/policies.py",
        "iiwa_rl/viz/record.py",
        "iiwa_rl/viz/viewer.py",
    ]
    for path in generic:
        text = (ROOT / path).read_text()
        found = sorted(name for name in names if re.search(rf"\b{name}\b", text))
        assert not found, f"{path} names task metrics {found}"


# ----------------------------------------------------------------------- overlay
def test_the_overlay_shows_the_tasks_own_lines_or_its_figures():
    from iiwa_rl.viz.overlay import EpisodeStatus, status_from_info

    env = gym.make("IiwaReach-v0")
    try:
        _, info = env.reset(seed=0)
        status = status_from_info(env, info, EpisodeStatus())
        distance = info[PREFIX + "tcp_distance"]
        assert status.task_lines == [f"TCP to goal {distance * 100:.1f} cm"]
        # A step without figures (a physics blow-up's) keeps the last ones up.
        status_from_info(env, {"is_success": False, "physics_blowup": True}, status)
        assert status.task_lines == [f"TCP to goal {distance * 100:.1f} cm"]
    finally:
        env.close()
    line = MetricLine()
    _, info = line.reset(seed=0)
    status = status_from_info(line, info, EpisodeStatus())
    assert status.task_lines == [f"position {line.x:.4g}"]
    assert task_metrics(info) == {"position": line.x}


# ----------------------------------------------------------------------- rollout
class _CountingPolicy:
    def __init__(self):
        self.resets = 0
        self.calls = 0

    def __call__(self, observation):
        self.calls += 1
        return np.array([0.1], np.float32)

    def reset(self):
        self.resets += 1


class _RecordingLine(MetricLine):
    def __init__(self):
        super().__init__()
        self.reset_calls = []

    def reset(self, *, seed=None, options=None):
        self.reset_calls.append((seed, options))
        return super().reset(seed=seed, options=options)


def test_rollout_seeds_options_hooks_and_policy_reset():
    env, policy = _RecordingLine(), _CountingPolicy()
    steps = []
    episodes = Rollout(env, policy, seed=5, options={"goal": 1}).run(2, on_step=steps.append)
    assert env.reset_calls == [(5, {"goal": 1}), (6, {"goal": 1})]
    assert policy.resets == 2 and policy.calls == 8
    assert [e.length for e in episodes] == [4, 4] and [e.seed for e in episodes] == [5, 6]
    assert [(s.episode, s.step) for s in steps[:5]] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    first = steps[:4]
    assert episodes[0].episode_return == pytest.approx(sum(s.reward for s in first))
    assert first[-1].episode_return == pytest.approx(episodes[0].episode_return)
    assert first[-1].done and not first[0].done
    assert episodes[0].final_info == first[-1].info
    # What an action was chosen on, and what came of it, chain step to step.
    np.testing.assert_array_equal(steps[1].observation, steps[0].next_observation)


def test_rollout_stops_mid_episode_and_takes_seeds_from_a_function():
    env = _RecordingLine()
    seeds = iter([3, 99])
    rollout = Rollout(env, _CountingPolicy(), seed=lambda episode: next(seeds), options=None)
    finished = rollout.run(stop=lambda step: step.episode == 1 and step.step == 2)
    assert [e.seed for e in finished] == [3] and env.reset_calls == [(3, None), (99, None)]
    assert rollout.episode == 1 and not rollout.done
    with pytest.raises(ValueError, match="episodes or a stop"):
        rollout.run()


def test_a_length_reads_in_centimetres_and_other_figures_as_they_are():
    # The progress line's and bench_time_to_success's headline figure.
    assert format_value(Metric("tcp_distance", unit="m"), 0.0634) == "6.3 cm"
    assert format_value(Metric("cube_lift"), 0.123456) == "0.1235"
