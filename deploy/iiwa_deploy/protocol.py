"""The iiwa_deploy UDP bridge protocol, version 1 (byte layout documented in deploy/README.md).

Fixed-size little-endian datagrams, one message per datagram:

    header (24 bytes): magic b"IWDP" | version u8 | message type u8 | flags u16 |
                       sequence u64 | timestamp f64 (seconds, sender's clock)
    STATE    (type 1, 192 bytes): header + q[7] f64 + qd[7] f64 + torque[7] f64
    SETPOINT (type 2,  88 bytes): header + answer_to_sequence u64 + q_setpoint[7] f64
    GOAL     (type 3,  48 bytes): header + goal xyz[3] f64 (m, robot base frame), sent to the
                                  controller's goal port by an operator tool or a planner

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
JOINT_COUNT = 7

MESSAGE_STATE = 1
MESSAGE_SETPOINT = 2
MESSAGE_GOAL = 3

# STATE flags (robot -> controller)
STATE_TORQUE_VALID = 1 << 0
STATE_COMMANDING_ACTIVE = 1 << 1
STATE_ROBOT_ERROR = 1 << 2
STATE_KNOWN_FLAGS = STATE_TORQUE_VALID | STATE_COMMANDING_ACTIVE | STATE_ROBOT_ERROR

# SETPOINT flags (controller -> robot)
SETPOINT_FAULT_LATCHED = 1 << 0
SETPOINT_HOLD = 1 << 1
SETPOINT_KNOWN_FLAGS = SETPOINT_FAULT_LATCHED | SETPOINT_HOLD

HEADER = struct.Struct("<4sBBHQd")
SETPOINT_ANSWER = struct.Struct("<Q")
_FLOAT64 = np.dtype("<f8")
STATE_SIZE = HEADER.size + 3 * JOINT_COUNT * _FLOAT64.itemsize
SETPOINT_SIZE = HEADER.size + SETPOINT_ANSWER.size + JOINT_COUNT * _FLOAT64.itemsize
GOAL_SIZE = HEADER.size + 3 * _FLOAT64.itemsize
MAX_SEQUENCE = 2**64 - 1


class ProtocolError(ValueError):
    """A datagram is not a valid message of this protocol."""


@dataclass(frozen=True)
class StateMessage:
    sequence: int
    timestamp_s: float
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    joint_torques: np.ndarray | None
    flags: int


@dataclass(frozen=True)
class SetpointMessage:
    sequence: int
    timestamp_s: float
    answer_to_sequence: int
    joint_positions: np.ndarray
    flags: int


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


def _header(message_type: int, flags: int, sequence: int, timestamp_s: float) -> bytes:
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ProtocolError(f"sequence {sequence} does not fit in 64 bits")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, message_type, flags, sequence, timestamp_s)


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


def _decode_header(data: bytes, expected_type: int | None) -> tuple[int, int, int, float]:
    if len(data) < HEADER.size:
        raise ProtocolError(f"datagram of {len(data)} bytes is shorter than the header")
    magic, version, message_type, flags, sequence, timestamp = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"wrong magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if expected_type is not None and message_type != expected_type:
        raise ProtocolError(f"message type {message_type}, expected {expected_type}")
    if not math.isfinite(timestamp):
        raise ProtocolError("timestamp: non-finite value")
    return message_type, flags, sequence, timestamp


def _finite_floats(
    data: bytes, offset: int, count: int, what: str, allow_non_finite: bool = False
) -> np.ndarray:
    values = np.frombuffer(data, dtype=_FLOAT64, count=count, offset=offset).astype(np.float64)
    if not allow_non_finite and not np.all(np.isfinite(values)):
        raise ProtocolError(f"{what}: non-finite value")
    return values


def decode_state(data: bytes, allow_non_finite: bool = False) -> StateMessage:
    """`allow_non_finite`: return a well-formed STATE with NaN/inf joint values (for the
    state gate to latch on) instead of rejecting it as malformed."""
    data = bytes(data)
    _, flags, sequence, timestamp = _decode_header(data, MESSAGE_STATE)
    if len(data) != STATE_SIZE:
        raise ProtocolError(f"STATE datagram of {len(data)} bytes, expected {STATE_SIZE}")
    if flags & ~STATE_KNOWN_FLAGS:
        raise ProtocolError(f"STATE flags 0x{flags:04x} set unknown bits")
    values = _finite_floats(
        data, HEADER.size, 3 * JOINT_COUNT, "STATE joint values", allow_non_finite
    )
    return StateMessage(
        sequence=sequence,
        timestamp_s=timestamp,
        joint_positions=values[:JOINT_COUNT],
        joint_velocities=values[JOINT_COUNT : 2 * JOINT_COUNT],
        joint_torques=values[2 * JOINT_COUNT :] if flags & STATE_TORQUE_VALID else None,
        flags=flags,
    )


def decode_setpoint(data: bytes) -> SetpointMessage:
    data = bytes(data)
    _, flags, sequence, timestamp = _decode_header(data, MESSAGE_SETPOINT)
    if len(data) != SETPOINT_SIZE:
        raise ProtocolError(f"SETPOINT datagram of {len(data)} bytes, expected {SETPOINT_SIZE}")
    if flags & ~SETPOINT_KNOWN_FLAGS:
        raise ProtocolError(f"SETPOINT flags 0x{flags:04x} set unknown bits")
    (answer,) = SETPOINT_ANSWER.unpack_from(data, HEADER.size)
    positions = _finite_floats(
        data, HEADER.size + SETPOINT_ANSWER.size, JOINT_COUNT, "SETPOINT joint positions"
    )
    return SetpointMessage(
        sequence=sequence,
        timestamp_s=timestamp,
        answer_to_sequence=answer,
        joint_positions=positions,
        flags=flags,
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
    _, flags, sequence, timestamp = _decode_header(data, MESSAGE_GOAL)
    if len(data) != GOAL_SIZE:
        raise ProtocolError(f"GOAL datagram of {len(data)} bytes, expected {GOAL_SIZE}")
    if flags:
        raise ProtocolError(f"GOAL flags 0x{flags:04x} set unknown bits")
    goal = _finite_floats(data, HEADER.size, 3, "GOAL position")
    return GoalMessage(sequence=sequence, timestamp_s=timestamp, goal_position=goal)


def decode(data: bytes) -> StateMessage | SetpointMessage:
    """Decode either message type."""
    message_type, *_ = _decode_header(bytes(data), None)
    if message_type == MESSAGE_STATE:
        return decode_state(data)
    if message_type == MESSAGE_SETPOINT:
        return decode_setpoint(data)
    raise ProtocolError(f"unknown message type {message_type}")
