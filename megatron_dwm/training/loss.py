"""The weighted training loss of one micro batch (DESIGN.md section 5).

Per-sample loss ``l_i = sum_t m_it l_it / M_i`` with ``M_i = sum_t m_it`` its loss tokens, and
micro-batch loss ``sum_i w_i l_i / b``. megatron-core's schedule divides each micro batch's loss by
the number of micro batches and its DDP averages gradients over data-parallel ranks, so the step
minimises ``sum_i w_i l_i / n`` over the global batch of ``n`` samples, exactly as Megatron-LM
reduces its loss.

With ``--calculate-per-token-loss`` (the model config's ``calculate_per_token_loss``, which
megatron-core's schedule, DDP and ``finalize_model_grads`` read too) each token of sample ``i``
carries the weight ``w_i``: a micro batch returns ``sum_i w_i M_i l_i`` (its weighted sum of token
losses) and its ``sum_i M_i`` loss tokens, megatron-core divides the gradient by the global batch's
loss tokens ``N``, and the step minimises ``sum_i w_i M_i l_i / N``; with all weights 1, Megatron-LM's
per-token loss. Written ``(1/n) sum_i w_i c_i``, its per-sample terms are ``c_i = l_i M_i / mean_j M_j``
(:func:`per_token_terms`): what the DWM's finite difference measures.

Under context parallelism (CP ranks each holding a share of every sample's tokens) the model runs
on this rank's share, ``l_i`` is still the whole sample's (its sums all-reduced over the CP group),
and its gradient reaches this rank's tokens only. megatron-core's schedule multiplies the loss by
CP (its legacy loss scaling, which Megatron-LM's ``pretrain_gpt.py`` relied on) and DDP averages
over DP x CP ranks, so the CP ranks' parts add up to the gradient of the unsplit sequences.

Two implementations of the same loss, chosen by ``--loss-kernel``:

- ``torch``: megatron-core's ``labels=`` path (vocab-parallel cross-entropy) gives per-token
  losses; the per-sample reduction and weighting happen here. The reference, used on CPU.
- ``fused``: the model returns its vocab-parallel logits and :mod:`megatron_dwm.ops`' Triton
  kernel does cross-entropy, masking, per-sample reduction and weighting in one pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist

from megatron_dwm.data.batches import context_parallel_share
from megatron_dwm.ops import per_sample_cross_entropy, resolve_loss_kernel, weighted_cross_entropy

if TYPE_CHECKING:
    from megatron_dwm.training.policies import SampleWeights

LossFunc = Callable[[torch.Tensor], tuple]


def calculates_per_token_loss(model) -> bool:
    """Whether `model` (a chunk, DDP-wrapped or not) has megatron-core's ``calculate_per_token_loss`` on."""
    return bool(getattr(getattr(model, "config", None), "calculate_per_token_loss", False))


def schedule_loss_scale(model, device: torch.device) -> torch.Tensor:
    """The factor megatron-core's schedule multiplies a micro batch's loss by before backward: the
    model config's ``grad_scale_func`` (the trainer's is the optimizer's loss scale, which only --fp16
    makes other than 1), as a 0-d tensor; 1 without one."""
    scale_func = getattr(getattr(model, "config", None), "grad_scale_func", None)
    one = torch.ones(1, device=device)
    return (one if scale_func is None else scale_func(one)).reshape(())


def per_token_terms(losses: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The per-token objective ``sum_i w_i M_i l_i / sum_j M_j`` of a global batch of ``n`` samples
    (per-sample losses `losses`, loss tokens `tokens`), as ``(1/n) sum_i w_i c_i``: the terms
    ``c_i = n M_i l_i / sum_j M_j``, each sample's loss scaled by its tokens over the batch's mean."""
    return losses * (tokens * (tokens.numel() / tokens.sum().clamp(min=1.0)))


def resolve_weights(weights: "SampleWeights", losses: torch.Tensor | None) -> torch.Tensor:
    """A micro batch's weights, detached: the tensor given, or the function given applied to `losses`."""
    return weights(losses.detach()).detach() if callable(weights) else weights.detach()


def per_sample_loss(per_token: torch.Tensor, loss_mask: torch.Tensor,
                    context_parallel_group: "dist.ProcessGroup | None" = None) -> torch.Tensor:
    """Masked mean over each sample's tokens, in fp32: [b, s] -> [b] (0 for a fully masked sample).

    Under context parallelism this rank holds a part of each sample's tokens (megatron-core's
    zigzag split): the sums and token counts are all-reduced over `context_parallel_group`, so every
    rank of the group gets the whole sample's mean, and the gradient flows to this rank's tokens
    only, each with the whole sample's ``m_t / sum_t m_t``: summed over the group, the gradients are
    those of the unsplit sequence.
    """
    mask = loss_mask.float()
    sums, counts = (per_token.float() * mask).sum(dim=1), mask.sum(dim=1)
    if context_parallel_group is not None and dist.get_world_size(context_parallel_group) > 1:
        totals = torch.stack([sums.detach(), counts])
        dist.all_reduce(totals, group=context_parallel_group)
        sums = sums + (totals[0] - sums.detach())  # the whole sample's sum; the gradient of this rank's part
        counts = totals[1]
    return sums / counts.clamp(min=1.0)


class WeightedLoss:
    """Runs one micro batch through a model chunk and builds the schedule's loss function.

    Every per-sample loss computed on this rank is appended to ``self.per_sample`` (with the
    sample's domain id in ``self.domain_id``, the weight the loss gave it in ``self.weights`` and its
    loss tokens in ``self.tokens``) so the caller can report and reuse them.

    A micro batch's weights are a tensor, or a function of its per-sample losses (detached) that
    returns them: the loss-based policy's weights, computed in the same forward pass.

    `context_parallel_group`: the model sees this rank's share of each micro batch's tokens
    (:func:`context_parallel_share`), the losses are the whole samples'. The fused kernel reduces a
    sample on one rank, so under CP > 1 ``auto`` is the torch path (``fused`` is refused by the
    argument checks).
    """

    def __init__(self, kernel: str, device: torch.device,
                 context_parallel_group: "dist.ProcessGroup | None" = None) -> None:
        self.context_parallel_group = context_parallel_group
        split = context_parallel_group is not None and dist.get_world_size(context_parallel_group) > 1
        self.kernel = "torch" if split and kernel == "auto" else resolve_loss_kernel(kernel, device)
        if split and self.kernel == "fused":
            raise ValueError("the fused loss kernel does not support context parallelism")
        self.per_sample: list[torch.Tensor] = []
        self.domain_id: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def reset(self) -> None:
        self.per_sample.clear()
        self.domain_id.clear()
        self.weights.clear()
        self.tokens.clear()

    def forward_step(self, chunk, batch: dict[str, torch.Tensor], weights: "SampleWeights | None",
                     forward_only: bool) -> tuple[torch.Tensor, LossFunc]:
        """megatron-core's forward step function for one micro batch: ``chunk(batch)`` (this context-parallel
        rank's share of it) and the loss function the schedule applies to its output (returning the loss, and
        with per-token loss its loss tokens)."""
        fused = self.kernel == "fused"
        per_token = calculates_per_token_loss(chunk)
        batch = context_parallel_share(batch, self.context_parallel_group)
        output = chunk(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                       labels=None if fused else batch["labels"])
        if weights is None:
            weights = torch.ones(batch["tokens"].shape[0], device=batch["tokens"].device)
        tokens = batch["loss_mask"].float().sum(dim=1)  # M_i

        def loss_func(output_tensor: torch.Tensor) -> tuple:
            if not fused or forward_only:
                losses = per_sample_loss(output_tensor, batch["loss_mask"], self.context_parallel_group) \
                    if not fused else per_sample_cross_entropy(output_tensor, batch["labels"], batch["loss_mask"],
                                                               kernel="fused", sequence_first=False)
                used = resolve_weights(weights, losses)
                coefficients, normalizer = _coefficients(used, tokens, per_token)
                loss = (coefficients * losses).sum() / normalizer
            else:  # the fused kernel's training pass (weights from the losses need its loss-only pass first)
                used = resolve_weights(weights, per_sample_cross_entropy(
                    output_tensor, batch["labels"], batch["loss_mask"], kernel="fused",
                    sequence_first=False) if callable(weights) else None)
                coefficients, normalizer = _coefficients(used, tokens, per_token)
                # The kernel writes the logits' gradient now, in their dtype: under fp16 it must carry the
                # loss scale S already (unscaled it would underflow), so the loss it returns is divided by S
                # and backward brings the schedule's S back to 1.
                scale = schedule_loss_scale(chunk, output_tensor.device)
                scaled, losses = weighted_cross_entropy(output_tensor, batch["labels"], batch["loss_mask"],
                                                        coefficients * scale, normalizer=normalizer, kernel="fused",
                                                        sequence_first=False)
                loss = scaled / scale
            self.per_sample.append(losses.detach())
            self.domain_id.append(batch["domain_id"])
            self.weights.append(used)
            self.tokens.append(tokens)
            if per_token:  # megatron-core divides by the global batch's tokens, summed over these
                return loss, tokens.sum().int(), {"lm loss": loss.detach()}
            return loss, {"lm loss": loss.detach()}

        return output, loss_func

    def collected(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(per-sample losses, domain ids) of every micro batch since ``reset``; None off the last stage."""
        if not self.per_sample:
            return None
        return torch.cat(self.per_sample), torch.cat(self.domain_id)

    def collected_tokens(self) -> torch.Tensor | None:
        """The loss tokens M_i of the samples of :meth:`collected`, in its order; None off the last stage."""
        return torch.cat(self.tokens) if self.tokens else None


def _coefficients(weights: torch.Tensor, tokens: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, float]:
    """The micro batch's loss as ``sum_i c_i l_i / normalizer``: (w_i, b), or per token (w_i M_i, 1)."""
    return (weights * tokens, 1.0) if per_token else (weights, float(weights.shape[0]))
