"""The iiwa_deploy UDP bridge protocol, versions 1 and 2 (byte layouts in deploy/README.md).

Fixed-size little-endian datagrams, one message per datagram:

    header (24 bytes): magic b"IWDP" | version u8 | message type u8 | flags u16 |
                       sequence u64 | timestamp f64 (seconds, sender's clock)
    version 1 (an arm without a gripper; the reach):
    STATE    (type 1, 192 bytes): header + q[7] f64 + qd[7] f64 + torque[7] f64
    SETPOINT (type 2,  88 bytes): header + answer_to_sequence u64 + q_setpoint[7] f64
    GOAL     (type 3,  48 bytes): header + goal xyz[3] f64 (m, robot base frame), sent to the
                                  controller's goal port by an operator tool or a planner
    version 2 (adds the gripper and the object pose; the grasp):
    STATE    (type 1, 216 bytes): the version 1 STATE + gripper width f64 (m) + gripper
                                  force f64 (N) + gripper status u32 + reserved u32
    SETPOINT (type 2, 112 bytes): the version 1 SETPOINT + gripper width f64 (m) + speed f64
                                  (m/s) + force f64 (N)
    OBJECT   (type 4,  96 bytes): header + source id u32 + object id u32 + position xyz[3]
                                  f64 (m, base frame) + orientation xyzw[4] f64 + latency f64
                                  (s from capture to send, the estimator's own clock), sent to
                                  the controller's object port by a pose estimator
    GOAL is the same in both versions.

The robot side picks the version of its STATE; the controller answers each STATE in that
version, and a policy that needs the gripper refuses a version 1 robot (loop.py).

Fixed sizes keep a C/C++ FRI client trivial (one packed struct each way) and let the decoder
reject anything of the wrong length before looking inside. The decoder raises
`ProtocolError` for every malformed input and nothing else. A STATE that is well formed but
carries a non-finite joint value is not malformed: `decode_state(..., allow_non_finite=True)`
(what the controller's UDP backend uses) delivers it, so the loop's state gate latches on it
instead of the stale timeout noticing only later.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"IWDP"
PROTOCOL_VERSION = 1
PROTOCOL_VERSION_GRIPPER = 2
SUPPORTED_VERSIONS = (PROTOCOL_VERSION, PROTOCOL_VERSION_GRIPPER)
JOINT_COUNT = 7

MESSAGE_STATE = 1
MESSAGE_SETPOINT = 2
MESSAGE_GOAL = 3
MESSAGE_OBJECT = 4

# STATE flags (robot -> controller)
STATE_TORQUE_VALID = 1 << 0
STATE_COMMANDING_ACTIVE = 1 << 1
STATE_ROBOT_ERROR = 1 << 2
STATE_KNOWN_FLAGS = STATE_TORQUE_VALID | STATE_COMMANDING_ACTIVE | STATE_ROBOT_ERROR

# SETPOINT flags (controller -> robot)
SETPOINT_FAULT_LATCHED = 1 << 0
SETPOINT_HOLD = 1 << 1
# Version 2: the gripper fields carry a command (clear: the gripper keeps its last command,
# e.g. a reach policy on a robot that has a gripper).
SETPOINT_GRIPPER_COMMAND = 1 << 2
SETPOINT_KNOWN_FLAGS = SETPOINT_FAULT_LATCHED | SETPOINT_HOLD
SETPOINT_V2_KNOWN_FLAGS = SETPOINT_KNOWN_FLAGS | SETPOINT_GRIPPER_COMMAND

# Version 2 STATE gripper status bits (u32; unknown bits are rejected).
GRIPPER_READY = 1 << 0  # powered, referenced, accepting commands
GRIPPER_MOVING = 1 << 1
GRIPPER_OBJECT_DETECTED = 1 << 2  # the fingers stopped on something while closing
GRIPPER_FAULT = 1 << 3
GRIPPER_FORCE_VALID = 1 << 4  # the force field is a measurement
# Per-finger contact sensing (tactile pads, or the simulator): bits 6 and 7 mean something
# only with bit 5 set; a gripper without such sensors leaves all three clear.
GRIPPER_CONTACTS_MEASURED = 1 << 5
GRIPPER_CONTACT_LEFT = 1 << 6
GRIPPER_CONTACT_RIGHT = 1 << 7
GRIPPER_KNOWN_STATUS = (1 << 8) - 1

# OBJECT flags
OBJECT_POSE_VALID = 1 << 0  # clear: the estimator has lost the object (the pose is stale)
OBJECT_KNOWN_FLAGS = OBJECT_POSE_VALID

HEADER = struct.Struct("<4sBBHQd")
SETPOINT_ANSWER = struct.Struct("<Q")
_FLOAT64 = np.dtype("<f8")
STATE_SIZE = HEADER.size + 3 * JOINT_COUNT * _FLOAT64.itemsize
SETPOINT_SIZE = HEADER.size + SETPOINT_ANSWER.size + JOINT_COUNT * _FLOAT64.itemsize
GOAL_SIZE = HEADER.size + 3 * _FLOAT64.itemsize
STATE_GRIPPER = struct.Struct("<ddII")
SETPOINT_GRIPPER = struct.Struct("<ddd")
STATE_V2_SIZE = STATE_SIZE + STATE_GRIPPER.size
SETPOINT_V2_SIZE = SETPOINT_SIZE + SETPOINT_GRIPPER.size
OBJECT_BODY = struct.Struct("<II3d4dd")
OBJECT_SIZE = HEADER.size + OBJECT_BODY.size
MAX_SEQUENCE = 2**64 - 1
MAX_U32 = 2**32 - 1


class ProtocolError(ValueError):
    """A datagram is not a valid message of this protocol."""


@dataclass(frozen=True)
class GripperState:
    """The gripper as a version 2 STATE reports it."""

    width_m: float
    force_n: float
    status: int

    @property
    def contacts(self) -> tuple[bool, bool] | None:
        """Left and right finger contact, or None if the gripper does not sense them."""
        if not self.status & GRIPPER_CONTACTS_MEASURED:
            return None
        return bool(self.status & GRIPPER_CONTACT_LEFT), bool(self.status & GRIPPER_CONTACT_RIGHT)

    @classmethod
    def sensed(
        cls, width_m: float, force_n: float, contacts: tuple[bool, bool], moving: bool
    ) -> GripperState:
        """A ready gripper that measures its force and senses per-finger contacts (as
        tactile pads would; the simulated grippers do): the object is detected when both
        fingers touch it."""
        left, right = contacts
        status = GRIPPER_READY | GRIPPER_FORCE_VALID | GRIPPER_CONTACTS_MEASURED
        if left:
            status |= GRIPPER_CONTACT_LEFT
        if right:
            status |= GRIPPER_CONTACT_RIGHT
        if left and right:
            status |= GRIPPER_OBJECT_DETECTED
        if moving:
            status |= GRIPPER_MOVING
        return cls(float(width_m), float(force_n), status)


@dataclass(frozen=True)
class GripperSetpoint:
    """The gripper command of a version 2 SETPOINT."""

    width_m: float
    speed_m_s: float
    force_n: float


@dataclass(frozen=True)
class StateMessage:
    sequence: int
    timestamp_s: float
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    joint_torques: np.ndarray | None
    flags: int
    version: int = PROTOCOL_VERSION
    gripper: GripperState | None = None  # version 2 only


@dataclass(frozen=True)
class SetpointMessage:
    sequence: int
    timestamp_s: float
    answer_to_sequence: int
    joint_positions: np.ndarray
    flags: int
    version: int = PROTOCOL_VERSION
    gripper: GripperSetpoint | None = None  # version 2 with SETPOINT_GRIPPER_COMMAND only


@dataclass(frozen=True)
class ObjectMessage:
    """An object pose estimate (version 2): base frame, m; orientation (x, y, z, w)."""

    sequence: int
    timestamp_s: float
    source_id: int
    object_id: int
    position: np.ndarray
    orientation: np.ndarray
    latency_s: float
    valid: bool


@dataclass(frozen=True)
class GoalMessage:
    sequence: int
    timestamp_s: float
    goal_position: np.ndarray


def _joint_vector(values: np.ndarray | None, what: str, check_finite: bool) -> np.ndarray:
    vector = np.zeros(JOINT_COUNT) if values is None else np.asarray(values, dtype=_FLOAT64)
    if vector.shape != (JOINT_COUNT,):
        raise ProtocolError(f"{what}: expected {JOINT_COUNT} values, got shape {vector.shape}")
    if check_finite and not np.all(np.isfinite(vector)):
        raise ProtocolError(f"{what}: non-finite value")
    return vector


def _header(
    message_type: int,
    flags: int,
    sequence: int,
    timestamp_s: float,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ProtocolError(f"sequence {sequence} does not fit in 64 bits")
    return HEADER.pack(MAGIC, version, message_type, flags, sequence, timestamp_s)


def _finite_number(value: float, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError(f"{what}: non-finite value")
    return number


def encode_state(
    sequence: int,
    timestamp_s: float,
    joint_positions: np.ndarray,
    joint_velocities: np.ndarray,
    joint_torques: np.ndarray | None = None,
    flags: int = STATE_COMMANDING_ACTIVE,
    check_finite: bool = True,
) -> bytes:
    """A STATE datagram; `check_finite=False` exists only for fault-injection tests."""
    if joint_torques is not None:
        flags |= STATE_TORQUE_VALID
    if check_finite and not math.isfinite(timestamp_s):
        raise ProtocolError("timestamp: non-finite value")
    payload = np.concatenate(
        [
            _joint_vector(joint_positions, "joint_positions", check_finite),
            _joint_vector(joint_velocities, "joint_velocities", check_finite),
            _joint_vector(joint_torques, "joint_torques", check_finite),
        ]
    )
    return _header(MESSAGE_STATE, flags, sequence, timestamp_s) + payload.tobytes()


def encode_state_v2(
    sequence: int,
    timestamp_s: float,
    joint_positions: np.ndarray,
    joint_velocities: np.ndarray,
    gripper_width_m: float,
    gripper_force_n: float,
    gripper_status: int,
    joint_torques: np.ndarray | None = None,
    flags: int = STATE_COMMANDING_ACTIVE,
    check_finite: bool = True,
) -> bytes:
    """A version 2 STATE: the version 1 fields and the gripper's."""
    if not 0 <= gripper_status <= MAX_U32 or gripper_status & ~GRIPPER_KNOWN_STATUS:
        raise ProtocolError(f"gripper status 0x{gripper_status:x} sets unknown bits")
    if check_finite:
        gripper_width_m = _finite_number(gripper_width_m, "gripper width")
        gripper_force_n = _finite_number(gripper_force_n, "gripper force")
    arm = encode_state(
        sequence, timestamp_s, joint_positions, joint_velocities, joint_torques, flags, check_finite
    )
    return (
        arm[:4]
        + bytes([PROTOCOL_VERSION_GRIPPER])
        + arm[5:]
        + STATE_GRIPPER.pack(float(gripper_width_m), float(gripper_force_n), gripper_status, 0)
    )


def encode_setpoint(
    sequence: int,
    timestamp_s: float,
    answer_to_sequence: int,
    joint_positions: np.ndarray,
    flags: int = 0,
) -> bytes:
    if not math.isfinite(timestamp_s):
        raise ProtocolError("timestamp: non-finite value")
    if not 0 <= answer_to_sequence <= MAX_SEQUENCE:
        raise ProtocolError(f"answer_to_sequence {answer_to_sequence} does not fit in 64 bits")
    positions = _joint_vector(joint_positions, "joint_positions", True)
    return (
        _header(MESSAGE_SETPOINT, flags, sequence, timestamp_s)
        + SETPOINT_ANSWER.pack(answer_to_sequence)
        + positions.tobytes()
    )


def encode_setpoint_v2(
    sequence: int,
    timestamp_s: float,
    answer_to_sequence: int,
    joint_positions: np.ndarray,
    gripper: GripperSetpoint | None,
    flags: int = 0,
) -> bytes:
    """A version 2 SETPOINT; `gripper` None sends no gripper command (flag bit 2 clear)."""
    arm = encode_setpoint(sequence, timestamp_s, answer_to_sequence, joint_positions, flags)
    if gripper is None:
        fields = (0.0, 0.0, 0.0)
    else:
        fields = tuple(
            _finite_number(value, f"gripper {name}")
            for name, value in (
                ("width", gripper.width_m),
                ("speed", gripper.speed_m_s),
                ("force", gripper.force_n),
            )
        )
        if min(fields) < 0.0:
            raise ProtocolError(f"gripper command {fields} has a negative value")
        flags |= SETPOINT_GRIPPER_COMMAND
    header = _header(MESSAGE_SETPOINT, flags, sequence, timestamp_s, PROTOCOL_VERSION_GRIPPER)
    return header + arm[HEADER.size :] + SETPOINT_GRIPPER.pack(*fields)


def encode_object(
    sequence: int,
    timestamp_s: float,
    source_id: int,
    position,
    orientation,
    latency_s: float = 0.0,
    valid: bool = True,
    object_id: int = 0,
) -> bytes:
    """An OBJECT datagram (version 2): a pose estimate in the robot base frame."""
    for name, value in (("source id", source_id), ("object id", object_id)):
        if not 0 <= value <= MAX_U32:
            raise ProtocolError(f"{name} {value} does not fit in 32 bits")
    position = np.asarray(position, dtype=_FLOAT64)
    orientation = np.asarray(orientation, dtype=_FLOAT64)
    if position.shape != (3,) or orientation.shape != (4,):
        raise ProtocolError(
            f"object pose: expected 3 position and 4 quaternion values, got shapes "
            f"{position.shape} and {orientation.shape}"
        )
    if not (np.all(np.isfinite(position)) and np.all(np.isfinite(orientation))):
        raise ProtocolError("object pose: non-finite value")
    latency = _finite_number(latency_s, "object latency")
    _finite_number(timestamp_s, "timestamp")
    flags = OBJECT_POSE_VALID if valid else 0
    return _header(
        MESSAGE_OBJECT, flags, sequence, timestamp_s, PROTOCOL_VERSION_GRIPPER
    ) + OBJECT_BODY.pack(source_id, object_id, *position.tolist(), *orientation.tolist(), latency)


def _decode_header(data: bytes, expected_type: int | None) -> tuple[int, int, int, float, int]:
    if len(data) < HEADER.size:
        raise ProtocolError(f"datagram of {len(data)} bytes is shorter than the header")
    magic, version, message_type, flags, sequence, timestamp = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"wrong magic {magic!r}")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            f"protocol version {version}; this controller speaks versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    if expected_type is not None and message_type != expected_type:
        raise ProtocolError(f"message type {message_type}, expected {expected_type}")
    if not math.isfinite(timestamp):
        raise ProtocolError("timestamp: non-finite value")
    return message_type, flags, sequence, timestamp, version


def _finite_floats(
    data: bytes, offset: int, count: int, what: str, allow_non_finite: bool = False
) -> np.ndarray:
    values = np.frombuffer(data, dtype=_FLOAT64, count=count, offset=offset).astype(np.float64)
    if not allow_non_finite and not np.all(np.isfinite(values)):
        raise ProtocolError(f"{what}: non-finite value")
    return values


def _check_size(data: bytes, what: str, version: int, expected: int) -> None:
    if len(data) != expected:
        raise ProtocolError(
            f"{what} version {version} datagram of {len(data)} bytes, expected {expected}"
        )


def decode_state(data: bytes, allow_non_finite: bool = False) -> StateMessage:
    """A STATE of either version (`version` says which; `gripper` is None in version 1).
    `allow_non_finite`: return a well-formed STATE with NaN/inf joint values (for the state
    gate to latch on) instead of rejecting it as malformed."""
    data = bytes(data)
    _, flags, sequence, timestamp, version = _decode_header(data, MESSAGE_STATE)
    _check_size(data, "STATE", version, STATE_SIZE if version == 1 else STATE_V2_SIZE)
    if flags & ~STATE_KNOWN_FLAGS:
        raise ProtocolError(f"STATE flags 0x{flags:04x} set unknown bits")
    values = _finite_floats(
        data, HEADER.size, 3 * JOINT_COUNT, "STATE joint values", allow_non_finite
    )
    gripper = None
    if version == PROTOCOL_VERSION_GRIPPER:
        width, force, status, reserved = STATE_GRIPPER.unpack_from(data, STATE_SIZE)
        if not (math.isfinite(width) and math.isfinite(force)):
            raise ProtocolError("STATE gripper values: non-finite value")
        if status & ~GRIPPER_KNOWN_STATUS or reserved:
            raise ProtocolError(f"STATE gripper status 0x{status:08x} sets unknown bits")
        gripper = GripperState(width, force, status)
    return StateMessage(
        sequence=sequence,
        timestamp_s=timestamp,
        joint_positions=values[:JOINT_COUNT],
        joint_velocities=values[JOINT_COUNT : 2 * JOINT_COUNT],
        joint_torques=values[2 * JOINT_COUNT :] if flags & STATE_TORQUE_VALID else None,
        flags=flags,
        version=version,
        gripper=gripper,
    )


def decode_setpoint(data: bytes) -> SetpointMessage:
    """A SETPOINT of either version (`gripper` set only for a version 2 gripper command)."""
    data = bytes(data)
    _, flags, sequence, timestamp, version = _decode_header(data, MESSAGE_SETPOINT)
    _check_size(data, "SETPOINT", version, SETPOINT_SIZE if version == 1 else SETPOINT_V2_SIZE)
    known = SETPOINT_KNOWN_FLAGS if version == 1 else SETPOINT_V2_KNOWN_FLAGS
    if flags & ~known:
        raise ProtocolError(f"SETPOINT flags 0x{flags:04x} set unknown bits")
    (answer,) = SETPOINT_ANSWER.unpack_from(data, HEADER.size)
    positions = _finite_floats(
        data, HEADER.size + SETPOINT_ANSWER.size, JOINT_COUNT, "SETPOINT joint positions"
    )
    gripper = None
    if version == PROTOCOL_VERSION_GRIPPER:
        fields = _finite_floats(data, SETPOINT_SIZE, 3, "SETPOINT gripper command")
        if flags & SETPOINT_GRIPPER_COMMAND:
            if np.any(fields < 0.0):
                raise ProtocolError(f"SETPOINT gripper command {fields.tolist()} is negative")
            gripper = GripperSetpoint(*(float(v) for v in fields))
    return SetpointMessage(
        sequence=sequence,
        timestamp_s=timestamp,
        answer_to_sequence=answer,
        joint_positions=positions,
        flags=flags,
        version=version,
        gripper=gripper,
    )


def decode_object(data: bytes) -> ObjectMessage:
    data = bytes(data)
    _, flags, sequence, timestamp, version = _decode_header(data, MESSAGE_OBJECT)
    if version != PROTOCOL_VERSION_GRIPPER:
        raise ProtocolError(f"OBJECT messages exist from protocol version 2; got version {version}")
    _check_size(data, "OBJECT", version, OBJECT_SIZE)
    if flags & ~OBJECT_KNOWN_FLAGS:
        raise ProtocolError(f"OBJECT flags 0x{flags:04x} set unknown bits")
    source_id, object_id = struct.unpack_from("<II", data, HEADER.size)
    values = _finite_floats(data, HEADER.size + 8, 8, "OBJECT pose")
    orientation = values[3:7]
    norm = float(np.linalg.norm(orientation))
    if not 0.9 <= norm <= 1.1:
        raise ProtocolError(f"OBJECT orientation is not a unit quaternion (norm {norm:.3g})")
    if values[7] < 0.0:
        raise ProtocolError(f"OBJECT latency {values[7]} s is negative")
    return ObjectMessage(
        sequence=sequence,
        timestamp_s=timestamp,
        source_id=source_id,
        object_id=object_id,
        position=values[:3],
        orientation=orientation / norm,
        latency_s=float(values[7]),
        valid=bool(flags & OBJECT_POSE_VALID),
    )


def encode_goal(sequence: int, timestamp_s: float, goal_position) -> bytes:
    goal = np.asarray(goal_position, dtype=_FLOAT64)
    if goal.shape != (3,) or not np.all(np.isfinite(goal)):
        raise ProtocolError(f"goal: expected 3 finite numbers, got {goal.tolist()}")
    if not math.isfinite(timestamp_s):
        raise ProtocolError("timestamp: non-finite value")
    return _header(MESSAGE_GOAL, 0, sequence, timestamp_s) + goal.tobytes()


def decode_goal(data: bytes) -> GoalMessage:
    data = bytes(data)
    _, flags, sequence, timestamp, _ = _decode_header(data, MESSAGE_GOAL)
    if len(data) != GOAL_SIZE:
        raise ProtocolError(f"GOAL datagram of {len(data)} bytes, expected {GOAL_SIZE}")
    if flags:
        raise ProtocolError(f"GOAL flags 0x{flags:04x} set unknown bits")
    goal = _finite_floats(data, HEADER.size, 3, "GOAL position")
    return GoalMessage(sequence=sequence, timestamp_s=timestamp, goal_position=goal)


def decode(data: bytes) -> StateMessage | SetpointMessage | GoalMessage | ObjectMessage:
    """Decode any message type of either version."""
    message_type, *_ = _decode_header(bytes(data), None)
    decoders = {
        MESSAGE_STATE: decode_state,
        MESSAGE_SETPOINT: decode_setpoint,
        MESSAGE_GOAL: decode_goal,
        MESSAGE_OBJECT: decode_object,
    }
    if message_type not in decoders:
        raise ProtocolError(f"unknown message type {message_type}")
    return decoders[message_type](data)
