"""Robot configuration: the deploy YAML that describes the real arm and the safety settings.

The configuration is the controller's own view of the robot. A policy's contract is checked
against it (see `contract.check_compatibility`), never the other way round: the limits the
loop enforces always come from here.

`RobotConfig` has the YAML's shape (a section per dataclass), so the project's one validator
(schema.py) reads the file: types, finiteness, ranges, unknown and missing keys, each error
naming the file and the key. `__post_init__` checks what involves several values (one limit
per joint, margins inside the range, a sustained error under the instant one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml

from .schema import (
    CONTROLLER_PHRASING,
    ConfigError,
    NonNegativeFloat,
    PositiveFloat,
    Range,
    check_fields,
    from_mapping,
    to_mapping,
)

DEFAULT_ROBOT_CONFIG_NAME = "robot_iiwa14.yaml"
# The trained reach policy's worst |setpoint - measured| in the training physics is 0.032 rad
# (20 goals, 5 and 10 ms periods); 0.1 rad leaves room for a real arm's command smoothing
# (lbr_fri_ros2_stack filters commands with a 40 ms time constant) and still catches a joint
# that jumps or an arm that stops following long before it has gone far.
DEFAULT_TRACKING_ERROR_RAD = 0.1
DEFAULT_STATE_PERIOD_TOLERANCE = 0.2
# While following, the error exceeds 0.03 rad only while a joint cruises at the speed cap.
DEFAULT_TRACKING_ERROR_SUSTAINED_RAD = 0.05
DEFAULT_TRACKING_ERROR_SUSTAINED_S = 0.3
DEFAULT_STATE_PERIOD_WINDOW_S = 0.2


# A number for every joint, or one number for all of them (rad, rad/s, N m, rad/s^2).
JointValues = float | list[float]
PositiveJointValues = Annotated[JointValues, Range(gt=0)]


def _joint_array(values: JointValues, joint_count: int, where: str) -> np.ndarray:
    """A private read-only float64 copy, one entry per joint: the loop relies on limits
    nobody can change under it."""
    if isinstance(values, (int, float)):
        array = np.full(joint_count, float(values))
    else:
        array = np.array(values, dtype=np.float64)
        if array.shape != (joint_count,):
            raise ConfigError(
                f"{where}: expected one number or {joint_count} (one per joint), got {len(values)}"
            )
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True)
class JointLimitsSection:
    """YAML `joint_limits`: the arm's datasheet limits."""

    lower: JointValues
    upper: JointValues
    velocity: PositiveJointValues
    effort: PositiveJointValues

    def __post_init__(self) -> None:
        check_fields(self, "joint_limits", CONTROLLER_PHRASING)


@dataclasses.dataclass(frozen=True)
class InterpolatorSection:
    """YAML `interpolator`: the setpoint speed cap as a fraction of the datasheet speed and
    the acceleration limits (rad/s^2)."""

    velocity_fraction: Annotated[float, Range(gt=0, le=1)] = 0.5
    acceleration_limits: PositiveJointValues = 5.0

    def __post_init__(self) -> None:
        check_fields(self, "interpolator", CONTROLLER_PHRASING)


@dataclasses.dataclass(frozen=True)
class SafetySection:
    """YAML `safety`: the gates' margins, tolerances and timeouts (see robot_iiwa14.yaml)."""

    target_margin_rad: NonNegativeFloat = 0.05
    setpoint_margin_rad: NonNegativeFloat = 0.0175
    position_tolerance_rad: NonNegativeFloat = 0.0175
    velocity_tolerance_factor: Annotated[float, Range(ge=1)] = 1.1
    stale_timeout_s: PositiveFloat = 0.1
    # |last setpoint - measured| per joint (rad, one number or one per joint) beyond which
    # the arm is taken as not following: a jump, a collision, a robot that stopped applying
    # setpoints.
    tracking_error_rad: PositiveJointValues = DEFAULT_TRACKING_ERROR_RAD
    # The state rate must match robot_period_s: measured over `state_period_window_s`, the
    # time per robot sequence step may differ from the period by this fraction at most.
    state_period_tolerance: Annotated[float, Range(gt=0, lt=1)] = DEFAULT_STATE_PERIOD_TOLERANCE
    state_period_window_s: PositiveFloat = DEFAULT_STATE_PERIOD_WINDOW_S
    # A smaller error that persists: an arm that stopped following a joint_delta policy
    # stays about one action scale (0.08 rad) behind, under the instant limit, for as long
    # as the policy pushes. More than this (rad) for longer than `_s` latches too.
    tracking_error_sustained_rad: PositiveFloat = DEFAULT_TRACKING_ERROR_SUSTAINED_RAD
    tracking_error_sustained_s: PositiveFloat = DEFAULT_TRACKING_ERROR_SUSTAINED_S

    def __post_init__(self) -> None:
        check_fields(self, "safety", CONTROLLER_PHRASING)


@dataclasses.dataclass(frozen=True)
class GripperLimits:
    """The parallel gripper's limits (YAML `gripper`): the controller never commands more
    opening, speed or force than these, and a measured force above `max_force_n` times
    `force_tolerance_factor` latches a fault."""

    max_width_m: PositiveFloat = 0.08
    max_speed_m_s: PositiveFloat = 0.2
    max_force_n: PositiveFloat = 40.0
    force_tolerance_factor: Annotated[float, Range(ge=1)] = 1.25

    def __post_init__(self) -> None:
        check_fields(self, "gripper", CONTROLLER_PHRASING)


@dataclasses.dataclass(frozen=True)
class CartesianLimits:
    """The cell around a gripper (YAML `workspace`, base frame, m): every setpoint's TCP,
    through forward kinematics, stays inside the box, and the TCP and the finger tips stay
    `table_clearance_m` above the table plane at `table_height_m` (a negative clearance
    allows that much commanded press into the table)."""

    low: tuple[float, float, float] = (0.25, -0.45, -0.02)
    high: tuple[float, float, float] = (0.85, 0.45, 0.65)
    table_height_m: float = 0.0
    table_clearance_m: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "workspace", CONTROLLER_PHRASING)
        for name in ("low", "high"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not all(lo < hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ConfigError(
                f"workspace.low {list(self.low)} must be below workspace.high "
                f"{list(self.high)} on every axis"
            )


SourceId = Annotated[int, Range(ge=0, lt=2**32)]  # a 32-bit estimator id


@dataclasses.dataclass(frozen=True)
class PerceptionLimits:
    """The object pose source (YAML `perception`): OBJECT messages are taken only from
    `source_ids`; a pose older than `max_pose_age_s` (its latency plus its time since
    arrival) or one that moved more than `max_pose_jump_m` from the previous one holds the
    arm (latched); `first_pose_timeout_s` is how long the policy waits for the first pose."""

    source_ids: tuple[SourceId, ...] = (1,)
    max_pose_age_s: PositiveFloat = 0.2
    max_pose_jump_m: PositiveFloat = 0.1  # see robot_iiwa14.yaml for the measurement
    first_pose_timeout_s: PositiveFloat = 5.0

    def __post_init__(self) -> None:
        check_fields(self, "perception", CONTROLLER_PHRASING)
        if not self.source_ids:
            raise ConfigError("perception.source_ids: expected a non-empty list of 32-bit ids")
        object.__setattr__(self, "source_ids", tuple(self.source_ids))


def _section_value(section: str, key: str):
    def read(self: RobotConfig) -> Any:
        return getattr(getattr(self, section), key)

    return property(read, doc=f"YAML `{section}.{key}`.")


def _joint_values(name: str, section: str, key: str):
    def read(self: RobotConfig) -> np.ndarray:
        return self._arrays[name]

    return property(read, doc=f"YAML `{section}.{key}`, one float64 per joint (read-only).")


# RobotConfig's flat names for values that live in a section: what the loop, the gates and
# `replace` call them (name: (section, YAML key)).
_SECTION_KEYS = {
    "lower": ("joint_limits", "lower"),
    "upper": ("joint_limits", "upper"),
    "velocity": ("joint_limits", "velocity"),
    "effort": ("joint_limits", "effort"),
    "velocity_fraction": ("interpolator", "velocity_fraction"),
    "acceleration": ("interpolator", "acceleration_limits"),
    **{f.name: ("safety", f.name) for f in dataclasses.fields(SafetySection)},
}
_JOINT_ARRAYS = ("lower", "upper", "velocity", "effort", "acceleration", "tracking_error_rad")


@dataclasses.dataclass(frozen=True)
class RobotConfig:
    """Joint limits, timing and safety settings of the robot the loop drives, in the robot
    YAML's shape. The flat properties (`lower`, `velocity`, `acceleration`, `stale_timeout_s`,
    ...) are what the loop reads: arrays are float64, one entry per joint in `joint_names`
    order, radians and seconds."""

    joint_names: tuple[str, ...]
    joint_limits: JointLimitsSection
    robot_period_s: PositiveFloat
    name: str = "robot"
    # null accepts any policy period that is a whole multiple of robot_period_s.
    expected_control_period_s: PositiveFloat | None = None
    interpolator: InterpolatorSection = InterpolatorSection()
    safety: SafetySection = SafetySection()
    gripper: GripperLimits = GripperLimits()
    workspace: CartesianLimits = CartesianLimits()
    perception: PerceptionLimits = PerceptionLimits()

    lower = _joint_values("lower", "joint_limits", "lower")
    upper = _joint_values("upper", "joint_limits", "upper")
    velocity = _joint_values("velocity", "joint_limits", "velocity")
    effort = _joint_values("effort", "joint_limits", "effort")
    acceleration = _joint_values("acceleration", "interpolator", "acceleration_limits")
    tracking_error_rad = _joint_values("tracking_error_rad", "safety", "tracking_error_rad")
    velocity_fraction = _section_value("interpolator", "velocity_fraction")
    target_margin_rad = _section_value("safety", "target_margin_rad")
    setpoint_margin_rad = _section_value("safety", "setpoint_margin_rad")
    position_tolerance_rad = _section_value("safety", "position_tolerance_rad")
    velocity_tolerance_factor = _section_value("safety", "velocity_tolerance_factor")
    stale_timeout_s = _section_value("safety", "stale_timeout_s")
    state_period_tolerance = _section_value("safety", "state_period_tolerance")
    state_period_window_s = _section_value("safety", "state_period_window_s")
    tracking_error_sustained_rad = _section_value("safety", "tracking_error_sustained_rad")
    tracking_error_sustained_s = _section_value("safety", "tracking_error_sustained_s")

    def __post_init__(self) -> None:
        check_fields(self, "", CONTROLLER_PHRASING)
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        joint_count = len(self.joint_names)
        if joint_count == 0:
            raise ConfigError("joint_names: at least one joint is required")
        if len(set(self.joint_names)) != joint_count:
            raise ConfigError(f"joint_names: duplicate names in {list(self.joint_names)}")
        arrays = {}
        for name in _JOINT_ARRAYS:
            section, key = _SECTION_KEYS[name]
            arrays[name] = _joint_array(
                getattr(getattr(self, section), key), joint_count, f"{section}.{key}"
            )
        object.__setattr__(self, "_arrays", arrays)
        if np.any(self.lower >= self.upper):
            raise ConfigError("joint_limits: every lower limit must be below its upper limit")
        half_range = float(np.min(self.upper - self.lower)) / 2.0
        for field_name in ("target_margin_rad", "setpoint_margin_rad", "position_tolerance_rad"):
            value = getattr(self, field_name)
            if not value < half_range:
                raise ConfigError(
                    f"safety.{field_name}: must be in [0, {half_range:.3f}) rad, got {value}"
                )
        if self.setpoint_margin_rad > self.target_margin_rad:
            raise ConfigError(
                "safety.setpoint_margin_rad must not exceed safety.target_margin_rad: clipped "
                f"policy targets would trip the setpoint gate ({self.setpoint_margin_rad} > "
                f"{self.target_margin_rad})"
            )
        if self.tracking_error_sustained_rad > float(np.min(self.tracking_error_rad)):
            raise ConfigError(
                "safety.tracking_error_sustained_rad: must be positive and not above "
                f"tracking_error_rad, got {self.tracking_error_sustained_rad}"
            )
        if self.state_period_window_s < 4.0 * self.robot_period_s:
            raise ConfigError(
                f"safety.state_period_window_s: {self.state_period_window_s} s is under four "
                f"robot periods ({4.0 * self.robot_period_s} s); the rate cannot be measured"
            )

    @property
    def joint_count(self) -> int:
        return len(self.joint_names)

    @property
    def interpolator_velocity(self) -> np.ndarray:
        """Per-joint setpoint speed cap (rad/s): datasheet speed times `velocity_fraction`."""
        return self.velocity * self.velocity_fraction

    @property
    def target_lower(self) -> np.ndarray:
        return self.lower + self.target_margin_rad

    @property
    def target_upper(self) -> np.ndarray:
        return self.upper - self.target_margin_rad

    def replace(self, **changes: Any) -> RobotConfig:
        """A copy with some values changed, by their flat names (`robot_period_s`,
        `stale_timeout_s`, `tracking_error_rad`, `workspace`...), validated again as a file
        would be; e.g. for a test's faster period."""
        data = to_mapping(self)
        for name, value in changes.items():
            if name in _SECTION_KEYS:
                section, key = _SECTION_KEYS[name]
                data[section][key] = to_mapping(value)
            elif name in data:
                data[name] = to_mapping(value)
            else:
                raise TypeError(f"RobotConfig has no setting {name!r}")
        return robot_config_from_mapping(data)


def robot_config_from_mapping(data: Mapping[str, Any]) -> RobotConfig:
    """Build a `RobotConfig` from the parsed YAML, refusing unknown or missing keys."""
    return from_mapping(RobotConfig, data, "", CONTROLLER_PHRASING)


def load_robot_config(path: str | Path | None = None) -> RobotConfig:
    """Load a robot configuration YAML; None loads the shipped iiwa 14 R820 configuration."""
    if path is None:
        text = resources.files("iiwa_deploy").joinpath(DEFAULT_ROBOT_CONFIG_NAME).read_text()
        source = f"iiwa_deploy/{DEFAULT_ROBOT_CONFIG_NAME}"
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{source}: cannot read the robot configuration: {error}") from None
    try:
        data = yaml.safe_load(text)
        return robot_config_from_mapping(data)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
