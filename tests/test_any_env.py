"""Any Gymnasium environment trains by naming it: one that registers when its package is
imported (panda-gym, gymnasium-robotics, a user's own) is named `module:EnvId`. The
package here is written by the test, and behaves like panda-gym where that matters: it
refuses render_mode=None."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from iiwa_rl.cli import main
from iiwa_rl.config import config_from_dict, load_config
from iiwa_rl.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]

PACKAGE = {
    "__init__.py": """
        import gymnasium as gym

        # Registered on import, as panda-gym registers PandaReachDense-v3.
        gym.register("TinyLine-v0", entry_point="tinyline.env:TinyLine", max_episode_steps=25)
    """,
    "env.py": """
        import gymnasium as gym
        import numpy as np


        class TinyLine(gym.Env):
            \"\"\"Move a point on a line to the goal: reward -|x - goal| per step.\"\"\"

            metadata = {"render_modes": ["rgb_array", "human"]}

            def __init__(self, render_mode="rgb_array", goal=0.5):
                # panda-gym's check, which an explicit render_mode=None fails.
                if render_mode not in ("rgb_array", "human"):
                    raise ValueError("The 'render' argument is must be in {'rgb_array', 'human'}")
                self.render_mode, self.goal = render_mode, goal
                self.observation_space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
                self.action_space = gym.spaces.Box(-0.2, 0.2, (1,), np.float32)

            def _observation(self):
                return np.array([self.x, self.goal], np.float32)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.x = float(self.np_random.uniform(-1.0, 1.0))
                return self._observation(), {}

            def step(self, action):
                self.x = float(np.clip(self.x + float(action[0]), -5.0, 5.0))
                distance = abs(self.x - self.goal)
                success = distance < 0.05
                return self._observation(), -distance, success, False, {"is_success": success}
    """,
}
ENV_ID = "tinyline:TinyLine-v0"


@pytest.fixture(scope="module")
def package_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "tinyline").mkdir()
    for name, text in PACKAGE.items():
        (root / "tinyline" / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def on_path(package_root, monkeypatch) -> Path:
    """The package importable here and in subprocess workers (spawned: PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(package_root))
    paths = [str(package_root), str(REPO), str(REPO / "deploy"), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return package_root


def _config(vector_mode: str = "sync", **env) -> dict:
    return {
        "env": {"id": ENV_ID, "num_envs": 2, "vector_mode": vector_mode, **env},
        "policy": {"hidden_sizes": [16]},
        "critic": {"hidden_sizes": [16]},
        "ppo": {"rollout_steps": 25, "minibatch_size": 50, "epochs": 1},
        "train": {
            "total_steps": 100,
            "eval_every_steps": 100,
            "eval_episodes": 2,
            "checkpoint_every_steps": 100,
            "progress": "quiet",
        },
    }


def test_import_iiwa_rl_alone_registers_the_project_envs():
    script = (
        "import sys, gymnasium as gym, iiwa_rl\n"
        "print(sorted(k for k in gym.registry if k.startswith('Iiwa')))\n"
        "print('pybullet' in sys.modules)\n"
        "env = gym.make('IiwaReach-v0'); env.reset(seed=0); env.close(); print('made')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'deploy'}"},
    )
    assert result.returncode == 0, result.stderr
    registered, pybullet_loaded, made = result.stdout.split("\n")[:3]
    assert registered == "['IiwaGrasp-v0', 'IiwaReach-v0']"
    assert pybullet_loaded == "False"  # registering imports no simulator
    assert made == "made"


def test_an_id_registered_on_import_needs_its_module_and_says_so():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"env": {"id": "TinyNever-v0"}}, "cfg.yaml")
    message = str(error.value)
    assert message.startswith("cfg.yaml: env.id: unknown environment 'TinyNever-v0'")
    assert "module:EnvId" in message and "panda_gym:PandaReachDense-v3" in message


@pytest.mark.parametrize(
    "env_id,expected",
    [
        ("no_such_package_here:Tiny-v0", "cannot import module 'no_such_package_here'"),
        ("json:TinyNever-v0", "importing 'json' did not register it"),
    ],
)
def test_module_form_errors_name_the_module(env_id, expected):
    with pytest.raises(ConfigError, match="env.id") as error:
        config_from_dict({"env": {"id": env_id}}, "cfg.yaml")
    assert expected in str(error.value)


def test_a_package_env_trains_evaluates_and_its_run_evaluates_from_the_cli(
    on_path, tmp_path, monkeypatch, capsys
):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(_config()))
    assert load_config(config_path).env.id == ENV_ID
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("iiwa_rl.cli.draw_learning_curve", lambda run_dir: None)
    assert main(["train", str(config_path), "--run-dir", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    # eval builds the env the run names, passing no render_mode it was not asked for.
    assert main(["eval", str(run_dir), "--episodes", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["trained_steps"] == 100


def test_a_package_env_runs_in_subprocess_workers(on_path, tmp_path):
    from iiwa_rl.train import Trainer

    config = config_from_dict(_config("batched", workers=2))
    trainer = Trainer(config, tmp_path / "run")
    assert len(trainer.envs._processes) == 1  # one env stepped in a worker process
    summary = trainer.train()
    assert summary["step"] == 100 and summary["episodes"] == 2


def test_make_env_passes_only_what_is_asked_for(on_path):
    from iiwa_rl.viz.policies import make_env

    env = make_env(ENV_ID, {"goal": 0.25})
    assert env.unwrapped.render_mode == "rgb_array" and env.unwrapped.goal == 0.25
    env.close()
    env = make_env(ENV_ID, {}, render_mode="human")
    assert env.unwrapped.render_mode == "human"
    env.close()
