"""Reward terms at hand-made inputs, their weighted combination and its config errors,
and the tasks' success tests at hand-made states of the simulation."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import iiwa_rl.envs  # noqa: F401  (registers the ids)
from iiwa_rl.envs.rewards import REWARD_TERMS, RewardFunction, RewardInputs
from iiwa_rl.schema import ConfigError

LOWER = np.array([-2.0, -1.0, -2.0])
UPPER = np.array([2.0, 1.0, 2.0])
SPEED_LIMITS = np.array([1.0, 2.0, 4.0])


def inputs(**changes) -> RewardInputs:
    """A three-joint state at rest in mid-range, TCP at the origin; `changes` override."""
    values = dict(
        tcp_position=np.zeros(3),
        joint_positions=np.zeros(3),
        joint_velocities=np.zeros(3),
        joint_lower=LOWER,
        joint_upper=UPPER,
        joint_velocity_limits=SPEED_LIMITS,
        action=np.zeros(2),
        previous_action=np.zeros(2),
        is_success=False,
        goal_position=np.array([0.3, 0.4, 0.0]),  # 0.5 m from the TCP
        cube_position=np.array([0.0, 0.0, 0.2]),  # 0.2 m from the TCP
        cube_lift=0.0,
        finger_contacts=(False, False),
        lift_target=0.1,
    )
    values.update(changes)
    return RewardInputs(**values)


def term(name: str, x: RewardInputs, **params) -> float:
    return REWARD_TERMS[name](x, **params)


# ---------------------------------------------------------------------- terms
def test_tcp_distance():
    assert term("tcp_distance", inputs()) == pytest.approx(0.5)
    assert term("tcp_distance", inputs(tcp_position=np.array([0.3, 0.4, 0.0]))) == 0.0


def test_tcp_distance_tanh():
    at_goal = inputs(tcp_position=np.array([0.3, 0.4, 0.0]))
    assert term("tcp_distance_tanh", at_goal, std=0.05) == pytest.approx(1.0)
    assert term("tcp_distance_tanh", inputs(), std=0.05) == pytest.approx(1 - math.tanh(10.0))
    assert term("tcp_distance_tanh", inputs(), std=1.0) == pytest.approx(1 - math.tanh(0.5))
    # The default std is 0.1 m.
    assert term("tcp_distance_tanh", inputs()) == pytest.approx(1 - math.tanh(5.0))


def test_action_rate_and_magnitude():
    x = inputs(action=np.array([1.0, 0.0]), previous_action=np.array([0.0, 2.0]))
    assert term("action_rate", x) == pytest.approx(1.0 + 4.0)
    assert term("action_rate", inputs(action=np.ones(2), previous_action=np.ones(2))) == 0.0
    assert term("action_magnitude", inputs(action=np.array([3.0, 4.0]))) == pytest.approx(25.0)


def test_joint_velocity_counts_fractions_of_each_limit():
    x = inputs(joint_velocities=np.array([0.5, -1.0, 4.0]))  # 0.5, 0.5, 1.0 of the limits
    assert term("joint_velocity", x) == pytest.approx(0.25 + 0.25 + 1.0)


def test_joint_limit_proximity():
    assert term("joint_limit_proximity", inputs(), margin=0.2) == 0.0
    # 0.05 rad from the lower end of a 0.2 rad band: 0.75 of a margin deep.
    near = inputs(joint_positions=np.array([-1.95, 0.0, 0.0]))
    assert term("joint_limit_proximity", near, margin=0.2) == pytest.approx(0.75)
    # Depths add up over joints, upper ends count too, and past the end counts beyond 1.
    both = inputs(joint_positions=np.array([-1.95, 1.1, 0.0]))
    assert term("joint_limit_proximity", both, margin=0.2) == pytest.approx(0.75 + 1.5)
    # A wider margin starts earlier.
    assert term("joint_limit_proximity", near, margin=0.5) == pytest.approx(0.9)


def test_success_term():
    assert term("success", inputs(is_success=True)) == 1.0
    assert term("success", inputs(is_success=False)) == 0.0


def test_cube_distance_tanh():
    assert term("cube_distance_tanh", inputs(), std=0.1) == pytest.approx(1 - math.tanh(2.0))
    at_cube = inputs(tcp_position=np.array([0.0, 0.0, 0.2]))
    assert term("cube_distance_tanh", at_cube) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "contacts, expected",
    [((False, False), 0.0), ((True, False), 0.5), ((False, True), 0.5), ((True, True), 1.0)],
)
def test_finger_contact(contacts, expected):
    assert term("finger_contact", inputs(finger_contacts=contacts)) == expected


@pytest.mark.parametrize(
    "contacts, lift, expected",
    [
        ((True, True), 0.05, 0.5),
        ((True, True), 0.25, 1.0),  # capped at the target height
        ((True, True), -0.01, 0.0),  # pressed into the table
        ((True, False), 0.05, 0.0),  # knocked up, not held
        ((False, False), 0.15, 0.0),
    ],
)
def test_cube_lift(contacts, lift, expected):
    x = inputs(finger_contacts=contacts, cube_lift=lift, lift_target=0.1)
    assert term("cube_lift", x) == pytest.approx(expected)


@pytest.mark.parametrize(
    "contacts, lift, expected",
    [
        ((True, True), 0.1, 1.0),
        ((True, True), 0.2, 1.0),
        ((True, True), 0.099, 0.0),
        ((False, True), 0.2, 0.0),
    ],
)
def test_cube_held_high(contacts, lift, expected):
    x = inputs(finger_contacts=contacts, cube_lift=lift, lift_target=0.1)
    assert term("cube_held_high", x) == expected


# ----------------------------------------------------------- RewardFunction
ALL_TERMS = set(REWARD_TERMS)


def test_weighted_sum_and_logged_parts():
    reward = RewardFunction(
        {
            "tcp_distance": {"weight": -2.0},
            "tcp_distance_tanh": {"weight": 3.0, "std": 1.0},
            "action_magnitude": {"weight": -0.5},
        },
        sparse=False,
        available=ALL_TERMS,
        where="test",
    )
    x = inputs(action=np.array([3.0, 4.0]))
    total, parts = reward(x)
    expected = {
        "reward/tcp_distance": -2.0 * 0.5,
        "reward/tcp_distance_tanh": 3.0 * (1 - math.tanh(0.5)),
        "reward/action_magnitude": -0.5 * 25.0,
    }
    assert parts.keys() == expected.keys()
    for key, value in expected.items():
        assert parts[key] == pytest.approx(value)
    assert total == pytest.approx(sum(expected.values()))


def test_no_terms_is_zero_reward():
    total, parts = RewardFunction({}, sparse=False, available=ALL_TERMS, where="test")(inputs())
    assert total == 0.0 and parts == {}


def test_sparse_reward_is_minus_one_until_success_and_still_logs_terms():
    reward = RewardFunction(
        {"tcp_distance": {"weight": -1.0}}, sparse=True, available=ALL_TERMS, where="test"
    )
    total, parts = reward(inputs(is_success=False))
    assert total == -1.0
    assert parts == {"reward/tcp_distance": pytest.approx(-0.5)}
    total, _ = reward(inputs(is_success=True))
    assert total == 0.0


@pytest.mark.parametrize(
    "terms, available, message",
    [
        ({"tcp_distanse": {"weight": 1.0}}, ALL_TERMS, "tcp_distanse: unknown reward term"),
        ({"cube_lift": {"weight": 1.0}}, {"tcp_distance"}, "cannot compute the term 'cube_lift'"),
        (
            {"tcp_distance_tanh": {"weight": 1.0, "sigma": 0.1}},
            ALL_TERMS,
            "sigma: unknown parameter",
        ),
        ({"action_rate": {"weight": 1.0, "std": 0.1}}, ALL_TERMS, "no parameters"),
        ({"tcp_distance": {"std": 0.1}}, ALL_TERMS, "weight"),
        ({"tcp_distance": 1.0}, ALL_TERMS, "weight"),
        ({"tcp_distance": {"weight": "high"}}, ALL_TERMS, "expected a number"),
        ({"tcp_distance": {"weight": True}}, ALL_TERMS, "expected a number"),
        ({"tcp_distance_tanh": {"weight": 1.0, "std": None}}, ALL_TERMS, "std: expected a number"),
    ],
)
def test_reward_config_errors(terms, available, message):
    with pytest.raises(ConfigError, match=message) as error:
        RewardFunction(terms, sparse=False, available=available, where="env.reward.terms")
    assert str(error.value).startswith("env.reward.terms.")


@pytest.mark.parametrize(
    "env_id, bad_term",
    [
        ("IiwaReach-v0", "cube_lift"),
        ("IiwaReach-v0", "finger_contact"),
        ("IiwaGrasp-v0", "tcp_distance"),
    ],
)
def test_each_task_refuses_terms_it_cannot_compute(env_id, bad_term):
    with pytest.raises(ConfigError, match=bad_term):
        gym.make(env_id, reward={"terms": {bad_term: {"weight": 1.0}}})


# ------------------------------------------------------- task success tests
@pytest.fixture
def reach_at_pose():
    """A reach env whose robot rests at a fixed configuration: home = that pose, no reset
    noise, and joint_offset actions of 0 hold it there; success is judged on the step alone
    (no hold time)."""
    pose = [0.3, 0.5, -0.2, -1.4, 0.1, 1.0, 0.2]
    env = gym.make(
        "IiwaReach-v0",
        home_joint_positions=pose,
        initial_joint_noise=0.0,
        action_mode="joint_offset",
        hold_time=0.0,
    ).unwrapped
    yield env, np.array(pose)
    env.close()


def _settled_tcp(env) -> np.ndarray:
    env.reset(seed=0)
    env.robot.reset_joint_positions(env.home_joint_positions)
    return env.robot.tcp_pose()[0]


@pytest.mark.parametrize(
    "offset, success", [(0.0, True), (0.012, True), (0.03, False), (0.2, False)]
)
def test_reach_success_within_the_threshold(reach_at_pose, offset, success):
    env, pose = reach_at_pose
    tcp = _settled_tcp(env)
    np.testing.assert_allclose(env.robot.joint_state()[0], pose, atol=1e-12)
    direction = np.array([2.0, -1.0, 2.0]) / 3.0
    env.goal_position = tcp + offset * direction
    observation, reward, terminated, truncated, info = env.step(np.zeros(7, dtype=np.float32))
    assert info["metrics/tcp_distance"] == pytest.approx(offset, abs=2e-3)
    assert info["is_success"] is success
    assert not terminated  # a reach episode never ends early: the arm must stay on the goal
    # The reward is the configured sum, each weighted part logged.
    parts = {k: v for k, v in info.items() if k.startswith("reward/")}
    assert set(parts) == {f"reward/{name}" for name in env.config.reward.terms}
    assert reward == pytest.approx(sum(parts.values()))
    distance_weight = env.config.reward.terms["tcp_distance"]["weight"]
    assert parts["reward/tcp_distance"] == pytest.approx(
        distance_weight * info["metrics/tcp_distance"]
    )
    goal = slice(17, 20)
    np.testing.assert_allclose(observation[goal], env.goal_position, atol=1e-6)


def test_reach_sparse_reward_at_and_away_from_the_goal():
    env = gym.make(
        "IiwaReach-v0",
        home_joint_positions=[0.0, 0.4, 0.0, -1.5, 0.0, 1.0, 0.0],
        initial_joint_noise=0.0,
        action_mode="joint_offset",
        hold_time=0.0,
        reward={"sparse": True, "terms": {"tcp_distance": {"weight": -1.0}}},
    ).unwrapped
    try:
        tcp = _settled_tcp(env)
        env.goal_position = tcp.copy()
        _, reward, *_, info = env.step(np.zeros(7, dtype=np.float32))
        assert info["is_success"] and reward == 0.0
        env.goal_position = tcp + np.array([0.0, 0.0, 0.1])
        _, reward, *_, info = env.step(np.zeros(7, dtype=np.float32))
        assert not info["is_success"] and reward == -1.0
        assert info["reward/tcp_distance"] == pytest.approx(-0.1, abs=2e-3)
    finally:
        env.close()


def test_grasp_cube_lifted_without_fingers_is_no_success():
    env = gym.make("IiwaGrasp-v0").unwrapped
    try:
        env.reset(seed=0)
        position, orientation = env.sim.body_pose(env.cube_id)
        # Put the cube well above the lift height, free (no finger touches it).
        high = position + np.array([0.0, 0.0, 0.3])
        env.sim.client.resetBasePositionAndOrientation(
            env.cube_id, high.tolist(), orientation.tolist()
        )
        *_, terminated, truncated, info = env.step(np.zeros(5, dtype=np.float32))
        assert info["metrics/cube_lift"] > env.config.lift_height
        assert info["metrics/finger_contacts"] == 0
        assert not info["is_success"] and not terminated
        assert info["reward/cube_lift"] == 0.0 and info["reward/cube_held_high"] == 0.0
        assert info["metrics/held_steps"] == 0
    finally:
        env.close()


def test_grasp_cube_off_the_table_ends_the_episode_as_a_failure():
    env = gym.make("IiwaGrasp-v0").unwrapped
    try:
        env.reset(seed=0)
        # Beside the table, below its top: it has fallen off.
        env.sim.client.resetBasePositionAndOrientation(env.cube_id, [1.5, 0.0, -0.3], [0, 0, 0, 1])
        *_, terminated, truncated, info = env.step(np.zeros(5, dtype=np.float32))
        assert terminated and not truncated
        assert not info["is_success"]
        assert info["reward/success"] == 0.0
    finally:
        env.close()


def test_reach_success_needs_the_hold_time_on_the_goal(reach_at_pose):
    env, _ = reach_at_pose
    env.config.hold_time = 0.2  # 5 steps at 25 Hz, counted from the next reset
    env._setup_scene()
    env.reset(seed=0)
    env.goal_position = _settled_tcp(env)
    verdicts = [env.step(np.zeros(7, dtype=np.float32))[4]["is_success"] for _ in range(6)]
    assert verdicts == [False, False, False, False, True, True]
    env.goal_position = env.goal_position + np.array([0.0, 0.0, 0.05])  # off the goal: reset
    assert env.step(np.zeros(7, dtype=np.float32))[4]["is_success"] is False
