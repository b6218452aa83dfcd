"""The simulated IIWA14 as a robot for the deploy runtime (it needs PyBullet, so it
lives on the training side; the runtime itself, deploy/iiwa_deploy, never imports it).

- `SimRobot`: an in-process robot backend. It clocks the control loop like the real
  arm: every `period_s` of wall-clock time it advances the physics by one period and
  hands the loop a fresh state; the loop's setpoint becomes the joints' position target
  (with the datasheet torque and speed limits, as in training).
- `PyBulletPlant`: the same simulated arm behind the deploy runtime's `Plant` interface,
  so `iiwa-rl fake-robot` can play the robot's side of the UDP bridge.

`iiwa-rl deploy policy.onnx --robot sim|udp` runs a policy through the real-time loop.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from iiwa_rl.sim import BulletSim, Iiwa14

_MIN_PHYSICS_HZ = 240.0  # finer steps when the robot's period is long


class PyBulletPlant:
    """The simulated arm stepped by whoever owns the clock (the deploy `Plant` interface):
    `reset(q0)`, `apply(setpoint)`, `step(dt) -> (q, qd)`."""

    def __init__(self, period_s: float, with_gripper: bool = False, gui: bool = False):
        substeps = max(1, int(np.ceil(period_s * _MIN_PHYSICS_HZ - 1e-9)))
        self.substeps = substeps
        self.period_s = period_s
        self.sim = BulletSim(gui=gui, physics_hz=substeps / period_s, solver_iterations=30)
        self.robot = Iiwa14(self.sim, with_gripper=with_gripper)

    def reset(self, initial_positions: np.ndarray) -> None:
        self.robot.reset_joint_positions(np.asarray(initial_positions, dtype=float))

    def apply(self, setpoint_positions: np.ndarray) -> None:
        self.robot.command_joint_positions(np.asarray(setpoint_positions, dtype=float))

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        # The plant's time step is fixed at construction: a robot period is a period.
        if abs(dt - self.period_s) > 1e-9:
            raise ValueError(f"PyBulletPlant steps {self.period_s} s periods, asked for {dt} s")
        self.sim.step(self.substeps)
        return self.robot.joint_state()

    def tcp_position(self) -> np.ndarray:
        return self.robot.tcp_pose()[0]

    def close(self) -> None:
        self.sim.close()


class SimRobot:
    """A `RobotBackend` (see iiwa_deploy.robot) backed by `PyBulletPlant`, in real time.

    `receive_state` sleeps until the next period boundary, steps the physics one period
    and returns the state, as a robot controller sends one state per period. A late
    caller gets the state at once (no catching up: one state per call), and the missed
    boundary shows in the loop's lateness figures."""

    def __init__(
        self, period_s: float, initial_positions, gui: bool = False, real_time: bool = True
    ):
        from iiwa_deploy import RobotState

        self._state_type = RobotState
        self.period_s = float(period_s)
        self.plant = PyBulletPlant(self.period_s, gui=gui)
        self.plant.reset(np.asarray(initial_positions, dtype=float))
        self.real_time = real_time
        self.sequence = 0
        self._next_tick = None
        self.setpoints_received = 0
        self.fault_reported = False

    def receive_state(self, timeout_s: float):
        now = time.perf_counter()
        if self._next_tick is None:
            self._next_tick = now
        if self.real_time:
            wait = self._next_tick - now
            if wait > timeout_s:
                time.sleep(timeout_s)
                return None
            if wait > 0:
                time.sleep(wait)
            self._next_tick = max(
                self._next_tick + self.period_s, time.perf_counter() - self.period_s
            )
        q, qd = self.plant.step(self.period_s)
        self.sequence += 1
        return self._state_type(self.sequence, time.perf_counter(), q.copy(), qd.copy())

    def send_setpoint(
        self, answer_to_sequence: int, joint_positions: np.ndarray, fault: bool
    ) -> None:
        self.plant.apply(joint_positions)
        self.setpoints_received += 1
        self.fault_reported = self.fault_reported or fault

    def close(self) -> None:
        self.plant.close()


def cmd_deploy(args: argparse.Namespace) -> int:
    from iiwa_deploy import ContractError, UdpRobot, load_robot_config, prepare_policy, run_prepared
    from iiwa_deploy.cli import EXIT_FAULT, EXIT_REFUSED
    from iiwa_deploy.config import ConfigError as RobotConfigError
    from iiwa_deploy.loop import DEFAULT_FIRST_STATE_TIMEOUT_S
    from iiwa_deploy.robot import parse_host_port

    robot_config = (
        load_robot_config(args.robot_config) if args.robot_config else load_robot_config()
    )
    if args.period is not None:
        robot_config = robot_config.replace(robot_period_s=args.period)
    try:
        prepared = prepare_policy(
            args.model, robot_config, args.goal, args.allow_goal_outside_training
        )
    except (ContractError, RobotConfigError) as error:
        print(f"iiwa-rl deploy: refused: {error}")
        return EXIT_REFUSED
    home = prepared.policy.contract.home_joint_positions
    if args.robot == "sim":
        robot = SimRobot(robot_config.robot_period_s, home, gui=args.gui)
    else:
        robot = UdpRobot(parse_host_port(args.bind), robot_config.robot_period_s)
        print(f"waiting for the robot's STATE messages on {args.bind}", flush=True)
    try:
        summary = run_prepared(
            prepared,
            robot,
            duration_s=args.duration,
            max_cycles=args.max_cycles,
            stop_on_success=args.stop_on_success,
            csv_path=args.csv,
            first_state_timeout_s=args.first_state_timeout or DEFAULT_FIRST_STATE_TIMEOUT_S,
        )
    finally:
        robot.close()
    print(summary.format())
    # The exit codes of `python -m iiwa_deploy run`: a supervisor reads both the same way.
    return EXIT_FAULT if summary.faults else 0


def cmd_fake_robot(args: argparse.Namespace) -> int:
    from iiwa_deploy import FakeRobot
    from iiwa_deploy.fake_robot import DEFAULT_INITIAL_POSITIONS
    from iiwa_deploy.robot import parse_host_port

    plant = PyBulletPlant(args.period, gui=args.gui)
    with FakeRobot(
        parse_host_port(args.controller), plant, args.period, DEFAULT_INITIAL_POSITIONS
    ) as robot:
        print(
            f"fake robot (PyBullet) at {robot.local_address}, period {args.period * 1000:g} ms, "
            f"sending to {args.controller}",
            flush=True,
        )
        robot.run(duration_s=args.duration)
    plant.close()
    return 0


def _positive_seconds(text: str) -> float:
    # The runtime's own check, imported only when the option is given: importing
    # iiwa_deploy loads onnxruntime, which every other iiwa-rl command can do without.
    from iiwa_deploy.cli import positive_seconds

    return positive_seconds(text)


def register_cli(commands) -> None:
    deploy = commands.add_parser("deploy", help="run an ONNX policy in the real-time control loop")
    deploy.add_argument("model", help="policy.onnx exported by `iiwa-rl export`")
    deploy.add_argument(
        "--robot",
        choices=["sim", "udp"],
        default="sim",
        help="sim: the PyBullet arm in real time, in-process; udp: a robot bridge",
    )
    deploy.add_argument("--bind", default="127.0.0.1:30200", help="udp: local HOST:PORT for STATE")
    deploy.add_argument(
        "--goal",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="TCP goal in the base frame, m (default: centre of the training box)",
    )
    deploy.add_argument("--allow-goal-outside-training", action="store_true")
    deploy.add_argument("--duration", type=float, default=5.0, help="seconds to run (default 5)")
    deploy.add_argument("--max-cycles", type=int)
    deploy.add_argument("--period", type=float, help="robot period in s (default: robot config's)")
    deploy.add_argument("--robot-config", help="robot YAML (default: the shipped iiwa 14 R820)")
    deploy.add_argument("--stop-on-success", action="store_true")
    deploy.add_argument("--csv", help="per-cycle timing log")
    deploy.add_argument(
        "--first-state-timeout",
        type=_positive_seconds,
        help="udp: give up if no robot state arrives within this many s (default: that of "
        "`python -m iiwa_deploy run`)",
    )
    deploy.add_argument("--gui", action="store_true", help="sim: show the PyBullet GUI")
    deploy.set_defaults(handler=cmd_deploy)

    fake = commands.add_parser(
        "fake-robot", help="play the robot's side of the UDP bridge (PyBullet)"
    )
    fake.add_argument(
        "--controller", default="127.0.0.1:30200", help="where the controller listens"
    )
    fake.add_argument("--period", type=float, default=0.005)
    fake.add_argument(
        "--duration", type=float, help="stop after s seconds (default: run until killed)"
    )
    fake.add_argument("--gui", action="store_true")
    fake.set_defaults(handler=cmd_fake_robot)
