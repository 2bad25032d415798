"""``--dwm-ranks A > 0``: the DWM ranks' own loop, and the training ranks' link to it.

The DWM ranks hold no LLM, but they take part in every world-wide collective of the trainer
(megatron-core's optimizer set-up, dataset builder and distributed checkpoints), in the same order.
The leader (the last LLM rank) tells them what comes next over the exchange channel, so the two
sides never have to guess: LOAD before a checkpoint is read, START before the datasets are built,
REQUEST / UPDATE every iteration (:mod:`megatron_dwm.dwm.remote`), SAVE before a checkpoint is
written and STOP at the end.

Their checkpoint entry is the same ``components/dwm`` object the colocated DWM writes, so a
checkpoint resumes with either placement. They ignore SIGTERM / SIGUSR1: the training ranks decide
when to save and stop, and tell them.
"""

from __future__ import annotations

import argparse
import time

import torch

from megatron_dwm.data import build_pretraining_data_loader
from megatron_dwm.dwm.remote import RemoteDWM, replicas_of, serving_dwm_index, weight_messages
from megatron_dwm.dwm.colocated import DWMCopy, GlobalBatchWeights, Samples, concat_samples
from megatron_dwm.dwm.exchange import Channel, Command, ExchangeError, Message
from megatron_dwm.parallel import ParallelContext, join_optimizer_setup_outside_llm
from megatron_dwm.platform import get_platform
from megatron_dwm.training.checkpoint_manager import DWM_COMPONENT, CheckpointManager
from megatron_dwm.training.build import llm_arch
from megatron_dwm.training.data_iterators import build_datasets
from megatron_dwm.training.faults import StopSignalHandler
from megatron_dwm.training.weighting import build_dwm, stage_schedule


def exchange_channel(context: ParallelContext, timeout: float) -> Channel:
    """The exchange group as a channel whose errors name the peer's side ("DWM rank 3")."""
    first_dwm_rank = context.layout.llm_world_size

    def describe(rank: int) -> str:
        return f"DWM rank {rank}" if rank >= first_dwm_rank else f"training rank {rank}"

    return Channel(context.exchange_group, timeout, describe)


def remote_dwm(args: argparse.Namespace, context: ParallelContext, data_parallel_rank: int,
               device: torch.device) -> RemoteDWM:
    """A last-stage training rank's end of the weights' exchange."""
    layout = context.layout
    source = context.dwm_rank_list[serving_dwm_index(data_parallel_rank, layout.dwm_ranks, layout.data_parallel_size)]
    return RemoteDWM(exchange_channel(context, args.dwm_exchange_timeout), context.dwm_rank_list, source,
                     data_parallel_rank, layout.data_parallel_size, context.rank == context.leader, device)


class DWMRanksLink:
    """The trainer's commands to the DWM ranks (sent by the leader; a no-op on the other LLM ranks)."""

    def __init__(self, args: argparse.Namespace, context: ParallelContext) -> None:
        self.active = context.rank == context.leader
        self.dwm_ranks = context.dwm_rank_list
        self.channel = exchange_channel(context, args.dwm_exchange_timeout)

    def _send(self, command: Command, obj=None, iteration: int = 0) -> None:
        if self.active:
            self.channel.send_many(self.dwm_ranks, Message(command, iteration, obj=obj))

    def load(self, path: str, names: list[str], load_optimizer: bool) -> None:
        self._send(Command.LOAD, (str(path), names, load_optimizer))

    def start(self, progress: dict) -> None:
        self._send(Command.START, progress)

    def save(self, root: str, iteration: int, common: dict) -> None:
        self._send(Command.SAVE, (str(root), common), iteration)

    def stop(self) -> None:
        self._send(Command.STOP)


class ReplicaBatches:
    """The global batches of the data-parallel replicas a DWM rank serves, read like the training
    ranks read them (same datasets, sampler and position), as one chunk per replica."""

    def __init__(self, args: argparse.Namespace, datasets, consumed_samples: int, replicas: range,
                 data_parallel_size: int) -> None:
        self.seq_length = args.dwm_seq_length
        self.num_microbatches = args.global_batch_size // (args.micro_batch_size * data_parallel_size)
        self.loaders = [iter(build_pretraining_data_loader(datasets.train, consumed_samples, args.micro_batch_size,
                                                           replica, data_parallel_size,
                                                           pin_memory=get_platform().pin_memory))
                        for replica in replicas]

    def next_chunks(self) -> list[Samples]:
        return [concat_samples([next(loader) for _ in range(self.num_microbatches)], self.seq_length)
                for loader in self.loaders]


class DWMRankServer:
    """A DWM rank's loop: answer the leader's commands until STOP."""

    def __init__(self, args: argparse.Namespace, context: ParallelContext) -> None:
        self.args = args
        self.context = context
        self.device = get_platform().device
        self.tokenizer, _, padded_vocab = llm_arch(args)
        self.index = context.rank - context.layout.llm_world_size  # within the DWM group
        self.replicas = replicas_of(self.index, context.layout.dwm_ranks, context.layout.data_parallel_size)
        self.copy: DWMCopy = build_dwm(args, padded_vocab, self.device, context.dwm_group, cls=DWMCopy)
        self.schedule = stage_schedule(args)
        self.checkpoints = CheckpointManager()  # the same components/dwm entry as the colocated DWM's
        self.checkpoints.add_component(DWM_COMPONENT, self.copy, self.index)
        # the training ranks may spend a long time between commands (evaluation, checkpoints)
        self.channel = exchange_channel(context, 60.0 * args.distributed_timeout_minutes)
        self.batches: ReplicaBatches | None = None
        self.next_iteration = 0  # the iteration whose global batch the data position is at
        self.ahead: tuple[int, GlobalBatchWeights] | None = None  # weights computed before they were asked for
        self.graph_iteration: int | None = None  # the iteration whose weights hold the DWM's graph

    def serve(self) -> int:
        leader = self.context.leader
        print(f"DWM rank {self.context.rank}: serving data-parallel replicas {self.replicas.start}.."
              f"{self.replicas.stop - 1} of {self.context.layout.data_parallel_size}", flush=True)
        while True:
            message = self.channel.receive(leader)
            if message.command == Command.STOP:
                return 0
            handler = {Command.LOAD: self._load, Command.START: self._start, Command.REQUEST: self._request,
                       Command.UPDATE: self._update, Command.SAVE: self._save}.get(message.command)
            if handler is None:
                raise ExchangeError(f"training rank {leader} sent {message.command.name}, which a DWM rank "
                                    "does not take")
            handler(message)

    def _load(self, message: Message) -> None:
        path, names, load_optimizer = message.obj
        self.checkpoints.load_components(path, names, load_optimizer=load_optimizer)

    def _start(self, message: Message) -> None:
        progress = message.obj
        datasets = build_datasets(self.args, self.tokenizer, is_built_on_rank=lambda: True)
        self.batches = ReplicaBatches(self.args, datasets, progress["consumed_train_samples"], self.replicas,
                                      self.context.layout.data_parallel_size)
        self.next_iteration = progress["iteration"]

    def _weights_of(self, iteration: int) -> GlobalBatchWeights:
        if self.ahead is not None and self.ahead[0] == iteration:
            return self.ahead[1]
        if iteration != self.next_iteration:
            raise ExchangeError(f"the weights of iteration {iteration} were asked for, but the data is at "
                                f"iteration {self.next_iteration}")
        chunks = self.batches.next_chunks()
        self.next_iteration += 1
        keep_graph = self.schedule.updates_dwm(iteration)
        last = self.copy.score(chunks, iteration / self.args.train_iters, keep_graph)
        self.graph_iteration = iteration if keep_graph else None
        return last

    def _request(self, message: Message) -> None:
        iteration = message.iteration
        last = self._weights_of(iteration)
        self.ahead = None
        self.channel.post(weight_messages(last, iteration, self.replicas, self.context.layout.data_parallel_size,
                                          self.context.last_stage_dp_ranks, self.context.leader,
                                          send_record=self.index == 0))
        following = iteration + 1
        if following < self.args.train_iters and not self.schedule.updates_dwm(iteration):
            self.ahead = (following, self._weights_of(following))  # the DWM will not change before it is used

    def _update(self, message: Message) -> None:
        """DESIGN.md section 4, step 7 on the DWM ranks: the hypergradient the leader sent."""
        if message.iteration != self.graph_iteration:
            raise ExchangeError(f"a hypergradient for iteration {message.iteration} arrived, but the DWM's graph "
                                f"is of iteration {self.graph_iteration}")
        self.copy.apply_hypergradient(message.floats.float())
        self.graph_iteration = None

    def _save(self, message: Message) -> None:
        root, common = message.obj
        self.checkpoints.save_components(root, message.iteration, common)


def run_dwm_rank(args: argparse.Namespace, context: ParallelContext) -> int:
    """The whole life of a DWM rank; returns its exit code."""
    join_optimizer_setup_outside_llm()  # the LLM ranks' optimizer set-up is world-wide
    start = time.time()
    with StopSignalHandler():  # pre-emption: the training ranks save and then send STOP
        code = DWMRankServer(args, context).serve()
    print(f"DWM rank {context.rank}: done after {time.time() - start:.0f} s", flush=True)
    return code
