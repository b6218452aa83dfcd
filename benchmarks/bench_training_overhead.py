"""PPO training throughput against the env-only throughput of the same vector env, in the
same run: what share of what the environments allow the training loop keeps.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_training_overhead.py \
        [--config configs/reach_ppo.yaml] [--steps 100000] [--rounds 2] \
        [--vector-modes config batched rollout_workers] [--main-process-share config 0.75] \
        [--handover-spin-s 0 config] [--update-threads 1 2] [--json OUT]

Each round measures, one right after the other so that all meet the same machine state:
- env-only: the config's envs (same id, kwargs, num_envs, workers) in the batched vector
  env with the envs in even shares over the processes (the fastest layout when nothing
  but the envs runs; what rollout_workers mode steps too), stepped with uniform random
  actions in [-1, 1], resets included (SAME_STEP autoreset), `--steps` env steps counted
  across all envs;
- PPO training: the config trained for `--steps` steps with evaluation only after the
  timed part (steps/s as the loop logs it at its last update: acting, stepping,
  normalisation, the update, everything but evaluation and checkpoints), once per
  layout: each of `--vector-modes` ("config": the config's own), and in batched mode
  each value of `--main-process-share` (the share of the envs, relative to an even one,
  that the main process steps, the process that also acts; "config": the config's own)
  with each value of `--handover-spin-s` (how long the processes poll for each other's
  messages before they block; env-only polls as the config says), and for each of those,
  each value of `--update-threads` (the torch threads of the update alone,
  train.update_threads).
The ratio is training over env-only per round, and the ratio of the totals. Beside each
figure: the CPU milliseconds per vector step of the main process and of each subprocess
(from /proc), which say how evenly the work is spread whatever else runs: on a shared
machine (the load average before and after each round is printed) the wall-clock
figures mix in other processes' share of the cores.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy or torch load; workers inherit it

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_seconds(owner) -> list[float]:
    """CPU seconds (user + system) used so far by this process and by each subprocess of
    `owner` (a batched vector env or a rollout_workers collector; none for the other
    modes), read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(pid: int | str) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    return [of("self"), *(of(process.pid) for process in getattr(owner, "_processes", []))]


def env_only(config, steps: int, seed: int) -> dict:
    """Env steps per wall second of the config's vector env under random actions, and
    each process's CPU milliseconds per vector step."""
    from iiwa_rl.envs import make_vector_env

    env = config.env
    envs = make_vector_env(
        env.id,
        env.num_envs,
        env.kwargs,
        "batched",
        env.workers,
        handover_spin_s=env.handover_spin_s,
    )
    try:
        envs.reset(seed=seed)
        rng = np.random.default_rng(seed)
        iterations = max(1, steps // env.num_envs)
        shape = (env.num_envs, *envs.single_action_space.shape)
        actions = rng.uniform(-1.0, 1.0, (iterations, *shape)).astype(np.float32)
        cpu_before = cpu_seconds(envs)
        started = time.perf_counter()
        for action in actions:
            envs.step(action)
        elapsed = time.perf_counter() - started
        cpu = [b - a for a, b in zip(cpu_before, cpu_seconds(envs))]
    finally:
        envs.close()
    return {
        "steps_per_s": iterations * env.num_envs / elapsed,
        "cpu_ms_per_vector_step": [1000 * c / iterations for c in cpu],
    }


def training(config_path: str, overrides: list[str], steps: int) -> dict:
    """Steps per second of a PPO training as its loop logs it (evaluation excluded), and
    each process's CPU milliseconds per vector step over the whole `train()` (the closing
    one-episode evaluation and checkpoint included: a few ms)."""
    from iiwa_rl.config import load_config
    from iiwa_rl.train import Trainer
    from iiwa_rl.viz.plots import read_csv

    run_dir = Path(tempfile.mkdtemp(prefix="bench_training_overhead-"))
    shutil.rmtree(run_dir)  # the trainer wants to create it
    try:
        config = load_config(
            config_path,
            [
                *overrides,
                f"train.total_steps={steps}",
                "train.max_wall_seconds=null",
                f"train.eval_every_steps={steps}",  # evaluation only after the timed part
                f"train.checkpoint_every_steps={steps}",
                "train.eval_episodes=1",
                "train.progress=quiet",
            ],
        )
        trainer = Trainer(config, run_dir)
        collector = trainer.collector
        processes_owner = getattr(collector, "envs", collector)
        close, cpu = collector.close, {}

        def close_after_reading_cpu() -> None:  # the subprocesses' CPU, before they stop
            cpu["after"] = cpu_seconds(processes_owner)
            close()

        collector.close = close_after_reading_cpu
        cpu["before"] = cpu_seconds(processes_owner)
        trainer.train()
        metrics = read_csv(run_dir / "metrics.csv")
        iterations = steps / config.env.num_envs
        return {
            "steps_per_s": float(metrics["steps_per_second"][-1]),
            "cpu_ms_per_vector_step": [
                1000 * (b - a) / iterations for a, b in zip(cpu["before"], cpu["after"])
            ],
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/reach_ppo.yaml"))
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="env-only + training pairs")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides (key=value), applied to both sides"
    )
    parser.add_argument(
        "--vector-modes",
        nargs="+",
        default=["config"],
        choices=["config", "batched", "rollout_workers"],
        help="training vector modes to measure in each round (config: the config's own)",
    )
    parser.add_argument(
        "--main-process-share",
        nargs="+",
        default=["config"],
        help="batched mode's layouts to measure in each round: a share (0 to 1), or config",
    )
    parser.add_argument(
        "--handover-spin-s",
        nargs="+",
        default=["config"],
        help="batched mode: seconds each process polls for the other's message before it "
        "blocks (env.handover_spin_s) to measure for each layout: a value, or config",
    )
    parser.add_argument(
        "--update-threads",
        nargs="+",
        default=["config"],
        help="torch threads in the update (train.update_threads) to measure for each "
        "layout: a count, or config",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1000:
        parser.error("--rounds must be >= 1 and --steps >= 1000")

    import torch

    from iiwa_rl.config import load_config

    torch.set_num_threads(1)
    overrides = [*args.overrides, "device=cpu"]
    config = load_config(args.config, overrides)
    if config.algorithm != "ppo":
        parser.error(f"{args.config} trains {config.algorithm}, not ppo")
    layouts = {}
    for mode in args.vector_modes:
        mode_overrides = overrides if mode == "config" else [*overrides, f"env.vector_mode={mode}"]
        if load_config(args.config, mode_overrides).env.vector_mode != "batched":
            layouts[mode] = mode_overrides
            continue
        for value in args.main_process_share:
            share = [] if value == "config" else [f"env.main_process_share={value}"]
            for spin in args.handover_spin_s:
                spin_override = [] if spin == "config" else [f"env.handover_spin_s={spin}"]
                name = f"{mode}, main_process_share {value}"
                if args.handover_spin_s != ["config"]:
                    name += f", handover_spin_s {spin}"
                layouts[name] = [*mode_overrides, *share, *spin_override]
    if args.update_threads != ["config"]:
        layouts = {
            f"{name}, update_threads {threads}": [*layout, f"train.update_threads={threads}"]
            for name, layout in layouts.items()
            for threads in args.update_threads
        }
    env_only_config = load_config(args.config, [*overrides, "env.main_process_share=1"])
    print(
        f"{config.env.id}: {config.env.num_envs} envs, vector_mode {config.env.vector_mode}, "
        f"workers {config.env.workers or os.cpu_count()}, main_process_share (config) "
        f"{config.env.main_process_share}; {args.steps:,} steps per measurement",
        flush=True,
    )

    def cpu_text(figures: dict) -> str:
        return "CPU ms per vector step " + " + ".join(
            f"{c:.2f}" for c in figures["cpu_ms_per_vector_step"]
        )

    rounds = []
    for index in range(args.rounds):
        load_before = os.getloadavg()[0]
        reference = env_only(env_only_config, args.steps, seed=config.seed)
        trained = {
            value: training(args.config, layout, args.steps) for value, layout in layouts.items()
        }
        load_after = os.getloadavg()[0]
        rounds.append(
            {
                "env_only": reference,
                "training": trained,
                "ratio": {
                    v: t["steps_per_s"] / reference["steps_per_s"] for v, t in trained.items()
                },
                "load_average_before_after": [load_before, load_after],
            }
        )
        print(
            f"round {index + 1} (load {load_before:.2f} -> {load_after:.2f}): env-only "
            f"{reference['steps_per_s']:,.0f} steps/s ({cpu_text(reference)})",
            flush=True,
        )
        for value, figures in trained.items():
            print(
                f"  PPO training, {value}: {figures['steps_per_s']:,.0f} "
                f"steps/s = {rounds[-1]['ratio'][value]:.1%} of env-only ({cpu_text(figures)})",
                flush=True,
            )

    # Each measurement covers the same steps, so the totals' rate is the harmonic mean.
    def total(rates: list[float]) -> float:
        return len(rates) / sum(1.0 / rate for rate in rates)

    env_total = total([r["env_only"]["steps_per_s"] for r in rounds])
    training_total = {
        value: total([r["training"][value]["steps_per_s"] for r in rounds]) for value in layouts
    }
    ratio = {value: speed / env_total for value, speed in training_total.items()}
    for value, speed in training_total.items():
        print(
            f"all rounds, {value}: env-only {env_total:,.0f} steps/s, PPO "
            f"training {speed:,.0f} steps/s: {ratio[value]:.1%} "
            f"(target >= 85 %: {'met' if ratio[value] >= 0.85 else 'NOT met'})"
        )
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": args.config,
        "overrides": args.overrides,
        "steps": args.steps,
        "cpu_count": os.cpu_count(),
        "rounds": rounds,
        "env_only_steps_per_s": env_total,
        "training_steps_per_s": training_total,
        "ratio": ratio,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
