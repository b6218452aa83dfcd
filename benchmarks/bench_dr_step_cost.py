"""What domain randomisation costs per environment step: a randomised config's env against
the same env with its `randomization:` section removed, and (--per-term) with each term of
the section alone, all stepped in one process in turns (bench_env.measure_singles), so
every variant meets the same machine state.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_dr_step_cost.py \\
        [--config configs/reach_ppo_dr.yaml] [--steps 6000] [--chunk 300] [--per-term] [--json OUT]

Random actions in [-1, 1], resets included. Prints microseconds per step, the share inside
stepSimulation and each variant's cost over the nominal's. In training the PPO update,
the same for both configs, dilutes the ratio; bench_dr_wallclock.py measures that.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy loads

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_env import measure_singles  # noqa: E402  (benchmarks/ is the script's folder)

from iiwa_rl.config import load_config  # noqa: E402


def variants(config_path: str, per_term: bool) -> list[tuple[str, str, dict]]:
    """(name, env id, kwargs): the nominal env, every term on, and each term alone."""
    env = load_config(config_path).env
    section = env.kwargs.get("randomization") or {}
    if not section:
        raise SystemExit(f"{config_path}: env.kwargs.randomization is empty, nothing to compare")
    randomisation_keys = ("randomization", "randomization_ends_fraction")
    nominal = {k: v for k, v in env.kwargs.items() if k not in randomisation_keys}
    specs = [("nominal", env.id, nominal), ("randomised", env.id, dict(env.kwargs))]
    if per_term:
        specs += [
            (name, env.id, {**nominal, "randomization": {name: term}})
            for name, term in section.items()
        ]
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/reach_ppo_dr.yaml")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--chunk", type=int, default=300)
    parser.add_argument("--per-term", action="store_true", help="also each term alone")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows, _ = measure_singles(variants(args.config, args.per_term), args.steps, args.chunk)
    nominal_us = 1e6 / rows[0].steps_per_s
    print(f"{args.config}: {args.steps} steps each, turns of {args.chunk}")
    print("| variant | us / step | in stepSimulation | cost / nominal |")
    print("|---|---:|---:|---:|")
    for row in rows:
        us = 1e6 / row.steps_per_s
        print(
            f"| {row.name} | {us:.0f} | {100 * row.step_simulation_share:.0f} % | "
            f"{us / nominal_us:.2f}x |"
        )
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": args.config,
            "steps": args.steps,
            "load_before": load_before,
            "load_after": load_after,
            "rows": [
                {
                    "variant": row.name,
                    "steps_per_s": row.steps_per_s,
                    "step_simulation_share": row.step_simulation_share,
                }
                for row in rows
            ],
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
