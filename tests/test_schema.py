"""One validator (iiwa_deploy/schema.py) for the training configs, the controller's robot
configuration and the policy contract: the same checks (types, finiteness, ranges, unknown
and missing keys), every error naming the file and the key."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy import config as robot_config_module  # noqa: E402
from iiwa_deploy import schema  # noqa: E402
from iiwa_deploy.config import GripperLimits, load_robot_config  # noqa: E402
from iiwa_deploy.contract import ContractError, parse_contract  # noqa: E402

import iiwa_rl.schema  # noqa: E402

SHIPPED = support.DEPLOY_DIR / "iiwa_deploy" / "robot_iiwa14.yaml"


def test_training_and_controller_share_one_validator():
    assert iiwa_rl.schema.from_mapping is schema.from_mapping
    assert iiwa_rl.schema.Range is schema.Range
    assert iiwa_rl.schema.ConfigError is schema.ConfigError is robot_config_module.ConfigError
    # The contract's refusals are ContractErrors (the controller's exit code for them);
    # the training side's ConfigError handlers do not swallow them.
    assert not issubclass(ContractError, schema.ConfigError)


def _robot_yaml(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(SHIPPED.read_text())
    edit(data)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["safety"].update(stale_timeout_s=float("nan")),
            "safety.stale_timeout_s: expected a finite number, got nan",
        ),
        (
            lambda d: d["joint_limits"]["velocity"].__setitem__(2, -1.0),
            r"joint_limits.velocity\[2\]: must be a positive number, got -1.0",
        ),
        (
            lambda d: d["joint_limits"].update(effort=[1.0] * 6),
            r"joint_limits.effort: expected one number or 7 \(one per joint\), got 6",
        ),
        (
            lambda d: d["interpolator"].update(velocity_fraction="fast"),
            "interpolator.velocity_fraction: expected a number, got 'fast'",
        ),
        (
            lambda d: d["interpolator"].update(velocity_fraction=1.5),
            r"interpolator.velocity_fraction: must be in \(0, 1\], got 1.5",
        ),
        (lambda d: d.pop("robot_period_s"), "robot_period_s: required key is missing"),
        (lambda d: d.update(robot_period=0.005), "top level: unknown key 'robot_period'"),
        (
            lambda d: d["perception"].update(source_ids=[1, 2**32]),
            r"perception.source_ids\[1\]: must be in \[0, 4294967296\)",
        ),
    ],
)
def test_robot_config_errors_name_the_file_and_the_key(tmp_path, edit, message):
    path = _robot_yaml(tmp_path, edit)
    with pytest.raises(schema.ConfigError, match=message) as error:
        load_robot_config(path)
    assert str(error.value).startswith(f"{path}: ")


def test_a_robot_config_made_in_code_is_held_to_the_same_rules():
    robot = load_robot_config()
    faster = robot.replace(robot_period_s=0.002, stale_timeout_s=0.01)
    assert faster.robot_period_s == 0.002 and faster.stale_timeout_s == 0.01
    np.testing.assert_array_equal(faster.lower, robot.lower)
    assert not faster.lower.flags.writeable  # the loop's limits cannot change under it
    with pytest.raises(schema.ConfigError, match="safety.stale_timeout_s: must be a positive"):
        robot.replace(stale_timeout_s=-1.0)
    with pytest.raises(schema.ConfigError, match="safety.setpoint_margin_rad must not exceed"):
        robot.replace(setpoint_margin_rad=0.5)
    with pytest.raises(TypeError, match="no setting 'stale_timeout'"):
        robot.replace(stale_timeout=0.1)
    with pytest.raises(schema.ConfigError, match="gripper.max_force_n: must be a positive"):
        GripperLimits(max_force_n=-1.0)


def _contract_error(edit) -> str:
    contract = support.make_contract()
    edit(contract)
    with pytest.raises(ContractError) as error:
        parse_contract(contract)
    return str(error.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["action"].update(scale=0), "contract.action.scale: must be a positive number"),
        (
            lambda c: c["joint_limits"]["lower"].__setitem__(3, float("nan")),
            "contract.joint_limits.lower[3]: expected a finite number, got nan",
        ),
        (lambda c: c["action"].update(gain=2.0), "contract.action: unknown key 'gain'"),
        (
            lambda c: c["actuation"].update(command_delay_periods=-1),
            "contract.actuation.command_delay_periods: must be >= 0, got -1",
        ),
        (
            lambda c: c["start"].update(initial_joint_noise_rad="none"),
            "contract.start.initial_joint_noise_rad: expected a number",
        ),
        (
            lambda c: c["kinematics"]["joints"][0].update(axis=[0.0, 1.0]),
            "contract.kinematics.joints[0].axis: expected 3 values, got 2",
        ),
        (lambda c: c.pop("control_period_s"), "contract.control_period_s: required key is missing"),
    ],
)
def test_contract_errors_name_the_key(edit, message):
    assert message in _contract_error(edit)


def test_grasp_section_errors_name_the_key():
    grasp = {
        "workspace_low": [0.3, -0.35, 0.005],
        "workspace_high": [0.8, 0.35, 0.5],
        "yaw_scale": 0.25,
        "gripper": {"max_width_m": 0.08, "speed_m_s": 0.2, "force_n": 40.0},
        "table_height_m": 0.0,
        "finger_tip_points_m": [[0.0, 0.05, 0.015], [0.0, -0.05, 0.015]],
        "object_size_m": 0.045,
        "object_rest_height_m": 0.0225,
        "object_area_low": [0.45, -0.15],
        "object_area_high": [0.65, 0.15],
        "object_yaw_range_rad": 0.785,
        "lift_height_m": 0.1,
        "hold_s": 0.5,
    }
    from iiwa_deploy.grasp import parse_grasp_task

    task = parse_grasp_task(grasp)
    assert task.gripper.force_n == 40.0 and task.finger_tip_points_m.shape == (2, 3)
    bad = copy.deepcopy(grasp)
    bad["gripper"]["force_n"] = 0
    with pytest.raises(schema.ConfigError, match="contract.grasp.gripper.force_n: must be a pos"):
        parse_grasp_task(bad)
    bad = copy.deepcopy(grasp)
    bad["workspace_low"] = [0.9, -0.35, 0.005]
    with pytest.raises(schema.ConfigError, match="workspace_low must be below workspace_high"):
        parse_grasp_task(bad)
