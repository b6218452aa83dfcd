"""The simulation layer against the KUKA LBR iiwa 14 R820 datasheet (shared/iiwa14.md):
kinematics, limits, masses, the generated URDFs, and the robot's own math."""

from __future__ import annotations

import importlib.util
import math
import xml.etree.ElementTree as ElementTree

import numpy as np
import pybullet
import pytest
from iiwa_deploy.kinematics import (
    KinematicChain,
    differential_ik_step,
    quaternion_multiply,
    rotation_error_floats,
)

from iiwa_rl.sim import BulletSim, Iiwa14, JointLimits, asset_path
from iiwa_rl.sim.iiwa14 import ARM_JOINT_NAMES, HOME_JOINT_POSITIONS

# The datasheet table, copied by hand so that a wrong edit of build_urdfs.py cannot also
# change what it is checked against: range (deg, symmetric), speed (deg/s), torque (N m).
DATASHEET = {
    "iiwa_joint_1": (170, 85, 320),
    "iiwa_joint_2": (120, 85, 320),
    "iiwa_joint_3": (170, 100, 176),
    "iiwa_joint_4": (120, 75, 176),
    "iiwa_joint_5": (170, 130, 110),
    "iiwa_joint_6": (120, 135, 40),
    "iiwa_joint_7": (175, 135, 40),
}
BASE_TO_FLANGE = 1.306  # m, straight up at the zero configuration
SHOULDER_HEIGHT = 0.36  # base to A2, m
UPPER_ARM = 0.42  # A2 to A4, m
FOREARM_TO_FLANGE = 0.40 + 0.126  # A4 to A6 plus A6 to the flange, m
GRIPPER_TCP_DEPTH = 0.075  # flange to the gripper's TCP along the flange axis, m


@pytest.fixture(scope="module")
def arm():
    sim = BulletSim(physics_hz=240.0)
    robot = Iiwa14(sim)
    yield robot
    sim.close()


@pytest.fixture(scope="module")
def gripper_arm():
    sim = BulletSim(physics_hz=240.0)
    robot = Iiwa14(sim, with_gripper=True)
    yield robot
    sim.close()


def _place(robot: Iiwa14, joint_positions) -> tuple[np.ndarray, np.ndarray]:
    robot.reset_joint_positions(np.asarray(joint_positions, dtype=float))
    return robot.tcp_pose()


def rotation_error(current, target) -> np.ndarray:
    """Rotation vector (axis times angle, rad) turning `current` into `target`."""
    return np.array(rotation_error_floats(current, target))


def _z_axis(quaternion: np.ndarray) -> np.ndarray:
    return np.asarray(pybullet.getMatrixFromQuaternion(list(quaternion))).reshape(3, 3)[:, 2]


# ----------------------------------------------------------------- kinematics
def test_flange_is_1306_mm_straight_up_at_zero(arm):
    position, orientation = _place(arm, np.zeros(7))
    np.testing.assert_allclose(position, [0.0, 0.0, BASE_TO_FLANGE], atol=1e-6)
    np.testing.assert_allclose(_z_axis(orientation), [0.0, 0.0, 1.0], atol=1e-9)


@pytest.mark.parametrize(
    "joint, height, horizontal",
    [
        # A2 at 90 deg: everything above the shoulder lies flat.
        (1, SHOULDER_HEIGHT, UPPER_ARM + FOREARM_TO_FLANGE),
        # A4 at 90 deg: the forearm lies flat at the elbow's height.
        (3, SHOULDER_HEIGHT + UPPER_ARM, FOREARM_TO_FLANGE),
    ],
)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_link_lengths_match_r820(arm, joint, height, horizontal, sign):
    q = np.zeros(7)
    q[joint] = sign * math.pi / 2
    position, _ = _place(arm, q)
    assert position[2] == pytest.approx(height, abs=1e-6)
    assert math.hypot(position[0], position[1]) == pytest.approx(horizontal, abs=1e-6)


def test_gripper_tcp_is_75_mm_out_along_the_flange_axis(arm, gripper_arm):
    rng = np.random.default_rng(0)
    configurations = [np.zeros(7), HOME_JOINT_POSITIONS] + [
        rng.uniform(arm.limits.lower, arm.limits.upper) for _ in range(5)
    ]
    for q in configurations:
        flange, flange_orientation = _place(arm, q)
        tcp, tcp_orientation = _place(gripper_arm, q)
        expected = flange + GRIPPER_TCP_DEPTH * _z_axis(flange_orientation)
        np.testing.assert_allclose(tcp, expected, atol=1e-6, err_msg=f"q = {q}")
        # The gripper adds no rotation: its frame is the flange's.
        assert abs(float(np.dot(tcp_orientation, flange_orientation))) == pytest.approx(1.0)


def test_zero_configuration_gripper_tcp(gripper_arm):
    position, _ = _place(gripper_arm, np.zeros(7))
    np.testing.assert_allclose(position, [0, 0, BASE_TO_FLANGE + GRIPPER_TCP_DEPTH], atol=1e-6)


# --------------------------------------------------------------------- limits
def _urdf_joints(name: str) -> dict[str, ElementTree.Element]:
    root = ElementTree.parse(asset_path("urdf", name)).getroot()
    return {joint.get("name"): joint for joint in root.findall("joint")}


@pytest.mark.parametrize("urdf", ["iiwa14.urdf", "iiwa14_gripper.urdf"])
def test_urdf_limits_equal_the_datasheet(urdf):
    joints = _urdf_joints(urdf)
    for name, (range_deg, speed_deg, torque) in DATASHEET.items():
        limit = joints[name].find("limit")
        assert float(limit.get("lower")) == pytest.approx(-math.radians(range_deg), abs=1e-9)
        assert float(limit.get("upper")) == pytest.approx(math.radians(range_deg), abs=1e-9)
        assert float(limit.get("velocity")) == pytest.approx(math.radians(speed_deg), abs=1e-9)
        assert float(limit.get("effort")) == pytest.approx(torque)


def test_robot_reads_the_datasheet_limits_through_pybullet(gripper_arm):
    # Not pybullet_data's placeholders (300 N m and 10 rad/s on every axis).
    limits = gripper_arm.limits
    table = np.array([DATASHEET[name] for name in ARM_JOINT_NAMES], dtype=float)
    np.testing.assert_allclose(limits.upper, np.radians(table[:, 0]), atol=1e-9)
    np.testing.assert_allclose(limits.lower, -np.radians(table[:, 0]), atol=1e-9)
    np.testing.assert_allclose(limits.velocity, np.radians(table[:, 1]), atol=1e-9)
    np.testing.assert_allclose(limits.effort, table[:, 2])


def test_total_mass_is_about_30_kg(arm):
    root = ElementTree.parse(asset_path("urdf", "iiwa14.urdf")).getroot()
    link_masses = {
        link.get("name"): float(link.find("inertial/mass").get("value"))
        for link in root.findall("link")
    }
    arm_mass = sum(m for name, m in link_masses.items() if name.startswith("iiwa_link_"))
    assert arm_mass == pytest.approx(30.61, abs=0.01)
    assert abs(arm_mass - 29.9) < 1.0  # the datasheet's "about 29.9 kg"
    # PyBullet loads the moving links with these masses (a fixed base reads as mass 0).
    client = arm.client
    moving = sum(
        client.getDynamicsInfo(arm.body_id, link)[0]
        for link in range(client.getNumJoints(arm.body_id))
    )
    assert moving == pytest.approx(arm_mass - link_masses["iiwa_link_0"], abs=0.01)


def test_committed_urdfs_are_what_build_urdfs_writes():
    script = asset_path("urdf", "build_urdfs.py")
    spec = importlib.util.spec_from_file_location("build_urdfs", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"iiwa14.urdf", "iiwa14_gripper.urdf", "cube.urdf", "table.urdf"}
    for name, text in built.items():
        committed = asset_path("urdf", name).read_text()
        assert committed == text, f"{name} differs from build_urdfs.py: run it and commit"


# -------------------------------------------------------------- robot methods
def test_joint_limits_clip():
    limits = JointLimits(
        lower=np.array([-1.0, -2.0]),
        upper=np.array([1.0, 4.0]),
        velocity=np.ones(2),
        effort=np.ones(2),
    )
    np.testing.assert_allclose(limits.clip(np.array([5.0, -5.0])), [1.0, -2.0])
    np.testing.assert_allclose(limits.clip(np.array([5.0, -5.0]), margin=0.5), [0.5, -1.5])
    np.testing.assert_allclose(limits.clip(np.array([0.2, 3.0])), [0.2, 3.0])


def test_quaternion_multiply_matches_pybullet():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=4), rng.normal(size=4)
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        _, expected = pybullet.multiplyTransforms([0, 0, 0], list(a), [0, 0, 0], list(b))
        product = np.array(quaternion_multiply(a, b))
        # q and -q are the same rotation; PyBullet may return either.
        sign = 1.0 if float(np.dot(product, expected)) >= 0.0 else -1.0
        np.testing.assert_allclose(sign * product, expected, atol=1e-6)


def test_rotation_error():
    identity = np.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(rotation_error(identity, identity), np.zeros(3), atol=1e-12)
    about_z = np.array(pybullet.getQuaternionFromEuler([0.0, 0.0, 0.3]))
    np.testing.assert_allclose(rotation_error(identity, about_z), [0, 0, 0.3], atol=1e-9)
    np.testing.assert_allclose(rotation_error(about_z, identity), [0, 0, -0.3], atol=1e-9)
    # 350 degrees one way is 10 degrees the other.
    far = np.array(pybullet.getQuaternionFromEuler([0.0, 0.0, math.radians(350)]))
    np.testing.assert_allclose(rotation_error(identity, far), [0, 0, -math.radians(10)], atol=1e-9)


def test_differential_ik_converges_to_a_nearby_pose(gripper_arm):
    robot = gripper_arm
    tcp, orientation = _place(robot, HOME_JOINT_POSITIONS)
    target = tcp + np.array([0.03, -0.02, 0.025])
    start_error = np.linalg.norm(target - tcp)
    q = HOME_JOINT_POSITIONS.copy()
    errors = []
    # The controller's numpy IK on the chain a contract carries, against PyBullet's arm.
    chain = KinematicChain.from_contract(robot.kinematic_chain())
    for _ in range(6):
        position, current_orientation = _place(robot, q)
        q = differential_ik_step(
            chain,
            q,
            position,
            current_orientation,
            target,
            orientation,
            robot.limits.lower,
            robot.limits.upper,
        )
        assert np.all(q >= robot.limits.lower) and np.all(q <= robot.limits.upper)
        errors.append(np.linalg.norm(target - _place(robot, q)[0]))
    assert errors[0] < 0.2 * start_error  # one step does most of a short move
    assert errors[-1] < 1e-4
    final_orientation = robot.tcp_pose()[1]
    assert np.linalg.norm(rotation_error(final_orientation, orientation)) < 1e-3


def test_joint_speed_is_clamped_after_each_physics_step(arm):
    """PyBullet's motor caps only the speed it drives to; the robot clamps what the dynamics
    add (see Iiwa14._limit_joint_speeds) and records how far over the limit it was."""
    arm.reset_joint_positions(HOME_JOINT_POSITIONS)
    joint = 2  # A3, 100 deg/s
    limit = arm.limits.velocity[joint]
    arm.client.resetJointState(arm.body_id, arm.arm_joint_indices[joint], 0.0, 2.0 * limit)
    arm.peak_speed_fraction = 0.0
    arm.sim.step(1)
    _, velocities = arm.joint_state()
    assert np.all(np.abs(velocities) <= arm.limits.velocity * (1 + 1e-9))
    assert 1.5 < arm.peak_speed_fraction <= 2.0 + 1e-6
    # The clamp's own reading (what an env's step and the randomised friction use instead
    # of a second read) carries the clamped speed, as a fresh read does.
    clamped = arm.arm_speeds_after_step()
    assert clamped[joint] == limit
    np.testing.assert_array_equal(arm.state_after_step()[1], velocities)
    # And after the next step, clamped or not.
    arm.sim.step(1)
    np.testing.assert_array_equal(arm.arm_speeds_after_step(), arm.joint_state()[1])
    # A teleport outdates it.
    arm.reset_joint_positions(HOME_JOINT_POSITIONS)
    assert arm.arm_speeds_after_step() is None


@pytest.mark.parametrize("joint", [0, 6])  # A1 (85 deg/s) and A7 (135 deg/s)
def test_position_motor_holds_each_axis_to_its_datasheet_speed(arm, joint):
    """The motors get their datasheet speed once, at construction; every later command goes
    through setJointMotorControlArray, which cannot carry it. A far target must still be
    approached at the datasheet speed by the motor itself, not by the after-step clamp."""
    arm.reset_joint_positions(HOME_JOINT_POSITIONS)
    target = HOME_JOINT_POSITIONS.copy()
    target[joint] += 1.0
    arm.command_joint_positions(target)
    limit = arm.limits.velocity[joint]
    arm.peak_speed_fraction = 0.0
    speeds = []
    for _ in range(60):  # 0.25 s at 240 Hz
        arm.sim.step(1)
        speeds.append(abs(arm.joint_state()[1][joint]))
    # The motor holds the speed itself, to the solver's precision; the clamp trims the rest.
    assert arm.peak_speed_fraction <= 1.01
    assert 0.95 * limit < max(speeds) <= limit * (1 + 1e-9)


def test_setpoint_commands_send_the_joint_range_clip(arm):
    """The command stream's floats are clipped in floats (command_setpoint) and arrays go
    through the same path: both send exactly what JointLimits.clip gives."""
    rng = np.random.default_rng(2)
    limits = arm.limits
    for _ in range(50):
        targets = rng.uniform(limits.lower - 0.5, limits.upper + 0.5)
        expected = limits.clip(targets)
        sent = arm.command_setpoint(targets.tolist())
        assert sent == expected.tolist()
        np.testing.assert_array_equal(arm.command_joint_positions(targets), expected)
    with pytest.raises(ValueError, match="expected 7 joint position targets"):
        arm.command_joint_positions(np.zeros(6))


def test_simulations_are_independent():
    first, second = BulletSim(), BulletSim()
    try:
        robot_a, robot_b = Iiwa14(first), Iiwa14(second)
        robot_a.reset_joint_positions(np.zeros(7))
        robot_b.reset_joint_positions(np.zeros(7))
        robot_a.command_joint_positions(np.full(7, 0.3))
        first.step(60)
        assert np.abs(robot_a.joint_state()[0]).max() > 0.1
        np.testing.assert_allclose(robot_b.joint_state()[0], np.zeros(7), atol=1e-12)
    finally:
        first.close()
        second.close()


def test_bullet_sim_refuses_a_bad_rate():
    with pytest.raises(ValueError, match="physics_hz"):
        BulletSim(physics_hz=0.0)
