"""Forward kinematics and observation building of iiwa_deploy."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy.contract import parse_contract  # noqa: E402
from iiwa_deploy.kinematics import (  # noqa: E402
    IIWA14_R820_KINEMATICS,
    KinematicChain,
    iiwa14_r820_chain,
    rotation_from_rpy,
)
from iiwa_deploy.observation import (  # noqa: E402
    ObservationBuilder,
    ObservationConstants,
    ObservationInputs,
)

CHAIN = iiwa14_r820_chain()


def test_zero_configuration_is_1306_mm_straight_up_with_identity_orientation() -> None:
    position, rotation = CHAIN.forward(np.zeros(7))
    np.testing.assert_allclose(position, [0.0, 0.0, 1.306], atol=1e-12)
    np.testing.assert_allclose(rotation, np.eye(3), atol=1e-12)


def test_shoulder_at_plus_90_degrees_lays_the_arm_along_plus_x() -> None:
    # A2's axis is base +y at q = 0; +90 deg about +y turns the 0.946 m above A2 towards +x.
    q = np.zeros(7)
    q[1] = math.pi / 2
    np.testing.assert_allclose(CHAIN.tcp_position(q), [1.306 - 0.36, 0.0, 0.36], atol=1e-12)


def test_elbow_at_plus_90_degrees_points_the_forearm_along_minus_x() -> None:
    # A4's axis is base -y at q = 0; the 0.526 m above A4 swings towards -x.
    q = np.zeros(7)
    q[3] = math.pi / 2
    np.testing.assert_allclose(CHAIN.tcp_position(q), [-(1.306 - 0.78), 0.0, 0.78], atol=1e-12)


def test_first_joint_rotates_a_bent_arm_about_the_vertical() -> None:
    q = np.zeros(7)
    q[1] = math.pi / 2
    q[0] = math.pi / 2
    np.testing.assert_allclose(CHAIN.tcp_position(q), [0.0, 0.946, 0.36], atol=1e-12)


def test_last_joint_turns_the_flange_but_does_not_move_it() -> None:
    q = np.array([0.3, 0.5, -0.2, -1.1, 0.4, 0.7, 0.0])
    moved = q.copy()
    moved[6] = 1.2
    position, rotation = CHAIN.forward(q)
    moved_position, moved_rotation = CHAIN.forward(moved)
    np.testing.assert_allclose(moved_position, position, atol=1e-12)
    assert not np.allclose(moved_rotation, rotation)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=7, max_size=7))
def test_rotation_stays_orthonormal_and_tcp_stays_within_reach(q: list[float]) -> None:
    position, rotation = CHAIN.forward(np.array(q))
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-9)
    # Everything beyond A2 (0.36 m up) is at most 0.946 m from it.
    assert np.linalg.norm(position - [0.0, 0.0, 0.36]) <= 0.946 + 1e-9


def test_rpy_convention_is_yaw_pitch_roll_fixed_axes() -> None:
    roll, pitch, yaw = 0.1, -0.4, 0.7

    def rx(a: float) -> np.ndarray:
        return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])

    def ry(a: float) -> np.ndarray:
        return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])

    def rz(a: float) -> np.ndarray:
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])

    np.testing.assert_allclose(
        rotation_from_rpy(roll, pitch, yaw), rz(yaw) @ ry(pitch) @ rx(roll), atol=1e-15
    )


def test_chain_refuses_a_zero_axis() -> None:
    broken = {
        **IIWA14_R820_KINEMATICS,
        "joints": [dict(j) for j in IIWA14_R820_KINEMATICS["joints"]],
    }
    broken["joints"][2]["axis"] = [0, 0, 0]
    with pytest.raises(ValueError, match="zero axis"):
        KinematicChain.from_contract(broken)


def controller_observation(contract, q, qd, goal, previous) -> np.ndarray:
    """The observation as the controller loop builds it: FK for the TCP, the contract's layout."""
    builder = ObservationBuilder(
        contract.observation_term_layout(),
        ObservationConstants(contract.lower, contract.upper, contract.velocity),
    )
    inputs = ObservationInputs(
        joint_positions=q,
        joint_velocities=qd,
        tcp_position=contract.kinematics.tcp_position(q),
        goal_position=goal,
        previous_action=previous,
    )
    return builder.build(inputs).copy()


def test_observation_pieces_follow_the_contract_formulas() -> None:
    contract = parse_contract(support.make_contract())
    q = np.array([0.2, -0.5, 0.1, -1.0, 0.3, 0.9, -0.2])
    qd = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7])
    goal = np.array([0.5, 0.1, 0.4])
    previous = np.linspace(-1.0, 1.0, 7)
    observation = controller_observation(contract, q, qd, goal, previous)
    lower, upper = support.ROBOT.lower, support.ROBOT.upper
    tcp = CHAIN.tcp_position(q)
    expected = np.concatenate(
        [
            2.0 * (q - lower) / (upper - lower) - 1.0,
            qd / support.ROBOT.velocity,
            tcp,
            goal,
            goal - tcp,
            previous,
        ]
    )
    assert observation.dtype == np.float32
    np.testing.assert_allclose(observation, expected.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_observation_follows_a_reordered_layout() -> None:
    layout = [
        {"name": "goal_minus_tcp", "size": 3},
        {"name": "joint_position_normalized", "size": 7},
    ]
    contract = parse_contract(support.make_contract(observation={"size": 10, "layout": layout}))
    q = np.zeros(7)
    observation = controller_observation(
        contract, q, np.zeros(7), np.array([0.0, 0.0, 1.0]), np.zeros(7)
    )
    np.testing.assert_allclose(observation[:3], [0.0, 0.0, 1.0 - 1.306], atol=1e-6)
    np.testing.assert_allclose(observation[3:], 0.0, atol=1e-6)


def test_general_axis_path_matches_the_z_axis_shortcut() -> None:
    joints = [{**joint, "axis": [0.0, 0.0, -1.0]} for joint in IIWA14_R820_KINEMATICS["joints"]]
    flipped = {**IIWA14_R820_KINEMATICS, "joints": joints}
    chain = KinematicChain.from_contract(flipped)
    q = np.array([0.4, -0.7, 1.1, -1.3, 0.2, 0.9, -2.0])
    position, rotation = chain.forward(-q)
    expected_position, expected_rotation = CHAIN.forward(q)
    np.testing.assert_allclose(position, expected_position, atol=1e-12)
    np.testing.assert_allclose(rotation, expected_rotation, atol=1e-12)


def test_tcp_offset_rotation_turns_only_the_orientation() -> None:
    turned = {**IIWA14_R820_KINEMATICS, "tcp_offset_rpy": [0.0, 0.0, math.pi / 2]}
    position, rotation = KinematicChain.from_contract(turned).forward(np.zeros(7))
    np.testing.assert_allclose(position, [0.0, 0.0, 1.306], atol=1e-12)
    np.testing.assert_allclose(rotation, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
