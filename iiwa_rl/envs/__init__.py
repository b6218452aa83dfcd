"""Gymnasium environments for the IIWA14: `IiwaReach-v0` and `IiwaGrasp-v0`."""

import gymnasium as gym

import iiwa_rl.sim  # noqa: F401  (first: imports PyBullet without its stdout banner)
from iiwa_rl.envs.base import IiwaEnv
from iiwa_rl.envs.config import GraspConfig, IiwaEnvConfig, ReachConfig, RewardConfig
from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv
from iiwa_rl.envs.tasks.reach import IiwaReachEnv
from iiwa_rl.envs.vector import make_vector_env

# No max_episode_steps here: each env truncates itself at its configured `episode_steps`,
# so the limit is config like every other parameter.
for _env_id, _entry in (
    ("IiwaReach-v0", "iiwa_rl.envs.tasks.reach:IiwaReachEnv"),
    ("IiwaGrasp-v0", "iiwa_rl.envs.tasks.grasp:IiwaGraspEnv"),
):
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry, disable_env_checker=True)

__all__ = [
    "GraspConfig",
    "IiwaEnv",
    "IiwaEnvConfig",
    "IiwaGraspEnv",
    "IiwaReachEnv",
    "ReachConfig",
    "RewardConfig",
    "make_vector_env",
]
