"""The algorithms: PPO-clip, TRPO (on-policy, Gaussian actor) and DDPG (off-policy)."""

from __future__ import annotations

from iiwa_rl.algos.base import Algorithm, OnPolicyAlgorithm, Transition
from iiwa_rl.algos.ddpg import DDPG
from iiwa_rl.algos.ppo import PPO
from iiwa_rl.algos.trpo import TRPO

# By config `algorithm`; a new algorithm is a class here, a name in TrainConfig.algorithm's
# Literal and its config section (config.py), which is what validates it.
ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "trpo": TRPO, "ddpg": DDPG}

__all__ = [
    "ALGORITHMS",
    "DDPG",
    "PPO",
    "TRPO",
    "Algorithm",
    "OnPolicyAlgorithm",
    "Transition",
]
