import socket

import pytest
import torch
import torch.distributed as dist

from tests import distributed
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


@pytest.fixture
def taken_port():
    """A port another process has bound and listens on, as if it took it after `free_port` chose it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _ports_first(port: int):
    """A `free_port` that returns `port` once, then free ports."""
    ports, free_port = iter([port]), distributed.free_port
    return lambda: next(ports, None) or free_port()


def test_run_distributed_starts_again_when_the_port_was_taken(taken_port, monkeypatch):
    monkeypatch.setattr(distributed, "free_port", _ports_first(taken_port))
    assert run_distributed(_all_reduce_rank, world_size=2, timeout=120) == [3.0, 3.0]


def test_job_starts_again_when_the_port_was_taken(corpus, taken_port, tmp_path, monkeypatch):
    """Rank 0 of a job finds the rendezvous port taken and fails; rank 1 waits on the stranger's
    port. The job is started again on another port and trains."""
    from tests.training import launch
    from tests.training.corpus import training_flags

    monkeypatch.setattr(launch, "free_port", _ports_first(taken_port))
    job = launch.run_job(training_flags(corpus, "--train-iters", "2"), 2, tmp_path / "logs", timeout=120)
    assert job.attempts == 2
