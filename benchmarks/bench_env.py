"""Environment throughput: IiwaReach-v0 and IiwaGrasp-v0 against panda-gym's PandaReach-v3
and PandaPickAndPlace-v3, measured in the same run.

    PYTHONPATH=. python benchmarks/bench_env.py [--steps 6000] [--chunk 300] [--json OUT]

For each environment, random actions in [-1, 1]:
- single process on one thread: env steps per wall second, resets included; all the
  single-process envs live in one process and take turns of --chunk steps (see
  `measure_singles`), so ours and panda-gym's meet the same machine state;
- the share of that time spent inside PyBullet's stepSimulation (a timed wrapper around
  the env's own stepSimulation, measured in a second pass so that the first is untouched);
- ours only: `make_vector_env(mode="async")` with N = 2 and 4 subprocess workers, counted
  as env steps across all envs.
Simulated seconds per wall second put the figures on one scale: a control step of ours
is 1/control_hz of simulated time (read from the env's config), one of panda-gym's is
40 ms. An extra line gives the grasp env at another physics setting (--grasp-physics;
by default its former 200 Hz and 30 solver iterations). The ratios are total steps over
total seconds; the spread of the per-turn ratios is printed beside them.
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
from dataclasses import asdict, dataclass  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from bench_grasp_physics import physics_setting  # noqa: E402  (benchmarks/ is on sys.path)

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


def _run_steps(env, actions: np.ndarray) -> float:
    """Wall seconds for len(actions) steps from wherever the env is, resetting at each
    episode's end."""
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def _step_simulation_share(env, actions: np.ndarray) -> float:
    """Share of the wall time of len(actions) steps spent inside stepSimulation (a wrapper
    on the instance shadows the method for this pass only)."""
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
        env.reset(seed=0)
        elapsed = _run_steps(env, actions)
    finally:
        owner.stepSimulation = original
    return inside / elapsed


def measure_singles(
    specs: list[tuple[str, str, dict]], steps: int, chunk: int
) -> tuple[list[Row], dict[str, list[float]]]:
    """Single-process steps/s of every (name, env_id, kwargs) in `specs`, all alive in this
    process at once and stepped in turns of `chunk` steps until each has taken `steps`.
    Turns of a few hundred steps put every env under the same machine state: on this shared
    2-core machine one env's speed drifts by up to 30 % within minutes, more than one env
    measured after the other can tell apart from a real difference. Returns the rows and
    each env's seconds per turn."""
    envs, actions = {}, {}
    for name, env_id, kwargs in specs:
        env = gym.make(env_id, disable_env_checker=True, **kwargs)
        rng = np.random.default_rng(0)
        actions[name] = rng.uniform(-1.0, 1.0, (steps, *env.action_space.shape)).astype(np.float32)
        env.reset(seed=0)
        _run_steps(env, actions[name][: max(50, chunk // 2)])  # warm caches and allocators
        env.reset(seed=0)
        envs[name] = env
    turn_seconds: dict[str, list[float]] = {name: [] for name in envs}
    for begin in range(0, steps, chunk):
        for name, env in envs.items():
            turn_seconds[name].append(_run_steps(env, actions[name][begin : begin + chunk]))
    rows = []
    for name, env_id, _ in specs:
        env = envs[name]
        share = _step_simulation_share(env, actions[name][: min(steps, 3000)])
        speed = steps / sum(turn_seconds[name])
        rows.append(Row(name, env_id, "single", 1, speed, _control_period(env), share))
        env.close()
    return rows, turn_seconds


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
    parser.add_argument(
        "--steps", type=int, default=6000, help="env steps per env (single process: in turns)"
    )
    parser.add_argument("--chunk", type=int, default=300, help="single-process env steps per turn")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[2, 4], help="async worker counts"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    parser.add_argument(
        "--grasp-physics",
        type=physics_setting,
        default="200:30",
        metavar="HZ:ITERATIONS",
        help="physics rate and solver iterations of the extra grasp line (default: the "
        "grasp's former 200 Hz and 30 iterations); the rate must be a multiple of control_hz",
    )
    args = parser.parse_args(argv)
    if args.steps < 100:
        parser.error("--steps must be at least 100")
    if not 1 <= args.chunk <= args.steps:
        parser.error("--chunk must be between 1 and --steps")

    import panda_gym  # noqa: F401  (registers the Panda ids; imported late: it is optional)

    extra_rate, extra_iterations = args.grasp_physics
    extra_kwargs = {"physics_hz": extra_rate, "solver_iterations": extra_iterations}
    extra_grasp = f"IiwaGrasp-v0 at {extra_rate:g} Hz, {extra_iterations} iterations"
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
    singles_rows, turn_seconds = measure_singles(singles, args.steps, args.chunk)
    rows.extend(singles_rows)
    for row in singles_rows:
        print(f"  measured {row.name}: {row.steps_per_s:,.0f} steps/s", flush=True)
    # Per turn, ours against its reference: the spread says how steady the ratio is.
    turn_ratios = {
        key: [r / o for o, r in zip(turn_seconds[ours], turn_seconds[reference])]
        for key, (ours, reference) in pairs.items()
    }
    for env_id in ("IiwaReach-v0", "IiwaGrasp-v0"):
        for workers in args.workers:
            rows.append(measure_async(env_id, env_id, workers, args.steps))
            print(f"  measured {env_id} async x{workers}: {rows[-1].steps_per_s:,.0f} steps/s")
        # The training default on this machine: 16 envs stepped by 2 worker processes.
        rows.append(measure_async(env_id, env_id, 16, args.steps, mode="batched", workers=2))
        print(f"  measured {env_id} batched 16 on 2: {rows[-1].steps_per_s:,.0f} steps/s")
    load_after = os.getloadavg()

    by_name = {row.name: row for row in rows if row.mode == "single"}
    # Step ratios over all turns (total steps over total seconds, each env the same steps).
    ratios = {
        key: by_name[ours].steps_per_s / by_name[reference].steps_per_s
        for key, (ours, reference) in pairs.items()
    }
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
        spread = ""
        if key in turn_ratios:
            low, middle, high = np.percentile(turn_ratios[key], [0, 50, 100])
            spread = f"  (per turn: min {low:.2f}x, median {middle:.2f}x, max {high:.2f}x)"
        print(f"{key}: {value:.2f}x{verdict}{spread}")
    print(
        f"\nmachine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
    )

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": args.steps,
        "chunk": args.chunk,
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [load_before[0], load_after[0]],
        "rows": [{**asdict(row), "sim_s_per_wall_s": row.sim_s_per_wall_s} for row in rows],
        "ratios": ratios,
        "turn_ratio_quartiles": {
            key: np.percentile(values, [0, 25, 50, 75, 100]).tolist()
            for key, values in turn_ratios.items()
        },
        "targets": targets,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
