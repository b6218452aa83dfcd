"""Fixtures that more than one test module uses."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEVER = "1000000000"  # an interval no test run reaches
# A short learning run: seed 0, a constant learning rate (a linear decay over so short a run
# stops it early), no evaluations or checkpoints, quiet, no time limit.
LEARNING_RUN = [
    "seed=0",
    "ppo.lr_schedule=constant",
    f"train.eval_every_steps={NEVER}",
    f"train.checkpoint_every_steps={NEVER}",
    "train.eval_episodes=1",
    "train.progress=quiet",
    "train.max_wall_seconds=null",
]


@dataclass
class TrainedRun:
    run_dir: Path
    config: object  # iiwa_rl.config.TrainConfig
    untrained_actor: object  # the actor and the observation normaliser before training
    untrained_normalizer: object


@pytest.fixture(scope="session")
def learning_run(tmp_path_factory):
    """`learning_run(config_path, overrides)`: trains a short learning run (LEARNING_RUN,
    then `overrides`) into a new directory and returns it as a TrainedRun, with the policy
    as it was before training."""
    from iiwa_rl.config import load_config
    from iiwa_rl.train import Trainer

    def train(config_path: Path, overrides: list[str]) -> TrainedRun:
        config = load_config(config_path, [*LEARNING_RUN, *overrides])
        run_dir = tmp_path_factory.mktemp("learning-run") / "run"
        trainer = Trainer(config, run_dir)
        untrained_actor = copy.deepcopy(trainer.algorithm.deterministic_actor())
        untrained_normalizer = copy.deepcopy(trainer.obs_normalizer)
        trainer.train()
        return TrainedRun(run_dir, config, untrained_actor, untrained_normalizer)

    return train


@pytest.fixture(scope="session")
def reach_trained_150k(learning_run) -> TrainedRun:
    """configs/reach_ppo.yaml trained 150k steps in batched mode as a short learning run.
    test_training's learning check and test_ray's batched reference are this one run: the
    suite's longest minutes, spent once."""
    return learning_run(
        REPO / "configs" / "reach_ppo.yaml",
        ["train.total_steps=150000", "env.vector_mode=batched"],
    )
