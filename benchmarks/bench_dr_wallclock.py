"""Randomised against nominal training wall-clock to the same success (issue 15's target:
the randomised config within 2x the nominal's).

    OMP_NUM_THREADS=1 python benchmarks/bench_dr_wallclock.py \\
        [--nominal configs/reach_ppo.yaml] [--randomised configs/reach_ppo_dr.yaml] \\
        [--threshold 0.95] [--steps N] [--max-wall-seconds S] [--stop-at-first] [--seed 0] \\
        [--run-root DIR] [--json OUT]

Trains the two configs one after the other (never side by side: they would share the
cores), each with `iiwa-rl train` as a user runs it, the same seed and both configs' own
evaluation schedule (`train.eval_every_steps`, `train.eval_episodes`; `--eval-every` and
`--eval-episodes` override both alike). Each run's eval.csv gives, for the success
threshold:
- first: the first evaluation at or above it (steps, wall seconds since the run started);
- from then on: the first evaluation after which every later one stays at or above it.
The randomised run's evaluations are randomised episodes (its config's env), the nominal
run's nominal ones: each reaches "the same success" on what it trains for. Wall seconds
include the evaluations, as the trainer logs them. `--steps` caps both runs' total steps
(a quick check of the command; the lr schedule then anneals over the shorter run).

The ratio is randomised over nominal. A wall-clock figure is only as fair as the machine
is quiet: the load average before and after each run is printed beside it; measure on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(
    config: str, run_dir: Path, seed: int, overrides: list[str], stop_at: float | None = None
) -> dict:
    """One `iiwa-rl train` run; its load averages and total wall seconds. With `stop_at`,
    the run is interrupted (as Ctrl-C would) once an evaluation reaches that success."""
    command = [sys.executable, "-m", "iiwa_rl.cli", "train", config]
    command += ["--run-dir", str(run_dir), "--seed", str(seed), "--quiet"]
    for override in overrides:
        command += ["--set", override]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL)
    while process.poll() is None:
        time.sleep(1.0)
        if stop_at is not None and (run_dir / "eval.csv").exists():
            try:
                rows = evaluations(run_dir)
            except (ValueError, KeyError):  # a row the trainer is still writing
                continue
            if any(row["success_rate"] >= stop_at for row in rows):
                process.send_signal(signal.SIGINT)  # the trainer stops its workers and exits
                process.wait()
                break
    else:
        if process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode, command)
    return {
        "config": config,
        "run_dir": str(run_dir),
        "seconds": time.monotonic() - started,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def evaluations(run_dir: Path) -> list[dict]:
    with open(run_dir / "eval.csv") as handle:
        return [
            {
                "step": int(row["step"]),
                "wall_time": float(row["wall_time"]),
                "success_rate": float(row["success_rate"]),
            }
            for row in csv.DictReader(handle)
        ]


def time_to(rows: list[dict], threshold: float) -> dict:
    """The first evaluation at or above `threshold`, and the first from which all stay so."""
    first = next((row for row in rows if row["success_rate"] >= threshold), None)
    stays = None
    for index, row in enumerate(rows):
        if all(later["success_rate"] >= threshold for later in rows[index:]):
            stays = row
            break
    return {"first": first, "from_then_on": stays}


def describe(reached: dict | None) -> str:
    if reached is None:
        return "not reached"
    return f"{reached['step']:,} steps, {reached['wall_time']:.0f} s"


def ratio(randomised: dict | None, nominal: dict | None) -> str:
    if randomised is None or nominal is None:
        return "-"
    return f"{randomised['wall_time'] / nominal['wall_time']:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nominal", default="configs/reach_ppo.yaml")
    parser.add_argument("--randomised", default="configs/reach_ppo_dr.yaml")
    parser.add_argument("--threshold", type=float, default=0.95, help="success rate, 0..1")
    parser.add_argument("--steps", type=int, help="cap both runs' train.total_steps")
    parser.add_argument(
        "--max-wall-seconds",
        type=float,
        help="stop both runs after this long (train.max_wall_seconds; the lr schedule stays "
        "the configs' own, unlike --steps): time enough for the slower one to pass the threshold",
    )
    parser.add_argument(
        "--stop-at-first",
        action="store_true",
        help="interrupt each run at its first evaluation at the threshold (the time to it "
        "only; 'from then on' is then not measured)",
    )
    parser.add_argument("--eval-every", type=int, help="override train.eval_every_steps")
    parser.add_argument("--eval-episodes", type=int, help="override train.eval_episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-root", help="where the two runs go (default: a temp dir)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"--threshold is a success rate in (0, 1], got {args.threshold}")

    overrides = []
    if args.steps is not None:
        overrides.append(f"train.total_steps={args.steps}")
    if args.max_wall_seconds is not None:
        overrides.append(f"train.max_wall_seconds={args.max_wall_seconds}")
    if args.eval_every is not None:
        overrides.append(f"train.eval_every_steps={args.eval_every}")
    if args.eval_episodes is not None:
        overrides.append(f"train.eval_episodes={args.eval_episodes}")
    root = Path(args.run_root or tempfile.mkdtemp(prefix="bench_dr_wallclock-"))
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, runs in {root}")

    results = {}
    for label, config in (("nominal", args.nominal), ("randomised", args.randomised)):
        stop_at = args.threshold if args.stop_at_first else None
        run = train(config, root / label, args.seed, overrides, stop_at)
        rows = evaluations(root / label)
        run.update(time_to(rows, args.threshold), evaluations=rows)
        results[label] = run
        print(
            f"{label:>10} ({config}): first >= {args.threshold:.0%}: {describe(run['first'])}; "
            f"from then on: {describe(run['from_then_on'])}; run {run['seconds']:.0f} s, load "
            f"{run['load_before'][0]:.2f} before, {run['load_after'][0]:.2f} after",
            flush=True,
        )
    nominal, randomised = results["nominal"], results["randomised"]
    print(
        f"randomised / nominal wall-clock to {args.threshold:.0%}: first "
        f"{ratio(randomised['first'], nominal['first'])}, from then on "
        f"{ratio(randomised['from_then_on'], nominal['from_then_on'])}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
