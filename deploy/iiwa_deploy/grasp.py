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

from .schema import (
    CONTROLLER_PHRASING,
    ConfigError,
    NonNegativeFloat,
    PositiveFloat,
    from_mapping,
)

# A lift below this never counts as "lifted" when classifying failures (m).
LIFTED_M = 0.02
# An object this far below its resting height has left the table (m).
FELL_OFF_BELOW_M = 0.05


@dataclass(frozen=True)
class GripperSpec:
    """The trained gripper: full opening (m), pad speed (m/s), squeeze force (N)."""

    max_width_m: PositiveFloat
    speed_m_s: PositiveFloat
    force_n: PositiveFloat


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


Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class _GraspSection:
    """The contract's `grasp` JSON as the project's one validator (schema.py) reads it."""

    workspace_low: Point3
    workspace_high: Point3
    yaw_scale: PositiveFloat
    gripper: GripperSpec
    table_height_m: float
    finger_tip_points_m: tuple[Point3, ...]
    object_size_m: PositiveFloat
    object_rest_height_m: float
    object_area_low: tuple[float, float]
    object_area_high: tuple[float, float]
    object_yaw_range_rad: NonNegativeFloat
    lift_height_m: PositiveFloat
    hold_s: NonNegativeFloat


def parse_grasp_task(raw: Any, where: str = "contract.grasp") -> GraspTask:
    """The contract's `grasp` section; a ConfigError (a ValueError) names the key that is
    wrong."""
    section = from_mapping(_GraspSection, raw, where, CONTROLLER_PHRASING)
    if not section.finger_tip_points_m:
        raise ConfigError(f"{where}.finger_tip_points_m: expected at least one point")
    task = GraspTask(
        workspace_low=np.array(section.workspace_low),
        workspace_high=np.array(section.workspace_high),
        yaw_scale=section.yaw_scale,
        gripper=section.gripper,
        table_height_m=section.table_height_m,
        finger_tip_points_m=np.array(section.finger_tip_points_m),
        object_size_m=section.object_size_m,
        object_rest_height_m=section.object_rest_height_m,
        object_area_low=np.array(section.object_area_low),
        object_area_high=np.array(section.object_area_high),
        object_yaw_range_rad=section.object_yaw_range_rad,
        lift_height_m=section.lift_height_m,
        hold_s=section.hold_s,
    )
    if not np.all(task.workspace_low < task.workspace_high):
        raise ConfigError(f"{where}: workspace_low must be below workspace_high on every axis")
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
