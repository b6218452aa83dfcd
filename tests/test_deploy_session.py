"""A controller session as a robot user lives it: the start pose, the drive to home, goals
that change while it runs, and the stop that brings the arm to rest."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy import loop as loop_module  # noqa: E402
from iiwa_deploy.cli import EXIT_REFUSED, exit_code, run_policy  # noqa: E402
from iiwa_deploy.fake_robot import FakeRobot, NumpyPlant  # noqa: E402
from iiwa_deploy.kinematics import iiwa14_r820_chain  # noqa: E402
from iiwa_deploy.loop import collector_kept_off_the_older_heap  # noqa: E402
from iiwa_deploy.protocol import HEADER, MAGIC, MESSAGE_GOAL, encode_goal  # noqa: E402
from iiwa_deploy.robot import UdpGoalListener, UdpRobot, send_goal  # noqa: E402

ROBOT = support.ROBOT
START = support.START_POSITIONS
PERIOD = ROBOT.robot_period_s
TARGET = START + np.array([0.3, 0.25, -0.2, -0.3, 0.2, 0.25, 0.4])
GOAL = iiwa14_r820_chain().tcp_position(TARGET)


@pytest.fixture
def reach_model(tmp_path: Path) -> Path:
    contract = support.make_contract()
    weights, bias = support.proportional_weights(contract, TARGET)
    return support.write_policy(tmp_path, contract, weights, bias)


def run(model, start, **options):
    backend = UdpRobot(("127.0.0.1", 0), PERIOD)
    fake = FakeRobot(backend.local_address, NumpyPlant(ROBOT.velocity), PERIOD, start)
    fake.start(duration_s=30.0)
    try:
        summary = run_policy(model, backend, goal=GOAL, **options)
    finally:
        fake.close()
        backend.close()
    return summary, fake


def test_a_start_pose_far_from_home_is_refused_before_anything_moves(reach_model):
    start = START.copy()
    start[3] += 0.4
    summary, fake = run(reach_model, start, duration_s=2.0)
    assert summary.refusal is not None and "iiwa_joint_4" in summary.refusal
    assert "0.400 rad" in summary.refusal
    assert exit_code(summary) == EXIT_REFUSED
    assert fake.record.setpoints_received == 0 and summary.policy_steps == 0


def test_move_to_home_drives_there_slowly_then_runs_the_policy(reach_model):
    start = START.copy()
    start[3] += 0.4
    start[0] -= 0.3
    summary, fake = run(reach_model, start, duration_s=3.0, move_to_home=True)
    assert summary.refusal is None and not summary.faults, summary.format()
    assert summary.policy_steps > 0
    setpoints = np.array(fake.record.setpoints)
    speeds = np.abs(np.diff(setpoints, axis=0)) / PERIOD
    # The drive home keeps to a quarter of the interpolator's speed; the policy may use all.
    home_move = setpoints[: int(0.5 / PERIOD)]
    home_speeds = np.abs(np.diff(home_move, axis=0)) / PERIOD
    assert np.all(home_speeds <= ROBOT.interpolator_velocity * 0.25 + 1e-9)
    assert np.all(speeds <= ROBOT.interpolator_velocity + 1e-9)


def test_the_stop_brakes_to_rest_within_the_acceleration_limit(reach_model):
    summary, fake = run(reach_model, START, duration_s=0.6)  # stops mid-motion
    assert summary.stop_reason == "duration" and not summary.faults, summary.format()
    setpoints = np.array(fake.record.setpoints)
    velocities = np.diff(setpoints, axis=0) / PERIOD
    accelerations = np.diff(velocities, axis=0) / PERIOD
    # At rest when the loop stops answering: the last setpoints the fake robot got (the very
    # last may still be in flight) move less than one braking step.
    assert np.all(np.abs(velocities[-1]) <= ROBOT.acceleration * PERIOD + 1e-9)
    assert np.all(np.abs(accelerations) <= ROBOT.acceleration * (1 + 1e-6) + 1e-6)
    assert summary.braking_travel_rad > 0.0  # it was moving when the stop began


def test_goal_changes_while_running_and_bad_goals_are_ignored(reach_model, caplog):
    listener = UdpGoalListener(("127.0.0.1", 0))
    address = listener.local_address
    new_goal = GOAL + np.array([0.0, 0.05, -0.03])
    outside_box = np.array([2.0, 0.0, 0.5])
    nan_goal = (
        HEADER.pack(MAGIC, 1, MESSAGE_GOAL, 0, 99, time.monotonic())
        + np.array([np.nan, 0.0, 0.5]).tobytes()
    )

    def sender():
        time.sleep(0.5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(nan_goal, address)
        send_goal(address, outside_box, sequence=1)
        send_goal(address, new_goal, sequence=2)
        send_goal(address, GOAL, sequence=2)  # not newer: ignored

    import threading

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        summary, fake = run(reach_model, START, duration_s=1.5, goal_source=listener)
    finally:
        thread.join()
        listener.close()
    assert summary.goal_changes == 1, summary.format()
    np.testing.assert_allclose(summary.goal_position, new_goal)
    assert listener.ignored == 2
    assert "outside the training goal box" in caplog.text
    assert not summary.faults
    # No gap in setpoints: every state was answered.
    assert summary.unanswered_states == 0


def test_goal_listener_ignores_unknown_senders():
    listener = UdpGoalListener(("127.0.0.1", 0), allowed_hosts=("10.1.2.3",))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(encode_goal(1, 0.0, [0.5, 0.0, 0.5]), listener.local_address)
        time.sleep(0.05)
        assert listener.poll() == [] and listener.ignored == 1
    finally:
        listener.close()


def test_success_needs_the_hold_at_the_end(reach_model):
    summary, _ = run(reach_model, START, duration_s=6.0)
    assert summary.success, summary.format()
    assert summary.held_s >= summary.success_hold_s == 0.5
    assert summary.final_distance_m <= summary.success_threshold_m
    assert summary.worst_distance_last_second_m >= summary.final_distance_m


def test_a_goal_change_leaves_the_callers_goal_array_alone(reach_model):
    listener = UdpGoalListener(("127.0.0.1", 0))
    callers_goal = GOAL.copy()
    try:
        send_goal(listener.local_address, GOAL + np.array([0.0, 0.05, 0.0]), sequence=1)
        backend = UdpRobot(("127.0.0.1", 0), PERIOD)
        fake = FakeRobot(backend.local_address, NumpyPlant(ROBOT.velocity), PERIOD, START)
        fake.start(duration_s=10.0)
        try:
            summary = run_policy(
                reach_model, backend, goal=callers_goal, duration_s=0.3, goal_source=listener
            )
        finally:
            fake.close()
            backend.close()
    finally:
        listener.close()
    assert summary.goal_changes == 1
    np.testing.assert_array_equal(callers_goal, GOAL)


def walked_by_the_collector(value: object) -> bool:
    return any(
        candidate is value for generation in range(3) for candidate in gc.get_objects(generation)
    )


class FreezeRecordingGoalSource:
    """A goal source that brings no goals and notes, each time the loop polls it, how many
    runs keep the collector off the older heap. Only that counter: the collector's own
    figures walk the heap (gc.get_freeze_count counts the frozen objects one by one, about
    70 ms in this test session's heap), which inside a 5 ms cycle latches the state-rate
    gate."""

    def __init__(self) -> None:
        self.freezing_runs: list[int] = []

    def poll(self) -> list[np.ndarray]:
        self.freezing_runs.append(loop_module._freezing_runs)
        return []


def test_the_loop_keeps_the_collector_off_the_heap_it_started_with(reach_model):
    # A full collection over a process's whole heap stops every thread for 100-200 ms in a
    # process like this test session's: the heap standing at the start is skipped while the
    # loop runs (test_the_heap_standing_at_the_start_is_the_one_kept_off), and walked again
    # after it.
    standing = [[index] for index in range(50_000)]
    source = FreezeRecordingGoalSource()
    summary, _ = run(reach_model, START, duration_s=0.4, goal_source=source)
    assert not summary.faults, summary.format()
    assert source.freezing_runs, "the loop never polled its goal source"
    assert min(source.freezing_runs) == 1
    assert gc.get_freeze_count() == 0 and walked_by_the_collector(standing)


def test_the_heap_standing_at_the_start_is_the_one_kept_off():
    standing = [[index] for index in range(1_000)]
    with collector_kept_off_the_older_heap():
        made_during_the_run = [[index] for index in range(10)]
        assert not walked_by_the_collector(standing)
        assert walked_by_the_collector(made_during_the_run)
    assert walked_by_the_collector(standing) and gc.get_freeze_count() == 0


def run_against_a_robot_process(model, start, **options):
    """`run` with the fake robot in a process of its own, as a real arm is: a stall of this
    process (a call holding the interpreter lock) then leaves the robot's clock alone."""
    backend = UdpRobot(("127.0.0.1", 0), PERIOD)
    robot = subprocess.Popen(
        [sys.executable, "-m", "iiwa_deploy.fake_robot", "--port", str(backend.local_address[1])]
        + ["--period", str(PERIOD), "--duration", "30", "--q0", *map(str, start)],
        env=support.deploy_subprocess_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return run_policy(model, backend, goal=GOAL, **options)
    finally:
        robot.kill()
        robot.wait()
        backend.close()


def test_a_heap_the_host_froze_stays_frozen_after_the_loop(reach_model):
    # The loop counts the host's frozen objects before it answers a state: in this test
    # session's heap, frozen whole, that is 90-180 ms holding the interpreter lock, which
    # a fake robot in a thread of this process would live through as lost periods.
    frozen_by_host = [[index] for index in range(1_000)]
    gc.freeze()
    try:
        summary = run_against_a_robot_process(reach_model, START, duration_s=0.2)
        assert not summary.faults, summary.format()
        assert summary.policy_steps > 0
        assert not walked_by_the_collector(frozen_by_host)
    finally:
        gc.unfreeze()
    assert walked_by_the_collector(frozen_by_host)


def test_overlapping_runs_keep_the_heap_frozen_until_the_last_one_ends():
    # Two loops in threads of one process: the first to end must not unfreeze the heap
    # under the other.
    standing = [[index] for index in range(1_000)]
    first, second = collector_kept_off_the_older_heap(), collector_kept_off_the_older_heap()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not walked_by_the_collector(standing)
    second.__exit__(None, None, None)
    assert walked_by_the_collector(standing) and gc.get_freeze_count() == 0
