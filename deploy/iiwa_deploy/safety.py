"""Safety gates with a latching fault.

Any gate that fails latches a fault. While latched, the loop answers every robot state with
the last setpoint that passed every gate (a hold), and only an explicit `reset()` clears the
latch: a fault the operator has not looked at must never clear itself because the next state
happens to look fine.

Duplicate or reordered states are not faults (UDP does that); they are dropped and counted.

A fault latched before any setpoint passed the gates leaves no hold: the loop then stays
silent for the rest of the run (the robot's own watchdog stops the arm), even if later states
look fine, since a hold taken from the side that just misbehaved is not known to be safe.

Numbers in fault messages go through `readable`, so a corrupted state of 1e200 rad prints as
`1e+200`, not as a 200-digit number.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import RobotConfig

logger = logging.getLogger(__name__)


def readable(value: float, decimals: int = 4) -> str:
    """A number for a fault message: fixed point while that stays short, else scientific."""
    value = float(value)
    if not math.isfinite(value) or abs(value) >= 1e6 or (0.0 < abs(value) < 10.0**-decimals):
        return f"{value:.{decimals}g}" if math.isfinite(value) else str(value)
    return f"{value:.{decimals}f}"


class StateRateMonitor:
    """The time per robot sequence step, measured over a sliding window of received states.

    The robot numbers its states one per period (and skips numbers for periods it did not
    send), so (received_now - received_then) / (sequence_now - sequence_then) is the robot's
    period as the controller sees it, unaffected by states it dropped, superseded or answered
    late. A robot side that sends every 1 ms against a 5 ms configuration reads 1 ms here.
    """

    def __init__(self, period_s: float, window_s: float, tolerance: float) -> None:
        self.period_s = period_s
        self.window_s = window_s
        self.tolerance = tolerance
        self._samples: deque[tuple[float, int]] = deque()
        self.measured_period_s = math.nan
        self.verified = False  # a full window agreed with the period at least once

    def reset(self) -> None:
        self._samples.clear()
        self.measured_period_s = math.nan
        self.verified = False

    def observe(self, received_s: float, sequence: int) -> str | None:
        """Record one state; the reason to latch when a full window disagrees, else None."""
        samples = self._samples
        samples.append((received_s, sequence))
        # Keep the oldest sample that is still at least a window old, and nothing older.
        while len(samples) > 2 and received_s - samples[1][0] >= self.window_s:
            samples.popleft()
        oldest_s, oldest_sequence = samples[0]
        if received_s - oldest_s < self.window_s or sequence <= oldest_sequence:
            return None
        self.measured_period_s = (received_s - oldest_s) / (sequence - oldest_sequence)
        ratio = self.measured_period_s / self.period_s
        if abs(ratio - 1.0) > self.tolerance:
            return (
                f"robot states arrive every {readable(self.measured_period_s * 1e3, 3)} ms per "
                f"sequence step over the last {readable(received_s - oldest_s, 3)} s; the "
                f"configured robot period is {readable(self.period_s * 1e3, 3)} ms (tolerance "
                f"{self.tolerance:.0%}): setpoints would move {readable(1.0 / ratio, 2)}x as "
                "fast as planned; set robot_period_s (or the update rate) to what the robot runs"
            )
        self.verified = True
        return None


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
        self._sustained_since: np.ndarray = np.full(robot.joint_count, np.nan)

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
        self._sustained_since[:] = np.nan

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
                f"measured {self._robot.joint_names[index]} at {readable(joint_positions[index])} "
                f"rad is beyond its limits [{readable(self._robot.lower[index])}, "
                f"{readable(self._robot.upper[index])}] + {self._robot.position_tolerance_rad} rad"
            )
            return False
        too_fast = np.flatnonzero(np.abs(joint_velocities) > self._speed_limit)
        if too_fast.size:
            index = int(too_fast[0])
            self.latch(
                f"measured {self._robot.joint_names[index]} speed "
                f"{readable(joint_velocities[index])} rad/s exceeds "
                f"{readable(self._speed_limit[index])} rad/s (datasheet x "
                f"{self._robot.velocity_tolerance_factor})"
            )
            return False
        if self.hold_setpoint is None and not self.latched:
            # Before any setpoint was sent, holding means staying where the arm is measured,
            # but only if that position is itself a setpoint we would send: the hold must
            # never be the one setpoint that escapes the setpoint gate. Once latched without
            # a hold, no later state provides one (see the module docstring).
            near_limit = np.flatnonzero(
                (joint_positions < self._setpoint_low) | (joint_positions > self._setpoint_high)
            )
            if near_limit.size:
                index = int(near_limit[0])
                self.latch(
                    f"start position of {self._robot.joint_names[index]} "
                    f"{readable(joint_positions[index])} rad is within "
                    f"{self._robot.setpoint_margin_rad} rad of its limits; jog the arm clear "
                    "before running a policy"
                )
                return False
            self.hold_setpoint = joint_positions.astype(float).copy()
        return True

    def check_tracking(self, joint_positions: np.ndarray, now_s: float | None = None) -> bool:
        """The arm follows: each measured joint within `tracking_error_rad` of the last
        setpoint sent, and not beyond `tracking_error_sustained_rad` for longer than
        `tracking_error_sustained_s` (a finite, in-range state is assumed: call after
        `check_state`; `now_s` is the state's receive time)."""
        if self.hold_setpoint is None:
            return True
        error = np.abs(joint_positions - self.hold_setpoint)
        robot = self._robot
        if now_s is not None:
            over = error > robot.tracking_error_sustained_rad
            since = self._sustained_since
            since[~over] = np.nan
            since[over & np.isnan(since)] = now_s
            lasting = np.flatnonzero(over & (now_s - since > robot.tracking_error_sustained_s))
            if lasting.size:
                index = int(lasting[0])
                self.latch(
                    f"tracking: measured {robot.joint_names[index]} has stayed more than "
                    f"{readable(robot.tracking_error_sustained_rad)} rad from its setpoints for "
                    f"{readable(now_s - since[index], 3)} s (now {readable(error[index])} rad; "
                    f"limit {robot.tracking_error_sustained_s} s): the arm does not follow"
                )
                return False
        beyond = np.flatnonzero(error > self._robot.tracking_error_rad)
        if beyond.size:
            index = int(beyond[np.argmax(error[beyond])])
            self.latch(
                f"tracking: measured {self._robot.joint_names[index]} "
                f"{readable(joint_positions[index])} rad is {readable(error[index])} rad from "
                f"the last setpoint {readable(self.hold_setpoint[index])} rad (limit "
                f"{readable(self._robot.tracking_error_rad[index])} rad): the arm does not "
                "follow (a jump, a collision, or a robot that stopped applying setpoints)"
            )
            return False
        return True

    def pause_tracking(self) -> None:
        """The robot does not apply setpoints now: an error built up meanwhile is not one."""
        self._sustained_since[:] = np.nan

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
                f"setpoint for {self._robot.joint_names[index]} {readable(setpoint[index])} rad "
                f"is within {self._robot.setpoint_margin_rad} rad of (or beyond) its limits "
                f"[{readable(self._robot.lower[index])}, {readable(self._robot.upper[index])}]"
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
