"""The environment shell shared by every IIWA task: robot, physics stepping, actions,
safety of inputs, time limits and rendering. A task (tasks/*.py) adds its scene, its
reset, its observation inputs, its reward inputs and its success test.

The robot is a component: `env.kwargs.robot` names a registered arm (iiwa_rl/sim/robot.py,
one file per robot such as sim/iiwa14.py), which the env builds and drives through the
`SimRobot` interface; its URDF limits must equal the controller's robot configuration's.

Actuation is the controller's own code (iiwa_deploy.actuation): an action becomes a joint
target, the target feeds the controller's interpolator, and the arm's position motors get
one interpolated setpoint per robot period, the first `command_delay_periods` of them still
towards the previous target, as the real loop answers a state before its policy runs. The
robot configuration (limits, robot period, interpolator limits, target margin) is the
controller's YAML. The observation is built by the controller's `ObservationBuilder`.

Domain randomisation (`config.randomization`, envs/randomization.py) draws an episode's
`Perturbation` at reset: the arm's engine parameters (envs/perturbed_robot.py), the command
delay, and what the controller would measure (`_sensed`: a delayed, biased, noisy joint
reading and the TCP from the controller's kinematics of it), which the policy sees and the
next action is mapped from; rewards and success stay on the true state.

Episode semantics:
- `terminated` is True when the task itself ended: a grasp cube off the table, grasp
  success when the config asks for it (`end_on_success`; off by default, see
  tasks/grasp.py), or a finger on the cube's top when it asks for that
  (`end_on_finger_on_cube_top`, a training option). A reach episode never terminates:
  the arm must stay on the goal, and success is read at the last step.
- `truncated` is True at the time limit (`episode_steps`) and when the physics blew
  up (`info["physics_blowup"]`). A truncated state is not terminal: learners bootstrap
  from the value of its observation.
- `info["is_success"]` says whether the episode would count as a success if it ended at
  this step (reach: the TCP is on the goal now; grasp: the cube has been held high for
  the hold time at some point); `info["reward/<term>"]` holds each weighted reward term,
  `info["metrics/<name>"]` each of the task's figures (iiwa_rl/metrics.py), the ones a
  task reports only when an episode ends included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pybullet
from iiwa_deploy.actuation import CommandStream, ControlTiming, JointTargetMapping
from iiwa_deploy.config import ConfigError as RobotConfigError
from iiwa_deploy.config import RobotConfig, load_robot_config
from iiwa_deploy.floor_guard import FloorGuard
from iiwa_deploy.observation import ObservationBuilder, ObservationConstants, ObservationInputs

from iiwa_rl.envs.config import IiwaEnvConfig
from iiwa_rl.envs.randomization import Perturbation, Randomizer
from iiwa_rl.envs.rewards import RewardFunction, RewardInputs
from iiwa_rl.metrics import Metric, with_prefix
from iiwa_rl.metrics import status_lines as generic_status_lines
from iiwa_rl.schema import ConfigError, from_mapping, to_mapping
from iiwa_rl.sim import BulletSim, SimRobot, robot_description

# The URDF's limits and the robot configuration's must describe the same arm (rad, rad/s).
_LIMIT_TOLERANCE = 1e-4


@dataclass
class RobotSnapshot:
    """The robot's measured state after a control step (base frame)."""

    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    tcp_position: np.ndarray
    tcp_orientation: np.ndarray  # quaternion (x, y, z, w)
    tcp_yaw: float  # heading of the TCP x axis in the base plane, rad
    gripper_width: float = 0.0  # m; 0 without a gripper


def quaternion_yaw(orientation) -> float:
    """Heading (rad) of a frame's x axis in the base plane, from its (x, y, z, w) quaternion."""
    x, y, z, w = map(float, orientation)
    return math.atan2(2.0 * (x * y + w * z), 1.0 - 2.0 * (y * y + z * z))


class IiwaEnv(gym.Env, ABC):
    """Base class; see the module docstring for the episode semantics."""

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 20}
    config_class: type[IiwaEnvConfig] = IiwaEnvConfig
    with_gripper = False
    render_size = (480, 360)

    def __init__(self, render_mode: str | None = None, config=None, **overrides):
        if render_mode not in (None, "human", "rgb_array"):
            raise ValueError(
                f"render_mode must be None, 'human' or 'rgb_array', got {render_mode!r}"
            )
        self.config = self._build_config(config, overrides)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.config.control_hz}
        cfg = self.config
        self.robot_description = robot_description(cfg.robot)
        self.robot_config = self._load_robot_config(cfg, self.robot_description.robot_config)
        self.timing, self.physics_steps_per_period = self._control_timing(cfg, self.robot_config)
        self.sim = BulletSim(
            gui=render_mode == "human",
            physics_hz=cfg.physics_hz,
            solver_iterations=cfg.solver_iterations,
        )
        if self.with_gripper and self.robot_description.gripper is None:
            raise ConfigError(
                f"env.kwargs.robot: {cfg.robot} has no gripper; {type(self).__name__} needs one"
            )
        self.robot: SimRobot = self.robot_description.build(self.sim, self.with_gripper)
        self._check_robot_limits()
        self.home_joint_positions = np.asarray(cfg.home_joint_positions, dtype=float)
        self._setup_scene()
        robot_config = self.robot_config
        self.command_stream = CommandStream(
            self.timing,
            robot_config.interpolator_velocity,
            robot_config.acceleration,
            self.home_joint_positions,
            self._make_floor_guard(),
        )
        self._send_setpoint = self._make_setpoint_sender()
        self._setup_randomization()
        self.reward_function = RewardFunction(
            cfg.reward.terms, cfg.reward.sparse, self.available_reward_terms, "env.reward.terms"
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_size,), np.float32)
        # The task's layout with its robot-sized entries resolved: one value per arm joint
        # ("joints"), one per action element ("action").
        sizes = {"joints": self.robot.joint_count, "action": self.action_size}
        self.observation_layout = [
            (name, sizes.get(size, size)) for name, size in self.observation_layout
        ]
        self.observation_size = sum(size for _, size in self.observation_layout)
        limits = self.robot.limits
        self.observation_builder = ObservationBuilder(
            self.observation_layout,
            ObservationConstants(
                joint_lower=limits.lower,
                joint_upper=limits.upper,
                joint_velocity_limits=limits.velocity,
                max_gripper_width=self.robot.max_gripper_width,
                object_rest_height=self.object_rest_height,
            ),
        )
        self._observation_inputs = ObservationInputs(previous_action=np.zeros(self.action_size))
        self.observation_space = gym.spaces.Box(
            -np.inf, np.inf, (self.observation_size,), np.float32
        )
        self._previous_action = np.zeros(self.action_size, dtype=np.float32)
        self._last_observation = np.zeros(self.observation_size, dtype=np.float32)
        self._step_count = 0
        self.last_info: dict = {}  # the info of the latest reset or step, for viewers
        self._markers: dict[str, int] = {}
        self._tcp_trail: list[np.ndarray] = []
        if render_mode is not None:
            self._create_markers()

    # -------------------------------------------------------------- configuration
    @staticmethod
    def _load_robot_config(cfg: IiwaEnvConfig, robot_default: str | None) -> RobotConfig:
        """`env.kwargs.robot_config`, else the robot's own, else the controller's shipped one."""
        path = cfg.robot_config if cfg.robot_config is not None else robot_default
        try:
            return load_robot_config(path)
        except (RobotConfigError, OSError) as error:
            raise ConfigError(f"env.kwargs.robot_config: {error}") from None

    @staticmethod
    def _control_timing(cfg: IiwaEnvConfig, robot: RobotConfig) -> tuple[ControlTiming, int]:
        """The controller's timing at this robot's period, and physics steps per period."""
        period = robot.robot_period_s
        per_period = cfg.physics_hz * period
        if round(per_period) < 1 or abs(per_period - round(per_period)) > 1e-6:
            raise ConfigError(
                f"env.kwargs.physics_hz: {cfg.physics_hz} Hz is not a whole multiple of the robot "
                f"period's rate ({1.0 / period:g} Hz, robot_period_s {period} s of "
                f"{cfg.robot_config or 'the shipped robot configuration'}): the simulated arm "
                "takes one controller setpoint per robot period"
            )
        try:
            timing = ControlTiming.for_control_period(period, 1.0 / cfg.control_hz)
        except ValueError as error:
            raise ConfigError(f"env.kwargs.control_hz: {error}") from None
        return timing, int(round(per_period))

    def _check_robot_limits(self) -> None:
        limits, robot = self.robot.limits, self.robot_config
        if robot.joint_names != self.robot.joint_names:
            raise ConfigError(
                f"env.kwargs.robot_config: joint_names of {robot.name} {list(robot.joint_names)} "
                f"are not the simulated arm's ({self.config.robot}: "
                f"{list(self.robot.joint_names)})"
            )
        for name in ("lower", "upper", "velocity"):
            difference = np.abs(getattr(limits, name) - getattr(robot, name))
            if np.any(difference > _LIMIT_TOLERANCE):
                raise ConfigError(
                    f"env.kwargs.robot_config: joint_limits.{name} of {robot.name} differ from "
                    f"the simulated arm's URDF by up to {difference.max():.4g}"
                )

    @classmethod
    def _build_config(cls, config, overrides) -> IiwaEnvConfig:
        if isinstance(config, cls.config_class):
            base = to_mapping(config)
        elif config is None:
            base = {}
        elif isinstance(config, dict):
            base = dict(config)
        else:
            raise ConfigError(f"env config must be a mapping or {cls.config_class.__name__}")
        return from_mapping(cls.config_class, {**base, **overrides}, "env.kwargs")

    # ------------------------------------------------------------- task interface
    # Term names of iiwa_deploy.observation and their sizes: a number, "joints" (one per arm
    # joint of the robot the env is given) or "action" (one per action element).
    observation_layout: list[tuple[str, int | str]] = []
    available_reward_terms: set[str] = set()
    object_rest_height = 0.0  # m; a task with an object sets it before the builder is made

    @property
    @abstractmethod
    def action_size(self) -> int:
        """Length of the action vector."""

    def _setup_scene(self) -> None:
        """Load the task's bodies (called once)."""

    @abstractmethod
    def _reset_task(self, rng: np.random.Generator, options: dict) -> None:
        """Draw the episode's goal or object pose with `rng`; `options` (reset's) may fix
        them instead (a benchmark replaying given goals)."""

    def _task_observation_inputs(self, inputs: ObservationInputs) -> None:
        """Fill the task's fields of the observation inputs (goal, object pose...)."""

    @abstractmethod
    def _evaluate(self, robot: RobotSnapshot, action: np.ndarray) -> tuple[RewardInputs, bool]:
        """Reward inputs and whether the task failed (terminal) at this step."""

    def reward_inputs(
        self, robot: RobotSnapshot, action: np.ndarray, is_success: bool, **task_fields
    ) -> RewardInputs:
        """The robot's part of the reward inputs, plus the task's own fields."""
        limits = self.robot.limits
        return RewardInputs(
            tcp_position=robot.tcp_position,
            joint_positions=robot.joint_positions,
            joint_velocities=robot.joint_velocities,
            joint_lower=limits.lower,
            joint_upper=limits.upper,
            joint_velocity_limits=limits.velocity,
            action=action,
            previous_action=self._previous_action,
            is_success=is_success,
            **task_fields,
        )

    # The task's figures (iiwa_rl/metrics.py): declared here, reported by `_task_metrics`
    # (and `_episode_end_metrics`) as info["metrics/<name>"]. `headline_metric` is the one
    # a reader follows (the evaluation curve beside success and return, the training
    # progress line), `distance_metric` the task's distance (the robustness table).
    metrics: tuple[Metric, ...] = ()
    headline_metric: str | None = None
    distance_metric: str | None = None

    def _task_metrics(self, robot: RobotSnapshot) -> dict:
        """The task's figures at this reset or step, by metric name (distances, heights)."""
        return {}

    def _episode_end_metrics(self, metrics: dict, succeeded: bool) -> dict:
        """Figures the task reports at an episode's end only, from its last step's
        `metrics` (a grasp's failure reason)."""
        return {}

    def status_lines(self, metrics: dict) -> list[str]:
        """The task's figures (by name, from an info) as the viewer's text lines."""
        return generic_status_lines(metrics)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cfg = self.config
        spread = cfg.initial_joint_noise
        if self._randomizer is not None:
            # First, so the start spread term can widen the start draw below.
            # The extra draw only where the fraction is set, so other configs keep their numbers.
            fraction = cfg.randomization_ends_fraction
            at_ends = bool(fraction) and self.np_random.random() < fraction
            self._perturbation, self._randomization_info = self._randomizer.draw(
                self.np_random, at_ends
            )
            if self._perturbation.start_pose_spread is not None:
                spread = self._perturbation.start_pose_spread
        noise = self.np_random.uniform(-spread, spread, self.robot.joint_count)
        robot_config = self.robot_config
        start = np.minimum(
            np.maximum(self.home_joint_positions + noise, robot_config.target_lower),
            robot_config.target_upper,
        )
        self.robot.reset_joint_positions(start)
        self.command_stream.reset(start)
        self._reset_task(self.np_random, options or {})
        if self._randomizer is not None:
            self._apply_perturbation(start)
        self._previous_action = np.zeros(self.action_size, dtype=np.float32)
        self._step_count = 0
        self._tcp_trail.clear()
        snapshot = self._snapshot()
        self._current = self._sensed(snapshot)
        observation = self._observation(self._current)
        self._last_observation = observation
        self._update_markers(snapshot)
        self.last_info = {
            "is_success": False,
            **with_prefix(self._task_metrics(snapshot)),
            **self._randomization_info,
        }
        return observation, dict(self.last_info)

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action has shape {action.shape}, expected {self.action_space.shape}")
        # One reduction instead of isfinite + all: a NaN or inf makes the sum non-finite,
        # and summing in float64 cannot overflow on float32 inputs.
        if not math.isfinite(action.sum(dtype=np.float64)):
            raise ValueError(f"action contains NaN or inf: {action.tolist()}")
        action = np.minimum(np.maximum(action, -1.0), 1.0)
        self.robot.peak_speed_fraction = 0.0
        self._apply_action(action)
        self._step_count += 1
        truncated = self._step_count >= self.config.episode_steps

        snapshot = self._snapshot(after_step=True)
        self._read_task_state()
        if self._blew_up(snapshot):
            # Keep the last good observation: a learner must never see non-finite numbers.
            self._current = snapshot
            info = {"is_success": False, "physics_blowup": True, **self._randomization_info}
            self.last_info = info
            return self._last_observation.copy(), 0.0, False, True, dict(info)

        reward_inputs, failed = self._evaluate(snapshot, action)
        reward, terms = self.reward_function(reward_inputs)
        self._previous_action = action
        # What the controller would measure (the true state unless sensing is randomised):
        # the policy sees it, and the next action is mapped from it.
        self._current = self._sensed(snapshot)
        observation = self._observation(self._current)
        self._last_observation = observation
        succeeded = self._episode_succeeded(reward_inputs)
        terminated = failed or (succeeded and self.terminate_on_success)
        metrics = self._task_metrics(snapshot)
        info = {"is_success": succeeded, **terms, **with_prefix(metrics)}
        if terminated or truncated:
            # The episode's draw and end figures, at its end only: a vector env stacks
            # every info key of every step, and readers take these from the final info.
            info.update(with_prefix(self._episode_end_metrics(metrics, succeeded)))
            info.update(self._randomization_info)
        self._update_markers(snapshot)
        self.last_info = info
        return observation, float(reward), bool(terminated), bool(truncated), dict(info)

    terminate_on_success = False

    def _episode_succeeded(self, reward_inputs: RewardInputs) -> bool:
        """Whether the episode counts as a success so far; by default the step's own test."""
        return reward_inputs.is_success

    @property
    def elapsed_steps(self) -> int:
        """Control steps taken in the current episode."""
        return self._step_count

    # --------------------------------------------------------------- internals
    def _snapshot(self, after_step: bool = False) -> RobotSnapshot:
        robot = self.robot
        # Right after a step, the speed clamp's own read of that step serves (one read fewer).
        q, qd, gripper_width = (
            robot.state_after_step() if after_step else robot.joint_and_gripper_state()
        )
        tcp_position, tcp_orientation = robot.tcp_pose()
        return RobotSnapshot(
            q, qd, tcp_position, tcp_orientation, quaternion_yaw(tcp_orientation), gripper_width
        )

    def _observation(self, snapshot: RobotSnapshot) -> np.ndarray:
        inputs = self._observation_inputs
        inputs.joint_positions = snapshot.joint_positions
        inputs.joint_velocities = snapshot.joint_velocities
        inputs.tcp_position = snapshot.tcp_position
        inputs.tcp_yaw = snapshot.tcp_yaw
        inputs.gripper_width = snapshot.gripper_width
        inputs.previous_action = self._previous_action
        self._task_observation_inputs(inputs)
        return self.observation_builder.build(inputs).copy()

    def _blew_up(self, snapshot: RobotSnapshot) -> bool:
        # The robot reads every joint's speed after each physics step, clamps it to the
        # datasheet limit and keeps the largest |speed| / limit it met (inf for a
        # non-finite speed): that peak covers the whole control step, the measured speeds
        # included. `<=` is False for NaN. A non-finite position makes the sum non-finite.
        speeds_ok = self.robot.peak_speed_fraction <= self.config.blowup_speed_factor
        positions_ok = math.isfinite(snapshot.joint_positions.sum())
        return not (speeds_ok and positions_ok) or self._task_blew_up()

    def _read_task_state(self) -> None:
        """Read the task's own bodies after a step (the grasp's cube), before the blow-up
        check and the reward look at them."""

    def _task_blew_up(self) -> bool:
        return False

    @functools.cached_property
    def joint_target_mapping(self) -> JointTargetMapping:
        """The controller's mapping of a joint action to a joint target."""
        return JointTargetMapping.for_robot(
            self.config.action_mode,
            self.config.action_scale,
            self.home_joint_positions,
            self.robot_config,
        )

    def _make_setpoint_sender(self):
        """`send(setpoint)`: one robot period of the simulated arm, as the robot lives it
        between two states: the setpoint becomes the motors' target, the physics advances."""
        command, step, substeps = (
            self.robot.command_setpoint,
            self.sim.step,
            self.physics_steps_per_period,
        )

        def send(setpoint: list[float]) -> None:
            command(setpoint)
            step(substeps)

        return send

    def _make_floor_guard(self) -> FloorGuard | None:
        """The command stream's floor guard (iiwa_deploy.floor_guard): a task with a hand
        near a table returns the one its controller session uses."""
        return None

    def _drive_joints(self, joint_target: np.ndarray) -> None:
        """One policy period through the controller's command stream to `joint_target`."""
        if self._randomizer is not None:
            self._set_command_delay()
            self._periods_sent = 0
        self.command_stream.control_step(joint_target, self._send_setpoint)

    # ------------------------------------------------------- domain randomisation
    def _setup_randomization(self) -> None:
        """The configured terms (envs/randomization.py) and what they act through; without
        any, every path below is skipped and the env is the nominal one, number for number."""
        timing = self.timing
        self._perturbation = Perturbation()
        # The episode's perturbation.senses_joints and .senses_cube, read every step: decided
        # once at reset (_apply_perturbation), where each check costs more than a step's
        # noise draw (2 to 3.5 against 0.6 us).
        self._senses_joints = self._senses_cube = False
        self._randomization_info: dict[str, float] = {}
        section = self.config.randomization
        self._randomizer = (
            Randomizer(
                section,
                self.with_gripper,
                max_command_delay_periods=timing.steps_per_action
                - 1
                - timing.command_delay_periods,
            )
            if section
            else None
        )
        if self._randomizer is None:
            return
        from iiwa_deploy.kinematics import KinematicChain

        from iiwa_rl.envs.perturbed_robot import PerturbedArm

        self._nominal_timing = timing
        self._timings: dict[int, ControlTiming] = {}
        self.perturbed_arm = PerturbedArm(self.robot, self.sim)
        # The controller's own forward kinematics: a perturbed joint reading gives the TCP
        # the controller would compute from it.
        self._kinematics = KinematicChain.from_contract(self.robot.kinematic_chain())
        self._joint_history: list[tuple[np.ndarray, np.ndarray]] = []
        send_nominal = self._send_setpoint
        robot = self.robot
        history = self._joint_history

        periods_per_step = timing.steps_per_action
        self._periods_sent = 0  # of this policy step

        def send_and_record(setpoint: list[float]) -> None:
            send_nominal(setpoint)
            latency = self._perturbation.observation_latency_periods
            if not latency:
                return
            self._periods_sent += 1
            # The observation reads the state `latency` periods before the step's end, so
            # only the step's last latency + 1 periods can ever be read. Each is the speed
            # clamp's reading after the period's last physics step: a fresh read would copy
            # PyBullet's whole state buffer once more.
            if self._periods_sent >= periods_per_step - latency:
                positions, velocities, _ = robot.state_after_step()
                history.append((positions, velocities))
                del history[: -latency - 1]

        self._send_setpoint = send_and_record

    def _apply_perturbation(self, start: np.ndarray) -> None:
        """Engine parameters and timing of the episode's draw, at reset."""
        perturbation = self._perturbation
        self._senses_joints = perturbation.senses_joints
        self._senses_cube = perturbation.senses_cube
        self.perturbed_arm.apply(perturbation)
        self._joint_history[:] = [(start.copy(), np.zeros(self.robot.joint_count))]
        self._set_command_delay()

    def _set_command_delay(self) -> None:
        perturbation = self._perturbation
        delay = self._nominal_timing.command_delay_periods + perturbation.command_latency_periods
        if perturbation.command_jitter_periods:
            delay += int(self.np_random.integers(0, perturbation.command_jitter_periods + 1))
        timing = self._timings.get(delay)
        if timing is None:
            timing = self._timings[delay] = dataclasses.replace(
                self._nominal_timing, command_delay_periods=delay
            )
        self.command_stream.timing = timing

    def _sensed(self, snapshot: RobotSnapshot) -> RobotSnapshot:
        """The robot state as the controller measures it: `observation_latency` periods
        old, with the episode's bias and this step's noise; the TCP from the controller's
        forward kinematics of that reading."""
        perturbation = self._perturbation
        if self._randomizer is None or not self._senses_joints:
            return snapshot
        q, qd = snapshot.joint_positions, snapshot.joint_velocities
        if perturbation.observation_latency_periods:
            q, qd = self._joint_history[0]
        q = q + perturbation.joint_position_bias
        qd = qd + perturbation.joint_velocity_bias
        rng, joint_count = self.np_random, self.robot.joint_count
        if perturbation.joint_position_noise:
            q = q + rng.normal(0.0, perturbation.joint_position_noise, joint_count)
        if perturbation.joint_velocity_noise:
            qd = qd + rng.normal(0.0, perturbation.joint_velocity_noise, joint_count)
        tcp_position, rotation = self._kinematics.forward(q)
        orientation = rotation_to_quaternion(rotation)
        return RobotSnapshot(
            q, qd, tcp_position, orientation, quaternion_yaw(orientation), snapshot.gripper_width
        )

    def _apply_action(self, action: np.ndarray) -> None:
        # The state read after the last step is still current: nothing moved since.
        measured = self._current.joint_positions
        self._drive_joints(self.joint_target_mapping.target(action, measured))

    # --------------------------------------------------------------- rendering
    def _create_markers(self) -> None:
        """Visual-only bodies (no collision, no mass) for goals and the like."""

    def _update_markers(self, snapshot: RobotSnapshot) -> None:
        if self.render_mode is None:
            return
        self._tcp_trail.append(snapshot.tcp_position.copy())
        del self._tcp_trail[:-200]
        self._move_markers()

    def _move_markers(self) -> None:
        pass

    def add_visual_sphere(self, radius: float, rgba) -> int:
        client = self.sim.client
        shape = client.createVisualShape(pybullet.GEOM_SPHERE, radius=radius, rgbaColor=list(rgba))
        return client.createMultiBody(baseMass=0.0, baseVisualShapeIndex=shape)

    @property
    def tcp_trail(self) -> list[np.ndarray]:
        return self._tcp_trail

    def camera_target(self) -> tuple[list[float], float, float, float]:
        """Camera target (m), distance (m), yaw and pitch (deg) framing the workspace."""
        return [0.45, 0.0, 0.35], 1.7, 50.0, -25.0

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        width, height = self.render_size
        target, distance, yaw, pitch = self.camera_target()
        client = self.sim.client
        view = client.computeViewMatrixFromYawPitchRoll(target, distance, yaw, pitch, 0.0, 2)
        projection = client.computeProjectionMatrixFOV(50.0, width / height, 0.05, 10.0)
        _, _, rgba, _, _ = client.getCameraImage(
            width, height, view, projection, renderer=pybullet.ER_TINY_RENDERER
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]

    def close(self):
        if getattr(self, "sim", None) is not None:
            self.sim.close()
            self.sim = None

    # ------------------------------------------------------------- description
    def describe_contract(self) -> dict:
        """What a deployed policy must know about this environment (see iiwa_rl/export.py)."""
        limits = self.robot.limits
        return {
            "observation": {
                "size": self.observation_size,
                "layout": [{"name": n, "size": s} for n, s in self.observation_layout],
            },
            "action": {
                "size": self.action_size,
                "mode": self.config.action_mode,
                "scale": self.config.action_scale,
                "joint_names": list(self.robot_joint_names),
                "home_joint_positions": self.home_joint_positions.tolist(),
            },
            "control_period_s": 1.0 / self.config.control_hz,
            "joint_limits": {
                "lower": limits.lower.tolist(),
                "upper": limits.upper.tolist(),
                "velocity": limits.velocity.tolist(),
                "effort": limits.effort.tolist(),
            },
            # The plant the policy was trained on: the controller refuses to run it through a
            # different one (iiwa_deploy.contract.check_compatibility).
            "actuation": {
                "robot_period_s": self.timing.robot_period_s,
                "command_delay_periods": self.timing.command_delay_periods,
                "interpolator_velocity": self.robot_config.interpolator_velocity.tolist(),
                "interpolator_acceleration": self.robot_config.acceleration.tolist(),
                "target_margin_rad": self.robot_config.target_margin_rad,
            },
            "simulation": {
                "physics_hz": self.config.physics_hz,
                "solver_iterations": self.config.solver_iterations,
            },
            "start": {"initial_joint_noise_rad": self.config.initial_joint_noise},
        }

    @property
    def robot_joint_names(self) -> tuple[str, ...]:
        return self.robot.joint_names


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion of a 3x3 rotation matrix (Shepperd's method: the largest
    of the four candidates keeps the division well conditioned)."""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = (trace, m[0, 0], m[1, 1], m[2, 2])
    largest = int(np.argmax(candidates))
    if largest == 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif largest == 1:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif largest == 2:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    return np.array(q)


def down_orientation(yaw: float) -> np.ndarray:
    """Quaternion of a TCP pointing straight down, turned by `yaw` (rad) about world z."""
    return np.array(pybullet.getQuaternionFromEuler([np.pi, 0.0, yaw]))
