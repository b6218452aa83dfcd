"""Everything between a policy's action and the joint setpoints, shared by training and the robot.

- `JointTargetMapping`: an action in [-1, 1] to a joint target, per action mode
  (`joint_delta`: measured + scale x a; `joint_offset`: home + scale x a), clipped
  `target_margin_rad` inside the joint ranges.
- `CartesianTargetMapping` (`cartesian` mode): TCP displacement x, y, z (scale m) clipped
  into the trained workspace box, yaw change (yaw_scale rad), pointing down, solved to a joint
  target by one damped-least-squares IK step in numpy (kinematics.differential_ik_step).
- `GripperCommandMapping`: the last action element (-1 closed, 1 fully open) to a finger pad
  distance, and the speed and force the gripper may use to get there.
- `CommandStream`: the velocity- and acceleration-limited interpolator fed with those targets
  at the control timing: one setpoint per robot period, a new target every `steps_per_action`
  periods, taking effect `command_delay_periods` periods after the state it was computed from;
  a grasp's stream previews each new target and lifts it clear of the table first
  (floor_guard.FloorGuard).

The controller loop (loop.py) calls `next_setpoint` once per robot state and `set_target`
after the policy ran; iiwa_rl's environments call `control_step`, which makes the same calls
in the same order for one policy period (the interpolator's `step_list`: `step`'s numbers as
plain floats). So the joint commands the simulated arm gets in training are, number for
number, the setpoints the controller would send.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import RobotConfig
from .floor_guard import FloorGuard
from .interpolator import JointInterpolator
from .kinematics import (
    DEFAULT_IK_DAMPING,
    KinematicChain,
    differential_ik_step,
    down_orientation,
)

JOINT_ACTION_MODES = ("joint_delta", "joint_offset")
CARTESIAN_ACTION_MODE = "cartesian"
# x, y, z, yaw, gripper
CARTESIAN_ACTION_SIZE = 5
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


class CartesianTargetMapping:
    """Action (x, y, z, yaw, gripper) in [-1, 1] -> joint target (rad), gripper down.

    TCP target = measured TCP + scale x a[:3], clipped into [workspace_low, workspace_high];
    heading = measured TCP yaw + yaw_scale x a[3]; orientation: pointing straight down at
    that heading. One IK step from the measured joints gives the joint target, clipped into
    [target_lower, target_upper]. The gripper element is `GripperCommandMapping`'s."""

    def __init__(
        self,
        chain: KinematicChain,
        scale: float,
        yaw_scale: float,
        workspace_low: np.ndarray,
        workspace_high: np.ndarray,
        target_lower: np.ndarray,
        target_upper: np.ndarray,
        damping: float = DEFAULT_IK_DAMPING,
    ) -> None:
        for name, value in (("action scale", scale), ("yaw_scale", yaw_scale)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        workspace_low = np.array(workspace_low, dtype=float)
        workspace_high = np.array(workspace_high, dtype=float)
        if workspace_low.shape != (3,) or workspace_high.shape != (3,):
            raise ValueError("the workspace box needs 3 low and 3 high values (m)")
        if not np.all(workspace_low < workspace_high):
            raise ValueError(
                f"workspace low {workspace_low.tolist()} must be below high "
                f"{workspace_high.tolist()} on every axis"
            )
        self.chain = chain
        self.scale = float(scale)
        self.yaw_scale = float(yaw_scale)
        self.workspace_low = workspace_low
        self.workspace_high = workspace_high
        self.target_lower = np.array(target_lower, dtype=float)
        self.target_upper = np.array(target_upper, dtype=float)
        self.damping = float(damping)

    def tcp_target(self, action: np.ndarray, tcp_position: np.ndarray, tcp_yaw: float):
        """The TCP position (m) and heading (rad) an action asks for."""
        # `action` stays float32 as the policy gave it: scale x a is then float32 arithmetic,
        # as it was in training (numpy keeps a float32 array's type against a Python float),
        # so both sides compute the same bits.
        position = np.minimum(
            np.maximum(tcp_position + self.scale * action[:3], self.workspace_low),
            self.workspace_high,
        )
        return position, tcp_yaw + self.yaw_scale * action[3]

    def target(
        self,
        action: np.ndarray,
        joint_positions: np.ndarray,
        tcp_position: np.ndarray,
        tcp_orientation,
        tcp_yaw: float,
    ) -> np.ndarray:
        """`action` clipped to [-1, 1] already; the TCP pose is the measured one (the env
        reads it from the simulator, the controller from forward kinematics of q)."""
        position, yaw = self.tcp_target(action, tcp_position, tcp_yaw)
        return differential_ik_step(
            self.chain,
            joint_positions,
            tcp_position,
            tcp_orientation,
            position,
            down_orientation(yaw),
            self.target_lower,
            self.target_upper,
            self.damping,
        )


@dataclass(frozen=True)
class GripperCommand:
    """What the gripper is told: go to this pad distance (m) at most this fast (m/s),
    squeezing with at most this force (N)."""

    width_m: float
    speed_m_s: float
    force_n: float


class GripperCommandMapping:
    """Gripper action in [-1, 1] (-1 closed, 1 fully open) -> `GripperCommand`.

    The width is linear in the action over [0, max_width_m]; speed and force are the
    gripper's own limits, `speed_m_s` and `force_n`: the simulated gripper the policy was
    trained with is a position motor with exactly these two limits (its finger travel speed
    and squeeze force), and a real parallel gripper takes the same three numbers."""

    def __init__(self, max_width_m: float, speed_m_s: float, force_n: float) -> None:
        for name, value in (
            ("max_width_m", max_width_m),
            ("speed_m_s", speed_m_s),
            ("force_n", force_n),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"gripper {name} must be a positive number, got {value}")
        self.max_width_m = float(max_width_m)
        self.speed_m_s = float(speed_m_s)
        self.force_n = float(force_n)

    def width(self, gripper_action: float) -> float:
        """Pad distance (m) for the action's last element."""
        return (float(gripper_action) + 1.0) / 2.0 * self.max_width_m

    def command(self, gripper_action: float) -> GripperCommand:
        width = min(max(self.width(gripper_action), 0.0), self.max_width_m)
        return GripperCommand(width, self.speed_m_s, self.force_n)


class CommandStream:
    """The interpolator at the control timing (see the module docstring)."""

    def __init__(
        self,
        timing: ControlTiming,
        velocity_limits: np.ndarray,
        acceleration_limits: np.ndarray,
        initial_positions: np.ndarray,
        floor_guard: FloorGuard | None = None,
    ) -> None:
        self.timing = timing
        self.interpolator = JointInterpolator(
            velocity_limits, acceleration_limits, timing.robot_period_s, initial_positions
        )
        # A grasp's: every new target is previewed and lifted clear of the table if needed.
        self.floor_guard = floor_guard

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
        if self.floor_guard is not None:
            joint_target = self.floor_guard.guarded_target(
                self.interpolator, joint_target, self.timing.steps_per_action
            )
        self.interpolator.set_target(joint_target)

    def next_setpoint(self) -> np.ndarray:
        """The setpoint for the next robot period."""
        return self.interpolator.step()

    def control_step(self, joint_target: np.ndarray, send: Callable[[list[float]], None]) -> None:
        """One policy period as the controller loop lives it, for a simulated robot: the first
        `command_delay_periods` setpoints still follow the previous target, then the new one
        takes over; `send(setpoint)` is called once per robot period and must advance the
        plant by one period. The setpoint comes as a list of floats (rad), the numbers
        `next_setpoint` would return, for a plant whose command takes plain floats."""
        interpolator, timing = self.interpolator, self.timing
        delay = timing.command_delay_periods
        for period in range(timing.steps_per_action):
            if period == delay:
                self.set_target(joint_target)
            send(interpolator.step_list())
