"""PPO: ours against Stable-Baselines3, side by side, same environment, network sizes,
hyperparameters and step budget.

    python benchmarks/bench_ppo_vs_sb3.py [--config configs/reach_ppo.yaml] [--steps 300000]
        [--seeds 0 1 2] [--sb3-vec dummy subproc] [--out benchmarks/results/ppo_vs_sb3]

For each seed: train ours, then SB3 (never at the same time), each with one torch
thread; record training throughput (environment steps per second of training, periodic
evaluation excluded), the training-episode success rate against steps and wall-clock,
and a final deterministic evaluation of 100 episodes on the same seeds. Prints a table,
the throughput ratio and writes a PNG with both learning curves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_ours(config_path: str, steps: int, seed: int, out: Path) -> dict:
    from iiwa_rl.config import load_config
    from iiwa_rl.train import Trainer
    from iiwa_rl.viz.plots import read_csv

    run_dir = out / f"ours-seed{seed}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    config = load_config(
        config_path,
        [
            f"seed={seed}",
            f"train.total_steps={steps}",
            "train.max_wall_seconds=null",
            f"train.eval_every_steps={steps}",  # no evaluation inside the timed training
            "train.eval_episodes=1",
            "train.progress=quiet",
        ],
    )
    trainer = Trainer(config, run_dir)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    metrics = read_csv(run_dir / "metrics.csv")
    train_seconds = float(metrics["wall_time"][-1])  # stamped at the last update, before eval
    final = evaluate_run_dir(run_dir)
    return {
        "name": "ours",
        "seed": seed,
        "steps": int(metrics["step"][-1]),
        "train_seconds": train_seconds,
        "steps_per_second": float(metrics["step"][-1]) / train_seconds,
        "total_seconds": wall,
        "curve_steps": metrics["step"].tolist(),
        "curve_wall": metrics["wall_time"].tolist(),
        "curve_success": metrics["success_rate"].tolist(),
        **final,
    }


def evaluate_run_dir(run_dir: Path) -> dict:
    import gymnasium as gym

    from iiwa_rl.checkpoint import build_policy, load_run
    from iiwa_rl.evaluation import deterministic_policy, run_episodes, summarize_episodes

    config, state = load_run(run_dir, "last")
    actor, normalizer = build_policy(config, state)
    env = gym.make(config.env.id, **config.env.kwargs)

    act = deterministic_policy(actor, normalizer)

    summary = summarize_episodes(run_episodes(act, env, 100, config.eval.seed))
    env.close()
    return {"final_success_rate": summary["success_rate"], "final_return": summary["mean_return"]}


def run_sb3(config_path: str, steps: int, seed: int, vec: str) -> dict:
    import gymnasium as gym
    from sb3_reference import sb3_ppo_from_config
    from stable_baselines3.common.callbacks import BaseCallback

    import iiwa_rl.envs  # noqa: F401
    from iiwa_rl.config import load_config
    from iiwa_rl.evaluation import run_episodes, summarize_episodes

    config = load_config(config_path)
    env_cfg = config.env
    model, venv = sb3_ppo_from_config(config, seed, vec)

    curve = {"steps": [], "wall": [], "success": []}
    started = time.perf_counter()

    class Curve(BaseCallback):
        def _on_rollout_end(self) -> None:
            episodes = [info.get("is_success", np.nan) for info in self.model.ep_info_buffer]
            curve["steps"].append(self.num_timesteps)
            curve["wall"].append(time.perf_counter() - started)
            curve["success"].append(float(np.nanmean(episodes)) if episodes else float("nan"))

        def _on_step(self) -> bool:
            return True

    model.learn(total_timesteps=steps, callback=Curve())
    train_seconds = time.perf_counter() - started
    venv.training = False
    env = gym.make(env_cfg.id, **env_cfg.kwargs)
    summary = summarize_episodes(
        run_episodes(
            lambda obs: model.predict(venv.normalize_obs(obs), deterministic=True)[0],
            env,
            100,
            config.eval.seed,
        )
    )
    env.close()
    venv.close()
    return {
        "name": f"sb3-{vec}",
        "seed": seed,
        "steps": int(model.num_timesteps),
        "train_seconds": train_seconds,
        "steps_per_second": model.num_timesteps / train_seconds,
        "curve_steps": curve["steps"],
        "curve_wall": curve["wall"],
        "curve_success": curve["success"],
        "final_success_rate": summary["success_rate"],
        "final_return": summary["mean_return"],
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    names = sorted({r["name"] for r in results})
    for index, name in enumerate(names):
        for result in [r for r in results if r["name"] == name]:
            label = (
                name
                if result["seed"] == min(r["seed"] for r in results if r["name"] == name)
                else None
            )
            for axis, x in zip(axes, (result["curve_steps"], result["curve_wall"])):
                axis.plot(x, result["curve_success"], color=f"C{index}", alpha=0.8, label=label)
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall-clock seconds (training)")
    for axis in axes:
        axis.set_ylabel("training-episode success rate")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(
        "PPO on IiwaReach-v0: iiwa-rl vs Stable-Baselines3 (same nets, hyperparameters, budget)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/reach_ppo.yaml"))
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--sb3-vec", nargs="+", choices=["dummy", "subproc"], default=["dummy", "subproc"]
    )
    parser.add_argument("--sb3-seeds", type=int, nargs="+", help="seeds for SB3 (default: --seeds)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/ppo_vs_sb3"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results = []
    for seed in args.seeds:
        results.append(run_ours(args.config, args.steps, seed, out))
        print(
            json.dumps({k: v for k, v in results[-1].items() if not k.startswith("curve")}),
            flush=True,
        )
        for vec in args.sb3_vec if seed in (args.sb3_seeds or args.seeds) else []:
            results.append(run_sb3(args.config, args.steps, seed, vec))
            print(
                json.dumps({k: v for k, v in results[-1].items() if not k.startswith("curve")}),
                flush=True,
            )

    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "ppo_vs_sb3.png")
    print(
        f"\n{'run':<14} {'seed':>4} {'steps':>8} {'train s':>8} {'steps/s':>8} {'success@100':>12}"
    )
    for r in results:
        print(
            f"{r['name']:<14} {r['seed']:>4} {r['steps']:>8} {r['train_seconds']:>8.1f} "
            f"{r['steps_per_second']:>8.0f} {r['final_success_rate']:>12.2f}"
        )
    ours = np.mean([r["steps_per_second"] for r in results if r["name"] == "ours"])
    for name in sorted({r["name"] for r in results} - {"ours"}):
        theirs = np.mean([r["steps_per_second"] for r in results if r["name"] == name])
        print(f"throughput ratio ours / {name}: {ours / theirs:.2f}x")
    print(f"curves: {out / 'ppo_vs_sb3.png'}")


if __name__ == "__main__":
    main()
