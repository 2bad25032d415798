"""Faults the loop survives: pre-emption signals, a time limit, and NaN/Inf steps.

All ranks must take the same decision at the same iteration, so the local observations
(a signal arrived, the time is up, this rank saw a non-finite loss or gradient) are combined with
one small all-reduce per iteration over the LLM ranks (:func:`agree`).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteStepsError(RuntimeError):
    """Too many consecutive iterations had a NaN/Inf loss or gradient."""


# how gloo and NCCL report that the other end of a collective has gone away
PEER_LOST_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                     "remote process exited", "NCCL communicator was aborted")


def lost_peer_message(error: BaseException) -> str | None:
    """A one-line explanation if ``error`` says that another rank of the job ended, else None."""
    text = str(error)
    if not any(marker in text for marker in PEER_LOST_MARKERS):
        return None
    detail = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"another rank of the job ended during a collective operation; see its own error above ({detail})"


class StopSignalHandler:
    """Records SIGTERM / SIGUSR1 (SLURM sends one before pre-emption) instead of dying on it."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def __enter__(self) -> "StopSignalHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def grads_are_finite(chunks: list) -> bool:
    """Whether the (already reduced) gradient buffers of this rank's DDP model chunks hold only finite values."""
    total = torch.zeros((), dtype=torch.float32)
    for buffer in (buffer for chunk in chunks for buffer in [*chunk.buffers, *chunk.expert_parallel_buffers]):
        total = total + buffer.grad_data.float().sum().cpu()
    return bool(torch.isfinite(total))


@dataclass(frozen=True)
class Agreement:
    """Decisions every LLM rank shares for this iteration."""

    nonfinite: bool  # some rank saw a NaN/Inf loss or gradient: skip the update
    stop_signal: bool  # some rank received SIGTERM/SIGUSR1: save and exit
    out_of_time: bool  # --exit-duration-in-mins has passed on some rank: save and exit


def agree(nonfinite: bool, stop_signal: bool, out_of_time: bool, group: dist.ProcessGroup | None,
          device: torch.device) -> Agreement:
    """OR the three local flags over `group` (one all-reduce)."""
    flags = torch.tensor([nonfinite, stop_signal, out_of_time], dtype=torch.int32, device=device)
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    return Agreement(*(bool(flag) for flag in flags.tolist()))


class Deadline:
    """``--exit-duration-in-mins``: whether the run has lasted that long since it started."""

    def __init__(self, minutes: float | None, start: float | None = None) -> None:
        self.minutes = minutes
        self.start = time.time() if start is None else start

    def passed(self) -> bool:
        return self.minutes is not None and time.time() - self.start > 60.0 * self.minutes
