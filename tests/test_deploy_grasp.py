"""The grasp on the controller: the env's own IK in numpy, the object-pose and cell gates,
the grasp contract and robot configuration, and a closed-loop grasp over loopback UDP."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pybullet
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iiwa_deploy.actuation import GripperCommand  # noqa: E402
from iiwa_deploy.cell import CellGate  # noqa: E402
from iiwa_deploy.config import ConfigError, load_robot_config  # noqa: E402
from iiwa_deploy.contract import ContractError, check_compatibility, parse_contract  # noqa: E402
from iiwa_deploy.kinematics import (  # noqa: E402
    chain_jacobian,
    down_orientation,
    quaternion_from_matrix,
    rotation_error_floats,
    rotation_yaw,
)
from iiwa_deploy.perception import ObjectPose, ObjectPoseGate  # noqa: E402
from iiwa_deploy.protocol import (  # noqa: E402
    GRIPPER_FAULT,
    GRIPPER_FORCE_VALID,
    GRIPPER_READY,
    GripperState,
)
from iiwa_deploy.safety import SafetyMonitor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRASP_POLICY = ROOT / "assets" / "policies" / "grasp" / "policy.onnx"
ROBOT = load_robot_config()


@pytest.fixture(scope="module")
def grasp_env():
    from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv

    env = IiwaGraspEnv()
    yield env
    env.close()


@pytest.fixture(scope="module")
def grasp_contract():
    from iiwa_deploy.contract import read_contract
    from iiwa_deploy.policy import create_session

    return read_contract(create_session(GRASP_POLICY), GRASP_POLICY)


# ------------------------------------------------------------------ IK parity
def _pybullet_ik_step(env, action, current):
    """The env's Cartesian step as it was computed through PyBullet's Jacobian."""
    cfg, robot = env.config, env.robot
    target = np.minimum(
        np.maximum(current.tcp_position + cfg.action_scale * action[:3], env._workspace_low),
        env._workspace_high,
    )
    yaw = current.tcp_yaw + cfg.yaw_scale * action[3]
    orientation = pybullet.getQuaternionFromEuler([np.pi, 0.0, yaw])
    jacobian = robot.pybullet_jacobian(current.joint_positions)
    error = np.array(
        [
            *(target - current.tcp_position),
            *rotation_error_floats(current.tcp_orientation, orientation),
        ]
    )
    step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + 0.05**2 * np.eye(6), error)
    return robot.limits.clip(current.joint_positions + step, env.robot_config.target_margin_rad)


def test_numpy_ik_equals_the_pybullet_jacobian_path_to_1e9_on_random_states(grasp_env):
    env = grasp_env
    rng = np.random.default_rng(16)
    worst_target = worst_jacobian = 0.0
    for episode in range(4):
        env.reset(seed=episode)
        for _ in range(25):
            action = rng.uniform(-1, 1, 5).astype(np.float32)
            current = env._current
            numpy_target = env.cartesian_mapping.target(
                action,
                current.joint_positions,
                current.tcp_position,
                current.tcp_orientation,
                current.tcp_yaw,
            )
            worst_target = max(
                worst_target, np.abs(numpy_target - _pybullet_ik_step(env, action, current)).max()
            )
            worst_jacobian = max(
                worst_jacobian,
                np.abs(
                    chain_jacobian(env.cartesian_mapping.chain, current.joint_positions)
                    - env.robot.pybullet_jacobian(current.joint_positions)
                ).max(),
            )
            env.step(action)
    assert worst_target < 1e-9 and worst_jacobian < 1e-9
    # Random joint states over the whole range, not only those a grasp visits.
    for _ in range(50):
        q = rng.uniform(env.robot.limits.lower, env.robot.limits.upper)
        np.testing.assert_allclose(
            chain_jacobian(env.cartesian_mapping.chain, q),
            env.robot.pybullet_jacobian(q),
            atol=1e-9,
        )
    for yaw in rng.uniform(-4, 4, 50):
        np.testing.assert_allclose(
            down_orientation(yaw), pybullet.getQuaternionFromEuler([np.pi, 0.0, yaw]), atol=1e-15
        )


def test_controller_ik_from_its_own_forward_kinematics_lands_where_the_env_lands(
    grasp_env, grasp_contract
):
    """On the robot the TCP pose comes from the contract's chain, not from the simulator:
    the joint target differs from the env's only by forward kinematics' rounding."""
    from iiwa_deploy.actuation import CartesianTargetMapping

    env, grasp = grasp_env, grasp_contract.grasp
    controller = CartesianTargetMapping(
        grasp_contract.kinematics,
        grasp_contract.action_scale,
        grasp.yaw_scale,
        grasp.workspace_low,
        grasp.workspace_high,
        env.robot.limits.lower + ROBOT.target_margin_rad,
        env.robot.limits.upper - ROBOT.target_margin_rad,
    )
    rng = np.random.default_rng(5)
    env.reset(seed=3)
    for _ in range(30):
        action = rng.uniform(-1, 1, 5).astype(np.float32)
        current = env._current
        position, rotation = grasp_contract.kinematics.forward(current.joint_positions)
        controller_target = controller.target(
            action,
            current.joint_positions,
            position,
            quaternion_from_matrix(rotation),
            rotation_yaw(rotation),
        )
        env_target = env.cartesian_mapping.target(
            action,
            current.joint_positions,
            current.tcp_position,
            current.tcp_orientation,
            current.tcp_yaw,
        )
        np.testing.assert_allclose(controller_target, env_target, atol=1e-6)
        env.step(action)


# ------------------------------------------------------------------ object pose gates
class Latch:
    def __init__(self):
        self.reasons = []

    def latch(self, reason):
        self.reasons.append(reason)


def pose(sequence, position=(0.5, 0.0, 0.0225), source=1, latency=0.04, received=0.0, valid=True):
    return ObjectPose(
        sequence,
        source,
        np.array(position, dtype=float),
        np.array([0, 0, 0, 1.0]),
        latency,
        received,
        valid,
    )


def test_object_pose_gate_ignores_unknown_sources_nan_and_old_sequences():
    gate, safety = ObjectPoseGate(ROBOT.perception), Latch()
    gate.update(
        [
            pose(1, source=99),
            pose(2, position=(np.nan, 0.0, 0.0)),
            pose(3),
            pose(3, position=(0.6, 0.0, 0.0)),
            pose(4, valid=False, position=(0.9, 0.0, 0.0)),
        ],
        safety,
    )
    assert safety.reasons == [] and gate.ignored == 3 and gate.invalid == 1
    assert gate.pose.sequence == 3  # the invalid estimate is not used


def test_object_pose_gate_latches_on_a_jump_and_on_a_stale_pose():
    gate, safety = ObjectPoseGate(ROBOT.perception), Latch()
    gate.update(
        [pose(1), pose(2, position=(0.5 + ROBOT.perception.max_pose_jump_m + 0.01, 0, 0))], safety
    )
    assert len(safety.reasons) == 1 and "jumped" in safety.reasons[0]
    assert gate.pose.sequence == 1
    fresh = gate.fresh_pose(0.1, safety)
    assert fresh is not None and len(safety.reasons) == 1  # 40 ms latency + 100 ms: young enough
    assert gate.fresh_pose(ROBOT.perception.max_pose_age_s, safety) is None
    assert "object pose is 240 ms old" in safety.reasons[-1]


# ------------------------------------------------------------------ cell gates
@pytest.fixture
def cell(grasp_contract):
    safety = SafetyMonitor(ROBOT)
    return CellGate(
        grasp_contract.kinematics, ROBOT, grasp_contract.grasp.finger_tip_points_m, safety
    ), safety


def _joints_for_tcp(env, position, yaw=0.0):
    env.robot.reset_joint_positions(env.home_joint_positions)
    solution = env.home_joint_positions
    for _ in range(5):
        solution = env.robot.inverse_kinematics(
            np.asarray(position), down_orientation(yaw), solution
        )
        env.robot.reset_joint_positions(solution)
    return solution


def test_cell_gate_passes_the_home_pose_and_latches_outside_the_box(
    grasp_env, grasp_contract, cell
):
    gate, safety = cell
    assert gate.check_setpoint(grasp_contract.home_joint_positions) and not safety.latched
    outside = _joints_for_tcp(grasp_env, [0.55, 0.6, 0.3])  # y beyond the box's 0.45
    assert not gate.check_setpoint(outside)
    assert safety.latched and "outside the workspace box on y" in safety.latched_reason


def test_cell_gate_latches_when_the_finger_tips_go_below_the_table(grasp_env, grasp_contract):
    robot = ROBOT.replace(workspace=ROBOT.workspace.__class__(table_clearance_m=0.01))
    safety = SafetyMonitor(robot)
    gate = CellGate(
        grasp_contract.kinematics, robot, grasp_contract.grasp.finger_tip_points_m, safety
    )
    tip_depth = grasp_env.robot.finger_tip_depth
    # TCP above the floor, but its finger tips 5 mm below the table plane plus clearance.
    low = _joints_for_tcp(grasp_env, [0.55, 0.0, 0.01 + tip_depth - 0.005])
    assert not gate.check_setpoint(low)
    assert "a finger tip" in safety.latched_reason
    assert "below the table plane" in safety.latched_reason
    safety.reset()
    assert gate.check_setpoint(_joints_for_tcp(grasp_env, [0.55, 0.0, 0.05]))


def test_gripper_gates_refuse_too_much_force_and_a_gripper_fault(cell):
    gate, safety = cell
    assert gate.check_gripper_command(GripperCommand(0.04, 0.2, 40.0))
    assert not gate.check_gripper_command(GripperCommand(0.04, 0.2, 41.0))
    assert "force 41 is outside [0, 40]" in safety.latched_reason
    safety.reset()
    limit = ROBOT.gripper.max_force_n * ROBOT.gripper.force_tolerance_factor
    assert gate.check_gripper_state(GripperState(0.04, limit, GRIPPER_READY | GRIPPER_FORCE_VALID))
    assert not gate.check_gripper_state(
        GripperState(0.04, limit + 1, GRIPPER_READY | GRIPPER_FORCE_VALID)
    )
    safety.reset()
    assert not gate.check_gripper_state(GripperState(0.04, 0.0, GRIPPER_FAULT))
    assert "gripper reports a fault" in safety.latched_reason


# ------------------------------------------------------------------ contract and config
def test_grasp_contract_is_accepted_and_checked_against_the_cell(grasp_contract):
    assert grasp_contract.action_mode == "cartesian" and grasp_contract.grasp is not None
    assert check_compatibility(grasp_contract, ROBOT) == 8
    raw = dict(grasp_contract.raw)
    without = {k: v for k, v in raw.items() if k != "grasp"}
    with pytest.raises(ContractError, match="a cartesian policy needs the grasp section"):
        parse_contract(without)
    weak = ROBOT.replace(gripper=ROBOT.gripper.__class__(max_force_n=20.0))
    with pytest.raises(ContractError, match="gripper force \\(N\\) of 40"):
        check_compatibility(grasp_contract, weak)
    small = ROBOT.replace(workspace=ROBOT.workspace.__class__(low=(0.35, -0.45, 0.0)))
    with pytest.raises(ContractError, match="TCP target box"):
        check_compatibility(grasp_contract, small)


def test_robot_config_validates_the_cell_sections(tmp_path):
    text = (ROOT / "deploy" / "iiwa_deploy" / "robot_iiwa14.yaml").read_text()
    for bad, message in (
        ("perception:\n  source_ids: []\n", "perception.source_ids"),
        ("perception:\n  max_pose_age_s: 0\n", "perception.max_pose_age_s: must be a positive"),
        ("gripper:\n  max_force_n: -1\n", "gripper.max_force_n: must be a positive"),
        ("workspace:\n  low: [1, 0, 0]\n", "workspace.low"),
        ("workspace:\n  floor: 0\n", "workspace: unknown key 'floor'"),
    ):
        section = bad.split(":")[0]
        kept = text.split(f"\n{section}:")[0]
        rest = text.split(f"\n{section}:")[1].split("\n\n", 1)
        path = tmp_path / "robot.yaml"
        path.write_text(kept + "\n" + bad + ("\n" + rest[1] if len(rest) > 1 else ""))
        with pytest.raises(ConfigError, match=message):
            load_robot_config(path)


# ------------------------------------------------------------------ the loop
class NoPoses:
    def poll(self):
        return []


class GripperWithoutContactSensing:
    """A NumpyPlant arm with a gripper that reports width and force but no contacts."""

    with_gripper = True

    def __init__(self):
        from iiwa_deploy import NumpyPlant

        self.arm = NumpyPlant(ROBOT.velocity)
        self.reset, self.apply, self.step = self.arm.reset, self.arm.apply, self.arm.step

    def apply_gripper(self, command):
        pass

    def gripper_state(self):
        return GripperState(0.08, 0.0, GRIPPER_READY)


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        ("v1", "the robot speaks protocol version 1, which carries neither"),
        ("no contacts", "observes per-finger contacts (observation term finger_contacts)"),
    ],
)
def test_grasp_policy_refuses_a_robot_that_cannot_run_it(plant, reason):
    from iiwa_deploy import ControlLoop, FakeRobot, NumpyPlant, UdpRobot, prepare_policy

    prepared = prepare_policy(GRASP_POLICY)
    contract = prepared.policy.contract
    arm = NumpyPlant(ROBOT.velocity) if plant == "v1" else GripperWithoutContactSensing()
    with UdpRobot(("127.0.0.1", 0), ROBOT.robot_period_s) as backend:
        fake = FakeRobot(
            backend.local_address, arm, ROBOT.robot_period_s, contract.home_joint_positions
        ).start()
        try:
            loop = ControlLoop(
                prepared.policy,
                contract,
                ROBOT,
                backend,
                np.zeros(3),
                prepared.steps_per_action,
                object_source=NoPoses(),
            )
            summary = loop.run(max_policy_steps=5, first_state_timeout_s=5.0)
        finally:
            fake.close()
    assert summary.stop_reason == "refused" and summary.policy_steps == 0
    assert reason in summary.refusal
    assert fake.record.setpoints_received == 0


def test_grasp_over_loopback_udp_lifts_the_cube():
    """The shipped grasp policy through the controller over the UDP bridge (version 2, OBJECT
    messages on their own port, 2 mm camera noise, 40 ms latency) against the simulated grasp
    scene in real time: the controller judges the cube lifted and held, stops on it, and the
    simulator's own cube is still up in the fingers once the arm has braked to rest.

    It stops on success, as `iiwa-rl deploy --stop-on-success` does, because the policy does
    not always keep holding after the hold: in the env it still holds at the episode's end in
    90-91 % of episodes (benchmarks/RESULTS.md), and under load the deployed one was seen to
    open the gripper after the hold had counted and let the cube fall."""
    from iiwa_deploy import ControlLoop, FakeRobot, UdpRobot, prepare_policy
    from iiwa_deploy.perception import PoseNoise, SimulatedPoseSensor
    from iiwa_deploy.robot import UdpObjectListener

    from iiwa_rl.deploy_sim import PyBulletPlant

    prepared = prepare_policy(GRASP_POLICY)
    contract = prepared.policy.contract
    plant = PyBulletPlant.for_contract(contract, ROBOT.robot_period_s)
    plant.place_object([0.58, 0.07], 0.4)
    rest = contract.grasp.object_rest_height_m
    backend = UdpRobot(("127.0.0.1", 0), ROBOT.robot_period_s)
    objects = UdpObjectListener(("127.0.0.1", 0))
    camera = SimulatedPoseSensor(plant.object_pose, PoseNoise(0.002, latency_s=0.04), seed=1)
    fake = FakeRobot(
        backend.local_address,
        plant,
        ROBOT.robot_period_s,
        contract.home_joint_positions,
        pose_sensor=camera,
        object_address=objects.local_address,
        reset_plant=False,
    )
    try:
        fake.start()
        loop = ControlLoop(
            prepared.policy,
            contract,
            ROBOT,
            backend,
            np.zeros(3),
            prepared.steps_per_action,
            object_source=objects,
        )
        steps = int(contract.raw["env_kwargs"]["episode_steps"])
        summary = loop.run(
            max_policy_steps=steps,
            max_cycles=steps * 8 + 1000,
            first_state_timeout_s=10.0,
            stop_on_success=True,
        )
        fake.stop()
        true_lift = float(plant.object_pose()[0][2]) - rest
    finally:
        fake.close()
        backend.close()
        objects.close()
        plant.close()
    assert not summary.faults, summary.format()
    assert summary.grasp["outcome"] == "lifted and held" and summary.success, summary.format()
    assert summary.stop_reason == "success", summary.format()
    # The policy ran until the success latched (13 held steps after a lift of 0.1 m takes
    # well over 40 policy steps from home), streaming six setpoints a step.
    assert summary.policy_steps > 40
    assert fake.record.setpoints_received > summary.policy_steps * 6
    assert true_lift >= contract.grasp.lift_height_m


def test_controller_builds_the_grasp_observation_the_env_builds(grasp_env, grasp_contract):
    """Same robot and cube state: the controller's grasp observation (forward kinematics,
    the STATE's gripper, the object pose) equals the env's to float32 rounding."""
    from iiwa_deploy.grasp_loop import GraspSession, needs_finger_contacts
    from iiwa_deploy.kinematics import quaternion_from_euler
    from iiwa_deploy.observation import ObservationBuilder, ObservationConstants, ObservationInputs
    from iiwa_deploy.protocol import (
        GRIPPER_CONTACT_LEFT,
        GRIPPER_CONTACT_RIGHT,
        GRIPPER_CONTACTS_MEASURED,
    )
    from iiwa_deploy.robot import RobotState

    env, contract = grasp_env, grasp_contract
    session = GraspSession(
        contract, ROBOT, SafetyMonitor(ROBOT), NoPoses(), needs_finger_contacts(contract)
    )
    builder = ObservationBuilder(
        contract.observation_term_layout(),
        ObservationConstants(
            contract.lower,
            contract.upper,
            contract.velocity,
            contract.grasp.gripper.max_width_m,
            contract.grasp.object_rest_height_m,
        ),
    )
    rng = np.random.default_rng(8)
    for episode in range(6):
        env.reset(seed=episode)
        for _ in range(int(rng.integers(1, 40))):
            env.step(rng.uniform(-1, 1, 5).astype(np.float32))
        snapshot = env._current
        left, right = env._contacts
        status = GRIPPER_READY | GRIPPER_CONTACTS_MEASURED
        status |= (GRIPPER_CONTACT_LEFT if left else 0) | (GRIPPER_CONTACT_RIGHT if right else 0)
        state = RobotState(
            1,
            0.0,
            snapshot.joint_positions,
            snapshot.joint_velocities,
            protocol_version=2,
            gripper=GripperState(snapshot.gripper_width, 0.0, status),
        )
        session.on_state(state)
        cube = ObjectPose(
            1,
            1,
            env._cube_position.copy(),
            np.array(quaternion_from_euler(0, 0, env._cube_yaw)),
            0.0,
            0.0,
        )
        inputs = ObservationInputs(
            joint_positions=snapshot.joint_positions,
            joint_velocities=snapshot.joint_velocities,
            previous_action=env._previous_action.copy(),
        )
        session.fill_inputs(inputs, snapshot.joint_positions, cube)
        np.testing.assert_allclose(builder.build(inputs), env._observation(snapshot), atol=2e-6)
