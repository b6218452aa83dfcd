"""What the grasp's physics rate and solver iterations buy: fidelity figures and speed, side
by side, for each setting given.

    python benchmarks/bench_grasp_physics.py [--settings 200:30 100:30 100:10] [--episodes 100]
        [--policy assets/policies/grasp]

For each `physics_hz:solver_iterations` setting of IiwaGrasp-v0 (everything else default):
- scripted grasps: success of the scripted expert (envs/scripted.py) over --episodes
  random resets (seeds 0 to N-1);
- slide in the grip: while the cube is held high, how far its height relative to the TCP
  wanders (max minus min, per episode; median and worst over the episodes), a cube that
  slips in the fingers shows here;
- joint tracking: the largest joint error after holding the home pose for 1 s, and after
  a 0.3 rad step of A2 and A4 given 1 s to settle;
- env steps/s with random actions, single process, one thread (resets included);
- with --policy: that policy's success over the same number of deterministic episodes
  (the evaluation seeds, 10000 on), to see how a trained policy carries across settings.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy loads

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import iiwa_rl.envs  # noqa: E402,F401  (registers the ids)
from iiwa_rl.envs.scripted import ScriptedGrasp  # noqa: E402


def physics_setting(text: str) -> tuple[float, int]:
    """`HZ:ITERATIONS` (e.g. 100:10) as (physics_hz, solver_iterations); an argparse type."""
    try:
        rate, iterations = text.split(":")
        return float(rate), int(iterations)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected PHYSICS_HZ:SOLVER_ITERATIONS such as 100:10, got {text!r}"
        ) from None


def scripted_figures(env, episodes: int) -> dict:
    unwrapped = env.unwrapped
    successes, slides = 0, []
    for seed in range(episodes):
        expert = ScriptedGrasp(env)
        env.reset(seed=seed)
        relative_heights = []
        while True:
            _, _, terminated, truncated, info = env.step(expert())
            if info["metrics/held_steps"] > 0:
                tcp_height = unwrapped._current.tcp_position[2]
                relative_heights.append(float(unwrapped._cube_position[2] - tcp_height))
            if terminated or truncated:
                break
        successes += bool(info["is_success"])
        if relative_heights:
            slides.append(max(relative_heights) - min(relative_heights))
    return {
        "scripted_success": successes / episodes,
        "grip_slide_median_mm": 1000 * float(np.median(slides)) if slides else None,
        "grip_slide_worst_mm": 1000 * float(np.max(slides)) if slides else None,
    }


def tracking_figures(env) -> dict:
    unwrapped = env.unwrapped
    robot, sim = unwrapped.robot, unwrapped.sim
    one_second = int(round(sim.physics_hz))
    env.reset(seed=0)
    home = unwrapped.home_joint_positions
    robot.command_joint_positions(home)
    sim.step(one_second)
    hold_error = float(np.abs(robot.joint_state()[0] - home).max())
    target = home + np.array([0.0, 0.3, 0.0, 0.3, 0.0, 0.0, 0.0])
    robot.command_joint_positions(target)
    sim.step(one_second)
    step_error = float(np.abs(robot.joint_state()[0] - target).max())
    return {"hold_error_mrad": 1000 * hold_error, "step_error_mrad": 1000 * step_error}


def steps_per_second(env, steps: int) -> float:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.0, 1.0, (steps, *env.action_space.shape)).astype(np.float32)
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def policy_success(policy_path: str, rate: float, iterations: int, episodes: int) -> float:
    from iiwa_rl.config import EvalSection
    from iiwa_rl.evaluation import run_episodes, summarize_episodes
    from iiwa_rl.viz.policies import load_policy, make_env

    loaded = load_policy(policy_path)
    kwargs = {**loaded.env_kwargs, "physics_hz": rate, "solver_iterations": iterations}
    env = make_env(loaded.env_id, kwargs)
    try:
        results = run_episodes(loaded.bind(env), env, episodes, EvalSection().seed)
    finally:
        env.close()
    return summarize_episodes(results)["success_rate"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings",
        type=physics_setting,
        nargs="+",
        default=[(200.0, 30), (100.0, 30), (100.0, 15), (100.0, 10)],
        metavar="HZ:ITERATIONS",
    )
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--speed-steps", type=int, default=3000)
    parser.add_argument("--policy", help="also evaluate this policy (run dir or policy.onnx)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.speed_steps < 100:
        parser.error("--episodes must be >= 1 and --speed-steps >= 100")

    rows = []
    for rate, iterations in args.settings:
        env = gym.make("IiwaGrasp-v0", physics_hz=rate, solver_iterations=iterations)
        try:
            row = {"physics_hz": rate, "solver_iterations": iterations}
            row.update(scripted_figures(env, args.episodes))
            row.update(tracking_figures(env))
            row["steps_per_s"] = steps_per_second(env, args.speed_steps)
        finally:
            env.close()
        if args.policy:
            row["policy_success"] = policy_success(args.policy, rate, iterations, args.episodes)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    header = (
        "| physics | scripted success | grip slide median / worst | hold / step error | steps/s |"
    )
    rule = "|---|---:|---:|---:|---:|"
    if args.policy:
        header += " policy success |"
        rule += "---:|"
    print(header)
    print(rule)
    for row in rows:
        slide = (
            "n/a"
            if row["grip_slide_median_mm"] is None
            else f"{row['grip_slide_median_mm']:.1f} / {row['grip_slide_worst_mm']:.1f} mm"
        )
        line = (
            f"| {row['physics_hz']:g} Hz, {row['solver_iterations']} iterations "
            f"| {100 * row['scripted_success']:.0f} % | {slide} "
            f"| {row['hold_error_mrad']:.2f} / {row['step_error_mrad']:.2f} mrad "
            f"| {row['steps_per_s']:,.0f} |"
        )
        if args.policy:
            line += f" {100 * row['policy_success']:.0f} % |"
        print(line)
    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "episodes": args.episodes,
            "policy": args.policy,
            "rows": rows,
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
