"""PPO-clip (Schulman et al., 2017), the update in one function.

    L(theta) = E[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ],  r_t = pi_theta(a|s) / pi_old(a|s)

maximised by minibatch Adam over a few epochs of each rollout, with a value loss, an
optional entropy bonus, advantage normalisation per minibatch, global gradient-norm
clipping, an optional early stop on the approximate KL, and a learning-rate schedule.
"""

from __future__ import annotations

import torch

from iiwa_rl.algos.base import OnPolicyAlgorithm
from iiwa_rl.config import PPOSection


def clipped_surrogate_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> torch.Tensor:
    """-E[min(r A, clip(r, 1 - eps, 1 + eps) A)]: the pessimistic bound, so moving the
    ratio beyond the clip range never improves the objective."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    return -torch.min(unclipped, clipped).mean()


class PPO(OnPolicyAlgorithm):
    def __init__(self, config, observation_size, action_size, num_envs, device, seed):
        super().__init__(config, observation_size, action_size, num_envs, device, seed)
        self.section: PPOSection = config.ppo
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        self.optimizer = torch.optim.Adam(params, lr=self.section.learning_rate, eps=1e-5)

    def update(self, progress: float) -> dict[str, float]:
        cfg = self.section
        batch = self.finish_rollout()
        learning_rate = cfg.learning_rate * (1.0 - progress if cfg.lr_schedule == "linear" else 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = max(learning_rate, 1e-8)

        minibatch = min(cfg.minibatch_size, batch.size)
        stats: dict[str, list[float]] = {
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

                # Policy: the clipped surrogate.
                log_probs, entropy = self.actor.log_prob_and_entropy(observations, actions)
                log_ratio = log_probs - batch.log_probs[index]
                ratio = log_ratio.exp()
                policy_loss = clipped_surrogate_loss(ratio, advantages, cfg.clip_range)

                # Value: regression to the GAE returns, optionally clipped around the old values.
                values = self.critic(observations)
                returns = batch.returns[index]
                if cfg.clip_value is None:
                    value_loss = 0.5 * (values - returns).pow(2).mean()
                else:
                    old = batch.values[index]
                    values_clipped = old + (values - old).clamp(-cfg.clip_value, cfg.clip_value)
                    value_loss = (
                        0.5
                        * torch.max(
                            (values - returns).pow(2), (values_clipped - returns).pow(2)
                        ).mean()
                    )

                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy.mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(
                    [p for group in self.optimizer.param_groups for p in group["params"]],
                    cfg.max_grad_norm,
                )
                self.optimizer.step()

                with torch.no_grad():
                    # The low-variance KL estimator E[(r - 1) - log r] (Schulman's k3).
                    approx_kl = ((ratio - 1.0) - log_ratio).mean()
                    clip_fraction = ((ratio - 1.0).abs() > cfg.clip_range).float().mean()
                for key, value in (
                    ("policy_loss", policy_loss),
                    ("value_loss", value_loss),
                    ("entropy", entropy.mean()),
                    ("approx_kl", approx_kl),
                    ("clip_fraction", clip_fraction),
                ):
                    stats[key].append(value.detach())
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
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "policy_std": self.policy_std(),
            "epochs_stopped_early": float(stopped_early),
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}
