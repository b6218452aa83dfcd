"""The object pose on the controller: where it comes from, and the gates it passes.

`ObjectPose` is one estimate of the object's pose in the robot base frame. A source (a UDP
OBJECT port, robot.UdpObjectListener; or a simulated camera) is anything with `poll()`
returning the estimates received since the last call. `ObjectPoseGate` decides which of them
the policy may see: only from known estimator ids, never non-finite, each newer than the
last from its source; a pose that jumps farther than `max_pose_jump_m` from the previous one,
or is older than `max_pose_age_s` when the policy needs it, latches a fault (the arm holds,
as for every other gate). An estimate marked not valid (the estimator lost the object) is
not used, so the last good pose ages until it is too old.

`SimulatedPoseSensor` is the stand-in for perception in rehearsals and tests: it samples a
true pose at its own rate and delivers it later by its latency, with Gaussian noise and a
bias drawn once per episode.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import PerceptionLimits
from .kinematics import quaternion_from_euler, quaternion_yaw

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectPose:
    """One pose estimate: base frame, m; orientation (x, y, z, w). `latency_s` is how old it
    was when sent (the estimator's own measure), `received_s` when it arrived
    (time.perf_counter of the controller)."""

    sequence: int
    source_id: int
    position: np.ndarray
    orientation: np.ndarray
    latency_s: float
    received_s: float
    valid: bool = True

    @property
    def yaw(self) -> float:
        return quaternion_yaw(self.orientation)

    def age_s(self, now_s: float) -> float:
        return self.latency_s + (now_s - self.received_s)


class ObjectPoseSource(Protocol):
    """`poll` returns the estimates received since the last call and never blocks."""

    def poll(self) -> list[ObjectPose]: ...


class _Latch(Protocol):
    def latch(self, reason: str) -> None: ...


class ObjectPoseGate:
    """Keeps the newest acceptable pose; see the module docstring for what it refuses."""

    def __init__(self, limits: PerceptionLimits) -> None:
        self.limits = limits
        self.allowed_sources = frozenset(limits.source_ids)
        self.pose: ObjectPose | None = None
        self.ignored = 0
        self.accepted = 0
        self.invalid = 0
        self._last_sequence: dict[int, int] = {}

    def _ignore(self, reason: str) -> None:
        self.ignored += 1
        logger.warning("object pose ignored: %s", reason)

    def update(self, poses: list[ObjectPose], safety: _Latch) -> None:
        for pose in poses:
            if pose.source_id not in self.allowed_sources:
                self._ignore(
                    f"unknown source id {pose.source_id} (allowed: "
                    f"{sorted(self.allowed_sources)}, perception.source_ids)"
                )
                continue
            position = np.asarray(pose.position, dtype=float)
            orientation = np.asarray(pose.orientation, dtype=float)
            if not (
                position.shape == (3,)
                and orientation.shape == (4,)
                and np.all(np.isfinite(position))
                and np.all(np.isfinite(orientation))
                and math.isfinite(pose.latency_s)
                and pose.latency_s >= 0.0
            ):
                self._ignore(f"non-finite or malformed pose from source {pose.source_id}")
                continue
            last = self._last_sequence.get(pose.source_id)
            if last is not None and pose.sequence <= last:
                self._ignore(f"sequence {pose.sequence} not newer than {last}")
                continue
            self._last_sequence[pose.source_id] = pose.sequence
            if not pose.valid:
                # The estimator lost the object: keep the last good pose; it will age out.
                self.invalid += 1
                continue
            if self.pose is not None:
                jump = float(np.linalg.norm(position - self.pose.position))
                if jump > self.limits.max_pose_jump_m:
                    safety.latch(
                        f"object pose jumped {jump * 1000:.1f} mm between two estimates "
                        f"(limit {self.limits.max_pose_jump_m * 1000:.1f} mm, "
                        "perception.max_pose_jump_m)"
                    )
                    continue
            self.pose = pose
            self.accepted += 1

    def fresh_pose(self, now_s: float, safety: _Latch) -> ObjectPose | None:
        """The newest pose if it is young enough; latches a fault if it is too old. None
        before any pose arrived (the caller decides how long it waits for the first)."""
        pose = self.pose
        if pose is None:
            return None
        age = pose.age_s(now_s)
        if age > self.limits.max_pose_age_s:
            safety.latch(
                f"object pose is {age * 1000:.0f} ms old (limit "
                f"{self.limits.max_pose_age_s * 1000:.0f} ms, perception.max_pose_age_s)"
            )
            return None
        return pose


@dataclass
class PoseNoise:
    """The simulated camera's errors: Gaussian noise per estimate (m, rad, standard
    deviations), a bias drawn once per episode uniformly within +-bias (m per axis), and the
    delay from capture to delivery (s); estimates at `rate_hz`."""

    position_std_m: float = 0.0
    yaw_std_rad: float = 0.0
    bias_m: float = 0.0
    latency_s: float = 0.0
    rate_hz: float = 30.0

    def __post_init__(self) -> None:
        for name in ("position_std_m", "yaw_std_rad", "bias_m", "latency_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"pose noise {name} must be a number >= 0, got {value}")
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0.0):
            raise ValueError(f"pose noise rate_hz must be positive, got {self.rate_hz}")


class SimulatedPoseSensor:
    """A camera stand-in on a simulated clock: `advance(now_s)` captures the true pose
    (`true_pose() -> (position, yaw)`) at each capture time passed and releases the captures
    whose latency has passed; `poll()` hands them out (an `ObjectPoseSource`)."""

    def __init__(
        self,
        true_pose: Callable[[], tuple[np.ndarray, float]],
        noise: PoseNoise,
        source_id: int = 1,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.true_pose = true_pose
        self.noise = noise
        self.source_id = source_id
        self.rng = np.random.default_rng(seed)
        self.clock = clock or time.perf_counter
        self._pending: deque[tuple[float, ObjectPose]] = deque()
        self._ready: list[ObjectPose] = []
        self._next_capture_s: float | None = None
        self._sequence = 0
        self.bias = np.zeros(3)
        self.new_episode()

    def new_episode(self) -> None:
        """A new bias, as a camera recalibrated (or bumped) between episodes would have."""
        self.bias = self.rng.uniform(-self.noise.bias_m, self.noise.bias_m, 3)
        self._pending.clear()
        self._ready.clear()
        self._next_capture_s = None

    def capture(self, sim_time_s: float) -> ObjectPose:
        position, yaw = self.true_pose()
        noise = self.noise
        measured = (
            np.asarray(position, dtype=float)
            + self.bias
            + self.rng.normal(0.0, noise.position_std_m, 3)
        )
        measured_yaw = float(yaw) + float(self.rng.normal(0.0, noise.yaw_std_rad))
        self._sequence += 1
        return ObjectPose(
            sequence=self._sequence,
            source_id=self.source_id,
            position=measured,
            orientation=np.array(quaternion_from_euler(0.0, 0.0, measured_yaw)),
            latency_s=noise.latency_s,
            received_s=math.nan,  # set when delivered
        )

    def advance(self, sim_time_s: float) -> None:
        """Capture at every capture time up to `sim_time_s`; release what is due."""
        period = 1.0 / self.noise.rate_hz
        if self._next_capture_s is None:
            self._next_capture_s = sim_time_s
        while self._next_capture_s <= sim_time_s + 1e-12:
            self._pending.append(
                (self._next_capture_s + self.noise.latency_s, self.capture(self._next_capture_s))
            )
            self._next_capture_s += period
        while self._pending and self._pending[0][0] <= sim_time_s + 1e-12:
            due_s, pose = self._pending.popleft()
            # Delivered now; whatever of its latency the loop has not seen yet is the
            # estimator's reported latency (the pose is exactly that old on arrival).
            self._ready.append(_delivered(pose, self.clock()))

    def poll(self) -> list[ObjectPose]:
        ready, self._ready = self._ready, []
        return ready


def _delivered(pose: ObjectPose, received_s: float) -> ObjectPose:
    return ObjectPose(
        pose.sequence,
        pose.source_id,
        pose.position,
        pose.orientation,
        pose.latency_s,
        received_s,
        pose.valid,
    )
