"""iiwa-rl: reinforcement learning for the KUKA LBR iiwa 14, from simulation to the controller.

Importing the package registers its Gymnasium environments, as panda-gym does:
``import iiwa_rl; gym.make("IiwaReach-v0")``. The entry points are strings, so this
imports gymnasium only; PyBullet loads when an environment is first made.
"""

import os as _os

# One thread per process unless the user says otherwise, set before numpy loads (gymnasium
# imports it): acting's matrix products run in numpy (nn.ArrayForward), and an OpenBLAS
# pool of one thread per core would contend with the processes that step the environments
# on those cores (a grasp's 32 observations through 256-unit layers are above OpenBLAS's
# threading threshold). torch's threads are set per run (train.torch_threads). A program
# that imported numpy before iiwa_rl keeps the BLAS threads it started with.
_os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as _gym  # noqa: E402

__version__ = "0.1.0"

# No max_episode_steps here: each env truncates itself at its configured `episode_steps`,
# so the limit is config like every other parameter.
ENV_ENTRY_POINTS = {
    "IiwaReach-v0": "iiwa_rl.envs.tasks.reach:IiwaReachEnv",
    "IiwaGrasp-v0": "iiwa_rl.envs.tasks.grasp:IiwaGraspEnv",
}
for _env_id, _entry in ENV_ENTRY_POINTS.items():
    if _env_id not in _gym.registry:
        _gym.register(id=_env_id, entry_point=_entry, disable_env_checker=True)
