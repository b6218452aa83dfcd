"""PPO on a CUDA device: networks and the rollout batch live there, acting stays on CPU
copies kept in sync, and checkpoints load on a machine without a GPU. Skipped cleanly
where torch sees no CUDA device."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from iiwa_rl.algos.base import Transition
from iiwa_rl.algos.ppo import PPO
from iiwa_rl.checkpoint import build_policy, load_run
from iiwa_rl.config import NetworkSection, TrainConfig, load_config
from iiwa_rl.train import Trainer, resolve_device

DEVICE = "cuda"
REACH = Path(__file__).resolve().parents[1] / "configs" / "reach_ppo.yaml"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _device_type(module: torch.nn.Module) -> str:
    types = {p.device.type for p in module.parameters()}
    assert len(types) == 1, types
    return types.pop()


def _ppo(device: str, num_envs: int = 4) -> PPO:
    config = TrainConfig(device=device)
    config.policy = NetworkSection(hidden_sizes=[32, 32])
    config.critic = NetworkSection(hidden_sizes=[32, 32])
    config.ppo.rollout_steps = 16
    config.ppo.minibatch_size = 32
    config.ppo.epochs = 3
    return PPO(config, 6, 2, num_envs, torch.device(device), seed=0)


def _fill(algo: PPO, rng: np.random.Generator) -> None:
    n = algo.num_envs
    observations = rng.normal(size=(n, 6)).astype(np.float32)
    while not algo.ready_to_update():
        env_actions, stored, extras = algo.act(observations)
        assert env_actions.shape == stored.shape == (n, 2)
        assert isinstance(env_actions, np.ndarray) and np.all(np.abs(env_actions) <= 1.0)
        next_observations = rng.normal(size=(n, 6)).astype(np.float32)
        truncated = rng.random(n) < 0.1
        algo.observe(
            Transition(
                observations=observations,
                actions=stored,
                extras=extras,
                rewards=-np.abs(stored).sum(axis=1).astype(np.float32),
                terminated=np.zeros(n, bool),
                truncated=truncated,
                next_observations=next_observations,
                final_observations=next_observations,
            )
        )
        observations = next_observations


def test_auto_device_picks_cuda():
    assert resolve_device("auto").type == DEVICE
    assert resolve_device(DEVICE).type == DEVICE


def test_ppo_updates_on_cuda(monkeypatch):
    algo = _ppo(DEVICE)
    assert _device_type(algo.actor) == DEVICE and _device_type(algo.critic) == DEVICE
    # acting happens on CPU copies
    assert _device_type(algo.acting_actor) == "cpu" and _device_type(algo.acting_critic) == "cpu"
    assert algo.acting_actor is not algo.actor

    batches = []
    finish = algo.finish_rollout

    def spy():
        batch = finish()
        batches.append(batch)
        return batch

    monkeypatch.setattr(algo, "finish_rollout", spy)
    rng = np.random.default_rng(0)
    cpu = _ppo("cpu")
    for update in range(3):
        before = {k: v.detach().clone() for k, v in algo.actor.state_dict().items()}
        _fill(algo, rng)
        stats = algo.update(progress=update / 3)
        assert all(np.isfinite(v) for k, v in stats.items() if k != "policy_std"), stats
        changed = any(not torch.equal(before[k], v) for k, v in algo.actor.state_dict().items())
        assert changed
    assert algo.updates == 3 and len(batches) == 3
    for batch in batches:
        for tensor in (batch.observations, batch.actions, batch.log_probs, batch.advantages):
            assert tensor.device.type == DEVICE
        assert batch.size == 16 * 4
    # the CPU acting copies follow the trained networks
    for key, value in algo.actor.state_dict().items():
        torch.testing.assert_close(algo.acting_actor.state_dict()[key], value.cpu(), rtol=0, atol=0)
    observations = torch.from_numpy(rng.normal(size=(10, 6)).astype(np.float32))
    with torch.no_grad():
        on_device = algo.actor.deterministic(observations.to(DEVICE)).cpu()
        acting = algo.acting_actor.deterministic(observations)
    torch.testing.assert_close(on_device, acting, rtol=1e-4, atol=1e-5)
    # the same shapes as on the CPU
    env_actions, stored, extras = algo.act(observations.numpy())
    cpu_actions, cpu_stored, cpu_extras = cpu.act(observations.numpy())
    assert env_actions.shape == cpu_actions.shape and stored.shape == cpu_stored.shape
    assert {k: v.shape for k, v in extras.items()} == {k: v.shape for k, v in cpu_extras.items()}
    # a CUDA state dict, saved and loaded with map_location="cpu", restores a CPU algorithm
    buffer = io.BytesIO()
    torch.save(algo.state_dict(), buffer)
    buffer.seek(0)
    restored = _ppo("cpu")
    restored.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=False))
    assert restored.updates == 3
    with torch.no_grad():
        torch.testing.assert_close(restored.actor.deterministic(observations), acting)


def test_cuda_run_checkpoint_loads_on_cpu(tmp_path):
    config = load_config(
        REACH,
        [
            f"device={DEVICE}",
            "env.num_envs=2",
            "ppo.rollout_steps=32",
            "ppo.minibatch_size=32",
            "ppo.epochs=2",
            "train.total_steps=512",
            "train.eval_every_steps=512",
            "train.eval_episodes=1",
            "train.checkpoint_every_steps=256",
            "train.progress=quiet",
            "train.max_wall_seconds=null",
        ],
    )
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.device.type == DEVICE
    summary = trainer.train()
    assert summary["step"] == 512 and trainer.algorithm.updates == 8

    loaded_config, state = load_run(tmp_path / "run", "last", device="cpu")
    assert loaded_config.device == DEVICE
    assert all(t.device.type == "cpu" for t in state["algorithm"]["actor"].values())
    actor, normalizer = build_policy(loaded_config, state, device="cpu")
    assert _device_type(actor) == "cpu"
    raw = np.random.default_rng(1).normal(size=(16, trainer.observation_size))
    normalized = normalizer(raw)
    np.testing.assert_array_equal(normalized, trainer.obs_normalizer(raw))
    trained = trainer.algorithm.deterministic_actor()
    for key, value in trained.state_dict().items():
        assert torch.equal(actor.state_dict()[key], value.cpu()), key
    with torch.no_grad():
        on_cpu = actor.deterministic(torch.from_numpy(normalized))
        on_device = trained.deterministic(torch.from_numpy(normalized).to(DEVICE)).cpu()
    assert on_cpu.shape == on_device.shape == (16, trainer.action_size)
    torch.testing.assert_close(on_cpu, on_device, rtol=1e-4, atol=1e-5)
