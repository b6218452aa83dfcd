"""tests/test_deploy_grasp.py::test_grasp_over_loopback_udp_lifts_the_cube, repeated, with the
plant's cube height at every robot period and each change of the gripper command; the traces
are printed for the runs whose cube is not up at the end.

    OMP_NUM_THREADS=1 python loopback.py RUNS [stop]    (stop: stop on success, as the test does)
"""

import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[3])
sys.path[:0] = [ROOT, ROOT + "/deploy"]

import numpy as np  # noqa: E402
from iiwa_deploy import ControlLoop, FakeRobot, UdpRobot, prepare_policy  # noqa: E402
from iiwa_deploy.config import load_robot_config  # noqa: E402
from iiwa_deploy.perception import PoseNoise, SimulatedPoseSensor  # noqa: E402
from iiwa_deploy.robot import UdpObjectListener  # noqa: E402

from iiwa_rl.deploy_sim import PyBulletPlant  # noqa: E402

ROBOT = load_robot_config()
POLICY = ROOT + "/assets/policies/grasp/policy.onnx"


def one_run(run: int, stop_on_success: bool) -> None:
    prepared = prepare_policy(POLICY)
    contract = prepared.policy.contract
    plant = PyBulletPlant.for_contract(contract, ROBOT.robot_period_s)
    plant.place_object([0.58, 0.07], 0.4)
    rest = contract.grasp.object_rest_height_m
    lifts: list[tuple[float, float]] = []  # (time, cube lift m) per robot period
    widths: list[tuple[float, float]] = []  # (time, commanded width m) at each change
    plant_step, plant_gripper = plant.step, plant.apply_gripper

    def step(dt):
        result = plant_step(dt)
        lifts.append((time.perf_counter(), float(plant.object_pose()[0][2]) - rest))
        return result

    def gripper(command):
        if not widths or widths[-1][1] != round(command.width_m, 4):
            widths.append((time.perf_counter(), round(command.width_m, 4)))
        return plant_gripper(command)

    plant.step, plant.apply_gripper = step, gripper
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
        stop_on_success=stop_on_success,
    )
    fake.stop()
    end_lift = float(plant.object_pose()[0][2]) - rest
    for closing in (fake, backend, objects, plant):
        closing.close()
    start = lifts[0][0]
    peak = max(range(len(lifts)), key=lambda i: lifts[i][1])
    print(
        f"run {run}: faults {len(summary.faults)}, outcome {summary.grasp['outcome']}, "
        f"policy steps {summary.policy_steps}, cube lift at the end {end_lift * 1000:.1f} mm, "
        f"peak {lifts[peak][1] * 1000:.0f} mm at {lifts[peak][0] - start:.2f} s",
        flush=True,
    )
    if end_lift < contract.grasp.lift_height_m:
        print("  gripper widths (s, m):", [(round(t - start, 2), w) for t, w in widths])
        print("  lift (s, mm):", [(round(t - start, 2), round(z * 1000)) for t, z in lifts[::20]])


if __name__ == "__main__":
    for run in range(int(sys.argv[1])):
        one_run(run, len(sys.argv) > 2 and sys.argv[2] == "stop")
