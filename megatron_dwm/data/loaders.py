"""Data loaders that resume from a consumed-samples position.

- Training: megatron's ``MegatronPretrainingSampler`` (each DP rank takes its micro batch slice
  of every ``micro_batch_size * dp_size`` consecutive samples), so a run resumed at
  ``consumed_samples`` sees the batches it would have seen.
- DWM validation: :class:`CyclicBatchSampler`, the same slicing over a small set, wrapping around
  at its end for as long as training asks.
"""

from __future__ import annotations

import itertools
import signal
from typing import Iterator

import torch
from megatron.training.datasets.data_samplers import MegatronPretrainingSampler

from megatron_dwm.data.batches import collate_samples


class CyclicBatchSampler:
    """Micro batches of indices for one DP rank, cycling through ``dataset_size`` forever."""

    def __init__(
        self,
        dataset_size: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("the validation set is empty")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data parallel rank {data_parallel_rank} not in [0, {data_parallel_size})")
        self.dataset_size = dataset_size
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch_size * self.data_parallel_size
        start = self.consumed_samples + self.data_parallel_rank * self.micro_batch_size
        for position in itertools.count(start, step):
            yield [(position + i) % self.dataset_size for i in range(self.micro_batch_size)]


def ignore_stop_signals(_worker_id: int) -> None:
    """Data-loader workers leave SIGTERM / SIGUSR1 (pre-emption) to the training process, which
    saves a checkpoint and exits; a worker dying of the signal would abort that save."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def build_pretraining_data_loader(
    dataset: torch.utils.data.Dataset,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 0,
    cyclic: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of collated micro batches for one DP rank, starting at ``consumed_samples``.

    ``cyclic=True`` (the DWM validation set) wraps around the dataset instead of ending.
    ``pin_memory``: the platform's choice (``Platform.pin_memory``: batches go to a CUDA device).
    """
    if cyclic:
        sampler = CyclicBatchSampler(
            len(dataset), consumed_samples, micro_batch_size, data_parallel_rank, data_parallel_size
        )
    else:
        sampler = MegatronPretrainingSampler(
            total_samples=len(dataset),
            consumed_samples=consumed_samples,
            micro_batch_size=micro_batch_size,
            data_parallel_rank=data_parallel_rank,
            data_parallel_size=data_parallel_size,
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )

