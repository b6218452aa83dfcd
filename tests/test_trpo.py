"""TRPO: conjugate gradient, the Fisher-vector product, the trust region, the line search,
and a short learning run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import iiwa_rl.algos.trpo as trpo_module
from iiwa_rl.algos.base import Transition
from iiwa_rl.algos.trpo import (
    TRPO,
    conjugate_gradient,
    flat_parameters,
    make_fisher_vector_product,
    set_flat_parameters,
)
from iiwa_rl.config import NetworkSection, config_from_dict
from iiwa_rl.nn import GaussianActor, gaussian_kl


def test_conjugate_gradient_solves_a_random_spd_system():
    generator = torch.Generator().manual_seed(0)
    size = 30
    basis = torch.randn(size, size, generator=generator, dtype=torch.float64)
    matrix = basis @ basis.T + 0.5 * torch.eye(size, dtype=torch.float64)
    b = torch.randn(size, generator=generator, dtype=torch.float64)
    x, residual = conjugate_gradient(lambda v: matrix @ v, b, iterations=200, tolerance=1e-20)
    expected = torch.linalg.solve(matrix, b)
    assert torch.allclose(x, expected, atol=1e-6, rtol=0)
    assert float((matrix @ x - b).norm()) < 1e-6
    assert float(residual) < 1e-6


def test_conjugate_gradient_stops_at_the_iteration_budget():
    # Few iterations on an ill-conditioned system leave a residual, and the reported one is it.
    diagonal = torch.logspace(0, 6, 50, dtype=torch.float64)
    b = torch.ones(50, dtype=torch.float64)
    x, residual = conjugate_gradient(lambda v: diagonal * v, b, iterations=3, tolerance=0.0)
    true_residual = (diagonal * x - b).norm()
    assert float(true_residual) > 1e-3
    assert float(residual) == pytest.approx(float(true_residual), rel=1e-6)


def test_flat_parameter_round_trip():
    actor = GaussianActor(3, 2, NetworkSection(hidden_sizes=[5]))
    params = list(actor.parameters())
    flat = flat_parameters(params)
    set_flat_parameters(params, flat + 1.0)
    assert torch.allclose(flat_parameters(params), flat + 1.0)
    with pytest.raises(ValueError):
        set_flat_parameters(params, torch.zeros(flat.numel() + 1))


def _tiny_actor_and_observations():
    torch.manual_seed(1)
    spec = NetworkSection(hidden_sizes=[4], activation="tanh")
    actor = GaussianActor(3, 2, spec).double()
    # Move away from the near-zero mean-head initialisation so every block of F is non-trivial.
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    observations = torch.randn(16, 3, dtype=torch.float64)
    return actor, observations


def test_fisher_vector_product_equals_the_kl_hessian():
    actor, observations = _tiny_actor_and_observations()
    params = list(actor.parameters())
    names = [name for name, _ in actor.named_parameters()]
    shapes = [p.shape for p in params]
    theta_old = flat_parameters(params)
    with torch.no_grad():
        old_mean, old_log_std = actor(observations)

    def kl_of_flat(flat: torch.Tensor) -> torch.Tensor:
        tensors, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            tensors[name] = flat[offset : offset + size].view(shape)
            offset += size
        mean, log_std = torch.func.functional_call(actor, tensors, (observations,))
        return gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    hessian = torch.autograd.functional.hessian(kl_of_flat, theta_old)
    assert hessian.abs().max() > 1e-3  # a real curvature to compare against

    damping = 0.1
    mean, log_std = actor(observations)
    mean_kl = gaussian_kl(old_mean, old_log_std, mean, log_std).mean()
    fvp = make_fisher_vector_product(mean_kl, params, damping)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        vector = torch.randn(theta_old.numel(), generator=generator, dtype=torch.float64)
        expected = hessian @ vector + damping * vector
        assert torch.allclose(fvp(vector), expected, atol=1e-10, rtol=1e-8)


def _trpo(max_kl: float = 0.01, **trpo) -> TRPO:
    config = config_from_dict(
        {
            "algorithm": "trpo",
            "env": {"id": "Pendulum-v1", "num_envs": 4},
            "policy": {"hidden_sizes": [16]},
            "critic": {"hidden_sizes": [16]},
            "trpo": {"rollout_steps": 32, "max_kl": max_kl, "value_epochs": 2, **trpo},
        }
    )
    return TRPO(config, 3, 2, 4, torch.device("cpu"), seed=0)


def _fill_rollout(algorithm: TRPO, seed: int = 0) -> np.ndarray:
    """A rollout whose reward prefers actions near (0.5, -0.5): a clear gradient direction."""
    rng = np.random.default_rng(seed)
    seen = []
    observations = rng.standard_normal((4, 3)).astype(np.float32)
    while not algorithm.ready_to_update():
        _, actions, extras = algorithm.act(observations)
        rewards = -((actions - np.array([0.5, -0.5])) ** 2).sum(-1).astype(np.float32)
        next_observations = rng.standard_normal((4, 3)).astype(np.float32)
        no = np.zeros(4, dtype=bool)
        algorithm.observe(
            Transition(
                observations, actions, extras, rewards, no, no, next_observations, next_observations
            )
        )
        seen.append(observations)
        observations = next_observations
    return np.concatenate(seen)


def test_update_stays_inside_the_trust_region():
    algorithm = _trpo(max_kl=0.01)
    observations = torch.from_numpy(_fill_rollout(algorithm))
    with torch.no_grad():
        old_mean, old_log_std = algorithm.actor(observations)
    metrics = algorithm.update(0.0)
    with torch.no_grad():
        mean, log_std = algorithm.actor(observations)
        kl = float(gaussian_kl(old_mean, old_log_std, mean, log_std).mean())
    assert metrics["line_search_steps"] >= 1, "the step should be accepted on this easy rollout"
    assert 0.0 < kl <= 0.01 * (1 + 1e-5)
    assert kl == pytest.approx(metrics["kl"], rel=1e-4)
    assert metrics["surrogate_improvement"] > 0


def test_line_search_restores_parameters_when_nothing_improves(monkeypatch):
    algorithm = _trpo(max_kl=0.01, line_search_steps=5)
    _fill_rollout(algorithm)
    params = list(algorithm.actor.parameters())
    before = flat_parameters(params)
    real_surrogate = trpo_module.surrogate_objective
    tried: list[torch.Tensor] = []

    def worse_after_the_first_call(log_probs, old_log_probs, advantages):
        value = real_surrogate(log_probs, old_log_probs, advantages)
        if torch.is_grad_enabled():  # the gradient at theta_old: left as it is
            return value
        tried.append(flat_parameters(params))
        return value - 1.0  # every candidate step is worse than theta_old

    monkeypatch.setattr(trpo_module, "surrogate_objective", worse_after_the_first_call)
    metrics = algorithm.update(0.0)
    assert len(tried) == 5
    assert all(not torch.equal(candidate, before) for candidate in tried)
    assert torch.equal(flat_parameters(params), before)
    assert metrics["line_search_steps"] == 0
    assert metrics["kl"] == 0.0 and metrics["surrogate_improvement"] == 0.0


def test_trpo_learns_reach(tmp_path):
    from iiwa_rl.train import Trainer

    config = config_from_dict(
        {
            "algorithm": "trpo",
            "seed": 0,
            "device": "cpu",
            "env": {"id": "IiwaReach-v0", "num_envs": 8, "kwargs": {"episode_steps": 50}},
            "policy": {"hidden_sizes": [64, 64], "log_std": {"init": -0.5, "max": 0.5}},
            "critic": {"hidden_sizes": [64, 64]},
            "trpo": {
                "rollout_steps": 128,
                "max_kl": 0.02,
                "gamma": 0.98,
                "value_epochs": 5,
                "value_minibatch_size": 256,
            },
            "train": {
                "total_steps": 61440,
                "eval_every_steps": 1_000_000,
                "eval_episodes": 10,
                "progress": "quiet",
            },
        }
    )
    trainer = Trainer(config, tmp_path / "run")
    before = trainer.evaluate(10, seed=123)
    after = trainer.train()
    # Measured at seed 0: return -15.8 -> -0.4, final TCP distance 32 cm -> 13 cm.
    assert after["mean_return"] > before["mean_return"] + 8.0, (before, after)
    assert after["final_tcp_distance"] < 0.7 * before["final_tcp_distance"], (before, after)
