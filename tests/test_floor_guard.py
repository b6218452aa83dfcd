"""The floor guard: the command stream's look-ahead that keeps the commanded TCP and finger
tips above the table (iiwa_deploy.floor_guard), on the grasp contract's own chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from iiwa_deploy.actuation import CommandStream, ControlTiming
from iiwa_deploy.cell import CellGate
from iiwa_deploy.config import load_robot_config
from iiwa_deploy.floor_guard import FloorGuard
from iiwa_deploy.kinematics import differential_ik_step, down_orientation, quaternion_from_matrix
from iiwa_deploy.safety import SafetyMonitor

ROOT = Path(__file__).resolve().parents[1]
GRASP_POLICY = ROOT / "assets" / "policies" / "grasp" / "policy.onnx"
ROBOT = load_robot_config()
TIMING = ControlTiming(ROBOT.robot_period_s, 8)


@pytest.fixture(scope="module")
def contract():
    from iiwa_deploy.contract import read_contract
    from iiwa_deploy.policy import create_session

    return read_contract(create_session(GRASP_POLICY), GRASP_POLICY)


def _joints_for_tcp(contract, position, yaw=0.0):
    """Joint positions putting the TCP at `position`, pointing down (the numpy IK, iterated)."""
    chain = contract.kinematics
    q = np.asarray(contract.home_joint_positions, dtype=float)
    for _ in range(60):
        tcp, rotation = chain.forward(q)
        q = differential_ik_step(
            chain,
            q,
            tcp,
            quaternion_from_matrix(rotation),
            np.asarray(position, dtype=float),
            down_orientation(yaw),
            ROBOT.target_lower,
            ROBOT.target_upper,
        )
    assert np.allclose(chain.forward(q)[0], position, atol=1e-5)
    return q


def _guard(contract, floor_m=0.0, lower=None, upper=None):
    return FloorGuard(
        contract.kinematics,
        contract.grasp.finger_tip_points_m,
        floor_m,
        ROBOT.target_lower if lower is None else lower,
        ROBOT.target_upper if upper is None else upper,
    )


def _stream(start, guard=None):
    return CommandStream(TIMING, ROBOT.interpolator_velocity, ROBOT.acceleration, start, guard)


def _run(stream, targets, periods_each=8):
    setpoints = []
    for target in targets:
        stream.set_target(target)
        setpoints.extend(stream.next_setpoint() for _ in range(periods_each))
    return np.array(setpoints)


def test_batched_heights_equal_forward_kinematics(contract):
    chain, tips = contract.kinematics, np.asarray(contract.grasp.finger_tip_points_m)
    rng = np.random.default_rng(0)
    configurations = np.asarray(contract.home_joint_positions) + rng.normal(0.0, 0.7, (40, 7))
    expected = []
    for q in configurations:
        tcp, rotation = chain.forward(q)
        expected.append([tcp[2], *(tcp[2] + tips @ rotation[2])])
    np.testing.assert_allclose(chain.heights(configurations, tips), expected, atol=1e-14)


def test_a_policy_pushing_into_the_table_never_gets_a_setpoint_below_the_floor(contract):
    """Every policy period a joint target whose TCP is 3 cm *under* the table, at a new x:
    unguarded, the stream drives the finger tips into the table; guarded, every setpoint's
    TCP and tips stay above the floor: the targets lifted clear, or, while the arm still
    comes down too fast for any target to clear it, the stream braked."""
    start = _joints_for_tcp(contract, [0.55, 0.0, 0.12])
    pushes = [_joints_for_tcp(contract, [0.5 + 0.03 * (k % 4), 0.0, -0.03]) for k in range(12)]
    guard = _guard(contract)
    unguarded = guard.lowest_points(_run(_stream(start), pushes))
    guarded = guard.lowest_points(_run(_stream(start, guard), pushes))
    assert unguarded.min() < -0.02  # the pushes do reach into the table without the guard
    assert guarded.min() >= guard.floor_m + guard.margin_m
    assert guard.lifted >= 1 and guard.lifted + guard.braked >= 6
    # It stops at the floor, not well above it: the hand still gets down to the table.
    assert guarded.min() < guard.floor_m + 0.01


def test_targets_that_keep_the_tips_up_still_dip_the_unguarded_stream_and_not_the_guarded(
    contract,
):
    """Every target keeps the finger tips 10 mm over the table (the TCP at the grasp's box
    floor, 25 mm), but they alternate 4 cm sideways each policy period: mid-way the joints
    are out of proportion, and the unguarded setpoints put the tips centimetres into the
    table. The guarded ones stay above it."""
    start = _joints_for_tcp(contract, [0.55, 0.0, 0.1])
    sideways = [_joints_for_tcp(contract, [0.55 + 0.04 * (-1) ** k, 0.0, 0.025]) for k in range(12)]
    guard = _guard(contract)
    targets_lowest = guard.lowest_points(np.array(sideways)).min()
    assert targets_lowest == pytest.approx(0.01, abs=1e-6)
    unguarded = guard.lowest_points(_run(_stream(start), sideways))
    guarded = guard.lowest_points(_run(_stream(start, guard), sideways))
    assert unguarded.min() < guard.floor_m - 0.01
    assert guarded.min() >= guard.floor_m + guard.margin_m
    assert guard.lifted + guard.braked >= 1


def test_far_from_the_table_the_guard_changes_nothing_number_for_number(contract):
    start = _joints_for_tcp(contract, [0.55, 0.0, 0.3])
    targets = [_joints_for_tcp(contract, [0.45 + 0.05 * k, 0.1 - 0.04 * k, 0.3]) for k in range(5)]
    guard = _guard(contract)
    assert np.array_equal(_run(_stream(start), targets), _run(_stream(start, guard), targets))
    assert guard.lifted == guard.braked == 0


def test_when_no_lift_clears_the_floor_the_stream_brakes(contract):
    """Target limits that pin the joints to a target under the table leave no lift: the
    stream brakes instead, and comes to rest above the floor."""
    start = _joints_for_tcp(contract, [0.55, 0.0, 0.04])
    under = _joints_for_tcp(contract, [0.55, 0.0, -0.02])
    guard = _guard(contract, lower=under, upper=under)
    stream = _stream(start, guard)
    lowest = guard.lowest_points(_run(stream, [under] * 10))
    assert guard.braked >= 1 and guard.lifted == 0
    assert lowest.min() >= guard.floor_m + guard.margin_m
    assert stream.interpolator.at_rest and lowest[-1] < 0.02  # it did come down, then stopped


def test_env_and_controller_guard_the_floor_the_cell_gate_holds(contract):
    from iiwa_deploy.grasp_loop import GraspSession

    from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv

    gate = CellGate(
        contract.kinematics, ROBOT, contract.grasp.finger_tip_points_m, SafetyMonitor(ROBOT)
    )
    env = IiwaGraspEnv()
    try:
        env_guard = env.command_stream.floor_guard
        assert env_guard is not None
        assert env_guard.floor_m == pytest.approx(gate.floor_m, abs=1e-9)
        np.testing.assert_allclose(env_guard.points, contract.grasp.finger_tip_points_m)
    finally:
        env.close()

    class NoPoses:
        def poll(self):
            return []

    session = GraspSession(contract, ROBOT, SafetyMonitor(ROBOT), NoPoses(), False)
    assert session.floor_guard.floor_m == gate.floor_m
