"""Robot backends: what the control loop talks to. The robot clocks the loop.

`UdpRobot` is the controller side of the UDP bridge: an FRI client (or a ROS 2 node, or the
fake robot) sends a STATE datagram every robot period to the port we bind, and we answer each
with one SETPOINT sent back to the address the state came from.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .actuation import GripperCommand
from .perception import ObjectPose
from .protocol import (
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_GRIPPER,
    SETPOINT_FAULT_LATCHED,
    SETPOINT_HOLD,
    STATE_COMMANDING_ACTIVE,
    STATE_ROBOT_ERROR,
    GripperSetpoint,
    GripperState,
    ProtocolError,
    decode_goal,
    decode_object,
    decode_state,
    encode_goal,
    encode_object,
    encode_setpoint,
    encode_setpoint_v2,
)

logger = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 4096


@dataclass(frozen=True)
class RobotState:
    sequence: int
    timestamp_s: float
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    joint_torques: np.ndarray | None = None
    protocol_version: int = PROTOCOL_VERSION
    gripper: GripperState | None = None  # protocol version 2: the gripper's measured state
    # The robot applies the setpoints it receives (FRI COMMANDING_ACTIVE). While False the
    # loop answers with the measured position and its interpolator does not advance.
    commanding: bool = True
    # The robot side reports an error of its own: the loop latches a fault.
    robot_error: bool = False


@runtime_checkable
class RobotBackend(Protocol):
    """The loop's view of a robot.

    `receive_state` blocks until the robot's next state (or returns None after `timeout_s`);
    `send_setpoint` answers the state with sequence `answer_to_sequence`; `fault` tells the
    robot side the controller is holding because of a latched fault. A backend whose
    robot has a gripper (protocol version 2) also takes `gripper=GripperCommand` there.

    Optional: a backend whose states arrive at the robot's pace in wall-clock time (a real
    arm, the UDP and ROS 2 bridges, a simulation keeping its own clock) sets `real_time =
    True`; the loop then measures the state rate against `period_s`, holds still until one
    window agrees, and latches a fault when it stops agreeing. A backend stepped on demand
    (tests, a simulation run as fast as it goes) leaves it unset.
    """

    period_s: float

    def receive_state(self, timeout_s: float) -> RobotState | None: ...

    def send_setpoint(
        self, answer_to_sequence: int, joint_positions: np.ndarray, fault: bool
    ) -> None: ...

    def close(self) -> None: ...


@dataclass
class UdpLinkStats:
    received: int = 0
    malformed: int = 0
    duplicate_or_reordered: int = 0
    superseded: int = 0
    foreign_sender: int = 0
    version_changed: int = 0
    sent: int = 0
    send_errors: int = 0


def parse_host_port(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def bind_udp_socket(address: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket bound to `address`; ValueError with the reason (port in use,
    host that does not resolve or is not local) instead of an OSError traceback."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(address)
    except (OSError, OverflowError) as error:
        udp.close()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ValueError(f"cannot bind UDP {address[0]}:{address[1]}: {reason}") from None
    udp.setblocking(False)
    return udp


class UdpRobot:
    """Controller end of the bridge. Bind to a local address; the robot side sends to it.

    Malformed datagrams, and states not newer than the last one returned, are dropped and
    counted. If several fresh states are queued (the loop fell behind), only the newest is
    returned and the older ones count as superseded: answering each in turn would send a burst
    of stale setpoints. The first sender becomes the robot; datagrams from other addresses are
    ignored so a stray packet cannot hijack the setpoint stream.

    The robot's first state fixes the protocol version (1, or 2 with the gripper); every
    SETPOINT is answered in it, and a later state of the other version is dropped and
    counted (`version_changed`): one robot does not change protocols mid-run.
    """

    real_time = True

    def __init__(self, bind_address: tuple[str, int], period_s: float) -> None:
        self.period_s = float(period_s)
        self.stats = UdpLinkStats()
        self._socket = bind_udp_socket(bind_address)
        self.robot_address: tuple[str, int] | None = None
        self._last_sequence: int | None = None
        self._own_sequence = 0
        self.protocol_version: int | None = None

    @property
    def local_address(self) -> tuple[str, int]:
        return self._socket.getsockname()

    def _accept(self, data: bytes, sender: tuple[str, int]) -> RobotState | None:
        self.stats.received += 1
        if self.robot_address is not None and sender != self.robot_address:
            self.stats.foreign_sender += 1
            return None
        try:
            # A well-formed state with NaN/inf values goes to the loop, whose state gate
            # latches on it; anything malformed is dropped here.
            message = decode_state(data, allow_non_finite=True)
        except ProtocolError:
            self.stats.malformed += 1
            return None
        if self.protocol_version is not None and message.version != self.protocol_version:
            self.stats.version_changed += 1
            logger.warning(
                "STATE of protocol version %d dropped: this robot speaks version %d",
                message.version,
                self.protocol_version,
            )
            return None
        if self._last_sequence is not None and message.sequence <= self._last_sequence:
            self.stats.duplicate_or_reordered += 1
            return None
        self.robot_address = sender
        self.protocol_version = message.version
        self._last_sequence = message.sequence
        return RobotState(
            sequence=message.sequence,
            timestamp_s=message.timestamp_s,
            joint_positions=message.joint_positions,
            joint_velocities=message.joint_velocities,
            joint_torques=message.joint_torques,
            protocol_version=message.version,
            gripper=message.gripper,
            commanding=bool(message.flags & STATE_COMMANDING_ACTIVE),
            robot_error=bool(message.flags & STATE_ROBOT_ERROR),
        )

    def _drain(self) -> RobotState | None:
        newest: RobotState | None = None
        while True:
            try:
                data, sender = self._socket.recvfrom(RECEIVE_BUFFER_BYTES)
            except (BlockingIOError, InterruptedError):
                return newest
            except OSError:
                # ICMP port-unreachable from an earlier send surfaces here on some systems.
                continue
            state = self._accept(data, sender)
            if state is not None:
                if newest is not None:
                    self.stats.superseded += 1
                newest = state

    def receive_state(self, timeout_s: float) -> RobotState | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            state = self._drain()
            if state is not None:
                return state
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                return None
            select.select([self._socket], [], [], remaining)

    def send_setpoint(
        self,
        answer_to_sequence: int,
        joint_positions: np.ndarray,
        fault: bool,
        gripper: GripperCommand | None = None,
    ) -> None:
        if self.robot_address is None:
            return
        self._own_sequence += 1
        flags = SETPOINT_FAULT_LATCHED | SETPOINT_HOLD if fault else 0
        if self.protocol_version == PROTOCOL_VERSION_GRIPPER:
            command = (
                None
                if gripper is None
                else GripperSetpoint(gripper.width_m, gripper.speed_m_s, gripper.force_n)
            )
            datagram = encode_setpoint_v2(
                self._own_sequence,
                time.monotonic(),
                answer_to_sequence,
                joint_positions,
                command,
                flags,
            )
        else:
            if gripper is not None:
                # The loop refuses a gripper policy on a version 1 robot before it gets here.
                raise ProtocolError("a gripper command needs protocol version 2")
            datagram = encode_setpoint(
                self._own_sequence, time.monotonic(), answer_to_sequence, joint_positions, flags
            )
        try:
            self._socket.sendto(datagram, self.robot_address)
            self.stats.sent += 1
        except OSError:
            self.stats.send_errors += 1

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> UdpRobot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _UdpSideChannel(ABC):
    """A non-blocking UDP port for messages beside the robot's (goals, object poses): only
    hosts in `allowed_hosts` are heard, and what is dropped is logged with the reason.
    `poll` reads every datagram waiting; `_accept(data, sender, received_s)` decodes one
    (raising ProtocolError) and returns what to hand on, or None to skip it."""

    what = "message"

    def __init__(self, bind_address: tuple[str, int], allowed_hosts=("127.0.0.1",)) -> None:
        self.allowed_hosts = frozenset(allowed_hosts)
        self._socket = bind_udp_socket(bind_address)
        self.ignored = 0

    @property
    def local_address(self) -> tuple[str, int]:
        return self._socket.getsockname()

    def _ignore(self, reason: str, *args) -> None:
        self.ignored += 1
        logger.warning(f"{self.what} message ignored: " + reason, *args)

    @abstractmethod
    def _accept(self, data: bytes, sender: tuple[str, int], received_s: float):
        """The decoded item to hand on, or None to skip the datagram."""

    def poll(self) -> list:
        accepted = []
        while True:
            try:
                data, sender = self._socket.recvfrom(RECEIVE_BUFFER_BYTES)
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError:
                continue  # ICMP port unreachable from an earlier send
            received = time.perf_counter()
            if sender[0] not in self.allowed_hosts:
                self._ignore("from unknown sender %s:%d", sender[0], sender[1])
                continue
            try:
                item = self._accept(data, sender, received)
            except ProtocolError as error:
                self._ignore("%s (from %s:%d)", error, sender[0], sender[1])
                continue
            if item is not None:
                accepted.append(item)

    def close(self) -> None:
        self._socket.close()


class UdpGoalListener(_UdpSideChannel):
    """New goals while the loop runs: GOAL datagrams on their own port (a `GoalSource`).

    Only hosts in `allowed_hosts` may move the goal; a datagram from any other address, a
    malformed one, a non-finite goal or a sequence not newer than the last is ignored with a
    logged reason. The loop checks each goal against the training box before using it."""

    what = "goal"

    def __init__(self, bind_address: tuple[str, int], allowed_hosts=("127.0.0.1",)) -> None:
        super().__init__(bind_address, allowed_hosts)
        # Per host, not per socket: `send_goal` opens a new socket for every goal.
        self._last_sequence: dict[str, int] = {}

    def _accept(self, data, sender, received_s) -> np.ndarray | None:
        message = decode_goal(data)
        last = self._last_sequence.get(sender[0])
        if last is not None and message.sequence <= last:
            self._ignore("sequence %d not newer than %d", message.sequence, last)
            return None
        self._last_sequence[sender[0]] = message.sequence
        return message.goal_position


class UdpObjectListener(_UdpSideChannel):
    """Object pose estimates while the loop runs: OBJECT datagrams on their own port (an
    `ObjectPoseSource`). Only hosts in `allowed_hosts` are heard; a malformed datagram (wrong
    size or version, non-finite numbers, not a unit quaternion) is dropped with a logged
    reason. Which estimator ids count, and the stale and jump gates, are the loop's
    (perception.ObjectPoseGate)."""

    what = "object"

    def _accept(self, data, sender, received_s) -> ObjectPose:
        message = decode_object(data)
        return ObjectPose(
            sequence=message.sequence,
            source_id=message.source_id,
            position=message.position,
            orientation=message.orientation,
            latency_s=message.latency_s,
            received_s=received_s,
            valid=message.valid,
        )


class UdpObjectSender:
    """The estimator's end: sends OBJECT datagrams to a controller's object port."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, pose: ObjectPose) -> None:
        datagram = encode_object(
            pose.sequence,
            time.monotonic(),
            pose.source_id,
            pose.position,
            pose.orientation,
            pose.latency_s,
            pose.valid,
        )
        try:
            self._socket.sendto(datagram, self.address)
        except OSError:
            pass  # nobody listening yet: a camera keeps sending too

    def close(self) -> None:
        self._socket.close()


def send_goal(address: tuple[str, int], goal_position, sequence: int | None = None) -> None:
    """Send one GOAL datagram to a running controller's goal port."""
    sequence = time.monotonic_ns() if sequence is None else sequence
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(encode_goal(sequence, time.monotonic(), goal_position), address)
