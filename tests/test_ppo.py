"""The PPO pipeline's math, each piece against an independent reference: GAE by hand,
the Gaussian head against torch.distributions, the clipped surrogate on crafted ratios,
the running statistics against numpy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from iiwa_rl.algos.base import Transition
from iiwa_rl.algos.optim import FlatAdam, flatten_parameters_
from iiwa_rl.algos.ppo import PPO, clipped_surrogate_loss, policy_gradients, value_loss_and_gradient
from iiwa_rl.buffers import RolloutBuffer, compute_gae
from iiwa_rl.config import LogStdSection, NetworkSection, TrainConfig
from iiwa_rl.nn import (
    ArrayForward,
    ArrayGaussianActor,
    GaussianActor,
    ValueCritic,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
)
from iiwa_rl.normalization import ObservationNormalizer, RewardScaler, RunningMeanStd

# ------------------------------------------------------------------------------ GAE

GAMMA, LAMBDA = 0.5, 0.5  # gamma * lambda = 0.25: every number below is exact in binary

# Two environments, four steps ([t, n]):
#   env 0 is cut by the time limit after step 1: V(final obs) = 2.0 is bootstrapped there,
#         and no advantage flows back across the cut;
#   env 1 terminates at step 2: nothing follows, no bootstrap.
REWARDS = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 4.0], [1.0, -1.0]])
VALUES = np.array([[0.5, 1.0], [1.0, 2.0], [2.0, 3.0], [1.0, 0.5]])
DONES = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
BOOTSTRAP = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
LAST_VALUES = np.array([1.0, 3.0])

# delta_t = r_t + gamma * next_value_t - V(s_t);  A_t = delta_t + gamma*lambda*(1 - done_t)*A_{t+1}
# env 0:
#   t=3: next = last value 1.0:   delta = 1 + 0.5*1.0 - 1.0 = 0.5       A = 0.5
#   t=2: next = V[3] = 1.0:       delta = 0 + 0.5*1.0 - 2.0 = -1.5      A = -1.5 + 0.25*0.5 = -1.375
#   t=1: truncated, next = 2.0:   delta = 2 + 0.5*2.0 - 1.0 = 2.0       A = 2.0 (A_2 not carried)
#   t=0: next = V[1] = 1.0:       delta = 1 + 0.5*1.0 - 0.5 = 1.0       A = 1.0 + 0.25*2.0 = 1.5
# env 1:
#   t=3: next = last value 3.0:   delta = -1 + 0.5*3.0 - 0.5 = 0.0     A = 0.0
#   t=2: terminated, next = 0:    delta = 4 + 0 - 3.0 = 1.0             A = 1.0 (A_3 not carried)
#   t=1: next = V[2] = 3.0:       delta = 1 + 0.5*3.0 - 2.0 = 0.5       A = 0.5 + 0.25*1.0 = 0.75
#   t=0: next = V[1] = 2.0:       delta = 0 + 0.5*2.0 - 1.0 = 0.0       A = 0.0 + 0.25*0.75 = 0.1875
EXPECTED_ADVANTAGES = np.array([[1.5, 0.1875], [2.0, 0.75], [-1.375, 1.0], [0.5, 0.0]])
# returns = advantages + values
EXPECTED_RETURNS = np.array([[2.0, 1.1875], [3.0, 2.75], [0.625, 4.0], [1.5, 0.5]])


def test_gae_hand_computed_with_truncation_and_termination():
    advantages, returns = compute_gae(REWARDS, VALUES, DONES, BOOTSTRAP, LAST_VALUES, GAMMA, LAMBDA)
    np.testing.assert_allclose(advantages, EXPECTED_ADVANTAGES, rtol=0, atol=1e-12)
    np.testing.assert_allclose(returns, EXPECTED_RETURNS, rtol=0, atol=1e-12)


def test_gae_lambda_one_gives_discounted_returns_and_zero_gives_td():
    # lambda = 1: returns are the Monte Carlo discounted sums (with the bootstraps).
    _, returns = compute_gae(REWARDS, VALUES, DONES, BOOTSTRAP, LAST_VALUES, GAMMA, 1.0)
    # env 0: G3 = 1 + 0.5*1 = 1.5; G2 = 0 + 0.5*1.5 = 0.75; G1 = 2 + 0.5*2 = 3; G0 = 1 + 0.5*3 = 2.5
    # env 1: G3 = -1 + 0.5*3 = 0.5; G2 = 4; G1 = 1 + 0.5*4 = 3; G0 = 0 + 0.5*3 = 1.5
    np.testing.assert_allclose(returns[:, 0], [2.5, 3.0, 0.75, 1.5], atol=1e-12)
    np.testing.assert_allclose(returns[:, 1], [1.5, 3.0, 4.0, 0.5], atol=1e-12)
    # lambda = 0: one-step TD errors (the deltas above).
    advantages, _ = compute_gae(REWARDS, VALUES, DONES, BOOTSTRAP, LAST_VALUES, GAMMA, 0.0)
    np.testing.assert_allclose(advantages[:, 0], [1.0, 2.0, -1.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(advantages[:, 1], [0.0, 0.5, 1.0, 0.0], atol=1e-12)


def _small_config(**ppo) -> TrainConfig:
    config = TrainConfig()
    config.policy = NetworkSection(hidden_sizes=[8])
    config.critic = NetworkSection(hidden_sizes=[8])
    config.ppo.rollout_steps = 4
    config.ppo.gamma, config.ppo.gae_lambda = GAMMA, LAMBDA
    for key, value in ppo.items():
        setattr(config.ppo, key, value)
    return config


def test_rollout_buffer_flattens_step_major_with_gae():
    buffer = RolloutBuffer(steps=4, num_envs=2, observation_size=3, action_size=1)
    for t in range(4):
        observations = np.full((2, 3), t, np.float32) + np.array([[0.0], [0.5]], np.float32)
        buffer.add(
            observations,
            np.full((2, 1), -t, np.float32),
            np.zeros(2),
            VALUES[t],
            REWARDS[t],
            DONES[t],
            BOOTSTRAP[t],
        )
    assert buffer.full
    batch = buffer.finish(LAST_VALUES.astype(np.float32), GAMMA, LAMBDA, torch.device("cpu"))
    assert batch.size == 8 and buffer.position == 0
    # Row t*N + n holds step t of env n.
    np.testing.assert_allclose(batch.observations[:, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5])
    np.testing.assert_allclose(batch.actions[:, 0], [0, 0, -1, -1, -2, -2, -3, -3])
    np.testing.assert_allclose(batch.advantages, EXPECTED_ADVANTAGES.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(batch.returns, EXPECTED_RETURNS.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(batch.values, VALUES.reshape(-1), atol=1e-6)


def test_observe_bootstraps_truncations_only():
    """A time-limit cut bootstraps with V(final observation); a termination (even one at
    the time limit) does not; the returned next observation is never used for it."""
    config = _small_config()
    algo = PPO(
        config, observation_size=3, action_size=2, num_envs=4, device=torch.device("cpu"), seed=0
    )
    observations = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    env_actions, stored, extras = algo.act(observations)
    assert np.all(np.abs(env_actions) <= 1.0) and stored.shape == (4, 2)
    finals = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    nexts = finals + 10.0  # the new episodes' first observations
    terminated = np.array([False, True, True, False])
    truncated = np.array([True, False, True, False])
    algo.observe(
        Transition(
            observations,
            stored,
            extras,
            np.ones(4, np.float32),
            terminated,
            truncated,
            nexts,
            finals,
        )
    )
    with torch.no_grad():
        v_final = algo.critic(torch.from_numpy(finals)).numpy()
    # Acting's critic runs in numpy (nn.ArrayForward): torch's value to float32 rounding.
    np.testing.assert_allclose(
        algo.buffer.bootstrap_values[0], [v_final[0], 0.0, 0.0, 0.0], rtol=1e-6
    )
    np.testing.assert_array_equal(algo.buffer.dones[0], [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(algo.buffer.actions[0], stored)
    np.testing.assert_allclose(algo.buffer.log_probs[0], extras["log_prob"])


# -------------------------------------------------------------------- Gaussian head


def _actor(mode: str, init=-0.5, low=-5.0, high=1.0, seed=0) -> GaussianActor:
    torch.manual_seed(seed)
    spec = NetworkSection(
        hidden_sizes=[16, 16], log_std=LogStdSection(mode=mode, init=init, min=low, max=high)
    )
    return GaussianActor(observation_size=5, action_size=3, spec=spec)


@pytest.mark.parametrize("mode", ["parameter", "state_dependent"])
def test_log_prob_and_entropy_match_torch_normal(mode):
    actor = _actor(mode)
    with torch.no_grad():  # move away from the initial values so every output differs
        for parameter in actor.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    observations = torch.randn(64, 5)
    actions = 2.0 * torch.randn(64, 3)
    mean, log_std = actor(observations)
    reference = Normal(mean, log_std.exp())
    log_prob, entropy = actor.log_prob_and_entropy(observations, actions)
    torch.testing.assert_close(log_prob, reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, reference.entropy().sum(-1))
    torch.testing.assert_close(
        gaussian_log_prob(actions, mean, log_std), reference.log_prob(actions).sum(-1)
    )
    torch.testing.assert_close(gaussian_entropy(log_std), reference.entropy().sum(-1))
    if mode == "state_dependent":
        assert log_std.std(dim=0).min() > 0  # really depends on the observation
    # Acting samples in numpy: each action's log-probability is the density of that very
    # action under the torch actor's distribution, and the actions are that distribution's.
    sampler = ArrayGaussianActor(actor, "tanh")
    rng = np.random.default_rng(3)
    sampled, sampled_log_prob = sampler.sample(observations.numpy(), rng)
    assert sampled.dtype == sampled_log_prob.dtype == np.float32
    torch.testing.assert_close(
        torch.from_numpy(sampled_log_prob),
        reference.log_prob(torch.from_numpy(sampled)).sum(-1),
        rtol=1e-5,
        atol=1e-5,
    )
    draws = np.stack([sampler.sample(observations.numpy(), rng)[0] for _ in range(2000)])
    z = (draws - mean.detach().numpy()) / log_std.exp().detach().numpy()
    assert np.abs(z.mean(0)).max() < 0.1 and np.abs(z.std(0) - 1.0).max() < 0.1


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "silu"])
def test_acting_forward_in_numpy_is_the_torch_networks(activation):
    """nn.ArrayForward: the torch modules' outputs to float32 rounding (the products of
    activations of a few units summed in another order), following in-place
    updates of the weights and a move of their storage (flatten_parameters_)."""
    torch.manual_seed(0)
    spec = NetworkSection(hidden_sizes=[32, 24], activation=activation)
    state_dependent = dataclasses.replace(spec, log_std=LogStdSection(mode="state_dependent"))
    actor, critic = GaussianActor(5, 3, state_dependent), ValueCritic(5, spec)
    array_actor, array_critic = ArrayForward(actor, activation), ArrayForward(critic, activation)
    observations = torch.randn(17, 5)

    def check() -> None:
        with torch.no_grad():
            mean = actor.mean_head(actor.trunk(observations))
            raw_log_std = actor.log_std_head(actor.trunk(observations))
            value = critic(observations)
        outputs = array_actor(observations.numpy())
        np.testing.assert_allclose(outputs[0], mean.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outputs[1], raw_log_std.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            array_critic(observations.numpy())[0][:, 0], value.numpy(), rtol=1e-5, atol=1e-5
        )

    check()
    with torch.no_grad():
        for parameter in (*actor.parameters(), *critic.parameters()):
            parameter.add_(0.5 * torch.randn_like(parameter))
    check()
    flatten_parameters_(actor, critic)
    with torch.no_grad():
        for parameter in (*actor.parameters(), *critic.parameters()):
            parameter.mul_(-1.5)
    check()


@pytest.mark.parametrize("mode", ["parameter", "state_dependent"])
def test_initial_log_std_is_the_configured_value(mode):
    actor = _actor(mode, init=-0.7, low=-4.0, high=0.5)
    _, log_std = actor(torch.randn(32, 5))
    # state_dependent: the head's weights start at gain 0.01, so nearly the bias alone
    tolerance = 1e-5 if mode == "parameter" else 0.05
    assert torch.all((log_std + 0.7).abs() < tolerance)


@pytest.mark.parametrize("mode", ["parameter", "state_dependent"])
@pytest.mark.parametrize("extreme", [-1e6, 1e6])
def test_log_std_stays_inside_bounds_for_extreme_values(mode, extreme):
    low, high = -3.0, 0.5
    actor = _actor(mode, low=low, high=high)
    with torch.no_grad():
        if mode == "parameter":
            actor.log_std_raw.fill_(extreme)
        else:
            actor.log_std_head.weight.fill_(extreme)
            actor.log_std_head.bias.fill_(extreme)
    observations = torch.cat([torch.full((4, 5), 1e6), torch.full((4, 5), -1e6), torch.randn(4, 5)])
    mean, log_std = actor(observations)
    assert torch.isfinite(log_std).all() and torch.isfinite(mean).all()
    assert (log_std >= low).all() and (log_std <= high).all()
    # at a saturated raw value the bound is reached, not overshot
    expected = high if extreme > 0 else low
    if mode == "parameter":
        torch.testing.assert_close(log_std, torch.full_like(log_std, expected))
    log_prob, entropy = actor.log_prob_and_entropy(observations, torch.zeros(12, 3))
    assert torch.isfinite(log_prob).all() and torch.isfinite(entropy).all()
    (log_prob.mean() + entropy.mean()).backward()
    for parameter in actor.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()


def test_gaussian_kl_matches_torch():
    generator = torch.Generator().manual_seed(3)
    mean_p, mean_q = (
        torch.randn(50, 4, generator=generator),
        torch.randn(50, 4, generator=generator),
    )
    log_std_p = torch.randn(50, 4, generator=generator) * 0.7
    log_std_q = torch.randn(50, 4, generator=generator) * 0.7
    reference = kl_divergence(Normal(mean_p, log_std_p.exp()), Normal(mean_q, log_std_q.exp()))
    kl = gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)
    torch.testing.assert_close(kl, reference.sum(-1))
    assert torch.all(kl > 0)
    torch.testing.assert_close(
        gaussian_kl(mean_p, log_std_p, mean_p, log_std_p), torch.zeros(50), atol=1e-6, rtol=0
    )


# ------------------------------------------------------------ the clipped surrogate

EPS = 0.2
# ratio, advantage, objective min(r A, clip(r) A), whether the clip is active (no gradient)
CASES = [
    (0.5, 2.0, 0.5 * 2.0, False),  # A > 0, ratio below the range: unclipped term is smaller
    (0.9, 2.0, 0.9 * 2.0, False),  # inside the range
    (1.1, 2.0, 1.1 * 2.0, False),
    (1.5, 2.0, 1.2 * 2.0, True),  # A > 0 above the range: capped at (1 + eps) A
    (0.5, -1.0, 0.8 * -1.0, True),  # A < 0 below the range: capped at (1 - eps) A
    (0.9, -1.0, 0.9 * -1.0, False),
    (1.1, -1.0, 1.1 * -1.0, False),
    (1.5, -1.0, 1.5 * -1.0, False),  # A < 0 above the range: the pessimistic, unclipped term
]


def test_clipped_surrogate_value_and_gradient():
    ratio = torch.tensor([c[0] for c in CASES], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([c[1] for c in CASES], dtype=torch.float64)
    loss = clipped_surrogate_loss(ratio, advantages, EPS)
    # -(1.0 + 1.8 + 2.2 + 2.4 - 0.8 - 0.9 - 1.1 - 1.5) / 8 = -3.1 / 8
    assert abs(loss.item() - (-3.1 / 8)) < 1e-12
    assert abs(loss.item() + sum(c[2] for c in CASES) / len(CASES)) < 1e-12
    loss.backward()
    for (r, a, _, clipped), grad in zip(CASES, ratio.grad.tolist()):
        expected = 0.0 if clipped else -a / len(CASES)
        assert grad == pytest.approx(expected, abs=1e-15), (r, a)


def test_clipped_surrogate_at_ratio_one_is_the_policy_gradient():
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0])
    ratio = torch.ones(4, requires_grad=True)
    loss = clipped_surrogate_loss(ratio, advantages, 0.1)
    assert loss.item() == pytest.approx(-advantages.mean().item())
    loss.backward()
    torch.testing.assert_close(ratio.grad, -advantages / 4)


def test_ppo_update_improves_the_surrogate_and_reports_finite_stats():
    """One update on a synthetic rollout: actions with positive advantage gain probability."""
    config = _small_config(
        epochs=4, minibatch_size=8, learning_rate=1e-2, normalize_advantages=False
    )
    algo = PPO(
        config, observation_size=3, action_size=1, num_envs=4, device=torch.device("cpu"), seed=1
    )
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(4, 3)).astype(np.float32)
    records = []
    for _ in range(4):
        _, stored, extras = algo.act(observations)
        # reward = +1 for a positive action, -1 otherwise; every step ends its episode
        rewards = np.where(stored[:, 0] > 0, 1.0, -1.0).astype(np.float32)
        done = np.ones(4, bool)
        records.append((observations.copy(), stored.copy()))
        algo.observe(
            Transition(
                observations, stored, extras, rewards, done, ~done, observations, observations
            )
        )
    assert algo.ready_to_update()
    obs = torch.from_numpy(np.concatenate([o for o, _ in records]))
    actions = torch.from_numpy(np.concatenate([a for _, a in records]))
    with torch.no_grad():
        before, _ = algo.actor.log_prob_and_entropy(obs, actions)
    stats = algo.update(progress=0.0)
    with torch.no_grad():
        after, _ = algo.actor.log_prob_and_entropy(obs, actions)
    sign = torch.where(actions[:, 0] > 0, 1.0, -1.0)
    assert float(((after - before) * sign).mean()) > 0
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert np.isfinite(stats[key]), key
    assert stats["learning_rate"] == pytest.approx(1e-2)
    assert algo.updates == 1 and not algo.ready_to_update()


@pytest.mark.parametrize("std_mode", ["parameter", "state_dependent"])
@pytest.mark.parametrize(("clip_value", "entropy_coef", "activation"), [
    (None, 0.0, "tanh"), (0.05, 0.01, "relu"), (0.05, 0.0, "silu"), (None, 0.02, "elu"),
])  # fmt: skip
def test_explicit_ppo_gradient_is_autograds_of_the_ppo_loss(
    std_mode, clip_value, entropy_coef, activation
):
    """PPO.update writes the loss's gradient by hand (policy_gradients,
    value_loss_and_gradient, ExplicitBackprop): it must be autograd's gradient of
    policy_loss + value_coef * value_loss - entropy_coef * entropy, computed here from
    the modules' own forwards, with ratios inside and outside the clip range."""
    torch.manual_seed(0)
    policy_spec = NetworkSection(
        hidden_sizes=[16, 8], activation=activation,
        log_std=LogStdSection(mode=std_mode, init=-0.5, min=-5.0, max=0.5),
    )  # fmt: skip
    config = _small_config(clip_value=clip_value, entropy_coef=entropy_coef, value_coef=0.7)
    config.policy, config.critic = (
        policy_spec,
        NetworkSection(hidden_sizes=[12], activation=activation),
    )
    algo = PPO(
        config, observation_size=5, action_size=3, num_envs=4, device=torch.device("cpu"), seed=0
    )
    actor, critic, cfg = algo.actor, algo.critic, algo.section
    if std_mode == "state_dependent":  # a std that varies with the state
        with torch.no_grad():
            actor.log_std_head.weight.normal_(0.0, 0.3)
    batch = 64
    observations, actions = torch.randn(batch, 5), torch.randn(batch, 3)
    advantages, returns = torch.randn(batch), torch.randn(batch)
    with torch.no_grad():
        current, _ = actor.log_prob_and_entropy(observations, actions)
        old_values = critic(observations) + 0.1 * torch.randn(batch)
    old_log_probs = current + 0.4 * torch.randn(batch)  # ratios from about 0.5 to 2
    ratio = torch.exp(current - old_log_probs)
    assert ((ratio - 1).abs() > cfg.clip_range).any() and ((ratio - 1).abs() < cfg.clip_range).any()

    log_probs, entropy = actor.log_prob_and_entropy(observations, actions)
    policy_loss = clipped_surrogate_loss(
        torch.exp(log_probs - old_log_probs), advantages, cfg.clip_range
    )
    values = critic(observations)
    if clip_value is None:
        value_loss = 0.5 * (values - returns).pow(2).mean()
    else:
        clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
        value_loss = 0.5 * torch.max((values - returns).pow(2), (clipped - returns).pow(2)).mean()
    loss = policy_loss + cfg.value_coef * value_loss - entropy_coef * entropy.mean()
    parameters = list(actor.parameters()) + list(critic.parameters())
    expected = torch.autograd.grad(loss, parameters)

    policy = algo.actor_pass.forward(observations)
    raw_log_std = policy[1] if std_mode == "state_dependent" else algo.raw_log_std
    terms = policy_gradients(
        actor,
        policy[0],
        raw_log_std,
        actions,
        old_log_probs,
        advantages,
        cfg.clip_range,
        entropy_coef,
    )
    assert terms.loss.item() == pytest.approx(policy_loss.item(), rel=1e-5)
    assert terms.entropy.item() == pytest.approx(entropy.mean().item(), rel=1e-5)
    algo.actor_pass.backward(terms.head_gradients)
    if std_mode == "parameter":
        algo.actor_pass.gradient_of(actor.log_std_raw).copy_(terms.raw_log_std_gradient.sum(0))
    explicit_values = algo.critic_pass.forward(observations)[0].squeeze(-1)
    explicit_value_loss, value_gradient = value_loss_and_gradient(
        explicit_values, returns, old_values, clip_value
    )
    assert explicit_value_loss.item() == pytest.approx(value_loss.item(), rel=1e-5)
    algo.critic_pass.backward([(value_gradient * cfg.value_coef).unsqueeze(-1)])
    for parameter, want in zip(parameters, expected):
        written = algo.actor_pass if parameter in set(actor.parameters()) else algo.critic_pass
        torch.testing.assert_close(written.gradient_of(parameter), want, atol=1e-6, rtol=1e-4)


def test_flat_adam_resumes_a_torch_adam_state():
    """PPO's checkpoints from before its optimiser was flat hold a torch.optim.Adam state:
    resuming one continues the same Adam."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    reference = torch.optim.Adam(network.parameters(), lr=1e-2, eps=1e-5)
    for step in range(3):
        reference.zero_grad()
        network(torch.randn(8, 3, generator=torch.Generator().manual_seed(step))).pow(
            2
        ).mean().backward()
        reference.step()
    flat_copy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    flat_copy.load_state_dict(network.state_dict())
    flat = FlatAdam(flatten_parameters_(flat_copy), lr=0.5, eps=1e-5)
    flat.load_state_dict(reference.state_dict())
    assert flat.steps == 3 and flat.lr == pytest.approx(1e-2)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(9))
    reference.zero_grad()
    network(x).pow(2).mean().backward()
    reference.step()
    grads = torch.autograd.grad(flat_copy(x).pow(2).mean(), list(flat_copy.parameters()))
    flat_gradient = torch.zeros_like(flat.params)  # laid out as the parameters are
    for p, g in zip(flat_copy.parameters(), grads):
        flat_gradient[p.storage_offset() : p.storage_offset() + p.numel()] = g.reshape(-1)
    flat.step(flat_gradient)
    for got, want in zip(flat_copy.parameters(), network.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------- running statistics


def test_running_mean_std_matches_numpy_over_concatenated_batches():
    rng = np.random.default_rng(4)
    batches = [rng.normal(loc=3.0, scale=2.0, size=(n, 3)) for n in (1, 7, 50, 13)]
    stats = RunningMeanStd((3,))
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    # the prior count (1e-4) is the only difference
    np.testing.assert_allclose(stats.mean, everything.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.var, everything.var(axis=0), rtol=1e-5)
    assert stats.count == pytest.approx(len(everything), abs=1e-3)


def test_observation_normalizer_normalises_clips_and_freezes():
    rng = np.random.default_rng(5)
    normalizer = ObservationNormalizer(size=2, clip=3.0)
    batches = [rng.normal(loc=[10.0, -5.0], scale=[4.0, 0.5], size=(20, 2)) for _ in range(5)]
    for batch in batches:
        normalizer(batch, update=True)
    everything = np.concatenate(batches)
    mean, std = everything.mean(axis=0), everything.std(axis=0)
    probe = np.array([[10.0, -5.0], [14.0, -4.5], [1e6, -1e6]])
    out = normalizer(probe)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:2], (probe[:2] - mean) / std, atol=1e-3)
    np.testing.assert_array_equal(out[2], [3.0, -3.0])
    # without update=True the statistics do not move
    before = normalizer.state_dict()
    normalizer(rng.normal(size=(100, 2)) * 100)
    np.testing.assert_array_equal(normalizer.stats.mean, before["mean"])
    scale, offset = normalizer.scale_and_offset()
    np.testing.assert_allclose((probe[:2] - offset) * scale, out[:2], rtol=1e-5)
    # disabled: raw values pass through
    disabled = ObservationNormalizer(size=2, clip=3.0, enabled=False)
    np.testing.assert_array_equal(disabled(probe, update=True), probe.astype(np.float32))


def test_reward_scaler_uses_the_discounted_return_std():
    gamma = 0.9
    scaler = RewardScaler(num_envs=2, gamma=gamma, clip=100.0)
    rewards = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0], [2.0, 1.0]])
    dones = np.array([[False, False], [False, True], [False, False], [True, False]])
    # the running discounted returns, by hand; env 1's resets after its step-1 end
    expected_returns = [
        [1.0, 2.0],
        [0.9 * 1.0 + 3.0, 0.9 * 2.0 - 1.0],  # [3.9, 0.8]
        [0.9 * 3.9 + 0.5, 0.0],  # [4.01, 0.0] (env 1 restarted)
        [0.9 * 4.01 + 2.0, 1.0],  # [5.609, 1.0]
    ]
    outputs = []
    for t in range(4):
        outputs.append(scaler(rewards[t], dones[t]))
        np.testing.assert_allclose(
            np.sqrt(scaler.stats.var),
            np.std(np.array(expected_returns[: t + 1]).reshape(-1)),
            rtol=1e-3,
        )
    np.testing.assert_allclose(scaler.returns, [0.0, 1.0])  # env 0 just ended
    np.testing.assert_allclose(
        outputs[-1], rewards[-1] / np.std(np.array(expected_returns).reshape(-1)), rtol=1e-3
    )
    np.testing.assert_allclose(scaler.scale(np.array([2.0])), outputs[-1][:1], rtol=1e-6)
    # clip
    clipped = RewardScaler(num_envs=1, gamma=gamma, clip=0.5)
    for _ in range(3):
        clipped(np.array([1.0]), np.array([False]))
    assert clipped(np.array([1e6]), np.array([False]))[0] == pytest.approx(0.5)
    assert clipped(np.array([-1e9]), np.array([False]))[0] == pytest.approx(-0.5)


def test_normalizer_state_dict_round_trip():
    rng = np.random.default_rng(6)
    normalizer = ObservationNormalizer(size=4, clip=5.0)
    scaler = RewardScaler(num_envs=3, gamma=0.99, clip=10.0)
    for _ in range(10):
        normalizer(rng.normal(2.0, 3.0, size=(3, 4)), update=True)
        scaler(rng.normal(size=3), rng.random(3) < 0.2)
    restored = ObservationNormalizer(size=4, clip=1.0, enabled=False)
    restored.load_state_dict(normalizer.state_dict())
    restored_scaler = RewardScaler(num_envs=3, gamma=0.99, clip=10.0, enabled=False)
    restored_scaler.load_state_dict(scaler.state_dict())
    probe = rng.normal(2.0, 10.0, size=(8, 4))
    np.testing.assert_array_equal(restored(probe), normalizer(probe))
    assert (
        restored.enabled and restored.clip == 5.0 and restored.stats.count == normalizer.stats.count
    )
    rewards = rng.normal(size=8)
    np.testing.assert_array_equal(restored_scaler.scale(rewards), scaler.scale(rewards))
    assert restored_scaler.enabled
