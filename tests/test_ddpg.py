"""DDPG: Polyak averaging, the flat Adam, the replay ring, time-limit handling, exploration
schedules, and a short learning run on Pendulum-v1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from iiwa_rl.algos.base import Transition
from iiwa_rl.algos.ddpg import (
    DDPG,
    ExplorationNoise,
    FlatAdam,
    flatten_parameters_,
    linear_schedule,
    polyak_update,
)
from iiwa_rl.buffers import ReplayBuffer
from iiwa_rl.config import NetworkSection, config_from_dict
from iiwa_rl.nn import DeterministicActor, ExplicitBackprop, QCritic

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_polyak_update_modules_and_flat_vectors():
    torch.manual_seed(0)
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [
        0.9 * t.detach() + 0.1 * s.detach()
        for t, s in zip(target.parameters(), source.parameters())
    ]
    polyak_update(target, source, 0.1)
    for got, want in zip(target.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-7)
    # tau = 1 copies; the source is never touched.
    source_before = [p.detach().clone() for p in source.parameters()]
    polyak_update(target, source, 1.0)
    for t, s, s0 in zip(target.parameters(), source.parameters(), source_before):
        assert torch.equal(t, s) and torch.equal(s, s0)

    flat_target, flat_source = torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0])
    polyak_update(flat_target, flat_source, 0.25)
    assert torch.allclose(flat_target, torch.tensor([0.25, 0.5, 0.75, 1.0]))
    with pytest.raises(ValueError):
        polyak_update(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)), 0.1)


def test_flattened_parameters_are_views_and_flat_adam_matches_torch_adam():
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference.load_state_dict(ours.state_dict())
    flat = flatten_parameters_(ours)
    assert flat.numel() >= sum(p.numel() for p in ours.parameters())
    assert all(p.storage_offset() % 16 == 0 for p in ours.parameters())  # aligned starts
    with torch.no_grad():
        flat[0] += 1.0
    assert ours[0].weight[0, 0] == reference[0].weight[0, 0] + 1.0  # a view, not a copy
    with torch.no_grad():
        flat[0] -= 1.0

    optimizer = FlatAdam(flat, lr=1e-2)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    params = list(ours.parameters())
    for step in range(20):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(step))
        loss = ours(x).pow(2).mean()
        flat_gradient = torch.zeros_like(flat)  # laid out as the parameters are in `flat`
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            flat_gradient[p.storage_offset() : p.storage_offset() + p.numel()] = g.reshape(-1)
        optimizer.step(flat_gradient)
        reference_optimizer.zero_grad()
        reference(x).pow(2).mean().backward()
        reference_optimizer.step()
    for got, want in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu", "silu"])
def test_explicit_backprop_gives_autograds_gradients(activation):
    """DDPG's update runs the networks through ExplicitBackprop: its outputs, weight
    gradients and action gradient must be autograd's, for every activation."""
    torch.manual_seed(0)
    spec = NetworkSection(hidden_sizes=[16, 8], activation=activation)
    actor, critic = DeterministicActor(5, 3, spec), QCritic(5, 3, spec)
    actor_gradient = torch.zeros_like(flatten_parameters_(actor))
    critic_gradient = torch.zeros_like(flatten_parameters_(critic))
    actor_pass = ExplicitBackprop(actor, activation, actor_gradient)
    critic_pass = ExplicitBackprop(critic, activation, critic_gradient)
    observations, actions, target = torch.randn(32, 5), torch.rand(32, 3) * 2 - 1, torch.randn(32)

    critic_loss = (critic(observations, actions) - target).pow(2).mean()
    expected = torch.autograd.grad(critic_loss, list(critic.parameters()))
    q = critic_pass.forward(observations, actions)[0].squeeze(-1)
    assert torch.allclose(q, critic(observations, actions).detach(), atol=1e-6)
    assert not q.requires_grad
    critic_pass.backward([((q - target) * (2.0 / 32)).unsqueeze(-1)])
    for parameter, want in zip(critic.parameters(), expected):
        assert torch.allclose(critic_pass.gradient_of(parameter), want, atol=1e-6, rtol=1e-5)

    mu = actor(observations)
    actor_loss = -critic(observations, mu).mean()
    expected_actor = torch.autograd.grad(actor_loss, list(actor.parameters()), retain_graph=True)
    expected_grad_mu = torch.autograd.grad(actor_loss, mu)[0]
    critic_before = critic_gradient.clone()
    explicit_mu = torch.tanh(actor_pass.forward(observations)[0])
    assert torch.allclose(explicit_mu, mu.detach(), atol=1e-6)
    q_of_mu = critic_pass.forward(observations, explicit_mu)[0]
    grad_mu = critic_pass.backward(
        [torch.full_like(q_of_mu, -1.0 / 32)], weights=False, input_columns=slice(5, 8)
    )
    assert torch.allclose(grad_mu, expected_grad_mu, atol=1e-7, rtol=1e-5)
    assert torch.equal(critic_gradient, critic_before)  # weights=False writes nothing
    actor_pass.backward([torch.ops.aten.tanh_backward(grad_mu, explicit_mu)])
    for parameter, want in zip(actor.parameters(), expected_actor):
        assert torch.allclose(actor_pass.gradient_of(parameter), want, atol=1e-7, rtol=1e-5)
    assert actor_gradient.abs().sum() > 0

    # The detached weights follow in-place updates of the parameters.
    with torch.no_grad():
        for parameter in critic.parameters():
            parameter.add_(0.1)
    assert torch.allclose(
        critic_pass.forward(observations, actions)[0].squeeze(-1),
        critic(observations, actions).detach(),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="without a gradient vector"):
        ExplicitBackprop(critic, activation, None).backward([q.unsqueeze(-1)])


def test_replay_buffer_wraps_around_and_samples_only_stored_rows():
    buffer = ReplayBuffer(5, 2, 1, torch.device("cpu"), torch.Generator().manual_seed(0))

    def rows(start: int, count: int):
        ids = np.arange(start, start + count, dtype=np.float32)
        return (
            np.stack([ids, ids], 1),
            ids[:, None],
            ids,
            np.stack([ids + 100, ids + 100], 1),
            np.zeros(count),
        )

    buffer.add(*rows(0, 3))
    assert (buffer.size, buffer.position) == (3, 3)
    sample = buffer.sample(200)
    assert set(sample["rewards"].tolist()) <= {0.0, 1.0, 2.0}
    buffer.add(*rows(3, 4))  # 3, 4 fill the end; 5, 6 overwrite slots 0 and 1
    assert (buffer.size, buffer.position) == (5, 2)
    assert buffer.rewards.tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    sample = buffer.sample(500)
    assert sample["observations"].shape == (500, 2) and sample["actions"].shape == (500, 1)
    assert set(sample["rewards"].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    # Each sampled row is one stored transition, its fields together.
    assert torch.equal(sample["observations"][:, 0], sample["rewards"])
    assert torch.equal(sample["next_observations"][:, 1], sample["rewards"] + 100)


def _ddpg(**ddpg) -> DDPG:
    config = config_from_dict(
        {
            "algorithm": "ddpg",
            "env": {"id": "Pendulum-v1", "num_envs": 2},
            "policy": {"hidden_sizes": [8]},
            "critic": {"hidden_sizes": [8]},
            # log_every_steps 0: every update round returns its metrics
            "ddpg": {
                "buffer_size": 1000,
                "batch_size": 4,
                "warmup_steps": 0,
                "log_every_steps": 0,
                **ddpg,
            },
        }
    )
    return DDPG(config, 3, 1, 2, torch.device("cpu"), seed=0)


def test_truncation_stores_the_final_observation_and_no_termination():
    algorithm = _ddpg()
    observations = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    next_observations = np.array([[9.0, 9.0, 9.0], [8.0, 8.0, 8.0]], np.float32)  # resets
    final_observations = np.array([[0.5, 0.5, 0.5], [1.5, 1.5, 1.5]], np.float32)
    algorithm.observe(
        Transition(
            observations=observations,
            actions=np.array([[0.1], [-0.1]], np.float32),
            extras={},
            rewards=np.array([1.0, 2.0], np.float32),
            terminated=np.array([False, True]),
            truncated=np.array([True, False]),
            next_observations=next_observations,
            final_observations=final_observations,
        )
    )
    replay = algorithm.replay
    assert replay.terminated[:2].tolist() == [0.0, 1.0]
    assert torch.equal(replay.next_observations[:2], torch.from_numpy(final_observations))
    assert torch.equal(replay.observations[:2], torch.from_numpy(observations))


def test_bootstrap_target_uses_terminated_only():
    # A truncated transition's target includes gamma * Q'(s', mu'(s')); a terminated one's not.
    algorithm = _ddpg(gamma=0.5, batch_size=1, tau=1e-9)
    with torch.no_grad():
        for p in algorithm.target_critic.parameters():
            p.zero_()
        algorithm.target_critic.head.bias.fill_(10.0)  # Q' == 10 everywhere
    for terminated, expected_target in ((False, 1.0 + 0.5 * 10.0), (True, 1.0)):
        replay = ReplayBuffer(4, 3, 1, torch.device("cpu"))
        replay.add(
            np.zeros((1, 3)),
            np.zeros((1, 1)),
            np.ones(1),
            np.ones((1, 3)),
            np.array([terminated], dtype=np.float32),
        )
        algorithm.replay = replay
        with torch.no_grad():
            q = float(algorithm.critic(torch.zeros(1, 3), torch.zeros(1, 1)))
        algorithm.owed_updates = 1.0
        metrics = algorithm.update(0.0)
        assert metrics["critic_loss"] == pytest.approx((q - expected_target) ** 2, rel=1e-5)


def test_warmup_then_noisy_actor_and_update_to_data_ratio():
    algorithm = _ddpg(
        warmup_steps=4,
        updates_per_step=0.5,
        update_every=2,
        batch_size=2,
        noise_std=0.3,
        noise_final_std=0.1,
        noise_decay_steps=100,
    )
    obs = np.zeros((2, 3), np.float32)
    rounds = []
    for _ in range(6):
        env_action, stored, _ = algorithm.act(obs)
        assert np.all(np.abs(env_action) <= 1.0) and np.array_equal(env_action, stored)
        no = np.zeros(2, dtype=bool)
        algorithm.observe(Transition(obs, stored, {}, np.zeros(2, np.float32), no, no, obs, obs))
        if algorithm.ready_to_update():
            rounds.append(algorithm.update(0.0)["gradient_steps"])
    # Ready every 2nd vector step once the actor has acted; 0.5 updates per transition the
    # actor acted in: the 4 warm-up transitions (random actions) earn none.
    assert rounds == [2.0, 4.0]
    assert algorithm.gradient_steps == 0.5 * (6 * 2 - 4)
    assert algorithm.noise_std() == pytest.approx(0.3 - 0.2 * 12 / 100)
    deterministic, _, _ = algorithm.act(obs, deterministic=True)
    with torch.no_grad():
        assert np.allclose(deterministic, algorithm.actor(torch.from_numpy(obs)).numpy())


def test_warmup_owes_no_burst_of_gradient_steps():
    """The first round after a long warm-up runs what one round's data earns, not one
    gradient step per warm-up transition (issue 20: 10,000 at once with rl-zoo3's
    Pendulum settings)."""
    algorithm = _ddpg(warmup_steps=100, updates_per_step=1.0, batch_size=2)
    obs = np.zeros((2, 3), np.float32)
    no = np.zeros(2, dtype=bool)
    rounds = []
    for _ in range(60):  # 120 transitions: 100 of warm-up, 20 from the actor
        _, stored, _ = algorithm.act(obs)
        algorithm.observe(Transition(obs, stored, {}, np.zeros(2, np.float32), no, no, obs, obs))
        if algorithm.ready_to_update():
            rounds.append(algorithm.update(0.0)["gradient_steps"])
    assert rounds[0] == 2.0  # one vector step of 2 transitions
    assert algorithm.gradient_steps == 20 == len(rounds) * 2


def test_metrics_are_reported_per_interval_averaged_over_rounds():
    algorithm = _ddpg(batch_size=2, log_every_steps=8)
    obs = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    no = np.zeros(2, dtype=bool)
    reports = []
    for _ in range(12):  # 24 transitions, a round (2 gradient steps) per vector step
        _, stored, _ = algorithm.act(obs)
        rewards = np.ones(2, np.float32)
        algorithm.observe(Transition(obs, stored, {}, rewards, no, no, obs, obs))
        if algorithm.ready_to_update():
            reports.append(algorithm.update(0.0))
    reported = [r for r in reports if r is not None]
    assert len(reports) == 12
    # The first round reports, then one round in every 8 environment steps (4 rounds).
    assert [i for i, r in enumerate(reports) if r is not None] == [0, 4, 8]
    assert [r["gradient_steps"] for r in reported] == [2.0, 10.0, 18.0]
    for report in reported:
        assert np.isfinite(report["critic_loss"]) and np.isfinite(report["actor_loss"])


def test_schedule_and_ornstein_uhlenbeck_noise():
    assert linear_schedule(1.0, 0.0, 10, 0) == 1.0
    assert linear_schedule(1.0, 0.0, 10, 5) == 0.5
    assert linear_schedule(1.0, 0.0, 10, 50) == 0.0
    noise = ExplorationNoise("ornstein_uhlenbeck", 2, 1, theta=0.15, rng=np.random.default_rng(0))
    samples = np.array([noise.sample(0.2) for _ in range(20000)])
    assert samples[1000:].std() == pytest.approx(0.2, rel=0.1)  # stationary std is noise_std
    lag1 = np.corrcoef(samples[1000:-1, 0, 0], samples[1001:, 0, 0])[0, 1]
    assert lag1 == pytest.approx(0.85, abs=0.03)  # temporally correlated, 1 - theta
    noise.reset(np.array([True, False]))
    assert noise.state[0, 0] == 0.0 and noise.state[1, 0] != 0.0


def test_ddpg_learns_pendulum(tmp_path):
    from iiwa_rl.train import Trainer

    data = yaml.safe_load((CONFIGS / "pendulum_ddpg.yaml").read_text())
    data["device"] = "cpu"
    data["train"].update(total_steps=6000, eval_every_steps=1_000_000, eval_episodes=10)
    trainer = Trainer(config_from_dict(data), tmp_path / "run")
    before = trainer.evaluate(10, seed=123)
    after = trainer.train()
    # Measured at seed 0: -1382 before, -183 after 6000 steps (a swing-up scores about -150).
    assert before["mean_return"] < -900, before
    assert after["mean_return"] > -600, after


def test_checkpoint_holds_only_the_stored_transitions(tmp_path):
    algorithm = _ddpg(buffer_size=100_000)
    obs = np.ones((2, 3), np.float32)
    no = np.zeros(2, dtype=bool)
    for _ in range(5):
        algorithm.observe(
            Transition(
                obs, np.zeros((2, 1), np.float32), {}, np.ones(2, np.float32), no, no, obs, obs
            )
        )
    path = tmp_path / "state.pt"
    torch.save(algorithm.state_dict(), path)
    assert path.stat().st_size < 200_000  # the full 100k-row storage would be about 3 MB
    restored = _ddpg(buffer_size=100_000)
    restored.load_state_dict(torch.load(path, weights_only=False))
    assert restored.replay.size == 10 and restored.env_steps == 10
    assert torch.equal(restored.replay.observations[:10], algorithm.replay.observations[:10])
    for a, b in zip(restored.actor.parameters(), algorithm.actor.parameters()):
        assert torch.equal(a, b)


def test_gradient_step_flops_of_the_throughput_ceiling_match_the_update():
    """benchmarks/bench_algorithms.py bounds DDPG's speed by the matrix products of a
    gradient step; its count must be what DDPG.update really computes."""
    import sys

    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_algorithms import gradient_step_flops

    hidden, batch = [24, 16], 32
    config = config_from_dict(
        {
            "algorithm": "ddpg",
            "env": {"id": "Pendulum-v1", "num_envs": 1},
            "policy": {"hidden_sizes": hidden},
            "critic": {"hidden_sizes": hidden},
            "ddpg": {"buffer_size": 100, "batch_size": batch, "warmup_steps": 0},
        }
    )
    algorithm = DDPG(config, 3, 1, 1, torch.device("cpu"), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(batch):
        observation = rng.standard_normal((1, 3)).astype(np.float32)
        algorithm.replay.add(
            observation,
            np.zeros((1, 1), np.float32),
            np.zeros(1, np.float32),
            observation,
            np.zeros(1, bool),
        )
    algorithm.owed_updates = 1.0
    with FlopCounterMode(display=False) as counter:
        algorithm.update(0.0)
    assert algorithm.gradient_steps == 1
    assert counter.get_total_flops() == gradient_step_flops(3, 1, hidden, batch)


def test_the_throughput_bench_refuses_too_few_steps_before_any_training():
    """bench_algorithms.py times ours between DDPG's metrics rows: with fewer steps than
    two rows apart it used to train both sides and then divide by zero."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_algorithms import check_throughput_steps

    with pytest.raises(SystemExit, match=r"--steps 300 is too few for Pendulum-v1.*>= 2000"):
        check_throughput_steps(["Pendulum-v1"], 300, [])
    with pytest.raises(SystemExit, match=r">= 1000"):
        check_throughput_steps(["Pendulum-v1"], 900, ["ddpg.log_every_steps=500"])
    check_throughput_steps(["Pendulum-v1", "IiwaReach-v0"], 2000, [])
