"""Shared helpers for the iiwa_deploy tests: tiny hand-built ONNX policies and contracts.

The models are built with the onnx helper API (MatMul + Add + Clip) so no torch is needed.
Importing this module puts deploy/ on sys.path, because iiwa_deploy lives in deploy/iiwa_deploy
and is importable from a source checkout only that way.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"
if str(DEPLOY_DIR) not in sys.path:
    sys.path.insert(0, str(DEPLOY_DIR))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from iiwa_deploy.config import load_robot_config  # noqa: E402
from iiwa_deploy.contract import CONTRACT_METADATA_KEY  # noqa: E402
from iiwa_deploy.integrity import model_sha256  # noqa: E402
from iiwa_deploy.kinematics import IIWA14_R820_KINEMATICS  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

ROBOT = load_robot_config()
START_POSITIONS = np.array([0.0, 0.35, 0.0, -1.2, 0.0, 0.6, 0.0])

REACH_LAYOUT = [
    {"name": "joint_position_normalized", "size": 7},
    {"name": "joint_velocity_normalized", "size": 7},
    {"name": "tcp_position", "size": 3},
    {"name": "goal_position", "size": 3},
    {"name": "goal_minus_tcp", "size": 3},
    {"name": "previous_action", "size": 7},
]


def make_contract(**overrides: Any) -> dict[str, Any]:
    """A valid reach contract matching the shipped robot config; top-level keys overridable."""
    contract: dict[str, Any] = {
        "format_version": 2,
        "env_id": "IiwaReach-v0",
        "observation": {"size": 30, "layout": copy.deepcopy(REACH_LAYOUT)},
        "action": {
            "size": 7,
            "mode": "joint_delta",
            "scale": 0.08,
            "joint_names": list(ROBOT.joint_names),
            "home_joint_positions": START_POSITIONS.tolist(),
        },
        "control_period_s": 0.04,
        "joint_limits": {
            "lower": ROBOT.lower.tolist(),
            "upper": ROBOT.upper.tolist(),
            "velocity": ROBOT.velocity.tolist(),
            "effort": ROBOT.effort.tolist(),
        },
        "kinematics": copy.deepcopy(IIWA14_R820_KINEMATICS),
        "goal_sampling": {"low": [0.3, -0.4, 0.2], "high": [0.7, 0.4, 0.8]},
        "success_threshold_m": 0.02,
        "success_hold_s": 0.5,
        "actuation": {
            "robot_period_s": ROBOT.robot_period_s,
            "command_delay_periods": 1,
            "interpolator_velocity": ROBOT.interpolator_velocity.tolist(),
            "interpolator_acceleration": ROBOT.acceleration.tolist(),
            "target_margin_rad": ROBOT.target_margin_rad,
        },
        "start": {"initial_joint_noise_rad": 0.1},
        "config_sha256": "0" * 64,
        "versions": {
            "iiwa_rl": "0.1.0",
            "torch": "test",
            "onnx": onnx.__version__,
            "gymnasium": "test",
        },
    }
    contract.update(overrides)
    return contract


def linear_policy_model(
    weights: np.ndarray, bias: np.ndarray, metadata: dict[str, str] | None
) -> onnx.ModelProto:
    """action = clip(observation @ weights + bias, -1, 1), batch dimension symbolic."""
    observation_size, action_size = weights.shape
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["observation", "weights"], ["linear"]),
            helper.make_node("Add", ["linear", "bias"], ["affine"]),
            helper.make_node("Clip", ["affine", "low", "high"], ["action"]),
        ],
        name="linear_policy",
        inputs=[
            helper.make_tensor_value_info(
                "observation", TensorProto.FLOAT, ["batch", observation_size]
            )
        ],
        outputs=[
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", action_size])
        ],
        initializer=[
            helper.make_tensor(
                "weights",
                TensorProto.FLOAT,
                weights.shape,
                weights.astype(np.float32).ravel().tolist(),
            ),
            helper.make_tensor(
                "bias", TensorProto.FLOAT, bias.shape, bias.astype(np.float32).ravel().tolist()
            ),
            helper.make_tensor("low", TensorProto.FLOAT, [], [-1.0]),
            helper.make_tensor("high", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def proportional_weights(
    contract: dict[str, Any], target_positions: np.ndarray, gain: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Weights of a joint-space P controller: each policy step moves `gain` of the way to the
    target (in joint_delta mode), reading only joint_position_normalized (observation[0:7])."""
    lower = np.array(contract["joint_limits"]["lower"])
    upper = np.array(contract["joint_limits"]["upper"])
    scale = contract["action"]["scale"]
    joint_count = contract["action"]["size"]
    per_joint_gain = gain * (upper - lower) / 2.0 / scale
    target_normalized = 2.0 * (target_positions - lower) / (upper - lower) - 1.0
    weights = np.zeros((contract["observation"]["size"], joint_count))
    weights[np.arange(joint_count), np.arange(joint_count)] = -per_joint_gain
    return weights, per_joint_gain * target_normalized


def write_policy(
    directory: Path,
    contract: dict[str, Any] | None = None,
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    sidecar: dict[str, Any] | bool = True,
    metadata_text: str | None = None,
) -> Path:
    """Write policy.onnx (+ policy.json unless sidecar=False; a dict writes that instead).
    contract=None writes a model without contract metadata. The contract gets the model's
    `model_sha256`, as the exporter writes it, unless it names one itself."""
    shape_source = contract or make_contract()
    observation_size = shape_source["observation"]["size"]
    action_size = shape_source["action"]["size"]
    if weights is None:
        weights = np.zeros((observation_size, action_size))
    if bias is None:
        bias = np.zeros(action_size)
    model = linear_policy_model(weights, bias, None)
    if contract is not None:
        if "model_sha256" not in contract:
            contract = {**contract, "model_sha256": model_sha256(model.SerializeToString())}
        helper.set_model_props(
            model, {CONTRACT_METADATA_KEY: metadata_text or json.dumps(contract)}
        )
    model_path = Path(directory) / "policy.onnx"
    onnx.save(model, str(model_path))
    sidecar_path = model_path.with_suffix(".json")
    if sidecar is not False and (contract is not None or isinstance(sidecar, dict)):
        sidecar_path.write_text(
            json.dumps(sidecar if isinstance(sidecar, dict) else contract, indent=2)
        )
    return model_path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deploy_subprocess_environment() -> dict[str, str]:
    """This process's environment with iiwa_deploy importable, for `python -m iiwa_deploy...`
    run as a process of its own."""
    return {**os.environ, "PYTHONPATH": str(DEPLOY_DIR)}
