"""Micro batches: collation with domain ids, ``get_batch`` broadcasting inside the TP group, and
``context_parallel_share``: a context-parallel rank's share of each sample's tokens.

A micro batch is a dict of tensors, all with the micro batch size ``b`` as first dimension:

==================  ==============  ========================================================
key                 shape, dtype    meaning
==================  ==============  ========================================================
tokens              [b, s] int64    input token ids
labels              [b, s] int64    next-token targets
loss_mask           [b, s] float32  1 where the label counts
position_ids        [b, s] int64
attention_mask      [b, 1, s, s]    bool, True = masked (only when the dataset creates it)
domain_id           [b] int64       index of the sample's dataset in the blend (-1: validation)
document_id         [b] int64       document the sample starts in, within that dataset
==================  ==============  ========================================================
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist

SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
SAMPLE_KEYS = ("domain_id", "document_id")
_DTYPES = {
    "tokens": torch.long,
    "labels": torch.long,
    "loss_mask": torch.float,
    "position_ids": torch.long,
    "attention_mask": torch.bool,
    "domain_id": torch.long,
    "document_id": torch.long,
}


def collate_samples(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples; megatron-core's ``dataset_id`` becomes ``domain_id`` (0 for a lone dataset)."""
    batch = torch.utils.data.default_collate(samples)
    domain_id = batch.pop("dataset_id", None)
    if "domain_id" not in batch:
        batch["domain_id"] = (
            torch.zeros(len(samples), dtype=torch.long) if domain_id is None else domain_id.long()
        )
    return {key: batch[key].to(_DTYPES[key]) for key in _DTYPES if key in batch}


def get_batch(
    data_iterator: Optional[Iterator[dict]],
    device: torch.device,
    tp_group: Optional[dist.ProcessGroup] = None,
) -> dict[str, torch.Tensor]:
    """The next micro batch on every rank of the tensor-parallel group, on ``device`` (the platform's).

    The group's first rank reads ``data_iterator`` and broadcasts the batch; the other ranks may
    pass ``None``. ``tp_group`` defaults to megatron-core's ``parallel_state`` TP group.
    Raises ``StopIteration`` on all ranks when the source's iterator is exhausted.
    """
    if tp_group is None:
        from megatron.core import parallel_state

        tp_group = parallel_state.get_tensor_model_parallel_group()
    group_size = dist.get_world_size(tp_group) if dist.is_initialized() else 1
    if group_size == 1:
        return {key: value.to(device, non_blocking=True) for key, value in next(data_iterator).items()}
    source = dist.get_global_rank(tp_group, 0)
    is_source = dist.get_rank() == source

    batch = None
    header = torch.zeros(3, dtype=torch.long, device=device)  # micro batch, seq length, has mask
    if is_source:
        batch = next(data_iterator, None)
        if batch is not None:
            tokens = batch["tokens"]
            header = torch.tensor(
                [tokens.shape[0], tokens.shape[1], int("attention_mask" in batch)], device=device
            )
    dist.broadcast(header, source, group=tp_group)
    micro_batch, seq_length, has_attention_mask = header.tolist()
    if micro_batch == 0:
        raise StopIteration

    shapes = {key: (micro_batch, seq_length) for key in SEQUENCE_KEYS}
    if has_attention_mask:
        shapes["attention_mask"] = (micro_batch, 1, seq_length, seq_length)
    shapes.update({key: (micro_batch,) for key in SAMPLE_KEYS})
    received = {}
    for key, shape in shapes.items():
        if is_source:
            tensor = batch[key].to(device=device, dtype=_DTYPES[key]).contiguous()
        else:
            tensor = torch.empty(shape, dtype=_DTYPES[key], device=device)
        dist.broadcast(tensor, source, group=tp_group)
        received[key] = tensor
    return received


def context_parallel_share(batch: dict[str, torch.Tensor],
                           cp_group: Optional[dist.ProcessGroup]) -> dict[str, torch.Tensor]:
    """This context-parallel rank's share of every sample of `batch`: megatron-core's load-balanced
    split (``get_batch_on_this_cp_rank``: the sequence cut into 2 x CP chunks, rank r keeping chunks
    r and 2 CP - 1 - r) of the sequence keys and the attention mask's query dimension; the per-sample
    keys whole. `batch` itself is left as it is (the DWM reads the whole samples)."""
    if cp_group is None or dist.get_world_size(cp_group) == 1:
        return batch
    from megatron.core.utils import get_batch_on_this_cp_rank

    sequences = {key: batch[key] for key in (*SEQUENCE_KEYS, "attention_mask") if key in batch}
    share = get_batch_on_this_cp_rank({**sequences, "cu_seqlens": None}, is_hybrid_cp=False, cp_group=cp_group)
    return {**batch, **{key: share[key] for key in sequences}}
