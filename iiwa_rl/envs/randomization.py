"""Domain randomisation: the `randomization:` section of an environment config.

A section maps term names to a range and a distribution:

    randomization:
      link_mass_scale: {range: [0.8, 1.2]}
      actuator_damping_scale: {range: [0.3, 3.0], distribution: log_uniform}
      command_latency: {range: [0, 2]}

Every term is off unless named, so a config without the section is today's environment,
number for number. A named term draws its value once per episode (at reset) from the env's
`np_random`; a range whose ends are equal is that fixed value and draws nothing (the
robustness suite pins terms this way, so its episodes keep the nominal goals). Terms with
several components (one per joint, per link, per axis) draw each one independently. A
noise term's value is the standard deviation of the noise the env then adds at every step.
`distribution: ends` puts each component at one end of the range or the other, at random:
the suite's "all extremes at once".

Each term is one `Term` below: its name, unit, what its values may be, how many components
it draws, and `apply`, which writes the episode's value into the `Perturbation` the env acts
on (engine parameters at reset, the command stream's delay, the sensed state each step). The
env writes the values to `info` as `randomization/<term>` (the mean over components) and the
trainer logs them per episode beside the reward terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from iiwa_rl.schema import ConfigError, Range, check


@dataclass
class RandomizationRange:
    """One term's section: `range: [low, high]` and its distribution."""

    range: tuple[float, float]
    distribution: Literal["uniform", "log_uniform", "ends"] = "uniform"

    def __post_init__(self):
        low, high = self.range
        check(low <= high, f"range must be [low, high] with low <= high, got [{low:g}, {high:g}]")
        if self.distribution == "log_uniform":
            check(low > 0, f"a log_uniform range must be above 0, got [{low:g}, {high:g}]")


@dataclass
class Perturbation:
    """What one episode changes; the defaults are the nominal environment."""

    link_mass_scales: np.ndarray = field(default_factory=lambda: np.ones(7))
    payload_mass: float = 0.0  # kg at the flange
    payload_com_z: float = 0.0  # m along the flange's z axis from the flange
    joint_friction: np.ndarray = field(default_factory=lambda: np.zeros(7))  # N m, Coulomb
    joint_damping: np.ndarray | None = None  # N m s/rad; None keeps the URDF's
    # The joint servo's stiffness and damping, times the nominal's (PyBullet:
    # perturbed_robot.position_motor_gains; MuJoCo: the position actuator's kp and kv).
    stiffness_scale: float = 1.0
    damping_scale: float = 1.0
    force_limit_scale: float = 1.0  # times the datasheet torque
    command_latency_periods: int = 0  # on top of the loop's own one-period delay
    command_jitter_periods: int = 0  # per step, 0..this many more periods
    observation_latency_periods: int = 0
    joint_position_noise: float = 0.0  # rad, std per step
    joint_velocity_noise: float = 0.0  # rad/s, std per step
    joint_position_bias: np.ndarray = field(default_factory=lambda: np.zeros(7))
    joint_velocity_bias: np.ndarray = field(default_factory=lambda: np.zeros(7))
    start_pose_spread: float | None = None  # rad; None keeps initial_joint_noise
    cube_mass: float | None = None  # kg
    cube_size: float | None = None  # m edge
    cube_friction: float | None = None
    finger_friction: float | None = None
    cube_position_noise: float = 0.0  # m, std per step
    cube_position_bias: np.ndarray = field(default_factory=lambda: np.zeros(3))
    cube_pose_latency_steps: int = 0

    @property
    def senses_joints(self) -> bool:
        """Whether the measured joint state differs from the true one."""
        return bool(
            self.observation_latency_periods
            or self.joint_position_noise
            or self.joint_velocity_noise
            or np.any(self.joint_position_bias)
            or np.any(self.joint_velocity_bias)
        )

    @property
    def senses_cube(self) -> bool:
        return bool(
            self.cube_pose_latency_steps
            or self.cube_position_noise
            or np.any(self.cube_position_bias)
        )


@dataclass(frozen=True)
class Term:
    """A randomisation term: `field` of `Perturbation` receives the drawn value (an array of
    `components` values, a float, or an int when `integer`)."""

    name: str
    field: str
    unit: str
    allowed: Range
    description: str
    components: int = 1
    integer: bool = False
    grasp_only: bool = False
    # Ranges from issue 15's starting points; the suites and DR configs say why they differ.
    typical: tuple[float, float] = (0.0, 0.0)

    def value(self, draw: np.ndarray):
        if self.integer:
            return int(round(float(draw[0])))
        return draw.copy() if self.components > 1 else float(draw[0])

    def apply(self, perturbation: Perturbation, draw: np.ndarray) -> None:
        setattr(perturbation, self.field, self.value(draw))


TERMS: dict[str, Term] = {
    term.name: term
    for term in (
        # --- the arm
        Term(
            "joint_friction",
            "joint_friction",
            "N m",
            Range(ge=0),
            "Coulomb friction against each joint's motion",
            components=7,
            typical=(0.0, 0.3),
        ),
        Term(
            "joint_damping",
            "joint_damping",
            "N m s/rad",
            Range(ge=0),
            "viscous damping of each joint (the URDF's is 0.5)",
            components=7,
            typical=(0.1, 2.0),
        ),
        Term(
            "link_mass_scale",
            "link_mass_scales",
            "x",
            Range(gt=0),
            "each moving link's mass and inertia, scaled",
            components=7,
            typical=(0.8, 1.2),
        ),
        Term(
            "payload_mass",
            "payload_mass",
            "kg",
            Range(ge=0),
            "a point mass at the flange",
            typical=(0.0, 2.0),
        ),
        Term(
            "payload_com_z",
            "payload_com_z",
            "m",
            Range(ge=-0.2, le=0.3),
            "the payload's centre of mass along the flange z axis",
            typical=(0.0, 0.1),
        ),
        Term(
            "actuator_stiffness_scale",
            "stiffness_scale",
            "x",
            Range(gt=0),
            "the joint position controller's stiffness (position gain)",
            typical=(0.75, 1.5),
        ),
        Term(
            "actuator_damping_scale",
            "damping_scale",
            "x",
            Range(gt=0),
            "the joint position controller's damping (velocity gain), its stiffness held",
            typical=(0.3, 3.0),
        ),
        Term(
            "force_limit_scale",
            "force_limit_scale",
            "x",
            Range(gt=0, le=1.5),
            "the joint position controller's torque limit, times the datasheet's",
            typical=(0.6, 1.0),
        ),
        # --- timing
        Term(
            "command_latency",
            "command_latency_periods",
            "robot periods",
            Range(ge=0, le=6),
            "periods a new target waits beyond the loop's own one",
            integer=True,
            typical=(0, 2),
        ),
        Term(
            "command_jitter",
            "command_jitter_periods",
            "robot periods",
            Range(ge=0, le=6),
            "each policy step's target waits 0..this many further periods (a late policy)",
            integer=True,
            typical=(0, 1),
        ),
        Term(
            "observation_latency",
            "observation_latency_periods",
            "robot periods",
            Range(ge=0, le=16),
            "age of the joint state the policy sees",
            integer=True,
            typical=(0, 2),
        ),
        # --- sensing
        Term(
            "joint_position_noise",
            "joint_position_noise",
            "rad (std)",
            Range(ge=0),
            "measured joint position noise per step",
            typical=(0.0, 0.001),
        ),
        Term(
            "joint_velocity_noise",
            "joint_velocity_noise",
            "rad/s (std)",
            Range(ge=0),
            "measured joint velocity noise per step",
            typical=(0.0, 0.02),
        ),
        Term(
            "joint_position_bias",
            "joint_position_bias",
            "rad",
            Range(ge=-0.05, le=0.05),
            "a per-episode offset of each measured joint position",
            components=7,
            typical=(-0.002, 0.002),
        ),
        Term(
            "joint_velocity_bias",
            "joint_velocity_bias",
            "rad/s",
            Range(ge=-0.5, le=0.5),
            "a per-episode offset of each measured joint velocity",
            components=7,
            typical=(-0.01, 0.01),
        ),
        # --- the reset
        Term(
            "start_pose_spread",
            "start_pose_spread",
            "rad",
            Range(ge=0, le=0.5),
            "half-width of the uniform start pose spread around home",
            typical=(0.0, 0.2),
        ),
        # --- grasp
        Term(
            "cube_mass",
            "cube_mass",
            "kg",
            Range(gt=0, le=2),
            "the cube's mass",
            grasp_only=True,
            typical=(0.05, 0.3),
        ),
        Term(
            "cube_size",
            "cube_size",
            "m",
            Range(ge=0.02, le=0.07),
            "the cube's edge",
            grasp_only=True,
            typical=(0.04, 0.05),
        ),
        Term(
            "cube_friction",
            "cube_friction",
            "",
            Range(gt=0, le=3),
            "the cube's lateral friction coefficient",
            grasp_only=True,
            typical=(0.5, 1.2),
        ),
        Term(
            "finger_friction",
            "finger_friction",
            "",
            Range(gt=0, le=3),
            "the finger pads' lateral friction coefficient",
            grasp_only=True,
            typical=(0.5, 1.5),
        ),
        Term(
            "cube_position_noise",
            "cube_position_noise",
            "m (std)",
            Range(ge=0, le=0.05),
            "the cube position the policy sees, noise per step",
            grasp_only=True,
            typical=(0.0, 0.002),
        ),
        Term(
            "cube_position_bias",
            "cube_position_bias",
            "m",
            Range(ge=-0.05, le=0.05),
            "a per-episode offset of the seen cube position per axis (camera calibration)",
            components=3,
            grasp_only=True,
            typical=(-0.005, 0.005),
        ),
        Term(
            "cube_pose_latency",
            "cube_pose_latency_steps",
            "policy steps",
            Range(ge=0, le=5),
            "age of the cube pose the policy sees",
            integer=True,
            grasp_only=True,
            typical=(0, 1),
        ),
    )
}


def available_terms(with_gripper: bool) -> list[str]:
    return [name for name, term in TERMS.items() if with_gripper or not term.grasp_only]


class Randomizer:
    """The configured terms of one environment: checks them, draws an episode's values."""

    def __init__(
        self,
        section: dict[str, RandomizationRange],
        with_gripper: bool,
        where: str = "env.kwargs.randomization",
        max_command_delay_periods: int | None = None,
    ):
        allowed_names = available_terms(with_gripper)
        self.terms: list[tuple[Term, RandomizationRange]] = []
        for name, spec in section.items():
            key = f"{where}.{name}"
            term = TERMS.get(name)
            if term is None or name not in allowed_names:
                reason = "a grasp term; this task has no cube" if term else "unknown term"
                raise ConfigError(f"{key}: {reason}; expected one of: {', '.join(allowed_names)}")
            if not isinstance(spec, RandomizationRange):
                raise ConfigError(f"{key}: expected a mapping with range and distribution")
            for end in spec.range:
                if not term.allowed.contains(end):
                    raise ConfigError(
                        f"{key}.range: {name} ({term.unit}) must be {term.allowed.describe()}, "
                        f"got {end:g}"
                    )
                if term.integer and end != int(end):
                    raise ConfigError(f"{key}.range: {name} counts {term.unit}, got {end:g}")
            if spec.distribution == "log_uniform" and term.integer:
                raise ConfigError(f"{key}.distribution: {name} is a whole number; use uniform")
            self.terms.append((term, spec))
        # The same terms drawn at an end of their ranges (randomization_ends_fraction).
        self._terms_at_ends = [
            (term, RandomizationRange(spec.range, "ends")) for term, spec in self.terms
        ]
        delay_terms = ("command_latency", "command_jitter")
        if max_command_delay_periods is not None:
            worst = sum(spec.range[1] for term, spec in self.terms if term.name in delay_terms)
            if worst > max_command_delay_periods:
                raise ConfigError(
                    f"{where}: command_latency + command_jitter reach {worst:g} periods; a "
                    f"target must take effect within the policy period ({max_command_delay_periods}"
                    " periods after the loop's own one)"
                )

    def __bool__(self) -> bool:
        return bool(self.terms)

    def draw(
        self, rng: np.random.Generator, at_ends: bool = False
    ) -> tuple[Perturbation, dict[str, float]]:
        """One episode's perturbation, and the `info` figures of its terms. `at_ends` draws
        every term as `distribution: ends` (each component at one end of its range)."""
        perturbation = Perturbation()
        info = {}
        for term, spec in self._terms_at_ends if at_ends else self.terms:
            values = _draw(term, spec, rng)
            term.apply(perturbation, values)
            info[f"randomization/{term.name}"] = float(np.mean(values))
        return perturbation, info


def _draw(term: Term, spec: RandomizationRange, rng: np.random.Generator) -> np.ndarray:
    low, high = spec.range
    size = term.components
    if low == high:  # pinned: no draw, so the episode's other draws stay as they were
        return np.full(size, float(low))
    if spec.distribution == "ends":
        return np.where(rng.random(size) < 0.5, low, high).astype(float)
    if term.integer:
        return rng.integers(int(low), int(high) + 1, size).astype(float)
    if spec.distribution == "log_uniform":
        return np.exp(rng.uniform(math.log(low), math.log(high), size))
    return rng.uniform(low, high, size)
