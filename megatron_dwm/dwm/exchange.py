"""Messages between the training ranks and the DWM ranks (``--dwm-ranks A > 0``).

Everything travels point to point over the exchange group (gloo, on the CPU) as a header of four
integers ``[command, iteration, floats, bytes]`` followed by an optional float64 payload and an
optional pickled object. Every wait has a time limit; a peer that died (its connection closes)
or does not answer in time raises :class:`ExchangeError` naming it, so a job never hangs on a
lost peer and never goes on with stale weights.
"""

from __future__ import annotations

import contextlib
import datetime
import pickle
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist


class Command(IntEnum):
    LOAD = 1  # object: (checkpoint dir, component names, load the optimizer)
    START = 2  # object: the training progress (data position) to start from
    REQUEST = 3  # the weights of `iteration`
    UPDATE = 4  # floats: the hypergradient g of `iteration` (global order)
    SAVE = 5  # object: (checkpoint root, iteration, the checkpoint's common state)
    STOP = 6
    WEIGHTS = 7  # floats: weights of one data-parallel replica (DWM -> training rank)
    RECORD = 8  # floats: the whole global batch: weights, domain ids, document ids, fell-back flag


class ExchangeError(RuntimeError):
    """A peer of the exchange died or did not answer in time."""


@dataclass
class Message:
    command: Command
    iteration: int
    floats: torch.Tensor | None = None
    obj: Any = None


class Channel:
    """Point-to-point messages over `group` (gloo), each wait limited to `timeout` seconds;
    `describe` names a peer rank in errors (for example "DWM rank 3")."""

    def __init__(self, group: dist.ProcessGroup, timeout: float,
                 describe: Callable[[int], str] = lambda rank: f"rank {rank}") -> None:
        self.group = group
        self.timeout = timeout
        self.describe = describe

    def send_many(self, destinations: list[int], message: Message) -> None:
        """The same message to every rank of `destinations` (all sends in flight together)."""
        self.post([(dst, message) for dst in destinations])

    def post(self, messages: list[tuple[int, Message]]) -> None:
        """Send each (destination, message), all in flight together; returns when all are delivered."""
        works = []
        for dst, message in messages:
            with self._failure_names(dst, f"sending {message.command.name} to", self.timeout):
                works += [(dst, message.command, dist.isend(part, dst, group=self.group)) for part in _encode(message)]
        for dst, command, work in works:
            with self._failure_names(dst, f"sending {command.name} to", self.timeout):
                work.wait(timeout=datetime.timedelta(seconds=self.timeout))

    def receive(self, src: int, timeout: float | None = None, expect: Command | None = None) -> Message:
        header = torch.zeros(4, dtype=torch.int64)
        self._recv(header, src, timeout)
        command, iteration, floats, nbytes = (int(x) for x in header.tolist())
        message = Message(Command(command), iteration)
        if floats:
            message.floats = torch.empty(floats, dtype=torch.float64)
            self._recv(message.floats, src, timeout)
        if nbytes:
            data = torch.empty(nbytes, dtype=torch.uint8)
            self._recv(data, src, timeout)
            message.obj = pickle.loads(data.numpy().tobytes())
        if expect is not None and message.command != expect:
            raise ExchangeError(f"{self.describe(src)} sent {message.command.name} where {expect.name} was expected")
        return message

    def _recv(self, tensor: torch.Tensor, src: int, timeout: float | None) -> None:
        limit = self.timeout if timeout is None else timeout
        with self._failure_names(src, "waiting for", limit):
            dist.irecv(tensor, src, group=self.group).wait(timeout=datetime.timedelta(seconds=limit))

    @contextlib.contextmanager
    def _failure_names(self, peer: int, doing: str, limit: float) -> Iterator[None]:
        """Turn a transport error into an ExchangeError naming `peer`: raised by the wait, or at once
        by isend/irecv when gloo already knows that the peer's connection has closed."""
        try:
            yield
        except RuntimeError as error:
            raise ExchangeError(f"{doing} {self.describe(peer)} failed (time limit {limit:.0f} s): "
                                f"{_first_line(error)}") from None


def _encode(message: Message) -> list[torch.Tensor]:
    floats = message.floats.detach().to("cpu", torch.float64).contiguous().view(-1) \
        if message.floats is not None else None
    data = None
    if message.obj is not None:
        data = torch.frombuffer(bytearray(pickle.dumps(message.obj)), dtype=torch.uint8)
    header = torch.tensor([int(message.command), message.iteration, 0 if floats is None else floats.numel(),
                           0 if data is None else data.numel()], dtype=torch.int64)
    return [part for part in (header, floats, data) if part is not None and part.numel()]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
