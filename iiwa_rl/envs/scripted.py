"""A scripted grasp expert for `IiwaGrasp-v0` in the Cartesian action mode.

It proves the task is solvable with the simulated gripper (a test runs it over random
resets) and serves as a demonstration policy in the viewer. It reads the true cube pose
from the environment, which a learned policy gets only through its observation.
"""

from __future__ import annotations

import numpy as np

from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv


def _wrap_quarter_turn(angle: float) -> float:
    """Angle folded into [-pi/4, pi/4): a cube looks the same every quarter turn."""
    return (angle + np.pi / 4) % (np.pi / 2) - np.pi / 4


class ScriptedGrasp:
    """Approach above the cube, align the fingers with its faces, descend, close, lift.

    Call it with nothing: it reads the environment's state and returns an action."""

    approach_height = 0.08  # m above the cube centre
    close_steps = 8  # control steps the gripper gets to close before lifting
    lift_extra = 0.05  # m lifted beyond the required height

    def __init__(self, env):
        self.env: IiwaGraspEnv = env.unwrapped
        if not isinstance(self.env, IiwaGraspEnv) or self.env.config.action_mode != "cartesian":
            raise ValueError("ScriptedGrasp drives IiwaGrasp-v0 in the 'cartesian' action mode")
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self._closing = 0

    def __call__(self, observation=None) -> np.ndarray:
        env, cfg = self.env, self.env.config
        current = env._current
        cube = env._cube_position
        yaw_error = _wrap_quarter_turn(env._cube_yaw - current.tcp_yaw)
        grip = 1.0
        if self.phase == "approach":
            target = cube + np.array([0.0, 0.0, self.approach_height])
            if np.linalg.norm(target - current.tcp_position) < 0.01 and abs(yaw_error) < 0.05:
                self.phase = "descend"
        if self.phase == "descend":
            target = cube.copy()
            if abs(current.tcp_position[2] - cube[2]) < 0.008:
                self.phase = "close"
        if self.phase == "close":
            target, grip = cube.copy(), -1.0
            self._closing += 1
            if self._closing >= self.close_steps:
                self.phase = "lift"
        if self.phase == "lift":
            lift_to = env.cube_rest_height + cfg.lift_height + self.lift_extra
            target = np.array([current.tcp_position[0], current.tcp_position[1], lift_to])
            grip = -1.0
        action = np.empty(5, dtype=np.float32)
        action[:3] = np.clip((target - current.tcp_position) / cfg.action_scale, -1.0, 1.0)
        action[3] = np.clip(yaw_error / cfg.yaw_scale, -1.0, 1.0)
        action[4] = grip
        return action


def run_scripted_episode(env, seed: int) -> dict:
    """One episode of the expert; returns the last info with the episode's length."""
    from iiwa_rl.rollout import Rollout

    (episode,) = Rollout(env, ScriptedGrasp(env), seed).run(1)
    return {**episode.final_info, "length": episode.length}
