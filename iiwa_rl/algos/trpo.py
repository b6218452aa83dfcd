"""TRPO (Schulman et al., 2015), the update in one function.

    maximise   L(theta) = E[ pi_theta(a|s) / pi_old(a|s) * A ]
    subject to E_s[ KL(pi_old(.|s) || pi_theta(.|s)) ] <= delta

solved as in the paper: the policy gradient g of L, the natural direction x = F^-1 g by
conjugate gradient (F, the Fisher matrix, is the Hessian of the mean KL at theta_old,
applied to vectors by double backprop), a step scaled so that the quadratic model of the
KL equals delta, and a backtracking line search that accepts only a step which keeps the
measured KL within delta and improves the surrogate. Everything else (rollouts, GAE,
normalisation, the Gaussian policy) is shared with PPO; the value function is fitted by
minibatch regression as in PPO.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from iiwa_rl.algos.base import OnPolicyAlgorithm
from iiwa_rl.config import TRPOSection
from iiwa_rl.nn import gaussian_kl


def flat_parameters(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """All parameters as one detached vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in parameters])


def set_flat_parameters(parameters: Iterable[nn.Parameter], flat: torch.Tensor) -> None:
    """Write a vector made by `flat_parameters` back into the parameters, in order."""
    offset = 0
    with torch.no_grad():
        for p in parameters:
            size = p.numel()
            p.copy_(flat[offset : offset + size].view_as(p))
            offset += size
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {offset}")


def flat_grad(
    output: torch.Tensor, parameters: list[nn.Parameter], create_graph: bool = False
) -> torch.Tensor:
    """d output / d parameters as one vector; parameters `output` does not use get zeros."""
    grads = torch.autograd.grad(
        output, parameters, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, parameters)]
    )


def conjugate_gradient(
    fvp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int,
    tolerance: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve A x = b for symmetric positive-definite A known only through
    `fvp(v) = A v`. Returns x and the residual norm |b - A x| (CG's own recurrence).

    Starts from x = 0 and stops early once the squared residual is below `tolerance`.
    """
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = residual.dot(residual)
    for _ in range(iterations):
        if float(residual_sq) < tolerance:
            break
        a_direction = fvp(direction)
        alpha = residual_sq / direction.dot(a_direction)
        x += alpha * direction
        residual -= alpha * a_direction
        new_residual_sq = residual.dot(residual)
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x, residual_sq.sqrt()


def surrogate_objective(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """E[pi(a|s) / pi_old(a|s) * A], the importance-sampled advantage TRPO maximises."""
    return ((log_probs - old_log_probs).exp() * advantages).mean()


def make_fisher_vector_product(
    mean_kl: torch.Tensor, parameters: list[nn.Parameter], damping: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (F + damping I) v, with F the Hessian of `mean_kl` (a KL(pi_old || pi_theta)
    evaluated at theta = theta_old, where it equals the Fisher matrix). The gradient of the
    KL is built once with its graph; each product differentiates grad(KL) . v once more,
    so F is never formed. Damping keeps CG well posed where F is near singular."""
    kl_gradient = flat_grad(mean_kl, parameters, create_graph=True)

    def fisher_vector_product(vector: torch.Tensor) -> torch.Tensor:
        return flat_grad(kl_gradient.dot(vector), parameters) + damping * vector

    return fisher_vector_product


class TRPO(OnPolicyAlgorithm):
    def __init__(self, config, observation_size, action_size, num_envs, device, seed):
        super().__init__(config, observation_size, action_size, num_envs, device, seed)
        self.section: TRPOSection = config.trpo
        self.value_optimizer = torch.optim.Adam(
            self.critic.parameters(), lr=self.section.value_learning_rate, eps=1e-5
        )

    def update(self, progress: float) -> dict[str, float]:
        cfg = self.section
        batch = self.finish_rollout()
        observations, actions = batch.observations, batch.actions
        advantages = batch.advantages
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        params = [p for p in self.actor.parameters() if p.requires_grad]

        with torch.no_grad():
            old_mean, old_log_std = self.actor(observations)

        def surrogate() -> torch.Tensor:
            log_probs, _ = self.actor.log_prob_and_entropy(observations, actions)
            return surrogate_objective(log_probs, batch.log_probs, advantages)

        def mean_kl() -> torch.Tensor:
            mean, log_std = self.actor(observations)
            return gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

        # The policy gradient g of the surrogate at theta_old.
        surrogate_old = surrogate()
        gradient = flat_grad(surrogate_old, params)
        surrogate_old = surrogate_old.detach()

        # The natural direction x = F^-1 g.
        fisher_vector_product = make_fisher_vector_product(mean_kl(), params, cfg.damping)
        direction, cg_residual = conjugate_gradient(
            fisher_vector_product, gradient, cfg.cg_iterations, cfg.cg_tolerance
        )
        # Scale so that the quadratic KL model 1/2 s^T F s equals delta.
        curvature = direction.dot(fisher_vector_product(direction))
        full_step = torch.sqrt(2.0 * cfg.max_kl / (curvature + 1e-12)) * direction

        # Backtracking line search: the first fraction of the step inside the trust region
        # that also improves the surrogate; none of them, and theta_old stays.
        old_params = flat_parameters(params)
        accepted_step, kl, improvement = 0, torch.zeros(()), torch.zeros(())
        with torch.no_grad():
            for attempt in range(cfg.line_search_steps):
                set_flat_parameters(
                    params, old_params + cfg.line_search_shrink**attempt * full_step
                )
                trial_kl = mean_kl()
                trial_improvement = surrogate() - surrogate_old
                if float(trial_kl) <= cfg.max_kl and float(trial_improvement) > 0:
                    accepted_step, kl, improvement = attempt + 1, trial_kl, trial_improvement
                    break
            else:
                set_flat_parameters(params, old_params)

        # Value function: minibatch regression to the GAE returns.
        minibatch = min(cfg.value_minibatch_size, batch.size)
        value_losses = []
        for _epoch in range(cfg.value_epochs):
            order = torch.randperm(batch.size, generator=self.generator).to(self.device)
            for start in range(0, batch.size - minibatch + 1, minibatch):
                index = order[start : start + minibatch]
                value_loss = (
                    0.5 * (self.critic(observations[index]) - batch.returns[index]).pow(2).mean()
                )
                self.value_optimizer.zero_grad(set_to_none=True)
                value_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.value_optimizer.step()
                value_losses.append(value_loss.detach())

        with torch.no_grad():
            _, entropy = self.actor.log_prob_and_entropy(observations, actions)
        self.updates += 1
        self.sync_acting_networks()
        returns, values = batch.returns, batch.values
        return {
            "kl": float(kl),
            "surrogate_improvement": float(improvement),
            "line_search_steps": float(accepted_step),
            "cg_residual": float(cg_residual),
            "value_loss": float(torch.stack(value_losses).mean()),
            "policy_std": self.policy_std(),
            "entropy": float(entropy.mean()),
            "explained_variance": 1.0 - float((returns - values).var() / (returns.var() + 1e-8)),
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"value_optimizer": self.value_optimizer}
