import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_distributed


def _all_reduce_rank(rank: int, world_size: int) -> float:
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return t.item()


def _fail_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank one")


def test_all_ranks_return_their_result():
    assert run_distributed(_all_reduce_rank, world_size=3) == [6.0, 6.0, 6.0]


def test_a_failing_rank_surfaces_its_traceback():
    with pytest.raises(RuntimeError, match="(?s)rank 1 failed.*boom on rank one"):
        run_distributed(_fail_on_rank_one, world_size=2, timeout=60)
