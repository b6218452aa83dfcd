"""PyBullet simulation: the client wrapper, robots as components (robot.py: the interface,
the URDF arm and the registry; one file per robot, iiwa14.py), and scene objects."""

from iiwa_rl.sim.native import quiet_native_stdout

with quiet_native_stdout((1, 2)):
    import pybullet  # noqa: F401  (prints its build time to stderr when first imported)

from iiwa_rl.sim.client import BulletSim, DisplayUnavailableError, asset_path
from iiwa_rl.sim.iiwa14 import IIWA14, Iiwa14  # noqa: E402  (registers the iiwa 14)
from iiwa_rl.sim.robot import (
    JointLimits,
    RobotDescription,
    SimGripperRobot,
    SimRobot,
    UrdfArm,
    register_robot,
    robot_description,
    robot_names,
)

__all__ = [
    "IIWA14",
    "BulletSim",
    "DisplayUnavailableError",
    "Iiwa14",
    "JointLimits",
    "RobotDescription",
    "SimGripperRobot",
    "SimRobot",
    "UrdfArm",
    "asset_path",
    "register_robot",
    "robot_description",
    "robot_names",
]
