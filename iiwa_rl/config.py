"""The training configuration: schema, loading, `--set` overrides and validation.

A YAML file has these sections (see configs/*.yaml for complete examples):

    algorithm: ppo | trpo | ddpg
    seed: 0
    device: auto | cpu | cuda
    env:        id, num_envs, vector_mode, workers (vector_mode: batched, rollout_workers),
                main_process_share (batched), ray (vector_mode: ray), kwargs (the
                environment's own parameters)
    normalize:  observations, rewards, clip
    policy:     actor network (Gaussian for PPO/TRPO, deterministic for DDPG)
    critic:     value / Q network
    ppo | trpo | ddpg: the chosen algorithm's parameters (only that one may appear)
    train:      step budget, evaluation, checkpoints, progress display
    eval:       episodes for `iiwa-rl eval`

Everything is checked before any work starts: an unknown key, a wrong type, a number
that is not finite or outside the range its field declares (schema.Range), an unknown
environment id (see env_ids.py for `module:EnvId`) or bad environment parameters raise
`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml

from iiwa_rl.schema import (
    ConfigError,
    Discount,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    UnitInterval,
    check,
    from_mapping,
    to_mapping,
)

OpenUnitInterval = Annotated[float, Range(gt=0, lt=1)]


class _ConfigLoader(yaml.SafeLoader):
    """YAML 1.1's safe loader, except that `1e-3` is a number: PyYAML reads a float
    without a dot as a string, and `learning_rate: 1e-3` would be refused as text."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """A config's YAML text as plain data (see `_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)


_RAY_ADDRESS = re.compile(r"^(auto|local|[A-Za-z0-9_.\-]+:[0-9]{1,5})$")


@dataclass
class RaySection:
    """`vector_mode: ray`: `workers` Ray actors, each stepping `envs_per_worker` of the
    `num_envs` environments with a CPU copy of the acting networks (iiwa_rl/ray_rollouts.py)."""

    # local: start a Ray instance for this run; auto: join the cluster `ray start` made on
    # this machine; HOST:PORT: the head node of a cluster.
    address: str = "local"
    workers: PositiveInt = 2
    envs_per_worker: PositiveInt | None = None  # default num_envs / workers; must multiply to it
    cpus_per_worker: PositiveFloat = 1.0
    # Custom Ray resources each worker needs, e.g. {rollout: 1} to place one per node whose
    # `ray start --resources` offers one.
    resources: dict[str, PositiveFloat] = field(default_factory=dict)
    max_restarts: NonNegativeInt = 3  # per worker: Ray restarts a killed actor this often
    # Vector steps one collection brings back. PPO/TRPO: a whole rollout (their
    # rollout_steps, the only value allowed); DDPG: default 32.
    steps_per_collect: PositiveInt | None = None

    def __post_init__(self):
        check(
            bool(_RAY_ADDRESS.match(self.address)),
            f"address must be auto, local or HOST:PORT, got {self.address!r}",
        )


@dataclass
class EnvSection:
    id: str = "IiwaReach-v0"
    num_envs: PositiveInt = 16
    # sync: in-process; async: a process per env; batched: `workers` processes stepping
    # num_envs / workers envs each, the policy acting in the main process every step;
    # rollout_workers: `workers` processes that each act and step num_envs / workers envs
    # for a whole rollout (PPO and TRPO; ray mode's semantics without Ray); ray: `ray.workers`
    # Ray actors doing the same with `ray.envs_per_worker` envs each, on one machine or a
    # cluster.
    vector_mode: Literal["sync", "async", "batched", "rollout_workers", "ray"] = "sync"
    # batched and rollout_workers modes: processes, the main one included; default: one
    # per CPU core
    workers: PositiveInt | None = None
    # batched mode: the main process's share of the envs, relative to an even share (the
    # rest spread evenly over the subprocesses). The main process also acts, so a smaller
    # share keeps the subprocesses from waiting on the policy; no layout changes a number.
    main_process_share: Annotated[float, Range(ge=0.0, le=1.0)] = 1.0
    # batched mode: seconds a process polls for the other side's message before it blocks
    # and hands its core back; null: the vector env's default (envs/vector.py
    # HANDOVER_SPIN_S, where the why is); 0 blocks at once, for cores that other work needs.
    handover_spin_s: Annotated[float, Range(ge=0.0, le=1.0)] | None = None
    ray: RaySection = field(default_factory=RaySection)
    kwargs: dict = field(default_factory=dict)

    @property
    def worker_processes(self) -> int:
        """The processes of batched and rollout_workers modes, the main one included."""
        return self.workers or os.cpu_count() or 1

    def __post_init__(self):
        if self.vector_mode == "rollout_workers":
            workers = self.worker_processes
            check(
                self.num_envs % workers == 0,
                f"rollout_workers mode: num_envs ({self.num_envs}) must be a multiple of "
                f"workers ({workers}{'' if self.workers else ', the CPU cores'})",
            )
        if self.vector_mode != "ray":
            return
        ray = self.ray
        check(
            self.num_envs % ray.workers == 0,
            f"ray mode: num_envs ({self.num_envs}) must be a multiple of ray.workers ({ray.workers})",
        )
        check(
            ray.envs_per_worker is None or ray.envs_per_worker * ray.workers == self.num_envs,
            f"ray mode: ray.workers x ray.envs_per_worker ({ray.workers} x "
            f"{ray.envs_per_worker}) must equal num_envs ({self.num_envs})",
        )


@dataclass
class NormalizeSection:
    observations: bool = True  # running mean/std, saved with the model, baked into exports
    rewards: bool = True  # divide by the running std of the discounted return
    clip: PositiveFloat = 10.0  # normalised observations and scaled rewards are clipped to +-clip


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
    hidden_sizes: list[PositiveInt] = field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "elu", "silu"] = "tanh"
    init: Literal["orthogonal", "default"] = "orthogonal"
    log_std: LogStdSection = field(default_factory=LogStdSection)  # Gaussian actors only

    def __post_init__(self):
        check(len(self.hidden_sizes) >= 1, "hidden_sizes needs at least one layer")


@dataclass
class PPOSection:
    rollout_steps: PositiveInt = 128  # steps per environment between updates
    epochs: PositiveInt = 10
    minibatch_size: PositiveInt = 512
    learning_rate: PositiveFloat = 3e-4
    lr_schedule: Literal["constant", "linear"] = "linear"
    gamma: Discount = 0.99
    gae_lambda: UnitInterval = 0.95
    clip_range: OpenUnitInterval = 0.2
    clip_value: PositiveFloat | None = None  # clip the value update like the policy's; None: off
    value_coef: NonNegativeFloat = 0.5
    entropy_coef: NonNegativeFloat = 0.0  # a negative one would reward collapsing the std
    max_grad_norm: PositiveFloat = 0.5
    target_kl: PositiveFloat | None = None  # stop the epochs early past this approximate KL
    normalize_advantages: bool = True


@dataclass
class TRPOSection:
    rollout_steps: PositiveInt = 128
    gamma: Discount = 0.99
    gae_lambda: UnitInterval = 0.95
    max_kl: PositiveFloat = 0.01  # trust-region radius delta on the mean KL
    damping: NonNegativeFloat = 0.1  # added to the Fisher matrix: F + damping * I
    cg_iterations: PositiveInt = 10
    cg_tolerance: NonNegativeFloat = 1e-10  # 0: always run all cg_iterations
    line_search_steps: PositiveInt = 10
    line_search_shrink: OpenUnitInterval = 0.5
    value_learning_rate: PositiveFloat = 1e-3
    value_epochs: PositiveInt = 10
    value_minibatch_size: PositiveInt = 512
    max_grad_norm: PositiveFloat = 0.5  # for the value function's regression
    normalize_advantages: bool = True


@dataclass
class DDPGSection:
    buffer_size: PositiveInt = 1_000_000
    batch_size: PositiveInt = 256
    gamma: Discount = 0.99
    tau: Annotated[float, Range(gt=0, le=1)] = 0.005  # Polyak rate of the target networks
    actor_learning_rate: PositiveFloat = 1e-3
    critic_learning_rate: PositiveFloat = 1e-3
    # Uniform random actions for this many environment steps before the actor acts. They
    # fill the replay but earn no gradient steps (SB3's `learning_starts`): counted, they
    # would all be run in one burst on random data when the warm-up ends.
    warmup_steps: NonNegativeInt = 10_000
    update_every: PositiveInt = 1  # vector steps between update rounds
    # Gradient steps per environment step after the warm-up (the update-to-data ratio).
    updates_per_step: PositiveFloat = 1.0
    noise: Literal["gaussian", "ornstein_uhlenbeck"] = "gaussian"
    noise_std: NonNegativeFloat = 0.2  # initial std of the exploration noise (action units)
    noise_final_std: NonNegativeFloat = 0.05
    noise_decay_steps: PositiveInt = 500_000  # linear decay from noise_std to noise_final_std
    # Ornstein-Uhlenbeck mean reversion per step: 0 would never revert, above 1 overshoots.
    ou_theta: Annotated[float, Range(gt=0, le=1)] = 0.15
    policy_delay: PositiveInt = 1  # actor and targets update every this many critic updates
    # Environment steps between metrics rows. An update round runs every `update_every`
    # vector steps, far too often for a row each; a row averages the rounds since the
    # last one. 0: a row per update round.
    log_every_steps: NonNegativeInt = 1000

    def __post_init__(self):
        check(self.buffer_size >= self.batch_size, "buffer_size must be >= batch_size")


@dataclass
class TrainSection:
    total_steps: PositiveInt = 1_000_000  # environment steps, summed over the vector envs
    max_wall_seconds: PositiveFloat | None = None  # stop (and save) after this much time
    eval_every_steps: PositiveInt = 100_000
    eval_episodes: PositiveInt = 20
    # The scheduled evaluations in a subprocess at the lowest CPU priority, which runs in
    # the cores' idle moments while training goes on (evaluation.BackgroundEvaluation);
    # each result is logged (and the best checkpoint saved) when it arrives, with its own
    # step's wall time and state. The run waits for them all before it ends; a last step
    # that no scheduled evaluation covered is evaluated in the loop's own process.
    eval_in_background: bool = False
    checkpoint_every_steps: PositiveInt = 50_000
    progress: Literal["auto", "bar", "quiet"] = "auto"
    torch_threads: PositiveInt = (
        1  # more threads oversubscribe a small machine: measured 10x slower
    )
    # Torch threads for the algorithm's update alone (None: torch_threads). While it runs
    # the env workers wait for the next actions, so their cores are free: the grasp's
    # PPO update (1,024-sample minibatches through 2 x 256 networks) runs 1.5 to 1.8x
    # faster on two threads, the reach's (128-sample ones through 2 x 128) slower
    # (benchmarks/RESULTS.md, "Training speed, fourth part").
    update_threads: PositiveInt | None = None
    # The update with denormal floats (|x| < 1.2e-38) flushed to zero (x86 FTZ/DAZ,
    # torch.set_flush_denormal). Where a weight's gradient is zero (a dead ReLU's), Adam's
    # first moment decays by beta1 a step into that range, where the CPU computes on it
    # several times slower: DDPG at SB3's sizes spent 810 instead of 118 us in each Adam
    # step (benchmarks/RESULTS.md, "Denormals in the update"). Set on every update thread
    # (iiwa_rl/denormals.py); a torch whose threads it cannot reach is refused at start.
    flush_denormals: bool = True


@dataclass
class EvalSection:
    episodes: PositiveInt = 100
    seed: Seed = 10_000  # evaluation episodes use seeds disjoint from training's


@dataclass
class TrainConfig:
    algorithm: Literal["ppo", "trpo", "ddpg"] = "ppo"
    seed: Seed = 0
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
        if self.env.vector_mode != "ray":
            del data["env"]["ray"]  # only ray mode reads it; other runs' configs stay as they were
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
            value = parse_yaml(raw)
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
    _check_worker_collection(config, source)
    return config


def _check_worker_collection(config: TrainConfig, source: str) -> None:
    """PPO and TRPO learn from rollouts of the policy being updated: a worker collection must
    bring back exactly one rollout, so that no step was acted by older weights. DDPG learns
    after every vector step: only Ray, where a remote call per step is out of the question,
    collects its steps a few at a time with the weights of the collection's start."""
    mode = config.env.vector_mode
    if mode == "rollout_workers" and config.algorithm == "ddpg":
        raise ConfigError(
            f"{source}: env.vector_mode: rollout_workers collects whole rollouts, for ppo and "
            "trpo; ddpg updates after every vector step: use batched (or ray, which collects "
            "env.ray.steps_per_collect steps at a time)"
        )
    if mode != "ray" or config.algorithm == "ddpg":
        return
    rollout = config.algorithm_section.rollout_steps
    asked = config.env.ray.steps_per_collect
    if asked is not None and asked != rollout:
        raise ConfigError(
            f"{source}: env.ray.steps_per_collect: {config.algorithm} collects whole rollouts "
            f"({config.algorithm}.rollout_steps = {rollout}); leave it unset, got {asked}"
        )


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read, merge `--set` overrides into, and validate a YAML training config."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); a config is YAML text"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None
    try:
        data = parse_yaml(text) or {}
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
    from iiwa_rl.env_ids import find_env_spec

    try:
        spec = find_env_spec(config.env.id)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    entry = spec.entry_point
    if isinstance(entry, str) and entry.startswith("iiwa_rl."):
        module_name, class_name = entry.split(":")
        import importlib

        env_class = getattr(importlib.import_module(module_name), class_name)
        env_config = from_mapping(env_class.config_class, config.env.kwargs, "env.kwargs")
        randomization = getattr(env_config, "randomization", None)
        if randomization:
            # Term names and ranges are checked here too, before any environment is built.
            from iiwa_rl.envs.randomization import Randomizer

            Randomizer(randomization, getattr(env_class, "with_gripper", False))
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
