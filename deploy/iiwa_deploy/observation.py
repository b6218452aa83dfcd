"""The policy's observation terms, each defined once, and the builder that fills the vector.

A term has a name, a size rule and a function of the robot's and the task's state. The
training environments (iiwa_rl/envs) and the controller loop build their observations with
this same `ObservationBuilder` from the same `ObservationInputs`: what a policy saw in
training is what it sees on the robot, term by term. A contract's observation layout is a
list of term names; the controller refuses a term whose inputs it has no source for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# What a term reads. The controller has joint state, forward kinematics, the goal and its own
# previous action; the object pose, the gripper and finger contacts need sources it may not have.
JOINT_STATE = "joint_state"
TCP_POSE = "tcp_pose"
GOAL = "goal"
PREVIOUS_ACTION = "previous_action"
OBJECT_POSE = "object_pose"
GRIPPER = "gripper"
FINGER_CONTACTS = "finger_contacts"


@dataclass
class ObservationInputs:
    """The state one observation is built from (base frame; m, rad, rad/s). Fields a task does
    not use keep their defaults."""

    joint_positions: np.ndarray = field(default_factory=lambda: np.zeros(7))
    joint_velocities: np.ndarray = field(default_factory=lambda: np.zeros(7))
    tcp_position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    tcp_yaw: float = 0.0  # heading of the TCP x axis in the base plane
    gripper_width: float = 0.0  # m between the finger pads
    goal_position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    object_position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    object_yaw: float = 0.0
    finger_contacts: tuple[bool, bool] = (False, False)
    previous_action: np.ndarray = field(default_factory=lambda: np.zeros(7))


@dataclass(frozen=True)
class ObservationConstants:
    """Fixed numbers the terms normalise by: joint ranges and speeds, the gripper's opening,
    the object's resting height."""

    joint_lower: np.ndarray
    joint_upper: np.ndarray
    joint_velocity_limits: np.ndarray
    max_gripper_width: float = 0.0
    object_rest_height: float = 0.0


Writer = Callable[[np.ndarray, ObservationInputs, "_Prepared"], None]


@dataclass(frozen=True)
class ObservationTerm:
    """One named piece of the observation. `size` is an int, "joints" (one per arm joint) or
    "action" (the action size); `inputs` names what the term reads."""

    name: str
    size: int | str
    inputs: frozenset[str]
    write: Writer
    description: str

    def resolved_size(self, joint_count: int, action_size: int) -> int:
        if self.size == "joints":
            return joint_count
        if self.size == "action":
            return action_size
        return int(self.size)


@dataclass(frozen=True)
class _Prepared:
    """Constants in the forms the writers use (computed once per builder)."""

    lower: np.ndarray
    range: np.ndarray
    velocity: np.ndarray
    max_gripper_width: float
    object_rest_height: float


def _joint_positions(out, s, c):
    out[:] = 2.0 * (s.joint_positions - c.lower) / c.range - 1.0


def _joint_velocities(out, s, c):
    out[:] = s.joint_velocities / c.velocity


def _tcp_position(out, s, c):
    out[:] = s.tcp_position


def _goal_position(out, s, c):
    out[:] = s.goal_position


def _goal_minus_tcp(out, s, c):
    out[:] = s.goal_position - s.tcp_position


def _previous_action(out, s, c):
    out[:] = s.previous_action


def _tcp_yaw_sincos(out, s, c):
    out[0] = math.sin(s.tcp_yaw)
    out[1] = math.cos(s.tcp_yaw)


def _gripper_width(out, s, c):
    out[0] = s.gripper_width / c.max_gripper_width


def _object_position(out, s, c):
    out[:] = s.object_position


def _object_relative_yaw(out, s, c):
    # A cube looks the same every quarter turn: sin and cos of four times the angle.
    relative = 4.0 * (s.object_yaw - s.tcp_yaw)
    out[0] = math.sin(relative)
    out[1] = math.cos(relative)


def _tcp_to_object(out, s, c):
    out[:] = s.object_position - s.tcp_position


def _object_lift(out, s, c):
    out[0] = float(s.object_position[2]) - c.object_rest_height


def _finger_contacts(out, s, c):
    out[0] = float(s.finger_contacts[0])
    out[1] = float(s.finger_contacts[1])


def _term(name, size, inputs, write, description) -> ObservationTerm:
    return ObservationTerm(name, size, frozenset(inputs), write, description)


OBSERVATION_TERMS: dict[str, ObservationTerm] = {
    term.name: term
    for term in (
        _term(
            "joint_position_normalized",
            "joints",
            {JOINT_STATE},
            _joint_positions,
            "joint positions mapped from [lower, upper] to [-1, 1]",
        ),
        _term(
            "joint_velocity_normalized",
            "joints",
            {JOINT_STATE},
            _joint_velocities,
            "joint velocities as fractions of their datasheet speeds",
        ),
        _term("tcp_position", 3, {TCP_POSE}, _tcp_position, "TCP position, m"),
        _term("goal_position", 3, {GOAL}, _goal_position, "reach goal, m"),
        _term("goal_minus_tcp", 3, {GOAL, TCP_POSE}, _goal_minus_tcp, "goal minus TCP, m"),
        _term(
            "previous_action",
            "action",
            {PREVIOUS_ACTION},
            _previous_action,
            "the previous action, clipped to [-1, 1]",
        ),
        _term("tcp_yaw_sincos", 2, {TCP_POSE}, _tcp_yaw_sincos, "sin and cos of the TCP yaw"),
        _term(
            "gripper_width_normalized",
            1,
            {GRIPPER},
            _gripper_width,
            "finger pad distance as a fraction of the full opening",
        ),
        _term("cube_position", 3, {OBJECT_POSE}, _object_position, "object position, m"),
        _term(
            "cube_relative_yaw_sincos4",
            2,
            {OBJECT_POSE, TCP_POSE},
            _object_relative_yaw,
            "sin and cos of 4 x (object yaw - TCP yaw)",
        ),
        _term("tcp_to_cube", 3, {OBJECT_POSE, TCP_POSE}, _tcp_to_object, "object minus TCP, m"),
        _term(
            "cube_lift",
            1,
            {OBJECT_POSE},
            _object_lift,
            "object height above its resting height, m",
        ),
        _term(
            "finger_contacts",
            2,
            {FINGER_CONTACTS},
            _finger_contacts,
            "whether the left and right finger touch the object (0 or 1)",
        ),
    )
}


class ObservationBuilder:
    """Fills one preallocated float32 vector per call, term by term in the layout's order."""

    def __init__(
        self,
        layout: Sequence[tuple[str, int]],
        constants: ObservationConstants,
    ) -> None:
        unknown = [name for name, _ in layout if name not in OBSERVATION_TERMS]
        if unknown:
            raise ValueError(
                f"unknown observation term(s) {unknown}; known: {', '.join(OBSERVATION_TERMS)}"
            )
        self.layout = tuple((name, int(size)) for name, size in layout)
        self.size = sum(size for _, size in self.layout)
        self.constants = constants
        lower = np.asarray(constants.joint_lower, dtype=float)
        prepared = _Prepared(
            lower=lower,
            range=np.asarray(constants.joint_upper, dtype=float) - lower,
            velocity=np.asarray(constants.joint_velocity_limits, dtype=float),
            max_gripper_width=float(constants.max_gripper_width),
            object_rest_height=float(constants.object_rest_height),
        )
        self._prepared = prepared
        self.buffer = np.zeros(self.size, dtype=np.float32)
        self._writers = []
        offset = 0
        for name, size in self.layout:
            self._writers.append(
                (OBSERVATION_TERMS[name].write, self.buffer[offset : offset + size])
            )
            offset += size

    @property
    def inputs_needed(self) -> frozenset[str]:
        return frozenset().union(*(OBSERVATION_TERMS[name].inputs for name, _ in self.layout))

    def build(self, state: ObservationInputs) -> np.ndarray:
        """The observation: a view of `self.buffer`, overwritten by the next call."""
        prepared = self._prepared
        for write, view in self._writers:
            write(view, state, prepared)
        return self.buffer
