"""iiwa_deploy: the controller-side runtime for iiwa-rl policies.

Runs an exported policy.onnx on a KUKA LBR iiwa 14 through a small UDP bridge, with contract
checks, safety gates and a velocity/acceleration-limited interpolator. Depends only on numpy,
onnxruntime and pyyaml so it can be installed on the robot's controller PC by itself.
"""

from .cli import PreparedPolicy, main, prepare_policy, run_policy, run_prepared
from .config import ConfigError, RobotConfig, load_robot_config
from .contract import ContractError, PolicyContract, parse_contract
from .fake_robot import FakeRobot, FaultInjection, NumpyPlant, Plant
from .interpolator import JointInterpolator
from .kinematics import IIWA14_R820_KINEMATICS, KinematicChain
from .loop import ControlLoop, LoopSummary, TimingStats
from .policy import OnnxPolicy, load_policy
from .protocol import ProtocolError
from .robot import RobotBackend, RobotState, UdpRobot
from .safety import FaultRecord, SafetyMonitor

__version__ = "0.1.0"

__all__ = [
    "IIWA14_R820_KINEMATICS",
    "ConfigError",
    "ContractError",
    "ControlLoop",
    "FakeRobot",
    "FaultInjection",
    "FaultRecord",
    "JointInterpolator",
    "KinematicChain",
    "LoopSummary",
    "NumpyPlant",
    "OnnxPolicy",
    "Plant",
    "PolicyContract",
    "PreparedPolicy",
    "ProtocolError",
    "RobotBackend",
    "RobotConfig",
    "RobotState",
    "SafetyMonitor",
    "TimingStats",
    "UdpRobot",
    "load_policy",
    "load_robot_config",
    "main",
    "parse_contract",
    "prepare_policy",
    "run_policy",
    "run_prepared",
]
