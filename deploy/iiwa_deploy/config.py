"""Robot configuration: the deploy YAML that describes the real arm and the safety settings.

The configuration is the controller's own view of the robot. A policy's contract is checked
against it (see `contract.check_compatibility`), never the other way round: the limits the
loop enforces always come from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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


class ConfigError(ValueError):
    """The robot configuration is malformed; the message names the key and the problem."""


@dataclasses.dataclass(frozen=True)
class GripperLimits:
    """The parallel gripper's limits (YAML `gripper`): the controller never commands more
    opening, speed or force than these, and a measured force above `max_force_n` times
    `force_tolerance_factor` latches a fault."""

    max_width_m: float = 0.08
    max_speed_m_s: float = 0.2
    max_force_n: float = 40.0
    force_tolerance_factor: float = 1.25

    def __post_init__(self) -> None:
        for name in ("max_width_m", "max_speed_m_s", "max_force_n"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ConfigError(f"gripper.{name}: must be a positive number, got {value}")
        if not (math.isfinite(self.force_tolerance_factor) and self.force_tolerance_factor >= 1):
            raise ConfigError(
                f"gripper.force_tolerance_factor: must be >= 1, got {self.force_tolerance_factor}"
            )


@dataclasses.dataclass(frozen=True)
class CartesianLimits:
    """The cell around a gripper (YAML `workspace`, base frame, m): every setpoint's TCP,
    through forward kinematics, stays inside the box, and the TCP and the finger tips stay
    `table_clearance_m` above the table plane at `table_height_m` (a negative clearance
    allows that much commanded press into the table)."""

    low: tuple[float, float, float] = (0.25, -0.45, -0.02)
    high: tuple[float, float, float] = (0.85, 0.45, 0.65)
    table_height_m: float = 0.0
    table_clearance_m: float = -0.02  # see robot_iiwa14.yaml for why it is negative

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ConfigError(f"workspace.{name}: expected 3 finite numbers (m)")
            object.__setattr__(self, name, values)
        if not all(lo < hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ConfigError(
                f"workspace.low {list(self.low)} must be below workspace.high "
                f"{list(self.high)} on every axis"
            )
        for name in ("table_height_m", "table_clearance_m"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"workspace.{name}: must be a finite number (m)")


@dataclasses.dataclass(frozen=True)
class PerceptionLimits:
    """The object pose source (YAML `perception`): OBJECT messages are taken only from
    `source_ids`; a pose older than `max_pose_age_s` (its latency plus its time since
    arrival) or one that moved more than `max_pose_jump_m` from the previous one holds the
    arm (latched); `first_pose_timeout_s` is how long the policy waits for the first pose."""

    source_ids: tuple[int, ...] = (1,)
    max_pose_age_s: float = 0.2
    max_pose_jump_m: float = 0.1  # see robot_iiwa14.yaml for the measurement
    first_pose_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        ids = tuple(self.source_ids)
        if not ids or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids
        ):
            raise ConfigError(
                f"perception.source_ids: expected a non-empty list of 32-bit ids, got {ids!r}"
            )
        object.__setattr__(self, "source_ids", ids)
        for name in ("max_pose_age_s", "max_pose_jump_m", "first_pose_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ConfigError(f"perception.{name}: must be a positive number, got {value}")


@dataclasses.dataclass(frozen=True)
class RobotConfig:
    """Joint limits, timing and safety settings of the robot the loop drives.

    Arrays are float64, one entry per joint in `joint_names` order, radians and seconds.
    """

    name: str
    joint_names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    robot_period_s: float
    expected_control_period_s: float | None
    velocity_fraction: float
    acceleration: np.ndarray
    target_margin_rad: float
    setpoint_margin_rad: float
    position_tolerance_rad: float
    velocity_tolerance_factor: float
    stale_timeout_s: float
    gripper: GripperLimits = GripperLimits()
    workspace: CartesianLimits = CartesianLimits()
    perception: PerceptionLimits = PerceptionLimits()
    # |last setpoint - measured| per joint (rad, scalar or one per joint) beyond which the arm
    # is taken as not following: a jump, a collision, a robot that stopped applying setpoints.
    tracking_error_rad: Any = DEFAULT_TRACKING_ERROR_RAD
    # The state rate must match robot_period_s: measured over `state_period_window_s`, the
    # time per robot sequence step may differ from the period by this fraction at most.
    state_period_tolerance: float = DEFAULT_STATE_PERIOD_TOLERANCE
    state_period_window_s: float = DEFAULT_STATE_PERIOD_WINDOW_S
    # A smaller error that persists: an arm that stopped following a joint_delta policy
    # stays about one action scale (0.08 rad) behind, under the instant limit, for as long
    # as the policy pushes. More than this (rad) for longer than `_s` latches too.
    tracking_error_sustained_rad: float = DEFAULT_TRACKING_ERROR_SUSTAINED_RAD
    tracking_error_sustained_s: float = DEFAULT_TRACKING_ERROR_SUSTAINED_S

    def __post_init__(self) -> None:
        joint_count = len(self.joint_names)
        if joint_count == 0:
            raise ConfigError("joint_names: at least one joint is required")
        if len(set(self.joint_names)) != joint_count:
            raise ConfigError(f"joint_names: duplicate names in {list(self.joint_names)}")
        for field_name in ("lower", "upper", "velocity", "effort", "acceleration"):
            # A private read-only copy: the loop relies on limits nobody can change under it.
            values = np.array(getattr(self, field_name), dtype=np.float64)
            object.__setattr__(self, field_name, values)
            if values.shape != (joint_count,):
                raise ConfigError(
                    f"{field_name}: expected {joint_count} values (one per joint), "
                    f"got {values.shape[0] if values.ndim == 1 else values.shape}"
                )
            if not np.all(np.isfinite(values)):
                raise ConfigError(f"{field_name}: values must be finite, got {values.tolist()}")
            values.setflags(write=False)
        if np.any(self.lower >= self.upper):
            raise ConfigError("joint_limits: every lower limit must be below its upper limit")
        for field_name in ("velocity", "effort", "acceleration"):
            if np.any(getattr(self, field_name) <= 0.0):
                raise ConfigError(f"{field_name}: values must be positive")
        _require_positive("robot_period_s", self.robot_period_s)
        if self.expected_control_period_s is not None:
            _require_positive("expected_control_period_s", self.expected_control_period_s)
        if not 0.0 < self.velocity_fraction <= 1.0:
            raise ConfigError(
                f"interpolator.velocity_fraction: must be in (0, 1], got {self.velocity_fraction}"
            )
        half_range = float(np.min(self.upper - self.lower)) / 2.0
        for field_name in ("target_margin_rad", "setpoint_margin_rad", "position_tolerance_rad"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and 0.0 <= value < half_range):
                raise ConfigError(
                    f"safety.{field_name}: must be in [0, {half_range:.3f}) rad, got {value}"
                )
        if self.setpoint_margin_rad > self.target_margin_rad:
            raise ConfigError(
                "safety.setpoint_margin_rad must not exceed safety.target_margin_rad: clipped "
                f"policy targets would trip the setpoint gate ({self.setpoint_margin_rad} > "
                f"{self.target_margin_rad})"
            )
        if not (
            math.isfinite(self.velocity_tolerance_factor) and self.velocity_tolerance_factor >= 1.0
        ):
            raise ConfigError(
                "safety.velocity_tolerance_factor: must be >= 1, "
                f"got {self.velocity_tolerance_factor}"
            )
        _require_positive("safety.stale_timeout_s", self.stale_timeout_s)
        tracking = np.array(
            np.broadcast_to(np.asarray(self.tracking_error_rad, dtype=np.float64), (joint_count,))
            if np.ndim(self.tracking_error_rad) == 0
            else self.tracking_error_rad,
            dtype=np.float64,
        )
        if tracking.shape != (joint_count,):
            raise ConfigError(
                f"safety.tracking_error_rad: expected one number or {joint_count} (one per "
                f"joint), got {tracking.shape[0] if tracking.ndim == 1 else tracking.shape}"
            )
        if not (np.all(np.isfinite(tracking)) and np.all(tracking > 0.0)):
            raise ConfigError(
                f"safety.tracking_error_rad: values must be positive, got {tracking.tolist()}"
            )
        tracking.setflags(write=False)
        object.__setattr__(self, "tracking_error_rad", tracking)
        if not (
            math.isfinite(self.state_period_tolerance) and 0.0 < self.state_period_tolerance < 1.0
        ):
            raise ConfigError(
                "safety.state_period_tolerance: must be a fraction in (0, 1), got "
                f"{self.state_period_tolerance}"
            )
        _require_positive("safety.state_period_window_s", self.state_period_window_s)
        _require_positive("safety.tracking_error_sustained_s", self.tracking_error_sustained_s)
        if not (
            math.isfinite(self.tracking_error_sustained_rad)
            and 0.0 < self.tracking_error_sustained_rad <= float(np.min(tracking))
        ):
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
        """A copy with some fields changed (validated again), e.g. for a test's faster period."""
        return dataclasses.replace(self, **changes)


def _require_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ConfigError(f"{name}: must be a positive number of seconds, got {value}")


def _take(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise ConfigError(f"{where}{key}: required key is missing")
    return mapping[key]


def _as_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _as_vector(value: Any, where: str, joint_count: int) -> np.ndarray:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.full(joint_count, float(value))
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigError(f"{where}: expected a list of {joint_count} numbers, got {value!r}")
    return np.array([_as_number(v, f"{where}[{i}]") for i, v in enumerate(value)], dtype=float)


def _reject_unknown(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(
            f"{where or 'robot config'}: unknown key '{unknown[0]}'; "
            f"expected one of: {', '.join(sorted(allowed))}"
        )


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = data.get(key) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{key}: expected a mapping of settings, got {section!r}")
    return section


def robot_config_from_mapping(data: Mapping[str, Any]) -> RobotConfig:
    """Build a `RobotConfig` from the parsed YAML, refusing unknown or missing keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"robot config: expected a mapping, got {type(data).__name__}")
    _reject_unknown(
        data,
        {
            "name",
            "joint_names",
            "joint_limits",
            "robot_period_s",
            "expected_control_period_s",
            "interpolator",
            "safety",
            "gripper",
            "workspace",
            "perception",
        },
        "",
    )
    joint_names = _take(data, "joint_names", "")
    if not isinstance(joint_names, Sequence) or not all(isinstance(n, str) for n in joint_names):
        raise ConfigError(f"joint_names: expected a list of strings, got {joint_names!r}")
    joint_count = len(joint_names)

    limits = _take(data, "joint_limits", "")
    if not isinstance(limits, Mapping):
        raise ConfigError("joint_limits: expected a mapping with lower, upper, velocity, effort")
    _reject_unknown(limits, {"lower", "upper", "velocity", "effort"}, "joint_limits")
    interpolator = _section(data, "interpolator")
    _reject_unknown(interpolator, {"velocity_fraction", "acceleration_limits"}, "interpolator")
    safety = _section(data, "safety")
    _reject_unknown(
        safety,
        {
            "target_margin_rad",
            "setpoint_margin_rad",
            "position_tolerance_rad",
            "velocity_tolerance_factor",
            "stale_timeout_s",
            "tracking_error_rad",
            "state_period_tolerance",
            "state_period_window_s",
            "tracking_error_sustained_rad",
            "tracking_error_sustained_s",
        },
        "safety",
    )
    expected_period = data.get("expected_control_period_s")
    gripper, workspace, perception = _cell_sections(data)
    limit_vectors = {
        key: _as_vector(_take(limits, key, "joint_limits."), f"joint_limits.{key}", joint_count)
        for key in ("lower", "upper", "velocity", "effort")
    }
    return RobotConfig(
        name=str(data.get("name", "robot")),
        joint_names=tuple(joint_names),
        lower=limit_vectors["lower"],
        upper=limit_vectors["upper"],
        velocity=limit_vectors["velocity"],
        effort=limit_vectors["effort"],
        robot_period_s=_as_number(_take(data, "robot_period_s", ""), "robot_period_s"),
        expected_control_period_s=(
            None
            if expected_period is None
            else _as_number(expected_period, "expected_control_period_s")
        ),
        velocity_fraction=_as_number(
            interpolator.get("velocity_fraction", 0.5), "interpolator.velocity_fraction"
        ),
        acceleration=_as_vector(
            interpolator.get("acceleration_limits", 5.0),
            "interpolator.acceleration_limits",
            joint_count,
        ),
        target_margin_rad=_as_number(
            safety.get("target_margin_rad", 0.05), "safety.target_margin_rad"
        ),
        setpoint_margin_rad=_as_number(
            safety.get("setpoint_margin_rad", 0.0175), "safety.setpoint_margin_rad"
        ),
        position_tolerance_rad=_as_number(
            safety.get("position_tolerance_rad", 0.0175), "safety.position_tolerance_rad"
        ),
        velocity_tolerance_factor=_as_number(
            safety.get("velocity_tolerance_factor", 1.1), "safety.velocity_tolerance_factor"
        ),
        stale_timeout_s=_as_number(safety.get("stale_timeout_s", 0.1), "safety.stale_timeout_s"),
        tracking_error_rad=_as_vector(
            safety.get("tracking_error_rad", DEFAULT_TRACKING_ERROR_RAD),
            "safety.tracking_error_rad",
            joint_count,
        ),
        state_period_tolerance=_as_number(
            safety.get("state_period_tolerance", DEFAULT_STATE_PERIOD_TOLERANCE),
            "safety.state_period_tolerance",
        ),
        state_period_window_s=_as_number(
            safety.get("state_period_window_s", DEFAULT_STATE_PERIOD_WINDOW_S),
            "safety.state_period_window_s",
        ),
        tracking_error_sustained_rad=_as_number(
            safety.get("tracking_error_sustained_rad", DEFAULT_TRACKING_ERROR_SUSTAINED_RAD),
            "safety.tracking_error_sustained_rad",
        ),
        tracking_error_sustained_s=_as_number(
            safety.get("tracking_error_sustained_s", DEFAULT_TRACKING_ERROR_SUSTAINED_S),
            "safety.tracking_error_sustained_s",
        ),
        gripper=gripper,
        workspace=workspace,
        perception=perception,
    )


def _limits_section(data: Mapping[str, Any], name: str, cls: type) -> dict[str, Any]:
    """The YAML section `name` as keyword arguments of `cls` (missing keys keep defaults)."""
    raw = data.get(name) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    _reject_unknown(raw, set(fields), name)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = fields[key].default
        where = f"{name}.{key}"
        if isinstance(default, tuple):
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise ConfigError(f"{where}: expected a list, got {value!r}")
            if default and isinstance(default[0], int):
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    raise ConfigError(f"{where}: expected whole numbers, got {value!r}")
                values[key] = tuple(value)
            else:
                values[key] = tuple(_as_number(v, f"{where}[{i}]") for i, v in enumerate(value))
        else:
            values[key] = _as_number(value, where)
    return values


def _cell_sections(
    data: Mapping[str, Any],
) -> tuple[GripperLimits, CartesianLimits, PerceptionLimits]:
    return (
        GripperLimits(**_limits_section(data, "gripper", GripperLimits)),
        CartesianLimits(**_limits_section(data, "workspace", CartesianLimits)),
        PerceptionLimits(**_limits_section(data, "perception", PerceptionLimits)),
    )


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
