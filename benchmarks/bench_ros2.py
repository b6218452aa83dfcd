"""The ROS 2 bridge and the safety layer, measured (issue 17).

1. Closed loop over DDS: the shipped reach policy (`python -m iiwa_deploy ros2`'s node)
   against the fake ros2_control arm (`iiwa-rl ros2-fake-arm`, the PyBullet arm at the
   training physics, its own process) at 100 Hz and 200 Hz: GOALS goals drawn uniformly from
   the training box (seed 7), each an episode of 75 policy steps from the home pose (the arm
   is driven back there with --move-to-home between goals). Reports success (held at the
   end, as the env judges it), compute p99 (state received -> command published), state
   interval p99 (the period jitter), and every setpoint checked against the setpoint limits
   and the interpolator's speed (per robot period).
2. Adversarial robot sides, for each bridge (UDP: FakeRobot; ROS 2: the fake arm): NaN and
   inf states, out-of-order and duplicated stamps, 1 kHz bursts, silence and resumption, a
   measured joint that jumps, an arm that stops following. Each scenario is its own run;
   reports the inputs tried, unsafe setpoints (beyond the limits, faster than the
   interpolator allows, or a hold that moves after the latch) and the fault latched.

    ROS_DOMAIN_ID=... python benchmarks/bench_ros2.py [--goals 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy")]
REACH = ROOT / "assets" / "policies" / "reach" / "policy.onnx"

from iiwa_deploy import load_robot_config, prepare_policy, run_prepared  # noqa: E402
from iiwa_deploy.fake_robot import FakeRobot, FaultInjection  # noqa: E402
from iiwa_deploy.robot import UdpRobot  # noqa: E402
from iiwa_deploy.ros2 import Ros2Robot, Ros2Settings  # noqa: E402

from iiwa_rl.deploy_sim import PyBulletPlant  # noqa: E402

EPISODE_POLICY_STEPS = 75


def read_setpoints(path: Path, joint_names) -> tuple[np.ndarray, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    setpoints = np.array([[float(r[f"setpoint_{n}"]) for n in joint_names] for r in rows])
    faults = np.array([r["fault_latched"] == "1" for r in rows], dtype=bool)
    return setpoints, faults


def unsafe_setpoints(setpoints: np.ndarray, faults: np.ndarray, robot) -> dict:
    """Setpoints beyond the setpoint limits, steps faster than the interpolator's cap in one
    robot period (robot-period semantics: each setpoint is one period of the robot's time),
    and holds that move once latched."""
    sent = setpoints[np.all(np.isfinite(setpoints), axis=1)]
    low = robot.lower + robot.setpoint_margin_rad
    high = robot.upper - robot.setpoint_margin_rad
    beyond = int(np.count_nonzero(np.any((sent < low) | (sent > high), axis=1)))
    steps = np.abs(np.diff(sent, axis=0))
    # The CSV keeps 6 decimals: two roundings of 5e-7 rad are not a speed.
    cap = robot.interpolator_velocity * robot.robot_period_s + 2e-6
    too_fast = int(np.count_nonzero(np.any(steps > cap, axis=1)))
    latched = setpoints[faults & np.all(np.isfinite(setpoints), axis=1)]
    moving_holds = (
        int(np.count_nonzero(np.any(np.abs(latched - latched[:1]) > 0, axis=1)))
        if len(latched)
        else 0
    )
    # A row of NaN is a state the loop did not answer (logged so); any other non-finite is sent.
    partly_non_finite = ~np.all(np.isfinite(setpoints), axis=1) & ~np.all(
        np.isnan(setpoints), axis=1
    )
    return {
        "beyond_limits": beyond,
        "too_fast": too_fast,
        "moving_holds": moving_holds,
        "non_finite": int(np.count_nonzero(partly_non_finite)),
    }


def start_fake_arm(
    rate: float, duration_s: float, misbehave: dict | None = None
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "iiwa_rl.cli",
        "ros2-fake-arm",
        "--update-rate",
        str(rate),
        "--duration",
        str(duration_s),
    ]
    if misbehave:
        command += ["--misbehave", json.dumps(misbehave)]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "deploy")]))
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def stop_fake_arm(arm: subprocess.Popen) -> str:
    arm.send_signal(signal.SIGINT)
    try:
        return arm.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        arm.kill()
        return arm.communicate()[0]


def closed_loop(rate: float, goals: np.ndarray) -> dict:
    robot = load_robot_config().replace(robot_period_s=1.0 / rate)
    prepared = prepare_policy(REACH, robot)
    arm = start_fake_arm(rate, duration_s=3600.0)
    backend = Ros2Robot(Ros2Settings(update_rate_hz=rate), robot.robot_period_s)
    episodes = []
    unsafe_total = {"beyond_limits": 0, "too_fast": 0, "moving_holds": 0, "non_finite": 0}
    setpoints_checked = 0
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for index, goal in enumerate(goals):
                prepared_goal = type(prepared)(
                    prepared.policy, prepared.robot, prepared.steps_per_action, np.asarray(goal)
                )
                log = Path(scratch) / f"run{index}.csv"
                # The duration only bounds a run that latched before its policy started.
                summary = run_prepared(
                    prepared_goal,
                    backend,
                    max_policy_steps=EPISODE_POLICY_STEPS,
                    duration_s=20.0,
                    move_to_home=True,
                    csv_path=log,
                    first_state_timeout_s=30.0,
                )
                setpoints, faults = read_setpoints(log, robot.joint_names)
                unsafe = unsafe_setpoints(setpoints, faults, robot)
                for key in unsafe_total:
                    unsafe_total[key] += unsafe[key]
                setpoints_checked += len(setpoints)
                episodes.append(
                    {
                        "goal": np.round(goal, 4).tolist(),
                        "success": summary.success,
                        "final_distance_mm": round(summary.final_distance_m * 1e3, 2),
                        "faults": [f.reason for f in summary.faults],
                        "compute_p99_ms": summary.compute.p99_s * 1e3,
                        "compute_max_ms": summary.compute.max_s * 1e3,
                        "interval_p99_ms": summary.state_interval.p99_s * 1e3,
                        "lateness_p99_ms": summary.lateness.p99_s * 1e3,
                        "inference_p99_ms": summary.inference.p99_s * 1e3,
                        "missed_deadlines": summary.missed_deadlines,
                        "cycles": summary.cycles,
                    }
                )
                print(
                    f"  {rate:g} Hz goal {index + 1:2d}: {'SUCCESS' if summary.success else 'miss'} "
                    f"{summary.final_distance_m * 1e3:5.1f} mm, compute p99 "
                    f"{summary.compute.p99_s * 1e3:.3f} ms, interval p99 "
                    f"{summary.state_interval.p99_s * 1e3:.3f} ms"
                    + (f", FAULT {summary.faults[0].reason}" if summary.faults else ""),
                    flush=True,
                )
    finally:
        backend.close()
        output = stop_fake_arm(arm)
    distances = [e["final_distance_mm"] for e in episodes]
    return {
        "update_rate_hz": rate,
        "goals": len(episodes),
        "success": sum(e["success"] for e in episodes),
        "median_final_distance_mm": float(np.median(distances)),
        "worst_final_distance_mm": float(np.max(distances)),
        "compute_p99_ms_median_over_runs": float(
            np.median([e["compute_p99_ms"] for e in episodes])
        ),
        "compute_p99_ms_worst_run": float(np.max([e["compute_p99_ms"] for e in episodes])),
        "interval_p99_ms_median_over_runs": float(
            np.median([e["interval_p99_ms"] for e in episodes])
        ),
        "interval_p99_ms_worst_run": float(np.max([e["interval_p99_ms"] for e in episodes])),
        "lateness_p99_ms_worst_run": float(np.max([e["lateness_p99_ms"] for e in episodes])),
        "faults": sum(bool(e["faults"]) for e in episodes),
        "setpoints_checked": setpoints_checked,
        "unsafe": unsafe_total,
        "fake_arm": output.strip().splitlines()[-1] if output.strip() else "",
        "episodes": episodes,
    }


# Each scenario: what the robot side does wrong (from cycle 300, 1.5 s in, the policy running)
# and the fault it must latch (None: dropped and counted, no fault).
SCENARIOS = {
    "nan_state": ({"nan_at_cycles": [300]}, "non-finite"),
    "inf_state": ({"inf_at_cycles": [300]}, "non-finite"),
    "out_of_order_and_duplicated": ({"reorder_every": 7, "duplicate_every": 5}, None),
    "burst_1khz": (
        {"burst_from_cycle": 300, "burst_cycles": 100, "burst_factor": 5},
        "arrive every",
    ),
    "silence_and_resumption": ({"silent_from_cycle": 300, "silent_cycles": 60}, "stale state"),
    "joint_jump": ({"jump_at_cycle": 300, "jump_rad": 1.0}, "tracking"),
    "stops_following": ({"stop_following_from_cycle": 300}, "tracking"),
}


def _scenario_result(name, expected, summary, log, robot, inputs) -> dict:
    setpoints, faults = read_setpoints(log, robot.joint_names)
    unsafe = unsafe_setpoints(setpoints, faults, robot)
    latched = summary.faults[0].reason if summary.faults else None
    ok = (latched is None) if expected is None else (latched is not None and expected in latched)
    return {
        "scenario": name,
        "inputs": inputs,
        "setpoints": int(len(setpoints)),
        "unsafe": unsafe,
        "fault": latched,
        "expected": expected,
        "as_expected": ok,
    }


def adversarial_udp(duration_s: float = 3.0) -> list[dict]:
    robot = load_robot_config()
    prepared = prepare_policy(REACH, robot)
    contract = prepared.policy.contract
    results = []
    for name, (faults, expected) in SCENARIOS.items():
        injection = FaultInjection(**faults)
        backend = UdpRobot(("127.0.0.1", 0), robot.robot_period_s)
        plant = PyBulletPlant.for_contract(contract, robot.robot_period_s)
        fake = FakeRobot(
            backend.local_address,
            plant,
            robot.robot_period_s,
            contract.home_joint_positions,
            injection,
        )
        fake.start(duration_s=duration_s + 5.0)
        with tempfile.TemporaryDirectory() as scratch:
            log = Path(scratch) / "run.csv"
            try:
                summary = run_prepared(prepared, backend, duration_s=duration_s, csv_path=log)
            finally:
                fake.close()
                backend.close()
                plant.close()
            inputs = summary.link["received"]
            results.append(_scenario_result(name, expected, summary, log, robot, inputs))
        print(f"  udp  {name}: {results[-1]}", flush=True)
    return results


def adversarial_ros2(rate: float = 200.0, duration_s: float = 3.0) -> list[dict]:
    robot = load_robot_config().replace(robot_period_s=1.0 / rate)
    prepared = prepare_policy(REACH, robot)
    results = []
    for name, (faults, expected) in SCENARIOS.items():
        arm = start_fake_arm(rate, duration_s + 8.0, faults)
        backend = Ros2Robot(Ros2Settings(update_rate_hz=rate), robot.robot_period_s)
        with tempfile.TemporaryDirectory() as scratch:
            log = Path(scratch) / "run.csv"
            try:
                summary = run_prepared(
                    prepared,
                    backend,
                    duration_s=duration_s,
                    csv_path=log,
                    first_state_timeout_s=30.0,
                )
            finally:
                stats = backend.stats
                backend.close()
                stop_fake_arm(arm)
            results.append(_scenario_result(name, expected, summary, log, robot, stats.received))
        print(f"  ros2 {name}: {results[-1]}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--goals", type=int, default=20)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0])
    parser.add_argument("--skip-closed-loop", action="store_true")
    parser.add_argument("--skip-adversarial", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    prepared = prepare_policy(REACH, load_robot_config())
    contract = prepared.policy.contract
    goals = np.random.default_rng(7).uniform(contract.goal_low, contract.goal_high, (args.goals, 3))
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "goals_seed": 7}
    if not args.skip_closed_loop:
        report["closed_loop"] = []
        for rate in args.rates:
            result = closed_loop(rate, goals)
            report["closed_loop"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "episodes"}), flush=True)
    if not args.skip_adversarial:
        report["adversarial_udp"] = adversarial_udp()
        report["adversarial_ros2"] = adversarial_ros2()
        for bridge in ("adversarial_udp", "adversarial_ros2"):
            rows = report[bridge]
            print(
                f"{bridge}: {sum(r['inputs'] for r in rows)} inputs, "
                f"{sum(sum(r['unsafe'].values()) for r in rows)} unsafe setpoints, "
                f"{sum(r['as_expected'] for r in rows)}/{len(rows)} scenarios latched as expected"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
