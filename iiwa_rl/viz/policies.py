"""Policies to watch: whatever `iiwa-rl view` / `iiwa-rl record` is pointed at.

A source is one of
- a training CONFIG (YAML): no trained policy, so a stand-in acts: `random` (uniform
  actions), `zero` (hold still) or `scripted` (the ScriptedGrasp expert, grasp in the
  cartesian action mode only);
- a RUN_DIR: the run's checkpoint (best or last), with its observation normaliser;
- a policy.onnx (or a folder holding one): an exported policy, which takes raw
  observations (the normaliser is baked in). Its contract, JSON in the model's
  metadata_props under "iiwa_rl_contract" (a sidecar policy.json is the fallback), names
  the environment (`env_id`) and the exact kwargs it was trained with (`env_kwargs`).

Every source gives a `LoadedPolicy`: the environment to build, and `bind(env)`, which
returns an `Actor` for that environment (raw observation batch [n, obs] -> actions [n, act]).
Binding is separate from loading because the scripted expert reads the environment's
state, and because a model's sizes can only be checked against a built environment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iiwa_rl.schema import ConfigError

CONTRACT_METADATA_KEY = "iiwa_rl_contract"
POLICY_KINDS = ("auto", "random", "zero", "scripted")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "reach_ppo.yaml"
SHIPPED_REACH_POLICY = PROJECT_ROOT / "assets" / "policies" / "reach" / "policy.onnx"


class PolicyLoadError(ConfigError):
    """The source cannot be turned into a policy. A ConfigError, so the command line
    prints it as `iiwa-rl <command>: error: ...` with exit status 2."""


class Actor:
    """A policy bound to one environment. `reset()` is called at the start of every
    episode (the scripted expert keeps a phase; learned policies are stateless)."""

    def __init__(
        self, act: Callable[[np.ndarray], np.ndarray], reset: Callable[[], None] | None = None
    ):
        self._act = act
        self._reset = reset

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return self._act(observations)

    def act_one(self, observation: np.ndarray) -> np.ndarray:
        """One observation's action, as the viewer and the recordings step an env."""
        return np.asarray(self._act(observation[None])[0], dtype=np.float32)

    def reset(self) -> None:
        if self._reset is not None:
            self._reset()


@dataclass
class LoadedPolicy:
    env_id: str
    env_kwargs: dict[str, Any]
    kind: str  # "checkpoint", "onnx", "random", "zero" or "scripted"
    label: str  # for the on-screen text and log lines
    _bind: Callable[[Any], Actor] = field(repr=False)
    trained_steps: int | None = None  # a checkpoint's
    evaluation_seed: int | None = None  # a run's config eval.seed; None: the default

    def bind(self, env) -> Actor:
        return self._bind(env)


def make_env(env_id: str, env_kwargs: dict[str, Any], render_mode: str | None = None):
    """The environment a policy was made for. An IIWA environment gets its kwargs as its
    `config` mapping, not as keywords, so none of them can be taken by gym.make for itself
    (it claims `max_episode_steps`, for one, and never passes it on); any other Gymnasium
    environment (e.g. Pendulum-v1) takes them as keywords, the only way it accepts them."""
    import gymnasium as gym

    from iiwa_rl.env_ids import find_env_spec

    # render_mode only when one is asked for: some environments refuse an explicit None
    # (panda-gym: "The 'render' argument is must be in {'rgb_array', 'human'}").
    rendering = {} if render_mode is None else {"render_mode": render_mode}
    if str(find_env_spec(env_id).entry_point).startswith("iiwa_rl."):
        return gym.make(env_id, **rendering, config=dict(env_kwargs))
    return gym.make(env_id, **rendering, **env_kwargs)


# ----------------------------------------------------------------------- sources
def default_source() -> Path:
    """The shipped reach policy when it exists, else the reach config (random actions)."""
    return SHIPPED_REACH_POLICY if SHIPPED_REACH_POLICY.is_file() else DEFAULT_CONFIG


def source_kind(source: Path) -> str:
    """'run', 'onnx' or 'config' for a path on disk."""
    if source.is_dir():
        # A run directory has checkpoints; a shipped policy folder (assets/policies/*) has
        # the config that made it too, but only the exported model.
        if (source / "checkpoints").is_dir() and (source / "config.yaml").is_file():
            return "run"
        if (source / "policy.onnx").is_file():
            return "onnx"
        raise PolicyLoadError(
            f"{source}: neither a run directory (config.yaml, checkpoints/) nor a policy "
            "folder (policy.onnx)"
        )
    if not source.exists():
        raise PolicyLoadError(f"{source}: no such file or directory")
    if source.suffix == ".onnx":
        return "onnx"
    if source.suffix in (".yaml", ".yml"):
        return "config"
    raise PolicyLoadError(f"{source}: expected a config (.yaml), a run directory or a policy.onnx")


def load_policy(
    source: str | Path | None,
    policy: str = "auto",
    checkpoint: str = "best",
    seed: int = 0,
) -> LoadedPolicy:
    """Load `source` (None: `default_source()`). `policy` other than 'auto' replaces the
    trained policy with a stand-in (random, zero or scripted) on the same environment."""
    if policy not in POLICY_KINDS:
        raise PolicyLoadError(f"--policy must be one of {', '.join(POLICY_KINDS)}, got {policy!r}")
    path = default_source() if source is None else Path(source)
    kind = source_kind(path)
    if kind == "config":
        loaded = _from_config(path)
    elif kind == "run":
        loaded = _from_run(path, checkpoint)
    else:
        loaded = _from_onnx(path / "policy.onnx" if path.is_dir() else path)
    if policy == "auto":
        if kind != "config":
            return loaded
        # A config has no trained policy: the expert where one exists, else random.
        policy = "scripted" if _scripted_applies(loaded.env_id, loaded.env_kwargs) else "random"
    return _stand_in(loaded.env_id, loaded.env_kwargs, policy, seed, path)


def _from_config(path: Path) -> LoadedPolicy:
    from iiwa_rl.config import load_config

    config = load_config(path)
    return LoadedPolicy(config.env.id, dict(config.env.kwargs), "config", path.name, _no_actor)


def _no_actor(env) -> Actor:
    raise PolicyLoadError("a config has no trained policy")


def _from_run(run_dir: Path, checkpoint: str) -> LoadedPolicy:
    from iiwa_rl.checkpoint import build_policy, load_run
    from iiwa_rl.evaluation import deterministic_policy

    config, state = load_run(run_dir, checkpoint)
    actor, normalizer = build_policy(config, state)
    observation_size = int(state["observation_size"])
    steps = int(state.get("global_step", 0))

    act = deterministic_policy(actor, normalizer)

    def bind(env) -> Actor:
        if env is not None:
            _check_sizes(env, observation_size, int(state["action_size"]), str(run_dir))
        return Actor(act)

    label = f"{run_dir.name} ({checkpoint}, {steps:,} steps)"
    return LoadedPolicy(
        config.env.id,
        dict(config.env.kwargs),
        "checkpoint",
        label,
        bind,
        trained_steps=steps,
        evaluation_seed=config.eval.seed,
    )


def read_contract(model_path: Path) -> dict[str, Any]:
    """The contract JSON of an exported model: the model's own metadata first (it cannot
    drift from the weights), then the sidecar policy.json."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and friends for a bad file
        raise PolicyLoadError(f"{model_path}: not a readable ONNX model: {error}") from None
    text = next((p.value for p in model.metadata_props if p.key == CONTRACT_METADATA_KEY), None)
    where = f"{model_path} metadata '{CONTRACT_METADATA_KEY}'"
    if text is None:
        sidecar = model_path.with_name("policy.json")
        if not sidecar.is_file():
            raise PolicyLoadError(
                f"{model_path}: no contract (no '{CONTRACT_METADATA_KEY}' metadata, no policy.json beside it)"
            )
        text, where = sidecar.read_text(), str(sidecar)
    try:
        contract = json.loads(text)
    except json.JSONDecodeError as error:
        raise PolicyLoadError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(contract, dict):
        raise PolicyLoadError(f"{where}: the contract must be a JSON object")
    for key, expected in (("env_id", str), ("env_kwargs", dict)):
        if not isinstance(contract.get(key), expected):
            raise PolicyLoadError(
                f"{where}: contract.{key} is missing or not a {expected.__name__}"
            )
    return contract


def _from_onnx(model_path: Path) -> LoadedPolicy:
    import onnxruntime as ort

    contract = read_contract(model_path)
    options = ort.SessionOptions()
    # A viewer or recorder beside other work: one thread is plenty for a small MLP.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several unrelated types
        raise PolicyLoadError(f"{model_path}: ONNX Runtime cannot load it: {error}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise PolicyLoadError(
            f"{model_path}: expected one input and an output, got {len(inputs)} inputs"
        )
    # The exporter names them "observation" and "action"; take those when present.
    input_name = inputs[0].name
    output_name = next((o.name for o in outputs if o.name == "action"), outputs[0].name)
    batch_dim = inputs[0].shape[0] if inputs[0].shape else None
    fixed_batch = batch_dim if isinstance(batch_dim, int) else None
    observation_size = inputs[0].shape[-1] if inputs[0].shape else None

    def act(observations: np.ndarray) -> np.ndarray:
        batch = np.asarray(observations, dtype=np.float32)
        if fixed_batch is None or fixed_batch == batch.shape[0]:
            return session.run([output_name], {input_name: batch})[0]
        # A model exported with a fixed batch of one: run the rows one by one.
        return np.concatenate(
            [session.run([output_name], {input_name: row[None]})[0] for row in batch]
        )

    def bind(env) -> Actor:
        if env is not None:
            action_size = (contract.get("action") or {}).get("size")
            _check_sizes(
                env,
                observation_size if isinstance(observation_size, int) else None,
                action_size if isinstance(action_size, int) else None,
                str(model_path),
            )
        return Actor(act)

    label = str(model_path.parent.name + "/" + model_path.name)
    return LoadedPolicy(contract["env_id"], dict(contract["env_kwargs"]), "onnx", label, bind)


def _check_sizes(env, observation_size: int | None, action_size: int | None, where: str) -> None:
    """Refuse a policy whose sizes differ from the environment it would drive (a Dict
    observation counts its flattened size, as the trainer flattens it)."""
    from gymnasium.spaces import flatdim

    env_obs = flatdim(env.observation_space)
    env_act = flatdim(env.action_space)
    if observation_size is not None and observation_size != env_obs:
        raise PolicyLoadError(
            f"{where}: takes {observation_size} observations, the environment gives {env_obs}"
        )
    if action_size is not None and action_size != env_act:
        raise PolicyLoadError(
            f"{where}: gives {action_size} actions, the environment takes {env_act}"
        )


def _scripted_applies(env_id: str, env_kwargs: dict) -> bool:
    from iiwa_rl.envs.config import GraspConfig

    mode = env_kwargs.get("action_mode", GraspConfig.action_mode)
    return env_id == "IiwaGrasp-v0" and mode == "cartesian"


def _stand_in(env_id: str, env_kwargs: dict, policy: str, seed: int, source: Path) -> LoadedPolicy:
    if policy == "scripted" and not _scripted_applies(env_id, env_kwargs):
        raise PolicyLoadError(
            f"{source}: --policy scripted drives IiwaGrasp-v0 in the cartesian action mode only "
            f"(this is {env_id}, action_mode {env_kwargs.get('action_mode', 'default')})"
        )

    def bind(env) -> Actor:
        if policy == "scripted":
            from iiwa_rl.envs.scripted import ScriptedGrasp

            expert = ScriptedGrasp(env)
            return Actor(lambda observations: expert()[None], expert.reset)
        if env is None:
            raise PolicyLoadError(
                f"the {policy} policy needs the environment's action space: use bind(env)"
            )
        size = int(np.prod(env.action_space.shape))
        if policy == "zero":
            return Actor(lambda observations: np.zeros((len(observations), size), np.float32))
        rng = np.random.default_rng(seed)  # seeded: a recording is repeatable
        low, high = env.action_space.low, env.action_space.high
        return Actor(
            lambda observations: rng.uniform(low, high, (len(observations), size)).astype(
                np.float32
            )
        )

    return LoadedPolicy(env_id, dict(env_kwargs), policy, f"{policy} policy", bind)
