"""One global batch through megatron-core's pipeline schedule."""

from __future__ import annotations

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func


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

    get_forward_backward_func()(forward_step_func=step, data_iterator=batches, model=[model],
                                num_microbatches=num_microbatches, seq_length=seq,
                                micro_batch_size=micro_batch_size, forward_only=forward_only)
    return torch.cat(per_token) if per_token else None
