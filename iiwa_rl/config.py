"""The training configuration: schema, loading, `--set` overrides and validation.

A YAML file has these sections (see configs/*.yaml for complete examples):

    algorithm: ppo | trpo | ddpg
    seed: 0
    device: auto | cpu | cuda
    env:        id, num_envs, vector_mode, kwargs (the environment's own parameters)
    normalize:  observations, rewards, clip
    policy:     actor network (Gaussian for PPO/TRPO, deterministic for DDPG)
    critic:     value / Q network
    ppo | trpo | ddpg: the chosen algorithm's parameters (only that one may appear)
    train:      step budget, evaluation, checkpoints, progress display
    eval:       episodes for `iiwa-rl eval`

Everything is checked before any work starts: an unknown key, a wrong type, a bad value,
an unknown environment id or bad environment parameters raise `ConfigError` naming the
file and the key.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from iiwa_rl.schema import ConfigError, check, from_mapping, to_mapping


@dataclass
class EnvSection:
    id: str = "IiwaReach-v0"
    num_envs: int = 16
    # sync: in-process; async: a process per env; batched: `workers` processes stepping
    # num_envs / workers envs each (fastest on a few cores).
    vector_mode: Literal["sync", "async", "batched"] = "sync"
    workers: int | None = None  # batched mode; default: one per CPU core
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        check(self.num_envs >= 1, "num_envs must be >= 1")
        check(self.workers is None or self.workers >= 1, "workers must be >= 1")


@dataclass
class NormalizeSection:
    observations: bool = True  # running mean/std, saved with the model, baked into exports
    rewards: bool = True  # divide by the running std of the discounted return
    clip: float = 10.0  # normalised observations and scaled rewards are clipped to +-clip

    def __post_init__(self):
        check(self.clip > 0, "clip must be > 0")


@dataclass
class LogStdSection:
    mode: Literal["parameter", "state_dependent"] = "parameter"
    init: float = -0.5
    min: float = -5.0
    max: float = 1.0

    def __post_init__(self):
        check(self.min < self.max, "log_std.min must be < log_std.max")
        check(self.min < self.init < self.max, "log_std.init must lie strictly inside (min, max)")


@dataclass
class NetworkSection:
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "elu", "silu"] = "tanh"
    init: Literal["orthogonal", "default"] = "orthogonal"
    log_std: LogStdSection = field(default_factory=LogStdSection)  # Gaussian actors only

    def __post_init__(self):
        check(len(self.hidden_sizes) >= 1, "hidden_sizes needs at least one layer")
        check(all(size >= 1 for size in self.hidden_sizes), "hidden_sizes must be >= 1")


@dataclass
class PPOSection:
    rollout_steps: int = 128  # steps per environment between updates
    epochs: int = 10
    minibatch_size: int = 512
    learning_rate: float = 3e-4
    lr_schedule: Literal["constant", "linear"] = "linear"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_value: float | None = None  # clip the value update like the policy's; None: off
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: float | None = None  # stop the epochs early past this approximate KL
    normalize_advantages: bool = True

    def __post_init__(self):
        check(self.rollout_steps >= 1 and self.epochs >= 1, "rollout_steps and epochs must be >= 1")
        check(self.minibatch_size >= 1, "minibatch_size must be >= 1")
        check(self.learning_rate > 0, "learning_rate must be > 0")
        check(
            0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma in (0,1], gae_lambda in [0,1]"
        )
        check(0 < self.clip_range < 1, "clip_range must be in (0, 1)")
        check(self.max_grad_norm > 0, "max_grad_norm must be > 0")


@dataclass
class TRPOSection:
    rollout_steps: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_kl: float = 0.01  # trust-region radius delta on the mean KL
    damping: float = 0.1  # added to the Fisher matrix: F + damping * I
    cg_iterations: int = 10
    cg_tolerance: float = 1e-10
    line_search_steps: int = 10
    line_search_shrink: float = 0.5
    value_learning_rate: float = 1e-3
    value_epochs: int = 10
    value_minibatch_size: int = 512
    max_grad_norm: float = 0.5  # for the value function's regression
    normalize_advantages: bool = True

    def __post_init__(self):
        check(self.max_kl > 0 and self.damping >= 0, "max_kl > 0 and damping >= 0")
        check(self.cg_iterations >= 1 and self.line_search_steps >= 1, "iterations must be >= 1")
        check(0 < self.line_search_shrink < 1, "line_search_shrink must be in (0, 1)")
        check(self.rollout_steps >= 1, "rollout_steps must be >= 1")


@dataclass
class DDPGSection:
    buffer_size: int = 1_000_000
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005  # Polyak averaging rate of the target networks
    actor_learning_rate: float = 1e-3
    critic_learning_rate: float = 1e-3
    warmup_steps: int = 10_000  # uniform random actions before the actor acts
    update_every: int = 1  # environment steps (per env vector step) between update rounds
    updates_per_step: float = 1.0  # gradient steps per environment step (update-to-data ratio)
    noise: Literal["gaussian", "ornstein_uhlenbeck"] = "gaussian"
    noise_std: float = 0.2  # initial std of the exploration noise (action units)
    noise_final_std: float = 0.05
    noise_decay_steps: int = 500_000  # linear decay from noise_std to noise_final_std
    ou_theta: float = 0.15
    policy_delay: int = 1  # actor and targets update every this many critic updates

    def __post_init__(self):
        check(self.buffer_size >= self.batch_size >= 1, "buffer_size >= batch_size >= 1")
        check(0 < self.tau <= 1, "tau must be in (0, 1]")
        check(self.updates_per_step > 0 and self.update_every >= 1, "bad update schedule")
        check(self.noise_std >= 0 and self.noise_final_std >= 0, "noise stds must be >= 0")


@dataclass
class TrainSection:
    total_steps: int = 1_000_000  # environment steps, summed over the vector envs
    max_wall_seconds: float | None = None  # stop (and save) after this much time
    eval_every_steps: int = 100_000
    eval_episodes: int = 20
    checkpoint_every_steps: int = 50_000
    progress: Literal["auto", "bar", "quiet"] = "auto"
    torch_threads: int = 1  # more threads oversubscribe a small machine: measured 10x slower

    def __post_init__(self):
        check(self.total_steps >= 1, "total_steps must be >= 1")
        check(self.eval_every_steps >= 1 and self.checkpoint_every_steps >= 1, "intervals >= 1")
        check(self.eval_episodes >= 1, "eval_episodes must be >= 1")
        check(self.torch_threads >= 1, "torch_threads must be >= 1")


@dataclass
class EvalSection:
    episodes: int = 100
    seed: int = 10_000  # evaluation episodes use seeds disjoint from training's

    def __post_init__(self):
        check(self.episodes >= 1, "episodes must be >= 1")


@dataclass
class TrainConfig:
    algorithm: Literal["ppo", "trpo", "ddpg"] = "ppo"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    env: EnvSection = field(default_factory=EnvSection)
    normalize: NormalizeSection = field(default_factory=NormalizeSection)
    policy: NetworkSection = field(default_factory=NetworkSection)
    critic: NetworkSection = field(default_factory=NetworkSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    trpo: TRPOSection = field(default_factory=TRPOSection)
    ddpg: DDPGSection = field(default_factory=DDPGSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @property
    def algorithm_section(self):
        return getattr(self, self.algorithm)

    def to_dict(self) -> dict:
        data = to_mapping(self)
        for name in ("ppo", "trpo", "ddpg"):
            if name != self.algorithm:
                del data[name]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def parse_overrides(overrides: list[str], where: str = "--set") -> dict:
    """``["ppo.epochs=5", "env.kwargs.control_hz=25"]`` as a nested mapping; values are YAML."""
    result: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where} {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"{where} {item!r}: empty key part")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"{where} {item!r}: value is not valid YAML: {error}") from None
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {item!r}: '{part}' is set as a value and a section")
        node[parts[-1]] = value
    return result


def _merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(data: dict, source: str = "<config>") -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    algorithm = data.get("algorithm", "ppo")
    for name in ("ppo", "trpo", "ddpg"):
        if name in data and name != algorithm:
            raise ConfigError(f"{source}: section '{name}' is given but algorithm is '{algorithm}'")
    config = from_mapping(TrainConfig, data, "")
    _check_environment(config, source)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read, merge `--set` overrides into, and validate a YAML training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    try:
        return config_from_dict(data, str(path))
    except ConfigError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None


def _check_environment(config: TrainConfig, source: str) -> None:
    """Refuse an unknown id or bad environment parameters before any environment is built."""
    import gymnasium as gym

    import iiwa_rl.envs  # noqa: F401  (registers the project's ids)

    env_id = config.env.id
    if env_id not in gym.registry:
        known = sorted(name for name in gym.registry if name.startswith("Iiwa"))
        raise ConfigError(f"{source}: env.id: unknown environment '{env_id}' (ours: {known})")
    spec = gym.spec(env_id)
    entry = spec.entry_point
    if isinstance(entry, str) and entry.startswith("iiwa_rl."):
        module_name, class_name = entry.split(":")
        import importlib

        env_class = getattr(importlib.import_module(module_name), class_name)
        env_config = from_mapping(env_class.config_class, config.env.kwargs, "env.kwargs")
        reward = getattr(env_config, "reward", None)
        if reward is not None:
            # Reward terms are checked here too, not only when the first environment is built.
            from iiwa_rl.envs.rewards import RewardFunction

            RewardFunction(
                reward.terms,
                reward.sparse,
                getattr(env_class, "available_reward_terms", set()),
                "env.kwargs.reward.terms",
            )
