"""PPO on the reach task: `env.vector_mode: ray` against `batched`, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_ray.py compare [--steps 900000] [--seed 0]
        [--workers 2] [--out runs/bench_ray]
    OMP_NUM_THREADS=1 python benchmarks/bench_ray.py scaling --workers 1 2 4 [--steps 100000]

compare: configs/reach_ppo.yaml as it is (16 envs, evaluations every 50k steps on 20
episodes), except no wall-clock limit (a loaded machine would otherwise stop one mode
earlier than the other), trained once in batched mode and once in ray mode (`--workers`
Ray actors on a local Ray instance, 16 / workers envs each), one after the other, never at
once. Prints and writes <out>/bench_ray.json: training steps/s (the loop's own figure,
evaluations included alike in both; Ray's start-up, the actors' creation, is timed apart),
the ratio ray / batched, and both modes' evaluation success and return at the same steps.

scaling: ray mode's training steps/s against the number of workers K (16 envs split
between them where they divide, else the nearest multiple of K), `--steps` each, with
evaluations and checkpoints off; each worker asks for min(1, cores / K) CPUs. On a machine with fewer cores than K + 1 the workers and
the learner share cores: the table then shows the overhead, not the scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iiwa_rl.config import load_config  # noqa: E402
from iiwa_rl.logger import CsvLog  # noqa: E402
from iiwa_rl.train import Trainer  # noqa: E402

REACH = REPO / "configs" / "reach_ppo.yaml"
NEVER = "1000000000"


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def train_once(run_dir: Path, overrides: list[str]) -> dict:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = load_config(REACH, ["train.progress=quiet", "train.max_wall_seconds=null", *overrides])
    started = time.monotonic()
    trainer = Trainer(config, run_dir)
    start_up = time.monotonic() - started
    summary = trainer.train()
    total = time.monotonic() - started
    metrics = CsvLog(run_dir / "metrics.csv").read()
    evaluations = CsvLog(run_dir / "eval.csv").read()
    return {
        "mode": config.env.vector_mode,
        "steps": summary["step"],
        "start_up_s": start_up,
        "total_s": total,
        "steps_per_second": float(metrics[-1]["steps_per_second"]),
        "evaluations": [
            {
                "step": int(float(row["step"])),
                "success_rate": float(row["success_rate"]),
                "mean_return": float(row["mean_return"]),
            }
            for row in evaluations
        ],
        "final": {k: v for k, v in summary.items() if isinstance(v, (int, float))},
    }


def compare(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"seed={args.seed}", f"train.total_steps={args.steps}"]
    load_before = _load()
    results = {}
    for mode in ("batched", "ray"):
        extra = [f"env.vector_mode={mode}", f"env.ray.workers={args.workers}"]
        results[mode] = train_once(out / mode, [*common, *extra])
        print(
            f"{mode}: {results[mode]['steps_per_second']:,.0f} steps/s, start-up "
            f"{results[mode]['start_up_s']:.1f} s, total {results[mode]['total_s']:.0f} s",
            flush=True,
        )
    report = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": load_before,
        "load_after": _load(),
        "cpus": os.cpu_count(),
        "ratio_ray_over_batched": results["ray"]["steps_per_second"]
        / results["batched"]["steps_per_second"],
        **results,
    }
    print(f"ray / batched steps/s: {report['ratio_ray_over_batched']:.1%}")
    print("| step | batched success | ray success | batched return | ray return |")
    print("|---:|---:|---:|---:|---:|")
    for a, b in zip(results["batched"]["evaluations"], results["ray"]["evaluations"]):
        print(
            f"| {a['step']:,} | {a['success_rate']:.0%} | {b['success_rate']:.0%} "
            f"| {a['mean_return']:.2f} | {b['mean_return']:.2f} |"
        )
    (out / "bench_ray.json").write_text(json.dumps(report, indent=2))
    return report


def scaling(args) -> dict:
    out = Path(args.out)
    rows = []
    load_before = _load()
    for workers in args.workers:
        envs = 16 if 16 % workers == 0 else workers * max(1, round(16 / workers))
        # More workers than cores share them: a local Ray instance has one CPU per core.
        cpus = min(1.0, (os.cpu_count() or 1) / workers)
        result = train_once(
            out / f"scaling_{workers}",
            [
                f"train.total_steps={args.steps}",
                "env.vector_mode=ray",
                f"env.num_envs={envs}",
                f"env.ray.workers={workers}",
                f"env.ray.cpus_per_worker={cpus}",
                f"train.eval_every_steps={NEVER}",
                f"train.checkpoint_every_steps={NEVER}",
                "train.eval_episodes=1",
            ],
        )
        rows.append({"workers": workers, "envs": envs, **result})
        print(f"| {workers} | {envs} | {result['steps_per_second']:,.0f} |", flush=True)
    report = {
        "command": " ".join(sys.argv),
        "load_before": load_before,
        "load_after": _load(),
        "rows": rows,
    }
    (out / "bench_ray_scaling.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("compare")
    first.add_argument("--steps", type=int, default=900_000)
    first.add_argument("--seed", type=int, default=0)
    first.add_argument("--workers", type=int, default=2)
    first.add_argument("--out", default="runs/bench_ray")
    second = commands.add_parser("scaling")
    second.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    second.add_argument("--steps", type=int, default=100_000)
    second.add_argument("--out", default="runs/bench_ray")
    args = parser.parse_args()
    compare(args) if args.command == "compare" else scaling(args)


if __name__ == "__main__":
    main()
