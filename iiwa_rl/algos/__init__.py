"""The algorithms: PPO-clip, TRPO (on-policy, Gaussian actor) and DDPG (off-policy)."""

from __future__ import annotations

from iiwa_rl.algos.base import Algorithm, OnPolicyAlgorithm, Transition
from iiwa_rl.algos.ddpg import DDPG
from iiwa_rl.algos.ppo import PPO
from iiwa_rl.algos.trpo import TRPO

ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "trpo": TRPO, "ddpg": DDPG}


def register(name: str, algorithm: type[Algorithm]) -> None:
    ALGORITHMS[name] = algorithm


__all__ = [
    "ALGORITHMS",
    "DDPG",
    "PPO",
    "TRPO",
    "Algorithm",
    "OnPolicyAlgorithm",
    "Transition",
    "register",
]
