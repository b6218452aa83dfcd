"""Safety gates: latching, holding, reset, and the loop under hostile state streams.

These tests drive `ControlLoop` in-process through a scripted backend (no sockets, no real-time
waits) so hypothesis can throw thousands of NaN, out-of-range, stale, duplicated and reordered
states at it quickly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_deploy_support as support  # noqa: E402
from iiwa_deploy.contract import parse_contract  # noqa: E402
from iiwa_deploy.loop import ControlLoop, LoopSummary  # noqa: E402
from iiwa_deploy.robot import RobotBackend, RobotState  # noqa: E402
from iiwa_deploy.safety import SafetyMonitor  # noqa: E402

# The scripted robots replay positions without following the setpoints, so the tracking gate
# is opened wide here (its own tests use the shipped limit).
ROBOT = support.ROBOT.replace(stale_timeout_s=0.01, tracking_error_rad=4.0)
CONTRACT = parse_contract(support.make_contract())
START = support.START_POSITIONS
SETPOINT_LOW = ROBOT.lower + ROBOT.setpoint_margin_rad
SETPOINT_HIGH = ROBOT.upper - ROBOT.setpoint_margin_rad
GOAL = np.array([0.5, 0.0, 0.5])
STALE = "stale"


@dataclass
class Sent:
    answer_to_sequence: int
    joint_positions: np.ndarray
    fault: bool


@dataclass
class ScriptedRobot:
    """Replays a script of states; STALE sleeps out the timeout; the end interrupts the loop."""

    script: list[RobotState | str]
    period_s: float = ROBOT.robot_period_s
    sent: list[Sent] = field(default_factory=list)
    on_receive: dict[int, object] = field(default_factory=dict)
    received_calls: int = 0

    def receive_state(self, timeout_s: float) -> RobotState | None:
        self.received_calls += 1
        hook = self.on_receive.get(self.received_calls)
        if callable(hook):
            hook()
        if not self.script:
            raise KeyboardInterrupt  # the loop's normal "operator stopped it" exit
        event = self.script.pop(0)
        if event == STALE:
            # Silence for one stale timeout (never longer, to keep the tests fast).
            time.sleep(min(timeout_s, ROBOT.stale_timeout_s))
            return None
        return event  # type: ignore[return-value]

    def send_setpoint(
        self, answer_to_sequence: int, joint_positions: np.ndarray, fault: bool
    ) -> None:
        self.sent.append(Sent(answer_to_sequence, np.array(joint_positions), fault))

    def close(self) -> None:
        pass


class ScriptedPolicy:
    def __init__(self, actions: Sequence[np.ndarray]) -> None:
        self.actions = list(actions)
        self.calls = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        action = self.actions[min(self.calls, len(self.actions) - 1)]
        self.calls += 1
        return np.asarray(action, dtype=np.float32)


def state(
    sequence: int, positions: np.ndarray = START, velocities: np.ndarray | None = None
) -> RobotState:
    return RobotState(
        sequence,
        sequence * ROBOT.robot_period_s,
        np.asarray(positions, float),
        np.zeros(7) if velocities is None else np.asarray(velocities, float),
    )


def run_script(
    script: list[RobotState | str], actions: Sequence[np.ndarray], **hooks: object
) -> tuple[LoopSummary, ScriptedRobot, ControlLoop]:
    backend = ScriptedRobot(list(script))
    assert isinstance(backend, RobotBackend)
    loop = ControlLoop(ScriptedPolicy(actions), CONTRACT, ROBOT, backend, GOAL, 10)
    for call, hook in hooks.items():
        backend.on_receive[int(call.removeprefix("call_"))] = hook
    summary = loop.run(first_state_timeout_s=1.0)
    return summary, backend, loop


def test_state_gates_latch_with_a_reason_and_only_reset_clears_them() -> None:
    monitor = SafetyMonitor(ROBOT)
    assert monitor.check_state(START, np.zeros(7))
    beyond = START.copy()
    beyond[3] = ROBOT.upper[3] + 0.05
    assert not monitor.check_state(beyond, np.zeros(7))
    assert monitor.latched and "iiwa_joint_4" in monitor.latched_reason
    assert monitor.check_state(START, np.zeros(7))  # a good state does not clear the latch
    assert monitor.latched
    fast = np.zeros(7)
    fast[5] = ROBOT.velocity[5] * 1.2
    monitor.check_state(START, fast)
    assert len(monitor.faults) == 1, "later faults while latched are consequences, not kept"
    monitor.reset()
    assert not monitor.latched
    assert not monitor.check_state(START, fast)
    assert "iiwa_joint_6 speed" in monitor.latched_reason
    np.testing.assert_array_equal(monitor.hold_setpoint, START)


def test_non_finite_state_and_setpoint_latch() -> None:
    monitor = SafetyMonitor(ROBOT)
    assert not monitor.check_state(np.full(7, np.nan), np.zeros(7))
    assert "non-finite" in monitor.latched_reason
    monitor.reset()
    near = START.copy()
    near[0] = ROBOT.upper[0] - ROBOT.setpoint_margin_rad / 2
    assert not monitor.check_setpoint(near)
    assert "iiwa_joint_1" in monitor.latched_reason
    assert monitor.hold_setpoint is None


def test_start_position_within_the_setpoint_margin_is_refused_without_a_hold() -> None:
    near = START.copy()
    near[1] = ROBOT.lower[1] + ROBOT.setpoint_margin_rad / 2
    summary, backend, _ = run_script([state(1, near), state(2, near)], [np.zeros(7)])
    assert backend.sent == []
    assert summary.unanswered_states == 2
    assert "jog the arm clear" in summary.faults[0].reason


def test_nan_action_latches_and_every_later_answer_is_the_same_hold() -> None:
    script = [state(sequence) for sequence in range(1, 60)]
    actions = [np.full(7, 1.0)] * 3 + [np.full(7, np.nan)]
    summary, backend, _ = run_script(script, actions)
    assert summary.fault_latched
    assert summary.faults[0].reason == "policy action contains a non-finite value"
    assert summary.faults[0].cycle == 30
    flagged = [sent for sent in backend.sent if sent.fault]
    assert len(flagged) == 59 - 31
    assert not any(sent.fault for sent in backend.sent[:31])
    hold = backend.sent[30].joint_positions
    assert np.any(hold != START), "the arm was moving before the fault"
    for sent in flagged:
        np.testing.assert_array_equal(sent.joint_positions, hold)
    assert [sent.answer_to_sequence for sent in backend.sent] == list(range(1, 60))


def test_reset_resumes_streaming_from_the_hold_without_a_jump() -> None:
    bad = START.copy()
    bad[2] = np.nan
    script = [state(s) for s in range(1, 25)] + [state(25, bad)] + [state(s) for s in range(26, 80)]
    holder: dict[str, ControlLoop] = {}

    def reset_later() -> None:
        holder["loop"].request_reset()

    backend = ScriptedRobot(script)
    loop = ControlLoop(ScriptedPolicy([np.full(7, 0.5)]), CONTRACT, ROBOT, backend, GOAL, 10)
    holder["loop"] = loop
    backend.on_receive[40] = reset_later
    summary = loop.run(first_state_timeout_s=1.0)
    assert not summary.fault_latched and len(summary.faults) == 1
    assert "non-finite" in summary.faults[0].reason
    faults = [sent.fault for sent in backend.sent]
    assert faults[24:39] == [True] * 15 and not any(faults[39:])
    setpoints = np.array([sent.joint_positions for sent in backend.sent])
    steps = np.abs(np.diff(setpoints, axis=0))
    assert np.all(steps <= ROBOT.interpolator_velocity * ROBOT.robot_period_s + 1e-12)
    assert np.any(setpoints[-1] != setpoints[38]), "moving again after the reset"


def test_stale_state_latches_and_the_returning_robot_gets_the_hold() -> None:
    script = [state(s) for s in range(1, 15)] + [STALE, STALE] + [state(s) for s in range(100, 110)]
    summary, backend, _ = run_script(script, [np.full(7, 1.0)])
    assert summary.fault_latched and summary.faults[0].reason.startswith("stale state")
    assert all(sent.fault for sent in backend.sent[14:])
    for sent in backend.sent[14:]:
        np.testing.assert_array_equal(sent.joint_positions, backend.sent[13].joint_positions)


def test_duplicate_and_reordered_states_are_dropped_not_answered() -> None:
    script = [state(1), state(2), state(2), state(4), state(3), state(5), state(1)]
    summary, backend, _ = run_script(script, [np.zeros(7)])
    assert [sent.answer_to_sequence for sent in backend.sent] == [1, 2, 4, 5]
    assert summary.stale_states_dropped == 3
    assert not summary.faults


def test_no_state_at_all_ends_with_a_fault() -> None:
    backend = ScriptedRobot([])
    backend.script = [STALE] * 1000
    loop = ControlLoop(ScriptedPolicy([np.zeros(7)]), CONTRACT, ROBOT, backend, GOAL, 10)
    summary = loop.run(first_state_timeout_s=0.05)
    assert summary.stop_reason == "no_state" and summary.cycles == 0
    assert "no robot state" in summary.faults[0].reason
    assert backend.sent == []


position_noise = st.floats(-0.3, 0.3)
event_kinds = st.sampled_from(
    ["good", "good", "good", "good", "nan", "beyond", "fast", "duplicate", "reorder", "stale"]
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(event_kinds, st.lists(position_noise, min_size=7, max_size=7)),
        min_size=1,
        max_size=120,
    ),
    st.lists(
        st.one_of(
            st.lists(st.floats(-5.0, 5.0), min_size=7, max_size=7),
            st.lists(
                st.sampled_from([0.0, 1.0, np.nan, np.inf, -np.inf, 1e30]), min_size=7, max_size=7
            ),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(["joint_delta", "joint_offset"]),
)
def test_hostile_streams_never_crash_and_never_leave_the_setpoint_limits(
    events: list[tuple[str, list[float]]], actions: list[list[float]], mode: str
) -> None:
    script: list[RobotState | str] = []
    sequence = 0
    stale_budget = 3
    for kind, noise in events:
        positions = np.clip(START + np.array(noise), ROBOT.lower, ROBOT.upper)
        if kind == "duplicate" and sequence:
            script.append(state(sequence, positions))
            continue
        if kind == "reorder" and sequence > 1:
            script.append(state(sequence - 1, positions))
            continue
        if kind == "stale" and stale_budget:
            stale_budget -= 1
            script.append(STALE)
            continue
        sequence += 1
        velocities = np.zeros(7)
        if kind == "nan":
            positions[sequence % 7] = np.nan
        elif kind == "beyond":
            positions[sequence % 7] = ROBOT.upper[sequence % 7] + 0.1
        elif kind == "fast":
            velocities[sequence % 7] = -ROBOT.velocity[sequence % 7] * 2
        script.append(state(sequence, positions, velocities))

    contract = CONTRACT
    if mode == "joint_offset":
        raw = support.make_contract()
        raw["action"]["mode"] = "joint_offset"
        raw["action"]["scale"] = 2.5
        contract = parse_contract(raw)
    backend = ScriptedRobot(script)
    policy = ScriptedPolicy([np.array(a) for a in actions])
    loop = ControlLoop(policy, contract, ROBOT, backend, GOAL, 3)
    summary = loop.run(first_state_timeout_s=1.0)

    answered = [sent.answer_to_sequence for sent in backend.sent]
    assert answered == sorted(set(answered)), "each state answered at most once, in order"
    latched_from = None
    for index, sent in enumerate(backend.sent):
        assert np.all(np.isfinite(sent.joint_positions))
        assert np.all(sent.joint_positions >= SETPOINT_LOW - 1e-12)
        assert np.all(sent.joint_positions <= SETPOINT_HIGH + 1e-12)
        if sent.fault and latched_from is None:
            latched_from = index
        if latched_from is not None:
            assert sent.fault, "a latched fault never clears by itself"
            np.testing.assert_array_equal(
                sent.joint_positions, backend.sent[latched_from].joint_positions
            )
    assert summary.fault_latched == bool(summary.faults)
    assert summary.cycles == len(backend.sent) + summary.unanswered_states


def test_setpoint_gate_limits_are_inside_the_joint_limits() -> None:
    assert np.all(SETPOINT_LOW > ROBOT.lower) and np.all(SETPOINT_HIGH < ROBOT.upper)
    assert np.all(ROBOT.target_lower >= SETPOINT_LOW)


@pytest.mark.parametrize("mode", ["joint_delta", "joint_offset"])
def test_targets_are_clipped_inside_the_target_margin(mode: str) -> None:
    raw = support.make_contract()
    raw["action"]["mode"] = mode
    raw["action"]["scale"] = 10.0
    contract = parse_contract(raw)
    script = [state(s) for s in range(1, 400)]
    backend = ScriptedRobot(script)
    loop = ControlLoop(ScriptedPolicy([np.full(7, 1.0)]), contract, ROBOT, backend, GOAL, 10)
    summary = loop.run(first_state_timeout_s=1.0)
    assert not summary.faults
    final = backend.sent[-1].joint_positions
    assert np.all(final <= ROBOT.target_upper + 1e-12)
    assert np.any(final > ROBOT.target_upper - 0.5)


def test_state_with_the_wrong_joint_count_latches_and_the_csv_log_survives(tmp_path: Path) -> None:
    script = [state(1), state(2), RobotState(3, 0.0, np.zeros(6), np.zeros(6)), state(4)]
    backend = ScriptedRobot(script)
    loop = ControlLoop(ScriptedPolicy([np.zeros(7)]), CONTRACT, ROBOT, backend, GOAL, 10)
    log = tmp_path / "cycles.csv"
    summary = loop.run(first_state_timeout_s=1.0, csv_path=log)
    assert "expected 7 each" in summary.faults[0].reason
    assert [sent.fault for sent in backend.sent] == [False, False, True, True]
    rows = log.read_text().splitlines()
    assert len(rows) == 1 + 4
    assert rows[3].split(",")[10] == "nan"
