"""A finger pressing on the grasp cube's top, in both engines: does the cube stay flat?

    OMP_NUM_THREADS=1 python benchmarks/bench_cube_press.py [--physics-hz 200 1000]

The grasp scene's cube (100 g, 4.5 cm) at rest on the table is pushed straight down at a
point of its top face, `offset` from the centre towards an edge, for 1.5 s: the force a
finger landing on the top puts there. Any such point lies inside the cube's footprint, so
a rigid cube on a rigid table cannot tip: the press only adds to the table's reaction.
Printed per engine, offset and force: the largest tilt (deg) and how far the centre sank
(mm). PyBullet runs the grasp env's own scene at each `--physics-hz` (200 is the env's;
the force is re-applied every physics step); MuJoCo the plant of iiwa_rl/sim/mujoco_plant.py
(its 1 ms step). A tilt of 30 deg or more counts as tipped over and ends that trial.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy"))

PRESS_SECONDS = 1.5
TIPPED_DEG = 30.0
CUBE_XY = (0.55, 0.0)


def _tilt_deg(rotation: np.ndarray) -> float:
    return float(np.degrees(np.arccos(min(1.0, rotation[2, 2]))))


def press_pybullet(physics_hz: float, offset_m: float, force_n: float) -> tuple[float, float]:
    from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv

    env = IiwaGraspEnv(physics_hz=physics_hz)
    try:
        env.reset(seed=0, options={"cube_position": np.array(CUBE_XY), "cube_yaw": 0.0})
        client, cube = env.sim.client, env.cube_id
        half = env.config.cube_size / 2.0
        rest = client.getBasePositionAndOrientation(cube)[0][2]
        tilt, height = 0.0, rest
        for _ in range(int(PRESS_SECONDS * physics_hz)):
            position, orientation = client.getBasePositionAndOrientation(cube)
            rotation = np.array(client.getMatrixFromQuaternion(orientation)).reshape(3, 3)
            point = np.array(position) + rotation @ np.array([offset_m, 0.0, half])
            client.applyExternalForce(
                cube, -1, [0.0, 0.0, -force_n], point.tolist(), client.WORLD_FRAME
            )
            client.stepSimulation()
            position, orientation = client.getBasePositionAndOrientation(cube)
            rotation = np.array(client.getMatrixFromQuaternion(orientation)).reshape(3, 3)
            tilt, height = max(tilt, _tilt_deg(rotation)), position[2]
            if tilt >= TIPPED_DEG:
                break
        return tilt, (rest - height) * 1000.0
    finally:
        env.close()


def press_mujoco(offset_m: float, force_n: float) -> tuple[float, float]:
    import mujoco

    from iiwa_rl.sim.iiwa14 import HOME_JOINT_POSITIONS
    from iiwa_rl.sim.mujoco_plant import DEFAULT_TIMESTEP_S, GraspScene, MujocoPlant

    size = 0.045
    scene = GraspScene(size, np.array(HOME_JOINT_POSITIONS), np.array(CUBE_XY), np.array(CUBE_XY))
    plant = MujocoPlant(0.005, grasp=scene)
    plant.place_object(np.array(CUBE_XY), 0.0)
    model, data = plant.model, plant.data
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "cube")
    rest = plant.object_pose()[0][2]
    tilt = 0.0
    force = np.array([0.0, 0.0, -force_n])
    for _ in range(int(PRESS_SECONDS / DEFAULT_TIMESTEP_S)):
        rotation = data.xmat[body].reshape(3, 3)
        lever = rotation @ np.array([offset_m, 0.0, size / 2.0])
        data.xfrc_applied[body, :3] = force  # at the centre of mass, plus its moment
        data.xfrc_applied[body, 3:] = np.cross(lever, force)
        mujoco.mj_step(model, data)
        tilt = max(tilt, _tilt_deg(data.xmat[body].reshape(3, 3)))
        if tilt >= TIPPED_DEG:
            break
    return tilt, (rest - plant.object_pose()[0][2]) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--physics-hz", type=float, nargs="+", default=[200.0, 1000.0])
    parser.add_argument("--offsets-mm", type=float, nargs="+", default=[0.0, 5.0, 10.0, 18.0])
    parser.add_argument("--forces-n", type=float, nargs="+", default=[10.0, 40.0, 100.0])
    args = parser.parse_args()
    engines = [
        (f"PyBullet {hz:g} Hz", lambda o, f, hz=hz: press_pybullet(hz, o, f))
        for hz in args.physics_hz
    ]
    try:
        import mujoco  # noqa: F401

        engines.append(("MuJoCo 1 ms", press_mujoco))
    except ImportError:
        print("(mujoco not installed: PyBullet only)")
    print("| engine | offset (mm) | force (N) | largest tilt (deg) | centre sank (mm) |")
    print("|---|---:|---:|---:|---:|")
    for name, press in engines:
        for offset_mm in args.offsets_mm:
            for force_n in args.forces_n:
                tilt, sank = press(offset_mm / 1000.0, force_n)
                verdict = "tipped over" if tilt >= TIPPED_DEG else f"{tilt:.1f}"
                sank_text = "-" if tilt >= TIPPED_DEG else f"{sank:.2f}"
                print(
                    f"| {name} | {offset_mm:g} | {force_n:g} | {verdict} | {sank_text} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
