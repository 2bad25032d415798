"""A lost peer surfaces as an ExchangeError naming it, wherever the transport reports the loss:
at the wait, or at once when isend/irecv is posted to a connection gloo already knows is closed
(seen when a DWM rank is killed between two messages)."""

from __future__ import annotations

import pytest
import torch

from megatron_dwm.dwm import exchange, remote
from megatron_dwm.dwm.exchange import Channel, Command, ExchangeError, Message

CLOSED = "[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:29839"


class _Work:
    def __init__(self, error: str | None) -> None:
        self.error = error

    def wait(self, timeout=None) -> bool:
        if self.error:
            raise RuntimeError(self.error)
        return True


def _transport(monkeypatch, *, at_post: str | None = None, at_wait: str | None = None) -> None:
    def post(tensor, peer, group=None):
        if at_post:
            raise RuntimeError(at_post)
        return _Work(at_wait)
    monkeypatch.setattr(exchange.dist, "isend", post)
    monkeypatch.setattr(exchange.dist, "irecv", post)


def _channel() -> Channel:
    return Channel(group=None, timeout=5, describe=lambda rank: f"DWM rank {rank}")


@pytest.mark.parametrize("where", ["at_post", "at_wait"])
def test_a_closed_connection_names_the_peer_on_send_and_receive(monkeypatch, where):
    _transport(monkeypatch, **{where: CLOSED})
    with pytest.raises(ExchangeError) as sent:
        _channel().send_many([2], Message(Command.REQUEST, 7))
    assert str(sent.value) == f"sending REQUEST to DWM rank 2 failed (time limit 5 s): {CLOSED}"
    with pytest.raises(ExchangeError) as received:
        _channel().receive(2, expect=Command.WEIGHTS)
    assert str(received.value) == f"waiting for DWM rank 2 failed (time limit 5 s): {CLOSED}"


def test_other_errors_are_not_exchange_errors(monkeypatch):
    def post(tensor, peer, group=None):
        raise ValueError("bad tensor")
    monkeypatch.setattr(exchange.dist, "isend", post)
    with pytest.raises(ValueError):
        _channel().send_many([2], Message(Command.REQUEST, 7))


def test_a_lost_update_names_the_iteration_as_the_log_does(monkeypatch):
    _transport(monkeypatch, at_post=CLOSED)
    leader = remote.RemoteDWM(_channel(), dwm_ranks=[2], source=2, data_parallel_rank=0, data_parallel_size=1,
                              is_leader=True, device=torch.device("cpu"))
    leader.iteration = 3  # 0-based: the log's iteration 4
    with pytest.raises(ExchangeError) as lost:
        leader.apply_hypergradient(torch.zeros(4))
    assert str(lost.value).startswith(f"no DWM update at iteration 4: sending UPDATE to DWM rank 2 failed "
                                      f"(time limit 5 s): {CLOSED}. The training ranks stop")
