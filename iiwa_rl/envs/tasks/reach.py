"""Reach: bring the TCP (the flange centre) to a goal position and stay there."""

from __future__ import annotations

import math

import numpy as np
from iiwa_deploy.observation import ObservationInputs

from iiwa_rl.envs.base import IiwaEnv, RobotSnapshot
from iiwa_rl.envs.config import ReachConfig
from iiwa_rl.envs.rewards import RewardInputs
from iiwa_rl.metrics import Metric


class IiwaReachEnv(IiwaEnv):
    """`IiwaReach-v0`. Observation (base frame), in this order: joint positions normalised
    to [-1, 1] by their ranges, joint velocities as fractions of their limits, TCP position
    (m), goal (m), goal minus TCP (m), previous action. Action: 7 joint commands in [-1, 1]
    (`joint_delta`: target = measured + scale * a; `joint_offset`: target = home + scale * a).
    Success: TCP within `success_threshold` of the goal for the last `hold_time` seconds.
    Metric: `tcp_distance`, TCP to goal (m)."""

    config_class = ReachConfig
    config: ReachConfig
    observation_layout = [
        ("joint_position_normalized", "joints"),
        ("joint_velocity_normalized", "joints"),
        ("tcp_position", 3),
        ("goal_position", 3),
        ("goal_minus_tcp", 3),
        ("previous_action", "action"),
    ]
    available_reward_terms = {
        "tcp_distance",
        "tcp_distance_tanh",
        "action_rate",
        "action_magnitude",
        "joint_velocity",
        "joint_limit_proximity",
        "success",
    }
    metrics = (Metric("tcp_distance", "final TCP distance", "m", log_scale=True),)
    headline_metric = distance_metric = "tcp_distance"

    @property
    def action_size(self) -> int:
        return self.robot.joint_count

    def _setup_scene(self) -> None:
        self.goal_position = np.asarray(self.config.goal_high, dtype=float)
        # Steps the TCP must have been on the goal, this one included: 0.5 s at 25 Hz is
        # 12.5 steps, so 13; a zero hold still needs the step itself.
        cfg = self.config
        self._hold_steps_needed = max(1, math.ceil(cfg.hold_time * cfg.control_hz - 1e-9))
        self._steps_on_goal = 0

    def _reset_task(self, rng: np.random.Generator, options: dict) -> None:
        # Drawn even when given, so a given goal leaves the rest of the episode's draws alone.
        self.goal_position = rng.uniform(self.config.goal_low, self.config.goal_high)
        if options.get("goal_position") is not None:
            goal = np.asarray(options["goal_position"], dtype=float)
            if goal.shape != (3,) or not np.all(np.isfinite(goal)):
                raise ValueError(f"options['goal_position'] must be 3 finite numbers, got {goal}")
            self.goal_position = goal
        self._steps_on_goal = 0

    def _task_observation_inputs(self, inputs: ObservationInputs) -> None:
        inputs.goal_position = self.goal_position

    def _evaluate(self, robot: RobotSnapshot, action: np.ndarray) -> tuple[RewardInputs, bool]:
        offset = self.goal_position - robot.tcp_position
        distance = float(np.sqrt(offset @ offset))
        on_goal = distance <= self.config.success_threshold
        self._steps_on_goal = self._steps_on_goal + 1 if on_goal else 0
        inputs = self.reward_inputs(
            robot,
            action,
            is_success=self._steps_on_goal >= self._hold_steps_needed,
            goal_position=self.goal_position,
        )
        return inputs, False

    def _task_metrics(self, robot: RobotSnapshot) -> dict:
        offset = self.goal_position - robot.tcp_position
        return {"tcp_distance": float(np.sqrt(offset @ offset))}

    def status_lines(self, metrics: dict) -> list[str]:
        distance = metrics.get("tcp_distance")
        return [] if distance is None else [f"TCP to goal {float(distance) * 100:.1f} cm"]

    def _create_markers(self) -> None:
        self._markers["goal"] = self.add_visual_sphere(0.02, (0.1, 0.8, 0.2, 0.7))

    def _move_markers(self) -> None:
        self.sim.client.resetBasePositionAndOrientation(
            self._markers["goal"], list(self.goal_position), [0, 0, 0, 1]
        )

    def describe_contract(self) -> dict:
        contract = super().describe_contract()
        contract["goal_sampling"] = {
            "low": list(self.config.goal_low),
            "high": list(self.config.goal_high),
        }
        contract["success_threshold_m"] = self.config.success_threshold
        contract["success_hold_s"] = self.config.hold_time
        return contract
