"""The simulated IIWA14 as a robot for the deploy runtime (it needs PyBullet, so it
lives on the training side; the runtime itself, deploy/iiwa_deploy, never imports it).

- `SimRobot`: an in-process robot backend. It clocks the control loop like the real
  arm: every `period_s` of wall-clock time it advances the physics by one period and
  hands the loop a fresh state; the loop's setpoint becomes the joints' position target
  (with the datasheet torque and speed limits, as in training).
- `PyBulletPlant`: the same simulated arm behind the deploy runtime's `Plant` interface,
  so `iiwa-rl fake-robot` can play the robot's side of the UDP bridge.

`iiwa-rl deploy policy.onnx --robot sim|udp|ros2` runs a policy through the real-time loop;
`iiwa-rl ros2-fake-arm` plays a ros2_control arm (this PyBullet arm behind the forward
position controller's topics) for the ROS 2 bridge to drive.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from iiwa_rl.sim import BulletSim, Iiwa14

# The training default (iiwa_rl.envs.config): one physics step per 5 ms robot period.
DEFAULT_PHYSICS_HZ = 200.0
DEFAULT_SOLVER_ITERATIONS = 10


class PyBulletPlant:
    """The simulated arm stepped by whoever owns the clock (the deploy `Plant` interface):
    `reset(q0)`, `apply(setpoint)`, `step(dt) -> (q, qd)`. Physics rate and solver
    iterations are the training env's (a contract's `simulation` section), so a setpoint
    moves this arm exactly as it moved the arm the policy learned on."""

    def __init__(
        self,
        period_s: float,
        physics_hz: float = DEFAULT_PHYSICS_HZ,
        solver_iterations: int = DEFAULT_SOLVER_ITERATIONS,
        with_gripper: bool = False,
        gui: bool = False,
    ):
        per_period = physics_hz * period_s
        if round(per_period) < 1 or abs(per_period - round(per_period)) > 1e-6:
            raise ValueError(
                f"physics at {physics_hz} Hz is not a whole number of steps per robot period "
                f"of {period_s} s"
            )
        self.substeps = int(round(per_period))
        self.period_s = period_s
        self.sim = BulletSim(gui=gui, physics_hz=physics_hz, solver_iterations=solver_iterations)
        self.robot = Iiwa14(self.sim, with_gripper=with_gripper)

    @classmethod
    def for_contract(cls, contract, period_s: float, gui: bool = False) -> PyBulletPlant:
        simulation = contract.simulation
        return cls(
            period_s,
            physics_hz=float(simulation.get("physics_hz", DEFAULT_PHYSICS_HZ)),
            solver_iterations=int(simulation.get("solver_iterations", DEFAULT_SOLVER_ITERATIONS)),
            gui=gui,
        )

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
    """A `RobotBackend` (see iiwa_deploy.robot) backed by `PyBulletPlant`.

    In real time the simulated robot keeps its own clock, as a robot controller does: every
    period boundary it advances the physics one period with the newest setpoint it has and
    sends a state. When the loop is late, the periods it missed still pass: the arm goes on
    tracking the last setpoint, and the loop gets the newest state (the missed boundaries
    show in its lateness figures). With `real_time=False` each call advances one period at
    once (tests, benchmarks that need no wall clock)."""

    def __init__(self, plant: PyBulletPlant, initial_positions, real_time: bool = True):
        from iiwa_deploy import RobotState

        self._state_type = RobotState
        self.plant = plant
        self.period_s = float(plant.period_s)
        self.plant.reset(np.asarray(initial_positions, dtype=float))
        self.real_time = real_time
        self.sequence = 0
        self._next_tick: float | None = None
        self.setpoints_received = 0
        self.fault_reported = False
        self.periods_without_answer = 0

    def receive_state(self, timeout_s: float):
        now = time.perf_counter()
        periods = 1
        if self.real_time:
            if self._next_tick is None:
                self._next_tick = now
            wait = self._next_tick - now
            if wait > timeout_s:
                time.sleep(max(0.0, timeout_s))
                return None
            if wait > 0:
                time.sleep(wait)
            # Every boundary passed since the last state is a period the arm lived through.
            elapsed = time.perf_counter() - self._next_tick
            periods = 1 + max(0, int(elapsed // self.period_s))
            self._next_tick += periods * self.period_s
        if self.sequence == 0:
            # The first state is the arm as it stands, before any period has passed (as a
            # training episode's first observation is the state at reset).
            q, qd = self.plant.robot.joint_state()
        else:
            for _ in range(periods):
                q, qd = self.plant.step(self.period_s)
            self.periods_without_answer += periods - 1
        self.sequence += periods
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
    from iiwa_deploy import UdpRobot, load_robot_config, prepare_policy, run_prepared
    from iiwa_deploy.cli import EXIT_REFUSED, CombinedGoals, exit_code, goal_listener_from
    from iiwa_deploy.loop import DEFAULT_FIRST_STATE_TIMEOUT_S
    from iiwa_deploy.robot import parse_host_port

    # Every input error (model, contract, robot YAML, period, goal, address, a port in use,
    # no rclpy) is refused here with a message and exit 2, before anything moves.
    robot = goals = None
    try:
        robot_config = load_robot_config(args.robot_config)
        ros2_settings = None
        if args.robot == "ros2":
            from iiwa_deploy.ros2 import ros2_settings_from

            rate = 1.0 / args.period if args.period is not None else None
            ros2_settings = ros2_settings_from(args, update_rate_hz=rate)
            robot_config = robot_config.replace(robot_period_s=ros2_settings.period_s)
        elif args.period is not None:
            robot_config = robot_config.replace(robot_period_s=args.period)
        prepared = prepare_policy(
            args.model, robot_config, args.goal, args.allow_goal_outside_training
        )
        contract = prepared.policy.contract
        if args.robot == "sim":
            plant = PyBulletPlant.for_contract(contract, robot_config.robot_period_s, gui=args.gui)
            robot = SimRobot(plant, contract.home_joint_positions)
        elif args.robot == "ros2":
            from iiwa_deploy.ros2 import Ros2Robot

            robot = Ros2Robot(ros2_settings, robot_config.robot_period_s)
            print(
                f"ROS 2: states from {robot.topic_name(ros2_settings.joint_states_topic)}, "
                f"commands to {robot.topic_name(ros2_settings.command_topic)} at "
                f"{ros2_settings.update_rate_hz:g} Hz",
                flush=True,
            )
        else:
            robot = UdpRobot(parse_host_port(args.bind), robot_config.robot_period_s)
            print(f"waiting for the robot's STATE messages on {args.bind}", flush=True)
        goals = goal_listener_from(args)
    except (ValueError, RuntimeError) as error:  # ContractError, ConfigError, Ros2Unavailable
        if robot is not None:
            robot.close()
        print(f"iiwa-rl deploy: refused: {error}")
        return EXIT_REFUSED
    if goals is not None:
        host, port = goals.local_address
        print(f"listening for goals on {host}:{port}", flush=True)
    try:
        summary = run_prepared(
            prepared,
            robot,
            duration_s=args.duration,
            max_cycles=args.max_cycles,
            stop_on_success=args.stop_on_success,
            csv_path=args.csv,
            first_state_timeout_s=args.first_state_timeout or DEFAULT_FIRST_STATE_TIMEOUT_S,
            max_policy_steps=args.policy_steps,
            move_to_home=args.move_to_home,
            goal_source=CombinedGoals(robot, goals) if args.robot == "ros2" else goals,
            allow_goal_outside_training=args.allow_goal_outside_training,
        )
    finally:
        if goals is not None:
            goals.close()
        robot.close()
    print(summary.format())
    # The exit codes of `python -m iiwa_deploy run`: a supervisor reads both the same way.
    return exit_code(summary)


def cmd_fake_robot(args: argparse.Namespace) -> int:
    import socket

    from iiwa_deploy import FakeRobot

    from iiwa_rl.sim.robot import HOME_JOINT_POSITIONS

    try:
        host, port = args.controller
        controller = (socket.gethostbyname(host), port)
        plant = PyBulletPlant(
            args.period, physics_hz=args.physics_hz, solver_iterations=args.solver_iterations,
            gui=args.gui,
        )
    except (ValueError, OSError) as error:
        print(f"iiwa-rl fake-robot: error: {error}", file=sys.stderr)
        return 2
    initial = HOME_JOINT_POSITIONS if args.q0 is None else np.asarray(args.q0, dtype=float)
    with FakeRobot(controller, plant, args.period, initial) as robot:
        print(
            f"fake robot (PyBullet) at {robot.local_address}, period {args.period * 1000:g} ms, "
            f"sending to {args.controller}",
            flush=True,
        )
        robot.run(duration_s=args.duration)
    plant.close()
    return 0


def cmd_ros2_fake_arm(args: argparse.Namespace) -> int:
    import json

    from iiwa_deploy.ros2 import ArmMisbehaviour, FakeArm, Ros2Unavailable, ros2_settings_from

    from iiwa_rl.sim.robot import HOME_JOINT_POSITIONS

    try:
        settings = ros2_settings_from(args)
        misbehaviour = ArmMisbehaviour(**json.loads(args.misbehave)) if args.misbehave else None
        plant = PyBulletPlant(
            settings.period_s, physics_hz=args.physics_hz,
            solver_iterations=args.solver_iterations, gui=args.gui,
        )
    except (ValueError, TypeError) as error:
        print(f"iiwa-rl ros2-fake-arm: error: {error}", file=sys.stderr)
        return 2
    initial = HOME_JOINT_POSITIONS if args.q0 is None else np.asarray(args.q0, dtype=float)
    try:
        arm = FakeArm(plant, settings, initial, args.publish_order, misbehaviour)
    except Ros2Unavailable as error:
        plant.close()
        print(f"iiwa-rl ros2-fake-arm: error: {error}", file=sys.stderr)
        return 2
    print(
        f"fake arm (PyBullet) at {settings.update_rate_hz:g} Hz: JointState on "
        f"{arm.topic_name(settings.joint_states_topic)}, commands from "
        f"{arm.topic_name(settings.command_topic)}",
        flush=True,
    )
    try:
        arm.run(duration_s=args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        arm.close()
        plant.close()
    record = arm.record
    print(
        f"fake arm: {record.states_published} states published, {record.commands_received} "
        f"commands applied ({record.malformed_commands} refused), {record.late_ticks} late ticks",
        flush=True,
    )
    return 0


def _runtime_type(name: str):
    """One of the runtime's argparse types (iiwa_deploy.cli), imported only when the option
    is given: importing iiwa_deploy loads onnxruntime, which every other iiwa-rl command can
    do without."""

    def parse(text: str):
        from iiwa_deploy import cli

        return getattr(cli, name)(text)

    parse.__name__ = name  # argparse names the type in its messages
    return parse


_positive_seconds = _runtime_type("positive_seconds")


def register_cli(commands) -> None:
    deploy = commands.add_parser("deploy", help="run an ONNX policy in the real-time control loop")
    deploy.add_argument("model", help="policy.onnx exported by `iiwa-rl export`")
    deploy.add_argument(
        "--robot",
        choices=["sim", "udp", "ros2"],
        default="sim",
        help="sim: the PyBullet arm in real time, in-process; udp: a robot bridge; ros2: a "
        "ROS 2 node against a ros2_control forward position controller",
    )
    deploy.add_argument("--bind", default="127.0.0.1:30200", help="udp: local HOST:PORT for STATE")
    deploy.add_argument(
        "--goal",
        type=_runtime_type("finite_goal"),
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="TCP goal in the base frame, m (default: centre of the training box)",
    )
    deploy.add_argument("--allow-goal-outside-training", action="store_true")
    deploy.add_argument(
        "--duration", type=_positive_seconds, default=5.0, help="seconds to run (default 5)"
    )
    deploy.add_argument("--max-cycles", type=_runtime_type("positive_int"))
    deploy.add_argument(
        "--period",
        type=_positive_seconds,
        help="robot period in s (default: robot config's; ros2: the inverse of --update-rate)",
    )
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
    _add_session_arguments(deploy)
    _add_ros2_arguments(deploy)
    deploy.set_defaults(handler=cmd_deploy)

    fake = commands.add_parser(
        "fake-robot", help="play the robot's side of the UDP bridge (PyBullet)"
    )
    fake.add_argument(
        "--controller",
        type=_runtime_type("host_port"),
        default="127.0.0.1:30200",
        help="where the controller listens",
    )
    fake.add_argument("--period", type=_positive_seconds, default=0.005)
    fake.add_argument(
        "--duration", type=_positive_seconds, help="stop after s seconds (default: run until killed)"
    )
    fake.add_argument("--physics-hz", type=float, default=DEFAULT_PHYSICS_HZ)
    fake.add_argument("--solver-iterations", type=int, default=DEFAULT_SOLVER_ITERATIONS)
    fake.add_argument(
        "--q0", type=float, nargs=7, help="start joint positions, rad (default: the home pose)"
    )
    fake.add_argument("--gui", action="store_true")
    fake.set_defaults(handler=cmd_fake_robot)

    arm = commands.add_parser(
        "ros2-fake-arm",
        help="play a ros2_control arm (PyBullet) for `iiwa-rl deploy --robot ros2` to drive",
    )
    arm.add_argument(
        "--duration", type=_positive_seconds, help="stop after s seconds (default: until killed)"
    )
    arm.add_argument("--physics-hz", type=float, default=DEFAULT_PHYSICS_HZ)
    arm.add_argument("--solver-iterations", type=int, default=DEFAULT_SOLVER_ITERATIONS)
    arm.add_argument(
        "--q0", type=float, nargs=7, help="start joint positions, rad (default: the home pose)"
    )
    arm.add_argument(
        "--publish-order",
        type=int,
        nargs=7,
        help="joint order of the JointState messages (indices; default 0..6): a real "
        "joint_state_broadcaster need not publish in the controller's order",
    )
    arm.add_argument(
        "--misbehave",
        metavar="JSON",
        help='fault injection, e.g. \'{"nan_at_cycles": [200], "burst_from_cycle": 400, '
        '"burst_cycles": 100}\' (fields of iiwa_deploy.ros2.ArmMisbehaviour)',
    )
    arm.add_argument("--gui", action="store_true")
    _add_ros2_arguments(arm)
    arm.set_defaults(handler=cmd_ros2_fake_arm)

    goal = commands.add_parser(
        "send-goal", help="send a new goal to a running `iiwa-rl deploy --goal-bind ...`"
    )
    goal.add_argument(
        "goal", type=_runtime_type("finite_goal"), nargs=3, metavar=("X", "Y", "Z"),
        help="m, base frame",
    )
    goal.add_argument("--to", default="127.0.0.1:30201", help="the controller's --goal-bind")
    goal.set_defaults(handler=cmd_send_goal)


def cmd_send_goal(args: argparse.Namespace) -> int:
    from iiwa_deploy.cli import _command_send_goal

    return _command_send_goal(args)


def _add_ros2_arguments(parser) -> None:
    from iiwa_deploy.ros2 import add_ros2_arguments

    add_ros2_arguments(parser)


def _add_session_arguments(parser) -> None:
    # The runtime's own options, imported only for this command: importing iiwa_deploy
    # loads onnxruntime, which every other iiwa-rl command can do without.
    from iiwa_deploy.cli import add_session_arguments

    add_session_arguments(parser)


# ------------------------------------------------------------------ parity helpers
def env_episode_with_goal(env, act, goal_position, seed: int = 0) -> dict:
    """One reach episode of `env` (an IiwaReach env) for a given goal with the deterministic
    policy `act(observation) -> action`: the env's own verdict, for side-by-side comparison
    with a deployed run of the same goal."""
    observation, info = env.reset(seed=seed, options={"goal_position": goal_position})
    distances = []
    truncated = terminated = False
    while not (truncated or terminated):
        observation, _, terminated, truncated, info = env.step(act(observation))
        distances.append(info["tcp_distance"])
    steps_per_second = round(env.unwrapped.config.control_hz)
    return {
        "success": bool(info["is_success"]),
        "final_distance_m": float(distances[-1]),
        "worst_last_second_m": float(max(distances[-steps_per_second:])),
    }


def deploy_in_sim(prepared, goal_position, policy_steps: int, real_time: bool = True):
    """The controller loop against the in-process simulated arm (the training physics), from
    the policy's home pose, for `policy_steps` actions: `iiwa-rl deploy --robot sim` without
    the command line. Returns the loop's summary."""
    from iiwa_deploy import ControlLoop

    contract = prepared.policy.contract
    plant = PyBulletPlant.for_contract(contract, prepared.robot.robot_period_s)
    robot = SimRobot(plant, contract.home_joint_positions, real_time=real_time)
    try:
        loop = ControlLoop(
            prepared.policy,
            contract,
            prepared.robot,
            robot,
            np.asarray(goal_position, dtype=float),
            prepared.steps_per_action,
        )
        return loop.run(max_policy_steps=policy_steps)
    finally:
        robot.close()
