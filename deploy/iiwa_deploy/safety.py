"""Safety gates with a latching fault.

Any gate that fails latches a fault. While latched, the loop answers every robot state with
the last setpoint that passed every gate (a hold), and only an explicit `reset()` clears the
latch: a fault the operator has not looked at must never clear itself because the next state
happens to look fine.

Duplicate or reordered states are not faults (UDP does that); they are dropped and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .config import RobotConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultRecord:
    cycle: int
    monotonic_time_s: float
    reason: str


class SafetyMonitor:
    """Checks states, observations, actions and setpoints; owns the fault latch and the hold."""

    def __init__(self, robot: RobotConfig) -> None:
        self._robot = robot
        self._position_low = robot.lower - robot.position_tolerance_rad
        self._position_high = robot.upper + robot.position_tolerance_rad
        self._speed_limit = robot.velocity * robot.velocity_tolerance_factor
        self._setpoint_low = robot.lower + robot.setpoint_margin_rad
        self._setpoint_high = robot.upper - robot.setpoint_margin_rad
        self.latched = False
        self.faults: list[FaultRecord] = []
        self.hold_setpoint: np.ndarray | None = None
        self.last_sequence: int | None = None
        self.stale_sequences_dropped = 0
        self.cycle = 0

    @property
    def latched_reason(self) -> str | None:
        return self.faults[-1].reason if self.latched and self.faults else None

    def latch(self, reason: str) -> None:
        """Latch a fault; while already latched, later reasons are consequences and not kept."""
        if self.latched:
            return
        self.latched = True
        self.faults.append(FaultRecord(self.cycle, time.monotonic(), reason))
        logger.error("fault latched at cycle %d: %s; holding until reset()", self.cycle, reason)

    def reset(self) -> None:
        """Clear the latch. The caller restarts its interpolator from `hold_setpoint`."""
        if self.latched:
            logger.warning("fault latch reset at cycle %d", self.cycle)
        self.latched = False

    def accept_sequence(self, sequence: int) -> bool:
        """False for a state not newer than the last one used (duplicate or reordered)."""
        if self.last_sequence is not None and sequence <= self.last_sequence:
            self.stale_sequences_dropped += 1
            return False
        self.last_sequence = sequence
        return True

    def check_state(self, joint_positions: np.ndarray, joint_velocities: np.ndarray) -> bool:
        joint_count = self._robot.joint_count
        if joint_positions.shape != (joint_count,) or joint_velocities.shape != (joint_count,):
            self.latch(
                f"state has {joint_positions.shape} positions and {joint_velocities.shape} "
                f"velocities; expected {joint_count} each"
            )
            return False
        if not (np.all(np.isfinite(joint_positions)) and np.all(np.isfinite(joint_velocities))):
            self.latch("state contains a non-finite joint position or velocity")
            return False
        outside = np.flatnonzero(
            (joint_positions < self._position_low) | (joint_positions > self._position_high)
        )
        if outside.size:
            index = int(outside[0])
            self.latch(
                f"measured {self._robot.joint_names[index]} at {joint_positions[index]:.4f} rad "
                f"is beyond its limits [{self._robot.lower[index]:.4f}, "
                f"{self._robot.upper[index]:.4f}] + {self._robot.position_tolerance_rad} rad"
            )
            return False
        too_fast = np.flatnonzero(np.abs(joint_velocities) > self._speed_limit)
        if too_fast.size:
            index = int(too_fast[0])
            self.latch(
                f"measured {self._robot.joint_names[index]} speed "
                f"{joint_velocities[index]:.4f} rad/s exceeds {self._speed_limit[index]:.4f} "
                f"rad/s (datasheet x {self._robot.velocity_tolerance_factor})"
            )
            return False
        if self.hold_setpoint is None:
            # Before any setpoint was sent, holding means staying where the arm is measured,
            # but only if that position is itself a setpoint we would send: the hold must
            # never be the one setpoint that escapes the setpoint gate.
            near_limit = np.flatnonzero(
                (joint_positions < self._setpoint_low) | (joint_positions > self._setpoint_high)
            )
            if near_limit.size:
                index = int(near_limit[0])
                self.latch(
                    f"start position of {self._robot.joint_names[index]} "
                    f"{joint_positions[index]:.4f} rad is within "
                    f"{self._robot.setpoint_margin_rad} rad of its limits; jog the arm clear "
                    "before running a policy"
                )
                return False
            self.hold_setpoint = joint_positions.astype(float).copy()
        return True

    def check_finite(self, what: str, values: np.ndarray) -> bool:
        if not np.all(np.isfinite(values)):
            self.latch(f"{what} contains a non-finite value")
            return False
        return True

    def check_setpoint(self, setpoint: np.ndarray) -> bool:
        """True if the setpoint may be sent; it then becomes the hold position."""
        if not self.check_finite("setpoint", setpoint):
            return False
        outside = np.flatnonzero((setpoint < self._setpoint_low) | (setpoint > self._setpoint_high))
        if outside.size:
            index = int(outside[0])
            self.latch(
                f"setpoint for {self._robot.joint_names[index]} {setpoint[index]:.4f} rad is "
                f"within {self._robot.setpoint_margin_rad} rad of (or beyond) its limits "
                f"[{self._robot.lower[index]:.4f}, {self._robot.upper[index]:.4f}]"
            )
            return False
        if self.hold_setpoint is None:
            self.hold_setpoint = setpoint.copy()
        else:
            self.hold_setpoint[:] = setpoint
        return True

    def stale(self, silence_s: float) -> None:
        self.latch(
            f"stale state: no fresh robot state for {silence_s * 1000:.1f} ms "
            f"(timeout {self._robot.stale_timeout_s * 1000:.1f} ms)"
        )
