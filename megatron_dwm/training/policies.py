"""The weighting policies without an outer objective (DESIGN.md section 9).

- :class:`UniformWeighting` (``--weighting uniform``, ``--dwm-disable``): every weight 1.
- :class:`DomainWeighting` (``--weighting domain --domain-weights W1 W2 ...``): a fixed multiplier
  per training-blend domain; the loss is ``sum_i w_i l_i / n`` with ``w_i`` the weight of sample
  i's domain (not renormalised: a weight of 0 drops a domain's samples from the loss).
- :class:`LossWeighting` (``--weighting loss``): Sow et al., "Dynamic Loss-Based Sample
  Reweighting for Improved Large Language Model Pretraining" (ICLR 2025): weights from the
  samples' current losses, computed inside the same forward pass (:func:`loss_based_weights`).

The trainer asks a policy for the weights of each global batch (``weights``), tells it which
weights the loss used (``observe``), lets it learn after the LLM's step where it says it does
(``learns_at``, ``learn``: :func:`megatron_dwm.training.iteration.train_iteration`) and collects
its statistics at each log line (``pop_metrics``); the DWM's policy
(:class:`megatron_dwm.training.weighting.DWMWeighting`) has the same methods.
"""

from __future__ import annotations

import argparse
from typing import Callable, Union

import torch
from megatron.core import parallel_state

from megatron_dwm.arguments import LOSS_STRATEGIES
from megatron_dwm.dwm.colocated import GlobalBatchWeights, gather_over
from megatron_dwm.training.weight_stats import WeightLog

# A micro batch's weights: a tensor [b], or a function of the micro batch's per-sample losses [b]
# (detached, fp32) that returns them (the loss-based policy: weights from the same forward pass).
SampleWeights = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def unit_weights(microbatches) -> list[torch.Tensor]:
    """Weight 1 for every sample of every micro batch."""
    return [torch.ones(batch["tokens"].shape[0], device=batch["tokens"].device) for batch in microbatches]


def loss_based_weights(losses: torch.Tensor, strategy: str, temperature: float) -> torch.Tensor:
    """Sow et al.'s weights of one set of per-sample losses ``l`` (mean 1 over the set).

    ``h = (2 l - (lmax + lmin)) / (lmax - lmin)`` in [-1, 1] (0 for every sample when all losses
    are equal), ``f = min(h + 1, 1)`` (linupper), ``1 - h^2`` (quadratic) or ``|h|`` (extremes), and
    ``w = n softmax((f - max f) / temperature)``.
    """
    losses = losses.detach().float()
    high, low = losses.max(), losses.min()
    spread = high - low
    h = (2 * losses - (high + low)) / spread if spread > 0 else torch.zeros_like(losses)
    if strategy == "linupper":
        f = (h + 1).clamp(max=1.0)
    elif strategy == "quadratic":
        f = 1 - h ** 2
    elif strategy == "extremes":
        f = h.abs()
    else:
        raise ValueError(f"unknown loss-weighting strategy {strategy!r}; choose one of {', '.join(LOSS_STRATEGIES)}")
    return losses.numel() * torch.softmax((f - f.max()) / temperature, dim=0)


def gathered_by_iteration(local: torch.Tensor, group) -> torch.Tensor:
    """[iterations, b] of this rank's samples -> [iterations, ranks x b]: each row one global batch
    in global order (data-parallel rank, then the rank's own order), in one all-gather."""
    iterations, size = local.shape
    everyone = gather_over(local, group)  # [ranks x iterations, b], rank by rank
    return everyone.reshape(-1, iterations, size).transpose(0, 1).reshape(iterations, -1)


class LocalWeighting:
    """A policy that weighs each sample on its own rank. The weights the loss used are kept per
    iteration on the last pipeline stage and gathered over the data-parallel group once per log
    line, for the statistics (no collective in the training step itself)."""

    def __init__(self, samples_log: str | None) -> None:
        self.log = WeightLog(samples_log)
        self.holder = parallel_state.is_pipeline_last_stage()
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # since the last log line

    def weights(self, microbatches, iteration: int) -> list[SampleWeights] | None:
        raise NotImplementedError

    def observe(self, microbatches, used: list[torch.Tensor]) -> None:
        """The weights the loss used for each of this rank's micro batches (last stage only)."""
        if not self.holder or not used:
            return
        device = used[0].device
        self.pending.append((torch.cat(used).float(),
                             *(torch.cat([batch[key] for batch in microbatches]).to(device)
                               for key in ("domain_id", "document_id"))))

    def learns_at(self, iteration: int) -> bool:
        return False  # no outer objective

    def learn(self, result, valid_loss: float | None, iteration: int) -> None:
        raise RuntimeError(f"{type(self).__name__} has no outer step")

    def pop_metrics(self, domains: list[str], iteration: int) -> dict[str, float]:
        """Collective over the data-parallel group on the last stage: every rank calls it at each log line."""
        if self.pending:
            group = parallel_state.get_data_parallel_group()
            weights, domain_id, document_id = (gathered_by_iteration(torch.stack(column), group)
                                               for column in zip(*self.pending))
            for row in range(weights.shape[0]):
                self.log.add(GlobalBatchWeights(weights[row], domain_id[row], document_id[row], False))
            self.pending = []
        return self.log.pop(domains, iteration, {"stage": 0})  # one stage: the whole run


class UniformWeighting(LocalWeighting):
    """The baseline: every sample weighs 1 (Megatron-LM's loss)."""

    def weights(self, microbatches, iteration: int) -> list[SampleWeights]:
        return unit_weights(microbatches)


class DomainWeighting(LocalWeighting):
    """A fixed weight per training-blend domain (``--domain-weights``, in ``--data-path`` order)."""

    def __init__(self, domain_weights: list[float], samples_log: str | None) -> None:
        super().__init__(samples_log)
        self.domain_weights = torch.tensor(domain_weights, dtype=torch.float32)

    def weights(self, microbatches, iteration: int) -> list[SampleWeights]:
        return [self.domain_weights.to(batch["domain_id"].device)[batch["domain_id"]] for batch in microbatches]


class LossWeighting(LocalWeighting):
    """Weights from each micro batch's own per-sample losses, uniform during a warm-up.

    The set normalised over is one micro batch of one data-parallel rank: the samples whose
    losses are known when megatron-core's schedule starts that micro batch's backward (with
    pipeline parallelism, later micro batches have not been run yet). Each micro batch's weights
    have mean 1, so the global loss keeps Megatron-LM's scale.
    """

    def __init__(self, strategy: str, temperature: float, warmup_iters: int, samples_log: str | None) -> None:
        super().__init__(samples_log)
        self.strategy = strategy
        self.temperature = temperature
        self.warmup_iters = warmup_iters

    def weights(self, microbatches, iteration: int) -> list[SampleWeights]:
        if iteration < self.warmup_iters:
            return unit_weights(microbatches)
        weigh = lambda losses: loss_based_weights(losses, self.strategy, self.temperature)  # noqa: E731
        return [weigh for _ in microbatches]


def build_local_weighting(args: argparse.Namespace, samples_log: str | None) -> LocalWeighting:
    """The policy `args.weighting` names, for any of them but the DWM."""
    if args.weighting == "uniform":
        return UniformWeighting(samples_log)
    if args.weighting == "domain":
        return DomainWeighting(args.domain_weights, samples_log)
    if args.weighting == "loss":
        return LossWeighting(args.loss_weighting_strategy, args.loss_weighting_temperature,
                             args.loss_weighting_warmup_iters, samples_log)
    raise ValueError(f"--weighting {args.weighting} is not a local weighting policy")
