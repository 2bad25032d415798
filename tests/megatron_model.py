"""Helpers for tests that build this project's Llama on gloo ranks."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_dwm.model.presets import LlamaArch
from megatron_dwm.model.provider import build_llama_model, llama_transformer_config
from megatron_dwm.parallel import initialize_parallel
from megatron_dwm.training.build import wrap_ddp  # noqa: F401 - re-exported for tests
from megatron_dwm.training.step import forward_backward  # noqa: F401 - re-exported for tests


def build_on_rank(arch: LlamaArch, padded_vocab: int, tp: int = 1, pp: int = 1, seq_length: int = 128,
                  dwm_ranks: int = 0, seed: int = 1234, bf16: bool = False):
    """Initialise groups and build this rank's stage (None on ranks outside the LLM); `bf16`: every
    parameter bf16, as the trainer's --bf16 builds it."""
    context = initialize_parallel(tp, pp, dwm_ranks=dwm_ranks, seed=seed)
    if not context.is_llm_rank:
        return None
    config = llama_transformer_config(arch, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                      use_cpu_initialization=True, bf16=bf16)
    return build_llama_model(arch, config, padded_vocab, seq_length, pg_collection=context.pg_collection)


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """[batch, seq, vocab] logits gathered over TP (PP=1 only); None where no output lives."""
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, positions, None)
    if not parallel_state.is_pipeline_last_stage():
        return None
    return gather_from_tensor_model_parallel_region(logits)
