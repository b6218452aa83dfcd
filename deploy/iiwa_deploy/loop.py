"""The controller loop: one setpoint per robot state, a policy step every control period.

Cycle order (the robot clocks it: `receive_state` blocks until the next state):

1. receive the newest state; drop it if its sequence is not newer than the last one used;
2. gate the state (finite, within limits + tolerance, speed within limit x factor);
3. setpoint = the interpolator's next step (or the hold setpoint if a fault is latched);
   gate it (finite, inside limits - margin); send it immediately;
4. if a policy step is due: observation -> action -> target -> interpolator.

The policy runs after the setpoint is sent so its latency never delays the robot's answer;
its target takes effect one robot period later (5 ms against a 40 ms policy period). If a
policy step overruns the period, the next state simply waits in the socket and the backend
answers only the newest one: the loop never catches up missed cycles in a burst.

Timing is kept in preallocated ring buffers (no allocation per cycle) and summarised at the
end as p50/p99/max.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .config import RobotConfig
from .contract import PolicyContract
from .interpolator import JointInterpolator
from .observation import ObservationBuilder
from .robot import RobotBackend
from .safety import FaultRecord, SafetyMonitor

logger = logging.getLogger(__name__)

DEFAULT_FIRST_STATE_TIMEOUT_S = 10.0
# One hour at a 5 ms period; a longer run keeps the most recent hour in the ring buffers.
MAX_RECORDED_CYCLES = 720_000
LATE_INTERVAL_FACTOR = 1.5


class Policy(Protocol):
    def act(self, observation: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class TimingStats:
    count: int
    p50_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, samples: np.ndarray) -> TimingStats:
        values = samples[np.isfinite(samples)]
        if values.size == 0:
            return cls(0, math.nan, math.nan, math.nan)
        p50, p99 = np.percentile(values, [50.0, 99.0])
        return cls(int(values.size), float(p50), float(p99), float(values.max()))

    def format(self) -> str:
        if self.count == 0:
            return "no samples"
        return (
            f"p50 {self.p50_s * 1e3:.3f} ms, p99 {self.p99_s * 1e3:.3f} ms, "
            f"max {self.max_s * 1e3:.3f} ms (n={self.count})"
        )


@dataclass(frozen=True)
class LoopSummary:
    cycles: int
    policy_steps: int
    duration_s: float
    stop_reason: str
    faults: tuple[FaultRecord, ...]
    fault_latched: bool
    inference: TimingStats
    policy_step: TimingStats
    compute: TimingStats
    busy: TimingStats
    state_interval: TimingStats
    lateness: TimingStats
    missed_deadlines: int
    unanswered_states: int
    stale_states_dropped: int
    goal_position: np.ndarray
    final_tcp_position: np.ndarray | None
    final_distance_m: float
    success_threshold_m: float
    success: bool
    link: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        lines = [
            f"cycles: {self.cycles} in {self.duration_s:.2f} s ({self.stop_reason}), "
            f"policy steps: {self.policy_steps}",
            f"goal: {np.array2string(self.goal_position, precision=4)} m, final TCP distance: "
            f"{self.final_distance_m * 1000:.1f} mm (threshold "
            f"{self.success_threshold_m * 1000:.1f} mm) -> "
            f"{'SUCCESS' if self.success else 'not reached'}",
            f"inference:      {self.inference.format()}",
            f"policy step:    {self.policy_step.format()}  (observation + inference + target)",
            f"compute:        {self.compute.format()}  (state received -> setpoint sent)",
            f"cycle busy:     {self.busy.format()}  (state received -> cycle work done)",
            f"state interval: {self.state_interval.format()}",
            f"lateness:       {self.lateness.format()}  (interval beyond the robot period)",
            f"missed deadlines: {self.missed_deadlines}, unanswered states: "
            f"{self.unanswered_states}, duplicate/reordered states dropped: "
            f"{self.stale_states_dropped}",
        ]
        if self.link:
            lines.append("link: " + ", ".join(f"{k} {v}" for k, v in self.link.items()))
        if self.faults:
            for fault in self.faults:
                lines.append(f"FAULT at cycle {fault.cycle}: {fault.reason}")
            lines.append("fault latched at exit" if self.fault_latched else "fault was reset")
        else:
            lines.append("faults: none")
        return "\n".join(lines)


class _CycleRecorder:
    """Preallocated per-cycle records, written as a ring so memory stays bounded."""

    def __init__(self, capacity: int, joint_count: int, with_joint_log: bool) -> None:
        self.capacity = capacity
        self.inference = np.full(capacity, np.nan)
        self.policy_step = np.full(capacity, np.nan)
        self.compute = np.full(capacity, np.nan)
        self.busy = np.full(capacity, np.nan)
        self.interval = np.full(capacity, np.nan)
        self.missed = np.zeros(capacity, dtype=bool)
        self.with_joint_log = with_joint_log
        if with_joint_log:
            self.sequence = np.zeros(capacity, dtype=np.int64)
            self.received = np.full(capacity, np.nan)
            self.fault = np.zeros(capacity, dtype=bool)
            self.positions = np.full((capacity, joint_count), np.nan)
            self.setpoints = np.full((capacity, joint_count), np.nan)
        self.count = 0

    def ordered(self, values: np.ndarray) -> np.ndarray:
        if self.count <= self.capacity:
            return values[: self.count]
        return np.roll(values, -(self.count % self.capacity), axis=0)

    def write_csv(self, path: Path, joint_names: Sequence[str]) -> None:
        if not self.with_joint_log:
            return
        header = [
            "cycle",
            "sequence",
            "received_s",
            "state_interval_s",
            "compute_s",
            "busy_s",
            "inference_s",
            "policy_step_s",
            "missed_deadline",
            "fault_latched",
        ]
        header += [f"q_{name}" for name in joint_names]
        header += [f"setpoint_{name}" for name in joint_names]
        first_cycle = max(0, self.count - self.capacity)
        columns = [
            self.ordered(a)
            for a in (
                self.sequence,
                self.received,
                self.interval,
                self.compute,
                self.busy,
                self.inference,
                self.policy_step,
                self.missed,
                self.fault,
                self.positions,
                self.setpoints,
            )
        ]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in range(len(columns[0])):
                (
                    sequence,
                    received,
                    interval,
                    compute,
                    busy,
                    inference,
                    policy_step,
                    missed,
                    fault,
                    positions,
                    setpoints,
                ) = (c[row] for c in columns)
                writer.writerow(
                    [
                        first_cycle + row,
                        int(sequence),
                        f"{received:.6f}",
                        f"{interval:.6f}",
                        f"{compute:.6f}",
                        f"{busy:.6f}",
                        f"{inference:.6f}",
                        f"{policy_step:.6f}",
                        int(missed),
                        int(fault),
                        *(f"{v:.6f}" for v in positions),
                        *(f"{v:.6f}" for v in setpoints),
                    ]
                )


class ControlLoop:
    """Runs a policy against a robot backend with the safety gates and the interpolator."""

    def __init__(
        self,
        policy: Policy,
        contract: PolicyContract,
        robot_config: RobotConfig,
        backend: RobotBackend,
        goal_position: Sequence[float] | np.ndarray,
        steps_per_action: int,
    ) -> None:
        goal = np.asarray(goal_position, dtype=float)
        if goal.shape != (3,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"goal must be 3 finite numbers (m), got {goal_position!r}")
        if steps_per_action < 1:
            raise ValueError(f"steps_per_action must be >= 1, got {steps_per_action}")
        self.policy = policy
        self.contract = contract
        self.robot_config = robot_config
        self.backend = backend
        self.goal_position = goal
        self.steps_per_action = steps_per_action
        self.safety = SafetyMonitor(robot_config)
        self._observation = ObservationBuilder(contract)
        self._previous_action = np.zeros(contract.action_size, dtype=np.float32)
        self._target = np.zeros(robot_config.joint_count)
        self._interpolator: JointInterpolator | None = None
        self._last_inference_s = math.nan
        self._reset_requested = threading.Event()

    def request_reset(self) -> None:
        """Ask the loop (from any thread) to clear a latched fault at the next state."""
        self._reset_requested.set()

    def _apply_reset(self) -> None:
        self._reset_requested.clear()
        self.safety.reset()
        hold = self.safety.hold_setpoint
        if self._interpolator is not None and hold is not None:
            self._interpolator.reset(hold)
        self._previous_action[:] = 0.0

    def _policy_target(
        self, joint_positions: np.ndarray, joint_velocities: np.ndarray
    ) -> np.ndarray | None:
        observation = self._observation.build(
            joint_positions, joint_velocities, self.goal_position, self._previous_action
        )
        if not self.safety.check_finite("observation", observation):
            return None
        inference_start = time.perf_counter()
        action = self.policy.act(observation)
        self._last_inference_s = time.perf_counter() - inference_start
        if not self.safety.check_finite("policy action", action):
            return None
        np.clip(action, -1.0, 1.0, out=self._previous_action)
        contract = self.contract
        base = (
            joint_positions
            if contract.action_mode == "joint_delta"
            else contract.home_joint_positions
        )
        np.multiply(self._previous_action, contract.action_scale, out=self._target)
        self._target += base
        np.clip(
            self._target,
            self.robot_config.target_lower,
            self.robot_config.target_upper,
            out=self._target,
        )
        return self._target

    def _tcp_distance(self, joint_positions: np.ndarray) -> tuple[np.ndarray, float]:
        tcp = self.contract.kinematics.tcp_position(joint_positions)
        return tcp, float(np.linalg.norm(self.goal_position - tcp))

    def run(
        self,
        duration_s: float | None = None,
        max_cycles: int | None = None,
        stop_on_success: bool = False,
        first_state_timeout_s: float = DEFAULT_FIRST_STATE_TIMEOUT_S,
        csv_path: str | Path | None = None,
    ) -> LoopSummary:
        """Run until `duration_s`, `max_cycles` answered states, success (if asked) or Ctrl-C."""
        robot = self.robot_config
        period = robot.robot_period_s
        wanted_capacity = (
            max_cycles
            if max_cycles is not None
            else (
                math.ceil(duration_s / period * LATE_INTERVAL_FACTOR) + 16
                if duration_s is not None
                else MAX_RECORDED_CYCLES
            )
        )
        recorder = _CycleRecorder(
            max(1, min(wanted_capacity, MAX_RECORDED_CYCLES)),
            robot.joint_count,
            with_joint_log=csv_path is not None,
        )
        safety = self.safety
        stale_timeout = robot.stale_timeout_s
        next_policy_sequence: int | None = None
        policy_steps = 0
        unanswered = 0
        cycles = 0
        last_received: float | None = None
        last_good_positions: np.ndarray | None = None
        stop_reason = "duration"
        start = time.perf_counter()
        try:
            while True:
                now = time.perf_counter()
                if duration_s is not None and now - start >= duration_s:
                    stop_reason = "duration"
                    break
                if max_cycles is not None and cycles >= max_cycles:
                    stop_reason = "max_cycles"
                    break
                if last_received is None:
                    timeout = start + first_state_timeout_s - now
                    if timeout <= 0.0:
                        safety.latch(f"no robot state within {first_state_timeout_s:.1f} s")
                        stop_reason = "no_state"
                        break
                else:
                    # Wait for the stale deadline; once stale, wait one more timeout at a time.
                    timeout = last_received + stale_timeout - now
                    if timeout <= 0.0:
                        timeout = stale_timeout
                if duration_s is not None:
                    timeout = min(timeout, start + duration_s - now)
                state = self.backend.receive_state(max(0.0, timeout))
                received = time.perf_counter()
                if state is None:
                    if last_received is not None and received - last_received >= stale_timeout:
                        safety.stale(received - last_received)
                    continue
                if not safety.accept_sequence(state.sequence):
                    continue
                if self._reset_requested.is_set():
                    # Applied to the state just received, so a reset made while waiting takes
                    # effect on the very next answer.
                    self._apply_reset()
                    next_policy_sequence = None

                slot = recorder.count % recorder.capacity
                safety.cycle = cycles
                interval = math.nan if last_received is None else received - last_received
                last_received = received
                positions = np.asarray(state.joint_positions, dtype=float)
                velocities = np.asarray(state.joint_velocities, dtype=float)
                state_ok = safety.check_state(positions, velocities)
                if state_ok:
                    last_good_positions = positions
                    if self._interpolator is None:
                        self._interpolator = JointInterpolator(
                            robot.interpolator_velocity, robot.acceleration, period, positions
                        )
                setpoint: np.ndarray | None = None
                if not safety.latched and self._interpolator is not None:
                    setpoint = self._interpolator.step()
                    if not safety.check_setpoint(setpoint):
                        setpoint = None
                if safety.latched:
                    setpoint = safety.hold_setpoint
                if setpoint is None:
                    # Nothing known to be safe to command yet: silence lets the robot's own
                    # watchdog stop it, which beats inventing a position.
                    unanswered += 1
                else:
                    self.backend.send_setpoint(state.sequence, setpoint, safety.latched)
                sent = time.perf_counter()

                inference = policy_step = math.nan
                if (
                    not safety.latched
                    and self._interpolator is not None
                    and (next_policy_sequence is None or state.sequence >= next_policy_sequence)
                ):
                    next_policy_sequence = state.sequence + self.steps_per_action
                    policy_start = time.perf_counter()
                    self._last_inference_s = math.nan
                    target = self._policy_target(positions, velocities)
                    policy_step = time.perf_counter() - policy_start
                    inference = self._last_inference_s
                    if target is not None:
                        self._interpolator.set_target(target)
                        policy_steps += 1
                        distance = float(
                            np.linalg.norm(self.goal_position - self._observation.last_tcp_position)
                        )
                        if stop_on_success and distance <= self.contract.success_threshold_m:
                            stop_reason = "success"
                cycles += 1
                self._record(
                    recorder,
                    slot,
                    received,
                    sent,
                    interval,
                    inference,
                    policy_step,
                    period,
                    state.sequence,
                    positions,
                    setpoint,
                    start,
                )
                if stop_reason == "success":
                    break
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        duration = time.perf_counter() - start

        if csv_path is not None:
            recorder.write_csv(Path(csv_path), robot.joint_names)
        if last_good_positions is not None:
            final_tcp, final_distance = self._tcp_distance(last_good_positions)
        else:
            final_tcp, final_distance = None, math.inf
        interval_samples = recorder.ordered(recorder.interval)
        link = getattr(self.backend, "stats", None)
        return LoopSummary(
            cycles=cycles,
            policy_steps=policy_steps,
            duration_s=duration,
            stop_reason=stop_reason,
            faults=tuple(safety.faults),
            fault_latched=safety.latched,
            inference=TimingStats.of(recorder.ordered(recorder.inference)),
            policy_step=TimingStats.of(recorder.ordered(recorder.policy_step)),
            compute=TimingStats.of(recorder.ordered(recorder.compute)),
            busy=TimingStats.of(recorder.ordered(recorder.busy)),
            state_interval=TimingStats.of(interval_samples),
            lateness=TimingStats.of(np.maximum(interval_samples - period, 0.0)),
            missed_deadlines=int(np.count_nonzero(recorder.ordered(recorder.missed))),
            unanswered_states=unanswered,
            stale_states_dropped=safety.stale_sequences_dropped,
            goal_position=self.goal_position.copy(),
            final_tcp_position=final_tcp,
            final_distance_m=final_distance,
            success_threshold_m=self.contract.success_threshold_m,
            success=final_distance <= self.contract.success_threshold_m,
            link=asdict(link) if link is not None and is_dataclass(link) else {},
        )

    def _record(
        self,
        recorder: _CycleRecorder,
        slot: int,
        received: float,
        sent: float,
        interval: float,
        inference: float,
        policy_step: float,
        period: float,
        sequence: int,
        positions: np.ndarray,
        setpoint: np.ndarray | None,
        start: float,
    ) -> None:
        busy = time.perf_counter() - received
        recorder.compute[slot] = sent - received
        recorder.busy[slot] = busy
        recorder.interval[slot] = interval
        recorder.inference[slot] = inference
        recorder.policy_step[slot] = policy_step
        recorder.missed[slot] = busy > period or interval > LATE_INTERVAL_FACTOR * period
        if recorder.with_joint_log:
            recorder.sequence[slot] = sequence
            recorder.received[slot] = received - start
            recorder.fault[slot] = self.safety.latched
            if positions.shape == recorder.positions[slot].shape:
                recorder.positions[slot] = positions
            else:
                recorder.positions[slot] = np.nan
            if setpoint is None:
                recorder.setpoints[slot] = np.nan
            else:
                recorder.setpoints[slot] = setpoint
        recorder.count += 1
