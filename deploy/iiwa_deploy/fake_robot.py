"""A loopback fake robot: the robot's side of the UDP bridge, driving a simulated plant.

It behaves like an FRI session as seen from the controller: every period it sends a STATE,
and it applies the newest SETPOINT that arrived since its last tick. Use it in-process
(`FakeRobot(...).start()` runs it in a thread) or as a process:

    python -m iiwa_deploy.fake_robot --port 30200

Plant interface (kept small so a PyBullet plant on the training side can implement it):

    reset(q0)           put the arm at rest at joint positions q0 (rad)
    apply(setpoint_q)   the position setpoint to track from now on (rad)
    step(dt) -> (q, qd) advance dt seconds; return measured positions (rad) and speeds (rad/s)

A plant with a gripper (`with_gripper` True) also has `apply_gripper(command)` and
`gripper_state()`: the fake robot
then speaks protocol version 2 (the gripper in each STATE, the gripper command of each
SETPOINT applied). With a `pose_sensor` (perception.SimulatedPoseSensor) and an
`object_address` it also plays the pose estimator, sending OBJECT datagrams there.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .actuation import GripperCommand
from .config import RobotConfig, load_robot_config
from .protocol import (
    SETPOINT_FAULT_LATCHED,
    STATE_COMMANDING_ACTIVE,
    ProtocolError,
    decode_setpoint,
    encode_state,
    encode_state_v2,
)

DEFAULT_INITIAL_POSITIONS = (0.0, 0.35, 0.0, -1.2, 0.0, 0.6, 0.0)
MAX_RECORDED_SETPOINTS = 200_000


class Plant(Protocol):
    """A joint-position-controlled arm simulation (see the module docstring)."""

    def reset(self, initial_positions: np.ndarray) -> None: ...

    def apply(self, setpoint_positions: np.ndarray) -> None: ...

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray]: ...


class NumpyPlant:
    """Critically damped second-order tracking of the setpoint, speed-limited per joint.

    Stands in for the robot's joint position controller; integrated in sub-steps of at most
    1 ms so it stays stable for stiff natural frequencies at a 10 ms robot period.
    """

    def __init__(
        self,
        velocity_limits: np.ndarray,
        natural_frequency_rad_s: float = 40.0,
        max_substep_s: float = 0.001,
    ) -> None:
        self.velocity_limits = np.asarray(velocity_limits, dtype=float)
        self.natural_frequency = float(natural_frequency_rad_s)
        self.max_substep_s = float(max_substep_s)
        joint_count = self.velocity_limits.shape[0]
        self.positions = np.zeros(joint_count)
        self.velocities = np.zeros(joint_count)
        self.setpoint = np.zeros(joint_count)

    def reset(self, initial_positions: np.ndarray) -> None:
        self.positions = np.array(initial_positions, dtype=float)
        self.velocities = np.zeros_like(self.positions)
        self.setpoint = self.positions.copy()

    def apply(self, setpoint_positions: np.ndarray) -> None:
        self.setpoint = np.array(setpoint_positions, dtype=float)

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        substeps = max(1, int(np.ceil(dt / self.max_substep_s)))
        h = dt / substeps
        omega = self.natural_frequency
        for _ in range(substeps):
            acceleration = (
                omega**2 * (self.setpoint - self.positions) - 2.0 * omega * self.velocities
            )
            self.velocities = np.clip(
                self.velocities + acceleration * h, -self.velocity_limits, self.velocity_limits
            )
            self.positions = self.positions + self.velocities * h
        return self.positions.copy(), self.velocities.copy()


@dataclass
class FaultInjection:
    """Link faults the fake robot can inject; counters are in robot cycles (1-based, 0 = off)."""

    drop_every: int = 0
    duplicate_every: int = 0
    reorder_every: int = 0
    malformed_every: int = 0
    nan_at_cycles: Sequence[int] = ()
    silent_from_cycle: int = 0
    silent_cycles: int = 0
    inf_at_cycles: Sequence[int] = ()
    # A robot side gone wrong: `burst_factor` states per period (each numbered +1, as a
    # robot configured for a faster rate would send), a measured joint 0 that jumps by
    # `jump_rad` from a cycle on, an arm that stops applying setpoints.
    burst_from_cycle: int = 0
    burst_cycles: int = 0
    burst_factor: int = 5
    jump_at_cycle: int = 0
    jump_rad: float = 1.0
    stop_following_from_cycle: int = 0

    def silent(self, cycle: int) -> bool:
        return (
            self.silent_from_cycle > 0
            and self.silent_from_cycle <= cycle < self.silent_from_cycle + self.silent_cycles
        )


def _every(period: int, cycle: int) -> bool:
    return period > 0 and cycle % period == 0


@dataclass
class FakeRobotRecord:
    """What the fake robot saw, for tests and the CLI's report."""

    states_sent: int = 0
    setpoints_received: int = 0
    malformed_setpoints: int = 0
    fault_flags_seen: int = 0
    late_ticks: int = 0
    setpoints: list[np.ndarray] = field(default_factory=list)


class FakeRobot:
    """The robot side of the bridge, clocked at `period_s`, sending to `controller_address`."""

    def __init__(
        self,
        controller_address: tuple[str, int],
        plant: Plant,
        period_s: float,
        initial_positions: Sequence[float] = DEFAULT_INITIAL_POSITIONS,
        faults: FaultInjection | None = None,
        bind_address: tuple[str, int] = ("127.0.0.1", 0),
        pose_sensor=None,
        object_address: tuple[str, int] | None = None,
        reset_plant: bool = True,
    ) -> None:
        self.controller_address = controller_address
        self.plant = plant
        # A plant says whether it has a gripper: having the method is not enough (the
        # PyBullet plant has it for its grasp scene, and has no gripper for a reach).
        self.with_gripper = bool(getattr(plant, "with_gripper", False))
        self.pose_sensor = pose_sensor
        self._object_sender = None
        if pose_sensor is not None and object_address is not None:
            from .robot import UdpObjectSender

            self._object_sender = UdpObjectSender(object_address)
        self.period_s = float(period_s)
        self.faults = faults or FaultInjection()
        self.record = FakeRobotRecord()
        if reset_plant:
            self.plant.reset(np.asarray(initial_positions, dtype=float))
        self.joint_positions = np.asarray(initial_positions, dtype=float).copy()
        self.joint_velocities = np.zeros_like(self.joint_positions)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(bind_address)
        self._socket.setblocking(False)
        self._sequence = 0
        self._held_back: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def local_address(self) -> tuple[str, int]:
        return self._socket.getsockname()

    def _send(self, datagram: bytes) -> None:
        try:
            self._socket.sendto(datagram, self.controller_address)
        except OSError:
            pass  # nobody listening yet: a real robot keeps sending too

    def _receive_setpoints(self, apply: bool = True) -> None:
        newest = None
        while True:
            try:
                data, _ = self._socket.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP port unreachable from an earlier send
            try:
                message = decode_setpoint(data)
            except ProtocolError:
                self.record.malformed_setpoints += 1
                continue
            self.record.setpoints_received += 1
            if message.flags & SETPOINT_FAULT_LATCHED:
                self.record.fault_flags_seen += 1
            if len(self.record.setpoints) < MAX_RECORDED_SETPOINTS:
                self.record.setpoints.append(message.joint_positions.copy())
            if newest is None or message.sequence > newest.sequence:
                newest = message
        if newest is not None and apply:
            self.plant.apply(newest.joint_positions)
            if newest.gripper is not None and self.with_gripper:
                command = newest.gripper
                self.plant.apply_gripper(
                    GripperCommand(command.width_m, command.speed_m_s, command.force_n)
                )

    def tick(self, step_plant: bool = True) -> None:
        """One robot period: apply the newest setpoint, advance the plant, send a STATE."""
        faults = self.faults
        following = not (
            faults.stop_following_from_cycle
            and self._sequence + 1 >= faults.stop_following_from_cycle
        )
        self._receive_setpoints(apply=following)
        if step_plant:
            self.joint_positions, self.joint_velocities = self.plant.step(self.period_s)
        self._sequence += 1
        cycle = self._sequence
        if faults.silent(cycle) or _every(faults.drop_every, cycle):
            return
        if self.pose_sensor is not None:
            self.pose_sensor.advance(cycle * self.period_s)
            for pose in self.pose_sensor.poll():
                if self._object_sender is not None:
                    self._object_sender.send(pose)
        nan_state = cycle in faults.nan_at_cycles or cycle in faults.inf_at_cycles
        positions = self.joint_positions.copy()
        if faults.jump_at_cycle and cycle >= faults.jump_at_cycle:
            positions[0] += faults.jump_rad
        if cycle in faults.nan_at_cycles:
            positions[0] = float("nan")
        if cycle in faults.inf_at_cycles:
            positions[1] = float("inf")
        if self.with_gripper:
            gripper = self.plant.gripper_state()
            datagram = encode_state_v2(
                cycle,
                time.monotonic(),
                positions,
                self.joint_velocities,
                gripper.width_m,
                gripper.force_n,
                gripper.status,
                flags=STATE_COMMANDING_ACTIVE,
                check_finite=not nan_state,
            )
        else:
            datagram = encode_state(
                cycle,
                time.monotonic(),
                positions,
                self.joint_velocities,
                flags=STATE_COMMANDING_ACTIVE,
                check_finite=not nan_state,
            )
        if _every(faults.malformed_every, cycle):
            self._send(datagram[: len(datagram) // 2])
        if _every(faults.reorder_every, cycle) and self._held_back is None:
            self._held_back = datagram
            return
        self._send(datagram)
        self.record.states_sent += 1
        if self._held_back is not None:
            self._send(self._held_back)
            self._held_back = None
        if _every(faults.duplicate_every, cycle):
            self._send(datagram)

    def run(self, duration_s: float | None = None, max_cycles: int | None = None) -> None:
        """Tick at the period until stopped, `duration_s` passes or `max_cycles` ticks."""
        start = time.monotonic()
        next_tick = start
        cycles = 0
        while not self._stop.is_set():
            if duration_s is not None and time.monotonic() - start >= duration_s:
                break
            if max_cycles is not None and cycles >= max_cycles:
                break
            faults = self.faults
            if faults.burst_from_cycle and (
                faults.burst_from_cycle
                <= self._sequence + 1
                < faults.burst_from_cycle + faults.burst_cycles * faults.burst_factor
            ):
                # The physics still advances once per period; the states come faster.
                burst_start = time.monotonic()
                for sub in range(faults.burst_factor):
                    self.tick(step_plant=sub == 0)
                    self._stop.wait(
                        max(
                            0.0,
                            burst_start
                            + (sub + 1) * self.period_s / faults.burst_factor
                            - time.monotonic(),
                        )
                    )
                cycles += 1
                next_tick = time.monotonic()
                continue
            self.tick()
            cycles += 1
            next_tick += self.period_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -self.period_s:
                # A real robot does not send the ticks it missed; neither do we. It numbers
                # its states by its clock, though (the protocol's sequence skips the periods
                # not sent), and the arm lived through those periods too.
                missed = int(-delay // self.period_s)
                self.record.late_ticks += 1
                for _ in range(missed):
                    self.joint_positions, self.joint_velocities = self.plant.step(self.period_s)
                self._sequence += missed
                next_tick += missed * self.period_s

    def start(self, duration_s: float | None = None, max_cycles: int | None = None) -> FakeRobot:
        self._thread = threading.Thread(
            target=self.run, args=(duration_s, max_cycles), name="fake-robot", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        self.stop()
        self._socket.close()
        if self._object_sender is not None:
            self._object_sender.close()

    def __enter__(self) -> FakeRobot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _port(text: str) -> int:
    from .cli import port_number

    return port_number(text)


def _seconds(text: str) -> float:
    from .cli import positive_seconds

    return positive_seconds(text)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m iiwa_deploy.fake_robot",
        description="Loopback fake iiwa: sends STATE to the controller, tracks its SETPOINTs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="controller host (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=30200, help="controller UDP port")
    parser.add_argument(
        "--robot-config",
        default=None,
        help="robot YAML (default: the shipped iiwa 14 configuration)",
    )
    parser.add_argument(
        "--period",
        type=_seconds,
        default=None,
        help="robot period in s (default: robot_period_s of the config)",
    )
    parser.add_argument("--duration", type=_seconds, default=None, help="stop after this many s")
    parser.add_argument(
        "--q0",
        type=float,
        nargs="+",
        default=list(DEFAULT_INITIAL_POSITIONS),
        help="initial joint positions, rad",
    )
    return parser


def run_fake_robot(args: argparse.Namespace) -> int:
    robot: RobotConfig = load_robot_config(args.robot_config)
    if len(args.q0) != robot.joint_count:
        raise ValueError(f"--q0 needs {robot.joint_count} values, got {len(args.q0)}")
    period = args.period if args.period is not None else robot.robot_period_s
    try:
        host = socket.gethostbyname(args.host)
    except OSError as error:
        raise ValueError(f"--host {args.host!r} does not resolve: {error}") from None
    fake = FakeRobot((host, args.port), NumpyPlant(robot.velocity), period, args.q0)
    print(
        f"fake robot: {fake.local_address[0]}:{fake.local_address[1]} -> "
        f"{args.host}:{args.port} every {period * 1000:.1f} ms",
        flush=True,
    )
    try:
        fake.run(duration_s=args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()
    record = fake.record
    print(
        f"fake robot: {record.states_sent} states sent, {record.setpoints_received} setpoints "
        f"received ({record.fault_flags_seen} with fault flag), {record.late_ticks} late ticks"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_fake_robot(build_parser().parse_args(argv))
    except ValueError as error:  # ConfigError included
        print(f"fake robot: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
