"""The LLM can live on ranks 0..T-1 of a larger world (the DWM's ranks stay outside its groups); the
layout's arithmetic: TP x CP x PP ranks per data-parallel replica, as Megatron-LM counts them."""

from __future__ import annotations

import torch

from tests.distributed import run_distributed

VOCAB = 256


def test_context_parallel_ranks_count_in_each_replica():
    from megatron_dwm.rank_layout import RankLayout

    layout = RankLayout(18, tensor_model_parallel_size=2, pipeline_model_parallel_size=2, dwm_ranks=2,
                        context_parallel_size=2)
    assert (layout.model_parallel_size, layout.replica_size, layout.data_parallel_size) == (4, 8, 2)
    assert layout.problems() == ["--dwm-ranks 2 with --context-parallel-size 2: not supported yet (the DWM ranks "
                                 "serve one last-stage rank per data-parallel replica; use --dwm-ranks 0)"]
    colocated = RankLayout(16, 2, 2, context_parallel_size=2)
    assert colocated.problems() == [] and colocated.data_parallel_size == 2
    assert RankLayout(12, 2, 2, context_parallel_size=2).problems() == [
        "world size 12 = 12 LLM ranks is not divisible by --tensor-model-parallel-size 2 x --context-parallel-size 2 "
        "x --pipeline-model-parallel-size 2 = 8"]


def _train(rank, world_size, tp, dwm_ranks):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.parallel import join_optimizer_setup_outside_llm
    from megatron_dwm.training.build import build_optimizer
    from tests.megatron_model import build_on_rank, forward_backward, wrap_ddp

    arch = get_preset("tiny").with_overrides(vocab_size=VOCAB)
    model = build_on_rank(arch, VOCAB, tp=tp, seq_length=16, dwm_ranks=dwm_ranks)
    if model is None:
        assert parallel_state.get_tensor_model_parallel_group(check_initialized=False) in (None, dist.GroupMember.NON_GROUP_MEMBER)
        join_optimizer_setup_outside_llm()
        dist.barrier()
        return "outside"
    tp_ranks = dist.get_process_group_ranks(parallel_state.get_tensor_model_parallel_group())
    ddp = wrap_ddp(model)
    optimizer = build_optimizer(ddp, lr=1e-3)
    tokens = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(2):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        losses.append(forward_backward(ddp, tokens, 2).mean().item())
        optimizer.step()
    dist.barrier()
    return {"tp_ranks": tp_ranks, "losses": losses}


def test_llm_on_the_first_ranks_of_a_larger_world_matches_a_world_of_its_own():
    alone = run_distributed(_train, 2, args=(2, 0))
    shared = run_distributed(_train, 3, args=(2, 1))
    assert shared[2] == "outside"
    assert shared[0]["tp_ranks"] == shared[1]["tp_ranks"] == [0, 1]
    for rank in (0, 1):
        assert shared[rank]["losses"] == alone[rank]["losses"]
