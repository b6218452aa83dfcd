"""Deployment timing: policy inference latency and the control loop against the simulator.

    python benchmarks/bench_deploy.py MODEL.onnx RUN_DIR [--calls 20000] [--seconds 20]

1. Inference at batch 1: ONNX Runtime, set up as the controller runtime sets it up (one
   thread, no spinning, warmed up), against torch eager on the same policy (one thread,
   no_grad): p50 / p99 / max over `--calls` calls, in one run. Target: ONNX p99 <= 100 us.
2. The real-time loop (iiwa_deploy) against the PyBullet arm served in real time, at 4 ms
   and 1 ms robot periods: cycle compute (state received -> setpoint sent) p99 as a share
   of the period (target <= 30% at 4 ms) and missed deadlines per 10,000 cycles.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy"))


def percentiles(samples_s: np.ndarray) -> dict[str, float]:
    us = np.asarray(samples_s) * 1e6
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
    }


def inference_latency(model_path: str, run_dir: str, calls: int) -> dict:
    from iiwa_deploy import load_robot_config
    from iiwa_deploy.policy import load_policy

    from iiwa_rl.checkpoint import build_policy, load_run
    from iiwa_rl.export import DeployablePolicy

    policy, _ = load_policy(model_path, load_robot_config())
    size = policy.contract.observation_size
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(calls, size)).astype(np.float32)

    onnx_times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        policy.act(observations[i])
        onnx_times[i] = time.perf_counter() - start

    torch.set_num_threads(1)
    config, state = load_run(run_dir, "best")
    actor, normalizer = build_policy(config, state)
    scale, offset = normalizer.scale_and_offset()
    module = DeployablePolicy(actor, scale, offset, normalizer.clip, normalizer.enabled).eval()
    torch_times = np.empty(calls)
    with torch.no_grad():
        for i in range(200):
            module(torch.from_numpy(observations[i : i + 1]))
        for i in range(calls):
            start = time.perf_counter()
            module(torch.from_numpy(observations[i : i + 1])).numpy()
            torch_times[i] = time.perf_counter() - start
    return {"onnxruntime": percentiles(onnx_times), "torch_eager": percentiles(torch_times)}


def control_loop(model_path: str, period_s: float, seconds: float) -> dict:
    from iiwa_deploy import load_robot_config, prepare_policy, run_prepared

    from iiwa_rl.deploy_sim import PyBulletPlant, SimRobot

    robot_config = load_robot_config().replace(robot_period_s=period_s)
    prepared = prepare_policy(model_path, robot_config)
    # Timing only: one physics step per robot period, whatever the period.
    plant = PyBulletPlant(period_s, physics_hz=1.0 / period_s)
    robot = SimRobot(plant, prepared.policy.contract.home_joint_positions)
    try:
        summary = run_prepared(prepared, robot, duration_s=seconds)
    finally:
        robot.close()
    cycles = max(summary.cycles, 1)
    return {
        "period_ms": period_s * 1e3,
        "cycles": summary.cycles,
        "compute_p50_ms": summary.compute.p50_s * 1e3,
        "compute_p99_ms": summary.compute.p99_s * 1e3,
        "compute_max_ms": summary.compute.max_s * 1e3,
        "compute_p99_share_of_period": summary.compute.p99_s / period_s,
        "missed_deadlines": summary.missed_deadlines,
        "missed_per_10k_cycles": summary.missed_deadlines * 10_000 / cycles,
        "lateness_p99_ms": summary.lateness.p99_s * 1e3,
        "final_distance_mm": summary.final_distance_m * 1e3,
        "faults": len(summary.faults),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("run_dir", help="the run the model was exported from (for torch eager)")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="loop run per period")
    args = parser.parse_args()

    latency = inference_latency(args.model, args.run_dir, args.calls)
    print(f"inference at batch 1 over {args.calls} calls:")
    for name, stats in latency.items():
        print(
            f"  {name:<12} p50 {stats['p50_us']:7.1f} us   p99 {stats['p99_us']:7.1f} us   max {stats['max_us']:8.1f} us"
        )
    ratio = latency["torch_eager"]["p50_us"] / latency["onnxruntime"]["p50_us"]
    print(
        f"  torch eager / onnxruntime at p50: {ratio:.1f}x; ONNX p99 target <= 100 us: "
        f"{'met' if latency['onnxruntime']['p99_us'] <= 100 else 'NOT met'}"
    )
    for period in (0.004, 0.001):
        loop = control_loop(args.model, period, args.seconds)
        print(
            f"loop at {loop['period_ms']:.0f} ms for {args.seconds:g} s: {loop['cycles']} cycles, compute p50 "
            f"{loop['compute_p50_ms']:.3f} ms, p99 {loop['compute_p99_ms']:.3f} ms "
            f"({loop['compute_p99_share_of_period']:.1%} of the period), max {loop['compute_max_ms']:.3f} ms; "
            f"missed deadlines {loop['missed_deadlines']} ({loop['missed_per_10k_cycles']:.1f} per 10,000 cycles); "
            f"lateness p99 {loop['lateness_p99_ms']:.3f} ms; final distance {loop['final_distance_mm']:.1f} mm; "
            f"faults {loop['faults']}"
        )


if __name__ == "__main__":
    main()
