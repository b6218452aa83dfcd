"""ONNX export of a trained policy, with its contract.

`iiwa-rl export RUN_DIR [-o policy.onnx]` writes the actor's deterministic action with
the observation normalisation and the action clipping baked into the graph (input
"observation" [batch, obs], output "action" [batch, act], dynamic batch axis). The
contract (what the deployed policy expects: observation layout, action semantics,
control period, joint limits, kinematics, environment and its parameters, config hash,
library versions) is stored as JSON in the model's metadata under "iiwa_rl_contract"
and in a `policy.json` sidecar. The contract carries `model_sha256`, the hash of the graph
and weights with the metadata excluded (iiwa_deploy.integrity), which the controller
verifies before anything moves. The export is checked against torch on at least 1,000
observations and refused (no file left behind) if they differ by more than 1e-5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import iiwa_rl
from iiwa_rl.envs.config import TRAINING_ONLY_OPTIONS
from iiwa_rl.schema import to_mapping

CONTRACT_METADATA_KEY = "iiwa_rl_contract"
PARITY_TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """The exported model does not reproduce the trained policy."""


class DeployablePolicy(nn.Module):
    """raw observation -> normalise -> clip -> actor mean -> clip to [-1, 1]."""

    def __init__(
        self, actor: nn.Module, scale: np.ndarray, offset: np.ndarray, clip: float, enabled: bool
    ):
        super().__init__()
        self.actor = actor
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.clip = float(clip)
        self.normalize = enabled

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            observation = ((observation - self.offset) * self.scale).clamp(-self.clip, self.clip)
        return self.actor.deterministic(observation).clamp(-1.0, 1.0)


def _versions() -> dict[str, str]:
    import gymnasium
    import onnx
    import pybullet

    return {
        "iiwa_rl": iiwa_rl.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "gymnasium": gymnasium.__version__,
        "pybullet": str(pybullet.getAPIVersion()),
    }


def build_contract(config, env) -> dict:
    """The contract of a policy trained with `config` on `env` (an IIWA environment)."""
    base = env.unwrapped
    contract = {"format_version": 2, "env_id": config.env.id}
    contract.update(base.describe_contract())
    contract["kinematics"] = base.robot.kinematic_chain()
    env_kwargs = to_mapping(base.config)
    # The environment a loader rebuilds from the contract (eval, view, the robustness suite)
    # is the nominal one; the randomisation and other training options it was trained under
    # are kept beside it, where set.
    for name in TRAINING_ONLY_OPTIONS:
        value = env_kwargs.pop(name, None)
        if value:
            contract[f"training_{name}"] = value
    contract["env_kwargs"] = env_kwargs
    contract["algorithm"] = config.algorithm
    contract["config_sha256"] = config.sha256()
    contract["versions"] = _versions()
    contract["observation_normalization"] = "baked into the graph"
    return contract


def _parity_observations(env, count: int, seed: int) -> np.ndarray:
    """Observations the policy will really meet: random-action rollouts of the env, the
    first episode seeded `seed`, the next ones from the generator the actions come from."""
    from iiwa_rl.rollout import Rollout

    rng = np.random.default_rng(seed)
    observations = []

    def random_action(observation) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)

    def episode_seed(episode: int) -> int:
        return seed if episode == 0 else int(rng.integers(1 << 30))

    Rollout(env, random_action, episode_seed).run(
        on_step=lambda step: observations.append(step.observation),
        stop=lambda step: len(observations) >= count,
    )
    return np.asarray(observations, dtype=np.float32)


def export_policy(
    run_dir: str | Path,
    output: str | Path | None = None,
    checkpoint: str = "best",
    parity_samples: int = 1000,
) -> tuple[Path, dict]:
    """Export a run's policy; returns (onnx path, parity report)."""
    import gymnasium as gym
    import onnx
    import onnxruntime
    from iiwa_deploy.integrity import file_sha256, model_sha256

    from iiwa_rl.checkpoint import build_policy, load_run

    config, state = load_run(run_dir, checkpoint)
    actor, normalizer = build_policy(config, state)  # a checkpoint's faults first, by file
    if not config.env.id.startswith("Iiwa"):
        raise ExportError(f"export writes IIWA policies; {config.env.id} has no robot contract")
    scale, offset = normalizer.scale_and_offset()
    module = DeployablePolicy(actor, scale, offset, normalizer.clip, normalizer.enabled).eval()

    env = gym.make(config.env.id, **config.env.kwargs)
    try:
        contract = build_contract(config, env)
        observations = _parity_observations(env, parity_samples, seed=config.eval.seed)
    finally:
        env.close()
    if observations.shape[1] != state["observation_size"]:
        raise ExportError(
            f"the environment now gives {observations.shape[1]} observations, the policy was "
            f"trained on {state['observation_size']}"
        )

    output = Path(output) if output else Path(run_dir) / "policy.onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".onnx.partial")
    example = torch.from_numpy(observations[:2])
    torch.onnx.export(
        module,
        (example,),
        str(partial),
        input_names=["observation"],
        output_names=["action"],
        dynamic_axes={"observation": {0: "batch"}, "action": {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter needs no onnxscript and gives a plain graph
    )
    model = onnx.load(str(partial))
    model.producer_name = "iiwa-rl"
    model.doc_string = (
        f"{config.algorithm} policy for {config.env.id}, trained {int(state['global_step'])} steps"
    )
    del model.metadata_props[:]
    # The hash of everything but the metadata, so it can live inside the metadata.
    contract["model_sha256"] = model_sha256(model.SerializeToString())
    entry = model.metadata_props.add()
    entry.key = CONTRACT_METADATA_KEY
    entry.value = json.dumps(contract, sort_keys=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(partial))
    if file_sha256(partial) != contract["model_sha256"]:
        partial.unlink(missing_ok=True)
        raise ExportError("the saved model does not hash to the model_sha256 in its contract")

    # Parity: the same observations through torch and through onnxruntime.
    with torch.no_grad():
        expected = module(torch.from_numpy(observations)).numpy()
    session = onnxruntime.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
    produced = session.run(["action"], {"observation": observations})[0]
    single = session.run(["action"], {"observation": observations[:1]})[0]
    difference = float(np.max(np.abs(produced - expected)))
    report = {
        "samples": int(len(observations)),
        "max_abs_difference": difference,
        "batch1_max_abs_difference": float(np.max(np.abs(single - expected[:1]))),
        "tolerance": PARITY_TOLERANCE,
    }
    if (
        not difference <= PARITY_TOLERANCE
        or not report["batch1_max_abs_difference"] <= PARITY_TOLERANCE
    ):
        partial.unlink(missing_ok=True)
        raise ExportError(
            f"ONNX output differs from torch by {difference:.3g} (> {PARITY_TOLERANCE:g}) "
            f"on {len(observations)} observations; nothing was written"
        )
    partial.replace(output)
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    return output, report


def cmd_export(args: argparse.Namespace) -> int:
    path, report = export_policy(args.run_dir, args.output, args.checkpoint, args.parity_samples)
    print(
        f"wrote {path} and {path.with_suffix('.json')}; parity on {report['samples']} observations: "
        f"max |onnx - torch| = {report['max_abs_difference']:.2e} (tolerance {report['tolerance']:g})"
    )
    return 0


def register_cli(commands) -> None:
    parser = commands.add_parser("export", help="export a run's policy to ONNX with its contract")
    parser.add_argument("run_dir")
    parser.add_argument("-o", "--output", help="default: RUN_DIR/policy.onnx")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--parity-samples", type=int, default=1000)
    parser.set_defaults(handler=cmd_export)
