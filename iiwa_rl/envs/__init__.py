"""Gymnasium environments for the IIWA14: `IiwaReach-v0` and `IiwaGrasp-v0` (their ids are
registered by `import iiwa_rl`, see iiwa_rl/__init__.py)."""

import iiwa_rl.sim  # noqa: F401  (first: imports PyBullet without its stdout banner)
from iiwa_rl.envs.base import IiwaEnv
from iiwa_rl.envs.config import GraspConfig, IiwaEnvConfig, ReachConfig, RewardConfig
from iiwa_rl.envs.tasks.grasp import IiwaGraspEnv
from iiwa_rl.envs.tasks.reach import IiwaReachEnv
from iiwa_rl.envs.vector import make_vector_env

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
