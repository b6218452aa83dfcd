"""Domain randomisation (iiwa_rl/envs/randomization.py): off by default and then the nominal
environment bit for bit; each term changes what it claims to; seeds replay exactly; bad
sections are refused before any work, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iiwa_rl.config import load_config
from iiwa_rl.envs.perturbed_robot import position_motor_gains
from iiwa_rl.envs.randomization import TERMS, available_terms
from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv
from iiwa_rl.envs.tasks.reach import IiwaReachEnv
from iiwa_rl.schema import ConfigError

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def pinned(**values) -> dict:
    return {name: {"range": [value, value]} for name, value in values.items()}


def typical_section(with_gripper: bool) -> dict:
    return {name: {"range": list(TERMS[name].typical)} for name in available_terms(with_gripper)}


def rollout(env, steps: int, seed: int = 11, action_seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(action_seed)
    observation, _ = env.reset(seed=seed)
    rows = [observation]
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        observation, *_ = env.step(action)
        rows.append(observation)
    return np.array(rows)


@pytest.mark.parametrize("name, env_class", [("reach", IiwaReachEnv), ("grasp", IiwaGraspEnv)])
def test_default_env_is_bit_identical_to_main(name, env_class):
    # Recorded with the same seeds and actions: reach at 24575d9 (before randomisation
    # existed), grasp re-recorded at f908757 (friction anchors, the TCP box's low z).
    # A deliberate physics change elsewhere re-records it; randomisation never may.
    expected = np.load(DATA / "nominal_observations.npz")[name]
    env = env_class()
    try:
        assert np.array_equal(rollout(env, 20), expected)
    finally:
        env.close()


@pytest.mark.parametrize("env_class", [IiwaReachEnv, IiwaGraspEnv])
def test_seeds_replay_exactly_with_every_term_on(env_class):
    section = typical_section(env_class.with_gripper)
    first = env_class(randomization=section)
    second = env_class(randomization=section)
    try:
        a = rollout(first, 30)
        again = rollout(first, 30)  # the same env, reused
        b = rollout(second, 30)
        other_seed = rollout(second, 30, seed=12)
    finally:
        first.close()
        second.close()
    assert np.array_equal(a, again) and np.array_equal(a, b)
    assert not np.array_equal(a, other_seed)


def test_values_go_to_info_at_reset_and_episode_end():
    env = IiwaReachEnv(randomization={"payload_mass": {"range": [0.5, 1.5]}}, episode_steps=3)
    try:
        _, info = env.reset(seed=0)
        drawn = info["randomization/payload_mass"]
        assert 0.5 <= drawn <= 1.5
        _, _, _, _, middle = env.step(np.zeros(7, np.float32))
        assert "randomization/payload_mass" not in middle  # only where the trainer reads it
        env.step(np.zeros(7, np.float32))
        *_, truncated, last = env.step(np.zeros(7, np.float32))
        assert truncated and last["randomization/payload_mass"] == drawn
    finally:
        env.close()


def test_mass_terms_change_the_bodies_masses_in_pybullet():
    nominal = IiwaReachEnv()
    heavy = IiwaReachEnv(randomization=pinned(link_mass_scale=1.2, payload_mass=2.0))
    try:
        heavy.reset(seed=0)
        client, body = heavy.sim.client, heavy.robot.body_id
        for link in heavy.robot.arm_joint_indices:
            mass = client.getDynamicsInfo(body, link)[0]
            base = nominal.sim.client.getDynamicsInfo(nominal.robot.body_id, link)[0]
            payload = 2.0 if link == heavy.robot.last_arm_link_index else 0.0
            assert mass == pytest.approx(1.2 * base + payload, rel=1e-12)
        heavy.reset(seed=1)  # drawn again from the nominal figures: no accumulation
        last = client.getDynamicsInfo(body, heavy.robot.last_arm_link_index)[0]
        base = nominal.sim.client.getDynamicsInfo(
            nominal.robot.body_id, nominal.robot.last_arm_link_index
        )[0]
        assert last == pytest.approx(1.2 * base + 2.0, rel=1e-12)
    finally:
        nominal.close()
        heavy.close()


def _setpoints(env, actions) -> np.ndarray:
    """The arm targets PyBullet's motors receive, one per robot period, over `actions`."""
    sent = []
    client = env.sim.client
    send = client.setJointMotorControlArray
    arm = list(env.robot.arm_joint_indices)

    def recording(body, joints, mode, **kwargs):
        if list(joints) == arm:
            sent.append(np.array(kwargs["targetPositions"]))
        return send(body, joints, mode, **kwargs)

    client.setJointMotorControlArray = recording
    env.reset(seed=3)
    sent.clear()
    for action in actions:
        env.step(action)
    return np.array(sent)


@pytest.mark.parametrize("periods", [1, 2, 3])
def test_command_latency_delays_the_setpoints_by_exactly_that_many_periods(periods):
    # joint_offset: the target depends on the action only, so both envs get the same targets.
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 7)).astype(np.float32)
    nominal = IiwaReachEnv(action_mode="joint_offset")
    delayed = IiwaReachEnv(
        action_mode="joint_offset", randomization=pinned(command_latency=periods)
    )
    try:
        expected = _setpoints(nominal, actions)
        got = _setpoints(delayed, actions)
    finally:
        nominal.close()
        delayed.close()
    assert np.array_equal(got[periods:], expected[:-periods])
    # Before the first target takes effect the arm holds its start pose.
    assert np.allclose(got[:periods], got[0])


def test_observation_latency_shows_the_joint_state_that_many_periods_old():
    periods = 3
    env = IiwaReachEnv(randomization=pinned(observation_latency=periods))
    try:
        env.reset(seed=0)
        states = []
        send = env._send_setpoint

        def recording(setpoint):
            send(setpoint)
            states.append(env.robot.joint_state()[0])

        env._send_setpoint = recording
        observation, *_ = env.step(np.full(7, 0.5, np.float32))
    finally:
        env.close()
    seen = env.robot.limits.lower + (observation[:7] + 1.0) / 2.0 * (
        env.robot.limits.upper - env.robot.limits.lower
    )
    assert np.allclose(seen, states[-1 - periods], atol=1e-6)
    assert not np.allclose(seen, states[-1], atol=1e-6)


def test_joint_bias_offsets_the_seen_positions_and_the_tcp_follows():
    bias = 0.01
    plain = IiwaReachEnv()
    biased = IiwaReachEnv(randomization=pinned(joint_position_bias=bias))
    try:
        a, _ = plain.reset(seed=4)
        b, _ = biased.reset(seed=4)
    finally:
        plain.close()
        biased.close()
    half_range = (plain.robot.limits.upper - plain.robot.limits.lower) / 2.0
    assert np.allclose((b[:7] - a[:7]) * half_range, bias, atol=1e-9)
    # The TCP in the observation is the controller's FK of the biased reading.
    assert not np.allclose(a[14:17], b[14:17], atol=1e-4)


def test_friction_term_loads_a_moving_joint_by_its_size():
    # Joint 7 turning at constant speed about a vertical axis: its motor's torque grows by
    # the friction's size (and a joint at rest gets no kick).
    def motor_torque(section):
        env = IiwaReachEnv(action_mode="joint_offset", randomization=section)
        try:
            env.reset(seed=0)
            torques = []
            for _ in range(12):
                env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32))
                torques.append(env.robot.applied_torques()[6])
            return np.array(torques)
        finally:
            env.close()

    base = motor_torque(pinned(joint_friction=0.0))
    rubbed = motor_torque(pinned(joint_friction=2.0))
    assert np.max(np.abs(rubbed - base)) > 0.5


@pytest.mark.parametrize("env_class", [IiwaReachEnv, IiwaGraspEnv])
def test_friction_axes_are_each_joints_axis_in_every_configuration(env_class):
    # The friction torques go to PyBullet in the links' own frames with axes computed once
    # (envs/perturbed_robot.py): that is right only if, at any configuration, they turn into
    # the world as the joint's axis (its child link's z) on both links the joint joins.
    import pybullet

    env = env_class(randomization=pinned(joint_friction=0.1))
    try:
        env.reset(seed=0)
        arm = env.perturbed_arm
        client, body = env.sim.client, env.robot.body_id
        rng = np.random.default_rng(3)
        limits = env.robot.limits

        def rotation(quaternion):
            return np.array(pybullet.getMatrixFromQuaternion(quaternion)).reshape(3, 3)

        for _ in range(5):
            env.robot.reset_joint_positions(rng.uniform(limits.lower, limits.upper))
            states = client.getLinkStates(body, arm.links, computeForwardKinematics=1)
            for axis, (in_child, in_parent) in enumerate(arm._friction_axes):
                joint_axis = rotation(states[axis][5])[:, 2]
                assert np.allclose(rotation(states[axis][1]) @ in_child, joint_axis, atol=1e-6)
                if axis == 0:
                    assert in_parent is None
                else:
                    turned = rotation(states[axis - 1][1]) @ in_parent
                    assert np.allclose(turned, joint_axis, atol=1e-6)
    finally:
        env.close()


def test_motor_gain_and_force_limit_terms_reach_pybullets_motor():
    env = IiwaReachEnv(
        randomization=pinned(
            actuator_stiffness_scale=1.5, actuator_damping_scale=2.0, force_limit_scale=0.5
        )
    )
    try:
        env.reset(seed=0)
        options = env.robot._motor_options
        # Damping above nominal: the position gain divided by it (position_motor_gains).
        assert options["positionGains"] == [pytest.approx(0.15 / 2.0)] * 7
        assert options["velocityGains"] == [pytest.approx(1.0)] * 7
        assert env.robot._arm_efforts == pytest.approx(list(env.robot.limits.effort * 0.5))
    finally:
        env.close()


def test_motor_gains_scale_the_servos_stiffness_and_damping():
    # Below nominal damping PyBullet's velocity gain is the damping; above it, the position
    # gain over the damping (the overdamped servo's K / D); the two meet at the nominal.
    assert position_motor_gains(1.0, 1.0) == (pytest.approx(0.1), pytest.approx(1.0))
    assert position_motor_gains(1.5, 0.5) == (pytest.approx(0.15), pytest.approx(0.5))
    assert position_motor_gains(0.75, 3.0) == (pytest.approx(0.025), pytest.approx(1.0))
    below = position_motor_gains(1.0, 1.0 - 1e-9)
    above = position_motor_gains(1.0, 1.0 + 1e-9)
    assert below == (pytest.approx(above[0]), pytest.approx(above[1]))
    with pytest.raises(ValueError, match="damping"):
        position_motor_gains(1.0, 0.0)


def _joint_4_on_a_ramp(damping_scale: float) -> dict[str, float]:
    """A4 follows a setpoint ramp (0.5 rad/s for 0.2 s, then held) on the bare motor, one
    setpoint per physics step: its lag on the ramp (s), how often its velocity changes sign,
    and its largest torque over its limit."""
    env = IiwaReachEnv(randomization=pinned(actuator_damping_scale=damping_scale))
    try:
        env.reset(seed=0)
        robot, rate = env.robot, 0.5
        start, _ = robot.joint_state()
        errors, velocities, torques = [], [], []
        for step in range(120):
            setpoint = start.copy()
            setpoint[3] += rate * min(step * 0.005, 0.2)
            robot.command_joint_positions(setpoint)
            env.sim.step(1)
            position, velocity = robot.joint_state()
            errors.append(setpoint[3] - position[3])
            velocities.append(velocity[3])
            torques.append(abs(robot.applied_torques()[3]) / robot.limits.effort[3])
        velocities = np.array(velocities)
        return {
            "lag_s": float(np.mean(errors[30:40])) / rate,
            "sign_changes": float(np.mean(velocities[1:] * velocities[:-1] < 0)),
            "peak_torque": max(torques),
        }
    finally:
        env.close()


def test_damping_term_slows_or_quickens_the_servo_and_never_makes_it_chatter():
    nominal = _joint_4_on_a_ramp(1.0)
    damped = _joint_4_on_a_ramp(2.0)
    light = _joint_4_on_a_ramp(0.5)
    # More damping: a servo that follows more slowly (PyBullet's velocity gain 2 instead
    # chattered: the velocity changed sign on 3 of 4 steps, A4 at its full torque).
    assert 1.5 * nominal["lag_s"] < damped["lag_s"] < 2.5 * nominal["lag_s"]
    assert damped["sign_changes"] < 0.05 and damped["peak_torque"] < 0.5
    # Less damping: a servo that follows more closely.
    assert light["lag_s"] < 0.8 * nominal["lag_s"]
    assert light["sign_changes"] < 0.1 and light["peak_torque"] < 0.5


def test_passing_pybullets_default_gains_changes_nothing():
    # The gain terms scale PyBullet's defaults: naming them must be the nominal motor.
    plain = IiwaReachEnv()
    named = IiwaReachEnv(randomization=pinned(actuator_stiffness_scale=1.0))
    try:
        named.reset(seed=0)
        named.robot.set_motor_parameters(0.1, 1.0)
        named.perturbed_arm.apply = lambda perturbation: None  # keep the explicit gains
        assert np.array_equal(rollout(plain, 10), rollout(named, 10))
    finally:
        plain.close()
        named.close()


def test_grasp_cube_terms_change_the_cube():
    env = IiwaGraspEnv(
        randomization=pinned(cube_mass=0.25, cube_size=0.05, cube_friction=0.6, finger_friction=1.4)
    )
    try:
        env.reset(seed=0)
        client = env.sim.client
        dynamics = client.getDynamicsInfo(env.cube_id, -1)
        assert dynamics[0] == pytest.approx(0.25)
        assert dynamics[1] == pytest.approx(0.6)
        assert client.getVisualShapeData(env.cube_id)[0][3][0] == pytest.approx(0.05)
        assert env.cube_rest_height == pytest.approx(0.025)
        for link in env.robot.finger_link_indices:
            assert client.getDynamicsInfo(env.robot.body_id, link)[1] == pytest.approx(1.4)
    finally:
        env.close()


def test_cube_position_bias_shifts_what_the_policy_sees_only():
    bias = 0.005
    plain = IiwaGraspEnv()
    biased = IiwaGraspEnv(randomization=pinned(cube_position_bias=bias))
    try:
        a, _ = plain.reset(seed=2)
        b, _ = biased.reset(seed=2)
        cube = slice(20, 23)  # cube_position in the grasp layout
        assert np.allclose(b[cube] - a[cube], bias, atol=1e-12)
        assert np.array_equal(plain._cube_position, biased._cube_position)
    finally:
        plain.close()
        biased.close()


@pytest.mark.parametrize("name", available_terms(with_gripper=False))
def test_every_reach_term_changes_the_episode(name):
    term = TERMS[name]
    value = term.typical[1] if term.typical[1] != 0 else term.typical[0]
    if name == "force_limit_scale":
        # The reach's gentle interpolator keeps every motor under 60 % of its datasheet
        # torque (A2 holds the arm with about 50 of its 320 N m): only a limit below that binds.
        value = 0.1
    if name == "payload_com_z":
        section = pinned(payload_mass=2.0, payload_com_z=0.1)
        baseline = pinned(payload_mass=2.0)
    else:
        section, baseline = pinned(**{name: value}), {}
    changed = IiwaReachEnv(randomization=section)
    nominal = IiwaReachEnv(randomization=baseline)
    try:
        assert not np.array_equal(rollout(changed, 15), rollout(nominal, 15))
    finally:
        changed.close()
        nominal.close()


def _write_config(tmp_path, randomization: str) -> Path:
    text = (ROOT / "configs" / "reach_ppo.yaml").read_text()
    text = text.replace(
        "    reward:\n      sparse: false",
        f"    randomization:\n{randomization}    reward:\n      sparse: false",
    )
    path = tmp_path / "dr.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "section, key, words",
    [
        (
            "      link_mass: {range: [0.8, 1.2]}\n",
            "env.kwargs.randomization.link_mass",
            "unknown term",
        ),
        (
            "      link_mass_scale: {range: [1.2, 0.8]}\n",
            "env.kwargs.randomization.link_mass_scale",
            "low <= high",
        ),
        ("      cube_mass: {range: [0.1, 0.2]}\n", "env.kwargs.randomization.cube_mass", "grasp"),
        (
            "      command_latency: {range: [0, 1.5]}\n",
            "env.kwargs.randomization.command_latency.range",
            "robot periods",
        ),
        (
            "      payload_mass: {range: [-1, 1]}\n",
            "env.kwargs.randomization.payload_mass.range",
            ">= 0",
        ),
    ],
)
def test_bad_sections_fail_before_work_naming_file_and_key(tmp_path, section, key, words):
    path = _write_config(tmp_path, section)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and key in message and words in message


def test_shipped_dr_config_loads():
    config = load_config(ROOT / "configs" / "reach_ppo_dr.yaml")
    assert "payload_mass" in config.env.kwargs["randomization"]


def test_an_export_runs_the_nominal_task_and_keeps_the_training_options_beside_it():
    """configs/grasp_ppo_dr.yaml trains with randomisation, corner episodes and episodes
    ended at a finger on the cube's top; the contract's env (what eval, the suite and the
    deployment benchmarks rebuild) has none of them, and keeps each as training_<name>."""
    import gymnasium as gym

    from iiwa_rl.export import build_contract

    config = load_config(ROOT / "configs" / "grasp_ppo_dr.yaml")
    env = gym.make(config.env.id, **config.env.kwargs)
    try:
        contract = build_contract(config, env)
    finally:
        env.close()
    for name in ("randomization", "randomization_ends_fraction", "end_on_finger_on_cube_top"):
        assert name not in contract["env_kwargs"]
    # The section in full (each term's distribution spelled out), the config's terms.
    assert set(contract["training_randomization"]) == set(config.env.kwargs["randomization"])
    assert contract["training_randomization_ends_fraction"] == 0.2
    assert contract["training_end_on_finger_on_cube_top"] is True
    nominal = gym.make(config.env.id, **contract["env_kwargs"]).unwrapped
    try:
        assert nominal.config.end_on_finger_on_cube_top is False
        assert not nominal.config.randomization
    finally:
        nominal.close()


def test_the_ends_fraction_draws_that_share_of_episodes_at_the_ends_of_every_range():
    section = {
        "payload_mass": {"range": [0.5, 1.5]},
        "actuator_damping_scale": {"range": [0.5, 2.0], "distribution": "log_uniform"},
        "command_latency": {"range": [0, 2]},
    }
    ends = {"payload_mass": (0.5, 1.5), "actuator_damping_scale": (0.5, 2.0)}

    def drawn(fraction: float) -> list[dict]:
        env = IiwaReachEnv(randomization=section, randomization_ends_fraction=fraction)
        try:
            return [env.reset(seed=seed)[1] for seed in range(200)]
        finally:
            env.close()

    def at_ends(info: dict) -> bool:
        return all(
            np.isclose(info[f"randomization/{name}"], values).any() for name, values in ends.items()
        ) and info["randomization/command_latency"] in (0, 2)

    assert all(at_ends(info) for info in drawn(1.0))
    assert not any(at_ends(info) for info in drawn(0.0))
    share = np.mean([at_ends(info) for info in drawn(0.3)])
    assert 0.2 < share < 0.4, share


def test_an_ends_fraction_outside_0_to_1_is_refused():
    with pytest.raises(ConfigError, match="randomization_ends_fraction"):
        IiwaReachEnv(randomization_ends_fraction=1.2)
