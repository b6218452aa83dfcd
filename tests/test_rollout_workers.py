"""`env.vector_mode: rollout_workers`: this process and subprocesses each act and step their
slice of the environments for a whole rollout. A run is reproducible from its config and
seed, the learner's own torch generator is left alone, a dead worker is named in the
error, and bad layouts fail before work. (The same semantics as ray mode, number for
number: tests/test_ray.py.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import iiwa_rl.envs  # noqa: F401  (registers the ids)
from iiwa_rl.config import load_config
from iiwa_rl.rollout_workers import ProcessCollector, RolloutWorkerError
from iiwa_rl.schema import ConfigError
from iiwa_rl.train import Trainer

REPO = Path(__file__).resolve().parents[1]
REACH = REPO / "configs" / "reach_ppo.yaml"
NEVER = "1000000000"


def tiny_rollout_worker_overrides(total_steps: int, workers: int = 2) -> list[str]:
    """4 envs in `workers` processes, 16-step rollouts with episode ends inside them."""
    return [
        "env.vector_mode=rollout_workers",
        f"env.workers={workers}",
        "env.num_envs=4",
        "env.kwargs.episode_steps=10",
        "ppo.rollout_steps=16",
        "ppo.minibatch_size=32",
        "ppo.epochs=2",
        f"train.total_steps={total_steps}",
        f"train.eval_every_steps={NEVER}",
        f"train.checkpoint_every_steps={NEVER}",
        "train.eval_episodes=1",
        "train.progress=quiet",
        "train.max_wall_seconds=null",
        "device=cpu",
    ]


def trained_weights(run_dir: Path, overrides: list[str]) -> list[torch.Tensor]:
    trainer = Trainer(load_config(REACH, overrides), run_dir)
    trainer.train()
    networks = trainer.algorithm.state_dict()
    return [*networks["actor"].values(), *networks["critic"].values()]


def test_a_run_is_reproducible_and_learns_from_every_worker(tmp_path):
    overrides = tiny_rollout_worker_overrides(192)
    first = trained_weights(tmp_path / "first", overrides)
    second = trained_weights(tmp_path / "second", overrides)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # The seed reaches the workers: another seed acts (and so learns) otherwise.
    other = trained_weights(tmp_path / "other", [*overrides, "seed=1"])
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_the_collection_leaves_the_learners_torch_generator_alone(tmp_path):
    """Worker 0 lives in the learner's process and seeds torch's global generator as a
    worker in its own process does; the learner must not see that."""
    trainer = Trainer(load_config(REACH, tiny_rollout_worker_overrides(64)), tmp_path / "run")
    try:
        collector = trainer.collector
        assert isinstance(collector, ProcessCollector)
        collector.start(_acting(trainer), seed=0)
        before = torch.get_rng_state()
        collector.next_step()  # the first step gathers a whole collection
        assert torch.equal(before, torch.get_rng_state())
    finally:
        collector.close()


def test_a_killed_worker_is_named_and_nothing_is_left_running(tmp_path):
    trainer = Trainer(load_config(REACH, tiny_rollout_worker_overrides(64)), tmp_path / "run")
    collector = trainer.collector
    process = collector._processes[0]
    try:
        collector.start(_acting(trainer), seed=0)
        collector.next_step()
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=10)
        with pytest.raises(
            RolloutWorkerError, match=r"rollout worker 1 \(pid \d+\) exited with code -9"
        ):
            for _ in range(17):  # past the collection in hand, into the next one
                collector.next_step()
    finally:
        collector.close()
    assert not process.is_alive()


def test_bad_layouts_fail_before_work():
    with pytest.raises(ConfigError, match=r"num_envs \(6\) must be a multiple of workers \(4\)"):
        load_config(REACH, ["env.vector_mode=rollout_workers", "env.workers=4", "env.num_envs=6"])
    with pytest.raises(ConfigError, match="ddpg updates after every vector step"):
        load_config(REPO / "configs" / "reach_ddpg.yaml", ["env.vector_mode=rollout_workers"])


def _acting(trainer):
    from iiwa_rl.collectors import Acting

    return Acting(trainer.algorithm, trainer.obs_normalizer, trainer.flatten, trainer.scale_action)
