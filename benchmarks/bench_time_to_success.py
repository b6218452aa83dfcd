"""Training wall-clock to a success rate: how soon a config's policy first succeeds in
`--threshold` of `--episodes` deterministic evaluation episodes, per seed.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_time_to_success.py \
        [--config configs/reach_ppo.yaml] [--seeds 0 1 2] [--budget-s 20] \
        [--snapshot-every 10240] [--episodes 100] [--threshold 0.95] [--json OUT] [key=value ...]

Each seed trains the config (with the overrides) for at most `--budget-s` seconds
(`train.max_wall_seconds`; the step budget stays the config's, so its learning-rate
schedule is the one the config trains with). Evaluating 100 episodes inside the run
would take the cores the training runs on, so the run evaluates nothing: every
`--snapshot-every` steps it keeps a copy of the policy and the observation statistics
with the step and the time, and after the run every snapshot is evaluated on the same
`--episodes` episodes (seeds from the config's eval.seed, as `iiwa-rl eval` uses).

Times per snapshot: `train_s`, since `Trainer.train()` was called (the loop's own clock,
which its logs show, starts a moment later); `from_scratch_s`, since the Trainer began to
be built (worker processes started and environments built; imports excluded). Reported
per seed: the first snapshot at or above the threshold, or the best within the budget.
The target is met when every seed reaches the threshold within the budget, on both clocks
as printed.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy or torch load; workers inherit it

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_with_snapshots(config, snapshot_every: int) -> list[dict]:
    """Train `config` in a scratch run directory, keeping the policy every
    `snapshot_every` steps (as the algorithm observes the step that reaches it)."""
    from iiwa_rl.train import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="bench_time_to_success-"))
    shutil.rmtree(run_dir)  # the trainer wants to create it
    snapshots: list[dict] = []
    building = time.monotonic()
    try:
        trainer = Trainer(config, run_dir)
        observe, num_envs = trainer.algorithm.observe, config.env.num_envs
        next_snapshot = snapshot_every
        clock: dict[str, float] = {}

        def observe_and_snapshot(transition) -> None:
            nonlocal next_snapshot
            observe(transition)
            step = trainer.global_step + num_envs  # the loop counts this step after observe
            if step < next_snapshot:
                return
            next_snapshot += snapshot_every
            now = time.monotonic()
            snapshots.append(
                {
                    "step": step,
                    "train_s": now - clock["train"],
                    "from_scratch_s": now - building,
                    "actor": copy.deepcopy(trainer.algorithm.deterministic_actor()).cpu(),
                    "normalizer": copy.deepcopy(trainer.obs_normalizer),
                }
            )

        trainer.algorithm.observe = observe_and_snapshot
        clock["train"] = time.monotonic()
        trainer.train()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return snapshots


def evaluate_snapshots(config, snapshots: list[dict], episodes: int):
    """Adds each snapshot's summary over `episodes` deterministic episodes: the success
    rate, and the task's metrics (the reach's final TCP distance shows progress while the
    success rate is still 0 %). Returns the task's headline metric (None if it has none)."""
    import gymnasium as gym

    from iiwa_rl.evaluation import deterministic_policy, run_episodes, summarize_episodes
    from iiwa_rl.metrics import headline_metric

    env = gym.make(config.env.id, **config.env.kwargs)
    try:
        for snapshot in snapshots:
            act = deterministic_policy(snapshot.pop("actor"), snapshot.pop("normalizer"))
            summary = summarize_episodes(run_episodes(act, env, episodes, config.eval.seed))
            snapshot.update(summary)
        return headline_metric(env)
    finally:
        env.close()


def headline(metric, snapshot: dict) -> str:
    """The snapshot's headline figure, as " (2.3 cm)"; "" where the task has none."""
    from iiwa_rl.metrics import format_value

    value = snapshot.get(metric.column_name) if metric else None
    return "" if value is None else f" ({format_value(metric, value)})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/reach_ppo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-s", type=float, default=20.0, help="training seconds per seed")
    parser.add_argument("--snapshot-every", type=int, default=10240, help="env steps")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args(argv)
    if not (args.budget_s > 0 and args.snapshot_every > 0 and args.episodes > 0):
        parser.error("--budget-s, --snapshot-every and --episodes must be positive")
    if not 0.0 < args.threshold <= 1.0:
        parser.error("--threshold must be in (0, 1]")

    import torch

    from iiwa_rl.config import load_config

    torch.set_num_threads(1)
    never = "1000000000"
    results = []
    for seed in args.seeds:
        config = load_config(
            args.config,
            [
                *args.overrides,
                f"seed={seed}",
                f"train.max_wall_seconds={args.budget_s}",
                f"train.eval_every_steps={never}",
                f"train.checkpoint_every_steps={never}",
                "train.eval_episodes=1",
                "train.eval_in_background=false",
                "train.progress=quiet",
            ],
        )
        load_before = os.getloadavg()[0]
        snapshots = train_with_snapshots(config, args.snapshot_every)
        load_after = os.getloadavg()[0]
        metric = evaluate_snapshots(config, snapshots, args.episodes)
        reached = next((s for s in snapshots if s["success_rate"] >= args.threshold), None)
        best = max(snapshots, key=lambda s: s["success_rate"], default=None)
        results.append(
            {
                "seed": seed,
                "snapshots": snapshots,
                "first_at_threshold": reached,
                "load_average_before_after": [load_before, load_after],
            }
        )
        curve = ", ".join(
            f"{s['step'] // 1000}k@{s['train_s']:.0f}s:{s['success_rate']:.0%}{headline(metric, s)}"
            for s in snapshots
        )
        if reached:
            verdict = (
                f"{reached['success_rate']:.0%} at {reached['step']:,} steps, "
                f"{reached['train_s']:.1f} s of training ({reached['from_scratch_s']:.1f} s "
                "from scratch)"
            )
        elif best:
            verdict = (
                f"not reached; best {best['success_rate']:.0%} at {best['step']:,} steps "
                f"({best['train_s']:.1f} s)"
            )
        else:
            verdict = "no snapshot within the budget"
        print(
            f"seed {seed} (load {load_before:.2f} -> {load_after:.2f}): {verdict}\n  {curve}",
            flush=True,
        )

    met = all(r["first_at_threshold"] is not None for r in results)
    print(
        f"{sum(r['first_at_threshold'] is not None for r in results)} of {len(results)} seeds at "
        f">= {args.threshold:.0%} over {args.episodes} episodes within {args.budget_s:g} s: "
        f"target {'met' if met else 'NOT met'}"
    )
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": args.config,
        "overrides": args.overrides,
        "budget_s": args.budget_s,
        "episodes": args.episodes,
        "threshold": args.threshold,
        "cpu_count": os.cpu_count(),
        "seeds": results,
        "met": met,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
