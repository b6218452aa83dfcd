"""Naming any Gymnasium environment in a config's `env.id`.

An id is either registered already (Pendulum-v1, this project's Iiwa ids, registered by
`import iiwa_rl`) or given as gymnasium's own ``module:EnvId``: the module is imported
first, and registers EnvId as it is imported (panda-gym's
``panda_gym:PandaReachDense-v3``, gymnasium-robotics, a user's own package). The id is
passed on as written, so `gym.make` imports the module again wherever an environment is
made (subprocess workers, evaluation, `iiwa-rl eval`).
"""

from __future__ import annotations

import importlib

import gymnasium as gym

import iiwa_rl  # noqa: F401  (registers the project's ids)
from iiwa_rl.schema import ConfigError


def find_env_spec(env_id: str, where: str = "env.id") -> gym.envs.registration.EnvSpec:
    """The registered spec of `env_id` (see the module docstring), or a ConfigError that
    says what is missing."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"{where}: '{env_id}': cannot import module '{module}' ({error}); is its "
                "package installed?"
            ) from None
        except Exception as error:  # the package's own import failed: say how
            raise ConfigError(
                f"{where}: '{env_id}': importing '{module}' failed: {type(error).__name__}: {error}"
            ) from None
    if name not in gym.registry:
        if module:
            raise ConfigError(
                f"{where}: unknown environment '{name}': importing '{module}' did not register it"
            )
        ours = sorted(key for key in gym.registry if key.startswith("Iiwa"))
        raise ConfigError(
            f"{where}: unknown environment '{env_id}' (ours: {ours}); an environment that "
            "registers when its package is imported is named module:EnvId, e.g. "
            "panda_gym:PandaReachDense-v3"
        )
    return gym.registry[name]
