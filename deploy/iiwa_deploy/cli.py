"""Command line and the importable entry points (`run_policy`, `main`).

python -m iiwa_deploy run --model policy.onnx --robot udp --bind 127.0.0.1:30200
python -m iiwa_deploy run --model policy.onnx --robot fake      # self-contained rehearsal
python -m iiwa_deploy check --model policy.onnx                 # contract check only
python -m iiwa_deploy fake-robot --port 30200
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fake_robot
from .config import ConfigError, RobotConfig, load_robot_config
from .contract import ContractError, PolicyContract, read_contract
from .fake_robot import FakeRobot, NumpyPlant
from .loop import DEFAULT_FIRST_STATE_TIMEOUT_S, ControlLoop, GoalSource, LoopSummary
from .perception import ObjectPoseSource
from .policy import OnnxPolicy, create_session, load_policy
from .robot import (
    RobotBackend,
    UdpGoalListener,
    UdpObjectListener,
    UdpRobot,
    parse_host_port,
    send_goal,
)

logger = logging.getLogger(__name__)

EXIT_REFUSED = 2
EXIT_FAULT = 3


def _resolve_robot_config(robot_config: RobotConfig | str | Path | None) -> RobotConfig:
    if isinstance(robot_config, RobotConfig):
        return robot_config
    return load_robot_config(robot_config)


def choose_goal(
    contract: PolicyContract, goal: Sequence[float] | None, allow_goal_outside_training: bool
) -> np.ndarray:
    """The commanded goal: given, or the centre of the training goal box; refuses one outside
    the box unless allowed, since the policy never saw such goals."""
    if goal is None:
        return contract.goal_center
    chosen = np.asarray(goal, dtype=float)
    if chosen.shape != (3,) or not np.all(np.isfinite(chosen)):
        raise ValueError(f"goal must be 3 finite numbers (m), got {goal!r}")
    outside = (chosen < contract.goal_low - 1e-9) | (chosen > contract.goal_high + 1e-9)
    if np.any(outside) and not allow_goal_outside_training:
        raise ContractError(
            f"goal {chosen.tolist()} is outside the training goal box low "
            f"{contract.goal_low.tolist()} high {contract.goal_high.tolist()}; pass "
            "allow_goal_outside_training (--allow-goal-outside-training) to run it anyway"
        )
    return chosen


@dataclass(frozen=True)
class PreparedPolicy:
    """A model checked against the robot, warmed up, with its goal chosen."""

    policy: OnnxPolicy
    robot: RobotConfig
    steps_per_action: int
    goal: np.ndarray


def resolve_model_path(model_path: str | Path) -> Path:
    """A policy.onnx, or a directory holding one (assets/policies/grasp)."""
    path = Path(model_path)
    if path.is_dir() and (path / "policy.onnx").is_file():
        return path / "policy.onnx"
    return path


def prepare_policy(
    model_path: str | Path,
    robot_config: RobotConfig | str | Path | None = None,
    goal: Sequence[float] | None = None,
    allow_goal_outside_training: bool = False,
) -> PreparedPolicy:
    """Every refusal (ContractError/ConfigError) happens here, before any socket is opened."""
    robot = _resolve_robot_config(robot_config)
    policy, steps_per_action = load_policy(resolve_model_path(model_path), robot)
    chosen_goal = choose_goal(policy.contract, goal, allow_goal_outside_training)
    return PreparedPolicy(policy, robot, steps_per_action, chosen_goal)


def run_prepared(
    prepared: PreparedPolicy,
    robot_backend: RobotBackend,
    duration_s: float | None = None,
    max_cycles: int | None = None,
    stop_on_success: bool = False,
    csv_path: str | Path | None = None,
    first_state_timeout_s: float = DEFAULT_FIRST_STATE_TIMEOUT_S,
    max_policy_steps: int | None = None,
    move_to_home: bool = False,
    goal_source: GoalSource | None = None,
    allow_goal_outside_training: bool = False,
    object_source: ObjectPoseSource | None = None,
) -> LoopSummary:
    robot = prepared.robot
    if abs(robot_backend.period_s - robot.robot_period_s) > 1e-9:
        raise ConfigError(
            f"robot backend period {robot_backend.period_s} s differs from robot_period_s "
            f"{robot.robot_period_s} s of the robot configuration"
        )
    loop = ControlLoop(
        prepared.policy,
        prepared.policy.contract,
        robot,
        robot_backend,
        prepared.goal,
        prepared.steps_per_action,
        move_to_home=move_to_home,
        goal_source=goal_source,
        allow_goal_outside_training=allow_goal_outside_training,
        object_source=object_source,
    )
    if hasattr(robot_backend, "status_provider"):
        # A backend that publishes the loop's status (the ROS 2 bridge) reads it from here.
        robot_backend.status_provider = loop.status
    return loop.run(
        duration_s=duration_s,
        max_cycles=max_cycles,
        stop_on_success=stop_on_success,
        first_state_timeout_s=first_state_timeout_s,
        csv_path=csv_path,
        max_policy_steps=max_policy_steps,
    )


def run_policy(
    model_path: str | Path,
    robot_backend: RobotBackend,
    goal: Sequence[float] | None = None,
    duration_s: float | None = None,
    max_cycles: int | None = None,
    robot_config: RobotConfig | str | Path | None = None,
    stop_on_success: bool = False,
    csv_path: str | Path | None = None,
    first_state_timeout_s: float = DEFAULT_FIRST_STATE_TIMEOUT_S,
    allow_goal_outside_training: bool = False,
    max_policy_steps: int | None = None,
    move_to_home: bool = False,
    goal_source: GoalSource | None = None,
) -> LoopSummary:
    """Load and check `model_path`, then drive `robot_backend` until a stop condition.

    Raises ContractError/ConfigError (ValueError subclasses) before the first setpoint if the
    model, its contract, the robot configuration and the backend's period do not fit.
    The caller owns `robot_backend` and closes it.
    """
    prepared = prepare_policy(model_path, robot_config, goal, allow_goal_outside_training)
    return run_prepared(
        prepared,
        robot_backend,
        duration_s=duration_s,
        max_cycles=max_cycles,
        stop_on_success=stop_on_success,
        csv_path=csv_path,
        first_state_timeout_s=first_state_timeout_s,
        max_policy_steps=max_policy_steps,
        move_to_home=move_to_home,
        goal_source=goal_source,
        allow_goal_outside_training=allow_goal_outside_training,
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="policy.onnx with an iiwa_rl contract")
    parser.add_argument(
        "--robot",
        choices=("udp", "fake"),
        default="udp",
        help="udp: wait for a robot bridge at --bind; fake: also start a "
        "loopback fake robot in-process (rehearsal without hardware)",
    )
    parser.add_argument(
        "--bind", default="127.0.0.1:30200", help="local HOST:PORT the robot bridge sends STATE to"
    )
    _add_policy_run_arguments(parser)


def _add_policy_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--goal",
        type=finite_goal,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=None,
        help="goal in the robot base frame, m (default: centre of the training goal box)",
    )
    parser.add_argument(
        "--duration", type=positive_seconds, default=None, help="stop after s seconds"
    )
    parser.add_argument("--max-cycles", type=positive_int, default=None, help="stop after N states")
    parser.add_argument(
        "--robot-config",
        default=None,
        help="robot YAML (default: the shipped iiwa 14 R820 configuration)",
    )
    parser.add_argument(
        "--stop-on-success",
        action="store_true",
        help="stop once the TCP is within the contract's success threshold",
    )
    parser.add_argument("--csv", default=None, help="write a per-cycle CSV log here")
    parser.add_argument(
        "--first-state-timeout",
        type=positive_seconds,
        default=DEFAULT_FIRST_STATE_TIMEOUT_S,
        help="give up if no robot state arrives within this many s",
    )
    parser.add_argument("--allow-goal-outside-training", action="store_true")
    add_session_arguments(parser)


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of a controller session shared by `python -m iiwa_deploy run` and
    `iiwa-rl deploy`."""
    parser.add_argument(
        "--policy-steps",
        type=positive_int,
        default=None,
        help="stop after N policy actions (an episode's length: 75 for the shipped reach)",
    )
    parser.add_argument(
        "--move-to-home",
        action="store_true",
        help="if the arm is not at the policy's home pose, drive it there slowly first "
        "(default: refuse to start)",
    )
    parser.add_argument(
        "--goal-bind",
        default=None,
        metavar="HOST:PORT",
        help="listen for new goals on this UDP address while running (send them with "
        "`python -m iiwa_deploy send-goal X Y Z --to HOST:PORT`)",
    )
    parser.add_argument(
        "--goal-sender",
        action="append",
        default=None,
        metavar="HOST",
        help="host allowed to send goals (repeatable; default 127.0.0.1)",
    )
    parser.add_argument(
        "--object-bind",
        default=None,
        metavar="HOST:PORT",
        help="grasp: listen for the object pose (OBJECT messages from a pose estimator) on "
        "this UDP address",
    )
    parser.add_argument(
        "--object-sender",
        action="append",
        default=None,
        metavar="HOST",
        help="host allowed to send object poses (repeatable; default 127.0.0.1); which "
        "estimator ids count is the robot configuration's perception.source_ids",
    )


def object_listener_from(args: argparse.Namespace) -> UdpObjectListener | None:
    if args.object_bind is None:
        return None
    return UdpObjectListener(
        parse_host_port(args.object_bind), args.object_sender or ("127.0.0.1",)
    )


def goal_listener_from(args: argparse.Namespace) -> UdpGoalListener | None:
    if args.goal_bind is None:
        return None
    return UdpGoalListener(parse_host_port(args.goal_bind), args.goal_sender or ("127.0.0.1",))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def port_number(text: str) -> int:
    """argparse type for a UDP port: a whole number in 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number in 1..65535")
    return value


def host_port(text: str) -> tuple[str, int]:
    """argparse type for HOST:PORT (the host is resolved when the socket is bound)."""
    try:
        return parse_host_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def finite_goal(text: str) -> float:
    """argparse type for one goal coordinate, m: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: a goal coordinate must be finite")
    return value


def positive_number(text: str) -> float:
    """argparse type for a rate or a factor: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value


def positive_seconds(text: str) -> float:
    """argparse type for a duration: a finite number of seconds > 0 (a zero or negative
    timeout would fault before the robot had any chance to answer)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number of seconds > 0")
    return value


def _command_run(args: argparse.Namespace) -> int:
    prepared = prepare_policy(
        args.model, args.robot_config, args.goal, args.allow_goal_outside_training
    )
    robot = prepared.robot
    backend = UdpRobot(parse_host_port(args.bind), robot.robot_period_s)
    goals: UdpGoalListener | None = None
    objects = None
    fake: FakeRobot | None = None
    try:
        goals = goal_listener_from(args)
        objects = object_listener_from(args)
        if args.robot == "fake":
            fake = FakeRobot(
                backend.local_address,
                NumpyPlant(robot.velocity),
                robot.robot_period_s,
                prepared.policy.contract.home_joint_positions,
            )
            fake.start()
        host, port = backend.local_address
        print(
            f"{args.model}: contract OK; goal {prepared.goal.tolist()} m; listening for "
            f"robot STATE on {host}:{port}",
            flush=True,
        )
        summary = _run_session(prepared, backend, args, goals, objects)
    finally:
        if fake is not None:
            fake.close()
        if goals is not None:
            goals.close()
        if objects is not None:
            objects.close()
        backend.close()
    print(summary.format())
    return exit_code(summary)


def _run_session(prepared, backend, args, goal_source, object_source=None) -> LoopSummary:
    """`run_prepared` with the session options of the command line (run and ros2 alike)."""
    return run_prepared(
        prepared,
        backend,
        duration_s=args.duration,
        max_cycles=args.max_cycles,
        stop_on_success=args.stop_on_success,
        csv_path=args.csv,
        first_state_timeout_s=args.first_state_timeout,
        max_policy_steps=args.policy_steps,
        move_to_home=args.move_to_home,
        goal_source=goal_source,
        allow_goal_outside_training=args.allow_goal_outside_training,
        object_source=object_source,
    )


def _command_ros2(args: argparse.Namespace) -> int:
    from .ros2 import Ros2Robot, ros2_settings_from

    settings = ros2_settings_from(args)
    robot = _resolve_robot_config(args.robot_config).replace(robot_period_s=settings.period_s)
    prepared = prepare_policy(args.model, robot, args.goal, args.allow_goal_outside_training)
    backend = Ros2Robot(settings, robot.robot_period_s)
    goals: UdpGoalListener | None = None
    try:
        goals = goal_listener_from(args)
        print(
            f"{args.model}: contract OK; goal {prepared.goal.tolist()} m; ROS 2 node "
            f"{backend.node.get_fully_qualified_name()}: states from "
            f"{backend.topic_name(settings.joint_states_topic)}, commands to "
            f"{backend.topic_name(settings.command_topic)} at {settings.update_rate_hz:g} Hz",
            flush=True,
        )
        summary = _run_session(prepared, backend, args, CombinedGoals(backend, goals))
    finally:
        if goals is not None:
            goals.close()
        backend.close()
    print(summary.format())
    return exit_code(summary)


class CombinedGoals:
    """Goals from several sources (the ROS goal topic and an optional UDP goal port)."""

    def __init__(self, *sources: GoalSource | None) -> None:
        self.sources = [source for source in sources if source is not None]

    def poll(self) -> list[np.ndarray]:
        return [goal for source in self.sources for goal in source.poll()]


def exit_code(summary: LoopSummary) -> int:
    """0 for a clean run, EXIT_REFUSED when the loop would not move the arm (start pose),
    EXIT_FAULT for any fault."""
    if summary.refusal:
        return EXIT_REFUSED
    return EXIT_FAULT if summary.faults else 0


def _command_send_goal(args: argparse.Namespace) -> int:
    goal = np.asarray(args.goal, dtype=float)
    if not np.all(np.isfinite(goal)):
        raise ValueError(f"goal must be 3 finite numbers (m), got {args.goal}")
    send_goal(parse_host_port(args.to), goal)
    print(f"goal {goal.tolist()} m sent to {args.to}")
    return 0


def _command_check(args: argparse.Namespace) -> int:
    robot = load_robot_config(args.robot_config)
    policy, steps_per_action = load_policy(args.model, robot, warmup_runs=200)
    contract = policy.contract
    worst = policy.warm_up(1000)
    print(f"{args.model}: contract OK for {robot.name}")
    print(
        f"  env {contract.env_id}, observation {contract.observation_size} "
        f"({', '.join(p.name for p in contract.observation_layout)})"
    )
    print(
        f"  action {contract.action_size} {contract.action_mode} x {contract.action_scale}, "
        f"policy every {contract.control_period_s * 1000:.1f} ms = {steps_per_action} robot "
        f"periods of {robot.robot_period_s * 1000:.1f} ms"
    )
    print(f"  config sha256 {contract.config_sha256 or '-'}, versions {dict(contract.versions)}")
    print(f"  worst inference over 1000 warm runs: {worst * 1e6:.0f} us")
    return 0


def _command_show_contract(args: argparse.Namespace) -> int:
    import json

    contract = read_contract(create_session(args.model), args.model)
    print(json.dumps(contract.raw, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m iiwa_deploy",
        description="Run an iiwa-rl ONNX policy on a KUKA LBR iiwa 14 over the UDP bridge.",
    )
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("run", help="run a policy against a robot"))
    ros2 = commands.add_parser(
        "ros2", help="run a policy as a ROS 2 node against a ros2_control position controller"
    )
    ros2.add_argument("--model", required=True, help="policy.onnx with an iiwa_rl contract")
    _add_policy_run_arguments(ros2)
    from .ros2 import add_ros2_arguments

    add_ros2_arguments(ros2)
    check = commands.add_parser("check", help="check a model against the robot config")
    check.add_argument("--model", required=True)
    check.add_argument("--robot-config", default=None)
    show = commands.add_parser("contract", help="print a model's contract")
    show.add_argument("--model", required=True)
    fake_robot.build_parser(
        commands.add_parser("fake-robot", help="loopback fake robot (the robot side of the bridge)")
    )
    add_send_goal_parser(commands)
    return parser


def add_send_goal_parser(commands) -> argparse.ArgumentParser:
    goal = commands.add_parser(
        "send-goal", help="send a new goal to a running controller's goal port (--goal-bind)"
    )
    goal.add_argument(
        "goal", type=finite_goal, nargs=3, metavar=("X", "Y", "Z"), help="m, base frame"
    )
    goal.add_argument("--to", default="127.0.0.1:30201", help="the controller's --goal-bind")
    goal.set_defaults(handler=_command_send_goal)
    return goal


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handlers = {
        "run": _command_run,
        "check": _command_check,
        "contract": _command_show_contract,
        "fake-robot": fake_robot.run_fake_robot,
        "send-goal": _command_send_goal,
        "ros2": _command_ros2,
    }
    from .ros2 import Ros2Unavailable

    try:
        return handlers[args.command](args)
    except (ContractError, ConfigError) as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except Ros2Unavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
