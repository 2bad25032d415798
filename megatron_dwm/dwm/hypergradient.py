"""The finite-difference outer step (DESIGN.md section 4), steps 3 to 6.

After the LLM's step ``theta_{t+1} = Opt(theta_t, grad (1/n) sum_i w_i l_i)``, the gradient of the
validation loss with respect to each weight is approximated by

    v    = grad L_V(theta_{t+1})                       (one forward+backward on the validation batch)
    d    = P * v                                       (P: Adam's preconditioner, or 1)
    eps  = r / ||d||
    g_i  = -(eta_t / n) (l_i(theta_{t+1} + eps d) - l_i(theta_{t+1} - eps d)) / (2 eps)

from two forward-only passes over the training batch; theta_{t+1} is then restored bit-exactly
from a copy. Two approximations, both ours: l_i's gradient is taken at theta_{t+1} instead of
theta_t, and the preconditioner is frozen over the step.

The LLM is reached through :class:`BilevelModel`, so the same function serves megatron-core's
pipeline (the trainer) and a plain autograd model (the fidelity test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


class BilevelModel(Protocol):
    """What the outer step needs from the LLM."""

    def parameters(self) -> Sequence[torch.nn.Parameter]:
        """This rank's trainable parameters, in a fixed order."""

    def validation_gradient(self) -> Sequence[torch.Tensor]:
        """Forward+backward of the validation loss at the current parameters: v, one tensor per parameter
        (already reduced over data-parallel ranks)."""

    def preconditioner(self, index: int, gradient: torch.Tensor) -> torch.Tensor | float:
        """P for parameter `index` (a tensor of its shape, or 1.0), given its validation gradient v."""

    def global_norm(self, tensors: Sequence[torch.Tensor]) -> float:
        """The 2-norm of the whole model's `tensors` (summed over model-parallel ranks, each value once)."""

    def per_sample_losses(self) -> torch.Tensor | None:
        """Forward-only: l_i of every sample of the training batch at the current parameters, [n]
        (None on ranks that hold no loss): the terms of the objective (1/n) sum_i w_i l_i the LLM's step
        minimised (under a per-token loss, each sample's loss scaled by its share of the batch's tokens)."""


@dataclass(frozen=True)
class FiniteDifference:
    hypergradient: torch.Tensor | None  # g [n] (None on ranks that hold no loss, or when not finite)
    epsilon: float
    direction_norm: float
    finite: bool
    # The finite difference's resolution: how much g_i moves when l_i^+ or l_i^- moves by one unit in
    # the last place of the loss's dtype (the largest over the batch). Two computations of the same
    # hypergradient whose parameters differ only in their last bits can differ by a few of these.
    resolution: float = math.nan


@torch.no_grad()
def _set_parameters(parameters, base, direction, scale: float) -> None:
    for param, saved, d in zip(parameters, base, direction):
        param.copy_(saved)
        if scale != 0.0:
            param.add_(d, alpha=scale)


def finite_difference_hypergradient(model: BilevelModel, learning_rate: float, batch_size: int,
                                    radius: float = 0.01) -> FiniteDifference:
    """Steps 3-6 of DESIGN.md section 4 at the model's current parameters (theta_{t+1} in training).

    `learning_rate` is eta_t (the step's learning rate), `batch_size` n (the global batch).
    """
    parameters = list(model.parameters())
    # 3. v = grad L_V(theta)
    v = model.validation_gradient()
    # 4. d = P * v
    direction = [model.preconditioner(i, grad) * grad for i, grad in enumerate(v)]
    # 5. eps = r / ||d||; l_i(theta +- eps d) by two forward-only passes; theta restored from a copy
    norm = model.global_norm(direction)
    if not math.isfinite(norm) or norm == 0.0:
        return FiniteDifference(None, math.nan, norm, False)
    epsilon = radius / norm
    saved = [param.detach().clone() for param in parameters]
    try:
        _set_parameters(parameters, saved, direction, +epsilon)
        losses_plus = model.per_sample_losses()
        _set_parameters(parameters, saved, direction, -epsilon)
        losses_minus = model.per_sample_losses()
    finally:
        _set_parameters(parameters, saved, direction, 0.0)  # bit-exact: a copy, never "add back"
    if losses_plus is None:
        return FiniteDifference(None, epsilon, norm, True)
    # 6. g_i = -(eta / n) (l_i^+ - l_i^-) / (2 eps)
    scale = -(learning_rate / batch_size) / (2.0 * epsilon)
    g = scale * (losses_plus.double() - losses_minus.double())
    finite = bool(torch.isfinite(g).all())
    resolution = abs(scale) * max(_ulp(losses_plus), _ulp(losses_minus)) if finite else math.nan
    return FiniteDifference(g.float() if finite else None, epsilon, norm, finite, resolution)


def standardized(hypergradient: torch.Tensor) -> torch.Tensor:
    """`g` shifted to mean 0 and scaled to unit standard deviation over the batch (zeros if constant).

    The shift changes nothing (weights are a softmax, so adding one value to every g_i leaves the
    DWM's gradient unchanged); the scale makes every outer step count the same, whatever the step's
    learning rate, the validation batch or the finite difference's size happen to be.
    """
    centred = hypergradient - hypergradient.mean()
    spread = centred.pow(2).mean().sqrt()
    return centred / spread if spread > 0 else torch.zeros_like(centred)


def _ulp(values: torch.Tensor) -> float:
    """The largest unit in the last place of `values` (in their own dtype)."""
    largest = values.detach().abs().max()
    return float(torch.nextafter(largest, torch.full_like(largest, math.inf)) - largest)
