"""Networks: the Gaussian actor (PPO, TRPO), the deterministic actor (DDPG), critics.

The Gaussian actor has a mean head and a std head. The std is either one learned
parameter per action dimension (state-independent) or a second linear head on the shared
trunk (state-dependent). Its log is squashed smoothly into [min, max] with a tanh, so it
can neither collapse to 0 nor run off to infinity or NaN, and its gradient never dies at
a hard clamp.
"""

from __future__ import annotations

import math

import numpy as np
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
    """pi(a|s) = N(mean(s), diag(std^2)). Actions are sampled unbounded (in acting, by
    `ArrayGaussianActor` below); the environment clips them to [-1, 1] (see
    algos/base.py, OnPolicyAlgorithm, for why the unclipped sample is stored)."""

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
        return self.log_std_of_tanh(torch.tanh(raw))

    def log_std_of_tanh(self, tanh_raw: torch.Tensor) -> torch.Tensor:
        """The squashed log-std from tanh(raw) (PPO's written-out gradient keeps the tanh
        for its derivative)."""
        return self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (tanh_raw + 1)

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of the action distribution."""
        features = through(self.trunk, observation)
        mean = self.mean_head.forward(features)
        if self.state_dependent_std:
            log_std = self._squash(self.log_std_head.forward(features))
        else:
            log_std = self._squash(self.log_std_raw).expand_as(mean)
        return mean, log_std

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
    return standardized_log_prob((action - mean) * torch.exp(-log_std), log_std)


def standardized_log_prob(z: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """`gaussian_log_prob` from z = (action - mean) / std, for a caller that keeps z."""
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
# kernels autograd itself runs for them (tests/test_ddpg.py and tests/test_ppo.py hold the
# explicit backward below to autograd's gradients).
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


def linear_layers(network: nn.Module) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """A network's hidden layers and the linear heads that read its features, in order
    (a GaussianActor's: the mean head, then the log-std head if the std is state-dependent)."""
    hidden = [m for m in network.trunk if isinstance(m, nn.Linear)]
    if isinstance(network, GaussianActor):
        heads = [network.mean_head]
        if network.state_dependent_std:
            heads.append(network.log_std_head)
    else:
        heads = [network.head]
    return hidden, heads


class ExplicitBackprop:
    """A network's forward and backward written out as matrix products on the module's
    own parameters: the trunk of hidden layers and the linear heads reading its features
    (DeterministicActor, QCritic, ValueCritic: `head`; GaussianActor: `mean_head`, and
    `log_std_head` with a state-dependent std). What the heads' outputs become (a tanh, a
    squeeze, the std's squash) is the caller's, as is its derivative.

    Why not autograd: at these sizes a gradient step is a few dozen small products and
    elementwise ops, and on a CPU recording and replaying autograd's graph costs more than
    they do (with this and the flat Adam, a DDPG gradient step of two 2 x 64 networks
    went from 752 to 350 us, the reach's PPO update from 67 to 34 ms, one thread; see the
    algorithms' docstrings). Written out, the backward also puts the weight gradients straight
    into one flat vector laid out as the parameters are (`flatten_parameters_`), the
    vector the flat Adam steps on, and computes only the input gradients asked for.

    `forward` keeps each layer's input and activation; `backward` consumes the latest
    forward. The parameters are read through detached views of their storage, so the
    passes follow every in-place update (an optimiser's, a Polyak average,
    load_state_dict) and record no graph."""

    def __init__(self, network: nn.Module, activation: str, gradient: torch.Tensor | None):
        hidden, heads = linear_layers(network)
        self.hidden_weights = [layer.weight.detach() for layer in hidden]
        self.hidden_transposed = [weight.t() for weight in self.hidden_weights]
        self.hidden_biases = [layer.bias.detach() for layer in hidden]
        self.head_weights = [head.weight.detach() for head in heads]
        self.head_transposed = [weight.t() for weight in self.head_weights]
        self.head_biases = [head.bias.detach() for head in heads]
        self.hidden_forward = _ACTIVATION_FORWARD[activation]
        self.hidden_backward = _ACTIVATION_BACKWARD[activation]
        self.gradient = gradient
        self._views: dict[nn.Parameter, torch.Tensor] = {}
        if gradient is not None:
            # `gradient` is laid out as the flat vector the parameters are views of
            # (algos/optim.py flatten_parameters_): each one's gradient sits at its offset.
            for parameter in network.parameters():
                start, size = parameter.storage_offset(), parameter.numel()
                if not parameter.is_contiguous() or start + size > gradient.numel():
                    raise ValueError("the network's parameters are not views of a flat vector")
                self._views[parameter] = gradient[start : start + size].view_as(parameter)
            self.hidden_gradients = [(self._views[m.weight], self._views[m.bias]) for m in hidden]
            self.head_gradients = [(self._views[m.weight], self._views[m.bias]) for m in heads]
        self._inputs: list[torch.Tensor] = []
        self._pre: list[torch.Tensor] = []
        self._post: list[torch.Tensor] = []

    def gradient_of(self, parameter: nn.Parameter) -> torch.Tensor:
        """The view of `gradient` that holds `parameter`'s gradient (for a parameter
        outside the layers, a Gaussian actor's state-independent log-std)."""
        return self._views[parameter]

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Each head's output, (batch, size), for the inputs (a critic's: observations,
        actions)."""
        x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
        saved_inputs, pre, post = [], [], []
        for bias, transposed in zip(self.hidden_biases, self.hidden_transposed):
            saved_inputs.append(x)
            z = torch.addmm(bias, x, transposed)
            pre.append(z)  # tanh and relu overwrite it: their derivatives do not read it
            x = self.hidden_forward(z)
            post.append(x)
        self._inputs, self._pre, self._post = saved_inputs, pre, post
        return [
            torch.addmm(bias, x, transposed)
            for bias, transposed in zip(self.head_biases, self.head_transposed)
        ]

    def backward(
        self,
        head_gradients: list[torch.Tensor],
        weights: bool = True,
        input_columns: slice | None = None,
    ) -> torch.Tensor | None:
        """Back through the latest forward from the loss's gradient with respect to each
        head's output: with `weights`, write the layers' gradients into `gradient`; with
        `input_columns`, return the gradient with respect to those columns of the input
        (a critic's action), else None."""
        if weights and self.gradient is None:
            raise ValueError("this network was set up without a gradient vector")
        features = self._post[-1]
        grad = None
        for index, head_gradient in enumerate(head_gradients):
            if weights:
                weight_gradient, bias_gradient = self.head_gradients[index]
                torch.mm(head_gradient.t(), features, out=weight_gradient)
                torch.sum(head_gradient, 0, out=bias_gradient)
            into_features = torch.mm(head_gradient, self.head_weights[index])
            grad = into_features if grad is None else grad.add_(into_features)
        for index in range(len(self.hidden_weights) - 1, -1, -1):
            grad = self.hidden_backward(grad, self._pre[index], self._post[index])
            if weights:
                weight_gradient, bias_gradient = self.hidden_gradients[index]
                torch.mm(grad.t(), self._inputs[index], out=weight_gradient)
                torch.sum(grad, 0, out=bias_gradient)
            if index > 0:
                grad = torch.mm(grad, self.hidden_weights[index])
            elif input_columns is not None:
                return torch.mm(grad, self.hidden_weights[0][:, input_columns])
        return None


# ------------------------------------------------------------------ acting in numpy
# In place where the derivative-free forward allows it; float32 in, float32 out.
_ARRAY_ACTIVATIONS = {
    "tanh": lambda x: np.tanh(x, out=x),
    "relu": lambda x: np.maximum(x, 0.0, out=x),
    "elu": lambda x: np.where(x > 0.0, x, np.expm1(x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
}


class ArrayForward:
    """A network's forward (trunk and linear heads, as `ExplicitBackprop.forward`) in
    numpy, on views of the module's own CPU parameters: what acting runs.

    Why numpy: acting runs once per vector step, right after the environments stepped,
    and by then PyBullet has pushed torch's deep per-op dispatch out of the CPU's caches.
    For 16 reach observations through two 2 x 128 tanh networks, acting took 280 us in
    torch and 108 us in numpy there (115 and 57 us when run in a tight loop;
    benchmarks/RESULTS.md, "Training speed, tenth part"). The products are the same
    float32 products, rounded by another BLAS: outputs agree with torch's to ~1e-7.

    The views follow every in-place change of the parameters (an optimiser step,
    load_state_dict); if a parameter's storage is replaced (flatten_parameters_), the
    next call binds the new one."""

    def __init__(self, network: nn.Module, activation: str):
        self._hidden_layers, self._head_layers = linear_layers(network)
        self._parameters = [
            parameter
            for layer in (*self._hidden_layers, *self._head_layers)
            for parameter in (layer.weight, layer.bias)
        ]
        self._activation = _ARRAY_ACTIVATIONS[activation]
        self._storage: list[int] = []

    def _bind(self) -> None:
        def arrays(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
            # x @ W.T: numpy hands the transposed view to BLAS as is, without a copy.
            return layer.weight.detach().numpy().T, layer.bias.detach().numpy()

        self._hidden = [arrays(layer) for layer in self._hidden_layers]
        self._heads = [arrays(layer) for layer in self._head_layers]
        self._storage = [parameter.data_ptr() for parameter in self._parameters]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Each head's output, (batch, size), for float32 inputs (batch, features)."""
        if [parameter.data_ptr() for parameter in self._parameters] != self._storage:
            self._bind()
        for weight_t, bias in self._hidden:
            x = x @ weight_t
            x += bias
            x = self._activation(x)
        return [x @ weight_t + bias for weight_t, bias in self._heads]


class ArrayGaussianActor:
    """Sampling from a `GaussianActor`'s distribution in numpy (see `ArrayForward`), with
    a numpy generator: what on-policy acting runs."""

    def __init__(self, actor: GaussianActor, activation: str):
        self.actor = actor
        self.forward = ArrayForward(actor, activation)
        self._half_span = 0.5 * (actor.log_std_max - actor.log_std_min)

    def sample(self, observations: np.ndarray, rng: np.random.Generator):
        """(action, its log-probability) per observation, float32."""
        outputs = self.forward(observations)
        mean = outputs[0]
        actor = self.actor
        raw = outputs[1] if actor.state_dependent_std else actor.log_std_raw.detach().numpy()
        log_std = actor.log_std_min + self._half_span * (np.tanh(raw) + 1.0)
        noise = rng.standard_normal(mean.shape, dtype=np.float32)
        action = mean + noise * np.exp(log_std)
        # As gaussian_log_prob computes it, so the update's first ratio is 1 to rounding.
        z = (action - mean) * np.exp(-log_std)
        log_prob = (-0.5 * z * z - log_std - 0.5 * _LOG_2PI).sum(-1)
        return action, log_prob
