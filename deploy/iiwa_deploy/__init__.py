"""iiwa_deploy: the controller-side runtime for iiwa-rl policies.

Runs an exported policy.onnx on a KUKA LBR iiwa 14 through a small UDP bridge, with contract
checks, safety gates and a velocity/acceleration-limited interpolator. Depends only on numpy,
onnxruntime and pyyaml so it can be installed on the robot's controller PC by itself.

The training environments import its policy-to-joints core (actuation, observation,
interpolator, config): names below load their modules on first use, so that importing
`iiwa_deploy.actuation` does not pull in onnxruntime and the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "IIWA14_R820_KINEMATICS": "kinematics",
    "KinematicChain": "kinematics",
    "ConfigError": "config",
    "RobotConfig": "config",
    "load_robot_config": "config",
    "ContractError": "contract",
    "PolicyContract": "contract",
    "parse_contract": "contract",
    "CommandStream": "actuation",
    "ControlTiming": "actuation",
    "JointTargetMapping": "actuation",
    "JointInterpolator": "interpolator",
    "ObservationBuilder": "observation",
    "ObservationInputs": "observation",
    "FakeRobot": "fake_robot",
    "FaultInjection": "fake_robot",
    "NumpyPlant": "fake_robot",
    "Plant": "fake_robot",
    "ControlLoop": "loop",
    "LoopSummary": "loop",
    "TimingStats": "loop",
    "OnnxPolicy": "policy",
    "load_policy": "policy",
    "ProtocolError": "protocol",
    "RobotBackend": "robot",
    "RobotState": "robot",
    "UdpRobot": "robot",
    "UdpGoalListener": "robot",
    "FaultRecord": "safety",
    "SafetyMonitor": "safety",
    "PreparedPolicy": "cli",
    "main": "cli",
    "prepare_policy": "cli",
    "run_policy": "cli",
    "run_prepared": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'iiwa_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
