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
