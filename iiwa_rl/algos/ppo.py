"""PPO-clip (Schulman et al., 2017), the update in one function.

    L(theta) = E[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ],  r_t = pi_theta(a|s) / pi_old(a|s)

maximised by minibatch Adam over a few epochs of each rollout, with a value loss, an
optional entropy bonus, advantage normalisation per minibatch, global gradient-norm
clipping, an optional early stop on the approximate KL, and a learning-rate schedule.

The loss's gradient is written out (`policy_gradients`, `value_loss_and_gradient`, and
iiwa_rl.nn.ExplicitBackprop through the networks) instead of recorded by autograd, into
one flat vector for both networks that the norm clip and a fused Adam take in one op each
(iiwa_rl.algos.optim): the reach's update, 40 gradient steps of 128 samples through two
2 x 128 networks, costs 34 instead of 67 ms on one thread. tests/test_ppo.py holds the
written-out gradient to autograd's on the modules' own loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iiwa_rl.algos.base import OnPolicyAlgorithm
from iiwa_rl.algos.optim import FlatAdam, clip_grad_norm_flat_, flatten_parameters_
from iiwa_rl.config import PPOSection
from iiwa_rl.nn import ExplicitBackprop, GaussianActor, gaussian_entropy, standardized_log_prob


def clipped_surrogate_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """-E[min(r A, clip(r, 1 - eps, 1 + eps) A)]: the pessimistic bound, so moving the
    ratio beyond the clip range never improves the objective."""
    return -_surrogate_and_mask(ratio, advantages, clip_range)[0].mean()


def _surrogate_and_mask(ratio, advantages, clip_range):
    """min(r A, clip(r) A), and where the unclipped term is the one taken (inside the clip
    range the two are equal): only there does the ratio's gradient reach the loss."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    return torch.minimum(unclipped, clipped), unclipped <= clipped


@dataclass
class PolicyTerms:
    loss: torch.Tensor  # -E[min(r A, clip(r) A)]
    entropy: torch.Tensor  # E[H(pi(.|s))]
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor
    head_gradients: list[torch.Tensor]  # d loss / d (mean, and raw log-std if a head)
    raw_log_std_gradient: torch.Tensor  # d loss / d raw log-std, per sample: (batch, act)


@torch.no_grad()
def policy_gradients(
    actor: GaussianActor,
    mean: torch.Tensor,
    raw_log_std: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    entropy_coef: float,
) -> PolicyTerms:
    """The clipped surrogate minus entropy_coef times the entropy, and its gradient with
    respect to the actor's mean and raw log-std, for a minibatch of B samples.

    With z = (a - mean) / std and log pi = sum(-z^2 / 2 - log std - log(2 pi) / 2):
        d log pi / d mean = z / std,    d log pi / d log std = z^2 - 1,
        d loss / d log pi = -A r / B where the unclipped term is taken, else 0,
        d (-entropy_coef * E[H]) / d log std = -entropy_coef / B,
    and log std = min + (max - min) (tanh(raw) + 1) / 2 (GaussianActor.log_std_of_tanh) gives
        d log std / d raw = (max - min) (1 - tanh(raw)^2) / 2.
    tests/test_ppo.py checks all of it against autograd on the module's own loss."""
    batch = advantages.shape[0]
    tanh_raw = torch.tanh(raw_log_std)
    half_span = 0.5 * (actor.log_std_max - actor.log_std_min)
    log_std = actor.log_std_of_tanh(tanh_raw)
    inverse_std = torch.exp(-log_std)
    z = (actions - mean) * inverse_std
    log_ratio = standardized_log_prob(z, log_std) - old_log_probs
    ratio = log_ratio.exp()
    surrogate, unclipped_taken = _surrogate_and_mask(ratio, advantages, clip_range)
    entropy = gaussian_entropy(log_std).mean()

    log_prob_gradient = (advantages * ratio * unclipped_taken).mul_(-1.0 / batch).unsqueeze(-1)
    mean_gradient = log_prob_gradient * z * inverse_std
    log_std_gradient = log_prob_gradient * (z.pow(2) - 1.0) - entropy_coef / batch
    raw_gradient = log_std_gradient * (half_span * (1.0 - tanh_raw.pow(2)))
    head_gradients = [mean_gradient, raw_gradient] if actor.state_dependent_std else [mean_gradient]
    return PolicyTerms(
        loss=-surrogate.mean(),
        entropy=entropy,
        # The low-variance KL estimator E[(r - 1) - log r] (Schulman's k3).
        approx_kl=((ratio - 1.0) - log_ratio).mean(),
        clip_fraction=((ratio - 1.0).abs() > clip_range).float().mean(),
        head_gradients=head_gradients,
        raw_log_std_gradient=raw_gradient,
    )


@torch.no_grad()
def value_loss_and_gradient(
    values: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor, clip_value
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 E[(V - R)^2], or with `clip_value` 0.5 E[max((V - R)^2, (V_clipped - R)^2)]
    with V_clipped = V_old + clip(V - V_old, -c, c); and its gradient with respect to V.
    Where the clipped term is the larger, V is outside the clip range (inside it the two
    terms are equal), so no gradient reaches V there."""
    batch = values.shape[0]
    error = values - returns
    if clip_value is None:
        return 0.5 * error.pow(2).mean(), error / batch
    clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    unclipped_loss, clipped_loss = error.pow(2), (clipped - returns).pow(2)
    loss = 0.5 * torch.maximum(unclipped_loss, clipped_loss).mean()
    return loss, error * (unclipped_loss >= clipped_loss) / batch


class PPO(OnPolicyAlgorithm):
    def __init__(self, config, observation_size, action_size, num_envs, device, seed):
        super().__init__(config, observation_size, action_size, num_envs, device, seed)
        self.section: PPOSection = config.ppo
        # Both networks' parameters in one flat vector, and their gradient in another:
        # the global norm clip and the Adam step are one op each (algos/optim.py), and
        # the update writes the gradients there itself (ExplicitBackprop, below).
        self.flat_parameters = flatten_parameters_(self.actor, self.critic)
        self.gradient = torch.zeros_like(self.flat_parameters)
        self.actor_pass = ExplicitBackprop(self.actor, config.policy.activation, self.gradient)
        self.critic_pass = ExplicitBackprop(self.critic, config.critic.activation, self.gradient)
        self.optimizer = FlatAdam(self.flat_parameters, lr=self.section.learning_rate, eps=1e-5)

    def update(self, progress: float) -> dict[str, float]:
        cfg = self.section
        batch = self.finish_rollout()
        learning_rate = cfg.learning_rate * (1.0 - progress if cfg.lr_schedule == "linear" else 1.0)
        self.optimizer.lr = max(learning_rate, 1e-8)

        minibatch = min(cfg.minibatch_size, batch.size)
        stats: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        }
        stopped_early = False
        for _epoch in range(cfg.epochs):
            order = torch.randperm(batch.size, generator=self.generator).to(self.device)
            for start in range(0, batch.size - minibatch + 1, minibatch):
                index = order[start : start + minibatch]
                observations, actions = batch.observations[index], batch.actions[index]
                advantages = batch.advantages[index]
                if cfg.normalize_advantages:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # Policy: the clipped surrogate, and its gradient with respect to the
                # actor's outputs (the mean and the raw log-std, see policy_gradients).
                policy = self.actor_pass.forward(observations)
                mean = policy[0]
                raw_log_std = policy[1] if self.actor.state_dependent_std else self.raw_log_std
                policy_terms = policy_gradients(
                    self.actor, mean, raw_log_std, actions, batch.log_probs[index], advantages,
                    cfg.clip_range, cfg.entropy_coef,
                )  # fmt: skip
                self.actor_pass.backward(policy_terms.head_gradients)
                if not self.actor.state_dependent_std:
                    self.actor_pass.gradient_of(self.actor.log_std_raw).copy_(
                        policy_terms.raw_log_std_gradient.sum(0)
                    )

                # Value: regression to the GAE returns, optionally clipped around the old
                # values; its gradient with respect to V(s), weighted by value_coef.
                values = self.critic_pass.forward(observations)[0].squeeze(-1)
                value_loss, value_gradient = value_loss_and_gradient(
                    values, batch.returns[index], batch.values[index], cfg.clip_value
                )
                self.critic_pass.backward([(value_gradient * cfg.value_coef).unsqueeze(-1)])

                # loss = policy_loss + value_coef * value_loss - entropy_coef * entropy,
                # whose gradient the two passes have just written into self.gradient.
                clip_grad_norm_flat_(self.gradient, cfg.max_grad_norm)
                self.optimizer.step(self.gradient)

                for key, value in (
                    ("policy_loss", policy_terms.loss),
                    ("value_loss", value_loss),
                    ("entropy", policy_terms.entropy),
                    ("approx_kl", policy_terms.approx_kl),
                    ("clip_fraction", policy_terms.clip_fraction),
                ):
                    stats[key].append(value)
            if cfg.target_kl is not None and float(stats["approx_kl"][-1]) > cfg.target_kl:
                stopped_early = True
                break

        self.updates += 1
        self.sync_acting_networks()
        # One device-to-host transfer for all the logged numbers.
        summary = {k: float(torch.stack(v).mean()) for k, v in stats.items()}
        returns, values = batch.returns, batch.values
        explained = 1.0 - float((returns - values).var() / (returns.var() + 1e-8))
        return {
            **summary,
            "explained_variance": explained,
            "learning_rate": self.optimizer.lr,
            "policy_std": self.policy_std(),
            "epochs_stopped_early": float(stopped_early),
        }

    @property
    def raw_log_std(self) -> torch.Tensor:
        """The state-independent raw log-std, detached (its gradient is written by hand)."""
        return self.actor.log_std_raw.detach()

    def optimizers(self) -> dict[str, FlatAdam]:
        return {"optimizer": self.optimizer}
