"""The setpoint interpolator: speed and acceleration limits, arrival, and staying in bounds."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402, F401  (puts deploy/ on sys.path)
from iiwa_deploy.interpolator import JointInterpolator  # noqa: E402

RELATIVE_SLACK = 1e-9
ABSOLUTE_SLACK = 1e-9


def run_until_settled(interpolator: JointInterpolator, max_steps: int) -> np.ndarray:
    setpoints = [interpolator.position.copy()]
    for _ in range(max_steps):
        setpoints.append(interpolator.step())
        if interpolator.at_target:
            break
    return np.array(setpoints)


def assert_within_limits(
    setpoints: np.ndarray,
    period: float,
    max_velocity: np.ndarray,
    max_acceleration: np.ndarray,
    initial_velocity: np.ndarray,
) -> None:
    velocities = np.diff(setpoints, axis=0) / period
    assert np.all(np.abs(velocities) <= max_velocity * (1 + RELATIVE_SLACK) + ABSOLUTE_SLACK)
    with_start = np.vstack([initial_velocity, velocities])
    accelerations = np.diff(with_start, axis=0) / period
    # One float rounding of a position is ~1e-16 m, i.e. ~1e-11 rad/s^2 after two divisions by
    # a 4 ms period squared; the slack below is far under any physical meaning.
    assert np.all(np.abs(accelerations) <= max_acceleration * (1 + 1e-6) + 1e-6)


def test_trapezoid_takes_the_expected_time_and_lands_exactly() -> None:
    interpolator = JointInterpolator(np.array([1.0]), np.array([5.0]), 0.005, np.zeros(1))
    interpolator.set_target(np.array([0.3]))
    setpoints = run_until_settled(interpolator, 1000)
    # 0.2 s up to 1 rad/s, 0.1 s cruise, 0.2 s down: 0.5 s = 100 steps (+1 to settle).
    assert 100 <= len(setpoints) - 1 <= 102
    assert setpoints[-1, 0] == 0.3
    assert np.max(np.diff(setpoints[:, 0])) == pytest.approx(0.005, rel=1e-9)
    assert_within_limits(setpoints, 0.005, np.array([1.0]), np.array([5.0]), np.zeros(1))


def test_short_move_is_a_triangle_that_never_overshoots() -> None:
    interpolator = JointInterpolator(np.array([2.0]), np.array([10.0]), 0.004, np.array([1.0]))
    interpolator.set_target(np.array([0.99]))
    setpoints = run_until_settled(interpolator, 1000)
    assert np.all(setpoints[:, 0] >= 0.99) and np.all(setpoints[:, 0] <= 1.0)
    assert setpoints[-1, 0] == 0.99
    assert np.all(np.diff(setpoints[:, 0]) <= 0.0)


def test_reversed_target_brakes_within_the_acceleration_limit_then_returns() -> None:
    vmax, amax, period = np.array([1.0]), np.array([4.0]), 0.005
    interpolator = JointInterpolator(vmax, amax, period, np.zeros(1))
    interpolator.set_target(np.array([1.0]))
    setpoints = [interpolator.position.copy()]
    for _ in range(60):
        setpoints.append(interpolator.step())
    interpolator.set_target(np.array([0.0]))
    setpoints.extend(run_until_settled(interpolator, 2000)[1:])
    setpoints_array = np.array(setpoints)
    assert_within_limits(setpoints_array, period, vmax, amax, np.zeros(1))
    assert setpoints_array[-1, 0] == 0.0
    assert setpoints_array.max() < 1.0


def test_joints_move_independently_with_their_own_limits() -> None:
    vmax = support.ROBOT.interpolator_velocity
    amax = support.ROBOT.acceleration
    interpolator = JointInterpolator(vmax, amax, 0.005, np.zeros(7))
    target = np.array([0.5, -0.3, 0.0, 0.2, -0.7, 0.1, 1.0])
    interpolator.set_target(target)
    setpoints = run_until_settled(interpolator, 5000)
    np.testing.assert_array_equal(setpoints[-1], target)
    assert np.all(setpoints[:, 2] == 0.0)
    assert_within_limits(setpoints, 0.005, vmax, amax, np.zeros(7))


def test_reset_restarts_at_rest() -> None:
    interpolator = JointInterpolator(np.ones(2), np.ones(2) * 5, 0.005, np.zeros(2))
    interpolator.set_target(np.array([1.0, 1.0]))
    for _ in range(20):
        interpolator.step()
    interpolator.reset(np.array([0.2, 0.3]))
    assert interpolator.at_target
    np.testing.assert_array_equal(interpolator.step(), [0.2, 0.3])


joint_counts = st.integers(1, 7)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple:
    joints = draw(joint_counts)
    vector = st.lists(st.floats(0.5, 2.5), min_size=joints, max_size=joints)
    vmax = np.array(draw(vector))
    amax = np.array(draw(st.lists(st.floats(1.0, 20.0), min_size=joints, max_size=joints)))
    period = draw(st.sampled_from([0.004, 0.005, 0.01]))
    position = st.lists(st.floats(-1.5, 1.5), min_size=joints, max_size=joints)
    start = np.array(draw(position))
    targets = [
        (np.array(draw(position)), draw(st.integers(1, 40))) for _ in range(draw(st.integers(1, 6)))
    ]
    return vmax, amax, period, start, targets


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_any_target_sequence_respects_limits_stays_in_bounds_and_arrives(scenario: tuple) -> None:
    vmax, amax, period, start, targets = scenario
    interpolator = JointInterpolator(vmax, amax, period, start)
    setpoints = [start.copy()]
    for target, steps in targets:
        interpolator.set_target(target)
        for _ in range(steps):
            setpoints.append(interpolator.step())
    final_target = targets[-1][0]
    everything = np.vstack([start] + [t for t, _ in targets])
    span = float(np.max(everything.max(axis=0) - everything.min(axis=0)))
    budget = math.ceil((span / vmax.min() + 2.0 * vmax.max() / amax.min()) / period) + 10
    settle = run_until_settled(interpolator, budget)
    setpoints.extend(settle[1:])
    setpoints_array = np.array(setpoints)

    assert interpolator.at_target, "did not settle within the time a trapezoid needs"
    np.testing.assert_array_equal(setpoints_array[-1], final_target)
    assert_within_limits(setpoints_array, period, vmax, amax, np.zeros_like(vmax))
    # Braking is always planned against a target, so the stream never leaves the hull of the
    # start and the targets: with targets inside the joint limits, so are the setpoints.
    low = everything.min(axis=0) - 1e-9
    high = everything.max(axis=0) + 1e-9
    assert np.all(setpoints_array >= low) and np.all(setpoints_array <= high)


def _array_step(position, velocity, target, v_max, a_max, period):
    """The discrete trapezoid written on whole arrays (the interpolator's first form): the
    per-joint float loop must give exactly these numbers."""
    speed_step, unit = a_max * period, a_max * period**2
    remaining = target - position
    units = np.abs(remaining) / unit
    whole = np.floor((np.sqrt(1.0 + 8.0 * units) - 1.0) / 2.0)
    whole = np.where((whole + 1.0) * (whole + 2.0) / 2.0 <= units, whole + 1.0, whole)
    whole = np.where(whole * (whole + 1.0) / 2.0 > units, whole - 1.0, whole)
    whole = np.maximum(whole, 0.0)
    stop = (units + whole * (whole + 1.0) / 2.0) / (whole + 1.0) * speed_step
    wanted = np.sign(remaining) * np.minimum(stop, v_max)
    new_velocity = np.clip(wanted, velocity - speed_step, velocity + speed_step)
    new_velocity = np.clip(new_velocity, -v_max, v_max)
    travel = new_velocity * period
    arrives = np.abs(remaining - travel) <= 1e-12 * np.maximum(1.0, np.abs(target))
    return np.where(arrives, target, position + travel), new_velocity


def test_float_loop_equals_the_array_formulation_exactly() -> None:
    rng = np.random.default_rng(4)
    v_max = rng.uniform(0.5, 2.5, 7)
    a_max = rng.uniform(2.0, 15.0, 7)
    period = 0.005
    interpolator = JointInterpolator(v_max, a_max, period, np.zeros(7))
    position, velocity = np.zeros(7), np.zeros(7)
    for step in range(3000):
        if step % 8 == 0:
            target = rng.uniform(-1.0, 1.0, 7) * (rng.random(7) < 0.8)
            interpolator.set_target(target)
        position, velocity = _array_step(position, velocity, target, v_max, a_max, period)
        np.testing.assert_array_equal(interpolator.step(), position)
        np.testing.assert_array_equal(interpolator.velocity, velocity)


def test_step_list_gives_the_numbers_of_step() -> None:
    """The simulated arm takes `step_list`'s floats, the controller `step`'s array: the same
    setpoints, and the same state after either."""
    rng = np.random.default_rng(5)
    v_max, a_max = rng.uniform(0.5, 2.5, 7), rng.uniform(2.0, 15.0, 7)
    as_array = JointInterpolator(v_max, a_max, 0.005, np.zeros(7))
    as_list = JointInterpolator(v_max, a_max, 0.005, np.zeros(7))
    for step in range(800):
        if step % 8 == 0:
            target = rng.uniform(-1.0, 1.0, 7)
            as_array.set_target(target)
            as_list.set_target(target)
        setpoint = as_list.step_list()
        assert isinstance(setpoint, list)
        assert as_array.step().tolist() == setpoint
        np.testing.assert_array_equal(as_array.velocity, as_list.velocity)


def test_braking_setpoints_are_the_stepped_stop_in_closed_form() -> None:
    """The floor guard previews a stop with `braking_setpoints` instead of stepping a brake:
    the same positions to within rounding, ending on `stopping_target`; stepping may repeat
    the last one while its residual speed (under one a*dt) runs out, and nothing else."""
    rng = np.random.default_rng(11)
    v_max, a_max = rng.uniform(0.5, 2.5, 7), rng.uniform(2.0, 15.0, 7)
    interpolator = JointInterpolator(v_max, a_max, 0.005, np.zeros(7))
    assert interpolator.braking_setpoints().shape == (0, 7)  # at rest: nothing to stream
    for trial in range(300):
        interpolator.set_target(interpolator.position + rng.uniform(-0.5, 0.5, 7))
        for _ in range(int(rng.integers(1, 40))):
            interpolator.step()
        closed_form = interpolator.braking_setpoints()
        np.testing.assert_array_equal(closed_form[-1], interpolator.stopping_target())
        braking = interpolator.copy()
        braking.brake()
        stepped = run_until_settled(braking, 1000)[1:]
        assert len(closed_form) <= len(stepped) <= len(closed_form) + 2, trial
        np.testing.assert_allclose(stepped[: len(closed_form)], closed_form, rtol=0, atol=1e-12)
        tail = stepped[len(closed_form) :]
        np.testing.assert_allclose(
            tail, np.broadcast_to(closed_form[-1], tail.shape), rtol=0, atol=1e-12
        )
        assert_within_limits(
            np.vstack([interpolator.position, closed_form]),
            0.005,
            v_max,
            a_max,
            interpolator.velocity,
        )


def test_a_non_finite_or_misshaped_target_is_refused() -> None:
    interpolator = JointInterpolator(np.ones(2), np.ones(2), 0.005, np.zeros(2))
    for bad in ([math.nan, 0.0], [0.0, math.inf], [-math.inf, math.inf]):
        with pytest.raises(ValueError, match="finite"):
            interpolator.set_target(np.array(bad))
    with pytest.raises(ValueError, match="expected 2 joint targets"):
        interpolator.set_target(np.zeros(3))
    # Huge but finite values sum to inf: they are finite, and accepted.
    interpolator.set_target(np.array([1e308, 1e308]))
