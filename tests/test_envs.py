"""The registered environments: Gymnasium's API contract, safety of the simulated arm under
random actions, reproducibility, input checks, blow-up handling, config errors,
rendering, vector envs, and that the grasp task can be solved."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import iiwa_rl.envs  # noqa: F401  (registers the ids)
from iiwa_rl.envs import IiwaReachEnv, make_vector_env
from iiwa_rl.envs.scripted import ScriptedGrasp, run_scripted_episode
from iiwa_rl.schema import ConfigError

ENV_CASES = [
    ("IiwaReach-v0", {}),
    ("IiwaGrasp-v0", {"action_mode": "cartesian"}),
    ("IiwaGrasp-v0", {"action_mode": "joint_delta"}),
]
CASE_IDS = ["reach", "grasp-cartesian", "grasp-joint_delta"]
RANGE_TOLERANCE = 1e-3  # rad past a joint's range end
SPEED_TOLERANCE = 0.05  # fraction over a joint's datasheet speed


def make(env_id: str, **kwargs):
    return gym.make(env_id, **kwargs).unwrapped


def observation_slice(env, name: str) -> slice:
    start = 0
    for part, size in env.observation_layout:
        if part == name:
            return slice(start, start + size)
        start += size
    raise KeyError(name)


def full_scale_action(rng: np.random.Generator, shape) -> np.ndarray:
    """Half the time bang-bang (every component at +-1), half uniform over [-1, 1]: the
    reversals of bang-bang commands are what drive the joints hardest."""
    if rng.random() < 0.5:
        return rng.choice([-1.0, 1.0], size=shape).astype(np.float32)
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


# ----------------------------------------------------------------- API contract
@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
def test_gymnasium_check_env(env_id, kwargs):
    env = make(env_id, **kwargs)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error")
            # Unbounded observation boxes are deliberate (velocities, distances). Added
            # last, this filter is matched first.
            warnings.filterwarnings("ignore", message=".*infinity")
            # The render check would open render_mode="human", a GUI window; rgb_array
            # rendering has its own test below.
            check_env(env, skip_render_check=True)
    finally:
        env.close()


# ----------------------------------------------------------------------- safety
class _LimitWatch:
    """Worst joint-range excess (rad) and speed fraction of a robot seen so far."""

    def __init__(self, robot):
        self.robot = robot
        self.worst_excess = -np.inf
        self.worst_speed = 0.0
        self.checks = 0

    def __call__(self) -> None:
        positions, velocities = self.robot.joint_state()
        limits = self.robot.limits
        excess = np.maximum(limits.lower - positions, positions - limits.upper).max()
        speed = (np.abs(velocities) / limits.velocity).max()
        # NaN must fail the test, not slip past max().
        self.worst_excess = max(self.worst_excess, excess if excess == excess else np.inf)
        self.worst_speed = max(self.worst_speed, speed if speed == speed else np.inf)
        self.checks += 1

    def assert_within(self, label: str) -> None:
        assert self.checks > 0
        assert self.worst_excess <= RANGE_TOLERANCE, (
            f"{label}: a joint left its range by {self.worst_excess:.4f} rad"
        )
        assert self.worst_speed <= 1.0 + SPEED_TOLERANCE, (
            f"{label}: a joint reached {self.worst_speed:.3f} times its datasheet speed"
        )


def _drive_randomly(env, steps: int, physics_watched_steps: int, seed: int) -> None:
    """`steps` env steps of random full-scale actions, checking after every control step;
    the first `physics_watched_steps` are also checked after every physics step (a hook
    that runs after the robot's own), then the arm is stepped here, physics step by
    physics step, towards random full-range joint targets."""
    rng = np.random.default_rng(seed)
    control = _LimitWatch(env.robot)
    physics = _LimitWatch(env.robot)
    env.reset(seed=seed)
    env.sim.post_step_hooks.append(physics)
    for step in range(steps):
        if step == physics_watched_steps:
            env.sim.post_step_hooks.remove(physics)
        _, _, terminated, truncated, info = env.step(full_scale_action(rng, env.action_space.shape))
        assert not info.get("physics_blowup", False), f"physics blew up at step {step}"
        control()
        if terminated or truncated:
            env.reset()
    control.assert_within(f"{env.spec.id} control steps")
    physics.assert_within(f"{env.spec.id} physics steps inside env.step")

    # Our own commands, physics step by physics step: jumps to anywhere in the range,
    # ends included (the robot clips targets to the range, with no margin here).
    limits = env.robot.limits
    physics = _LimitWatch(env.robot)
    env.reset(seed=seed + 1)
    for _ in range(100):
        env.robot.command_joint_positions(rng.uniform(limits.lower - 0.2, limits.upper + 0.2))
        if env.robot.with_gripper:
            env.robot.command_gripper_width(rng.uniform(0.0, env.robot.max_gripper_width))
        for _ in range(env.config.substeps):
            env.sim.step(1)
            physics()
    physics.assert_within(f"{env.spec.id} physics steps under direct commands")


def test_random_actions_keep_joints_within_datasheet_limits():
    """10,000 control steps of random full-scale actions on reach and 10,000 on grasp
    (5,000 in each action mode): no joint leaves its range by more than 1e-3 rad or runs
    more than 5 % over its datasheet speed, and the physics never blows up. The first 500
    steps of each run are also checked after every physics step, and each run ends with
    100 control periods of random full-range joint targets stepped here physics step by
    physics step. About 20 s on 2 cores."""
    for env_id, kwargs, steps in (
        ("IiwaReach-v0", {}, 10_000),
        ("IiwaGrasp-v0", {"action_mode": "cartesian"}, 5_000),
        ("IiwaGrasp-v0", {"action_mode": "joint_delta"}, 5_000),
    ):
        env = make(env_id, **kwargs)
        try:
            _drive_randomly(env, steps, physics_watched_steps=500, seed=11)
        finally:
            env.close()


# -------------------------------------------------------------- reproducibility
def _rollout(env, seed: int, steps: int = 40):
    observation, _ = env.reset(seed=seed)
    rng = np.random.default_rng(1234)
    observations, rewards = [observation], []
    for _ in range(steps):
        observation, reward, terminated, truncated, _ = env.step(
            full_scale_action(rng, env.action_space.shape)
        )
        observations.append(observation)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards)


@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
def test_same_seed_same_trajectory(env_id, kwargs):
    first, second = make(env_id, **kwargs), make(env_id, **kwargs)
    try:
        observations_a, rewards_a = _rollout(first, seed=5)
        observations_b, rewards_b = _rollout(second, seed=5)
        np.testing.assert_array_equal(observations_a, observations_b)
        np.testing.assert_array_equal(rewards_a, rewards_b)
        observations_c, _ = _rollout(second, seed=6)
        assert not np.array_equal(observations_a[0], observations_c[0])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
def test_a_used_env_reset_with_a_seed_replays_a_fresh_envs_trajectory(env_id, kwargs):
    """Nothing of earlier episodes leaks into the next: a cube teleported at reset once
    kept its old orientation's world inertia for the first step, which made the same
    seed give a different trajectory (and gymnasium's check_env fail)."""
    used, fresh = make(env_id, **kwargs), make(env_id, **kwargs)
    try:
        _rollout(used, seed=3)
        _rollout(used, seed=4)
        observations_used, rewards_used = _rollout(used, seed=3)
        observations_fresh, rewards_fresh = _rollout(fresh, seed=3)
        np.testing.assert_array_equal(observations_used, observations_fresh)
        np.testing.assert_array_equal(rewards_used, rewards_fresh)
        # The same seed right after itself (the cube put back near where it lay).
        observations_again, rewards_again = _rollout(used, seed=3)
        np.testing.assert_array_equal(observations_again, observations_fresh)
        np.testing.assert_array_equal(rewards_again, rewards_fresh)
    finally:
        used.close()
        fresh.close()


def test_seeds_draw_different_goals_and_cube_poses():
    reach = make("IiwaReach-v0")
    grasp = make("IiwaGrasp-v0")
    try:
        goals, cubes = [], []
        for seed in range(8):
            reach.reset(seed=seed)
            goals.append(reach.goal_position.copy())
            grasp.reset(seed=seed)
            position, orientation = grasp.sim.body_pose(grasp.cube_id)
            cubes.append(np.concatenate([position, orientation]))
        goals, cubes = np.array(goals), np.array(cubes)
        for draws in (goals, cubes):
            distinct = {tuple(np.round(row, 9)) for row in draws}
            assert len(distinct) == len(draws)
        cfg = reach.config
        assert np.all(goals >= cfg.goal_low) and np.all(goals <= cfg.goal_high)
        low, high = grasp.config.cube_low, grasp.config.cube_high
        assert np.all(cubes[:, :2] >= low) and np.all(cubes[:, :2] <= high)
        np.testing.assert_allclose(cubes[:, 2], grasp.cube_rest_height)
    finally:
        reach.close()
        grasp.close()


# ------------------------------------------------------------- fidelity
@pytest.mark.parametrize("env_id", ["IiwaReach-v0", "IiwaGrasp-v0"])
def test_default_physics_holds_joint_targets_to_a_few_milliradians(env_id):
    """The physics rate and solver iterations of each env's defaults keep the position
    motors stiff: at most 3 mrad off after holding home for 1 s, and 1 s after a 0.3 rad
    step of A2 and A4 (measured: reach 0.4 and 1.2 mrad, grasp 1.7 and 1.0; the grasp
    with 5 iterations would give 8 and 14). The measurement is the one of
    benchmarks/bench_grasp_physics.py."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_grasp_physics import tracking_figures

    env = make(env_id)
    try:
        figures = tracking_figures(env)
    finally:
        env.close()
    assert figures["hold_error_mrad"] <= 3.0, figures
    assert figures["step_error_mrad"] <= 3.0, figures


# ------------------------------------------------------------- solvability
def test_scripted_expert_solves_grasp_on_90_percent_of_random_resets():
    env = make("IiwaGrasp-v0")
    try:
        results = [run_scripted_episode(env, seed) for seed in range(30)]
    finally:
        env.close()
    successes = sum(bool(r["is_success"]) for r in results)
    assert successes >= 27, f"only {successes}/30 scripted grasps succeeded"
    for result in results:
        if result["is_success"]:
            # Success latches; by default the episode runs on to its time limit.
            assert result["length"] == env.config.episode_steps
            assert result["metrics/max_cube_lift"] >= env.config.lift_height


def test_held_cube_does_not_creep_out_of_the_fingers():
    """A 40 N grip holds a 100 g cube still. Without friction anchors PyBullet let it
    creep down 27-29 mm in 2.3 s and drop in 2 of these 3 episodes, the expert's grip at
    full force."""
    env = make("IiwaGrasp-v0", episode_steps=200)
    try:
        for seed in range(3):
            expert = ScriptedGrasp(env)
            env.reset(seed=seed)
            offsets = []
            for _ in range(env.config.episode_steps):
                _, _, terminated, truncated, info = env.step(expert())
                if expert.phase == "lift" and info["metrics/finger_contacts"] == 2:
                    unwrapped = env.unwrapped
                    offsets.append(unwrapped._cube_position - unwrapped._current.tcp_position)
                if terminated or truncated:
                    break
            # Held from the lift to the end: 3 s of the 8 s episode at least.
            assert len(offsets) >= 75, (seed, len(offsets))
            assert (
                info["metrics/finger_contacts"] == 2
                and info["metrics/cube_lift"] >= env.config.lift_height
            )
            # Along the fingers (base z, the gripper points down): where gravity pulls.
            slip = np.abs(np.asarray(offsets)[:, 2] - offsets[0][2]).max()
            assert slip < 0.001, f"seed {seed}: the held cube slid {slip * 1000:.1f} mm"
    finally:
        env.close()


def test_grasp_success_ends_the_episode_after_the_hold_time_when_asked():
    env = make("IiwaGrasp-v0", end_on_success=True)
    try:
        results = [run_scripted_episode(env, seed) for seed in range(3)]
    finally:
        env.close()
    hold_steps = math.ceil(env.config.hold_time * env.config.control_hz)
    for result in results:
        assert result["is_success"]
        # Ends only after the full hold time, not at the first lift.
        assert result["metrics/held_steps"] == hold_steps
        assert result["metrics/cube_lift"] >= env.config.lift_height
        assert result["length"] < env.config.episode_steps


# ------------------------------------------------------------------- actions
@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_refused(env_id, kwargs, bad):
    env = make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        action = np.zeros(env.action_space.shape, dtype=np.float32)
        action[1] = bad
        with pytest.raises(ValueError, match="NaN"):
            env.step(action)
    finally:
        env.close()


@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
def test_wrong_action_shape_is_refused(env_id, kwargs):
    env = make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        size = env.action_space.shape[0]
        for shape in [(size - 1,), (size + 1,), (1, size), ()]:
            with pytest.raises(ValueError, match="shape"):
                env.step(np.zeros(shape, dtype=np.float32))
    finally:
        env.close()


@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
def test_out_of_range_actions_are_clipped(env_id, kwargs):
    env = make(env_id, **kwargs)
    try:
        pattern = np.resize(
            np.array([1.0, -1.0, 0.5, -0.25], dtype=np.float32), env.action_space.shape
        )
        huge = np.where(np.abs(pattern) == 1.0, 100.0 * pattern, pattern).astype(np.float32)
        outcomes = []
        for action in (pattern, huge, 0.5 * pattern):
            env.reset(seed=4)
            observation, reward, *_ = env.step(action)
            outcomes.append((observation, reward))
        np.testing.assert_array_equal(outcomes[0][0], outcomes[1][0])
        assert outcomes[0][1] == outcomes[1][1]
        # A smaller action does move the arm differently: the comparison above has teeth.
        assert not np.array_equal(outcomes[0][0], outcomes[2][0])
    finally:
        env.close()


# ----------------------------------------------------------------- blow-ups
def _assert_blowup_handled(env, last_observation, step_result):
    observation, reward, terminated, truncated, info = step_result
    assert info["physics_blowup"] is True
    assert truncated is True and terminated is False
    assert np.all(np.isfinite(observation)) and np.isfinite(reward)
    np.testing.assert_array_equal(observation, last_observation)


@pytest.mark.parametrize("env_id, kwargs", ENV_CASES, ids=CASE_IDS)
def test_huge_joint_velocity_is_a_blowup(env_id, kwargs):
    env = make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        last, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        robot = env.robot
        position = robot.joint_state()[0][1]
        robot.client.resetJointState(robot.body_id, robot.arm_joint_indices[1], position, 1e4)
        result = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        _assert_blowup_handled(env, last, result)
        # The env recovers with a reset.
        observation, _ = env.reset(seed=1)
        assert np.all(np.isfinite(observation))
        *_, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        assert not info.get("physics_blowup", False)
    finally:
        env.close()


def test_non_finite_joint_state_is_a_blowup(monkeypatch):
    env = make("IiwaReach-v0")
    try:
        env.reset(seed=0)
        last, *_ = env.step(np.zeros(7, dtype=np.float32))
        measured = env.robot.state_after_step  # what env.step reads after the physics

        def broken_state():
            positions, velocities, gripper_width = measured()
            positions[3] = np.nan
            return positions, velocities, gripper_width

        monkeypatch.setattr(env.robot, "state_after_step", broken_state)
        result = env.step(np.zeros(7, dtype=np.float32))
        _assert_blowup_handled(env, last, result)
    finally:
        env.close()


def test_flying_cube_is_a_blowup():
    env = make("IiwaGrasp-v0")
    try:
        env.reset(seed=0)
        last, *_ = env.step(np.zeros(5, dtype=np.float32))
        env.sim.client.resetBaseVelocity(env.cube_id, [0.0, 0.0, 100.0], [0.0, 0.0, 0.0])
        result = env.step(np.zeros(5, dtype=np.float32))
        _assert_blowup_handled(env, last, result)
    finally:
        env.close()


# ------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "env_id, kwargs, message",
    [
        ("IiwaReach-v0", {"not_a_key": 1}, "not_a_key"),
        ("IiwaGrasp-v0", {"cube_colour": "red"}, "cube_colour"),
        ("IiwaReach-v0", {"control_hz": "fast"}, "control_hz"),
        # gym.make keeps episode_steps for itself (see the xfail test below): passed
        # as `config`, it reaches the env's own checks.
        ("IiwaReach-v0", {"config": {"episode_steps": 2.5}}, "episode_steps"),
        ("IiwaReach-v0", {"config": {"episode_steps": True}}, "episode_steps"),
        ("IiwaReach-v0", {"config": {"episode_steps": 0}}, "episode_steps"),
        ("IiwaReach-v0", {"goal_low": [0.1, 0.2]}, "goal_low"),
        ("IiwaReach-v0", {"action_mode": "cartesian"}, "action_mode"),
        ("IiwaReach-v0", {"physics_hz": 250.0, "control_hz": 20.0}, "multiple"),
        ("IiwaGrasp-v0", {"physics_hz": 100.0, "control_hz": 30.0}, "multiple"),
        # The arm takes one controller setpoint per 5 ms robot period: 150 Hz cannot.
        ("IiwaReach-v0", {"physics_hz": 150.0, "control_hz": 25.0}, "robot period"),
        ("IiwaReach-v0", {"robot_config": "/nonexistent.yaml"}, "robot_config"),
        ("IiwaGrasp-v0", {"cube_size": 0.2}, "cube_size"),
        ("IiwaReach-v0", {"reward": {"terms": {"tcp_distance": {"weight": "big"}}}}, "weight"),
        ("IiwaReach-v0", {"reward": {"terms": {"cube_lift": {"weight": 1.0}}}}, "cube_lift"),
        ("IiwaReach-v0", {"reward": {"sparse": "yes"}}, "sparse"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(env_id, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        gym.make(env_id, **kwargs)


def test_config_keywords_reach_the_env():
    env = make(
        "IiwaGrasp-v0",
        physics_hz=400.0,
        control_hz=20.0,
        action_mode="joint_delta",
        config={"episode_steps": 7},
    )
    try:
        assert env.sim.physics_hz == 400.0
        assert env.config.substeps == 20
        assert env.physics_steps_per_period == 2 and env.timing.steps_per_action == 10
        assert env.action_space.shape == (8,)
        env.reset(seed=0)
        for step in range(1, 8):
            *_, truncated, _ = env.step(np.zeros(8, dtype=np.float32))
            assert truncated == (step == 7)
    finally:
        env.close()


def test_episode_steps_keyword_reaches_the_env_config():
    # The env's own key is episode_steps: gym.make keeps max_episode_steps for itself (a
    # TimeLimit wrapper) and never passes it on, which is why the env does not use that name.
    env = gym.make("IiwaReach-v0", episode_steps=200)
    try:
        assert env.unwrapped.config.episode_steps == 200
        env.reset(seed=0)
        steps, truncated = 0, False
        while not truncated and steps < 500:
            *_, truncated, _ = env.step(np.zeros(7, dtype=np.float32))
            steps += 1
        assert truncated and steps == 200
    finally:
        env.close()


# ---------------------------------------------------------------- rendering
@pytest.mark.parametrize("env_id", ["IiwaReach-v0", "IiwaGrasp-v0"])
def test_rgb_array_render(env_id):
    env = make(env_id, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        image = env.render()
        width, height = env.render_size
        assert image.shape == (height, width, 3)
        assert image.dtype == np.uint8
        colours = np.unique(image.reshape(-1, 3), axis=0)
        assert len(colours) > 20, "the image is (nearly) uniform"
        assert image.std() > 5.0
    finally:
        env.close()


def test_render_mode_is_checked():
    with pytest.raises(ValueError, match="render_mode"):
        IiwaReachEnv(render_mode="video")  # gym.make would only warn first
    env = make("IiwaReach-v0")
    try:
        env.reset(seed=0)
        assert env.render() is None
    finally:
        env.close()


# -------------------------------------------------------------- vector envs
@pytest.mark.parametrize("mode", ["sync", "async", "batched"])
def test_vector_env_seeds_and_same_step_autoreset(mode):
    episode = 3
    kwargs = {"config": {"episode_steps": episode}}
    envs = make_vector_env("IiwaReach-v0", 2, kwargs, mode=mode)
    single = make("IiwaReach-v0")
    try:
        goal = observation_slice(single, "goal_position")
        observations, _ = envs.reset(seed=7)
        assert observations.shape == (2, single.observation_size)
        assert not np.allclose(observations[0, goal], observations[1, goal])
        # Env i is seeded with 7 + i.
        for index in range(2):
            single_observation, _ = single.reset(seed=7 + index)
            np.testing.assert_array_equal(observations[index], single_observation)

        first_goals = observations[:, goal].copy()
        actions = np.zeros((2, 7), dtype=np.float32)
        for step in range(1, episode + 1):
            observations, _, terminated, truncated, infos = envs.step(actions)
            ended = step == episode
            assert np.all(truncated == ended) and not np.any(terminated)
            if not ended:
                assert not np.any(infos.get("_final_obs", np.zeros(2, dtype=bool)))
        assert np.all(infos["_final_obs"])
        for index in range(2):
            final = infos["final_obs"][index]
            assert final.shape == (single.observation_size,)
            # The final observation belongs to the ended episode, the returned one to the
            # next: the goal changed in between.
            np.testing.assert_allclose(final[goal], first_goals[index], atol=1e-6)
            assert not np.allclose(observations[index, goal], first_goals[index])
    finally:
        envs.close()
        single.close()


def test_vector_env_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env("IiwaReach-v0", 0)
    with pytest.raises(ValueError, match="mode"):
        make_vector_env("IiwaReach-v0", 1, mode="threads")


def _grasp_with_top_penalty():
    terms = {"finger_contact": {"weight": 0.5}, "finger_on_cube_top": {"weight": -1.0}}
    return make("IiwaGrasp-v0", reward={"sparse": False, "terms": terms})


def test_a_side_grasp_never_counts_as_a_finger_on_the_cube_top():
    env = _grasp_with_top_penalty()
    try:
        expert = ScriptedGrasp(env)
        env.reset(seed=0)
        grasped = False
        for _ in range(env.config.episode_steps):
            _, _, terminated, truncated, info = env.step(expert())
            grasped = grasped or info["metrics/finger_contacts"] == 2
            assert info["reward/finger_on_cube_top"] == 0.0
            if terminated or truncated:
                break
        assert grasped
    finally:
        env.close()


def _pad_onto_cube_top(env) -> np.ndarray:
    """The action that lowers the open gripper with its left pad over the cube's centre,
    the pad tip 5 mm into the top face."""
    current = env._current
    # The pads sit at +-half the opening along the TCP's y axis.
    pad_offset = env.robot.max_gripper_width / 2.0
    side = np.array([-math.sin(current.tcp_yaw), math.cos(current.tcp_yaw), 0.0])
    target = env._cube_position - pad_offset * side
    target[2] = env._cube_position[2] + 0.02
    yaw_error = (env._cube_yaw - current.tcp_yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4
    move = np.clip((target - current.tcp_position) / env.config.action_scale, -1, 1)
    action = np.array([*move, yaw_error / env.config.yaw_scale, 1.0], dtype=np.float32)
    return np.clip(action, -1, 1)


def test_a_finger_landing_on_the_cube_top_counts():
    """The open gripper lowered with its left pad over the cube's centre: one finger on the
    top face, pressed there, and the term pays -1 a step while it is."""
    env = _grasp_with_top_penalty()
    try:
        env.reset(seed=0)
        on_top = []
        for _ in range(80):
            _, _, _, _, info = env.step(_pad_onto_cube_top(env))
            on_top.append(info["reward/finger_on_cube_top"])
        assert min(on_top) == -1.0
        assert max(on_top) <= 0.0
    finally:
        env.close()


@pytest.mark.parametrize("end_on_top", [True, False])
def test_end_on_finger_on_cube_top_ends_the_episode_at_the_landing(end_on_top):
    """With the option a pad lowered onto the top ends the episode, a failure, at the first
    step it touches there, and the episode's end figures say so; without it the same
    landing runs on (the penalty term alone)."""
    terms = {"finger_on_cube_top": {"weight": -1.0}}
    env = make(
        "IiwaGrasp-v0",
        end_on_finger_on_cube_top=end_on_top,
        reward={"sparse": False, "terms": terms},
    )
    try:
        env.reset(seed=0)
        landed_at = ended_at = None
        for step in range(80):
            _, _, terminated, truncated, info = env.step(_pad_onto_cube_top(env))
            if landed_at is None and info["reward/finger_on_cube_top"] < 0:
                landed_at = step
            if terminated or truncated:
                ended_at = step
                break
        assert landed_at is not None
        if end_on_top:
            assert terminated and ended_at == landed_at
            assert info["metrics/ended_on_cube_top"] is True
            assert info["is_success"] is False and info["metrics/failed_missed"] is True
        else:
            assert ended_at is None
            assert "metrics/ended_on_cube_top" not in info
    finally:
        env.close()
