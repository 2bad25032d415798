"""Both loss kernels against megatron-core's `vocab_parallel_cross_entropy` + explicit masking
and weighting, on TP=1 and TP=2 gloo ranks; unequal vocabulary shards (which megatron-core does
not support) against torch's cross-entropy over the gathered logits."""

import pytest
import torch

from tests.distributed import run_distributed
from tests.ops.cases import (
    GRAD_TOLERANCE,
    LOSS_TOLERANCE,
    autograd_reference,
    megatron_reference,
    random_case,
    relative_error,
    run_per_sample_cross_entropy,
    run_weighted_cross_entropy,
)

KERNELS = ("torch", "fused")
DTYPES = (torch.float32, torch.bfloat16)


def _errors(kernel, case, tp, shard, reference, **kwargs) -> dict:
    """Relative errors of one kernel on this rank's shard against the reference."""
    ref_loss, ref_per_sample, ref_grad = reference
    loss, per_sample, grad = run_weighted_cross_entropy(case, kernel, shard, **kwargs)
    loss_only = run_per_sample_cross_entropy(case, kernel, shard, **kwargs)
    return {
        "case": f"{case.describe()} shard={shard.start}:{shard.stop}",
        "kernel": kernel,
        "tp": tp,
        "dtype": case.dtype,
        "loss": relative_error(loss, ref_loss),
        "per_sample": relative_error(per_sample, ref_per_sample),
        "loss_only": relative_error(loss_only, ref_per_sample),
        "grad": relative_error(grad, ref_grad),
    }


def _compare_on_ranks(rank: int, world_size: int, equal_shards: list, unequal_shards: list) -> list[dict]:
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world_size)
    group = parallel_state.get_tensor_model_parallel_group()
    results = []
    for seed, dtype, shard_size in equal_shards:
        case = random_case(seed, dtype, vocab=shard_size * world_size)
        shard = slice(rank * shard_size, (rank + 1) * shard_size)
        reference = megatron_reference(case, shard, group)
        # tp_group left to its default: megatron-core's tensor-parallel group.
        results += [_errors(kernel, case, world_size, shard, reference) for kernel in KERNELS]
    for seed, dtype, shard_sizes in unequal_shards:
        case = random_case(seed, dtype, vocab=sum(shard_sizes))
        start = sum(shard_sizes[:rank])
        shard = slice(start, start + shard_sizes[rank])
        loss, per_sample, grad = autograd_reference(case)
        results += [
            _errors(kernel, case, world_size, shard, (loss, per_sample, grad[..., shard]),
                    tp_group=group, vocab_start_index=start)
            for kernel in KERNELS
        ]
    return results


def _random_specs(tp: int, seed: int) -> tuple[list, list]:
    """Fresh shapes per case: shard widths from 1 to 160 (mostly not a power of two)."""
    gen = torch.Generator().manual_seed(seed)
    width = lambda: int(torch.randint(1, 161, (), generator=gen))  # noqa: E731
    equal = [(seed + 100 * i, dtype, width()) for i, dtype in enumerate(DTYPES * 2)]
    unequal = [(seed + 1000 + i, dtype, tuple(width() for _ in range(tp))) for i, dtype in enumerate(DTYPES)]
    return equal, unequal if tp > 1 else []


@pytest.mark.parametrize("tp", [1, 2])
def test_kernels_match_megatron_core(tp):
    results = run_distributed(_compare_on_ranks, world_size=tp, args=_random_specs(tp, seed=7 + tp), timeout=300)
    rows = [row for rank_rows in results for row in rank_rows]
    for row in rows:
        print(f"tp={row['tp']} {row['kernel']:>5} {row['case']:<52} per-sample {row['per_sample']:.1e} "
              f"loss-only {row['loss_only']:.1e} grad {row['grad']:.1e}")
    for row in rows:
        for key in ("loss", "per_sample", "loss_only"):
            assert row[key] <= LOSS_TOLERANCE, row
        assert row["grad"] <= GRAD_TOLERANCE[row["dtype"]], row
