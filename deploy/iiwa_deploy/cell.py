"""Gates of a grasp cell, latched like the joint gates (safety.SafetyMonitor owns the latch).

- every setpoint, through forward kinematics: the TCP inside the configured workspace box,
  and the TCP and each finger tip at least `table_clearance_m` above the table plane;
- every gripper command: width, speed and force within the gripper's limits;
- every measured gripper state: no gripper fault, and a measured force within the limit times
  its tolerance.
"""

from __future__ import annotations

import numpy as np

from .actuation import GripperCommand
from .config import RobotConfig
from .kinematics import KinematicChain
from .protocol import GRIPPER_FAULT, GRIPPER_FORCE_VALID, GripperState
from .safety import SafetyMonitor


class CellGate:
    def __init__(
        self,
        chain: KinematicChain,
        robot: RobotConfig,
        finger_tip_points_m: np.ndarray,
        safety: SafetyMonitor,
    ) -> None:
        self.chain = chain
        self.safety = safety
        workspace = robot.workspace
        self.low = np.asarray(workspace.low, dtype=float)
        self.high = np.asarray(workspace.high, dtype=float)
        self.floor_m = workspace.table_height_m + workspace.table_clearance_m
        self.tip_points = np.asarray(finger_tip_points_m, dtype=float).reshape(-1, 3)
        self.gripper = robot.gripper
        self.lowest_point_m = np.inf  # lowest TCP or finger tip of any setpoint checked

    def check_setpoint(self, setpoint: np.ndarray) -> bool:
        """True if the setpoint's TCP and finger tips are inside the cell."""
        lowest, position = self.chain.lowest_hand_point(setpoint, self.tip_points)
        outside = np.flatnonzero((position < self.low) | (position > self.high))
        if outside.size:
            axis = "xyz"[int(outside[0])]
            self.safety.latch(
                f"setpoint TCP {np.round(position, 4).tolist()} m is outside the workspace box "
                f"on {axis} ({self.low.tolist()} .. {self.high.tolist()} m, workspace.low/high)"
            )
            return False
        self.lowest_point_m = min(self.lowest_point_m, lowest)
        if lowest < self.floor_m:
            what = "TCP" if lowest == float(position[2]) else "a finger tip"
            self.safety.latch(
                f"setpoint puts {what} at z {lowest * 1000:.1f} mm, below the table plane plus "
                f"clearance ({self.floor_m * 1000:.1f} mm, workspace.table_height_m + "
                "table_clearance_m)"
            )
            return False
        return True

    def check_gripper_command(self, command: GripperCommand) -> bool:
        limits = self.gripper
        values = (command.width_m, command.speed_m_s, command.force_n)
        if not np.all(np.isfinite(values)):
            self.safety.latch(f"gripper command {values} is not finite")
            return False
        for name, value, limit in (
            ("width", command.width_m, limits.max_width_m),
            ("speed", command.speed_m_s, limits.max_speed_m_s),
            ("force", command.force_n, limits.max_force_n),
        ):
            if not 0.0 <= value <= limit * (1.0 + 1e-9):
                self.safety.latch(
                    f"gripper command {name} {value:g} is outside [0, {limit:g}] (gripper.max_*)"
                )
                return False
        return True

    def check_gripper_state(self, state: GripperState) -> bool:
        if state.status & GRIPPER_FAULT:
            self.safety.latch("the gripper reports a fault (STATE gripper status bit 3)")
            return False
        limit = self.gripper.max_force_n * self.gripper.force_tolerance_factor
        if state.status & GRIPPER_FORCE_VALID and abs(state.force_n) > limit:
            self.safety.latch(
                f"measured gripper force {state.force_n:.1f} N exceeds {limit:.1f} N "
                "(gripper.max_force_n x force_tolerance_factor)"
            )
            return False
        return True
