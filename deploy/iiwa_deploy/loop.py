"""The controller loop: one setpoint per robot state, a policy step every control period.

Cycle order (the robot clocks it: `receive_state` blocks until the next state):

1. receive the newest state; drop it if its sequence is not newer than the last one used;
2. gate the state (finite, within limits + tolerance, speed within limit x factor, no robot
   error flag, the arm following the last setpoint, the state rate matching the period);
3. setpoint = the command stream's next step (or the hold setpoint if a fault is latched, or
   the measured position while the robot is not commanding); gate it (finite, inside limits
   - margin); send it immediately;
4. if a policy step is due: success bookkeeping, then observation -> action -> target ->
   command stream.

The policy runs after the setpoint is sent so its latency never delays the robot's answer;
its target takes effect one robot period later (`LOOP_COMMAND_DELAY_PERIODS`), exactly as in
training, where the environments step through the same `CommandStream`,
`JointTargetMapping` and `ObservationBuilder`. If a policy step overruns the period, the next
state simply waits in the socket and the backend answers only the newest one: the loop never
catches up missed cycles in a burst.

Phases: before the policy runs, the measured start pose is checked against the contract's
home (refused, or with `move_to_home` first driven there slowly), and with a real-time
backend the arm is held where it stands until one window of states has shown that they
come at the configured period (a robot side sending faster would make every setpoint move
the arm faster than planned); at the end (duration,
policy-step budget, success, Ctrl-C) the stream brakes to rest within its acceleration limit
before the loop stops answering, so the arm is never left mid-motion.

Timing is kept in preallocated ring buffers (no allocation per cycle) and summarised at the
end as p50/p99/max.
"""

from __future__ import annotations

import csv
import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .actuation import CommandStream, ControlTiming, JointTargetMapping
from .config import RobotConfig
from .contract import PolicyContract
from .interpolator import JointInterpolator
from .observation import ObservationBuilder, ObservationConstants, ObservationInputs
from .perception import ObjectPoseSource
from .robot import RobotBackend
from .safety import FaultRecord, SafetyMonitor, StateRateMonitor

logger = logging.getLogger(__name__)

DEFAULT_FIRST_STATE_TIMEOUT_S = 10.0
# One hour at a 5 ms period; a longer run keeps the most recent hour in the ring buffers.
MAX_RECORDED_CYCLES = 720_000
LATE_INTERVAL_FACTOR = 1.5
# A start pose may differ from the contract's home by the training's own reset spread plus
# this much (rad) before it is refused: the policy never started from farther away.
START_POSE_SLACK_RAD = 0.02
# The drive to home (`move_to_home`) runs at these fractions of the interpolator's limits.
HOME_MOVE_VELOCITY_FRACTION = 0.25
HOME_MOVE_ACCELERATION_FRACTION = 0.25
# Home is reached when every setpoint is there and every measured joint within this (rad).
HOME_REACHED_TOLERANCE_RAD = 0.005
# After a stop the loop answers until the setpoints stand still and every measured joint is
# slower than this (rad/s): the arm, lagging its setpoints, has settled on the last one. A
# robot that never settles is left after BRAKE_SETTLE_TIMEOUT_S of holding.
REST_SPEED_RAD_S = 0.005
BRAKE_SETTLE_TIMEOUT_S = 2.0
# The status snapshot (`ControlLoop.status`) summarises this many recent cycles.
STATUS_RECENT_CYCLES = 400


# Runs of the loop now going in this process (threads may run several), and whether the
# first of them found the heap unfrozen: only then does the last one unfreeze it.
_freezing_runs = 0
_unfreeze_after_runs = False
_freezing_lock = threading.Lock()


@contextmanager
def collector_kept_off_the_older_heap() -> Iterator[None]:
    """While the loop runs, the garbage collector walks only objects made since it started.

    A full collection walks every tracked object in the process, and no Python thread runs
    meanwhile: in a process that also holds torch, a training run or a test session that is
    100-200 ms (205 ms at 355k objects, measured in this project's test session), enough to
    latch the 100 ms stale-state gate and leave the robot without setpoints. So the heap as
    it stands is frozen (gc.freeze) before the first state is answered: collections skip it.
    When the last run in the process ends it is unfrozen, and its garbage collected as before
    (not collected first: that would cost the full walk at every start), unless the host had
    frozen objects itself, whose freeze is theirs to undo. Telling whether it had costs one
    count of its frozen objects (gc.get_freeze_count walks them: 90-180 ms for 1.7 million
    in a fragmented heap, measured), paid once before the first state is answered and
    nothing where the host froze nothing.
    """
    global _freezing_runs, _unfreeze_after_runs
    with _freezing_lock:
        if _freezing_runs == 0:
            _unfreeze_after_runs = gc.get_freeze_count() == 0
        _freezing_runs += 1
        gc.freeze()
    try:
        yield
    finally:
        with _freezing_lock:
            _freezing_runs -= 1
            if _freezing_runs == 0 and _unfreeze_after_runs:
                gc.unfreeze()


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
    rest_distance_m: float = math.inf  # TCP to goal once braked to rest after the stop
    success_hold_s: float = 0.0  # what success needs: on the goal for this long at the end
    held_s: float = 0.0  # how long the TCP had been on the goal at the last policy step
    worst_distance_last_second_m: float = math.inf
    refusal: str | None = None  # why the loop refused to move the arm at all
    goal_changes: int = 0
    braking_travel_rad: float = 0.0  # largest setpoint travel of a joint after the stop began
    link: dict[str, int] = field(default_factory=dict)
    # A grasp: the outcome in the env's words (lifted and held, dropped, missed, not lifted,
    # timed out) and its figures, judged on the object pose the controller received.
    grasp: dict | None = None

    def _task_line(self) -> str:
        if self.grasp is not None:
            grasp = self.grasp
            verdict = "SUCCESS" if self.success else "not reached"
            return (
                f"grasp: {grasp['outcome']}; object lift {grasp['lift_m'] * 1000:.0f} mm at the "
                f"end, {grasp['max_lift_m'] * 1000:.0f} mm at most (success: "
                f"{self.success_threshold_m * 1000:.0f} mm held by both fingers for "
                f"{self.success_hold_s:.2f} s); object poses used {grasp['poses_accepted']}, "
                f"ignored {grasp['poses_ignored']}; lowest setpoint finger tip or TCP at z "
                f"{grasp['lowest_setpoint_point_m'] * 1000:.1f} mm (floor "
                f"{grasp['setpoint_floor_m'] * 1000:.1f} mm; targets lifted off it "
                f"{grasp['targets_lifted_off_the_floor']}, braked above it "
                f"{grasp['targets_braked_above_the_floor']}) -> {verdict}"
            )
        verdict = "SUCCESS" if self.success else "not reached"
        return (
            f"goal: {np.array2string(self.goal_position, precision=4)} m, final TCP distance: "
            f"{self.final_distance_m * 1000:.1f} mm (threshold "
            f"{self.success_threshold_m * 1000:.1f} mm), held {self.held_s:.2f} s of "
            f"{self.success_hold_s:.2f} s needed, worst over the last second "
            f"{self.worst_distance_last_second_m * 1000:.1f} mm -> {verdict}"
        )

    def format(self) -> str:
        lines = [
            f"cycles: {self.cycles} in {self.duration_s:.2f} s ({self.stop_reason}), "
            f"policy steps: {self.policy_steps}",
            self._task_line(),
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
        if self.goal_changes:
            lines.append(f"goal changes accepted: {self.goal_changes}")
        lines.append(
            f"stop: braked to rest, {self.braking_travel_rad:.4f} rad of travel at most"
            + (
                ""
                if self.grasp is not None
                else f"; TCP {self.rest_distance_m * 1000:.1f} mm from the goal at rest"
            )
        )
        if self.refusal:
            lines.append(f"REFUSED: {self.refusal}")
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


class GoalSource(Protocol):
    """Where new goals come from while the loop runs (a UDP goal port, a ROS topic): `poll`
    returns the goals received since the last call, never blocks, and has already dropped
    what it could not read."""

    def poll(self) -> list[np.ndarray]: ...


class _SuccessTracker:
    """The environment's success test, judged at each policy step: the TCP within the
    threshold for the hold time, up to now; and the worst distance over the last second."""

    def __init__(self, threshold_m: float, hold_s: float, control_period_s: float) -> None:
        self.threshold_m = threshold_m
        self.hold_s = hold_s
        self.control_period_s = control_period_s
        # As the env counts it: 0.5 s at 25 Hz is 12.5 steps, so 13; never fewer than 1.
        self.hold_steps = max(1, math.ceil(hold_s / control_period_s - 1e-9))
        self._last_second: deque[float] = deque(maxlen=max(1, round(1.0 / control_period_s)))
        self.reset()

    def reset(self) -> None:
        self.steps_on_goal = 0
        self.distance_m = math.inf
        self._last_second.clear()

    def record(self, distance_m: float) -> None:
        self.distance_m = distance_m
        self.steps_on_goal = self.steps_on_goal + 1 if distance_m <= self.threshold_m else 0
        self._last_second.append(distance_m)

    @property
    def succeeded(self) -> bool:
        return self.steps_on_goal >= self.hold_steps

    @property
    def held_s(self) -> float:
        return self.steps_on_goal * self.control_period_s

    @property
    def worst_last_second_m(self) -> float:
        return max(self._last_second) if self._last_second else math.inf


class ControlLoop:
    """Runs a policy against a robot backend with the safety gates and the command stream."""

    def __init__(
        self,
        policy: Policy,
        contract: PolicyContract,
        robot_config: RobotConfig,
        backend: RobotBackend,
        goal_position: Sequence[float] | np.ndarray,
        steps_per_action: int,
        *,
        move_to_home: bool = False,
        goal_source: GoalSource | None = None,
        allow_goal_outside_training: bool = False,
        object_source: ObjectPoseSource | None = None,
    ) -> None:
        # A copy: goal changes are written into it in place, never into the caller's array.
        goal = np.array(goal_position, dtype=float)
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
        self.move_to_home = move_to_home
        self.goal_source = goal_source
        self.allow_goal_outside_training = allow_goal_outside_training
        self.safety = SafetyMonitor(robot_config)
        self.timing = ControlTiming(robot_config.robot_period_s, steps_per_action)
        grasp = contract.grasp
        self._observation = ObservationBuilder(
            contract.observation_term_layout(),
            ObservationConstants(
                contract.lower,
                contract.upper,
                contract.velocity,
                max_gripper_width=0.0 if grasp is None else grasp.gripper.max_width_m,
                object_rest_height=0.0 if grasp is None else grasp.object_rest_height_m,
            ),
        )
        # The grasp's object pose, gripper, Cartesian actions and cell gates (grasp_loop.py).
        self._grasp = None
        if grasp is not None:
            from .grasp_loop import GraspSession, needs_finger_contacts

            self._grasp = GraspSession(
                contract,
                robot_config,
                self.safety,
                object_source,
                needs_finger_contacts(contract),
            )
        self._floor_guard = None if self._grasp is None else self._grasp.floor_guard
        self._observation_inputs = ObservationInputs(
            goal_position=self.goal_position,
            previous_action=np.zeros(contract.action_size),
        )
        self._mapping = (
            None
            if grasp is not None
            else JointTargetMapping.for_robot(
                contract.action_mode,
                contract.action_scale,
                contract.home_joint_positions,
                robot_config,
            )
        )
        self._previous_action = np.zeros(contract.action_size, dtype=np.float32)
        self._stream: CommandStream | None = None
        self._home_move: JointInterpolator | None = None
        self._success = _SuccessTracker(
            contract.success_threshold_m, contract.success_hold_s, contract.control_period_s
        )
        self.start_tolerance_rad = contract.initial_joint_noise_rad + START_POSE_SLACK_RAD
        self._last_inference_s = math.nan
        self._reset_requested = threading.Event()
        self._goal_changes = 0
        self.last_tcp_position = np.zeros(3)
        self.state_rate = (
            StateRateMonitor(
                robot_config.robot_period_s,
                robot_config.state_period_window_s,
                robot_config.state_period_tolerance,
            )
            if getattr(backend, "real_time", False)
            else None
        )
        # What `status()` reports while `run` goes on.
        self._recorder: _CycleRecorder | None = None
        self._cycles = 0
        self._policy_steps = 0
        self._unanswered = 0
        self._commanding = False
        self._phase = "waiting for the robot"

    def request_reset(self) -> None:
        """Ask the loop (from any thread) to clear a latched fault at the next state."""
        self._reset_requested.set()

    def _apply_reset(self) -> None:
        self._reset_requested.clear()
        self.safety.reset()
        hold = self.safety.hold_setpoint
        if self._stream is not None and hold is not None:
            self._stream.reset(hold)
        self._previous_action[:] = 0.0

    # ------------------------------------------------------------------ goals
    def check_goal(self, goal: np.ndarray) -> str | None:
        """Why `goal` may not be commanded, or None if it may."""
        goal = np.asarray(goal, dtype=float)
        if goal.shape != (3,) or not np.all(np.isfinite(goal)):
            return f"goal must be 3 finite numbers (m), got {goal.tolist()}"
        contract = self.contract
        outside = (goal < contract.goal_low - 1e-9) | (goal > contract.goal_high + 1e-9)
        if np.any(outside) and not self.allow_goal_outside_training:
            return (
                f"goal {goal.tolist()} is outside the training goal box low "
                f"{contract.goal_low.tolist()} high {contract.goal_high.tolist()}"
            )
        return None

    def _poll_goals(self) -> None:
        if self.goal_source is None:
            return
        for goal in self.goal_source.poll():
            reason = self.check_goal(goal)
            if reason is not None:
                logger.warning("goal ignored: %s", reason)
                continue
            # Written in place: the observation inputs hold this very array.
            self.goal_position[:] = goal
            self._success.reset()
            self._goal_changes += 1
            logger.info("new goal %s m", np.round(goal, 4).tolist())

    # ------------------------------------------------------------- policy step
    def _policy_target(
        self, joint_positions: np.ndarray, joint_velocities: np.ndarray, tcp: np.ndarray
    ) -> np.ndarray | None:
        inputs = self._observation_inputs
        inputs.joint_positions = joint_positions
        inputs.joint_velocities = joint_velocities
        inputs.tcp_position = tcp
        if not self._act(inputs):
            return None
        return self._mapping.target(self._previous_action, joint_positions)

    def _grasp_target(
        self, joint_positions: np.ndarray, joint_velocities: np.ndarray, pose
    ) -> np.ndarray | None:
        inputs = self._observation_inputs
        inputs.joint_positions = joint_positions
        inputs.joint_velocities = joint_velocities
        tcp = self._grasp.fill_inputs(inputs, joint_positions, pose)
        self.last_tcp_position = tcp[0]
        if not self._act(inputs):
            return None
        return self._grasp.target(self._previous_action, joint_positions, tcp)

    def _act(self, inputs: ObservationInputs) -> bool:
        """Observation -> gated inference -> the clipped action in `_previous_action`;
        False (a fault latched) for a non-finite observation or action."""
        inputs.previous_action = self._previous_action
        observation = self._observation.build(inputs)
        if not self.safety.check_finite("observation", observation):
            return False
        inference_start = time.perf_counter()
        action = self.policy.act(observation)
        self._last_inference_s = time.perf_counter() - inference_start
        if not self.safety.check_finite("policy action", action):
            return False
        np.clip(action, -1.0, 1.0, out=self._previous_action)
        return True

    def _start_pose_refusal(self, positions: np.ndarray) -> str | None:
        offset = np.abs(positions - self.contract.home_joint_positions)
        worst = int(np.argmax(offset))
        if offset[worst] <= self.start_tolerance_rad:
            return None
        return (
            f"start pose: {self.robot_config.joint_names[worst]} is {offset[worst]:.3f} rad from "
            f"the policy's home {self.contract.home_joint_positions[worst]:.3f} rad (tolerance "
            f"{self.start_tolerance_rad:.3f} rad, the training's start spread plus "
            f"{START_POSE_SLACK_RAD} rad); jog the arm there or pass move_to_home "
            "(--move-to-home) to drive it there slowly first"
        )

    def _begin_home_move(self, positions: np.ndarray) -> None:
        robot = self.robot_config
        self._home_move = JointInterpolator(
            robot.interpolator_velocity * HOME_MOVE_VELOCITY_FRACTION,
            robot.acceleration * HOME_MOVE_ACCELERATION_FRACTION,
            robot.robot_period_s,
            positions,
        )
        self._home_move.set_target(self.contract.home_joint_positions)
        logger.info("driving to the policy's home pose first")

    def status(self) -> dict:
        """A snapshot of the running loop for an operator display or a status topic: phase,
        counters, the latched fault, the goal and TCP distance, recent timing (ms). Call it
        from the loop's thread (a backend's callback does), not concurrently with a cycle."""
        recorder = self._recorder
        recent: dict[str, float] = {}
        if recorder is not None and recorder.count:
            count = min(recorder.count, recorder.capacity, STATUS_RECENT_CYCLES)
            indices = (recorder.count - 1 - np.arange(count)) % recorder.capacity
            for name, values in (
                ("compute", recorder.compute),
                ("state_interval", recorder.interval),
                ("inference", recorder.inference),
            ):
                stats = TimingStats.of(values[indices])
                recent[f"{name}_p99_ms"] = round(stats.p99_s * 1e3, 4)
                recent[f"{name}_max_ms"] = round(stats.max_s * 1e3, 4)
            recent["missed_deadlines"] = int(np.count_nonzero(recorder.missed[indices]))
        safety = self.safety
        rate = self.state_rate
        return {
            "phase": self._phase,
            "cycles": self._cycles,
            "policy_steps": self._policy_steps,
            "unanswered_states": self._unanswered,
            "robot_commanding": self._commanding,
            "fault_latched": safety.latched,
            "fault": safety.latched_reason,
            "faults": [fault.reason for fault in safety.faults],
            "goal_m": [round(float(v), 5) for v in self.goal_position],
            "tcp_distance_m": round(float(self._success.distance_m), 5)
            if math.isfinite(self._success.distance_m)
            else None,
            "held_s": round(self._success.held_s, 3),
            "success": self._success.succeeded and not safety.faults,
            "measured_period_ms": None
            if rate is None or not math.isfinite(rate.measured_period_s)
            else round(rate.measured_period_s * 1e3, 4),
            "robot_period_ms": round(self.robot_config.robot_period_s * 1e3, 4),
            "recent": recent,
        }

    def run(
        self,
        duration_s: float | None = None,
        max_cycles: int | None = None,
        stop_on_success: bool = False,
        first_state_timeout_s: float = DEFAULT_FIRST_STATE_TIMEOUT_S,
        csv_path: str | Path | None = None,
        max_policy_steps: int | None = None,
    ) -> LoopSummary:
        """Run until `duration_s` of policy time, `max_cycles` answered states,
        `max_policy_steps` actions, success (if asked) or Ctrl-C; then brake to rest.

        The process's older heap is kept from the collector meanwhile
        (`collector_kept_off_the_older_heap`)."""
        with collector_kept_off_the_older_heap():
            return self._run(
                duration_s,
                max_cycles,
                stop_on_success,
                first_state_timeout_s,
                csv_path,
                max_policy_steps,
            )

    def _run(
        self,
        duration_s: float | None,
        max_cycles: int | None,
        stop_on_success: bool,
        first_state_timeout_s: float,
        csv_path: str | Path | None,
        max_policy_steps: int | None,
    ) -> LoopSummary:
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
        if self.move_to_home:
            # Room for the drive to home as well (a few seconds at most).
            wanted_capacity += math.ceil(30.0 / period)
        recorder = _CycleRecorder(
            max(1, min(wanted_capacity, MAX_RECORDED_CYCLES)),
            robot.joint_count,
            with_joint_log=csv_path is not None,
        )
        self._recorder = recorder
        safety = self.safety
        rate = self.state_rate
        stale_timeout = robot.stale_timeout_s
        next_policy_sequence: int | None = None
        policy_steps = 0
        unanswered = 0
        cycles = 0
        last_received: float | None = None
        last_good_positions: np.ndarray | None = None
        stop_reason = "duration"
        stopping = False  # braking to rest; the loop ends once the stream is at rest
        stop_began: float | None = None
        measured_at_rest = False
        braking_from: np.ndarray | None = None
        braking_travel = 0.0
        refusal: str | None = None
        start_checked = False  # the start pose was checked against the contract's home
        needs_home_move = False
        start = time.perf_counter()
        policy_start: float | None = None  # when the policy phase began (after any home move)
        interrupts = 0

        def begin_stop(reason: str) -> None:
            nonlocal stopping, stop_reason, stop_began
            if stopping:
                return
            stopping = True
            stop_reason = reason
            stop_began = time.perf_counter()
            if self._stream is not None:
                self._stream.interpolator.brake()

        while True:
            try:
                now = time.perf_counter()
                # The duration is policy time; a run that latched before the policy started
                # (a bad first state, a wrong state rate) counts it from the start instead,
                # so it still ends.
                duration_from = (
                    policy_start if policy_start is not None else start if safety.latched else None
                )
                if (
                    duration_s is not None
                    and duration_from is not None
                    and now - duration_from >= duration_s
                ):
                    begin_stop("duration")
                    if self._stream is None:
                        break
                if max_cycles is not None and cycles >= max_cycles:
                    stop_reason = "max_cycles" if not stopping else stop_reason
                    break
                if stopping and (
                    self._stream is None
                    or safety.latched
                    or (self._stream.interpolator.at_rest and measured_at_rest)
                    or now - stop_began > BRAKE_SETTLE_TIMEOUT_S
                ):
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
                if duration_s is not None and duration_from is not None and not stopping:
                    timeout = min(timeout, duration_from + duration_s - now)
                state = self.backend.receive_state(max(0.0, timeout))
                received = time.perf_counter()
                if state is None:
                    if last_received is not None and received - last_received >= stale_timeout:
                        safety.stale(received - last_received)
                        if stopping:
                            break
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
                commanding = bool(getattr(state, "commanding", True))
                self._commanding = commanding
                state_ok = safety.check_state(positions, velocities)
                if getattr(state, "robot_error", False):
                    safety.latch("the robot reports an error (ROBOT_ERROR): holding")
                if rate is not None:
                    rate_fault = rate.observe(received, state.sequence)
                    if rate_fault is not None:
                        safety.latch(rate_fault)
                if state_ok and commanding and not safety.latched:
                    safety.check_tracking(positions, received)
                if state_ok:
                    last_good_positions = positions
                    measured_at_rest = bool(np.max(np.abs(velocities)) < REST_SPEED_RAD_S)
                    if self._grasp is not None:
                        if cycles == 0 and (refusal := self._grasp.start_refusal(state)):
                            logger.error("refused: %s", refusal)
                            stop_reason = "refused"
                            break
                        self._grasp.on_state(state)
                if state_ok and not safety.latched:
                    if not start_checked:
                        start_checked = True
                        refusal = self._start_pose_refusal(positions)
                        if refusal is not None and not self.move_to_home:
                            logger.error("refused: %s", refusal)
                            stop_reason = "refused"
                            break
                        needs_home_move, refusal = refusal is not None, None
                    if not commanding:
                        # The robot does not apply setpoints now (someone else moves the arm,
                        # or it is not switched to commanding yet): no plan survives this; on
                        # return the stream restarts at rest where the arm then is.
                        if self._stream is not None:
                            self._stream.reset(positions)
                        self._home_move = None
                        safety.pause_tracking()
                        next_policy_sequence = None
                        self._previous_action[:] = 0.0
                    elif (
                        self._stream is None
                        and self._home_move is None
                        and (rate is None or rate.verified)
                    ):
                        # From the hold the arm was last commanded to (the measured position
                        # at the first state, or while not commanding), so the setpoint
                        # stream stays continuous.
                        origin = (
                            safety.hold_setpoint if safety.hold_setpoint is not None else positions
                        )
                        if needs_home_move:
                            self._begin_home_move(origin)
                        else:
                            self._stream = CommandStream(
                                self.timing,
                                robot.interpolator_velocity,
                                robot.acceleration,
                                origin,
                                self._floor_guard,
                            )
                            policy_start = received
                setpoint: np.ndarray | None = None
                if not safety.latched:
                    if not commanding:
                        setpoint = positions.copy()
                    elif self._stream is not None:
                        setpoint = self._stream.next_setpoint()
                    elif self._home_move is not None:
                        setpoint = self._home_move.step()
                    elif safety.hold_setpoint is not None:
                        # Waiting for the state rate to be confirmed: stay where the arm was.
                        setpoint = safety.hold_setpoint.copy()
                    if setpoint is not None and not safety.check_setpoint(setpoint):
                        setpoint = None
                    if (
                        setpoint is not None
                        and self._grasp is not None
                        and not self._grasp.check_setpoint(setpoint)
                    ):
                        setpoint = None
                if safety.latched:
                    setpoint = safety.hold_setpoint
                if setpoint is None:
                    # Nothing known to be safe to command yet: silence lets the robot's own
                    # watchdog stop it, which beats inventing a position.
                    unanswered += 1
                elif self._grasp is not None:
                    self.backend.send_setpoint(
                        state.sequence,
                        setpoint,
                        safety.latched,
                        gripper=self._grasp.gripper_command,
                    )
                else:
                    self.backend.send_setpoint(state.sequence, setpoint, safety.latched)
                sent = time.perf_counter()
                if stopping and setpoint is not None:
                    if braking_from is None:
                        braking_from = setpoint.copy()
                    braking_travel = max(
                        braking_travel, float(np.max(np.abs(setpoint - braking_from)))
                    )

                home_move = self._home_move
                if (
                    home_move is not None
                    and self._stream is None
                    and not safety.latched
                    and home_move.at_target
                    and np.all(
                        np.abs(positions - self.contract.home_joint_positions)
                        <= HOME_REACHED_TOLERANCE_RAD
                    )
                ):
                    # At home and at rest: the policy starts from here, as from a reset.
                    self._stream = CommandStream(
                        self.timing,
                        robot.interpolator_velocity,
                        robot.acceleration,
                        home_move.position,
                        self._floor_guard,
                    )
                    self._home_move = None
                    policy_start = received
                    logger.info("at home; starting the policy")

                inference = policy_step = math.nan
                if (
                    not safety.latched
                    and not stopping
                    and commanding
                    and self._stream is not None
                    and (next_policy_sequence is None or state.sequence >= next_policy_sequence)
                ):
                    # A grasp's step needs a fresh object pose: until the first arrives the
                    # stream holds the start; a stale one has latched the fault.
                    pose = None if self._grasp is None else self._grasp.pose_for_policy(received)
                    if self._grasp is None or pose is not None:
                        next_policy_sequence = state.sequence + self.steps_per_action
                        # Judged on the state after the previous action, as the env judges.
                        if self._grasp is not None:
                            if policy_steps > 0:
                                self._grasp.record_outcome(pose)
                            succeeded = self._grasp.outcome.succeeded
                        else:
                            tcp = self.contract.kinematics.tcp_position(positions)
                            self.last_tcp_position = tcp
                            if policy_steps > 0:
                                distance = float(np.linalg.norm(self.goal_position - tcp))
                                self._success.record(distance)
                            self._poll_goals()
                            succeeded = self._success.succeeded
                        if stop_on_success and succeeded:
                            begin_stop("success")
                        elif max_policy_steps is not None and policy_steps >= max_policy_steps:
                            begin_stop("policy_steps")
                        else:
                            step_start = time.perf_counter()
                            self._last_inference_s = math.nan
                            target = (
                                self._policy_target(positions, velocities, tcp)
                                if self._grasp is None
                                else self._grasp_target(positions, velocities, pose)
                            )
                            policy_step = time.perf_counter() - step_start
                            inference = self._last_inference_s
                            if target is not None:
                                self._stream.set_target(target)
                                policy_steps += 1
                cycles += 1
                self._cycles, self._policy_steps, self._unanswered = (
                    cycles,
                    policy_steps,
                    unanswered,
                )
                self._phase = (
                    "fault latched"
                    if safety.latched
                    else "stopping"
                    if stopping
                    else "robot not commanding"
                    if not commanding
                    else "policy"
                    if self._stream is not None
                    else "moving to home"
                    if self._home_move is not None
                    else "checking the state rate"
                )
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
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts > 1 or self._stream is None:
                    stop_reason = "interrupted"
                    break
                logger.warning("interrupted: braking to rest (Ctrl-C again to stop at once)")
                begin_stop("interrupted")
        duration = time.perf_counter() - start

        if csv_path is not None:
            recorder.write_csv(Path(csv_path), robot.joint_names)
        if last_good_positions is not None:
            final_tcp = self.contract.kinematics.tcp_position(last_good_positions)
            rest_distance = float(np.linalg.norm(self.goal_position - final_tcp))
        else:
            final_tcp, rest_distance = None, math.inf
        # The episode's final distance, as the env reports it, is the one judged at the last
        # policy step; the arm then brakes to rest (`rest_distance_m`).
        final_distance = (
            self._success.distance_m if math.isfinite(self._success.distance_m) else rest_distance
        )
        interval_samples = recorder.ordered(recorder.interval)
        link = getattr(self.backend, "stats", None)
        success = self._success
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
            rest_distance_m=rest_distance,
            success_threshold_m=self.contract.success_threshold_m,
            success=(success.succeeded if self._grasp is None else self._grasp.outcome.succeeded)
            and not safety.faults,
            success_hold_s=success.hold_s,
            held_s=success.held_s,
            worst_distance_last_second_m=success.worst_last_second_m,
            refusal=refusal,
            goal_changes=self._goal_changes,
            braking_travel_rad=braking_travel,
            link=asdict(link) if link is not None and is_dataclass(link) else {},
            grasp=None if self._grasp is None else self._grasp.summary(),
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
