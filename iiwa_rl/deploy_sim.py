"""The simulated IIWA14 as a robot for the deploy runtime (it needs PyBullet, so it
lives on the training side; the runtime itself, deploy/iiwa_deploy, never imports it).

- `SimRobot`: an in-process robot backend. It clocks the control loop like the real
  arm: every `period_s` of wall-clock time it advances the physics by one period and
  hands the loop a fresh state; the loop's setpoint becomes the joints' position target
  (with the datasheet torque and speed limits, as in training).
- `PyBulletPlant`: the same simulated arm behind the deploy runtime's `Plant` interface,
  so `iiwa-rl fake-robot` can play the robot's side of the UDP bridge. For a grasp policy
  it is the grasp environment's own scene (table, cube, gripper), built from the contract's
  env_kwargs by the environment itself, with the gripper behind the plant's gripper
  interface and the cube's true pose for a simulated camera
  (iiwa_deploy.perception.SimulatedPoseSensor: noise, per-episode bias, latency).

`iiwa-rl deploy policy.onnx --robot sim|udp|ros2` runs a policy through the real-time loop;
`iiwa-rl ros2-fake-arm` plays a ros2_control arm (this PyBullet arm behind the forward
position controller's topics) for the ROS 2 bridge to drive.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from iiwa_deploy.perception import SimulatedPoseSensor

from iiwa_rl.envs.base import quaternion_yaw
from iiwa_rl.sim import BulletSim, Iiwa14

# The training default (iiwa_rl.envs.config): one physics step per 5 ms robot period.
DEFAULT_PHYSICS_HZ = 200.0
DEFAULT_SOLVER_ITERATIONS = 10
# Robot periods a deployed grasp may take beyond its policy steps: the wait for the first
# object pose and the braking stop (5 s at 5 ms).
GRASP_EXTRA_CYCLES = 1000


def _substeps(physics_hz: float, period_s: float) -> int:
    per_period = physics_hz * period_s
    if round(per_period) < 1 or abs(per_period - round(per_period)) > 1e-6:
        raise ValueError(
            f"physics at {physics_hz} Hz is not a whole number of steps per robot period "
            f"of {period_s} s"
        )
    return int(round(per_period))


class PyBulletPlant:
    """The simulated arm stepped by whoever owns the clock (the deploy `Plant` interface):
    `reset(q0)`, `apply(setpoint)`, `step(dt) -> (q, qd)`. Physics rate and solver
    iterations are the training env's (a contract's `simulation` section), so a setpoint
    moves this arm exactly as it moved the arm the policy learned on.

    With a grasp scene (`grasp_env`, see `for_contract`) it also has the gripper
    (`apply_gripper(command)`, `gripper_state()`) and the cube (`place_object(xy, yaw)`,
    `object_pose()`)."""

    def __init__(
        self,
        period_s: float,
        physics_hz: float = DEFAULT_PHYSICS_HZ,
        solver_iterations: int = DEFAULT_SOLVER_ITERATIONS,
        with_gripper: bool = False,
        gui: bool = False,
        grasp_env=None,
    ):
        self.period_s = period_s
        self.grasp_env = grasp_env
        if grasp_env is not None:
            # The env's own scene: its simulation, arm, table and cube.
            self.substeps = _substeps(grasp_env.config.physics_hz, period_s)
            self.sim, self.robot = grasp_env.sim, grasp_env.robot
            return
        self.substeps = _substeps(physics_hz, period_s)
        self.sim = BulletSim(gui=gui, physics_hz=physics_hz, solver_iterations=solver_iterations)
        self.robot = Iiwa14(self.sim, with_gripper=with_gripper)

    @property
    def with_gripper(self) -> bool:
        """Whether this arm carries the gripper (the fake robot then speaks version 2)."""
        return self.robot.with_gripper

    @classmethod
    def for_contract(cls, contract, period_s: float, gui: bool = False) -> PyBulletPlant:
        """The plant a policy was trained on: a grasp contract gets the grasp environment's
        scene, built by the environment from the contract's env_kwargs (no start spread: the
        controller starts from home)."""
        if contract.grasp is not None:
            from iiwa_rl.viz.policies import make_env

            env_kwargs = {**contract.raw["env_kwargs"], "initial_joint_noise": 0.0}
            env = make_env(contract.env_id, env_kwargs, render_mode="human" if gui else None)
            plant = cls(period_s, grasp_env=env.unwrapped)
            plant._gym_env = env
            return plant
        simulation = contract.simulation
        return cls(
            period_s,
            physics_hz=float(simulation.get("physics_hz", DEFAULT_PHYSICS_HZ)),
            solver_iterations=int(simulation.get("solver_iterations", DEFAULT_SOLVER_ITERATIONS)),
            gui=gui,
        )

    # ------------------------------------------------------------------ grasp scene
    def place_object(self, xy, yaw: float, seed: int = 0) -> None:
        """A new episode of the grasp scene: the arm at rest at home, the gripper open, the
        cube at (x, y) on the table turned by `yaw` (the env's own reset)."""
        if self.grasp_env is None:
            raise ValueError("this plant has no grasp scene (built for a reach contract)")
        self.grasp_env.reset(
            seed=seed, options={"cube_position": np.asarray(xy, dtype=float), "cube_yaw": yaw}
        )

    def object_pose(self) -> tuple[np.ndarray, float]:
        """The cube's true position (base frame, m) and yaw (rad)."""
        env = self.grasp_env
        position, orientation = self.sim.client.getBasePositionAndOrientation(env.cube_id)
        return np.array(position) - self.robot.base_position, quaternion_yaw(orientation)

    def apply_gripper(self, command) -> None:
        """A GripperCommand (width m, speed m/s, force N)."""
        self.robot.command_gripper(command.width_m, command.speed_m_s, command.force_n)

    def gripper_state(self):
        """The gripper as a version 2 STATE reports it; the simulated fingers sense
        contacts (as tactile pads would), and the force is the finger motors' own."""
        from iiwa_deploy.protocol import GripperState

        robot = self.robot
        fingers = self.sim.client.getJointStates(robot.body_id, robot.finger_joint_indices)
        return GripperState.sensed(
            width_m=fingers[0][0] + fingers[1][0],
            force_n=max(abs(fingers[0][3]), abs(fingers[1][3])),
            contacts=robot.finger_contacts(self.grasp_env.cube_id),
            moving=abs(fingers[0][1]) + abs(fingers[1][1]) > 1e-3,
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

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """The arm as it stands now (no period passes)."""
        return self.robot.joint_state()

    def tcp_position(self) -> np.ndarray:
        return self.robot.tcp_pose()[0]

    def close(self) -> None:
        gym_env = getattr(self, "_gym_env", None)
        if gym_env is not None:
            gym_env.close()
        else:
            self.sim.close()


class SimRobot:
    """A `RobotBackend` (see iiwa_deploy.robot) backed by a simulated plant: `PyBulletPlant`,
    or any plant with `joint_state()` besides the `Plant` interface (the MuJoCo one); a
    grasp plant (`with_gripper`) also has the gripper and the cube of `PyBulletPlant`.

    In real time the simulated robot keeps its own clock, as a robot controller does: every
    period boundary it advances the physics one period with the newest setpoint it has and
    sends a state. When the loop is late, the periods it missed still pass: the arm goes on
    tracking the last setpoint, and the loop gets the newest state (the missed boundaries
    show in its lateness figures). With `real_time=False` each call advances one period at
    once (tests, benchmarks that need no wall clock).

    With a grasp plant it speaks protocol version 2 (the gripper in every state, the
    gripper command with every setpoint), and `camera` (a SimulatedPoseSensor on the
    simulated clock) is the object pose source the loop polls."""

    def __init__(self, plant, initial_positions, real_time: bool = True, camera=None):
        from iiwa_deploy import RobotState

        self._state_type = RobotState
        self.plant = plant
        self.period_s = float(plant.period_s)
        # A plant says whether it has a gripper (and so a grasp scene, which its
        # place_object started as the env's reset does); a wrapper without the attribute
        # (robustness.PerturbedPlant) is an arm alone.
        self.with_gripper = bool(getattr(plant, "with_gripper", False))
        if not self.with_gripper:
            self.plant.reset(np.asarray(initial_positions, dtype=float))
        self.camera = camera
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
            q, qd = self.plant.joint_state()
        else:
            for _ in range(periods):
                q, qd = self.plant.step(self.period_s)
            self.periods_without_answer += periods - 1
        self.sequence += periods
        if not self.with_gripper:
            return self._state_type(self.sequence, time.perf_counter(), q.copy(), qd.copy())
        if self.camera is not None:
            self.camera.advance(self.sequence * self.period_s)
        return self._state_type(
            self.sequence,
            time.perf_counter(),
            q.copy(),
            qd.copy(),
            protocol_version=2,
            gripper=self.plant.gripper_state(),
        )

    def poll(self):
        """The camera's new object poses (the loop's object pose source)."""
        return [] if self.camera is None else self.camera.poll()

    def send_setpoint(
        self, answer_to_sequence: int, joint_positions: np.ndarray, fault: bool, gripper=None
    ) -> None:
        self.plant.apply(joint_positions)
        if gripper is not None:
            self.plant.apply_gripper(gripper)
        self.setpoints_received += 1
        self.fault_reported = self.fault_reported or fault

    def close(self) -> None:
        self.plant.close()


def cmd_deploy(args: argparse.Namespace) -> int:
    from iiwa_deploy import UdpRobot, load_robot_config, prepare_policy, run_prepared
    from iiwa_deploy.cli import (
        EXIT_REFUSED,
        CombinedGoals,
        exit_code,
        goal_listener_from,
        object_listener_from,
    )
    from iiwa_deploy.loop import DEFAULT_FIRST_STATE_TIMEOUT_S
    from iiwa_deploy.robot import parse_host_port

    # Every input error (model, contract, robot YAML, period, goal, address, a port in use,
    # no rclpy) is refused here with a message and exit 2, before anything moves.
    robot = goals = objects = None
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
        grasp = contract.grasp
        duration, policy_steps = args.duration, args.policy_steps
        if duration is None and policy_steps is None:
            # One training episode's worth of actions: its outcome is the env's. Past it the
            # policy acts beyond anything it was trained on (the shipped reach drifts off
            # the box-centre goal, 6 mm at 3 s to 19 mm at 5 s, in the env as here).
            policy_steps = int(contract.raw["env_kwargs"]["episode_steps"])
        if args.robot in ("sim", "mujoco"):
            if args.robot == "sim":
                plant = PyBulletPlant.for_contract(
                    contract, robot_config.robot_period_s, gui=args.gui
                )
            else:
                from iiwa_rl.sim.mujoco_plant import MujocoPlant

                # The second engine: the same arm (and for a grasp the same gripper, table and
                # cube) from the same URDFs, MuJoCo's own servos and gripper drive.
                plant = MujocoPlant.for_contract(contract, robot_config.robot_period_s)
            camera = None
            if grasp is not None:
                xy, yaw = _cube_pose(args, grasp)
                plant.place_object(xy, yaw, seed=args.seed)
                camera = SimulatedPoseSensor(
                    plant.object_pose,
                    pose_noise_from(args),
                    source_id=robot_config.perception.source_ids[0],
                    seed=args.seed,
                )
                print(
                    f"cube at x {xy[0]:.3f} y {xy[1]:.3f} m, yaw {yaw:.3f} rad; camera "
                    f"{pose_noise_from(args)}",
                    flush=True,
                )
            robot = SimRobot(plant, contract.home_joint_positions, camera=camera)
            objects = robot if grasp is not None else None
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
            objects = object_listener_from(args)
        goals = goal_listener_from(args)
    except (ValueError, RuntimeError) as error:  # ContractError, ConfigError, Ros2Unavailable
        if objects is not None and objects is not robot:
            objects.close()
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
            duration_s=duration,
            max_cycles=args.max_cycles,
            stop_on_success=args.stop_on_success,
            csv_path=args.csv,
            first_state_timeout_s=args.first_state_timeout or DEFAULT_FIRST_STATE_TIMEOUT_S,
            max_policy_steps=policy_steps,
            move_to_home=args.move_to_home,
            goal_source=CombinedGoals(robot, goals) if args.robot == "ros2" else goals,
            allow_goal_outside_training=args.allow_goal_outside_training,
            object_source=objects,
        )
    finally:
        if goals is not None:
            goals.close()
        if objects is not None and objects is not robot:
            objects.close()
        robot.close()
    print(summary.format())
    # The exit codes of `python -m iiwa_deploy run`: a supervisor reads both the same way.
    return exit_code(summary)


def _cube_pose(args: argparse.Namespace, grasp) -> tuple[np.ndarray, float]:
    """--cube X Y YAW, or a pose drawn from the training area with --seed."""
    if args.cube is not None:
        x, y, yaw = args.cube
        return np.array([x, y]), float(yaw)
    rng = np.random.default_rng(args.seed)
    xy = rng.uniform(grasp.object_area_low, grasp.object_area_high)
    return xy, float(rng.uniform(-grasp.object_yaw_range_rad, grasp.object_yaw_range_rad))


def pose_noise_from(args: argparse.Namespace):
    from iiwa_deploy.perception import PoseNoise

    return PoseNoise(
        position_std_m=args.pose_noise,
        yaw_std_rad=args.pose_yaw_noise,
        bias_m=args.pose_bias,
        latency_s=args.pose_latency,
        rate_hz=args.pose_rate,
    )


def _add_perception_arguments(parser) -> None:
    """The simulated camera of the grasp (the stand-in for a pose estimator)."""
    parser.add_argument(
        "--cube",
        type=float,
        nargs=3,
        metavar=("X", "Y", "YAW"),
        help="grasp: the cube's position on the table (m) and yaw (rad); default: drawn "
        "from the training area with --seed",
    )
    parser.add_argument("--seed", type=int, default=0, help="grasp: cube pose and camera noise")
    parser.add_argument(
        "--pose-noise", type=float, default=0.0, help="camera position noise, m (std)"
    )
    parser.add_argument(
        "--pose-yaw-noise", type=float, default=0.0, help="camera yaw noise, rad (std)"
    )
    parser.add_argument(
        "--pose-bias", type=float, default=0.0, help="camera bias per episode, up to m per axis"
    )
    parser.add_argument(
        "--pose-latency", type=float, default=0.0, help="camera capture-to-delivery delay, s"
    )
    parser.add_argument("--pose-rate", type=float, default=30.0, help="camera rate, Hz")


def cmd_fake_robot(args: argparse.Namespace) -> int:
    import socket

    from iiwa_deploy import FakeRobot
    from iiwa_deploy.robot import parse_host_port

    from iiwa_rl.sim.iiwa14 import HOME_JOINT_POSITIONS

    camera = None
    object_address = None
    try:
        host, port = args.controller
        controller = (socket.gethostbyname(host), port)
        if args.model is not None:
            # The scene and physics of a policy's contract: for a grasp, the env's table, cube
            # and gripper, the cube placed (--cube or drawn with --seed), and a simulated
            # camera.
            from iiwa_deploy.cli import resolve_model_path
            from iiwa_deploy.contract import read_contract
            from iiwa_deploy.policy import create_session

            path = resolve_model_path(args.model)
            contract = read_contract(create_session(path), path)
            plant = PyBulletPlant.for_contract(contract, args.period, gui=args.gui)
            initial = contract.home_joint_positions
            if contract.grasp is not None:
                xy, yaw = _cube_pose(args, contract.grasp)
                plant.place_object(xy, yaw, seed=args.seed)
                camera = SimulatedPoseSensor(
                    plant.object_pose,
                    pose_noise_from(args),
                    source_id=args.source_id,
                    seed=args.seed,
                )
                object_address = parse_host_port(args.object_to)
        else:
            plant = PyBulletPlant(
                args.period,
                physics_hz=args.physics_hz,
                solver_iterations=args.solver_iterations,
                gui=args.gui,
            )
            initial = HOME_JOINT_POSITIONS
    except (ValueError, OSError) as error:  # ContractError too: a ValueError
        print(f"iiwa-rl fake-robot: error: {error}", file=sys.stderr)
        return 2
    if args.q0 is not None:
        initial = np.asarray(args.q0, dtype=float)
    with FakeRobot(
        controller,
        plant,
        args.period,
        initial,
        pose_sensor=camera,
        object_address=object_address,
        # A grasp scene starts as the env's reset left it (arm at home, cube placed).
        reset_plant=plant.grasp_env is None or args.q0 is not None,
    ) as robot:
        print(
            f"fake robot (PyBullet) at {robot.local_address}, period {args.period * 1000:g} ms, "
            f"sending to {args.controller}"
            + (f", object poses to {args.object_to}" if camera is not None else ""),
            flush=True,
        )
        robot.run(duration_s=args.duration)
    plant.close()
    return 0


def cmd_ros2_fake_arm(args: argparse.Namespace) -> int:
    import json

    from iiwa_deploy.ros2 import ArmMisbehaviour, FakeArm, Ros2Unavailable, ros2_settings_from

    from iiwa_rl.sim.iiwa14 import HOME_JOINT_POSITIONS

    try:
        settings = ros2_settings_from(args)
        misbehaviour = ArmMisbehaviour(**json.loads(args.misbehave)) if args.misbehave else None
        plant = PyBulletPlant(
            settings.period_s,
            physics_hz=args.physics_hz,
            solver_iterations=args.solver_iterations,
            gui=args.gui,
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
        choices=["sim", "mujoco", "udp", "ros2"],
        default="sim",
        help="sim: the PyBullet arm in real time, in-process; mujoco: the same arm in MuJoCo "
        "with MuJoCo's position servos (pip install 'iiwa-rl[mujoco]'); udp: a robot bridge; "
        "ros2: a ROS 2 node against a ros2_control forward position controller",
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
        "--duration",
        type=_positive_seconds,
        default=None,
        help="seconds to run (default: one training episode's policy steps, --policy-steps)",
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
    _add_perception_arguments(deploy)
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
        "--duration",
        type=_positive_seconds,
        help="stop after s seconds (default: run until killed)",
    )
    fake.add_argument("--physics-hz", type=float, default=DEFAULT_PHYSICS_HZ)
    fake.add_argument("--solver-iterations", type=int, default=DEFAULT_SOLVER_ITERATIONS)
    fake.add_argument(
        "--q0", type=float, nargs=7, help="start joint positions, rad (default: the home pose)"
    )
    fake.add_argument("--gui", action="store_true")
    fake.add_argument(
        "--model",
        help="build the scene and physics from this policy's contract (a grasp: table, cube, "
        "gripper, and a simulated camera sending the cube pose to --object-to)",
    )
    fake.add_argument(
        "--object-to", default="127.0.0.1:30202", help="grasp: the controller's --object-bind"
    )
    fake.add_argument("--source-id", type=int, default=1, help="grasp: the camera's source id")
    _add_perception_arguments(fake)
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
        "goal",
        type=_runtime_type("finite_goal"),
        nargs=3,
        metavar=("X", "Y", "Z"),
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
    from iiwa_rl.metrics import PREFIX
    from iiwa_rl.rollout import Rollout

    distances = []
    rollout = Rollout(env, act, seed, options={"goal_position": goal_position})
    (episode,) = rollout.run(
        1, on_step=lambda step: distances.append(step.info[PREFIX + "tcp_distance"])
    )
    steps_per_second = round(env.unwrapped.config.control_hz)
    return {
        "success": episode.is_success,
        "final_distance_m": float(distances[-1]),
        "worst_last_second_m": float(max(distances[-steps_per_second:])),
    }


def deploy_in_sim(prepared, goal_position, policy_steps: int, real_time: bool = True, plant=None):
    """The controller loop against the in-process simulated arm (the training physics, or
    `plant`: the MuJoCo one), from the policy's home pose, for `policy_steps` actions:
    `iiwa-rl deploy --robot sim|mujoco` without the command line. Returns the loop's
    summary."""
    from iiwa_deploy import ControlLoop

    contract = prepared.policy.contract
    if plant is None:
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


def env_grasp_episode(env, act, cube_xy, cube_yaw: float, seed: int = 0) -> dict:
    """One grasp episode of `env` (an IiwaGrasp env) with the cube placed at (x, y, yaw) and
    the deterministic policy `act(observation) -> action`: the env's own verdict."""
    from iiwa_rl.envs.tasks.grasp import failure_reason
    from iiwa_rl.metrics import PREFIX
    from iiwa_rl.rollout import Rollout

    options = {"cube_position": np.asarray(cube_xy, dtype=float), "cube_yaw": cube_yaw}
    (episode,) = Rollout(env, act, seed, options=options).run(1)
    info = episode.final_info
    return {
        "success": episode.is_success,
        "outcome": failure_reason(info) or "lifted and held",
        "max_lift_m": float(info[PREFIX + "max_cube_lift"]),
    }


def grasp_in_sim(
    prepared,
    cube_xy,
    cube_yaw: float,
    policy_steps: int,
    noise=None,
    real_time: bool = True,
    seed: int = 0,
    plant=None,
):
    """The controller loop against the in-process grasp scene (training physics, or
    `plant`: the MuJoCo one), the cube placed at (x, y, yaw), its pose seen through a
    simulated camera with `noise` (iiwa_deploy.perception.PoseNoise): `iiwa-rl deploy
    <grasp> --robot sim|mujoco` without the command line. Returns the loop's summary; the
    plant is closed."""
    from iiwa_deploy import ControlLoop
    from iiwa_deploy.perception import PoseNoise, SimulatedPoseSensor

    contract = prepared.policy.contract
    if plant is None:
        plant = PyBulletPlant.for_contract(contract, prepared.robot.robot_period_s)
    try:
        plant.place_object(cube_xy, cube_yaw, seed=seed)
        camera = SimulatedPoseSensor(
            plant.object_pose,
            noise or PoseNoise(),
            source_id=prepared.robot.perception.source_ids[0],
            seed=seed,
        )
        robot = SimRobot(plant, contract.home_joint_positions, real_time=real_time, camera=camera)
        loop = ControlLoop(
            prepared.policy,
            contract,
            prepared.robot,
            robot,
            np.zeros(3),
            prepared.steps_per_action,
            object_source=robot,
        )
        # A latched fault holds the arm and stops the policy: the cycle budget (the episode,
        # the wait for the first pose, the braking stop) ends such a run too.
        cycles = policy_steps * prepared.steps_per_action + GRASP_EXTRA_CYCLES
        return loop.run(max_policy_steps=policy_steps, max_cycles=cycles)
    finally:
        plant.close()
