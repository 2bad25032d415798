"""The DWM on its own ranks (``--dwm-ranks A > 0``): the weights' and hypergradients' exchange.

The DWM ranks hold identical :class:`~megatron_dwm.dwm.colocated.DWMCopy` copies, data-parallel
over the DWM group: DWM rank j reads and encodes the samples of data-parallel replicas
``j * DP/A .. (j+1) * DP/A - 1`` and every copy scores the whole global batch. Per iteration t:

1. the leader (the last LLM rank) sends REQUEST(t) to every DWM rank;
2. DWM rank j sends each last-stage rank of its replicas that replica's weights (WEIGHTS), and
   DWM rank 0 sends the leader the whole global batch (RECORD: weights, domain and document ids,
   whether the DWM fell back to uniform), from which the leader takes its own slice and reports;
3. in a DWM phase, after the LLM's step and the finite-difference pass, the leader sends g to
   every DWM rank (UPDATE(t)), which steps the DWM before it computes the weights of t + 1.

Outside DWM phases the DWM does not change, so a DWM rank computes the weights of t + 1 as soon as
it has sent those of t, while the LLM runs step t: the training ranks only wait for a message.
"""

from __future__ import annotations

import torch

from megatron_dwm.dwm.colocated import GlobalBatchWeights, Samples
from megatron_dwm.dwm.exchange import Channel, Command, ExchangeError, Message


def replicas_of(dwm_index: int, dwm_ranks: int, data_parallel_size: int) -> range:
    """The data-parallel replicas DWM rank `dwm_index` (0-based within the DWM group) serves."""
    share = data_parallel_size // dwm_ranks
    return range(dwm_index * share, (dwm_index + 1) * share)


def serving_dwm_index(data_parallel_rank: int, dwm_ranks: int, data_parallel_size: int) -> int:
    """The DWM rank (0-based within the DWM group) whose `replicas_of` holds `data_parallel_rank`."""
    return data_parallel_rank // (data_parallel_size // dwm_ranks)


def replica_slice(weights: torch.Tensor, data_parallel_rank: int, data_parallel_size: int) -> torch.Tensor:
    """One data-parallel replica's part of a global batch's weights (global order: replica first)."""
    per_replica = weights.numel() // data_parallel_size
    return weights[data_parallel_rank * per_replica: (data_parallel_rank + 1) * per_replica]


def weight_messages(last: GlobalBatchWeights, iteration: int, replicas: range, data_parallel_size: int,
                    last_stage_dp_ranks: dict[int, int], leader: int, send_record: bool) -> list[tuple[int, Message]]:
    """What a DWM rank sends for `iteration`: each last-stage rank of its replicas its replica's
    weights (the leader excepted), and the leader the RECORD if `send_record`."""
    weights = last.weights.detach()
    messages = [(rank, Message(Command.WEIGHTS, iteration, replica_slice(weights, dp, data_parallel_size)))
                for rank, dp in sorted(last_stage_dp_ranks.items()) if dp in replicas and rank != leader]
    if send_record:
        record = torch.cat([weights.double().cpu(), last.domain_id.double().cpu(), last.document_id.double().cpu(),
                            torch.tensor([float(last.fell_back)], dtype=torch.float64)])
        messages.append((leader, Message(Command.RECORD, iteration, record)))
    return messages


class RemoteDWM:
    """A last-stage training rank's end of the exchange (a ``WeightingPlacement``)."""

    def __init__(self, channel: Channel, dwm_ranks: list[int], source: int, data_parallel_rank: int,
                 data_parallel_size: int, is_leader: bool, device: torch.device) -> None:
        self.channel = channel
        self.dwm_ranks = dwm_ranks
        self.source = source  # the DWM rank that serves this rank's replica
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.is_leader = is_leader
        self.device = device
        self.iteration: int | None = None
        self.last: GlobalBatchWeights | None = None  # the leader's copy of the global batch

    def weights(self, microbatches: list[Samples], iteration: int, progress: float,
                keep_graph: bool) -> list[torch.Tensor]:
        self.iteration = iteration
        if self.is_leader:
            try:
                self.channel.send_many(self.dwm_ranks, Message(Command.REQUEST, iteration))
            except ExchangeError as error:
                raise _no_weights(iteration, error) from None
            record = self._receive(self.dwm_ranks[0], Command.RECORD, iteration).floats
            n = (record.numel() - 1) // 3
            self.last = GlobalBatchWeights(record[:n].float(), record[n: 2 * n].long(), record[2 * n: 3 * n].long(),
                                           bool(record[-1]))
            mine = replica_slice(self.last.weights, self.data_parallel_rank, self.data_parallel_size)
        else:
            mine = self._receive(self.source, Command.WEIGHTS, iteration).floats.float()
        return list(mine.to(self.device).split([batch["tokens"].shape[0] for batch in microbatches]))

    def apply_hypergradient(self, hypergradient: torch.Tensor) -> None:
        if self.is_leader:
            try:
                self.channel.send_many(self.dwm_ranks, Message(Command.UPDATE, self.iteration, hypergradient))
            except ExchangeError as error:
                raise _lost(f"no DWM update at iteration {self.iteration + 1}", error) from None

    def _receive(self, src: int, command: Command, iteration: int) -> Message:
        try:
            message = self.channel.receive(src, expect=command)
        except ExchangeError as error:
            raise _no_weights(iteration, error) from None
        if message.iteration != iteration:
            raise ExchangeError(f"{self.channel.describe(src)} sent the weights of iteration {message.iteration} "
                                f"for iteration {iteration}")
        return message


def _no_weights(iteration: int, error: ExchangeError) -> ExchangeError:
    """The error of a training rank that could not get the weights of `iteration` (0-based: the
    iterations done before it) from a DWM rank; it names the iteration as the log lines do."""
    return _lost(f"no weights for iteration {iteration + 1}", error)


def _lost(what: str, error: ExchangeError) -> ExchangeError:
    return ExchangeError(f"{what}: {error}. The training ranks stop rather than train on stale weights; "
                         "see that rank's log (--dwm-exchange-timeout sets the time limit)")
