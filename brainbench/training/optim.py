"""Optimisers and learning-rate schedules the papers used that torch does not ship."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RMSPropNesterov(torch.optim.Optimizer):
    """RMSProp combined with normalised Nesterov momentum, as DeepMedic trains (spec §3.5).

    The reference (``deepmedic/neuralnet/optimizers.py``) scales the RMS-normalised step by
    ``(1 - momentum)`` ("normalised momentum") and applies Nesterov's look-ahead::

        r ← ρ r + (1 − ρ) g²
        s ← lr · g / sqrt(r + ε)
        v ← μ v − (1 − μ) s
        θ ← θ + μ v − (1 − μ) s

    Args:
        lr: learning rate (paper: 1e-3).
        rho: decay of the squared-gradient average (paper: 0.9).
        eps: added under the square root (paper: 1e-4).
        momentum: Nesterov momentum μ (paper: 0.6).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        rho: float = 0.9,
        eps: float = 1e-4,
        momentum: float = 0.6,
    ):
        if lr <= 0 or not 0 <= rho < 1 or eps <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"invalid RMSPropNesterov settings lr={lr} rho={rho} eps={eps} momentum={momentum}")
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho, eps, mu = group["lr"], group["rho"], group["eps"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["square_avg"] = torch.zeros_like(param)
                    state["velocity"] = torch.zeros_like(param)
                square_avg, velocity = state["square_avg"], state["velocity"]
                square_avg.mul_(rho).addcmul_(param.grad, param.grad, value=1 - rho)
                scaled_step = param.grad / (square_avg + eps).sqrt() * (lr * (1 - mu))
                velocity.mul_(mu).sub_(scaled_step)
                param.add_(velocity, alpha=mu).sub_(scaled_step)
        return loss


def linear_decay(optimizer: torch.optim.Optimizer, end_factor: float = 0.01,
                 epochs: int = 20) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate falling linearly, stepped per epoch, from the optimiser's ``lr`` at epoch 0 to
    ``end_factor · lr`` at epoch ``epochs - 1``, then held: Pereira's 3e-3 → 3e-5 (spec §2.4)."""
    if not 0 < end_factor <= 1 or epochs < 1:
        raise ValueError(f"invalid linear_decay settings end_factor={end_factor} epochs={epochs}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 1 + (end_factor - 1) * min(1.0, epoch / max(1, epochs - 1)))
