"""Flat parameter vectors and the optimiser that steps on them (DDPG, PPO).

With a network's parameters moved into one contiguous vector, and its gradient written
into one vector of the same layout (iiwa_rl.nn.ExplicitBackprop), an Adam step, a
gradient-norm clip or a Polyak average is one op on one tensor instead of a few per
weight and bias: at these networks' sizes the per-op overhead, not the arithmetic, is
what a gradient step costs on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

# Where each parameter starts in a flat vector: a multiple of 16 entries (64 bytes in
# float32). A matrix product's kernel can depend on its operands' alignment, so a weight
# at an odd offset computed differently, in the last bits, from a copy of it in its own
# aligned tensor (a policy snapshot, an exported actor): the same actor gave other actions.
_ALIGNMENT = 16


def _aligned_offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Where tensors of these sizes start in a flat vector, in order, and its length."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // _ALIGNMENT) * _ALIGNMENT
    return offsets, end


def flatten_parameters_(*modules: nn.Module) -> torch.Tensor:
    """Move the modules' parameters, in order, into one contiguous vector, in place, and
    return it: the parameters become views into it, each starting on an aligned offset
    (the entries between them are zeros that no gradient reaches, so they stay zeros)."""
    params = [p for module in modules for p in module.parameters()]
    offsets, end = _aligned_offsets([p.numel() for p in params])
    first = params[0].detach()
    flat = torch.zeros(end, dtype=first.dtype, device=first.device)
    for p, offset in zip(params, offsets):
        flat[offset : offset + p.numel()] = p.detach().reshape(-1)
        p.data = flat[offset : offset + p.numel()].view_as(p)
    return flat


@torch.no_grad()
def clip_grad_norm_flat_(gradient: torch.Tensor, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ on one flat gradient: scale it by
    min(1, max_norm / (norm + 1e-6)), without a host synchronisation; returns the norm."""
    norm = torch.linalg.vector_norm(gradient)
    gradient.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


class FlatAdam:
    """Adam (Kingma and Ba, 2015) on a flat parameter vector, torch.optim.Adam's
    arithmetic without weight decay, and no `.grad` bookkeeping (the gradient is one flat
    vector in the same layout).

    The step is one call of the fused kernel that torch.optim.Adam(fused=True) runs
    (CPU and CUDA): one pass over the vector instead of the unfused update's six ops,
    each of which allocates or sweeps it again (for SB3's 400 x 300 critic, 43 against
    111 us a step on one thread), and without the optimiser's per-group Python."""

    def __init__(
        self,
        flat_params: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params, self.lr, self.betas, self.eps = flat_params, lr, betas, eps
        self.exp_avg = torch.zeros_like(flat_params)
        self.exp_avg_sq = torch.zeros_like(flat_params)
        self.steps = 0
        # The kernel reads the step count (for the bias corrections) from a tensor.
        self._step_tensor = torch.zeros((), device=flat_params.device)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """Apply one step with the flat gradient of the parameter vector."""
        beta1, beta2 = self.betas
        self.steps += 1
        self._step_tensor += 1.0
        torch._fused_adam_(
            [self.params],
            [grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self._step_tensor],
            amsgrad=False,
            lr=self.lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
        )

    def state_dict(self) -> dict:
        return {
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps,
            "lr": self.lr,
        }

    def load_state_dict(self, state: dict) -> None:
        """Our own state, or a torch.optim.Adam's over the same parameters in the same
        order (a checkpoint of PPO from before its optimiser was flat)."""
        if "param_groups" in state:
            state = _flat_adam_state_of_torch_adam(state)
        self.exp_avg.copy_(torch.as_tensor(state["exp_avg"]))  # a tensor, or 0 (no step yet)
        self.exp_avg_sq.copy_(torch.as_tensor(state["exp_avg_sq"]))
        self.steps, self.lr = int(state["steps"]), float(state["lr"])
        self._step_tensor.fill_(float(self.steps))


def _flat_adam_state_of_torch_adam(state: dict) -> dict:
    (group,) = state["param_groups"]
    per_parameter = [state["state"].get(index) for index in group["params"]]
    if all(entry is None for entry in per_parameter):  # saved before its first step
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0, "steps": 0, "lr": group["lr"]}
    if any(entry is None for entry in per_parameter):
        raise ValueError("a torch.optim.Adam state with moments for only some parameters")
    offsets, length = _aligned_offsets([entry["exp_avg"].numel() for entry in per_parameter])
    moments = {}
    for key in ("exp_avg", "exp_avg_sq"):
        flat = torch.zeros(length)
        for offset, entry in zip(offsets, per_parameter):
            flat[offset : offset + entry[key].numel()] = entry[key].reshape(-1)
        moments[key] = flat
    return {**moments, "steps": int(float(per_parameter[0]["step"])), "lr": group["lr"]}
