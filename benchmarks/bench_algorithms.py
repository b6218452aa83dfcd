"""PPO, TRPO and DDPG (ours) against Stable-Baselines3, measured side by side.

Two parts, each a subcommand, both sequential (never two trainings at once, so neither
side's timings include the other's load):

    python benchmarks/bench_algorithms.py throughput [--steps 3000] [--envs Pendulum-v1 IiwaReach-v0]
        [--hidden 400 300] [--batch-size 256] [--utd 1.0 0.25]
    python benchmarks/bench_algorithms.py compare [--steps 150000] [--seeds 0 1 2]
        [--algorithms ppo trpo ddpg sb3_ppo] [--eval-points 10] [--out runs/bench_algorithms]

throughput: DDPG training speed, ours (iiwa_rl.train.Trainer with configs/pendulum_ddpg.yaml
or configs/reach_ddpg.yaml) against SB3's DDPG on the same environment, with the same
network sizes, batch size, warm-up and update-to-data ratio (gradient steps per
environment step), one torch thread each. Steps/s counts environment steps after the
warm-up (the part where gradient steps run). SB3 runs one environment with
train_freq = round(1 / utd), gradient_steps = max(1, utd) (its default is utd = 1: one
gradient step per step); ours runs the config's vector of environments and the same
ratio. Prints a table and the ratio ours / SB3 per environment and ratio, and beside it
the ceiling that the hardware puts on any implementation of the same work: the matrix
products of one gradient step (counted; tests/test_ddpg.py checks the count against
torch's FLOP counter on DDPG.update) at this core's measured FLOP rate.

compare: each algorithm for each seed on IiwaReach-v0 with the same environment step
budget (ours from configs/reach_<algo>.yaml; SB3 PPO with reach_ppo.yaml's
hyperparameters), evaluated deterministically `--eval-points` times on the same seeds
(20 episodes each). Writes <out>/algorithms.png (success and return against steps and
against wall-clock), <out>/algorithms.md (final success, time to 90 %, steps/s) and
<out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sb3_reference import ACTIVATIONS  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DDPG_CONFIGS = {
    "Pendulum-v1": "configs/pendulum_ddpg.yaml",
    "IiwaReach-v0": "configs/reach_ddpg.yaml",
}


# ------------------------------------------------------------------ throughput
def ddpg_ours(
    env_id: str,
    steps: int,
    hidden: list[int] | None,
    batch_size: int | None,
    utd: float,
    out: Path,
    extra_overrides: Sequence[str] = (),
) -> dict:
    from iiwa_rl.config import load_config
    from iiwa_rl.train import Trainer
    from iiwa_rl.viz.plots import read_csv

    base = load_config(ROOT / DDPG_CONFIGS[env_id])
    batch_size = batch_size or base.ddpg.batch_size
    warmup = max(base.ddpg.warmup_steps, batch_size)
    overrides = [
        f"train.total_steps={warmup + steps}",
        "train.max_wall_seconds=null",
        f"train.eval_every_steps={10 * (warmup + steps)}",
        f"train.checkpoint_every_steps={10 * (warmup + steps)}",
        "train.eval_episodes=1",
        "train.progress=quiet",
        "device=cpu",
        f"ddpg.updates_per_step={utd}",
        "ddpg.update_every=1",
        f"ddpg.batch_size={batch_size}",
    ]
    if hidden:
        overrides += [f"policy.hidden_sizes={hidden}", f"critic.hidden_sizes={hidden}"]
    config = load_config(ROOT / DDPG_CONFIGS[env_id], [*overrides, *extra_overrides])
    run_dir = out / f"throughput-ours-{env_id}-utd{utd}"
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(config, run_dir)
    trainer.train()
    # A row every ddpg.log_every_steps from the first round after the warm-up on.
    metrics = read_csv(run_dir / "metrics.csv")
    steps_done = float(metrics["step"][-1] - metrics["step"][0])
    seconds = float(metrics["wall_time"][-1] - metrics["wall_time"][0])
    return {
        "steps_per_second": steps_done / seconds,
        "gradient_steps": float(metrics["gradient_steps"][-1] - metrics["gradient_steps"][0]),
        "steps": steps_done,
        "num_envs": config.env.num_envs,
        "hidden": list(config.critic.hidden_sizes),
        "batch_size": config.ddpg.batch_size,
        "observation_size": trainer.observation_size,
        "action_size": trainer.action_size,
        "warmup": warmup,
    }


def ddpg_sb3(
    env_id: str, steps: int, hidden: list[int] | None, batch_size: int | None, utd: float
) -> dict:
    import gymnasium as gym
    from stable_baselines3 import DDPG as SB3DDPG
    from stable_baselines3.common.noise import NormalActionNoise

    import iiwa_rl.envs  # noqa: F401
    from iiwa_rl.config import load_config

    config = load_config(ROOT / DDPG_CONFIGS[env_id])
    ddpg = config.ddpg
    hidden = hidden or list(config.critic.hidden_sizes)
    batch_size = batch_size or ddpg.batch_size
    env = gym.make(config.env.id, **config.env.kwargs)
    size = env.action_space.shape[0]
    half_range = (env.action_space.high - env.action_space.low) / 2
    train_freq = max(1, round(1.0 / utd))
    gradient_steps = max(1, round(utd))
    warmup = max(ddpg.warmup_steps, batch_size)
    model = SB3DDPG(
        "MlpPolicy",
        env,
        learning_rate=ddpg.critic_learning_rate,
        buffer_size=ddpg.buffer_size,
        learning_starts=warmup,
        batch_size=batch_size,
        tau=ddpg.tau,
        gamma=ddpg.gamma,
        train_freq=train_freq,
        gradient_steps=gradient_steps,
        action_noise=NormalActionNoise(np.zeros(size), ddpg.noise_std * half_range * np.ones(size)),
        policy_kwargs={"net_arch": hidden, "activation_fn": ACTIVATIONS[config.critic.activation]},
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.learn(warmup)
    started = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - started
    env.close()
    return {
        "steps_per_second": steps / seconds,
        "steps": steps,
        "train_freq": train_freq,
        "gradient_steps": gradient_steps,
        "hidden": hidden,
    }


def gradient_step_flops(
    observation_size: int, action_size: int, hidden: list[int], batch_size: int
) -> float:
    """Floating-point operations of the matrix products in one DDPG gradient step, as
    both implementations compute it (2 * rows * inputs * outputs per product):

    - TD target: target actor and target critic forwards;
    - critic step: critic forward, its weight gradients, its input gradients past the
      first layer;
    - actor step: actor and critic forwards, the critic's input gradients through every
      layer (at the first layer for the action's columns alone), the actor's weight
      gradients and its input gradients past the first layer.
    Biases, activations and the optimisers are left out: this is a lower bound."""

    def layer_flops(sizes: list[int]) -> list[float]:
        return [2.0 * batch_size * a * b for a, b in zip(sizes[:-1], sizes[1:])]

    actor = layer_flops([observation_size, *hidden, action_size])
    critic = layer_flops([observation_size + action_size, *hidden, 1])
    forward_a, forward_c = sum(actor), sum(critic)
    td_target = forward_a + forward_c
    critic_step = forward_c + forward_c + (forward_c - critic[0])
    critic_to_action = forward_c - critic[0] * observation_size / (observation_size + action_size)
    actor_step = forward_a + forward_c + critic_to_action + forward_a + (forward_a - actor[0])
    return td_target + critic_step + actor_step


def matmul_flop_rate(hidden: list[int], batch_size: int, seconds: float = 1.0) -> float:
    """FLOP/s of this core on the network's largest product (one thread, best of runs)."""
    rows, inner, outer = batch_size, max(hidden), min(hidden)
    a, b = torch.randn(rows, inner), torch.randn(inner, outer)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(20):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / 20)
    return 2.0 * rows * inner * outer / best


def compute_ceiling(ours: dict, utd: float) -> dict:
    """The environment steps/s that the matrix products alone would allow at this
    update-to-data ratio on one core, for the networks `ddpg_ours` trained: no
    implementation of the same work can beat it."""
    hidden, batch_size = ours["hidden"], ours["batch_size"]
    flops = gradient_step_flops(ours["observation_size"], ours["action_size"], hidden, batch_size)
    rate = matmul_flop_rate(hidden, batch_size)
    return {
        "gflop_per_gradient_step": flops / 1e9,
        "gflop_per_s": rate / 1e9,
        "steps_per_second": rate / (flops * utd),
    }


def check_throughput_steps(env_ids: Sequence[str], steps: int, overrides: Sequence[str]) -> None:
    """Ours is timed from the metrics rows DDPG writes every `ddpg.log_every_steps` after
    the warm-up: fewer timed steps than two rows apart leave nothing to time. Checked for
    every environment before any of them trains."""
    from iiwa_rl.config import load_config

    for env_id in env_ids:
        every = load_config(ROOT / DDPG_CONFIGS[env_id], list(overrides)).ddpg.log_every_steps
        if steps < 2 * every:
            raise SystemExit(
                f"bench_algorithms throughput: --steps {steps} is too few for {env_id}: ours is "
                f"timed between the metrics rows written every ddpg.log_every_steps ({every}) "
                f"steps, so it needs --steps >= {2 * every}"
            )


def throughput(args) -> None:
    torch.set_num_threads(1)
    check_throughput_steps(args.envs, args.steps, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for env_id in args.envs:
        for utd in args.utd:
            ours = ddpg_ours(
                env_id, args.steps, args.hidden, args.batch_size, utd, out, args.overrides
            )
            sb3 = ddpg_sb3(env_id, args.steps, args.hidden, args.batch_size, utd)
            ceiling = compute_ceiling(ours, utd)
            ratio = ours["steps_per_second"] / sb3["steps_per_second"]
            best_ratio = ceiling["steps_per_second"] / sb3["steps_per_second"]
            of_ceiling = ours["steps_per_second"] / ceiling["steps_per_second"]
            rows.append(
                {
                    "env": env_id,
                    "utd": utd,
                    "ours": ours,
                    "sb3": sb3,
                    "ratio": ratio,
                    "ceiling": ceiling,
                    "ceiling_ratio": best_ratio,
                    "of_ceiling": of_ceiling,
                }
            )
            print(
                f"{env_id:14s} utd {utd:<5g} hidden {ours['hidden']} batch {ours['batch_size']}: "
                f"ours {ours['steps_per_second']:7.1f} steps/s ({ours['num_envs']} envs)  "
                f"SB3 {sb3['steps_per_second']:7.1f} steps/s  ratio {ratio:.2f}x  "
                f"(matrix products alone: {ceiling['gflop_per_gradient_step']:.3f} GFLOP per "
                f"gradient step at {ceiling['gflop_per_s']:.1f} GFLOP/s allow "
                f"{ceiling['steps_per_second']:.0f} steps/s = {best_ratio:.2f}x SB3; "
                f"ours at {100 * of_ceiling:.1f} % of it)",
                flush=True,
            )
    lines = [
        "| env | gradient steps per env step | hidden | batch | ours steps/s | SB3 steps/s "
        "| ours / SB3 | FLOP ceiling steps/s (/ SB3) | ours / ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['env']} | {row['utd']:g} | {row['ours']['hidden']} | {row['ours']['batch_size']} "
            f"| {row['ours']['steps_per_second']:.1f} ({row['ours']['num_envs']} envs) "
            f"| {row['sb3']['steps_per_second']:.1f} | {row['ratio']:.2f}x "
            f"| {row['ceiling']['steps_per_second']:.0f} ({row['ceiling_ratio']:.2f}x) "
            f"| {100 * row['of_ceiling']:.1f} % |"
        )
    table = "\n".join(lines)
    print(table)
    (out / "ddpg_throughput.md").write_text(table + "\n")
    (out / "ddpg_throughput.json").write_text(json.dumps(rows, indent=1))


# --------------------------------------------------------------------- compare
def eval_seed(point: int) -> int:
    return 50_000 + 1000 * point  # the same episodes for every algorithm at the same point


def run_ours(algorithm: str, steps: int, seed: int, eval_points: int, out: Path) -> dict:
    import gymnasium as gym

    from iiwa_rl.config import load_config
    from iiwa_rl.evaluation import deterministic_policy, run_episodes, summarize_episodes
    from iiwa_rl.train import Trainer

    every = max(1, steps // eval_points)
    config = load_config(
        ROOT / f"configs/reach_{algorithm}.yaml",
        [
            f"seed={seed}",
            f"train.total_steps={steps}",
            "train.max_wall_seconds=null",
            f"train.eval_every_steps={10 * steps}",  # evaluated below, on shared seeds
            "train.eval_episodes=1",  # the trainer's own closing evaluation: keep it short
            f"train.checkpoint_every_steps={10 * steps}",
            "train.progress=quiet",
            "device=cpu",
        ],
    )
    run_dir = out / f"{algorithm}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(config, run_dir)
    env = gym.make(config.env.id, **config.env.kwargs)
    curve: dict[str, list[float]] = {"steps": [], "wall": [], "success": [], "return": []}
    evaluation_seconds = 0.0
    started = time.perf_counter()

    # Evaluate from inside the loop: wrap the algorithm's update, the one per-round hook.
    algo = trainer.algorithm
    inner_update = algo.update
    next_point = [every]

    def evaluate_now() -> None:
        nonlocal evaluation_seconds
        evaluated = time.perf_counter()
        act = deterministic_policy(algo.deterministic_actor(), trainer.obs_normalizer)

        summary = summarize_episodes(run_episodes(act, env, 20, eval_seed(len(curve["steps"]))))
        curve["steps"].append(trainer.global_step)
        curve["wall"].append(evaluated - started - evaluation_seconds)
        curve["success"].append(summary["success_rate"])
        curve["return"].append(summary["mean_return"])
        evaluation_seconds += time.perf_counter() - evaluated

    def update_then_maybe_evaluate(progress: float) -> dict:
        result = inner_update(progress)
        if trainer.global_step >= next_point[0]:
            next_point[0] += every
            evaluate_now()
        return result

    algo.update = update_then_maybe_evaluate
    trainer.train()
    if not curve["steps"] or curve["steps"][-1] < trainer.global_step:
        evaluate_now()  # the budget ended between evaluation points: the final policy too
    total = time.perf_counter() - started
    env.close()
    return _result(algorithm, seed, trainer.global_step, total - evaluation_seconds, curve)


def run_sb3_ppo(steps: int, seed: int, eval_points: int) -> dict:
    import gymnasium as gym
    from sb3_reference import sb3_ppo_from_config
    from stable_baselines3.common.callbacks import BaseCallback

    import iiwa_rl.envs  # noqa: F401
    from iiwa_rl.config import load_config
    from iiwa_rl.evaluation import run_episodes, summarize_episodes

    torch.set_num_threads(1)
    config = load_config(ROOT / "configs/reach_ppo.yaml")
    env_cfg = config.env
    model, venv = sb3_ppo_from_config(config, seed)
    env = gym.make(env_cfg.id, **env_cfg.kwargs)
    every = max(1, steps // eval_points)
    curve: dict[str, list[float]] = {"steps": [], "wall": [], "success": [], "return": []}
    state = {"evaluation_seconds": 0.0, "next": every}
    started = time.perf_counter()

    def evaluate_now(point: int) -> None:
        evaluated = time.perf_counter()
        summary = summarize_episodes(
            run_episodes(
                lambda obs: model.predict(venv.normalize_obs(obs), deterministic=True)[0],
                env,
                20,
                eval_seed(point),
            )
        )
        for key in curve:
            del curve[key][point:]
        curve["steps"].append(model.num_timesteps)
        curve["wall"].append(evaluated - started - state["evaluation_seconds"])
        curve["success"].append(summary["success_rate"])
        curve["return"].append(summary["mean_return"])
        state["evaluation_seconds"] += time.perf_counter() - evaluated

    class Evaluate(BaseCallback):
        def _on_rollout_end(self) -> None:
            # Called before the update on the rollout just collected.
            if self.num_timesteps >= state["next"]:
                state["next"] += every
                evaluate_now(len(curve["steps"]))

        def _on_step(self) -> bool:
            return True

    model.learn(total_timesteps=steps, callback=Evaluate())
    # The final policy, after the last update (replacing a point taken just before it).
    last = len(curve["steps"])
    evaluate_now(last - 1 if last and curve["steps"][-1] == model.num_timesteps else last)
    total = time.perf_counter() - started
    env.close()
    venv.close()
    return _result(
        "sb3_ppo", seed, int(model.num_timesteps), total - state["evaluation_seconds"], curve
    )


def _result(name: str, seed: int, steps: int, train_seconds: float, curve: dict) -> dict:
    return {
        "name": name,
        "seed": seed,
        "steps": steps,
        "train_seconds": train_seconds,
        "steps_per_second": steps / train_seconds,
        "curve": curve,
    }


def time_to(curve: dict, threshold: float = 0.9) -> tuple[float, float] | None:
    for steps, wall, success in zip(curve["steps"], curve["wall"], curve["success"]):
        if success >= threshold:
            return steps, wall
    return None


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    names = list(dict.fromkeys(r["name"] for r in results))
    for index, name in enumerate(names):
        runs = [r for r in results if r["name"] == name]
        for run_index, run in enumerate(runs):
            curve = run["curve"]
            label = name if run_index == 0 else None
            for row, key in enumerate(("success", "return")):
                axes[row, 0].plot(
                    curve["steps"],
                    curve[key],
                    color=f"C{index}",
                    alpha=0.8,
                    marker=".",
                    label=label,
                )
                axes[row, 1].plot(
                    curve["wall"], curve[key], color=f"C{index}", alpha=0.8, marker=".", label=label
                )
    for column, xlabel in enumerate(
        ("environment steps", "wall-clock seconds (training, evaluation excluded)")
    ):
        axes[0, column].set_ylabel("deterministic success rate (2 cm, 20 episodes)")
        axes[0, column].set_ylim(-0.02, 1.02)
        axes[1, column].set_ylabel("deterministic mean episode return")
        for row in range(2):
            axes[row, column].set_xlabel(xlabel)
            axes[row, column].grid(alpha=0.3)
            axes[row, column].legend()
    seeds = sorted({r["seed"] for r in results})
    figure.suptitle(
        f"IiwaReach-v0: PPO, TRPO, DDPG (iiwa-rl) and SB3 PPO, seeds {seeds}, one line per seed"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def table(results: list[dict]) -> str:
    lines = [
        "| algorithm | seeds | final success (mean, per seed) | final return | time to 90 % (steps; s) | steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["name"] for r in results):
        runs = [r for r in results if r["name"] == name]
        finals = [r["curve"]["success"][-1] for r in runs if r["curve"]["success"]]
        returns = [r["curve"]["return"][-1] for r in runs if r["curve"]["return"]]
        reached = [time_to(r["curve"]) for r in runs]
        hit = [t for t in reached if t is not None]
        if hit:
            to90 = (
                f"median {np.median([t[0] for t in hit]):,.0f}; {np.median([t[1] for t in hit]):.0f} s"
                f" ({len(hit)}/{len(runs)} seeds reached)"
            )
        else:
            to90 = f"not reached (0/{len(runs)})"
        lines.append(
            f"| {name} | {len(runs)} | {np.mean(finals):.0%} ({', '.join(f'{s:.0%}' for s in finals)}) "
            f"| {np.mean(returns):.2f} | {to90} | {np.mean([r['steps_per_second'] for r in runs]):.0f} |"
        )
    return "\n".join(lines)


def compare(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if args.keep and results_path.exists() else []
    done = {(r["name"], r["seed"]) for r in results}
    for name in args.algorithms:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            if name == "sb3_ppo":
                result = run_sb3_ppo(args.steps, seed, args.eval_points)
            else:
                result = run_ours(name, args.steps, seed, args.eval_points, out)
            results.append(result)
            results_path.write_text(json.dumps(results, indent=1))  # survive an interruption
            curve = result["curve"]
            print(
                f"{name} seed {seed}: final success {curve['success'][-1]:.0%}, return "
                f"{curve['return'][-1]:.2f}, {result['steps_per_second']:.0f} steps/s, "
                f"{result['train_seconds']:.0f} s",
                flush=True,
            )
    plot(results, out / "algorithms.png")
    text = table(results)
    (out / "algorithms.md").write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("throughput", help="DDPG training steps/s: ours vs SB3")
    speed.add_argument("--steps", type=int, default=3000, help="timed steps after the warm-up")
    speed.add_argument(
        "--envs", nargs="+", default=["Pendulum-v1", "IiwaReach-v0"], choices=list(DDPG_CONFIGS)
    )
    speed.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="both networks' sizes (default: the config's)",
    )
    speed.add_argument(
        "--batch-size", type=int, default=None, help="both sides' batch (default: the config's)"
    )
    speed.add_argument(
        "--utd", type=float, nargs="+", default=[1.0], help="gradient steps per environment step"
    )
    speed.add_argument("--out", default="runs/bench_algorithms")
    speed.add_argument(
        "overrides", nargs="*", help="config overrides for ours (key=value), after the bench's own"
    )
    versus = commands.add_parser("compare", help="PPO / TRPO / DDPG / SB3 PPO on IiwaReach-v0")
    versus.add_argument("--steps", type=int, default=150_000)
    versus.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    versus.add_argument(
        "--algorithms",
        nargs="+",
        default=["ppo", "trpo", "ddpg", "sb3_ppo"],
        choices=["ppo", "trpo", "ddpg", "sb3_ppo"],
    )
    versus.add_argument("--eval-points", type=int, default=10)
    versus.add_argument(
        "--keep", action="store_true", help="reuse finished runs in <out>/results.json"
    )
    versus.add_argument("--out", default="runs/bench_algorithms")
    args = parser.parse_args()
    throughput(args) if args.command == "throughput" else compare(args)


if __name__ == "__main__":
    main()
