"""The ROS 2 bridge: the control loop against a ros2_control forward position controller.

`Ros2Robot` is a `RobotBackend` and a `GoalSource` in one node:

- subscribes to sensor_msgs/JointState (`joint_states`), joints matched by name (the robot
  configuration's joint i is `joint_names[i]` on the ROS side; lbr_fri_ros2_stack calls them
  A1..A7, newer releases prefix them with the robot name: lbr_A1..lbr_A7);
- publishes std_msgs/Float64MultiArray on the forward position controller's `commands`
  topic, one per state, in `joint_names` order (the controller's `joints` parameter order);
- takes goals as geometry_msgs/PointStamped (`iiwa_deploy/goal`, robot base frame, m);
- publishes the loop's status (phase, faults, timing) as JSON in a std_msgs/String
  (`iiwa_deploy/status`) at `status_rate_hz`.

Defaults are lbr_fri_ros2_stack's: namespace `lbr`, `/lbr/joint_states`,
`/lbr/forward_position_controller/commands` (position_controllers/JointGroupPositionController),
the controller manager's update rate of 100 Hz (lbr_description's hardware_controllers.yaml;
older lbr_ros2_control/config/lbr_controllers.yaml says 200), the reliable, keep-last QoS of
ros2_control's topics.

Everything runs on the loop's own thread: `receive_state` spins the node's executor until a
fresh JointState arrives, so subscription and timer callbacks never run concurrently with a
cycle (no locks, and the status timer reads the loop between cycles). The state subscription
keeps only the newest message (depth 1): a late loop answers the newest state, never a burst.

JointState carries no sequence number, so the robot's period count is taken from
`header.stamp`: sequence = round((stamp - first stamp) / period) + 1, and at least one more
than the last. A stamp not newer than the last one used (duplicate, out of order) or a zero
stamp is dropped and counted; NaN/inf values are delivered so the loop's state gate latches.
A JointState without velocities gets them by finite differences of consecutive stamps.

rclpy comes from the `ros2` extra (`pip install "./deploy[ros2]"`); importing this module
without it works, constructing a node raises `Ros2Unavailable` with that instruction.
"""

from __future__ import annotations

import json
import logging
import math
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .robot import RobotState

logger = logging.getLogger(__name__)

LBR_JOINT_NAMES = ("A1", "A2", "A3", "A4", "A5", "A6", "A7")
DEFAULT_NAMESPACE = "lbr"
DEFAULT_JOINT_STATES_TOPIC = "joint_states"
DEFAULT_COMMAND_TOPIC = "forward_position_controller/commands"
DEFAULT_GOAL_TOPIC = "iiwa_deploy/goal"
DEFAULT_STATUS_TOPIC = "iiwa_deploy/status"
DEFAULT_UPDATE_RATE_HZ = 100.0
DEFAULT_STATUS_RATE_HZ = 10.0
DEFAULT_NODE_NAME = "iiwa_deploy"
QOS_RELIABILITIES = ("reliable", "best_effort")
INSTALL_HINT = 'pip install "./deploy[ros2]" (rclpy, the message packages and an RMW)'


class Ros2Unavailable(RuntimeError):
    """rclpy (or a message package, or an RMW implementation) cannot be loaded."""


def load_rclpy():
    """Import rclpy and the message types, or raise Ros2Unavailable with the install hint."""
    try:
        import rclpy
        from geometry_msgs.msg import PointStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String
    except Exception as error:  # ImportError, or the RMW failing to load
        raise Ros2Unavailable(f"ROS 2 is not available ({error}); {INSTALL_HINT}") from None
    return rclpy, JointState, Float64MultiArray, PointStamped, String


@dataclass(frozen=True)
class Ros2Settings:
    """Topic names (relative ones resolve in `namespace`), QoS, joint names, update rate."""

    namespace: str = DEFAULT_NAMESPACE
    node_name: str = DEFAULT_NODE_NAME
    joint_states_topic: str = DEFAULT_JOINT_STATES_TOPIC
    command_topic: str = DEFAULT_COMMAND_TOPIC
    goal_topic: str = DEFAULT_GOAL_TOPIC
    status_topic: str = DEFAULT_STATUS_TOPIC
    joint_names: tuple[str, ...] = LBR_JOINT_NAMES
    update_rate_hz: float = DEFAULT_UPDATE_RATE_HZ
    state_reliability: str = "reliable"
    command_reliability: str = "reliable"
    command_depth: int = 10
    status_rate_hz: float = DEFAULT_STATUS_RATE_HZ
    # PointStamped goals must be in one of these frames ("" accepts an empty frame_id).
    goal_frames: tuple[str, ...] = ("", "lbr_link_0", "base", "world")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.update_rate_hz) and self.update_rate_hz > 0):
            raise ValueError(
                f"update rate must be a positive number of Hz, got {self.update_rate_hz}"
            )
        if not (math.isfinite(self.status_rate_hz) and self.status_rate_hz > 0):
            raise ValueError(
                f"status rate must be a positive number of Hz, got {self.status_rate_hz}"
            )
        for name in (self.state_reliability, self.command_reliability):
            if name not in QOS_RELIABILITIES:
                raise ValueError(f"QoS reliability {name!r} is not one of {QOS_RELIABILITIES}")
        if self.command_depth < 1:
            raise ValueError(f"command QoS depth must be >= 1, got {self.command_depth}")
        if len(set(self.joint_names)) != len(self.joint_names) or not self.joint_names:
            raise ValueError(f"joint names must be distinct and non-empty: {self.joint_names}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.update_rate_hz


@dataclass
class Ros2LinkStats:
    received: int = 0
    malformed: int = 0  # wrong joint names or value counts
    unstamped: int = 0
    duplicate_or_reordered: int = 0
    superseded: int = 0  # periods whose state the loop never saw (sequence gaps)
    sent: int = 0
    goals_received: int = 0
    goals_ignored: int = 0
    status_published: int = 0


def _qos(reliability: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE
        if reliability == "reliable"
        else ReliabilityPolicy.BEST_EFFORT,
    )


class _Ros2Node:
    """A node on its own rclpy context and single-threaded executor (several may live in one
    process, as in tests), with Ctrl-C left to Python (the loop brakes to rest on it)."""

    def __init__(self, node_name: str, namespace: str) -> None:
        rclpy, *_ = load_rclpy()
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        try:
            self.node = rclpy.create_node(node_name, namespace=namespace, context=self.context)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
        except Exception:
            self.context.try_shutdown()
            raise

    def topic_name(self, topic: str) -> str:
        return self.node.resolve_topic_name(topic)

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=0.5)
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()


class Ros2Robot(_Ros2Node):
    """The controller's end of the ROS 2 bridge (see the module docstring)."""

    real_time = True

    def __init__(self, settings: Ros2Settings, period_s: float | None = None) -> None:
        _, JointState, Float64MultiArray, PointStamped, String = load_rclpy()
        super().__init__(settings.node_name, settings.namespace)
        self.settings = settings
        self.period_s = float(period_s if period_s is not None else settings.period_s)
        self.stats = Ros2LinkStats()
        self._command_type = Float64MultiArray
        self._status_type = String
        self._joint_count = len(settings.joint_names)
        self._pending: RobotState | None = None
        self._goals: list[np.ndarray] = []
        self._order_cache: tuple[tuple[str, ...], np.ndarray | None] | None = None
        self._first_stamp: float | None = None
        self._last_stamp: float | None = None
        self._last_sequence = 0
        self._last_positions: np.ndarray | None = None
        self._name_mismatch_logged = False
        self.status_provider: Callable[[], dict] | None = None
        node = self.node
        self._state_subscription = node.create_subscription(
            JointState,
            settings.joint_states_topic,
            self._on_joint_state,
            _qos(settings.state_reliability, 1),
        )
        self._goal_subscription = node.create_subscription(
            PointStamped, settings.goal_topic, self._on_goal, _qos("reliable", 10)
        )
        self._command_publisher = node.create_publisher(
            Float64MultiArray,
            settings.command_topic,
            _qos(settings.command_reliability, settings.command_depth),
        )
        self._status_publisher = node.create_publisher(
            String, settings.status_topic, _qos("reliable", 10)
        )
        self._status_timer = node.create_timer(1.0 / settings.status_rate_hz, self._publish_status)
        self._command = Float64MultiArray()
        logger.info(
            "ROS 2 bridge: states on %s, commands on %s, goals on %s, status on %s",
            self.topic_name(settings.joint_states_topic),
            self.topic_name(settings.command_topic),
            self.topic_name(settings.goal_topic),
            self.topic_name(settings.status_topic),
        )

    # ------------------------------------------------------------ callbacks
    def _joint_order(self, names: Sequence[str]) -> np.ndarray | None:
        key = tuple(names)
        if self._order_cache is not None and self._order_cache[0] == key:
            return self._order_cache[1]
        index = {name: i for i, name in enumerate(key)}
        missing = [name for name in self.settings.joint_names if name not in index]
        order = None if missing else np.array([index[n] for n in self.settings.joint_names])
        if missing and not self._name_mismatch_logged:
            self._name_mismatch_logged = True
            logger.error(
                "JointState names %s lack %s; pass the ROS joint names of the robot "
                "configuration's joints in order (--joint-names)",
                list(key),
                missing,
            )
        self._order_cache = (key, order)
        return order

    def _on_joint_state(self, message) -> None:
        self.stats.received += 1
        order = self._joint_order(message.name)
        if order is None or len(message.position) != len(message.name):
            self.stats.malformed += 1
            return
        has_velocity = len(message.velocity) == len(message.name)
        if len(message.velocity) not in (0, len(message.name)):
            self.stats.malformed += 1
            return
        stamp = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
        if stamp <= 0.0:
            self.stats.unstamped += 1
            return
        if self._last_stamp is not None and stamp <= self._last_stamp:
            self.stats.duplicate_or_reordered += 1
            return
        positions = np.asarray(message.position, dtype=float)[order]
        if has_velocity:
            velocities = np.asarray(message.velocity, dtype=float)[order]
        elif self._last_positions is not None and self._last_stamp is not None:
            velocities = (positions - self._last_positions) / (stamp - self._last_stamp)
        else:
            velocities = np.zeros(self._joint_count)
        if self._first_stamp is None:
            self._first_stamp = stamp
        by_clock = round((stamp - self._first_stamp) / self.period_s) + 1
        sequence = max(by_clock, self._last_sequence + 1)
        if self._last_sequence and sequence > self._last_sequence + 1:
            self.stats.superseded += sequence - self._last_sequence - 1
        if self._pending is not None:
            self.stats.superseded += 1
        self._last_sequence = sequence
        self._last_stamp = stamp
        self._last_positions = positions
        self._pending = RobotState(sequence, stamp, positions, velocities)

    def _on_goal(self, message) -> None:
        self.stats.goals_received += 1
        frame = message.header.frame_id
        if frame not in self.settings.goal_frames:
            self.stats.goals_ignored += 1
            logger.warning(
                "goal ignored: frame %r is not one of %s (goals are in the robot base frame)",
                frame,
                list(self.settings.goal_frames),
            )
            return
        goal = np.array([message.point.x, message.point.y, message.point.z], dtype=float)
        if not np.all(np.isfinite(goal)):
            self.stats.goals_ignored += 1
            logger.warning("goal ignored: non-finite %s", goal.tolist())
            return
        self._goals.append(goal)

    def _publish_status(self) -> None:
        status = {"link": asdict(self.stats)}
        if self.status_provider is not None:
            status.update(self.status_provider())
        self._status_publisher.publish(self._status_type(data=json.dumps(status)))
        self.stats.status_published += 1

    # --------------------------------------------------- RobotBackend, GoalSource
    def receive_state(self, timeout_s: float) -> RobotState | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while self._pending is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                return None
            self.executor.spin_once(timeout_sec=remaining)
        state, self._pending = self._pending, None
        return state

    def send_setpoint(
        self, answer_to_sequence: int, joint_positions: np.ndarray, fault: bool
    ) -> None:
        # Float64MultiArray has no flags: a latched fault shows as a constant hold here and
        # on the status topic.
        # array('d') is rclpy's fast path for a float64[] field (no per-element checks).
        self._command.data = array("d", joint_positions)
        self._command_publisher.publish(self._command)
        self.stats.sent += 1

    def poll(self) -> list[np.ndarray]:
        goals, self._goals = self._goals, []
        return goals


# --------------------------------------------------------------------- fake arm
@dataclass
class ArmMisbehaviour:
    """What the fake arm can do wrong, in its own cycles (1-based; 0 = off)."""

    nan_at_cycles: Sequence[int] = ()
    inf_at_cycles: Sequence[int] = ()
    duplicate_every: int = 0  # send the same stamp twice
    reorder_every: int = 0  # send an older stamp after a newer one
    silent_from_cycle: int = 0
    silent_cycles: int = 0
    burst_from_cycle: int = 0  # publish `burst_factor` states per period from here
    burst_cycles: int = 0
    burst_factor: int = 5
    jump_at_cycle: int = 0  # measured joint 0 jumps by jump_rad from here on
    jump_rad: float = 1.0
    stop_following_from_cycle: int = 0  # the arm ignores commands from here on


@dataclass
class FakeArmRecord:
    states_published: int = 0
    commands_received: int = 0
    malformed_commands: int = 0
    late_ticks: int = 0
    commands: list[np.ndarray] = field(default_factory=list)
    command_times: list[float] = field(default_factory=list)


class FakeArm(_Ros2Node):
    """A ros2_control arm for rehearsal and tests: every update period it applies the newest
    forward position command to `plant`, advances it one period and publishes JointState
    (stamped with its clock; joints named and ordered as `publish_order`)."""

    def __init__(
        self,
        plant,
        settings: Ros2Settings,
        initial_positions: Sequence[float],
        publish_order: Sequence[int] | None = None,
        misbehaviour: ArmMisbehaviour | None = None,
        record_commands: bool = False,
        node_name: str = "fake_arm",
    ) -> None:
        _, JointState, Float64MultiArray, _, _ = load_rclpy()
        super().__init__(node_name, settings.namespace)
        self.settings = settings
        self.plant = plant
        self.period_s = settings.period_s
        self.misbehaviour = misbehaviour or ArmMisbehaviour()
        self.record = FakeArmRecord()
        self.record_commands = record_commands
        joint_count = len(settings.joint_names)
        self.publish_order = np.array(
            list(publish_order) if publish_order is not None else range(joint_count)
        )
        self._joint_state_type = JointState
        self.plant.reset(np.asarray(initial_positions, dtype=float))
        self.positions = np.asarray(initial_positions, dtype=float).copy()
        self.velocities = np.zeros(joint_count)
        self._joint_count = joint_count
        self._newest_command: np.ndarray | None = None
        self._cycle = 0
        self._held_back = None
        self._state_publisher = self.node.create_publisher(
            JointState, settings.joint_states_topic, _qos(settings.state_reliability, 10)
        )
        self._command_subscription = self.node.create_subscription(
            Float64MultiArray,
            settings.command_topic,
            self._on_command,
            _qos(settings.command_reliability, settings.command_depth),
        )

    def _on_command(self, message) -> None:
        values = np.asarray(message.data, dtype=float)
        if values.shape != (self._joint_count,) or not np.all(np.isfinite(values)):
            # A JointGroupPositionController refuses a command of the wrong size too.
            self.record.malformed_commands += 1
            return
        self.record.commands_received += 1
        if self.record_commands:
            self.record.commands.append(values)
            self.record.command_times.append(time.monotonic())
        self._newest_command = values

    def _drain_commands(self) -> None:
        # Each spin_once runs at most one callback; a few passes empty a short queue.
        for _ in range(self.settings.command_depth):
            before = self.record.commands_received + self.record.malformed_commands
            self.executor.spin_once(timeout_sec=0.0)
            if self.record.commands_received + self.record.malformed_commands == before:
                break

    def _message(self, stamp_ns: int, positions: np.ndarray, velocities: np.ndarray):
        message = self._joint_state_type()
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        message.header.frame_id = ""
        order = self.publish_order
        message.name = [self.settings.joint_names[i] for i in order]
        message.position = [float(v) for v in positions[order]]
        message.velocity = [float(v) for v in velocities[order]]
        message.effort = [0.0] * self._joint_count
        return message

    def tick(self, step_plant: bool = True) -> None:
        """One update: apply the newest command, advance the plant, publish the state."""
        self._drain_commands()
        self._cycle += 1
        cycle = self._cycle
        bad = self.misbehaviour
        following = not (bad.stop_following_from_cycle and cycle >= bad.stop_following_from_cycle)
        if self._newest_command is not None and following:
            self.plant.apply(self._newest_command)
            self._newest_command = None
        if step_plant:
            self.positions, self.velocities = self.plant.step(self.period_s)
        if bad.silent_from_cycle and (
            bad.silent_from_cycle <= cycle < bad.silent_from_cycle + bad.silent_cycles
        ):
            return
        positions = self.positions.copy()
        if bad.jump_at_cycle and cycle >= bad.jump_at_cycle:
            positions[0] += bad.jump_rad
        if cycle in bad.nan_at_cycles:
            positions[0] = math.nan
        if cycle in bad.inf_at_cycles:
            positions[1] = math.inf
        message = self._message(time.time_ns(), positions, self.velocities)
        if bad.reorder_every and cycle % bad.reorder_every == 0 and self._held_back is None:
            self._held_back = message
            return
        self._state_publisher.publish(message)
        self.record.states_published += 1
        if self._held_back is not None:
            self._state_publisher.publish(self._held_back)  # older stamp after a newer one
            self._held_back = None
        if bad.duplicate_every and cycle % bad.duplicate_every == 0:
            self._state_publisher.publish(message)

    def run(self, duration_s: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Tick at the update rate (bursts tick faster) until `duration_s` or `stop()`."""
        start = time.monotonic()
        next_tick = start
        bad = self.misbehaviour
        while True:
            now = time.monotonic()
            if duration_s is not None and now - start >= duration_s:
                return
            if stop is not None and stop():
                return
            cycle = self._cycle + 1
            bursting = bad.burst_from_cycle and (
                bad.burst_from_cycle <= cycle < bad.burst_from_cycle + bad.burst_cycles
            )
            if bursting:
                # A misconfigured robot side: `burst_factor` states per period; the arm's
                # physics still advances by the period.
                for sub in range(bad.burst_factor):
                    self.tick(step_plant=sub == 0)
                    self._wait_until(now + (sub + 1) * self.period_s / bad.burst_factor)
                next_tick = time.monotonic()
                continue
            self.tick()
            next_tick += self.period_s
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._wait_until(next_tick)
            elif delay < -self.period_s:
                # Late: the periods passed anyway (the stamps show it), the arm lived them.
                missed = int(-delay // self.period_s)
                self.record.late_ticks += 1
                for _ in range(missed):
                    self.positions, self.velocities = self.plant.step(self.period_s)
                next_tick += missed * self.period_s

    def _wait_until(self, deadline: float) -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Serve commands while waiting, so the newest is there at the next tick.
            self.executor.spin_once(timeout_sec=remaining)


# ---------------------------------------------------------------- command line
def add_ros2_arguments(parser, update_rate_default: float | None = DEFAULT_UPDATE_RATE_HZ) -> None:
    """The bridge's parameters as options (defaults: lbr_fri_ros2_stack's)."""
    from .cli import positive_number

    group = parser.add_argument_group("ROS 2 (defaults: lbr_fri_ros2_stack)")
    group.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="node namespace (lbr)")
    group.add_argument("--node-name", default=DEFAULT_NODE_NAME)
    group.add_argument("--joint-states-topic", default=DEFAULT_JOINT_STATES_TOPIC)
    group.add_argument(
        "--command-topic",
        default=DEFAULT_COMMAND_TOPIC,
        help="the forward position controller's Float64MultiArray topic",
    )
    group.add_argument("--goal-topic", default=DEFAULT_GOAL_TOPIC, help="PointStamped goals")
    group.add_argument("--status-topic", default=DEFAULT_STATUS_TOPIC, help="JSON status")
    group.add_argument(
        "--joint-names",
        nargs=len(LBR_JOINT_NAMES),
        default=list(LBR_JOINT_NAMES),
        metavar="NAME",
        help="ROS names of the robot configuration's joints, in order (A1..A7; "
        "lbr_A1..lbr_A7 on newer lbr_fri_ros2_stack releases)",
    )
    group.add_argument(
        "--update-rate",
        type=positive_number,
        default=update_rate_default,
        help="controller_manager update rate, Hz: the robot period is its inverse "
        f"(default {update_rate_default})",
    )
    group.add_argument("--state-qos", choices=QOS_RELIABILITIES, default="reliable")
    group.add_argument("--command-qos", choices=QOS_RELIABILITIES, default="reliable")


def ros2_settings_from(args, update_rate_hz: float | None = None) -> Ros2Settings:
    return Ros2Settings(
        namespace=args.namespace,
        node_name=args.node_name,
        joint_states_topic=args.joint_states_topic,
        command_topic=args.command_topic,
        goal_topic=args.goal_topic,
        status_topic=args.status_topic,
        joint_names=tuple(args.joint_names),
        update_rate_hz=update_rate_hz if update_rate_hz is not None else args.update_rate,
        state_reliability=args.state_qos,
        command_reliability=args.command_qos,
    )
