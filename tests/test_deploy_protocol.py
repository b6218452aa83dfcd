"""The UDP bridge protocol (encoding, strict decoding, fuzzing) and the UdpRobot backend."""

from __future__ import annotations

import math
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402, F401  (puts deploy/ on sys.path)
from iiwa_deploy import protocol  # noqa: E402
from iiwa_deploy.protocol import (  # noqa: E402
    ProtocolError,
    SetpointMessage,
    StateMessage,
    decode,
    decode_setpoint,
    decode_state,
    encode_setpoint,
    encode_state,
)
from iiwa_deploy.robot import UdpRobot  # noqa: E402

Q = np.linspace(-1.0, 1.0, 7)
QD = np.linspace(0.5, -0.5, 7)


def state_bytes(sequence: int = 5, **kwargs: object) -> bytes:
    return encode_state(sequence, 12.5, Q, QD, **kwargs)  # type: ignore[arg-type]


def test_state_round_trip_with_and_without_torques() -> None:
    message = decode_state(state_bytes())
    assert message.sequence == 5 and message.timestamp_s == 12.5
    np.testing.assert_array_equal(message.joint_positions, Q)
    np.testing.assert_array_equal(message.joint_velocities, QD)
    assert message.joint_torques is None
    with_torques = decode_state(encode_state(6, 1.0, Q, QD, joint_torques=np.arange(7.0)))
    np.testing.assert_array_equal(with_torques.joint_torques, np.arange(7.0))
    assert with_torques.flags & protocol.STATE_TORQUE_VALID


def test_setpoint_round_trip_and_sizes() -> None:
    datagram = encode_setpoint(9, 3.25, 41, Q, protocol.SETPOINT_FAULT_LATCHED)
    assert len(datagram) == protocol.SETPOINT_SIZE == 88
    assert len(state_bytes()) == protocol.STATE_SIZE == 192
    message = decode_setpoint(datagram)
    assert (message.sequence, message.answer_to_sequence, message.timestamp_s) == (9, 41, 3.25)
    np.testing.assert_array_equal(message.joint_positions, Q)
    assert isinstance(decode(datagram), SetpointMessage)
    assert isinstance(decode(state_bytes()), StateMessage)


def test_byte_layout_matches_the_documented_struct() -> None:
    datagram = encode_setpoint(7, 2.0, 6, Q, protocol.SETPOINT_HOLD)
    magic, version, kind, flags, sequence, timestamp, answer = struct.unpack_from(
        "<4sBBHQdQ", datagram
    )
    assert (magic, version, kind, flags, sequence, timestamp, answer) == (
        b"IWDP",
        1,
        2,
        protocol.SETPOINT_HOLD,
        7,
        2.0,
        6,
    )
    np.testing.assert_array_equal(struct.unpack_from("<7d", datagram, 32), Q)
    state = state_bytes()
    assert struct.unpack_from("<4sBBHQd", state)[:3] == (b"IWDP", 1, 1)
    np.testing.assert_array_equal(struct.unpack_from("<7d", state, 24), Q)
    np.testing.assert_array_equal(struct.unpack_from("<7d", state, 80), QD)


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"", "shorter than the header"),
        (b"XXXX" + state_bytes()[4:], "wrong magic"),
        (state_bytes()[:4] + bytes([3]) + state_bytes()[5:], "protocol version 3"),
        (state_bytes()[:4] + bytes([2]) + state_bytes()[5:], "expected 216"),
        (state_bytes()[:5] + bytes([9]) + state_bytes()[6:], "message type 9"),
        (state_bytes()[:-1], "expected 192"),
        (state_bytes() + b"\0", "expected 192"),
        (state_bytes()[:6] + struct.pack("<H", 0x80) + state_bytes()[8:], "unknown bits"),
        (state_bytes()[:16] + struct.pack("<d", math.inf) + state_bytes()[24:], "timestamp"),
        (encode_state(1, 0.0, np.full(7, np.nan), QD, check_finite=False), "non-finite"),
    ],
)
def test_decoder_rejects_malformed_states(datagram: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_state(datagram)


def test_decoder_rejects_a_setpoint_where_a_state_is_expected() -> None:
    with pytest.raises(ProtocolError, match="message type 2, expected 1"):
        decode_state(encode_setpoint(1, 0.0, 1, Q))


def test_encoder_refuses_non_finite_setpoints() -> None:
    with pytest.raises(ProtocolError, match="non-finite"):
        encode_setpoint(1, 0.0, 1, np.full(7, np.nan))
    with pytest.raises(ProtocolError, match="expected 7"):
        encode_setpoint(1, 0.0, 1, np.zeros(6))


def _check_decoded(data: bytes) -> None:
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert np.all(np.isfinite(message.joint_positions))
    assert math.isfinite(message.timestamp_s)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=260))
def test_decoder_only_ever_raises_protocol_error_on_random_bytes(data: bytes) -> None:
    _check_decoded(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([state_bytes(), encode_setpoint(3, 1.0, 2, Q)]),
    st.lists(st.tuples(st.integers(0, 191), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(-4, 4),
)
def test_decoder_survives_corrupted_valid_datagrams(
    template: bytes, corruptions: list[tuple[int, int]], length_change: int
) -> None:
    data = bytearray(template)
    for position, value in corruptions:
        data[position % len(data)] = value
    if length_change < 0:
        del data[length_change:]
    else:
        data.extend(b"\x7f" * length_change)
    _check_decoded(bytes(data))


@pytest.fixture
def link() -> Iterator[tuple[UdpRobot, socket.socket]]:
    robot = UdpRobot(("127.0.0.1", 0), 0.005)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.settimeout(1.0)
    try:
        yield robot, sender
    finally:
        sender.close()
        robot.close()


def test_udp_robot_drops_duplicate_reordered_malformed_and_foreign_datagrams(
    link: tuple[UdpRobot, socket.socket],
) -> None:
    robot, sender = link
    address = robot.local_address
    sender.sendto(state_bytes(1), address)
    assert robot.receive_state(1.0).sequence == 1
    for datagram in (state_bytes(1), state_bytes(0), b"junk", state_bytes(3)[:100]):
        sender.sendto(datagram, address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(state_bytes(50), address)
        sender.sendto(state_bytes(4), address)
        state = robot.receive_state(1.0)
    assert state is not None and state.sequence == 4
    assert robot.stats.duplicate_or_reordered == 2
    assert robot.stats.malformed == 2
    assert robot.stats.foreign_sender == 1
    sender.sendto(state_bytes(2), address)
    assert robot.receive_state(0.05) is None
    assert robot.stats.duplicate_or_reordered == 3


def test_udp_robot_answers_only_the_newest_of_queued_states(
    link: tuple[UdpRobot, socket.socket],
) -> None:
    robot, sender = link
    for sequence in (10, 11, 12):
        sender.sendto(state_bytes(sequence), robot.local_address)
    time.sleep(0.05)
    state = robot.receive_state(1.0)
    assert state.sequence == 12
    assert robot.stats.superseded == 2
    robot.send_setpoint(12, Q, fault=True)
    answer = decode_setpoint(sender.recvfrom(1024)[0])
    assert answer.answer_to_sequence == 12
    assert answer.flags == protocol.SETPOINT_FAULT_LATCHED | protocol.SETPOINT_HOLD
    np.testing.assert_array_equal(answer.joint_positions, Q)


def test_udp_robot_times_out_without_a_state(link: tuple[UdpRobot, socket.socket]) -> None:
    robot, _ = link
    start = time.monotonic()
    assert robot.receive_state(0.05) is None
    assert 0.04 <= time.monotonic() - start < 1.0
    robot.send_setpoint(1, Q, fault=False)  # nobody to answer yet: silently nothing
    assert robot.stats.sent == 0
