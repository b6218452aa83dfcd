"""Per-joint velocity- and acceleration-limited setpoint streaming towards the policy's target.

The policy sets a target every control period; the robot wants a setpoint every robot period.
Each joint independently follows a discrete-time trapezoidal profile: it speeds up at most
`a*dt` per step, never exceeds `v_max`, and brakes so that it stops exactly on the target.

The braking rule is computed in discrete time, not from the continuous v^2 = 2*a*d, because
the continuous rule overshoots by up to one step's travel. With step speed u = n*a*dt the
distance still needed to stop after this step is a*dt^2 * sum_{k=1..floor(n)} (n - k); the
largest n whose own step plus that braking distance fits in the remaining distance is solved
in closed form. Taking at most that speed keeps the invariant "one more step can always start
braking within the acceleration limit", so the setpoint stream's finite differences obey both
limits and never pass the target, unless the target jumps so close that stopping in time would
need more deceleration: then the acceleration limit wins and the joint overshoots and returns.
"""

from __future__ import annotations

import numpy as np


def _max_step_units(distance_units: np.ndarray) -> np.ndarray:
    """Largest speed n (in units of a*dt) with n + braking distance(n) <= D (in a*dt^2)."""
    whole = np.floor((np.sqrt(1.0 + 8.0 * distance_units) - 1.0) / 2.0)
    # sqrt rounding can land one off at the triangular-number boundaries; fix it exactly.
    whole = np.where((whole + 1.0) * (whole + 2.0) / 2.0 <= distance_units, whole + 1.0, whole)
    whole = np.where(whole * (whole + 1.0) / 2.0 > distance_units, whole - 1.0, whole)
    whole = np.maximum(whole, 0.0)
    return (distance_units + whole * (whole + 1.0) / 2.0) / (whole + 1.0)


class JointInterpolator:
    """Streams setpoints towards a target at a fixed period within per-joint v and a limits."""

    def __init__(
        self,
        max_velocity: np.ndarray,
        max_acceleration: np.ndarray,
        period_s: float,
        initial_position: np.ndarray,
    ) -> None:
        self.max_velocity = np.array(max_velocity, dtype=float)
        self.max_acceleration = np.array(max_acceleration, dtype=float)
        if self.max_velocity.shape != self.max_acceleration.shape or self.max_velocity.ndim != 1:
            raise ValueError("max_velocity and max_acceleration need one entry per joint")
        if np.any(self.max_velocity <= 0) or np.any(self.max_acceleration <= 0):
            raise ValueError("velocity and acceleration limits must be positive")
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = float(period_s)
        self._speed_step = self.max_acceleration * self.period_s
        self._distance_unit = self.max_acceleration * self.period_s**2
        self.position = np.zeros_like(self.max_velocity)
        self.velocity = np.zeros_like(self.max_velocity)
        self.target = np.zeros_like(self.max_velocity)
        self.reset(initial_position)

    def reset(self, position: np.ndarray) -> None:
        """Restart at rest at `position`, with the target there too."""
        position = np.asarray(position, dtype=float)
        if position.shape != self.position.shape:
            raise ValueError(f"expected {self.position.shape[0]} joint positions")
        self.position[:] = position
        self.target[:] = position
        self.velocity[:] = 0.0

    def set_target(self, target: np.ndarray) -> None:
        target = np.asarray(target, dtype=float)
        if target.shape != self.target.shape:
            raise ValueError(f"expected {self.target.shape[0]} joint targets")
        self.target[:] = target

    @property
    def at_target(self) -> bool:
        return bool(np.all(self.position == self.target) and np.all(self.velocity == 0.0))

    def step(self) -> np.ndarray:
        """Advance one period; returns the new setpoint (a copy)."""
        remaining = self.target - self.position
        direction = np.sign(remaining)
        stop_speed = _max_step_units(np.abs(remaining) / self._distance_unit) * self._speed_step
        wanted = direction * np.minimum(stop_speed, self.max_velocity)
        new_velocity = np.clip(
            wanted, self.velocity - self._speed_step, self.velocity + self._speed_step
        )
        new_velocity = np.clip(new_velocity, -self.max_velocity, self.max_velocity)
        travel = new_velocity * self.period_s
        # Landing within rounding of the target counts as arrival: snapping there makes arrival
        # exact instead of leaving a 1e-17 residue that would need another braking cycle.
        arrives = np.abs(remaining - travel) <= 1e-12 * np.maximum(1.0, np.abs(self.target))
        self.position = np.where(arrives, self.target, self.position + travel)
        self.velocity = new_velocity
        return self.position.copy()
