"""The loop's data: training blend, valid split and LAMBADA-style set, positioned for resume.

Datasets are built on tensor-parallel rank 0 of every pipeline stage; the other TP ranks receive
each micro batch by broadcast (:func:`megatron_dwm.data.get_batch`).
"""

from __future__ import annotations

import argparse
from typing import Callable, Iterator, Optional

import torch
from megatron.core import parallel_state

from megatron_dwm.data import (
    ContextTargetDataset,
    build_pretraining_data_loader,
    build_train_valid_test_datasets,
    get_batch,
)
from megatron_dwm.data.datasets import TrainValidTestDatasets, default_is_built_on_rank
from megatron_dwm.data.tokenizer import TextTokenizer
from megatron_dwm.platform import get_platform
from megatron_dwm.training.progress import TrainingProgress

Microbatch = dict[str, torch.Tensor]


def dataset_sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """Samples of the train and valid splits for the whole run (Megatron-LM's rule); the test split
    is not used by training and is not built."""
    evaluations = args.train_iters // args.eval_interval + 1
    train_samples = args.train_samples or args.train_iters * args.global_batch_size  # as Megatron-LM
    return (train_samples, evaluations * args.eval_iters * args.global_batch_size, 0)


def build_datasets(args: argparse.Namespace, tokenizer: TextTokenizer,
                   is_built_on_rank: Callable[[], bool] = default_is_built_on_rank) -> TrainValidTestDatasets:
    """The run's train and valid splits (collective over the world: megatron-core's builder
    synchronises all ranks, so the DWM ranks build them too)."""
    return build_train_valid_test_datasets(
        args.data_path, args.split, args.seq_length, args.seed, tokenizer, args.data_cache_path,
        dataset_sizes(args), per_split_data_args_path=args.per_split_data_args_path,
        reset_position_ids=args.reset_position_ids, reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss, create_attention_mask=args.reset_attention_mask,
        is_built_on_rank=is_built_on_rank,
    )


class TrainingData:
    """Iterators over micro batches of this DP rank for training, validation and the LAMBADA-style set."""

    def __init__(self, args: argparse.Namespace, tokenizer: TextTokenizer, progress: TrainingProgress,
                 device: torch.device) -> None:
        self.args = args
        self.device = device
        self.pin_memory = get_platform().pin_memory
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.num_microbatches = args.global_batch_size // (args.micro_batch_size * self.dp_size)
        self.is_source = parallel_state.get_tensor_model_parallel_rank() == 0
        datasets = build_datasets(args, tokenizer)
        self.domains = datasets.domains
        self.train = self._loader(datasets.train, progress.consumed_train_samples, args.num_workers)
        self.valid = self._loader(datasets.valid, progress.consumed_valid_samples, 0)
        self.has_valid = args.eval_iters > 0 and bool(self._from_tp_source(int(datasets.valid is not None)))
        self.lambada: Optional[ContextTargetDataset] = None
        self.dwm_valid: Optional[Iterator[Microbatch]] = None  # endless: the DWM's outer steps
        if args.dwm_valid_data_path and self.is_source:
            self.lambada = ContextTargetDataset(args.dwm_valid_data_path, args.seq_length,
                                                args.reset_attention_mask)
            self.dwm_valid = self._cyclic(progress.consumed_dwm_valid_samples)
        # the LAMBADA-style set's whole global batches, known on every TP rank
        self.lambada_global_batches = self._from_tp_source(len(self.lambada) if self.lambada else 0) \
            // args.global_batch_size

    def _loader(self, dataset, consumed: int, num_workers: int) -> Optional[Iterator[Microbatch]]:
        if dataset is None or not self.is_source or consumed >= len(dataset):  # nothing (left) to read
            return None
        return iter(build_pretraining_data_loader(dataset, consumed, self.args.micro_batch_size, self.dp_rank,
                                                  self.dp_size, num_workers=num_workers, pin_memory=self.pin_memory))

    def _cyclic(self, consumed: int) -> Iterator[Microbatch]:
        """The LAMBADA-style set from `consumed` on, wrapping around at its end."""
        return iter(build_pretraining_data_loader(self.lambada, consumed, self.args.micro_batch_size, self.dp_rank,
                                                  self.dp_size, cyclic=True, pin_memory=self.pin_memory))

    def _from_tp_source(self, value: int) -> int:
        """`value` as the tensor-parallel group's first rank (which holds the datasets) has it."""
        group = parallel_state.get_tensor_model_parallel_group()
        tensor = torch.tensor([value], device=self.device)
        torch.distributed.broadcast(tensor, torch.distributed.get_global_rank(group, 0), group=group)
        return int(tensor.item())

    def next_global_batch(self, iterator: Optional[Iterator[Microbatch]], samples: int | None = None) -> list[Microbatch]:
        """This DP rank's share of the next `samples` (default: a global batch), as micro batches on
        every TP rank."""
        count = self.num_microbatches if samples is None else samples // (self.args.micro_batch_size * self.dp_size)
        return [get_batch(iterator, device=self.device) for _ in range(count)]

    def lambada_batches(self) -> tuple[Optional[Iterator[Microbatch]], int]:
        """A fresh pass over the LAMBADA-style set: (iterator, number of whole global batches).

        Every evaluation scores the same first ``len // global_batch`` global batches of the set.
        """
        if self.lambada is None:
            return None, self.lambada_global_batches
        return self._cyclic(0), self.lambada_global_batches
