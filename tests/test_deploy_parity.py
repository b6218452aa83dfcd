"""What runs on the controller is what was trained: the environment and the controller loop
build the same observation and send the same setpoints, against a real export's contract."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402, F401  (puts deploy/ on sys.path)
from iiwa_deploy import ControlLoop, RobotState, prepare_policy  # noqa: E402
from iiwa_deploy.observation import (  # noqa: E402
    ObservationBuilder,
    ObservationConstants,
    ObservationInputs,
)

ROOT = Path(__file__).resolve().parents[1]
REACH_POLICY = ROOT / "assets" / "policies" / "reach" / "policy.onnx"


@pytest.fixture(scope="module")
def prepared():
    return prepare_policy(REACH_POLICY)


@pytest.fixture
def env(prepared):
    from iiwa_rl.viz.policies import make_env

    environment = make_env(
        prepared.policy.contract.env_id, prepared.policy.contract.raw["env_kwargs"]
    )
    yield environment.unwrapped
    environment.close()


class ReplayRobot:
    """Plays back recorded robot states, one per call, and records the setpoints answered."""

    def __init__(self, states, period_s):
        self.period_s = period_s
        self._states = list(states)
        self.setpoints: list[np.ndarray] = []

    def receive_state(self, timeout_s):
        if not self._states:
            return None
        sequence, q, qd = self._states.pop(0)
        return RobotState(sequence, 0.0, q, qd)

    def send_setpoint(self, answer_to_sequence, joint_positions, fault):
        assert not fault
        self.setpoints.append(np.array(joint_positions))

    def close(self):
        pass


class ReplayPolicy:
    def __init__(self, actions):
        self._actions = list(actions)
        self.observations: list[np.ndarray] = []

    def act(self, observation):
        self.observations.append(np.array(observation))
        return self._actions.pop(0)


def record_env_episode(env, actions, seed):
    """The env's observations, and per robot period the setpoint sent and the state after it."""
    observations = [env.reset(seed=seed)[0]]
    setpoints, states = [], [env.robot.joint_state()]
    send = env._send_setpoint

    def recording_send(setpoint):
        setpoints.append(np.array(setpoint))
        send(setpoint)
        states.append(env.robot.joint_state())

    env._send_setpoint = recording_send
    for action in actions:
        observations.append(env.step(action)[0])
    env._send_setpoint = send
    return observations, setpoints, states


def test_env_and_controller_build_the_same_observation_from_the_same_state(prepared, env):
    contract = prepared.policy.contract
    rng = np.random.default_rng(3)
    controller_builder = ObservationBuilder(
        contract.observation_term_layout(),
        ObservationConstants(contract.lower, contract.upper, contract.velocity),
    )
    for _ in range(20):
        env.reset(seed=int(rng.integers(1 << 30)))
        for _ in range(int(rng.integers(1, 10))):
            env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        snapshot = env._current
        env_observation = env._observation(snapshot)
        # The robot and task state the env used, handed to the controller's side.
        inputs = ObservationInputs(
            joint_positions=snapshot.joint_positions.copy(),
            joint_velocities=snapshot.joint_velocities.copy(),
            tcp_position=snapshot.tcp_position.copy(),
            goal_position=env.goal_position.copy(),
            previous_action=env._previous_action.copy(),
        )
        np.testing.assert_allclose(
            controller_builder.build(inputs), env_observation, rtol=0, atol=1e-9
        )
        # With the controller's own forward kinematics for the TCP, as on the robot.
        inputs.tcp_position = contract.kinematics.tcp_position(inputs.joint_positions)
        np.testing.assert_allclose(controller_builder.build(inputs), env_observation, atol=1e-6)


def test_controller_sends_the_setpoints_the_env_sent_for_the_same_actions(prepared, env):
    contract = prepared.policy.contract
    rng = np.random.default_rng(11)
    actions = [rng.uniform(-1, 1, 7).astype(np.float32) for _ in range(12)]
    env_observations, env_setpoints, env_states = record_env_episode(env, actions, seed=5)
    steps = prepared.steps_per_action
    assert len(env_setpoints) == steps * len(actions)

    velocities = [np.asarray(qd) for _, qd in env_states]
    states = [(k + 1, np.asarray(q), velocities[k]) for k, (q, _) in enumerate(env_states)]
    # After the last action the loop brakes to rest: the arm stands still meanwhile.
    last_q = states[-1][1]
    states += [(len(states) + k + 1, last_q, np.zeros(7)) for k in range(200)]
    robot = ReplayRobot(states, prepared.robot.robot_period_s)
    policy = ReplayPolicy(actions)
    goal = env.goal_position.copy()
    loop = ControlLoop(policy, contract, prepared.robot, robot, goal, steps)
    summary = loop.run(max_policy_steps=len(actions))
    assert summary.policy_steps == len(actions) and not summary.faults

    sent = np.array(robot.setpoints[: len(env_setpoints)])
    np.testing.assert_allclose(sent, np.array(env_setpoints), rtol=0, atol=1e-12)
    # The loop saw what the env's policy saw, to the forward kinematics' rounding.
    for controller_observation, env_observation in zip(policy.observations, env_observations):
        np.testing.assert_allclose(controller_observation, env_observation, atol=1e-6)


def test_deployed_reach_lands_where_the_env_episode_lands(prepared):
    """Closed loop: the shipped policy through the controller against the simulated arm
    (training physics, simulated clock) ends where the env episode ends for the same goal."""
    from iiwa_rl.deploy_sim import deploy_in_sim, env_episode_with_goal
    from iiwa_rl.viz.policies import make_env

    contract = prepared.policy.contract
    env = make_env(contract.env_id, {**contract.raw["env_kwargs"], "initial_joint_noise": 0.0})
    rng = np.random.default_rng(7)
    steps = int(contract.raw["env_kwargs"]["episode_steps"])
    try:
        for _ in range(3):
            goal = rng.uniform(contract.goal_low, contract.goal_high)
            episode = env_episode_with_goal(env, lambda o: prepared.policy.act(o).copy(), goal)
            summary = deploy_in_sim(prepared, goal, steps, real_time=False)
            assert episode["success"] and summary.success
            assert summary.final_distance_m < contract.success_threshold_m
            assert abs(summary.final_distance_m - episode["final_distance_m"]) < 0.01
            assert summary.stop_reason == "policy_steps" and summary.policy_steps == steps
    finally:
        env.close()


def test_the_simulated_robot_keeps_its_own_clock_when_the_loop_is_late(prepared):
    """A late loop does not pause the simulated arm: the periods pass, holding the last
    setpoint, and the next state is the newest one."""
    import time

    from iiwa_rl.deploy_sim import PyBulletPlant, SimRobot

    contract = prepared.policy.contract
    plant = PyBulletPlant.for_contract(contract, 0.005)
    robot = SimRobot(plant, contract.home_joint_positions, real_time=True)
    try:
        first = robot.receive_state(1.0)
        robot.send_setpoint(first.sequence, contract.home_joint_positions + 0.05, False)
        second = robot.receive_state(1.0)
        time.sleep(0.0255)  # five periods late
        third = robot.receive_state(1.0)
        assert second.sequence == first.sequence + 1
        assert third.sequence >= second.sequence + 5
        assert robot.periods_without_answer >= 4
        assert plant.sim.physics_steps == third.sequence - 1  # one step per period lived
    finally:
        robot.close()


def test_after_the_stop_the_arm_stands_still(prepared):
    """The loop brakes to rest and waits for the arm to settle before it stops answering: the
    simulated arm, left holding the last setpoint, moves less than a millimetre afterwards
    (it travelled up to 27 mm on when the stream stopped mid-motion)."""
    from iiwa_deploy import ControlLoop

    from iiwa_rl.deploy_sim import PyBulletPlant, SimRobot

    contract = prepared.policy.contract
    plant = PyBulletPlant.for_contract(contract, prepared.robot.robot_period_s)
    robot = SimRobot(plant, contract.home_joint_positions, real_time=False)
    goal = contract.goal_low + np.array([0.05, 0.05, 0.55])  # far from home: the arm moves
    try:
        loop = ControlLoop(
            prepared.policy, contract, prepared.robot, robot, goal, prepared.steps_per_action
        )
        summary = loop.run(max_policy_steps=10)  # stops mid-motion
        assert summary.braking_travel_rad > 0.0 and not summary.faults
        tcp_at_stop = plant.tcp_position()
        for _ in range(200):  # one second holding the last setpoint
            plant.step(plant.period_s)
        assert np.linalg.norm(plant.tcp_position() - tcp_at_stop) < 1e-3
    finally:
        robot.close()


def test_the_fake_robot_process_plays_the_reach_arm_over_udp(prepared):
    """`iiwa-rl fake-robot` (its own process, no model: the bare arm) sends version 1 states
    the controller takes; a plant without a gripper must not speak version 2."""
    import subprocess

    from iiwa_deploy import UdpRobot

    backend = UdpRobot(("127.0.0.1", 0), 0.005)
    host, port = backend.local_address
    home = prepared.policy.contract.home_joint_positions
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iiwa_rl.cli",
            "fake-robot",
            "--controller",
            f"{host}:{port}",
            "--duration",
            "20",
            "--q0",
            *map(str, home.tolist()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        state = backend.receive_state(15.0)
        assert state is not None, fake.stderr.read1().decode() if fake.poll() else "no state"
        assert state.protocol_version == 1 and state.gripper is None
        np.testing.assert_allclose(state.joint_positions, home, atol=1e-3)
    finally:
        fake.kill()
        fake.wait()
        backend.close()
