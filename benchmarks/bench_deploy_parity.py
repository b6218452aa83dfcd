"""What runs on the controller is what was trained: one policy, the same goals, three ways.

    python benchmarks/bench_deploy_parity.py assets/policies/reach/policy.onnx \\
        [--goals 100] [--seed 7] [--modes env sim udp] [--json out.json]

For goals drawn uniformly from the policy's training box (fixed seed), each from the home pose:
(a) env: an environment episode (IiwaReach-v0 with the contract's own parameters, no start
    spread) with the exported ONNX policy;
(b) sim: the controller loop (iiwa_deploy) against the in-process simulated arm in real time,
    as `iiwa-rl deploy --robot sim` runs it, for the episode's number of policy steps;
(c) udp: the controller loop over the UDP bridge against `iiwa-rl fake-robot` (the PyBullet
    arm) in its own process, started at the home pose for each goal.
Success is the env's: within the threshold for the hold time at the episode's end. Targets:
>= 97 % in (b) and (c) and within 2 points of (a); median final distance <= 5 mm in all three,
worst <= 20 mm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy"))


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_env(prepared, goals, steps) -> list[dict]:
    from iiwa_rl.deploy_sim import env_episode_with_goal
    from iiwa_rl.viz.policies import make_env

    contract = prepared.policy.contract
    env = make_env(contract.env_id, {**contract.raw["env_kwargs"], "initial_joint_noise": 0.0})
    try:
        return [
            env_episode_with_goal(env, lambda o: prepared.policy.act(o).copy(), goal)
            for goal in goals
        ]
    finally:
        env.close()


def _row(summary) -> dict:
    return {
        "success": bool(summary.success),
        "final_distance_m": float(summary.final_distance_m),
        "worst_last_second_m": float(summary.worst_distance_last_second_m),
        "faults": len(summary.faults),
        "missed_deadlines": summary.missed_deadlines,
    }


def run_sim(prepared, goals, steps) -> list[dict]:
    from iiwa_rl.deploy_sim import deploy_in_sim

    return [_row(deploy_in_sim(prepared, goal, steps, real_time=True)) for goal in goals]


def run_udp(prepared, goals, steps) -> list[dict]:
    from iiwa_deploy import ControlLoop, UdpRobot

    contract = prepared.policy.contract
    period = prepared.robot.robot_period_s
    simulation = contract.simulation
    rows = []
    for goal in goals:
        port = free_udp_port()
        backend = UdpRobot(("127.0.0.1", port), period)
        fake = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iiwa_rl.cli",
                "fake-robot",
                "--controller",
                f"127.0.0.1:{port}",
                "--period",
                str(period),
                "--physics-hz",
                str(simulation.get("physics_hz", 200.0)),
                "--solver-iterations",
                str(simulation.get("solver_iterations", 10)),
                "--q0",
                *map(str, contract.home_joint_positions.tolist()),
                "--duration",
                str(steps * contract.control_period_s + 20.0),
            ],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            loop = ControlLoop(
                prepared.policy, contract, prepared.robot, backend, goal, prepared.steps_per_action
            )
            rows.append(_row(loop.run(max_policy_steps=steps, first_state_timeout_s=30.0)))
        finally:
            backend.close()
            fake.kill()
            fake.wait()
    return rows


def summarize(rows: list[dict]) -> dict:
    distances = np.array([r["final_distance_m"] for r in rows])
    return {
        "episodes": len(rows),
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "median_final_mm": float(np.median(distances) * 1e3),
        "worst_final_mm": float(distances.max() * 1e3),
        "median_worst_last_second_mm": float(
            np.median([r["worst_last_second_m"] for r in rows]) * 1e3
        ),
        "faults": int(sum(r.get("faults", 0) for r in rows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--goals", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--modes", nargs="+", default=["env", "sim", "udp"])
    parser.add_argument("--json")
    args = parser.parse_args()

    from iiwa_deploy import prepare_policy

    prepared = prepare_policy(args.model)
    contract = prepared.policy.contract
    rng = np.random.default_rng(args.seed)
    goals = [rng.uniform(contract.goal_low, contract.goal_high) for _ in range(args.goals)]
    steps = int(contract.raw["env_kwargs"]["episode_steps"])
    runners = {"env": run_env, "sim": run_sim, "udp": run_udp}
    results = {}
    for mode in args.modes:
        start = time.perf_counter()
        rows = runners[mode](prepared, goals, steps)
        results[mode] = {**summarize(rows), "seconds": time.perf_counter() - start, "rows": rows}
        s = results[mode]
        print(
            f"{mode:>4}: success {s['success_rate']:.0%} over {s['episodes']} goals, final "
            f"distance median {s['median_final_mm']:.1f} mm, worst {s['worst_final_mm']:.1f} mm, "
            f"worst over the last second (median) {s['median_worst_last_second_mm']:.1f} mm, "
            f"faults {s['faults']} ({s['seconds']:.0f} s)",
            flush=True,
        )
    if "env" in results:
        for mode in ("sim", "udp"):
            if mode in results:
                gap = results[mode]["success_rate"] - results["env"]["success_rate"]
                print(f"{mode} - env success: {gap * 100:+.1f} points")
    if args.json:
        Path(args.json).write_text(json.dumps({"goals": [g.tolist() for g in goals], **results}))


if __name__ == "__main__":
    main()
