"""The algorithms: PPO-clip, TRPO (on-policy, Gaussian actor) and DDPG (off-policy)."""

from __future__ import annotations

from iiwa_rl.algos.base import Algorithm, OnPolicyAlgorithm, Transition
from iiwa_rl.algos.ppo import PPO

ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO}


def register(name: str, algorithm: type[Algorithm]) -> None:
    ALGORITHMS[name] = algorithm


__all__ = ["ALGORITHMS", "Algorithm", "OnPolicyAlgorithm", "PPO", "Transition", "register"]
