"""One training iteration, read top to bottom beside DESIGN.md section 4.

:func:`train_iteration` takes the global batch B through the seven steps of the DWM's outer step:
the weights (step 1), the LLM's step (2), the finite-difference hypergradient (3-6, in
:func:`megatron_dwm.dwm.hypergradient.finite_difference_hypergradient`) and the DWM's update (7).
Steps 3-7 run only where the weighting policy learns at this iteration (the DWM, in a DWM phase,
at its update interval); every other policy stops after step 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from megatron_dwm.dwm.hypergradient import FiniteDifference, finite_difference_hypergradient
from megatron_dwm.training.bilevel import MegatronBilevel
from megatron_dwm.training.build import dynamic_loss_scaler
from megatron_dwm.training.faults import Agreement, grads_are_finite
from megatron_dwm.training.loss import WeightedLoss
from megatron_dwm.training.step import run_global_batch


class WeightingPolicy(Protocol):
    """What an iteration asks of a weighting policy (megatron_dwm.training.policies, .weighting)."""

    def weights(self, microbatches: list, iteration: int) -> list | None:
        """Step 1: this rank's sample weights, one entry per micro batch (None: all ones)."""

    def observe(self, microbatches: list, used: list[torch.Tensor]) -> None:
        """The weights the loss used (the loss-based policy's are known only after the forward)."""

    def learns_at(self, iteration: int) -> bool:
        """Whether steps 3-7 run after the LLM's step of `iteration` (0-based)."""

    def learn(self, result: FiniteDifference, valid_loss: float | None, iteration: int) -> None:
        """Step 7: the update from the hypergradient of `iteration`'s global batch."""


@dataclass(frozen=True)
class LLM:
    """The pieces of the LLM an iteration steps."""

    model: list  # this rank's DDP-wrapped model chunks (one per virtual pipeline stage)
    optimizer: Any  # megatron-core's optimizer
    scheduler: Any  # megatron-core's OptimizerParamScheduler
    loss: WeightedLoss
    global_batch_size: int

    @property
    def scaler_takes_overflows(self) -> bool:
        """Under --fp16 with dynamic loss scaling a NaN/Inf gradient is the loss scaler's signal, not a
        fault: megatron-core's optimizer skips that step and backs the scale off, as in Megatron-LM
        (which then stops checking gradients for NaN itself)."""
        return dynamic_loss_scaler(self.optimizer) is not None


@dataclass(frozen=True)
class FiniteDifferenceSettings:
    """--dwm-fd-direction and --dwm-fd-radius (DESIGN.md section 4, steps 4 and 5)."""

    direction: str
    radius: float


@dataclass
class IterationResult:
    collected: tuple[torch.Tensor, torch.Tensor] | None  # (per-sample losses, domain ids) on the last stage
    grad_norm: float | None  # None when the update was skipped
    decision: Agreement  # what every LLM rank agreed on after the backward pass
    skipped: bool = False  # no update: a NaN/Inf agreed on, or an overflow found by the fp16 loss scaler


def train_iteration(llm: LLM, policy: WeightingPolicy, microbatches: list, iteration: int,
                    agree: Callable[[bool], Agreement], next_valid_batch: Callable[[], list],
                    finite_difference: FiniteDifferenceSettings) -> IterationResult:
    """Iteration `iteration` (0-based) on this data-parallel rank's micro batches of B.

    `agree(nonfinite here)` is the LLM ranks' agreement on NaN/Inf and stop requests (collective);
    `next_valid_batch()` reads the next validation batch V of the DWM's objective.
    """
    # Step 1: w = DWM(B), the graph kept when the DWM learns at this iteration.
    weights = policy.weights(microbatches, iteration)

    # Step 2: the LLM's step on (1/n) sum_i w_i l_i; skipped on every rank if any saw a NaN/Inf (a gradient's
    # only without a dynamic loss scaler), or if the fp16 loss scaler found an overflow. A skipped step
    # leaves theta_{t+1} = theta_t: the DWM has nothing to learn from, and does not.
    for chunk in llm.model:
        chunk.zero_grad_buffer()
    llm.optimizer.zero_grad()
    collected = run_global_batch(llm.model, microbatches, weights, llm.loss)
    policy.observe(microbatches, llm.loss.weights)
    loss_nonfinite = collected is not None and not bool(torch.isfinite(collected[0]).all())
    grads_nonfinite = not llm.scaler_takes_overflows and not grads_are_finite(llm.model)
    decision = agree(loss_nonfinite or grads_nonfinite)
    if decision.nonfinite:
        return IterationResult(collected, None, decision, skipped=True)
    learning_rate = llm.optimizer.param_groups[0]["lr"]  # eta_t, before the scheduler moves it
    updated, grad_norm, _ = llm.optimizer.step()
    if not updated:  # the loss scaler's overflow, on every rank alike: it has backed the scale off
        return IterationResult(collected, None, decision, skipped=True)
    llm.scheduler.step(increment=llm.global_batch_size)
    if not policy.learns_at(iteration):
        return IterationResult(collected, grad_norm, decision)

    # Steps 3-6: g_i = dL_V/dw_i by the finite difference around theta_{t+1}, theta restored after.
    bilevel = MegatronBilevel(llm.model, llm.optimizer, llm.loss, microbatches, next_valid_batch(),
                              finite_difference.direction)
    result = finite_difference_hypergradient(bilevel, learning_rate, llm.global_batch_size,
                                             finite_difference.radius)

    # Step 7: the DWM's step from sum_i g_i w_i(phi).
    policy.learn(result, bilevel.valid_loss, iteration)
    return IterationResult(collected, grad_norm, decision)
