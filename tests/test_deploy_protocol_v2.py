"""Protocol version 2 (gripper, object pose), its fuzzing, and the v1/v2 negotiation."""

from __future__ import annotations

import math
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402, F401  (puts deploy/ on sys.path)
from iiwa_deploy import protocol  # noqa: E402
from iiwa_deploy.actuation import GripperCommand  # noqa: E402
from iiwa_deploy.protocol import (  # noqa: E402
    GripperSetpoint,
    ObjectMessage,
    ProtocolError,
    SetpointMessage,
    StateMessage,
    decode,
    decode_object,
    decode_setpoint,
    decode_state,
    encode_object,
    encode_setpoint,
    encode_setpoint_v2,
    encode_state,
    encode_state_v2,
)
from iiwa_deploy.robot import UdpObjectListener, UdpRobot  # noqa: E402

Q = np.linspace(-1.0, 1.0, 7)
QD = np.linspace(0.5, -0.5, 7)
STATUS = protocol.GRIPPER_READY | protocol.GRIPPER_CONTACTS_MEASURED | protocol.GRIPPER_CONTACT_LEFT
QUATERNION = (0.0, 0.0, math.sin(0.15), math.cos(0.15))


def state_v2(sequence: int = 5, **kwargs) -> bytes:
    return encode_state_v2(sequence, 12.5, Q, QD, 0.042, 11.5, STATUS, **kwargs)


def object_bytes(sequence: int = 3, **kwargs) -> bytes:
    arguments = {"source_id": 1, "position": [0.5, -0.1, 0.0225], "orientation": QUATERNION}
    arguments.update(kwargs)
    return encode_object(sequence, 2.0, latency_s=0.04, **arguments)


def test_state_v2_round_trip_and_layout() -> None:
    datagram = state_v2()
    assert len(datagram) == protocol.STATE_V2_SIZE == 216
    message = decode_state(datagram)
    assert message.version == 2 and message.sequence == 5
    np.testing.assert_array_equal(message.joint_positions, Q)
    assert message.gripper.width_m == 0.042 and message.gripper.force_n == 11.5
    assert message.gripper.contacts == (True, False)
    # The documented table: the version 1 STATE, then width, force, status, reserved.
    assert struct.unpack_from("<4sBB", datagram) == (b"IWDP", 2, 1)
    assert struct.unpack_from("<ddII", datagram, 192) == (0.042, 11.5, STATUS, 0)
    no_sensing = decode_state(encode_state_v2(1, 0.0, Q, QD, 0.08, 0.0, protocol.GRIPPER_READY))
    assert no_sensing.gripper.contacts is None


def test_setpoint_v2_round_trip_with_and_without_a_gripper_command() -> None:
    command = GripperSetpoint(0.03, 0.2, 40.0)
    datagram = encode_setpoint_v2(9, 3.25, 41, Q, command, protocol.SETPOINT_HOLD)
    assert len(datagram) == protocol.SETPOINT_V2_SIZE == 112
    message = decode_setpoint(datagram)
    assert (message.version, message.answer_to_sequence, message.gripper) == (2, 41, command)
    assert message.flags & protocol.SETPOINT_GRIPPER_COMMAND
    assert struct.unpack_from("<ddd", datagram, 88) == (0.03, 0.2, 40.0)
    without = decode_setpoint(encode_setpoint_v2(10, 3.5, 42, Q, None))
    assert without.gripper is None and not without.flags & protocol.SETPOINT_GRIPPER_COMMAND


def test_object_round_trip_and_layout() -> None:
    datagram = object_bytes(valid=False, object_id=7)
    assert len(datagram) == protocol.OBJECT_SIZE == 96
    message = decode_object(datagram)
    assert (message.sequence, message.source_id, message.object_id) == (3, 1, 7)
    assert not message.valid and message.latency_s == 0.04
    np.testing.assert_allclose(message.orientation, QUATERNION)
    assert struct.unpack_from("<4sBBH", datagram) == (b"IWDP", 2, 4, 0)
    assert struct.unpack_from("<II3d4dd", datagram, 24)[:5] == (1, 7, 0.5, -0.1, 0.0225)
    assert decode_object(object_bytes()).valid
    assert isinstance(decode(datagram), ObjectMessage)


def test_version_1_messages_still_decode_and_encode_as_before() -> None:
    v1 = encode_state(4, 1.0, Q, QD)
    message = decode_state(v1)
    assert message.version == 1 and message.gripper is None and len(v1) == 192
    assert len(encode_setpoint(1, 0.0, 1, Q)) == 88
    assert decode_setpoint(encode_setpoint(1, 0.0, 1, Q)).version == 1


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (state_v2()[:4] + bytes([3]) + state_v2()[5:], "protocol version 3; this controller "),
        (state_v2()[:4] + bytes([1]) + state_v2()[5:], "STATE version 1 datagram of 216 bytes"),
        (state_v2()[:-1], "expected 216"),
        (state_v2()[:208] + struct.pack("<II", 1 << 9, 0), "status 0x00000200 sets unknown"),
        (state_v2()[:208] + struct.pack("<II", 1, 5), "unknown bits"),
        (state_v2()[:192] + struct.pack("<d", math.nan) + state_v2()[200:], "non-finite"),
    ],
)
def test_state_v2_refusals(datagram: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_state(datagram)


def test_setpoint_and_object_refusals() -> None:
    with pytest.raises(ProtocolError, match="negative"):
        encode_setpoint_v2(1, 0.0, 1, Q, GripperSetpoint(-0.01, 0.2, 40.0))
    bad = bytearray(encode_setpoint_v2(1, 0.0, 1, Q, GripperSetpoint(0.01, 0.2, 40.0)))
    bad[104:112] = struct.pack("<d", math.inf)
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_setpoint(bytes(bad))
    with pytest.raises(ProtocolError, match="expected 88"):
        decode_setpoint(encode_setpoint(1, 0.0, 1, Q) + b"\0" * 24)
    with pytest.raises(ProtocolError, match="OBJECT messages exist from protocol version 2"):
        decode_object(object_bytes()[:4] + bytes([1]) + object_bytes()[5:])
    with pytest.raises(ProtocolError, match="not a unit quaternion"):
        decode_object(object_bytes(orientation=(0.0, 0.0, 0.0, 2.0)))
    nan_pose = bytearray(object_bytes())
    nan_pose[32:40] = struct.pack("<d", math.nan)
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_object(bytes(nan_pose))
    with pytest.raises(ProtocolError, match="non-finite"):
        encode_object(1, 0.0, 1, [math.nan, 0, 0], QUATERNION)
    with pytest.raises(ProtocolError, match="unknown bits"):
        decode_object(object_bytes()[:6] + struct.pack("<H", 2) + object_bytes()[8:])


def _check(data: bytes) -> None:
    try:
        message = decode(data)
    except ProtocolError:
        return
    if isinstance(message, (StateMessage, SetpointMessage)):
        assert np.all(np.isfinite(message.joint_positions))
    if isinstance(message, ObjectMessage):
        assert np.all(np.isfinite(message.position))
        assert abs(np.linalg.norm(message.orientation) - 1.0) < 1e-9
    assert math.isfinite(message.timestamp_s)


TEMPLATES = [
    state_v2(),
    encode_setpoint_v2(3, 1.0, 2, Q, GripperSetpoint(0.02, 0.1, 20.0)),
    object_bytes(),
    encode_state(5, 1.0, Q, QD),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=240))
def test_decoder_only_ever_raises_protocol_error_on_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(TEMPLATES),
    st.lists(st.tuples(st.integers(0, 215), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(-4, 4),
)
def test_decoder_survives_corrupted_v2_datagrams(template, corruptions, length_change) -> None:
    data = bytearray(template)
    for index, value in corruptions:
        data[index % len(data)] = value
    if length_change > 0:
        data += bytes(length_change)
    elif length_change < 0:
        del data[length_change:]
    _check(bytes(data))


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**64 - 1),
    st.lists(finite, min_size=7, max_size=7),
    st.floats(0.0, 0.1),
    st.floats(0.0, 100.0),
    st.integers(0, (1 << 8) - 1),
)
def test_state_v2_round_trips_any_valid_content(sequence, q, width, force, status) -> None:
    message = decode_state(
        encode_state_v2(sequence, 1.0, np.array(q), np.zeros(7), width, force, status)
    )
    assert message.sequence == sequence and message.gripper.status == status
    assert message.gripper.width_m == width and message.gripper.force_n == force
    np.testing.assert_array_equal(message.joint_positions, q)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(finite, min_size=3, max_size=3),
    st.floats(-math.pi, math.pi),
    st.floats(0.0, 10.0),
)
def test_object_round_trips_any_valid_content(source, position, yaw, latency) -> None:
    quaternion = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    message = decode_object(encode_object(1, 0.0, source, position, quaternion, latency))
    assert message.source_id == source and message.latency_s == latency
    np.testing.assert_array_equal(message.position, position)


# ------------------------------------------------------------------ negotiation
def _exchange(robot: UdpRobot, datagram: bytes) -> tuple[object, bytes | None]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as arm:
        arm.bind(("127.0.0.1", 0))
        arm.settimeout(1.0)
        arm.sendto(datagram, robot.local_address)
        state = robot.receive_state(1.0)
        robot.send_setpoint(
            state.sequence,
            Q,
            False,
            gripper=GripperCommand(0.03, 0.2, 40.0) if state.gripper else None,
        )
        try:
            return state, arm.recv(4096)
        except TimeoutError:
            return state, None


def test_the_controller_answers_in_the_robots_version_and_drops_a_version_change() -> None:
    with UdpRobot(("127.0.0.1", 0), 0.005) as v1_robot:
        state, answer = _exchange(v1_robot, encode_state(1, 0.0, Q, QD))
        assert state.protocol_version == 1 and state.gripper is None
        assert decode_setpoint(answer).version == 1 and len(answer) == 88
        with pytest.raises(ProtocolError, match="needs protocol version 2"):
            v1_robot.send_setpoint(1, Q, False, gripper=GripperCommand(0.03, 0.2, 40.0))
    with (
        UdpRobot(("127.0.0.1", 0), 0.005) as v2_robot,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as arm,
    ):
        arm.bind(("127.0.0.1", 0))
        arm.settimeout(1.0)
        arm.sendto(state_v2(1), v2_robot.local_address)
        state = v2_robot.receive_state(1.0)
        assert state.protocol_version == 2 and state.gripper.width_m == 0.042
        v2_robot.send_setpoint(state.sequence, Q, False, gripper=GripperCommand(0.03, 0.2, 40.0))
        answer = decode_setpoint(arm.recv(4096))
        assert answer.version == 2 and answer.gripper == GripperSetpoint(0.03, 0.2, 40.0)
        # The same robot now sending version 1: dropped, counted, never answered.
        arm.sendto(encode_state(2, 0.0, Q, QD), v2_robot.local_address)
        assert v2_robot.receive_state(0.2) is None
        assert v2_robot.stats.version_changed == 1


def test_object_listener_hands_out_poses_and_drops_malformed_ones() -> None:
    listener = UdpObjectListener(("127.0.0.1", 0))
    try:
        nan_pose = bytearray(object_bytes(2))
        nan_pose[32:40] = struct.pack("<d", math.nan)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as camera:
            for datagram in (object_bytes(1), bytes(nan_pose), b"junk", object_bytes(3)):
                camera.sendto(datagram, listener.local_address)
        time.sleep(0.05)
        poses = listener.poll()
        assert [pose.sequence for pose in poses] == [1, 3]
        assert listener.ignored == 2
        assert abs(poses[0].yaw - 0.3) < 1e-12 and poses[0].latency_s == 0.04
    finally:
        listener.close()
