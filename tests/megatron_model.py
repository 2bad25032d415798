"""Helpers for tests that build this project's Llama on gloo ranks."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_dwm.model.presets import LlamaArch
from megatron_dwm.model.provider import build_llama_model, llama_transformer_config
from megatron_dwm.parallel import initialize_parallel
from megatron_dwm.training.build import wrap_ddp  # noqa: F401 - re-exported for tests


def build_on_rank(arch: LlamaArch, padded_vocab: int, tp: int = 1, pp: int = 1, seq_length: int = 128,
                  dwm_ranks: int = 0, seed: int = 1234, bf16: bool = False, initialize: bool = True,
                  **config_overrides: object):
    """Initialise groups and build this rank's stage (None on ranks outside the LLM); `bf16`: every
    parameter bf16, as the trainer's --bf16 builds it; `initialize=False` leaves the weights
    uninitialised, for a checkpoint to overwrite them all (megatron-core's CPU initialisation draws
    each full weight on every rank); `config_overrides`: further TransformerConfig fields."""
    context = initialize_parallel(tp, pp, dwm_ranks=dwm_ranks, seed=seed)
    if not context.is_llm_rank:
        return None
    config = llama_transformer_config(arch, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                      use_cpu_initialization=True, bf16=bf16, perform_initialization=initialize,
                                      **config_overrides)
    return build_llama_model(arch, config, padded_vocab, seq_length, pg_collection=context.pg_collection)


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """[batch, seq, vocab] logits gathered over TP (PP=1 only); None where no output lives."""
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, positions, None)
    if not parallel_state.is_pipeline_last_stage():
        return None
    return gather_from_tensor_model_parallel_region(logits)


def forward_backward(model, tokens: torch.Tensor, micro_batch_size: int, forward_only: bool = False):
    """One global batch through megatron-core's pipeline schedule with the mean token loss.

    Returns the per-token losses [batch, seq-1] on the last pipeline stage (None elsewhere).
    """
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    seq = inputs.shape[1]
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
                                num_microbatches=tokens.shape[0] // micro_batch_size, seq_length=seq,
                                micro_batch_size=micro_batch_size, forward_only=forward_only)
    return torch.cat(per_token) if per_token else None
