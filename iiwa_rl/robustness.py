"""`iiwa-rl robustness POLICY [POLICY ...] [--suite FILE] [--engine pybullet|mujoco]`:
a policy's success with each randomisation term at the ends of its range, one at a time,
and all at once, nominal first.

A suite (configs/robustness_reach.yaml, configs/robustness_grasp.yaml) names the task, the
episodes per setting, the first seed and the terms with their ranges (the `randomization:`
terms of envs/randomization.py; `terms: {}` runs the nominal setting alone). The settings
are:
- `nominal`: no term;
- `<term>=<low>` and `<term>=<high>`: one term pinned at an end;
- `all_low`, `all_high`: every term at that end together;
- `all_corners`: every term at one end or the other, drawn per episode and component.

Episode i of every setting has seed `seed + i`: a pinned term draws nothing, so every
setting meets the same goals (or cube poses) as the nominal one.

Engines:
- `pybullet`: environment episodes of the policy's own task (the training simulator);
- `mujoco` (reach): the controller loop (iiwa_deploy.ControlLoop, as `iiwa-rl deploy`) against
  the MuJoCo plant, the arm terms applied to the MuJoCo model and the timing and sensing
  terms by `PerturbedPlant` between the loop and the plant.

Writes robustness.csv, robustness.md and robustness.png (a heat map: success per setting and
policy) into --output-dir.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from iiwa_rl.envs.config import TRAINING_ONLY_OPTIONS
from iiwa_rl.envs.randomization import Perturbation, RandomizationRange, Randomizer
from iiwa_rl.schema import ConfigError, NonNegativeInt, PositiveInt, from_mapping

# What the MuJoCo engine can apply: the arm's terms on the model, and the timing and
# sensing terms between the loop and the plant. A late policy step (jitter) and a start
# spread need the environment's own stepping.
MUJOCO_TERMS = (
    "joint_friction",
    "joint_damping",
    "link_mass_scale",
    "payload_mass",
    "payload_com_z",
    "actuator_stiffness_scale",
    "actuator_damping_scale",
    "force_limit_scale",
    "command_latency",
    "observation_latency",
    "joint_position_noise",
    "joint_velocity_noise",
    "joint_position_bias",
    "joint_velocity_bias",
)


@dataclass
class SuiteConfig:
    task: Literal["reach", "grasp"]
    terms: dict[str, RandomizationRange]
    episodes: PositiveInt = 50
    seed: NonNegativeInt = 10_000
    combined: bool = True  # the all_low, all_high and all_corners settings


@dataclass
class Setting:
    label: str
    term: str  # "" for nominal, "all" for the combined ones
    value: str
    section: dict[str, RandomizationRange] = field(default_factory=dict)


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and check a suite; every error names the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        suite = from_mapping(SuiteConfig, data, "")
        Randomizer(suite.terms, with_gripper=suite.task == "grasp", where="terms")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return suite


def settings_of(suite: SuiteConfig) -> list[Setting]:
    def pinned(value: float) -> RandomizationRange:
        return RandomizationRange((value, value))

    settings = [Setting("nominal", "", "")]
    for name, spec in suite.terms.items():
        for value in dict.fromkeys(spec.range):  # one setting when both ends are equal
            settings.append(Setting(f"{name}={value:g}", name, f"{value:g}", {name: pinned(value)}))
    if suite.combined and len(suite.terms) > 1:
        for end, label in ((0, "all_low"), (1, "all_high")):
            section = {name: pinned(spec.range[end]) for name, spec in suite.terms.items()}
            settings.append(Setting(label, "all", label.split("_")[1], section))
        corners = {
            name: RandomizationRange(spec.range, "ends") for name, spec in suite.terms.items()
        }
        settings.append(Setting("all_corners", "all", "corners", corners))
    return settings


# ----------------------------------------------------------------- PyBullet engine
def run_pybullet(source: str, suite: SuiteConfig, settings: list[Setting], episodes: int):
    from iiwa_rl.evaluation import run_episodes
    from iiwa_rl.metrics import distance_metric
    from iiwa_rl.viz.policies import load_policy, make_env

    loaded = load_policy(source)
    _check_task(loaded.env_id, suite, source)
    # The nominal environment of the policy: whatever it was trained under is replaced.
    kwargs = {k: v for k, v in loaded.env_kwargs.items() if k not in TRAINING_ONLY_OPTIONS}
    rows = []
    for setting in settings:
        section = {
            name: {"range": list(spec.range), "distribution": spec.distribution}
            for name, spec in setting.section.items()
        }
        env = make_env(loaded.env_id, {**kwargs, "randomization": section})
        try:
            distance = distance_metric(env)
            if distance is None:
                raise ConfigError(f"{source}: {loaded.env_id} declares no distance_metric")
            results = run_episodes(loaded.bind(env), env, episodes, suite.seed)
        finally:
            env.close()
        # The task's distance per episode, as it declares it (NaN where an episode has
        # none: a physics blow-up's end).
        distances = [r.metrics.get(distance, math.nan) for r in results]
        rows.append(_row(source, setting, [r.is_success for r in results], distances))
    return rows


def _check_task(env_id: str, suite: SuiteConfig, source: str) -> None:
    task = "grasp" if "Grasp" in env_id else "reach" if "Reach" in env_id else None
    if task != suite.task:
        raise ConfigError(
            f"{source}: a policy for {env_id}, the suite is for the {suite.task} task"
        )


# ------------------------------------------------------------------- MuJoCo engine
class PerturbedPlant:
    """A plant seen through the episode's timing and sensing terms, as a controller meets a
    real arm: each setpoint takes effect `command_latency` periods late; the state it reads is
    `observation_latency` periods old, biased and noisy. The arm's terms go to the plant's
    own model (`perturb`)."""

    def __init__(self, plant, perturbation: Perturbation, rng: np.random.Generator):
        self.plant = plant
        self.period_s = plant.period_s
        self.with_gripper = plant.with_gripper  # the controller's sim robot asks
        self.perturbation = perturbation
        self.rng = rng
        self._commands: deque[np.ndarray] = deque()
        self._states: deque[tuple[np.ndarray, np.ndarray]] = deque()
        plant.perturb(perturbation)

    def reset(self, initial_positions: np.ndarray) -> None:
        self.plant.reset(initial_positions)
        self._commands.clear()
        self._states.clear()
        self._states.append(self.plant.joint_state())

    def apply(self, setpoint_positions: np.ndarray) -> None:
        self._commands.append(np.array(setpoint_positions, dtype=float))

    def step(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        while len(self._commands) > self.perturbation.command_latency_periods:
            self.plant.apply(self._commands.popleft())
        self._states.append(self.plant.step(dt))
        while len(self._states) > self.perturbation.observation_latency_periods + 1:
            self._states.popleft()
        return self._sensed()

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self._sensed()

    def _sensed(self) -> tuple[np.ndarray, np.ndarray]:
        p, rng = self.perturbation, self.rng
        q, qd = self._states[0]
        q = q + p.joint_position_bias
        qd = qd + p.joint_velocity_bias
        if p.joint_position_noise:
            q = q + rng.normal(0.0, p.joint_position_noise, q.shape)
        if p.joint_velocity_noise:
            qd = qd + rng.normal(0.0, p.joint_velocity_noise, qd.shape)
        return q, qd

    def close(self) -> None:
        pass


def run_mujoco(source: str, suite: SuiteConfig, settings: list[Setting], episodes: int):
    from iiwa_deploy import prepare_policy

    from iiwa_rl.deploy_sim import deploy_in_sim
    from iiwa_rl.sim.mujoco_plant import MujocoPlant

    if suite.task != "reach":
        raise ConfigError(
            "robustness --engine mujoco: only the reach task; the grasp's terms (cube, "
            "fingers, camera) are not applied to the MuJoCo grasp scene yet"
        )
    unsupported = [name for name in suite.terms if name not in MUJOCO_TERMS]
    if unsupported:
        raise ConfigError(
            f"robustness --engine mujoco: terms.{unsupported[0]} cannot be applied to the MuJoCo "
            f"plant; it takes {', '.join(MUJOCO_TERMS)}"
        )
    from iiwa_deploy import ContractError

    model = Path(source)
    model = model / "policy.onnx" if model.is_dir() else model
    if not model.is_file():
        raise ConfigError(
            f"{source}: --engine mujoco runs the controller, which takes an export "
            "(policy.onnx); export a run first with `iiwa-rl export RUN_DIR`"
        )
    try:
        prepared = prepare_policy(model)
    except ContractError as error:
        raise ConfigError(f"{source}: the controller refuses it: {error}") from None
    contract = prepared.policy.contract
    _check_task(contract.env_id, suite, source)
    low, high = np.asarray(contract.goal_low), np.asarray(contract.goal_high)
    # As many actions as a training episode: success is judged at the same moment.
    policy_steps = int(contract.raw.get("env_kwargs", {}).get("episode_steps", 75))
    plant = MujocoPlant(prepared.robot.robot_period_s)
    rows = []
    for setting in settings:
        randomizer = Randomizer(setting.section, with_gripper=False, where="terms")
        successes, distances = [], []
        for episode in range(episodes):
            rng = np.random.default_rng(suite.seed + episode)
            goal = rng.uniform(low, high)
            perturbation = randomizer.draw(rng)[0] if randomizer else Perturbation()
            wrapped = PerturbedPlant(plant, perturbation, rng)
            summary = deploy_in_sim(prepared, goal, policy_steps, real_time=False, plant=wrapped)
            successes.append(bool(summary.success))
            distances.append(float(summary.final_distance_m))
        rows.append(_row(source, setting, successes, distances))
    return rows


# ------------------------------------------------------------------------ outputs
def _row(source: str, setting: Setting, successes, distances) -> dict:
    distances = np.asarray(distances, dtype=float)
    return {
        "policy": str(source),
        "setting": setting.label,
        "term": setting.term,
        "value": setting.value,
        "episodes": len(successes),
        "success_rate": float(np.mean(successes)),
        "median_final_distance_mm": float(np.nanmedian(distances) * 1000),
        "worst_final_distance_mm": float(np.nanmax(distances) * 1000),
    }


def write_outputs(rows: list[dict], output_dir: Path, title: str) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (
        output_dir / "robustness.csv",
        output_dir / "robustness.md",
        output_dir / "robustness.png",
    )
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    table = {(row["setting"], row["policy"]): row for row in rows}
    lines = [
        f"# {title}",
        "",
        "success (median / worst final distance, mm) per setting; nominal first",
        "",
        "| setting | " + " | ".join(policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for setting in settings:
        cells = []
        for policy in policies:
            row = table[(setting, policy)]
            cells.append(
                f"{row['success_rate']:.0%} ({row['median_final_distance_mm']:.1f} / "
                f"{row['worst_final_distance_mm']:.1f})"
            )
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    _heat_map(table, settings, policies, png_path, title)
    return [csv_path, md_path, png_path]


def _heat_map(table, settings, policies, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    success = np.array([[table[(s, p)]["success_rate"] for p in policies] for s in settings])
    figure, axes = plt.subplots(figsize=(2.2 + 2.0 * len(policies), 0.8 + 0.32 * len(settings)))
    image = axes.imshow(success * 100, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    axes.set_xticks(range(len(policies)), [Path(p).name or p for p in policies])
    axes.set_yticks(range(len(settings)), settings)
    for i in range(len(settings)):
        for j in range(len(policies)):
            axes.text(j, i, f"{success[i, j]:.0%}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axes, label="success %")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cmd_robustness(args: argparse.Namespace) -> int:
    suite_path = args.suite or _default_suite(args.policies[0])
    suite = load_suite(suite_path)
    episodes = args.episodes or suite.episodes
    settings = settings_of(suite)
    run = run_mujoco if args.engine == "mujoco" else run_pybullet
    rows = []
    for source in args.policies:
        print(
            f"{source}: {len(settings)} settings x {episodes} episodes ({args.engine})", flush=True
        )
        policy_rows = run(source, suite, settings, episodes)
        for row in policy_rows:
            print(
                f"  {row['setting']:<34} success {row['success_rate']:6.1%}  median "
                f"{row['median_final_distance_mm']:6.1f} mm",
                flush=True,
            )
        rows += policy_rows
    title = f"{Path(suite_path).name}, {args.engine}, {episodes} episodes per setting"
    for path in write_outputs(rows, Path(args.output_dir), title):
        print(f"wrote {path}")
    return 0


def _default_suite(source: str) -> Path:
    from iiwa_rl.viz.policies import load_policy

    task = "grasp" if "Grasp" in load_policy(source).env_id else "reach"
    return Path(__file__).resolve().parents[1] / "configs" / f"robustness_{task}.yaml"


def _positive(text: str) -> int:
    from iiwa_rl.cli import _positive as positive

    return positive(text)


def register_cli(commands) -> None:
    parser = commands.add_parser(
        "robustness",
        help="success with each randomisation term at its range's ends, one at a time and all",
    )
    parser.add_argument(
        "policies",
        nargs="+",
        metavar="POLICY",
        help="a run directory or an export (several: side by side)",
    )
    parser.add_argument("--suite", help="suite YAML (default: configs/robustness_<task>.yaml)")
    parser.add_argument("--engine", choices=["pybullet", "mujoco"], default="pybullet")
    parser.add_argument("--episodes", type=_positive, help="per setting (default: the suite's)")
    parser.add_argument(
        "--output-dir", default="robustness", help="where the CSV, Markdown and PNG go"
    )
    parser.set_defaults(handler=cmd_robustness)
