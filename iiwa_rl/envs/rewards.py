"""Reward terms: small named functions, combined by weights from the config.

A shaped reward is `sum(weight_i * term_i(inputs, **params_i))` over the terms a config
lists; every weighted term is also reported in `info` as ``reward/<name>`` so training
can log each one. Adding a term is adding a function to `REWARD_TERMS`; tuning is a YAML
edit. Terms return unweighted quantities with a fixed sign convention (distances and
penalties are positive), so the config's weights carry the signs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from iiwa_rl.schema import ConfigError


@dataclass
class RewardInputs:
    """What the reward may look at after one control step (base frame, SI units)."""

    tcp_position: np.ndarray
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    joint_lower: np.ndarray
    joint_upper: np.ndarray
    joint_velocity_limits: np.ndarray
    action: np.ndarray
    previous_action: np.ndarray
    is_success: bool  # the task's success condition holds at this step
    goal_position: np.ndarray | None = None  # reach
    cube_position: np.ndarray | None = None  # grasp
    cube_lift: float = 0.0  # cube height above its resting height, m
    finger_contacts: tuple[bool, bool] = (False, False)
    # Fingers touching the cube from above (tasks/grasp.py: fingers_on_cube_top), 0 to 2.
    fingers_on_cube_top: int = 0
    lift_target: float = 0.1
    extras: dict = field(default_factory=dict)


def _norm(vector: np.ndarray) -> float:
    # np.linalg.norm's dispatch costs more than the arithmetic on 3 to 8 numbers.
    return math.sqrt(float(vector @ vector))


def tcp_distance(x: RewardInputs) -> float:
    """Distance from the TCP to the goal, m."""
    return _norm(x.goal_position - x.tcp_position)


def tcp_distance_tanh(x: RewardInputs, std: float = 0.1) -> float:
    """1 at the goal, falling to 0 over a few `std` (m): a kernel that keeps a gradient close in."""
    return 1.0 - math.tanh(tcp_distance(x) / std)


def action_rate(x: RewardInputs) -> float:
    """Squared change of the action since the last step: penalises jerky commands."""
    change = x.action - x.previous_action
    return float(change @ change)


def action_magnitude(x: RewardInputs) -> float:
    return float(x.action @ x.action)


def joint_velocity(x: RewardInputs) -> float:
    """Squared joint speeds as fractions of their datasheet limits."""
    fractions = x.joint_velocities / x.joint_velocity_limits
    return float(fractions @ fractions)


def joint_limit_proximity(x: RewardInputs, margin: float = 0.2) -> float:
    """How deep the joints are inside a `margin` (rad) band at their limits, summed, in margins."""
    room = np.minimum(x.joint_positions - x.joint_lower, x.joint_upper - x.joint_positions)
    return float(np.maximum(margin - room, 0.0).sum()) / margin


def success(x: RewardInputs) -> float:
    return float(x.is_success)


def cube_distance_tanh(x: RewardInputs, std: float = 0.1) -> float:
    """1 with the TCP at the cube's centre, falling to 0 over a few `std` (m)."""
    return 1.0 - math.tanh(_norm(x.cube_position - x.tcp_position) / std)


def finger_contact(x: RewardInputs) -> float:
    """0.5 per finger touching the cube."""
    return 0.5 * (float(x.finger_contacts[0]) + float(x.finger_contacts[1]))


def finger_on_cube_top(x: RewardInputs) -> float:
    """Fingers pressing on the cube's top face, 0 to 2 (a penalty: weight it below 0). A
    grasp closes from the sides; a finger that lands on the top pushes the cube into the
    table, where PyBullet's cube tips over and a stiffer contact (MuJoCo's, a real table's)
    holds, and the arm's servos press on with hundreds of newtons."""
    return float(x.fingers_on_cube_top)


def cube_lift(x: RewardInputs, height: float | None = None) -> float:
    """Fraction of `height` (m; default the task's lift height) the cube is lifted, counted
    only while both fingers hold it (a cube knocked into the air earns nothing). Aiming
    `height` above the success height keeps the policy from hovering at the threshold."""
    if not all(x.finger_contacts):
        return 0.0
    return min(max(x.cube_lift / (height or x.lift_target), 0.0), 1.0)


def cube_held_high(x: RewardInputs, height: float | None = None) -> float:
    """1 while the cube is held at or above `height` (m; default the task's lift height)."""
    return float(all(x.finger_contacts) and x.cube_lift >= (height or x.lift_target))


REWARD_TERMS: dict[str, Callable[..., float]] = {
    fn.__name__: fn
    for fn in (
        tcp_distance,
        tcp_distance_tanh,
        action_rate,
        action_magnitude,
        joint_velocity,
        joint_limit_proximity,
        success,
        cube_distance_tanh,
        finger_contact,
        finger_on_cube_top,
        cube_lift,
        cube_held_high,
    )
}


class RewardFunction:
    """The weighted sum of the configured terms.

    Args:
        terms: ``{name: {"weight": w, <param>: value, ...}}`` as in the YAML.
        sparse: replace the shaped sum by -1 per step until success (0 at success).
        available: term names this task can compute (a reach task has no cube).
    """

    def __init__(self, terms: dict[str, dict], sparse: bool, available: set[str], where: str):
        self.sparse = sparse
        # (info key "reward/<name>", weight, the term function with its parameters bound)
        self.terms: list[tuple[str, float, Callable[[RewardInputs], float]]] = []
        for key_name, spec in terms.items():
            term_where = f"{where}.{key_name}"
            # "term/label" is a second instance of a term with its own parameters, e.g. a
            # fine-grained `tcp_distance_tanh/fine` beside the coarse `tcp_distance_tanh`.
            name, _, label = key_name.partition("/")
            if name not in REWARD_TERMS or (_ and not label):
                raise ConfigError(
                    f"{term_where}: unknown reward term; known terms: {', '.join(REWARD_TERMS)} "
                    "(a second instance of a term is named term/label)"
                )
            if name not in available:
                raise ConfigError(f"{term_where}: this task cannot compute the term '{name}'")
            if not isinstance(spec, dict) or "weight" not in spec:
                raise ConfigError(f"{term_where}: expected a mapping with a 'weight'")
            fn = REWARD_TERMS[name]
            accepted = set(inspect.signature(fn).parameters) - {"x"}
            params = {k: v for k, v in spec.items() if k != "weight"}
            for key, value in {"weight": spec["weight"], **params}.items():
                if key != "weight" and key not in accepted:
                    raise ConfigError(
                        f"{term_where}.{key}: unknown parameter; '{name}' takes "
                        f"{sorted(accepted) or 'no parameters'}"
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{term_where}.{key}: expected a number, got {value!r}")
            # Bound once: a call with **params costs more than the term's own arithmetic.
            term = functools.partial(fn, **params) if params else fn
            self.terms.append((f"reward/{key_name}", float(spec["weight"]), term))

    def __call__(self, inputs: RewardInputs) -> tuple[float, dict[str, float]]:
        """Total reward and each weighted term (logged even when the reward is sparse)."""
        parts = {key: weight * term(inputs) for key, weight, term in self.terms}
        if self.sparse:
            return (0.0 if inputs.is_success else -1.0), parts
        return float(sum(parts.values())), parts
