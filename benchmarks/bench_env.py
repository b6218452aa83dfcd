"""Environment throughput: IiwaReach-v0 and IiwaGrasp-v0 against panda-gym's PandaReach-v3
and PandaPickAndPlace-v3, measured in the same run.

    PYTHONPATH=. python benchmarks/bench_env.py [--steps 3000] [--json OUT]

For each environment, random actions in [-1, 1]:
- single process on one thread: env steps per wall second, resets included;
- the share of that time spent inside PyBullet's stepSimulation (a timed wrapper around
  the env's own stepSimulation, measured in a second pass so that the first is untouched);
- ours only: `make_vector_env(mode="async")` with N = 2 and 4 subprocess workers, counted
  as env steps across all envs.
Simulated seconds per wall second put the figures on one scale: a control step of ours
is 1/control_hz of simulated time (read from the env's config), one of panda-gym's is
40 ms. An extra line gives the grasp env at another physics rate (--grasp-physics-hz;
by default its former 200 Hz and 30 solver iterations).

The single-process figures are the median of --repeats rounds, each round measuring every
env once in turn, each of ours right before its panda-gym reference; the ratios are the
median of the per-round ratios. On this shared 2-core machine the speed of one and the
same env drifts by up to 30 % within minutes: a pair measured back to back meets the
same machine state.
"""

from __future__ import annotations

import os

# Before numpy or torch load: one thread per process, in this process and in the
# subprocess workers it spawns (they inherit the environment).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import iiwa_rl.envs  # noqa: E402,F401  (registers the ids)
from iiwa_rl.envs import make_vector_env  # noqa: E402

try:  # torch is not needed to step an env; pin it to one thread if it is there
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    torch = None


@dataclass
class Row:
    name: str
    env_id: str
    mode: str  # "single" or "async"
    num_envs: int
    steps_per_s: float
    control_period_s: float
    step_simulation_share: float | None = None  # of the wall time, single process only

    @property
    def sim_s_per_wall_s(self) -> float:
        return self.steps_per_s * self.control_period_s


def _step_simulation_owner(env):
    """The object whose `stepSimulation` attribute the env calls: our PhysicsClient, or
    panda-gym's BulletClient."""
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "robot") and hasattr(unwrapped.sim, "client"):
        return unwrapped.sim.client  # iiwa_rl: BulletSim.step calls client.stepSimulation
    return unwrapped.sim.physics_client  # panda-gym: PyBullet.step


def _control_period(env) -> float:
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "config"):
        return 1.0 / unwrapped.config.control_hz
    return float(unwrapped.sim.dt)  # panda-gym: timestep * n_substeps


def _run_single(env, actions: np.ndarray) -> float:
    """Wall seconds for len(actions) steps, resetting at each episode's end."""
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def measure_single(name: str, env_id: str, steps: int, **kwargs) -> Row:
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    rng = np.random.default_rng(0)
    shape = (steps, *env.action_space.shape)
    actions = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    _run_single(env, actions[: max(50, steps // 20)])  # warm up caches and allocators
    elapsed = _run_single(env, actions)

    # Second pass with stepSimulation timed (a wrapper on the instance shadows the method).
    owner = _step_simulation_owner(env)
    original = owner.stepSimulation
    inside = 0.0

    def timed_step_simulation(*args, **kw):
        nonlocal inside
        begin = time.perf_counter()
        result = original(*args, **kw)
        inside += time.perf_counter() - begin
        return result

    owner.stepSimulation = timed_step_simulation
    try:
        timed_elapsed = _run_single(env, actions)
    finally:
        owner.stepSimulation = original
    period = _control_period(env)
    env.close()
    return Row(name, env_id, "single", 1, steps / elapsed, period, inside / timed_elapsed)


def measure_async(
    name: str,
    env_id: str,
    num_envs: int,
    steps: int,
    mode: str = "async",
    workers: int | None = None,
) -> Row:
    """`steps` env steps in all, spread over `num_envs` envs: one subprocess each (async) or
    `workers` subprocesses stepping a slice each (batched)."""
    envs = make_vector_env(env_id, num_envs, mode=mode, workers=workers)
    try:
        rng = np.random.default_rng(0)
        iterations = max(1, steps // num_envs)
        shape = (iterations, num_envs, *envs.single_action_space.shape)
        actions = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        envs.reset(seed=0)
        for action in actions[: max(20, iterations // 20)]:  # workers warm up
            envs.step(action)
        start = time.perf_counter()
        for action in actions:
            envs.step(action)  # SAME_STEP autoreset: ended envs reset inside the step
        elapsed = time.perf_counter() - start
        probe = gym.make(env_id)
        period = _control_period(probe)
        probe.close()
    finally:
        envs.close()
    label = "async" if mode == "async" else f"batched:{workers}"
    return Row(name, env_id, label, num_envs, iterations * num_envs / elapsed, period)


def _median_row(rows: list[Row]) -> Row:
    """The rounds of one env folded into one row: median speed and median stepSimulation share."""
    speeds = [row.steps_per_s for row in rows]
    shares = [row.step_simulation_share for row in rows]
    return replace(
        rows[0],
        steps_per_s=float(np.median(speeds)),
        step_simulation_share=float(np.median(shares)),
    )


def _format_table(rows: list[Row]) -> str:
    lines = [
        "| environment | processes | env steps/s | sim s / wall s | in stepSimulation |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        if row.mode == "single":
            processes = "1 (one thread)"
        elif row.mode == "async":
            processes = f"async, {row.num_envs} workers"
        else:
            processes = f"batched, {row.num_envs} envs on {row.mode.split(':')[1]} workers"
        share = (
            "" if row.step_simulation_share is None else f"{100 * row.step_simulation_share:.0f} %"
        )
        lines.append(
            f"| {row.name} | {processes} | {row.steps_per_s:,.0f} | "
            f"{row.sim_s_per_wall_s:,.1f} | {share} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="env steps per measurement")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[2, 4], help="async worker counts"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of the single-process measurements"
    )
    parser.add_argument(
        "--grasp-physics",
        default="200:30",
        metavar="HZ:ITERATIONS",
        help="physics rate and solver iterations of the extra grasp line (default: the "
        "grasp's former 200 Hz and 30 iterations); the rate must be a multiple of control_hz",
    )
    args = parser.parse_args(argv)
    if args.steps < 100:
        parser.error("--steps must be at least 100")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import panda_gym  # noqa: F401  (registers the Panda ids; imported late: it is optional)

    try:
        extra_rate, extra_iterations = args.grasp_physics.split(":")
        extra_kwargs = {"physics_hz": float(extra_rate), "solver_iterations": int(extra_iterations)}
    except ValueError:
        parser.error(
            f"--grasp-physics: expected HZ:ITERATIONS such as 200:30, got {args.grasp_physics!r}"
        )
    extra_grasp = f"IiwaGrasp-v0 at {extra_rate} Hz, {extra_iterations} iterations"
    load_before = os.getloadavg()
    rows: list[Row] = []
    # Each of ours right before its reference, so that a pair meets the same machine state.
    singles = [
        ("IiwaReach-v0", "IiwaReach-v0", {}),
        ("PandaReach-v3", "PandaReach-v3", {}),
        ("IiwaGrasp-v0", "IiwaGrasp-v0", {}),
        ("PandaPickAndPlace-v3", "PandaPickAndPlace-v3", {}),
        (extra_grasp, "IiwaGrasp-v0", extra_kwargs),
    ]
    pairs = {
        "reach/PandaReach steps": ("IiwaReach-v0", "PandaReach-v3"),
        "grasp/PandaPickAndPlace steps": ("IiwaGrasp-v0", "PandaPickAndPlace-v3"),
        f"{extra_grasp}/PandaPickAndPlace steps": (extra_grasp, "PandaPickAndPlace-v3"),
    }
    rounds: dict[str, list[Row]] = {name: [] for name, _, _ in singles}
    round_ratios: dict[str, list[float]] = {key: [] for key in pairs}
    for round_index in range(args.repeats):
        for name, env_id, kwargs in singles:
            row = measure_single(name, env_id, args.steps, **kwargs)
            rounds[name].append(row)
            print(f"  round {round_index + 1}: {name}: {row.steps_per_s:,.0f} steps/s", flush=True)
        for key, (ours, reference) in pairs.items():
            ratio = rounds[ours][-1].steps_per_s / rounds[reference][-1].steps_per_s
            round_ratios[key].append(ratio)
            print(f"  round {round_index + 1}: {key}: {ratio:.2f}x", flush=True)
    rows.extend(_median_row(measured) for measured in rounds.values())
    for env_id in ("IiwaReach-v0", "IiwaGrasp-v0"):
        for workers in args.workers:
            rows.append(measure_async(env_id, env_id, workers, args.steps))
            print(f"  measured {env_id} async x{workers}: {rows[-1].steps_per_s:,.0f} steps/s")
        # The training default on this machine: 16 envs stepped by 2 worker processes.
        rows.append(measure_async(env_id, env_id, 16, args.steps, mode="batched", workers=2))
        print(f"  measured {env_id} batched 16 on 2: {rows[-1].steps_per_s:,.0f} steps/s")
    load_after = os.getloadavg()

    by_name = {row.name: row for row in rows if row.mode == "single"}
    # Step ratios: the median of the per-round ratios (each pair measured back to back).
    ratios = {key: float(np.median(values)) for key, values in round_ratios.items()}
    ratios["reach/PandaReach sim time"] = (
        by_name["IiwaReach-v0"].sim_s_per_wall_s / by_name["PandaReach-v3"].sim_s_per_wall_s
    )
    ratios["grasp/PandaPickAndPlace sim time"] = (
        by_name["IiwaGrasp-v0"].sim_s_per_wall_s / by_name["PandaPickAndPlace-v3"].sim_s_per_wall_s
    )
    targets = {
        "reach/PandaReach steps": 5.0,
        "grasp/PandaPickAndPlace steps": 4.0,
    }

    print()
    print(_format_table(rows))
    print()
    for key, value in ratios.items():
        target = targets.get(key)
        verdict = (
            ""
            if target is None
            else f"  (target >= {target:g}x: {'met' if value >= target else 'NOT met'})"
        )
        print(f"{key}: {value:.2f}x{verdict}")
    print(
        f"\nmachine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
    )

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": args.steps,
        "repeats": args.repeats,
        "single_rounds_steps_per_s": {
            name: [row.steps_per_s for row in measured] for name, measured in rounds.items()
        },
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [load_before[0], load_after[0]],
        "rows": [{**asdict(row), "sim_s_per_wall_s": row.sim_s_per_wall_s} for row in rows],
        "ratios": ratios,
        "round_ratios": round_ratios,
        "targets": targets,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
