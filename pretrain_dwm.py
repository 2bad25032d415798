#!/usr/bin/env python3
"""Pretrain a Llama-2 model on megatron-core with per-sample data weighting.

Launch like Megatron-LM:  torchrun --nproc-per-node N pretrain_dwm.py [flags]  (or srun).
The data pipeline and the full training loop are being built; for now this entry point runs
a smoke training on synthetic tokens, through the real model, schedule, DDP and optimizer.
"""

from __future__ import annotations

import os
import sys

import torch

from megatron_dwm.arguments import model_arch, parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, world_size=int(os.environ.get("WORLD_SIZE", "1")))  # fails before any work

    from megatron_dwm.model.provider import build_llama_model, llama_transformer_config, padded_vocab_size
    from megatron_dwm.parallel import initialize_parallel, join_optimizer_setup_outside_llm
    from megatron_dwm.training.build import build_optimizer, wrap_ddp
    from megatron_dwm.training.step import forward_backward

    context = initialize_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                  args.dwm_ranks, args.seed, args.distributed_timeout_minutes)
    if not context.is_llm_rank:
        join_optimizer_setup_outside_llm()
        return
    arch = model_arch(args).with_overrides(vocab_size=model_arch(args).vocab_size or 32000)
    vocab = padded_vocab_size(arch.vocab_size, args.tensor_model_parallel_size, args.make_vocab_size_divisible_by)
    config = llama_transformer_config(arch, tensor_model_parallel_size=args.tensor_model_parallel_size,
                                      pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                                      bf16=args.bf16)
    model = wrap_ddp(build_llama_model(arch, config, vocab, args.seq_length, pg_collection=context.pg_collection))
    optimizer = build_optimizer(model, lr=args.lr, bf16=args.bf16,
                                use_distributed_optimizer=args.use_distributed_optimizer)
    dp = context.layout.data_parallel_size
    local_batch = args.global_batch_size // dp
    generator = torch.Generator().manual_seed(args.seed)
    batch = torch.randint(0, arch.vocab_size, (args.global_batch_size, args.seq_length + 1), generator=generator)
    from megatron.core import parallel_state

    dp_rank = parallel_state.get_data_parallel_rank()
    for iteration in range(1, args.train_iters + 1):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        losses = forward_backward(model, batch[dp_rank * local_batch:(dp_rank + 1) * local_batch],
                                  args.micro_batch_size)
        _, grad_norm, _ = optimizer.step()
        if losses is not None and parallel_state.get_tensor_model_parallel_rank() == 0 and dp_rank == 0:
            print(f" iteration {iteration:6d}/{args.train_iters:6d} | lm loss: {losses.mean().item():.6E} | "
                  f"grad norm: {grad_norm:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
