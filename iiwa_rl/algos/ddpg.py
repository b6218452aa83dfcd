"""DDPG (Lillicrap et al., 2016), the update in one function.

    critic:  min (Q(s, a) - y)^2,   y = r + gamma * (1 - terminated) * Q'(s', mu'(s'))
    actor:   max Q(s, mu(s))
    targets: theta' <- (1 - tau) theta' + tau theta   (Polyak averaging)

Acting: uniform random actions for the first `warmup_steps` environment steps, then the
tanh actor plus Gaussian or Ornstein-Uhlenbeck noise (one process per environment),
whose std decays linearly from `noise_std` to `noise_final_std`. The executed (clipped)
action is what the replay stores.

Time limits: the replay stores the true successor (the final observation where an
episode ended) and `terminated` only, so a transition cut by a time limit still
bootstraps from Q'(s', mu'(s')): the episode would have gone on.

Update-to-data ratio: a transition the actor acted in earns `updates_per_step` gradient
steps; the warm-up's random-action transitions earn none (SB3's `learning_starts`), nor
do those before the replay holds a batch, so the first round after the warm-up is an
ordinary one, not a burst of every step owed for the warm-up's data.

Speed: every vector step brings N transitions; an update round runs the gradient steps
those transitions are owed, so the ratio does not depend on N while the per-round Python
and environment overheads are shared by N transitions. Inside a round everything stays
in torch on the training device, and the losses are summed there across rounds: the
host reads them once per metrics row (every `log_every_steps`), not once per round.
The gradients are written out (iiwa_rl.nn.ExplicitBackprop) instead of recorded by
autograd, straight into one flat vector per network that a fused Adam steps on
(iiwa_rl.algos.optim): a [64, 64] gradient step costs 350 instead of 752 us on one thread.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from iiwa_rl.algos.base import Algorithm, Transition
from iiwa_rl.algos.optim import FlatAdam, flatten_parameters_
from iiwa_rl.buffers import ReplayBuffer
from iiwa_rl.config import DDPGSection
from iiwa_rl.nn import ArrayForward, DeterministicActor, ExplicitBackprop, QCritic


@torch.no_grad()
def polyak_update(
    target: nn.Module | torch.Tensor, source: nn.Module | torch.Tensor, tau: float
) -> None:
    """target <- (1 - tau) * target + tau * source, for two modules of the same shape
    (parameter by parameter, in one multi-tensor op) or two flat parameter vectors."""
    if isinstance(target, torch.Tensor):
        target.lerp_(source, tau)
        return
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if len(target_params) != len(source_params):
        raise ValueError("polyak_update: target and source have different parameter lists")
    torch._foreach_lerp_(target_params, source_params, tau)


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """`start` at step 0, `end` from step `duration` on, linear in between."""
    if duration <= 0:
        return end
    fraction = min(max(step / duration, 0.0), 1.0)
    return start + fraction * (end - start)


class ExplorationNoise:
    """Per-environment action noise whose marginal std is `std` for both kinds.

    Ornstein-Uhlenbeck: x <- (1 - theta) x + std * sqrt(1 - (1 - theta)^2) * N(0, 1), i.e.
    an AR(1) process with unit time step whose stationary std is `std`, so the two kinds
    share one meaning of `noise_std`; its state restarts at 0 when an episode ends.
    """

    def __init__(self, kind: str, num_envs: int, action_size: int, theta: float, rng):
        self.kind, self.theta, self.rng = kind, theta, rng
        self.state = np.zeros((num_envs, action_size))

    def sample(self, std: float) -> np.ndarray:
        white = self.rng.standard_normal(self.state.shape)
        if self.kind == "gaussian":
            return std * white
        innovation = std * np.sqrt(1.0 - (1.0 - self.theta) ** 2)
        self.state = (1.0 - self.theta) * self.state + innovation * white
        return self.state.copy()

    def reset(self, done: np.ndarray) -> None:
        self.state[done] = 0.0


class _LossWindow:
    """Sums of the losses since the last metrics row, kept on the training device so a
    round adds to them without a host synchronisation."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset()

    def _reset(self) -> None:
        # critic loss, Q mean, actor loss; and how many of each went in
        self.sums = torch.zeros(3, device=self.device)
        self.critic_count = self.actor_count = 0

    def add_round(
        self,
        critic_losses: list[torch.Tensor],
        q_means: list[torch.Tensor],
        actor_losses: list[torch.Tensor],
    ) -> None:
        """One round's per-step values: a few ops per round, none per gradient step."""
        if not critic_losses:
            return
        zero = torch.zeros((), device=self.device)
        self.sums += torch.stack(
            [
                torch.stack(critic_losses).sum(),
                torch.stack(q_means).sum(),
                torch.stack(actor_losses).sum() if actor_losses else zero,
            ]
        )
        self.critic_count += len(critic_losses)
        self.actor_count += len(actor_losses)

    def means_and_reset(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.critic_count:
            critic, q, actor = self.sums.tolist()  # the one device-to-host transfer
            metrics.update(critic_loss=critic / self.critic_count, q_mean=q / self.critic_count)
            if self.actor_count:
                metrics["actor_loss"] = actor / self.actor_count
        self._reset()
        return metrics


class DDPG(Algorithm):
    def __init__(self, config, observation_size, action_size, num_envs, device, seed):
        super().__init__(config, observation_size, action_size, num_envs, device, seed)
        cfg: DDPGSection = config.ddpg
        self.section = cfg
        self.actor = DeterministicActor(observation_size, action_size, config.policy).to(device)
        self.critic = QCritic(observation_size, action_size, config.critic).to(device)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_flat = flatten_parameters_(self.actor)
        self.critic_flat = flatten_parameters_(self.critic)
        self.target_actor_flat = flatten_parameters_(self.target_actor)
        self.target_critic_flat = flatten_parameters_(self.target_critic)
        # The update runs the four networks through ExplicitBackprop (iiwa_rl/nn.py):
        # forward and backward written out on these parameters, the gradients landing in
        # one flat vector per trained network.
        self.actor_gradient = torch.zeros_like(self.actor_flat)
        self.critic_gradient = torch.zeros_like(self.critic_flat)
        self.actor_pass = ExplicitBackprop(
            self.actor, config.policy.activation, self.actor_gradient
        )
        self.critic_pass = ExplicitBackprop(
            self.critic, config.critic.activation, self.critic_gradient
        )
        self.target_actor_pass = ExplicitBackprop(self.target_actor, config.policy.activation, None)
        self.target_critic_pass = ExplicitBackprop(
            self.target_critic, config.critic.activation, None
        )
        # On the CPU, acting runs the actor's forward in numpy on its own weights
        # (nn.ArrayForward: cheaper between environment steps); on an accelerator the
        # actor's weights live there, and acting asks it.
        self.array_actor = (
            ArrayForward(self.actor, config.policy.activation) if device.type == "cpu" else None
        )
        # The critic's input is (observation, action): the actor's step needs the
        # gradient with respect to the action columns only.
        self.action_columns = slice(observation_size, observation_size + action_size)
        self.actor_optimizer = FlatAdam(self.actor_flat, lr=cfg.actor_learning_rate)
        self.critic_optimizer = FlatAdam(self.critic_flat, lr=cfg.critic_learning_rate)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.replay = ReplayBuffer(
            cfg.buffer_size, observation_size, action_size, device, self.generator
        )
        self.noise = ExplorationNoise(cfg.noise, num_envs, action_size, cfg.ou_theta, self.rng)
        self.env_steps = 0  # transitions observed
        self.vector_steps = 0
        self.gradient_steps = 0
        self.owed_updates = 0.0  # gradient steps earned by data but not yet run
        self._metrics_window = _LossWindow(device)
        self._next_report_step = 0  # env_steps at which update() next returns metrics

    # ------------------------------------------------------------------ acting
    def noise_std(self) -> float:
        cfg = self.section
        return linear_schedule(
            cfg.noise_std, cfg.noise_final_std, cfg.noise_decay_steps, self.env_steps
        )

    @torch.no_grad()
    def act(self, observations, deterministic=False):
        observations = np.asarray(observations, dtype=np.float32)
        if not deterministic and self.env_steps < self.section.warmup_steps:
            action = self.rng.uniform(-1.0, 1.0, (len(observations), self.action_size))
            action = action.astype(np.float32)
            return action, action, {}
        if self.array_actor is not None:
            action = np.tanh(self.array_actor(observations)[0])  # DeterministicActor's tanh
        else:
            action = self.actor(torch.from_numpy(observations).to(self.device)).cpu().numpy()
        if not deterministic:
            action = np.clip(action + self.noise.sample(self.noise_std()), -1.0, 1.0)
            action = action.astype(np.float32)
        return action, action, {}

    def observe(self, transition: Transition) -> None:
        # s' is the true successor and only a termination stops the bootstrap.
        self.replay.add(
            transition.observations,
            transition.actions,
            transition.rewards,
            transition.final_observations,
            transition.terminated,
        )
        # act() chose these actions from the same count: random ones earn no updates, nor
        # do any before the replay holds a batch (they would all run at once when it did).
        cfg = self.section
        if self.env_steps >= cfg.warmup_steps and self.replay.size >= cfg.batch_size:
            self.owed_updates += cfg.updates_per_step * len(transition.rewards)
        self.note_acted(transition.terminated | transition.truncated)
        self.vector_steps += 1

    def note_acted(self, done: np.ndarray) -> None:
        self.noise.reset(done)
        self.env_steps += len(done)  # the warm-up and the noise schedule count these

    def acting_state(self) -> dict:
        return {
            "actor": {key: value.cpu() for key, value in self.actor.state_dict().items()},
            "env_steps": self.env_steps,
        }

    def load_acting_state(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.env_steps = int(state["env_steps"])

    def ready_to_update(self) -> bool:
        cfg = self.section
        return (
            self.vector_steps % cfg.update_every == 0
            and self.owed_updates >= 1.0
            and self.replay.size >= cfg.batch_size
        )

    # ------------------------------------------------------------------ learning
    def update(self, progress: float) -> dict[str, float] | None:
        """Run the owed gradient steps; return the metrics averaged since the last report
        once `log_every_steps` environment steps have passed, else None."""
        cfg = self.section
        steps = int(self.owed_updates)
        self.owed_updates -= steps
        critic_losses, actor_losses, q_values = [], [], []
        batch_size = cfg.batch_size
        for _ in range(steps):
            batch = self.replay.sample(batch_size)
            observations, actions = batch["observations"], batch["actions"]

            # Critic: one-step TD target from the target networks, then the gradient of
            # mean (Q(s, a) - y)^2, which is 2 (Q - y) / batch at each output.
            next_observations = batch["next_observations"]
            next_mu = torch.tanh(self.target_actor_pass.forward(next_observations)[0])
            next_q = self.target_critic_pass.forward(next_observations, next_mu)[0].squeeze(-1)
            target = batch["rewards"] + cfg.gamma * (1.0 - batch["terminated"]) * next_q
            q = self.critic_pass.forward(observations, actions)[0].squeeze(-1)
            td_error = q - target
            critic_loss = td_error.pow(2).mean()
            self.critic_pass.backward([(td_error * (2.0 / batch_size)).unsqueeze(-1)])
            self.critic_optimizer.step(self.critic_gradient)
            self.gradient_steps += 1
            critic_losses.append(critic_loss)
            q_values.append(q.mean())

            if self.gradient_steps % cfg.policy_delay == 0:
                # Actor: ascend Q(s, mu(s)) through the just-updated critic: the loss
                # -mean Q has gradient -1 / batch at each output; back through the critic
                # to the action alone (not its weights), through mu's tanh, the actor.
                mu = torch.tanh(self.actor_pass.forward(observations)[0])
                q_of_mu = self.critic_pass.forward(observations, mu)[0]
                actor_losses.append(-q_of_mu.mean())
                grad_mu = self.critic_pass.backward(
                    [torch.full_like(q_of_mu, -1.0 / batch_size)],
                    weights=False,
                    input_columns=self.action_columns,
                )
                self.actor_pass.backward([torch.ops.aten.tanh_backward(grad_mu, mu)])
                self.actor_optimizer.step(self.actor_gradient)

                polyak_update(self.target_critic_flat, self.critic_flat, cfg.tau)
                polyak_update(self.target_actor_flat, self.actor_flat, cfg.tau)

        self._metrics_window.add_round(critic_losses, q_values, actor_losses)
        if self.env_steps < self._next_report_step:
            return None
        self._next_report_step = self.env_steps + cfg.log_every_steps
        return {
            "noise_std": self.noise_std(),
            "gradient_steps": float(self.gradient_steps),
            "replay_size": float(self.replay.size),
            **self._metrics_window.means_and_reset(),
        }

    def deterministic_actor(self) -> nn.Module:
        return self.actor

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_actor": self.target_actor.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "replay": self.replay.state_dict(),  # copies of the stored rows only
            "noise_state": self.noise.state.copy(),
            "counters": {
                "env_steps": self.env_steps,
                "vector_steps": self.vector_steps,
                "gradient_steps": self.gradient_steps,
                "owed_updates": self.owed_updates,
            },
            "generator": self.generator.get_state(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_actor.load_state_dict(state["target_actor"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        if state["noise_state"].shape == self.noise.state.shape:
            self.noise.state = np.array(state["noise_state"])
        counters = state["counters"]
        self.env_steps = int(counters["env_steps"])
        self.vector_steps = int(counters["vector_steps"])
        self.gradient_steps = int(counters["gradient_steps"])
        self.owed_updates = float(counters["owed_updates"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
