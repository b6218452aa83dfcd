"""Keeps the commanded TCP and finger tips above the table, shared by training and the robot.

A grasp's Cartesian targets all keep the finger tips above the table (the TCP target box's
floor), but the setpoints streamed *between* two targets do not: each joint follows its own
velocity- and acceleration-limited profile, so mid-way the joints are not in proportion, and
a joint still moving when a new target arrives carries on for its braking distance. Near the
table that dipped the commanded finger tips 5 mm under the lowest target in simulation and
to the table plane through the controller in real time, where the cell gate (cell.py)
latched a fault and the grasp stopped.

`FloorGuard` looks ahead instead. When a new joint target is set it steps a copy of the
interpolator, which streams exactly the setpoints the real one will, along two paths: on to
the target for two policy periods (the next target is due after one; the second covers a
policy step that comes late), and, from one policy period on, braking to rest (the fallback
below; `JointInterpolator.braking_setpoints` writes that path in closed form). If the lowest
TCP or finger tip on them would come within `margin_m` of the floor, it lifts the target, one
damped-least-squares step straight up at the target, by what was missing, and looks again; if
two lifts do not clear it, the stream brakes instead, along the path the previous accepted
target's preview already cleared. A target is only previewed when the arm is near enough to
the table for its motion to reach the floor (a bound from the joints' travel and the arm's
reach), so steps away from the table cost at most one forward kinematics call.

iiwa_rl's grasp environment sets the same guard on its command stream, so the policy was
trained with it: far from the table it changes nothing, number for number.
"""

from __future__ import annotations

import math

import numpy as np

from .interpolator import JointInterpolator
from .kinematics import KinematicChain, differential_ik_step, quaternion_from_matrix

# Lifts of a target before the guard brakes instead: one lift by the measured shortfall
# clears it nearly always (the lifted path is the same motion shifted up).
MAX_LIFTS = 2
# The path on to the target is previewed for this many policy periods: the next target is
# due after one, and a policy step late by up to a period stays covered. (Previewing to the
# arrival instead cost 60 periods a target, the env's step 1.5x.)
LATE_POLICY_PERIODS = 2


class FloorGuard:
    """See the module docstring. `points_m` are the finger tips in the TCP frame (k x 3);
    the TCP itself is watched too. `floor_m` is the table plane plus the clearance (base
    frame z); the previewed setpoints keep `margin_m` above it."""

    def __init__(
        self,
        chain: KinematicChain,
        points_m: np.ndarray,
        floor_m: float,
        target_lower: np.ndarray,
        target_upper: np.ndarray,
        margin_m: float = 0.001,
    ) -> None:
        points = np.asarray(points_m, dtype=float).reshape(-1, 3)
        if not (math.isfinite(floor_m) and math.isfinite(margin_m) and margin_m >= 0):
            raise ValueError(
                f"floor_m and margin_m must be finite (margin >= 0): {floor_m}, {margin_m}"
            )
        self.chain = chain
        self.points = points
        self.floor_m = float(floor_m)
        self.margin_m = float(margin_m)
        self.target_lower = np.asarray(target_lower, dtype=float)
        self.target_upper = np.asarray(target_upper, dtype=float)
        # How far a point of the hand can rise or fall per radian of each joint: no farther
        # than its distance from the joint's axis, at most the links after the joint, the
        # TCP offset and the farthest finger tip laid end to end. The first joint's axis is
        # fixed in the base frame, and only its tilt from vertical moves anything up or down.
        hand_m = math.hypot(*chain._tcp_origin) + float(
            np.max(np.linalg.norm(points, axis=1), initial=0.0)
        )
        links = [math.hypot(*origin) for origin in chain._origins]
        self.levers_m = np.array([sum(links[j + 1 :]) + hand_m for j in range(len(links))])
        first_axis = np.asarray(chain._fixed_rotations[0]).reshape(3, 3) @ chain._axes[0]
        self.levers_m[0] *= math.sqrt(max(0.0, 1.0 - float(first_axis[2]) ** 2))
        # The last forward kinematics of the bound: (joint positions, lowest hand point).
        self._reference: tuple[np.ndarray, float] | None = None
        self.lifted = 0  # targets lifted clear of the floor
        self.braked = 0  # targets replaced by braking: no lift cleared them

    def lowest_points(self, joint_positions: np.ndarray) -> np.ndarray:
        """The lowest of the TCP and the finger tips (base z, m) for each of N x n joint
        configurations."""
        return self.chain.heights(joint_positions, self.points).min(axis=1)

    def guarded_target(
        self, interpolator: JointInterpolator, target: np.ndarray, steps_per_action: int
    ) -> np.ndarray:
        """The target to set on `interpolator` in place of `target` (that very array when
        nothing needs to change)."""
        clearance = self.floor_m + self.margin_m
        if self._out_of_reach_of_the_floor(interpolator, target, clearance):
            return target
        for lift in range(MAX_LIFTS + 1):
            lowest = self._previewed_lowest(interpolator, target, steps_per_action)
            if lowest >= clearance:
                self.lifted += lift > 0
                return target
            if lift < MAX_LIFTS:
                # 1 mm beyond the shortfall, so that the linearisation's error rarely needs
                # a second lift.
                target = self._lifted(target, clearance - lowest + 0.001)
        self.braked += 1
        return interpolator.stopping_target()

    def _out_of_reach_of_the_floor(
        self, interpolator: JointInterpolator, target: np.ndarray, clearance: float
    ) -> bool:
        """True when no point of the hand can reach the floor on either previewed path.

        On both, each joint stays within its distance to the target plus one braking
        overshoot (v^2 / 2a, plus a period at v) of where it is: it runs on past the target,
        or away from it, by at most that before it turns, and braking on the way stops short
        of the target (the interpolator's invariant). A point of the hand then moves at most
        the sum over the joints of lever x that angle."""
        position = np.asarray(interpolator._position)
        speed = np.abs(np.asarray(interpolator._velocity))
        overshoot = (
            speed * speed / (2.0 * interpolator.max_acceleration) + speed * interpolator.period_s
        )
        travel = np.abs(np.asarray(target) - position) + overshoot
        # A quarter over the bound, for what the reasoning above might have missed.
        reach = 1.25 * float(self.levers_m @ travel)
        if self._reference is not None:
            # The same bound from the last configuration whose lowest point was computed:
            # the hand is now at most (lever x angle moved since) lower. Where this proves
            # the floor out of reach, so would the forward kinematics below (its lowest
            # point is at least this one), so the answer is the same, without them.
            then, lowest_then = self._reference
            drift = 1.25 * float(self.levers_m @ np.abs(position - then))
            if lowest_then - drift - reach > clearance:
                return True
        now, _ = self.chain.lowest_hand_point(position, self.points)  # the scalar path
        self._reference = (position, now)
        return now - reach > clearance

    def _previewed_lowest(
        self, interpolator: JointInterpolator, target: np.ndarray, steps_per_action: int
    ) -> float:
        ahead = interpolator.copy()
        ahead.set_target(target)
        setpoints: list[list[float]] = []
        braking = np.empty((0, interpolator.joint_count))
        for period in range(LATE_POLICY_PERIODS * steps_per_action):
            if period == steps_per_action:
                braking = ahead.braking_setpoints()
            if ahead.at_target:
                break
            setpoints.append(ahead.step_list())
        if not setpoints:
            return math.inf
        return float(self.lowest_points(np.vstack([setpoints, braking])).min())

    def _lifted(self, target: np.ndarray, lift_m: float) -> np.ndarray:
        position, rotation = self.chain.forward(target)
        orientation = quaternion_from_matrix(rotation)
        return differential_ik_step(
            self.chain,
            target,
            position,
            orientation,
            position + np.array([0.0, 0.0, lift_m]),
            orientation,
            self.target_lower,
            self.target_upper,
        )
