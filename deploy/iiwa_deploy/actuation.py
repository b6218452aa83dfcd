"""Everything between a policy's action and the joint setpoints, shared by training and the robot.

- `JointTargetMapping`: an action in [-1, 1] to a joint target, per action mode
  (`joint_delta`: measured + scale x a; `joint_offset`: home + scale x a), clipped
  `target_margin_rad` inside the joint ranges.
- `CommandStream`: the velocity- and acceleration-limited interpolator fed with those targets
  at the control timing: one setpoint per robot period, a new target every `steps_per_action`
  periods, taking effect `command_delay_periods` periods after the state it was computed from.

The controller loop (loop.py) calls `next_setpoint` once per robot state and `set_target`
after the policy ran; iiwa_rl's environments call `control_step`, which makes the same calls
in the same order for one policy period. So the joint commands the simulated arm gets in
training are, number for number, the setpoints the controller would send.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import RobotConfig
from .interpolator import JointInterpolator

JOINT_ACTION_MODES = ("joint_delta", "joint_offset")
# The loop answers each robot state with a setpoint first and runs the policy after it (so
# inference never delays the answer): a policy target first shapes the setpoint that answers
# the *next* state, one robot period after the state the policy saw.
LOOP_COMMAND_DELAY_PERIODS = 1


@dataclass(frozen=True)
class ControlTiming:
    """The policy period as a whole number of robot periods, and the command delay."""

    robot_period_s: float
    steps_per_action: int
    command_delay_periods: int = LOOP_COMMAND_DELAY_PERIODS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.robot_period_s) and self.robot_period_s > 0):
            raise ValueError(f"robot_period_s must be a positive number, got {self.robot_period_s}")
        if self.steps_per_action < 1:
            raise ValueError(f"steps_per_action must be >= 1, got {self.steps_per_action}")
        if not 0 <= self.command_delay_periods < self.steps_per_action:
            raise ValueError(
                f"command_delay_periods must be in [0, {self.steps_per_action - 1}] (under one "
                f"policy period), got {self.command_delay_periods}"
            )

    @property
    def control_period_s(self) -> float:
        return self.robot_period_s * self.steps_per_action

    @classmethod
    def for_control_period(
        cls,
        robot_period_s: float,
        control_period_s: float,
        command_delay_periods: int = LOOP_COMMAND_DELAY_PERIODS,
    ) -> ControlTiming:
        """Refuses a control period that is not a whole multiple of the robot period."""
        ratio = control_period_s / robot_period_s
        steps = round(ratio)
        if steps < 1 or abs(ratio - steps) > 1e-6 * max(1.0, ratio):
            raise ValueError(
                f"the control period {control_period_s} s is not a whole multiple of the robot "
                f"period {robot_period_s} s (ratio {ratio:.6g})"
            )
        return cls(robot_period_s, steps, command_delay_periods)


class JointTargetMapping:
    """Action in [-1, 1] -> joint target (rad) for the joint action modes."""

    def __init__(
        self,
        mode: str,
        scale: float,
        home_joint_positions: np.ndarray,
        target_lower: np.ndarray,
        target_upper: np.ndarray,
    ) -> None:
        if mode not in JOINT_ACTION_MODES:
            raise ValueError(f"action mode {mode!r} is not one of {', '.join(JOINT_ACTION_MODES)}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"action scale must be a positive number, got {scale}")
        self.mode = mode
        self.scale = float(scale)
        self.home_joint_positions = np.array(home_joint_positions, dtype=float)
        self.target_lower = np.array(target_lower, dtype=float)
        self.target_upper = np.array(target_upper, dtype=float)

    def target(self, action: np.ndarray, measured_joint_positions: np.ndarray) -> np.ndarray:
        """`action` is expected clipped to [-1, 1] already (the caller clips and keeps it as
        the previous action)."""
        base = measured_joint_positions if self.mode == "joint_delta" else self.home_joint_positions
        # minimum/maximum: np.clip's dispatch costs more than the work on 7 numbers.
        return np.minimum(
            np.maximum(base + self.scale * np.asarray(action[:7], dtype=float), self.target_lower),
            self.target_upper,
        )

    @classmethod
    def for_robot(
        cls, mode: str, scale: float, home_joint_positions: np.ndarray, robot: RobotConfig
    ) -> JointTargetMapping:
        return cls(mode, scale, home_joint_positions, robot.target_lower, robot.target_upper)


class CommandStream:
    """The interpolator at the control timing (see the module docstring)."""

    def __init__(
        self,
        timing: ControlTiming,
        velocity_limits: np.ndarray,
        acceleration_limits: np.ndarray,
        initial_positions: np.ndarray,
    ) -> None:
        self.timing = timing
        self.interpolator = JointInterpolator(
            velocity_limits, acceleration_limits, timing.robot_period_s, initial_positions
        )

    @classmethod
    def for_robot(
        cls,
        robot: RobotConfig,
        control_period_s: float,
        initial_positions: np.ndarray,
        command_delay_periods: int = LOOP_COMMAND_DELAY_PERIODS,
    ) -> CommandStream:
        timing = ControlTiming.for_control_period(
            robot.robot_period_s, control_period_s, command_delay_periods
        )
        return cls(timing, robot.interpolator_velocity, robot.acceleration, initial_positions)

    def reset(self, joint_positions: np.ndarray) -> None:
        """At rest at `joint_positions` (an episode start, a cleared fault)."""
        self.interpolator.reset(joint_positions)

    def set_target(self, joint_target: np.ndarray) -> None:
        self.interpolator.set_target(joint_target)

    def next_setpoint(self) -> np.ndarray:
        """The setpoint for the next robot period."""
        return self.interpolator.step()

    def control_step(self, joint_target: np.ndarray, send: Callable[[np.ndarray], None]) -> None:
        """One policy period as the controller loop lives it, for a simulated robot: the first
        `command_delay_periods` setpoints still follow the previous target, then the new one
        takes over; `send(setpoint)` is called once per robot period and must advance the
        plant by one period."""
        delay = self.timing.command_delay_periods
        for period in range(self.timing.steps_per_action):
            if period == delay:
                self.interpolator.set_target(joint_target)
            send(self.interpolator.step())
