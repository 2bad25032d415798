"""Copies of the DWM that see the same samples (the tensor- and context-parallel ranks of a
replica's last stage) stay identical: each step takes its gradients from the replica group's first
copy, even where the copies' own gradients differ (in training: in their last bits, from
data-parallel groups that sum in another order)."""

from __future__ import annotations

import torch

from tests.distributed import run_distributed

SAMPLES = 6


def _steps(rank: int, world_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """This copy's parameters after one step, in a replica group, then on its own."""
    import torch.distributed as dist

    own = [dist.new_group([r]) for r in range(world_size)][rank]  # each copy its own data-parallel group
    return _step(rank, own, dist.group.WORLD), _step(rank, own, None)


def _step(rank: int, data_parallel_group, replica_group) -> dict[str, torch.Tensor]:
    from megatron_dwm.dwm import DataWeightingModel, DWMConfig
    from megatron_dwm.dwm.colocated import ColocatedDWM

    config = DWMConfig(vocab_size=64, num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                       seq_length=8)
    torch.manual_seed(0)
    model = DataWeightingModel(config)
    with torch.no_grad():
        model.head.out.weight.normal_(0, 0.1)  # a non-zero score head: every parameter gets a gradient
    copy = ColocatedDWM(model, torch.optim.Adam(model.parameters(), lr=1e-2), data_parallel_group,
                        torch.device("cpu"), replica_group=replica_group)
    tokens = torch.randint(0, 64, (SAMPLES, 8), generator=torch.Generator().manual_seed(1))
    batch = {"tokens": tokens, "domain_id": torch.zeros(SAMPLES, dtype=torch.long),
             "document_id": torch.arange(SAMPLES)}
    copy.weights([batch], iteration=0, progress=0.0, keep_graph=True)
    hypergradient = torch.linspace(-1, 1, SAMPLES) * (1 + 1e-3 * rank)  # the copies' gradients differ
    copy.apply_hypergradient(hypergradient)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def test_copies_of_a_replica_group_stay_identical():
    (first, apart_first), (second, apart_second) = run_distributed(_steps, 2)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert all(torch.equal(apart_first[name], first[name]) for name in first)  # the first copy's own step
    assert not all(torch.equal(apart_second[name], first[name]) for name in first)  # not the second's
