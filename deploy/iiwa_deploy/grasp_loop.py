"""The grasp's part of the control loop: object pose, gripper, Cartesian actions, cell gates.

`GraspSession` is what `ControlLoop` (loop.py) adds for a contract with a `grasp` section:

- at the first state, it refuses a robot that cannot run the policy: a protocol version 1
  robot (no gripper), or one whose gripper does not sense finger contacts when the policy
  observes them (`finger_contacts`);
- every state: the gripper's own gates (fault, force) and the newest object poses through
  `ObjectPoseGate` (unknown source, non-finite, jump);
- every target: the floor guard's look-ahead (floor_guard.py), lifting it clear of the
  table, as the env's stream does in training;
- every setpoint: the cell gates (workspace box, table plane, through forward kinematics);
- every policy step: a fresh object pose (else the stale gate latches), the observation from
  the robot state, forward kinematics and the pose through the contract's terms, the action
  through `CartesianTargetMapping` (the env's own IK) and `GripperCommandMapping`, and the
  env's success test on the object's height and the finger contacts.

While a fault is latched the gripper keeps its last command: an object in the hand stays
there while the arm holds.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .actuation import CartesianTargetMapping, GripperCommand, GripperCommandMapping
from .cell import CellGate
from .config import RobotConfig
from .contract import PolicyContract
from .floor_guard import FloorGuard
from .grasp import GraspOutcomeTracker
from .kinematics import quaternion_from_matrix, rotation_yaw
from .observation import FINGER_CONTACTS, OBSERVATION_TERMS, ObservationInputs
from .perception import ObjectPose, ObjectPoseGate, ObjectPoseSource
from .protocol import PROTOCOL_VERSION_GRIPPER
from .robot import RobotState
from .safety import SafetyMonitor

logger = logging.getLogger(__name__)


class GraspSession:
    def __init__(
        self,
        contract: PolicyContract,
        robot: RobotConfig,
        safety: SafetyMonitor,
        object_source: ObjectPoseSource | None,
        needs_contacts: bool,
    ) -> None:
        task = contract.grasp
        if task is None:
            raise ValueError("GraspSession needs a grasp contract")
        if object_source is None:
            raise ValueError(
                "a grasp policy needs an object pose source (OBJECT messages: --object-bind, "
                "or the simulated camera of --robot sim)"
            )
        self.task = task
        self.safety = safety
        self.object_source = object_source
        self.needs_contacts = needs_contacts
        self.chain = contract.kinematics
        self.cartesian = CartesianTargetMapping(
            contract.kinematics,
            contract.action_scale,
            task.yaw_scale,
            task.workspace_low,
            task.workspace_high,
            robot.target_lower,
            robot.target_upper,
        )
        # The trained speed and force (check_compatibility made sure the gripper allows them).
        self.gripper_mapping = GripperCommandMapping(
            task.gripper.max_width_m, task.gripper.speed_m_s, task.gripper.force_n
        )
        # Open, as every training episode starts.
        self.gripper_command: GripperCommand = self.gripper_mapping.command(1.0)
        self.cell = CellGate(contract.kinematics, robot, task.finger_tip_points_m, safety)
        # The command stream's look-ahead onto the same floor, as in training: the gate
        # above is then the last line, not the one that stops every grasp near the table.
        self.floor_guard = FloorGuard(
            contract.kinematics,
            task.finger_tip_points_m,
            self.cell.floor_m,
            robot.target_lower,
            robot.target_upper,
        )
        self.poses = ObjectPoseGate(robot.perception)
        self.first_pose_timeout_s = robot.perception.first_pose_timeout_s
        self.outcome = GraspOutcomeTracker(task, contract.control_period_s)
        self.gripper_state = None
        self.waiting_since_s: float | None = None
        self.last_pose: ObjectPose | None = None

    # ----------------------------------------------------------------- per state
    def start_refusal(self, state: RobotState) -> str | None:
        if state.protocol_version != PROTOCOL_VERSION_GRIPPER or state.gripper is None:
            return (
                f"the policy drives a gripper and sees the object; the robot speaks protocol "
                f"version {state.protocol_version}, which carries neither (version "
                f"{PROTOCOL_VERSION_GRIPPER} STATE with the gripper is needed)"
            )
        if self.needs_contacts and state.gripper.contacts is None:
            return (
                "the policy observes per-finger contacts (observation term finger_contacts) "
                "but this gripper reports none (STATE gripper status bit 5 clear); a policy "
                "for a gripper without contact sensing must be trained without that term"
            )
        return None

    def on_state(self, state: RobotState) -> None:
        """The gripper's gates and the object poses received since the last state."""
        if state.gripper is not None:
            self.gripper_state = state.gripper
            self.cell.check_gripper_state(state.gripper)
        self.poses.update(self.object_source.poll(), self.safety)

    def check_setpoint(self, setpoint: np.ndarray) -> bool:
        return self.cell.check_setpoint(setpoint)

    # ------------------------------------------------------------- policy step
    def pose_for_policy(self, now_s: float) -> ObjectPose | None:
        """A fresh pose, or None: still waiting for the first (latches once the wait passes
        `first_pose_timeout_s`), or the newest too old (latched by the gate)."""
        pose = self.poses.fresh_pose(now_s, self.safety)
        if pose is None and self.poses.pose is None:
            if self.waiting_since_s is None:
                self.waiting_since_s = now_s
                logger.info("waiting for the first object pose")
            elif now_s - self.waiting_since_s > self.first_pose_timeout_s:
                self.safety.latch(
                    f"no object pose within {self.first_pose_timeout_s:.1f} s "
                    "(perception.first_pose_timeout_s)"
                )
        self.last_pose = pose
        return pose

    @property
    def contacts(self) -> tuple[bool, bool]:
        state = self.gripper_state
        contacts = None if state is None else state.contacts
        return contacts if contacts is not None else (False, False)

    def record_outcome(self, pose: ObjectPose) -> None:
        """The env's success test on the state after the previous action."""
        self.outcome.record(float(pose.position[2]), self.contacts)

    def fill_inputs(
        self, inputs: ObservationInputs, joint_positions: np.ndarray, pose: ObjectPose
    ) -> tuple[np.ndarray, tuple, float]:
        """The observation inputs; returns the TCP pose (position, quaternion, yaw) that the
        action is then taken from."""
        position, rotation = self.chain.forward(joint_positions)
        quaternion = quaternion_from_matrix(rotation)
        yaw = rotation_yaw(rotation)
        inputs.tcp_position = position
        inputs.tcp_yaw = yaw
        inputs.gripper_width = 0.0 if self.gripper_state is None else self.gripper_state.width_m
        inputs.object_position = pose.position
        inputs.object_yaw = pose.yaw
        inputs.finger_contacts = self.contacts
        return position, quaternion, yaw

    def target(
        self,
        action: np.ndarray,
        joint_positions: np.ndarray,
        tcp: tuple[np.ndarray, tuple, float],
    ) -> np.ndarray | None:
        """Joint target of a clipped action; the gripper command is set too (None if its
        gate latched)."""
        command = self.gripper_mapping.command(float(action[-1]))
        if not self.cell.check_gripper_command(command):
            return None
        self.gripper_command = command
        position, quaternion, yaw = tcp
        return self.cartesian.target(action, joint_positions, position, quaternion, yaw)

    def summary(self) -> dict:
        info = self.outcome.info()
        return {
            "outcome": self.outcome.outcome,
            "max_lift_m": self.outcome.max_lift_m if self.outcome.steps else math.nan,
            "lift_m": self.outcome.lift_m if self.outcome.steps else math.nan,
            "held_steps": self.outcome.held_steps,
            "ever_grasped": info["ever_grasped"],
            "poses_accepted": self.poses.accepted,
            "poses_ignored": self.poses.ignored,
            "lowest_setpoint_point_m": self.cell.lowest_point_m,
            "setpoint_floor_m": self.cell.floor_m,
            "targets_lifted_off_the_floor": self.floor_guard.lifted,
            "targets_braked_above_the_floor": self.floor_guard.braked,
        }


def needs_finger_contacts(contract: PolicyContract) -> bool:
    return any(
        FINGER_CONTACTS in OBSERVATION_TERMS[piece.name].inputs
        for piece in contract.observation_layout
    )
