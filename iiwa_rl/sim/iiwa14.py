"""The KUKA LBR iiwa 14 R820, with or without the parallel-jaw gripper: the project's arm,
registered as `env.kwargs.robot: iiwa14` (the default).

Its URDFs are assets/urdf/iiwa14.urdf and iiwa14_gripper.urdf (written by
assets/urdf/build_urdfs.py from KUKA's datasheet); the controller's robot configuration is
iiwa_deploy's shipped robot_iiwa14.yaml.
"""

from __future__ import annotations

import numpy as np

from iiwa_rl.sim.client import BulletSim
from iiwa_rl.sim.robot import GripperDescription, RobotDescription, UrdfArm, register_robot

ARM_JOINT_NAMES = tuple(f"iiwa_joint_{axis}" for axis in range(1, 8))
# A slightly bent pose in front of the robot, away from singularities and joint limits.
HOME_JOINT_POSITIONS = np.array([0.0, 0.35, 0.0, -1.6, 0.0, 1.2, 0.0])
# Fixed joints from link 7 to the flange, and on to the gripper's TCP.
FLANGE_JOINTS = ("iiwa_joint_flange",)

IIWA14 = register_robot(
    RobotDescription(
        name="iiwa14",
        urdf="iiwa14.urdf",
        joint_names=ARM_JOINT_NAMES,
        last_link="iiwa_link_7",
        tcp_joints=FLANGE_JOINTS,
        home_joint_positions=tuple(HOME_JOINT_POSITIONS.tolist()),
        gripper=GripperDescription(
            urdf="iiwa14_gripper.urdf",
            finger_joint_names=("gripper_finger_left_joint", "gripper_finger_right_joint"),
            finger_link_name="gripper_finger_left",
            tcp_joints=(*FLANGE_JOINTS, "gripper_mount", "tcp_joint"),
        ),
    )
)


class Iiwa14(UrdfArm):
    """The iiwa 14 in a `BulletSim` (see `UrdfArm`)."""

    def __init__(self, sim: BulletSim, with_gripper: bool = False, base_position=(0.0, 0.0, 0.0)):
        super().__init__(sim, IIWA14, with_gripper, base_position)
