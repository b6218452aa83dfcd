"""The trained policies under assets/policies/: each loads, carries a contract that agrees
with its sidecar and with the config that made it, and still does its task in the current
simulator (a change to the environment that breaks a shipped policy fails here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iiwa_rl.config import load_config
from iiwa_rl.evaluation import run_episodes, summarize_episodes
from iiwa_rl.schema import to_mapping
from iiwa_rl.viz.policies import load_policy, make_env, read_contract

POLICIES = Path(__file__).resolve().parents[1] / "assets" / "policies"
# Each shipped policy and the success rate it must keep on a few deterministic episodes
# (its README row quotes the 100-episode figure).
EXPECTED = {
    "reach": {"env_id": "IiwaReach-v0", "min_success": 1.0},
    # Trained with domain randomisation (configs/reach_ppo_dr.yaml); judged nominal here.
    "reach_dr": {"env_id": "IiwaReach-v0", "min_success": 1.0},
    "grasp": {"env_id": "IiwaGrasp-v0", "min_success": 0.8},
    # Randomised, and its episodes ended at a finger on the cube's top
    # (configs/grasp_ppo_dr.yaml); judged nominal here, as its contract's env_kwargs are.
    "grasp_dr": {"env_id": "IiwaGrasp-v0", "min_success": 0.8},
}
EPISODES, SEED = 10, 20000  # seeds apart from the ones the README's evaluations used


def test_every_shipped_policy_is_covered():
    shipped = sorted(p.parent.name for p in POLICIES.glob("*/policy.onnx"))
    assert shipped == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_contract_matches_sidecar_and_config(name):
    folder = POLICIES / name
    contract = read_contract(folder / "policy.onnx")
    assert contract == json.loads((folder / "policy.json").read_text())
    assert contract["env_id"] == EXPECTED[name]["env_id"]

    config = load_config(folder / "config.yaml")
    assert config.env.id == contract["env_id"]
    env = make_env(config.env.id, config.env.kwargs)
    try:
        built = to_mapping(env.unwrapped.config)
    finally:
        env.close()
    # Every setting the policy was trained with is what its config builds today.
    assert {key: built.get(key) for key in contract["env_kwargs"]} == contract["env_kwargs"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_policy_still_does_its_task(name):
    loaded = load_policy(POLICIES / name)
    env = make_env(loaded.env_id, loaded.env_kwargs)
    try:
        summary = summarize_episodes(run_episodes(loaded.bind(env), env, EPISODES, SEED))
    finally:
        env.close()
    print(name, summary)
    assert summary["success_rate"] >= EXPECTED[name]["min_success"]


def test_controller_runtime_takes_the_reach_and_the_grasp_policy():
    from iiwa_deploy.config import load_robot_config
    from iiwa_deploy.policy import load_policy as load_on_controller

    robot = load_robot_config()
    _, steps = load_on_controller(POLICIES / "reach" / "policy.onnx", robot, warmup_runs=1)
    assert steps >= 1
    # The grasp: Cartesian actions, the cube's pose and the gripper (protocol version 2).
    grasp, steps = load_on_controller(POLICIES / "grasp" / "policy.onnx", robot, warmup_runs=1)
    assert steps >= 1 and grasp.contract.action_mode == "cartesian"
    assert grasp.contract.grasp is not None


def test_eval_command_takes_an_exported_policy_and_refuses_a_bare_config(capsys):
    from iiwa_rl.cli import main

    assert main(["eval", str(POLICIES / "reach"), "--episodes", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["policy"] == str(POLICIES / "reach")
    assert summary["success_rate"] == 1.0
    config = Path(__file__).resolve().parents[1] / "configs" / "reach_ppo.yaml"
    assert main(["eval", str(config)]) == 2
    assert "no trained policy" in capsys.readouterr().err


def test_deploy_command_runs_reach_and_exits_like_the_controller_runtime(capsys):
    """`iiwa-rl deploy` answers with `python -m iiwa_deploy run`'s exit codes: 0 for a clean
    run, 2 for a refused policy, 3 for a fault (here: no robot ever sends a state)."""
    from iiwa_deploy.cli import EXIT_FAULT, EXIT_REFUSED

    from iiwa_rl.cli import main

    reach = POLICIES / "reach" / "policy.onnx"
    assert main(["deploy", str(reach), "--robot", "sim", "--duration", "0.5"]) == 0
    assert "faults: none" in capsys.readouterr().out
    # The grasp runs too now (tests/test_deploy_grasp.py); a model that is not there is
    # refused before anything starts.
    assert main(["deploy", str(POLICIES / "missing.onnx"), "--robot", "sim"]) == EXIT_REFUSED
    assert "refused" in capsys.readouterr().out
    silent = ["--robot", "udp", "--bind", "127.0.0.1:0", "--first-state-timeout", "0.3"]
    assert main(["deploy", str(reach), *silent]) == EXIT_FAULT
    assert "no robot state within 0.3 s" in capsys.readouterr().out
    # A timeout that could never be met is a usage error, caught before anything starts.
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit) as exited:
            main(["deploy", str(reach), "--robot", "udp", "--first-state-timeout", bad])
        assert exited.value.code == 2
        assert f"--first-state-timeout: '{bad}'" in capsys.readouterr().err
