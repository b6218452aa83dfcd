"""The ROS 2 bridge over real DDS on this machine: the shipped reach policy drives the fake
ros2_control arm (the PyBullet arm in its own process), and the bridge's handling of what a
JointState stream can get wrong. Each test uses its own ROS domain with localhost-only
discovery, so runs on one machine do not see each other."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 (the ros2 extra) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy.cli import prepare_policy, run_prepared  # noqa: E402
from iiwa_deploy.ros2 import LBR_JOINT_NAMES, Ros2Robot, Ros2Settings, load_rclpy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REACH = ROOT / "assets" / "policies" / "reach" / "policy.onnx"


@pytest.fixture
def ros_domain(monkeypatch) -> str:
    # rcl reads these when a context is initialised, so they apply to this process's nodes
    # and, inherited, to the fake arm's process.
    domain = str(100 + (os.getpid() + time.monotonic_ns()) % 100)
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOCALHOST_ONLY", "1")
    return domain


def start_fake_arm(update_rate: float, duration_s: float, *extra: str) -> subprocess.Popen:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "deploy"), environment.get("PYTHONPATH", "")]
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iiwa_rl.cli",
            "ros2-fake-arm",
            "--update-rate",
            str(update_rate),
            "--duration",
            str(duration_s),
            # The broadcaster's order need not be the controller's: matched by name.
            "--publish-order",
            "3",
            "0",
            "6",
            "1",
            "5",
            "2",
            "4",
            *extra,
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_reach_policy_drives_the_fake_ros2_control_arm_to_the_goal(ros_domain) -> None:
    update_rate = 200.0
    robot = support.ROBOT.replace(robot_period_s=1.0 / update_rate)
    prepared = prepare_policy(REACH, robot, goal=[0.5, 0.0, 0.5])
    arm = start_fake_arm(update_rate, 30.0)
    backend = Ros2Robot(Ros2Settings(update_rate_hz=update_rate), robot.robot_period_s)
    statuses = []
    subscriber = backend.node.create_subscription(
        load_rclpy()[4], "iiwa_deploy/status", lambda m: statuses.append(m.data), 10
    )
    try:
        summary = run_prepared(prepared, backend, max_policy_steps=75, first_state_timeout_s=20.0)
    finally:
        backend.node.destroy_subscription(subscriber)
        backend.close()
        arm.send_signal(signal.SIGINT)  # the arm's Ctrl-C: it reports and exits
        output = arm.communicate(timeout=30)[0]
    assert not summary.faults, summary.format() + output
    assert summary.success, summary.format()
    assert summary.policy_steps == 75
    assert summary.state_interval.p50_s == pytest.approx(1.0 / update_rate, rel=0.2)
    assert summary.link["sent"] == summary.cycles and summary.link["malformed"] == 0
    assert statuses and '"phase"' in statuses[-1] and '"fault_latched": false' in statuses[-1]
    assert "commands applied" in output


class JointStatePublisher:
    """A hand-driven robot side: publishes chosen JointStates, collects the commands."""

    def __init__(self, settings: Ros2Settings) -> None:
        rclpy, JointState, Float64MultiArray, PointStamped, _ = load_rclpy()
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("test_robot_side", namespace="lbr", context=self.context)
        self.JointState, self.PointStamped = JointState, PointStamped
        self.states = self.node.create_publisher(JointState, "joint_states", 10)
        self.goals = self.node.create_publisher(PointStamped, "iiwa_deploy/goal", 10)
        self.commands: list[list[float]] = []
        self.node.create_subscription(
            Float64MultiArray,
            "forward_position_controller/commands",
            lambda m: self.commands.append(list(m.data)),
            10,
        )
        self.settings = settings
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def publish(self, stamp_s: float, positions, names=LBR_JOINT_NAMES, velocities=None) -> None:
        message = self.JointState()
        message.header.stamp.sec = int(stamp_s)
        message.header.stamp.nanosec = int(round((stamp_s % 1.0) * 1e9))
        message.name = list(names)
        message.position = [float(v) for v in positions]
        message.velocity = [] if velocities is None else [float(v) for v in velocities]
        self.states.publish(message)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=0.5)
        self.node.destroy_node()
        self.context.try_shutdown()


def wait_for_subscription(backend: Ros2Robot, side: JointStatePublisher) -> None:
    deadline = time.monotonic() + 10.0
    while side.states.get_subscription_count() == 0 or side.goals.get_subscription_count() == 0:
        assert time.monotonic() < deadline, "the bridge never subscribed"
        backend.executor.spin_once(timeout_sec=0.05)


def test_bridge_matches_names_and_drops_what_a_stream_gets_wrong(ros_domain) -> None:
    settings = Ros2Settings(update_rate_hz=200.0)
    backend = Ros2Robot(settings)
    side = JointStatePublisher(settings)
    try:
        wait_for_subscription(backend, side)
        q = support.START_POSITIONS
        reversed_names = list(reversed(LBR_JOINT_NAMES))
        side.publish(100.000, q[::-1], reversed_names)  # any order: matched by name
        first = backend.receive_state(2.0)
        assert first is not None and first.sequence == 1
        np.testing.assert_allclose(first.joint_positions, q)
        np.testing.assert_allclose(first.joint_velocities, 0.0)  # none sent, none known yet
        side.publish(100.005, q + 0.001)
        second = backend.receive_state(2.0)
        assert second.sequence == 2
        np.testing.assert_allclose(second.joint_velocities, 0.2, rtol=1e-3)  # differenced
        # The state subscription keeps only the newest message, so each goes on its own.
        side.publish(100.005, q)  # duplicate stamp
        assert backend.receive_state(0.3) is None
        side.publish(100.001, q)  # out of order
        assert backend.receive_state(0.3) is None
        side.publish(100.020, q, names=["x"] * 7)  # wrong names
        assert backend.receive_state(0.3) is None
        nan = q.copy()
        nan[4] = math.nan
        side.publish(100.020, nan)
        third = backend.receive_state(2.0)
        assert third.sequence == 5 and math.isnan(third.joint_positions[4])  # to the gate
        stats = backend.stats
        assert stats.duplicate_or_reordered == 2 and stats.malformed == 1
        # Goals: the base frame is taken, another frame and NaN are not.
        for frame, point in (
            ("lbr_link_0", (0.5, 0.1, 0.4)),
            ("camera", (0.5, 0.1, 0.4)),
            ("", (math.nan, 0.0, 0.5)),
        ):
            goal = side.PointStamped()
            goal.header.frame_id = frame
            goal.point.x, goal.point.y, goal.point.z = point
            side.goals.publish(goal)
        deadline = time.monotonic() + 5.0
        while backend.stats.goals_received < 3 and time.monotonic() < deadline:
            backend.executor.spin_once(timeout_sec=0.05)
        goals = backend.poll()
        assert len(goals) == 1 and np.allclose(goals[0], [0.5, 0.1, 0.4])
        assert backend.stats.goals_ignored == 2
        # A setpoint goes out as Float64MultiArray in the controller's joint order.
        backend.send_setpoint(5, q, fault=False)
        deadline = time.monotonic() + 5.0
        while not side.commands and time.monotonic() < deadline:
            side.executor.spin_once(timeout_sec=0.05)
        assert side.commands and np.allclose(side.commands[0], q)
    finally:
        side.close()
        backend.close()
