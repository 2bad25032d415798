"""One global batch through megatron-core's pipeline schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

if TYPE_CHECKING:
    from megatron_dwm.training.loss import WeightedLoss


def forward_backward(model, tokens: torch.Tensor, micro_batch_size: int, forward_only: bool = False):
    """One global batch through megatron-core's pipeline schedule with the mean token loss.

    Returns the per-token losses [batch, seq-1] on the last pipeline stage (None elsewhere).
    """
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    seq = inputs.shape[1]
    num_microbatches = tokens.shape[0] // micro_batch_size
    batches = iter([(inputs[i:i + micro_batch_size], labels[i:i + micro_batch_size])
                    for i in range(0, tokens.shape[0], micro_batch_size)])
    per_token: list[torch.Tensor] = []

    def step(data_iterator, chunk):
        x, y = next(data_iterator)
        positions = torch.arange(seq).unsqueeze(0).expand_as(x)
        output = chunk(x, positions, None, labels=y)

        def loss_func(losses):
            per_token.append(losses.detach().float())
            loss = losses.float().mean()
            return loss, {"lm loss": loss.detach()}

        return output, loss_func

    _schedule(model, step, batches, num_microbatches, seq, micro_batch_size, forward_only)
    return torch.cat(per_token) if per_token else None


def _schedule(model, step, data_iterator, num_microbatches: int, seq_length: int, micro_batch_size: int,
              forward_only: bool) -> None:
    """megatron-core's forward-backward schedule for this pipeline layout, over one model chunk."""
    get_forward_backward_func()(forward_step_func=step, data_iterator=data_iterator, model=[model],
                                num_microbatches=num_microbatches, seq_length=seq_length,
                                micro_batch_size=micro_batch_size, forward_only=forward_only)


def run_global_batch(
    model,
    microbatches: list[dict[str, torch.Tensor]],
    weights: list[torch.Tensor] | None,
    loss: "WeightedLoss",
    forward_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """This DP rank's micro batches through megatron-core's pipeline schedule with the weighted loss.

    ``weights[k]`` weighs the samples of ``microbatches[k]`` (None: all ones). Gradients are
    accumulated into the DDP buffers and reduced over data-parallel ranks unless ``forward_only``.
    Returns (per-sample losses, domain ids) of this rank's samples on the last pipeline stage,
    None elsewhere.
    """
    tokens = microbatches[0]["tokens"]
    batches = iter(range(len(microbatches)))
    loss.reset()

    def step(data_iterator, chunk):
        index = next(data_iterator)
        return loss.forward(chunk, microbatches[index], None if weights is None else weights[index], forward_only)

    _schedule(model, step, batches, len(microbatches), tokens.shape[1], tokens.shape[0], forward_only)
    return loss.collected()
