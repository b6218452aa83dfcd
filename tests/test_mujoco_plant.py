"""The MuJoCo plant (iiwa_rl/sim/mujoco_plant.py): the same arm as PyBullet's, MuJoCo's own
servos, behind the deploy `Plant` interface; and the controller loop against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from iiwa_rl.envs.randomization import Perturbation  # noqa: E402
from iiwa_rl.sim import BulletSim, Iiwa14  # noqa: E402
from iiwa_rl.sim.iiwa14 import HOME_JOINT_POSITIONS  # noqa: E402
from iiwa_rl.sim.mujoco_plant import MujocoPlant  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 0.005


@pytest.fixture(scope="module")
def plant():
    return MujocoPlant(PERIOD)


def test_forward_kinematics_equals_pybullets_on_random_configurations(plant):
    sim = BulletSim(physics_hz=200.0)
    try:
        robot = Iiwa14(sim)
        rng = np.random.default_rng(0)
        for _ in range(100):
            q = rng.uniform(robot.limits.lower, robot.limits.upper)
            robot.reset_joint_positions(q)
            assert np.max(np.abs(plant.forward_kinematics(q) - robot.tcp_pose()[0])) < 1e-6
    finally:
        sim.close()


def test_servos_hold_home_and_carry_the_datasheet_torque_limits(plant):
    plant.perturb(Perturbation())
    plant.reset(HOME_JOINT_POSITIONS)
    for _ in range(100):
        plant.apply(HOME_JOINT_POSITIONS)
        q, qd = plant.step(PERIOD)
    assert np.max(np.abs(q - HOME_JOINT_POSITIONS)) < 1e-4 and np.max(np.abs(qd)) < 1e-3
    limits = plant.model.actuator_forcerange[:, 1]
    assert limits.tolist() == [320.0, 320.0, 176.0, 176.0, 110.0, 40.0, 40.0]
    assert plant.model.nu == 7  # one MuJoCo position actuator per joint, nothing else


def test_servos_follow_a_setpoint_ramp(plant):
    plant.perturb(Perturbation())
    plant.reset(HOME_JOINT_POSITIONS)
    target = HOME_JOINT_POSITIONS.copy()
    speed = np.full(7, 0.5)  # rad/s, below every interpolator limit
    for _ in range(200):
        target = target + speed * PERIOD
        plant.apply(target)
        q, qd = plant.step(PERIOD)
    assert np.max(np.abs(q - target)) < 0.03
    assert np.allclose(qd, speed, atol=0.1)


def test_servos_settle_on_a_setpoint_step_without_ringing(plant):
    # Critically damped at home: MuJoCo's own dampratio (its inertia taken with the arm
    # stretched up) left axes 1 and 3 at a ratio of 0.2 there, overshooting by half the step.
    plant.perturb(Perturbation())
    step = 0.02  # rad
    for axis in range(7):
        plant.reset(HOME_JOINT_POSITIONS)
        target = HOME_JOINT_POSITIONS.copy()
        target[axis] += step
        travel = []
        for _ in range(100):
            plant.apply(target)
            q, _ = plant.step(PERIOD)
            travel.append(q[axis] - HOME_JOINT_POSITIONS[axis])
        assert max(travel) < 1.05 * step, (axis, max(travel) / step)
        assert abs(travel[-1] - step) < 0.01 * step, axis


def test_perturb_scales_masses_adds_the_payload_and_resets_from_nominal(plant):
    nominal_mass = plant.model.body_mass.copy()
    perturbation = Perturbation(link_mass_scales=np.full(7, 1.2), payload_mass=2.0)
    plant.perturb(perturbation)
    link7 = plant.link7
    assert plant.model.body_mass[link7] == pytest.approx(1.2 * nominal_mass[link7] + 2.0)
    plant.perturb(Perturbation())
    assert np.array_equal(plant.model.body_mass, nominal_mass)


def test_the_shipped_reach_policy_reaches_through_the_controller_against_mujoco(plant):
    from iiwa_deploy import prepare_policy

    from iiwa_rl.deploy_sim import deploy_in_sim

    plant.perturb(Perturbation())
    prepared = prepare_policy(ROOT / "assets" / "policies" / "reach" / "policy.onnx")
    summary = deploy_in_sim(prepared, [0.55, 0.1, 0.45], 75, real_time=False, plant=plant)
    assert summary.success, summary.format()
    assert summary.final_distance_m < 0.02


def test_the_controller_runs_against_mujoco_through_the_robustness_suites_perturbed_plant(plant):
    # robustness --engine mujoco wraps the plant (command latency here): a wrapper that does
    # not say whether it has a gripper is an arm alone.
    from iiwa_deploy import prepare_policy

    from iiwa_rl.deploy_sim import deploy_in_sim
    from iiwa_rl.robustness import PerturbedPlant

    prepared = prepare_policy(ROOT / "assets" / "policies" / "reach" / "policy.onnx")
    perturbed = PerturbedPlant(
        plant, Perturbation(command_latency_periods=2), np.random.default_rng(0)
    )
    summary = deploy_in_sim(prepared, [0.55, 0.1, 0.45], 75, real_time=False, plant=perturbed)
    assert summary.success, summary.format()


# ------------------------------------------------------------------ the grasp scene
GRASP_POLICY = ROOT / "assets" / "policies" / "grasp"


@pytest.fixture(scope="module")
def grasp_prepared():
    from iiwa_deploy import prepare_policy

    return prepare_policy(GRASP_POLICY)


@pytest.fixture(scope="module")
def grasp_plant(grasp_prepared):
    return MujocoPlant.for_contract(grasp_prepared.policy.contract, PERIOD)


def _deploy_cube_pose(seed: int, grasp):
    """The cube pose `iiwa-rl deploy <grasp> --seed SEED` draws."""
    import argparse

    from iiwa_rl.deploy_sim import _cube_pose

    return _cube_pose(argparse.Namespace(cube=None, seed=seed), grasp)


def test_grasp_scene_stands_where_the_pybullet_scene_does(grasp_prepared, grasp_plant):
    from iiwa_rl.deploy_sim import PyBulletPlant

    contract = grasp_prepared.policy.contract
    bullet = PyBulletPlant.for_contract(contract, PERIOD)
    mujoco_plant = grasp_plant
    try:
        env, client = bullet.grasp_env, bullet.sim.client
        for seed in range(4):
            xy, yaw = _deploy_cube_pose(seed, contract.grasp)
            # The PyBullet plant's episode is the env's own reset for this seed and pose.
            bullet.place_object(xy, yaw, seed=seed)
            mujoco_plant.place_object(xy, yaw, seed=seed)
            (bullet_position, bullet_yaw), (position, cube_yaw) = (
                bullet.object_pose(),
                mujoco_plant.object_pose(),
            )
            assert np.allclose(position, bullet_position, atol=1e-9)
            assert position[2] == pytest.approx(contract.grasp.object_rest_height_m)
            assert cube_yaw == pytest.approx(bullet_yaw, abs=1e-9)
            # The arm at the same home, its TCP and both fingers where PyBullet has them.
            assert np.allclose(mujoco_plant.joint_state()[0], contract.home_joint_positions)
            assert np.allclose(mujoco_plant.tcp_position(), bullet.tcp_position(), atol=1e-6)
            for side, index in zip(("left", "right"), env.robot.finger_link_indices, strict=True):
                body = mujoco_plant.model.body(f"gripper_finger_{side}").id
                finger = client.getLinkState(env.robot.body_id, index)[4]
                assert np.allclose(mujoco_plant.data.xpos[body], finger, atol=1e-6)
            assert mujoco_plant.gripper_state().width_m == pytest.approx(0.08)
        # The same table top and cube (the URDFs' figures).
        model = mujoco_plant.model
        table = model.geom("table")
        top = model.geom_pos[table.id][2] + model.geom_size[table.id][2]
        assert top == pytest.approx(contract.grasp.table_height_m, abs=1e-12)
        assert model.body("cube").mass[0] == pytest.approx(
            client.getDynamicsInfo(env.cube_id, -1)[0]
        )
        # The cube rests: 0.5 s later it has not moved by more than 0.01 mm.
        for _ in range(100):
            mujoco_plant.step(PERIOD)
        assert np.allclose(mujoco_plant.object_pose()[0], position, atol=1e-5)
    finally:
        bullet.close()


def test_gripper_width_tracks_its_command_and_squeezes_with_the_commanded_force(
    grasp_prepared, grasp_plant
):
    from iiwa_deploy.actuation import GripperCommand

    plant = grasp_plant
    home = grasp_prepared.policy.contract.home_joint_positions
    plant.place_object([0.55, 0.0], 0.0)

    def run(periods):
        for _ in range(periods):
            plant.apply(home)
            plant.step(PERIOD)
        return plant.gripper_state()

    # Closing to 30 mm at 0.2 m/s: 1 mm of pad distance per 5 ms period (the fingers trail
    # their servos' setpoints by under a millimetre at that speed), then held there.
    plant.apply_gripper(GripperCommand(0.03, 0.2, 40.0))
    assert run(20).width_m == pytest.approx(0.08 - 0.02, abs=1.2e-3)
    assert run(60).width_m == pytest.approx(0.03, abs=0.2e-3)
    # Opening at half the speed: 0.5 mm per period.
    plant.apply_gripper(GripperCommand(0.08, 0.1, 40.0))
    assert run(40).width_m == pytest.approx(0.03 + 0.02, abs=1.2e-3)
    assert run(100).width_m == pytest.approx(0.08, abs=0.2e-3)
    # The cube put between the pads opened to 47 mm, the gripper closed on it with 20 N: both
    # fingers touch, the drives squeeze with the commanded force, and friction holds the
    # cube in the air.
    plant.apply_gripper(GripperCommand(0.047, 0.2, 20.0))
    run(40)
    cube = plant.cube_qpos_index
    plant.data.qpos[cube : cube + 3] = plant.tcp_position()
    plant.apply_gripper(GripperCommand(0.0, 0.2, 20.0))
    state = run(100)
    assert state.contacts == (True, True)
    assert state.force_n == pytest.approx(20.0, abs=0.5)
    assert state.width_m == pytest.approx(0.045, abs=0.5e-3)
    held_at = plant.object_pose()[0]
    run(100)
    assert np.allclose(plant.object_pose()[0], held_at, atol=0.5e-3)


def test_the_shipped_grasp_policy_lifts_the_cube_through_the_controller_against_mujoco(
    grasp_prepared, grasp_plant
):
    from iiwa_rl.deploy_sim import grasp_in_sim

    contract = grasp_prepared.policy.contract
    task = contract.grasp
    steps = int(contract.raw["env_kwargs"]["episode_steps"])
    summary = grasp_in_sim(
        grasp_prepared, [0.495, -0.06], 0.587, steps, real_time=False, plant=grasp_plant
    )
    assert summary.success, summary.format()
    assert summary.grasp["outcome"] == "lifted and held"
    # The simulator's own cube, not the camera's: still up and between both fingers at the
    # episode's end (the policy holds it to its time limit).
    position, _ = grasp_plant.object_pose()
    assert position[2] - task.object_rest_height_m >= task.lift_height_m
    assert grasp_plant.finger_contacts() == (True, True)


def test_iiwa_rl_deploy_runs_a_grasp_policy_against_mujocos_grasp_scene(capsys):
    # The command line's wiring (the grasp scene, the cube placed for --cube, the camera as
    # the object pose source), for one second of real time: the whole grasp is the
    # closed-loop test above, on the simulated clock that the machine's load cannot touch.
    from iiwa_deploy.cli import EXIT_REFUSED

    from iiwa_rl.cli import main

    code = main(
        ["deploy", str(GRASP_POLICY), "--robot", "mujoco", "--cube", "0.5", "-0.02", "0.1"]
        + ["--max-cycles", "200"]
    )
    out = capsys.readouterr().out
    assert code != EXIT_REFUSED and "refused" not in out, out
    assert "cube at x 0.500 y -0.020 m, yaw 0.100 rad" in out
    assert "grasp: " in out and "object poses used" in out


def test_a_cube_pose_the_scene_cannot_take_is_refused(plant, grasp_plant):
    with pytest.raises(ValueError, match="no grasp scene"):
        plant.place_object([0.55, 0.0], 0.0)
    with pytest.raises(ValueError, match="finite x, y"):
        grasp_plant.place_object([0.55, float("nan")], 0.0)
    with pytest.raises(ValueError, match="finite x, y"):
        grasp_plant.place_object([0.55, 0.0, 0.1], 0.0)
