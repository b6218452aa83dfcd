"""Networks: the Gaussian actor (PPO, TRPO), the deterministic actor (DDPG), critics.

The Gaussian actor has a mean head and a std head. The std is either one learned
parameter per action dimension (state-independent) or a second linear head on the shared
trunk (state-dependent). Its log is squashed smoothly into [min, max] with a tanh, so it
can neither collapse to 0 nor run off to infinity or NaN, and its gradient never dies at
a hard clamp.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from iiwa_rl.config import LogStdSection, NetworkSection

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
_LOG_2PI = math.log(2.0 * math.pi)


def mlp(input_size: int, spec: NetworkSection) -> tuple[nn.Sequential, int]:
    """The hidden layers of `spec` (without an output layer) and their output size."""
    layers: list[nn.Module] = []
    size = input_size
    for hidden in spec.hidden_sizes:
        layers += [nn.Linear(size, hidden), _ACTIVATIONS[spec.activation]()]
        size = hidden
    trunk = nn.Sequential(*layers)
    if spec.init == "orthogonal":
        for layer in trunk:
            if isinstance(layer, nn.Linear):
                init_linear(layer, gain=math.sqrt(2.0))
    return trunk, size


def through(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers(x)` without nn.Module.__call__'s hook dispatch per layer: the same
    computation, for about 5 us less a layer, which at 16 envs was a fifth of acting's
    cost for two 2 x 128 MLPs. The networks here register no hooks."""
    for layer in layers:
        x = layer.forward(x)
    return x


def init_linear(layer: nn.Linear, gain: float) -> None:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)


class GaussianActor(nn.Module):
    """pi(a|s) = N(mean(s), diag(std^2)). Actions are sampled unbounded; the environment
    clips them to [-1, 1] (see algos/ppo.py for why the unclipped sample is stored)."""

    def __init__(self, observation_size: int, action_size: int, spec: NetworkSection):
        super().__init__()
        self.trunk, features = mlp(observation_size, spec)
        self.mean_head = nn.Linear(features, action_size)
        log_std: LogStdSection = spec.log_std
        self.log_std_min, self.log_std_max = log_std.min, log_std.max
        # The raw value whose squashed log-std equals the configured initial value.
        fraction = (log_std.init - log_std.min) / (log_std.max - log_std.min)
        raw_init = math.atanh(2.0 * fraction - 1.0)
        self.state_dependent_std = log_std.mode == "state_dependent"
        if self.state_dependent_std:
            self.log_std_head = nn.Linear(features, action_size)
            init_linear(self.log_std_head, gain=0.01)
            nn.init.constant_(self.log_std_head.bias, raw_init)
        else:
            self.log_std_raw = nn.Parameter(torch.full((action_size,), raw_init))
        if spec.init == "orthogonal":
            # Small initial means: early actions are the noise, not a random network bias.
            init_linear(self.mean_head, gain=0.01)

    def _squash(self, raw: torch.Tensor) -> torch.Tensor:
        return self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (
            torch.tanh(raw) + 1
        )

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of the action distribution."""
        features = through(self.trunk, observation)
        mean = self.mean_head.forward(features)
        if self.state_dependent_std:
            log_std = self._squash(self.log_std_head.forward(features))
        else:
            log_std = self._squash(self.log_std_raw).expand_as(mean)
        return mean, log_std

    def sample(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.forward(observation)
        action = mean + torch.randn_like(mean) * log_std.exp()
        return action, gaussian_log_prob(action, mean, log_std)

    def log_prob_and_entropy(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self(observation)
        return gaussian_log_prob(action, mean, log_std), gaussian_entropy(log_std)

    def deterministic(self, observation: torch.Tensor) -> torch.Tensor:
        """The mean action clipped to the action bounds: what is evaluated and exported."""
        return self(observation)[0].clamp(-1.0, 1.0)


def gaussian_log_prob(
    action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log N(action; mean, exp(log_std)^2), summed over action dimensions."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)


class ValueCritic(nn.Module):
    """V(s)."""

    def __init__(self, observation_size: int, spec: NetworkSection):
        super().__init__()
        self.trunk, features = mlp(observation_size, spec)
        self.head = nn.Linear(features, 1)
        if spec.init == "orthogonal":
            init_linear(self.head, gain=1.0)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.head.forward(through(self.trunk, observation)).squeeze(-1)


class DeterministicActor(nn.Module):
    """mu(s) = tanh(...): already inside the [-1, 1] action bounds."""

    def __init__(self, observation_size: int, action_size: int, spec: NetworkSection):
        super().__init__()
        self.trunk, features = mlp(observation_size, spec)
        self.head = nn.Linear(features, action_size)
        if spec.init == "orthogonal":
            init_linear(self.head, gain=0.01)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.trunk(observation)))

    def deterministic(self, observation: torch.Tensor) -> torch.Tensor:
        return self(observation)


class QCritic(nn.Module):
    """Q(s, a)."""

    def __init__(self, observation_size: int, action_size: int, spec: NetworkSection):
        super().__init__()
        self.trunk, features = mlp(observation_size + action_size, spec)
        self.head = nn.Linear(features, 1)
        if spec.init == "orthogonal":
            init_linear(self.head, gain=1.0)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(torch.cat([observation, action], dim=-1))).squeeze(-1)


# The derivative of each activation, from its input `pre` and output `post`, with the
# kernels autograd itself runs for them: the explicit backward below gives autograd's
# gradients bit for bit (tests/test_ddpg.py).
# tanh's and relu's derivatives need only the output, so they overwrite their input and
# save an allocation per layer; elu's and silu's need the input kept.
_ACTIVATION_FORWARD = {
    "tanh": torch.tanh_,
    "relu": torch.relu_,
    "elu": functional.elu,
    "silu": functional.silu,
}
_ACTIVATION_BACKWARD = {
    "tanh": lambda grad, pre, post: torch.ops.aten.tanh_backward(grad, post),
    "relu": lambda grad, pre, post: torch.ops.aten.threshold_backward(grad, post, 0),
    "elu": lambda grad, pre, post: torch.ops.aten.elu_backward(grad, 1.0, 1, 1, False, pre),
    "silu": lambda grad, pre, post: torch.ops.aten.silu_backward(grad, pre),
}


class ExplicitBackprop:
    """A DeterministicActor's or QCritic's forward and backward written out as matrix
    products on the module's own parameters, for DDPG's update.

    Why not autograd: at DDPG's usual sizes a gradient step is some forty small products
    and elementwise ops, and on a CPU recording and replaying autograd's graph costs more
    than they do (a 2 x 64 critic's forward and backward: 152 us with autograd, 100 us
    written out, one thread). Written out, the backward also puts the weight gradients
    straight into one flat vector in the parameters' order, the layout the flat Adam
    steps on, and computes only the input gradients asked for.

    `forward` keeps each layer's input and activation; `backward` consumes the latest
    forward. The network's output activation is tanh for the actor and none for the
    critic, whose (batch, 1) output is squeezed to (batch,) as the module's is."""

    def __init__(self, network: nn.Module, activation: str, gradient: torch.Tensor | None):
        layers = [m for m in network.trunk if isinstance(m, nn.Linear)] + [network.head]
        # Detached views of the parameters' storage: they follow every in-place update
        # (the optimiser's, a Polyak average, load_state_dict) and record no graph.
        self.weights = [layer.weight.detach() for layer in layers]
        self.transposed_weights = [weight.t() for weight in self.weights]
        self.biases = [layer.bias.detach() for layer in layers]
        self.hidden_forward = _ACTIVATION_FORWARD[activation]
        self.hidden_backward = _ACTIVATION_BACKWARD[activation]
        self.tanh_output = isinstance(network, DeterministicActor)
        self.gradient = gradient
        self.weight_gradients: list[tuple[torch.Tensor, torch.Tensor]] = []
        if gradient is not None:  # views of `gradient`, laid out as network.parameters()
            views, offset = {}, 0
            for parameter in network.parameters():
                size = parameter.numel()
                views[parameter] = gradient[offset : offset + size].view_as(parameter)
                offset += size
            if offset != gradient.numel():
                raise ValueError(f"gradient has {gradient.numel()} entries, the network {offset}")
            self.weight_gradients = [(views[m.weight], views[m.bias]) for m in layers]
        self._inputs: list[torch.Tensor] = []
        self._pre: list[torch.Tensor] = []
        self._post: list[torch.Tensor] = []

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The network's output for its inputs (a critic's: observations, actions)."""
        x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
        saved_inputs, pre, post = [], [], []
        last = len(self.weights) - 1
        for index, (bias, transposed) in enumerate(zip(self.biases, self.transposed_weights)):
            saved_inputs.append(x)
            z = torch.addmm(bias, x, transposed)
            pre.append(z)  # tanh and relu overwrite it: their derivatives do not read it
            if index < last:
                x = self.hidden_forward(z)
            else:
                x = torch.tanh(z) if self.tanh_output else z
            post.append(x)
        self._inputs, self._pre, self._post = saved_inputs, pre, post
        return x if self.tanh_output else x.squeeze(-1)

    def backward(
        self, grad_output: torch.Tensor, weights: bool = True, input_columns: slice | None = None
    ) -> torch.Tensor | None:
        """Back through the latest forward from the loss's gradient with respect to its
        output: with `weights`, write the parameters' gradients into `gradient`; with
        `input_columns`, return the gradient with respect to those columns of the input
        (a critic's action), else None."""
        if weights and self.gradient is None:
            raise ValueError("this network was set up without a gradient vector")
        last = len(self.weights) - 1
        if self.tanh_output:
            grad = torch.ops.aten.tanh_backward(grad_output, self._post[last])
        else:
            grad = grad_output.unsqueeze(-1)
        for index in range(last, -1, -1):
            if index < last:
                grad = self.hidden_backward(grad, self._pre[index], self._post[index])
            if weights:
                weight_gradient, bias_gradient = self.weight_gradients[index]
                torch.mm(grad.t(), self._inputs[index], out=weight_gradient)
                torch.sum(grad, 0, out=bias_gradient)
            if index > 0:
                grad = torch.mm(grad, self.weights[index])
            elif input_columns is not None:
                return torch.mm(grad, self.weights[0][:, input_columns])
        return None
