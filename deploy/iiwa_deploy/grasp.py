"""The grasp task as the controller knows it: its contract section and its outcome.

`GraspTask` is the contract's `grasp` section (written by iiwa_rl's grasp environment): the
TCP target box and yaw step of the Cartesian action, the gripper the policy was trained with,
the table, the object's resting height, and the success test (lifted `lift_height_m` above
rest, both fingers on it, for `hold_s`). `GraspOutcomeTracker` judges a deployed grasp by
that test at every policy step, and `grasp_failure_reason` names a failure in the env's own
words (the env's `failure_reason` is this function).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# A lift below this never counts as "lifted" when classifying failures (m).
LIFTED_M = 0.02
# An object this far below its resting height has left the table (m).
FELL_OFF_BELOW_M = 0.05


@dataclass(frozen=True)
class GripperSpec:
    """The trained gripper: full opening (m), pad speed (m/s), squeeze force (N)."""

    max_width_m: float
    speed_m_s: float
    force_n: float


@dataclass(frozen=True)
class GraspTask:
    workspace_low: np.ndarray  # TCP target box of the Cartesian action, m, base frame
    workspace_high: np.ndarray
    yaw_scale: float  # rad per unit of the yaw action
    gripper: GripperSpec
    table_height_m: float  # the table plane, base frame z
    finger_tip_points_m: np.ndarray  # k x 3 points in the TCP frame (the finger tips)
    object_size_m: float
    object_rest_height_m: float  # object centre z at rest on the table
    object_area_low: np.ndarray  # where the object is placed, x y, m
    object_area_high: np.ndarray
    object_yaw_range_rad: float
    lift_height_m: float
    hold_s: float


def _number(raw: Mapping[str, Any], key: str, where: str, positive: bool = True) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}.{key}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where}.{key}: must be positive, got {value}")
    return float(value)


def _array(raw: Mapping[str, Any], key: str, where: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        values = np.array(raw.get(key), dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{key}: expected numbers of shape {shape}") from None
    if values.shape != shape or not np.all(np.isfinite(values)):
        raise ValueError(f"{where}.{key}: expected finite numbers of shape {shape}")
    return values


def parse_grasp_task(raw: Any, where: str = "contract.grasp") -> GraspTask:
    """The contract's `grasp` section; ValueError names the key that is wrong."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    gripper = raw.get("gripper")
    if not isinstance(gripper, Mapping):
        raise ValueError(f"{where}.gripper: expected a mapping")
    tips = raw.get("finger_tip_points_m")
    count = len(tips) if isinstance(tips, list) else 0
    task = GraspTask(
        workspace_low=_array(raw, "workspace_low", where, (3,)),
        workspace_high=_array(raw, "workspace_high", where, (3,)),
        yaw_scale=_number(raw, "yaw_scale", where),
        gripper=GripperSpec(
            _number(gripper, "max_width_m", f"{where}.gripper"),
            _number(gripper, "speed_m_s", f"{where}.gripper"),
            _number(gripper, "force_n", f"{where}.gripper"),
        ),
        table_height_m=_number(raw, "table_height_m", where, positive=False),
        finger_tip_points_m=_array(raw, "finger_tip_points_m", where, (max(count, 1), 3)),
        object_size_m=_number(raw, "object_size_m", where),
        object_rest_height_m=_number(raw, "object_rest_height_m", where, positive=False),
        object_area_low=_array(raw, "object_area_low", where, (2,)),
        object_area_high=_array(raw, "object_area_high", where, (2,)),
        object_yaw_range_rad=_number(raw, "object_yaw_range_rad", where, positive=False),
        lift_height_m=_number(raw, "lift_height_m", where),
        hold_s=_number(raw, "hold_s", where, positive=False),
    )
    if not np.all(task.workspace_low < task.workspace_high):
        raise ValueError(f"{where}: workspace_low must be below workspace_high on every axis")
    return task


def grasp_failure_reason(final_info: Mapping[str, Any]) -> str | None:
    """Why a grasp episode failed, from its last info; None for a success.

    missed: both fingers never touched the cube; not lifted: grasped but never raised
    2 cm; dropped: raised, then lost (or knocked off the table); timed out: raised and
    still held, but not high enough for long enough before the time limit."""
    if final_info.get("is_success"):
        return None
    if final_info.get("cube_fell_off"):
        return "dropped"
    if not final_info.get("ever_grasped"):
        return "missed"
    if final_info.get("max_cube_lift", 0.0) < LIFTED_M:
        return "not lifted"
    if final_info.get("cube_lift", 0.0) < LIFTED_M:
        return "dropped"
    return "timed out"


def grasp_outcome(final_info: Mapping[str, Any]) -> str:
    """The outcome in one word or two: "lifted and held", or the failure reason."""
    return grasp_failure_reason(final_info) or "lifted and held"


class GraspOutcomeTracker:
    """The env's grasp success test, step by step, from the object height and the two
    finger contacts: held high (both contacts, lift >= lift_height) for the hold steps at some
    point latches success; it also keeps what `grasp_failure_reason` reads."""

    def __init__(self, task: GraspTask, control_period_s: float) -> None:
        self.task = task
        # As the env counts it: 0.5 s at 25 Hz is 12.5 steps, so 13; never fewer than 1.
        self.hold_steps = max(1, math.ceil(task.hold_s / control_period_s - 1e-9))
        self.reset()

    def reset(self) -> None:
        self.held_steps = 0
        self.succeeded = False
        self.max_lift_m = 0.0
        self.lift_m = 0.0
        self.ever_grasped = False
        self.fell_off = False
        self.steps = 0

    def record(self, object_height_m: float, contacts: tuple[bool, bool]) -> None:
        lift = float(object_height_m) - self.task.object_rest_height_m
        both = bool(contacts[0] and contacts[1])
        self.held_steps = self.held_steps + 1 if both and lift >= self.task.lift_height_m else 0
        self.succeeded = self.succeeded or self.held_steps >= self.hold_steps
        self.lift_m = lift
        self.max_lift_m = max(self.max_lift_m, lift)
        self.ever_grasped = self.ever_grasped or both
        self.fell_off = self.fell_off or lift < -FELL_OFF_BELOW_M
        self.steps += 1

    def info(self) -> dict[str, Any]:
        """The env's info keys that the failure classification reads."""
        return {
            "is_success": self.succeeded,
            "cube_fell_off": self.fell_off,
            "ever_grasped": self.ever_grasped,
            "max_cube_lift": self.max_lift_m,
            "cube_lift": self.lift_m,
        }

    @property
    def outcome(self) -> str:
        return grasp_outcome(self.info())
