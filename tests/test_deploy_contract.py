"""Contract loading and refusal, robot configuration checks, and the ONNX Runtime policy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy.config import ConfigError, load_robot_config  # noqa: E402
from iiwa_deploy.contract import ContractError  # noqa: E402
from iiwa_deploy.policy import (  # noqa: E402
    create_session,
    load_policy,
    low_latency_session_options,
)

ROBOT = support.ROBOT


def refusal(tmp_path: Path, **write_arguments: object) -> str:
    model = support.write_policy(tmp_path, **write_arguments)
    with pytest.raises(ContractError) as caught:
        load_policy(model, ROBOT, warmup_runs=1)
    return str(caught.value)


def test_valid_model_loads_with_eight_robot_periods_per_policy_step(tmp_path: Path) -> None:
    model = support.write_policy(tmp_path, support.make_contract())
    policy, steps = load_policy(model, ROBOT, warmup_runs=3)
    assert steps == 8
    assert policy.contract.observation_size == 30
    assert policy.contract.action_mode == "joint_delta"
    assert [p.name for p in policy.contract.observation_layout][-1] == "previous_action"


def test_model_without_metadata_is_refused_even_with_a_sidecar(tmp_path: Path) -> None:
    message = refusal(tmp_path, contract=None, sidecar=support.make_contract())
    assert "no 'iiwa_rl_contract' metadata" in message


def test_metadata_that_is_not_json_is_refused(tmp_path: Path) -> None:
    message = refusal(
        tmp_path, contract=support.make_contract(), metadata_text="{broken", sidecar=False
    )
    assert "not valid JSON" in message


def test_observation_size_must_match_the_onnx_input_width(tmp_path: Path) -> None:
    message = refusal(tmp_path, contract=support.make_contract(), weights=np.zeros((31, 7)))
    assert "observation size is 30" in message and "width 31" in message


def test_observation_size_must_match_the_layout(tmp_path: Path) -> None:
    contract = support.make_contract()
    contract["observation"]["size"] = 29
    message = refusal(tmp_path, contract=contract, weights=np.zeros((29, 7)))
    assert "observation.size is 29" in message and "add up to 30" in message


def test_action_size_must_match_the_onnx_output_width(tmp_path: Path) -> None:
    message = refusal(
        tmp_path, contract=support.make_contract(), weights=np.zeros((30, 6)), bias=np.zeros(6)
    )
    assert "action size is 7" in message and "width 6" in message


def test_joint_order_mismatch_is_refused(tmp_path: Path) -> None:
    contract = support.make_contract()
    names = contract["action"]["joint_names"]
    names[0], names[1] = names[1], names[0]
    joints = contract["kinematics"]["joints"]
    joints[0]["name"], joints[1]["name"] = joints[1]["name"], joints[0]["name"]
    message = refusal(tmp_path, contract=contract)
    assert "joint order differs" in message


def test_policy_period_that_is_not_a_multiple_of_the_robot_period_is_refused(
    tmp_path: Path,
) -> None:
    robot = ROBOT.replace(expected_control_period_s=None)
    model = support.write_policy(tmp_path, support.make_contract(control_period_s=0.052))
    with pytest.raises(ContractError, match="not a whole multiple of the robot period"):
        load_policy(model, robot, warmup_runs=1)


def test_policy_period_other_than_the_expected_one_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, contract=support.make_contract(control_period_s=0.1))
    assert "expects 0.04 s" in message


def test_any_multiple_is_accepted_without_an_expected_period(tmp_path: Path) -> None:
    robot = ROBOT.replace(expected_control_period_s=None)
    model = support.write_policy(tmp_path, support.make_contract(control_period_s=0.02))
    assert load_policy(model, robot, warmup_runs=1)[1] == 4


def test_unknown_observation_piece_is_refused_by_name(tmp_path: Path) -> None:
    contract = support.make_contract()
    contract["observation"]["layout"][2] = {"name": "cube_position", "size": 3}
    message = refusal(tmp_path, contract=contract)
    assert "'cube_position' cannot be built from joint state" in message


def test_unknown_action_mode_is_refused(tmp_path: Path) -> None:
    contract = support.make_contract()
    contract["action"]["mode"] = "joint_velocity"
    message = refusal(tmp_path, contract=contract)
    assert "unknown action mode 'joint_velocity'" in message


def test_unsupported_format_version_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, contract=support.make_contract(format_version=1))
    assert "format_version" in message


def test_placeholder_limits_from_another_robot_model_are_refused(tmp_path: Path) -> None:
    contract = support.make_contract()
    contract["joint_limits"]["velocity"] = [10.0] * 7
    message = refusal(tmp_path, contract=contract)
    assert "joint_limits.velocity" in message and "iiwa_joint_1: contract 10" in message


def test_sidecar_that_differs_from_the_metadata_is_refused(tmp_path: Path) -> None:
    stale = support.make_contract(success_threshold_m=0.05)
    message = refusal(tmp_path, contract=support.make_contract(), sidecar=stale)
    assert "policy.json differs" in message and "success_threshold_m" in message


def test_model_without_a_sidecar_is_accepted(tmp_path: Path) -> None:
    model = support.write_policy(tmp_path, support.make_contract(), sidecar=False)
    assert not model.with_suffix(".json").exists()
    load_policy(model, ROBOT, warmup_runs=1)


def test_missing_contract_key_is_named(tmp_path: Path) -> None:
    contract = support.make_contract()
    del contract["goal_sampling"]
    assert "contract.goal_sampling: required key is missing" in refusal(tmp_path, contract=contract)


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="no such model file"):
        load_policy(tmp_path / "absent.onnx", ROBOT)


def test_session_options_are_set_for_low_latency() -> None:
    options = low_latency_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_bound_buffers_give_the_same_actions_as_a_plain_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(30, 7))
    bias = rng.normal(size=7)
    model = support.write_policy(tmp_path, support.make_contract(), weights=weights, bias=bias)
    policy, _ = load_policy(model, ROBOT, warmup_runs=2)
    reference = create_session(model)
    for _ in range(5):
        observation = rng.normal(size=30).astype(np.float32)
        expected = reference.run(["action"], {"observation": observation[None]})[0][0]
        np.testing.assert_allclose(policy.act(observation), expected, rtol=1e-6)
        np.testing.assert_allclose(
            expected, np.clip(observation @ weights + bias, -1, 1), rtol=1e-4, atol=1e-5
        )


def test_shipped_robot_config_carries_the_datasheet_limits() -> None:
    robot = load_robot_config()
    np.testing.assert_allclose(np.degrees(robot.upper), [170, 120, 170, 120, 170, 120, 175])
    np.testing.assert_allclose(np.degrees(robot.velocity), [85, 85, 100, 75, 130, 135, 135])
    np.testing.assert_allclose(robot.effort, [320, 320, 176, 176, 110, 40, 40])
    np.testing.assert_allclose(robot.lower, -robot.upper)
    assert robot.robot_period_s == 0.005


def test_robot_config_refuses_unknown_keys_and_inconsistent_margins(tmp_path: Path) -> None:
    data = yaml.safe_load((support.DEPLOY_DIR / "iiwa_deploy" / "robot_iiwa14.yaml").read_text())
    data["safety"]["stale_timout_s"] = 0.1
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="unknown key 'stale_timout_s'"):
        load_robot_config(path)
    del data["safety"]["stale_timout_s"]
    data["safety"]["setpoint_margin_rad"] = 0.1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="must not exceed safety.target_margin_rad"):
        load_robot_config(path)


def test_contract_json_round_trip_is_what_the_sidecar_holds(tmp_path: Path) -> None:
    contract = support.make_contract()
    model = support.write_policy(tmp_path, contract)
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert len(sidecar.pop("model_sha256")) == 64  # written with the model, as the exporter does
    assert sidecar == contract


def test_robot_config_is_also_reachable_at_deploy_robot_iiwa14_yaml() -> None:
    from_path = load_robot_config(support.DEPLOY_DIR / "robot_iiwa14.yaml")
    assert from_path.joint_names == ROBOT.joint_names
    np.testing.assert_array_equal(from_path.velocity, ROBOT.velocity)
