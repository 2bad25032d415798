"""Reader of the DWM's validation set: context + target examples with a loss mask on the target only.

Reads the two-sequence indexed format written by ``tools/preprocess_lambada.py`` (see
:mod:`megatron_dwm.data.context_target_writer`) with megatron-core's ``IndexedDataset``. Each example is
one sample, right-padded to ``seq_length``; an example longer than ``seq_length + 1`` tokens
loses the start of its context.
"""

from __future__ import annotations

import numpy
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

VALIDATION_DOMAIN_ID = -1


class ContextTargetDataset(torch.utils.data.Dataset):
    """Samples with the keys of a training sample (tokens, labels, loss_mask, position_ids,
    optional attention_mask, domain_id, document_id); loss_mask is 1 exactly where the label is a
    target token. ``domain_id`` is -1 and ``document_id`` the example's index."""

    def __init__(self, path_prefix: str, seq_length: int, create_attention_mask: bool = False) -> None:
        self.path_prefix = path_prefix
        self.seq_length = seq_length
        self.create_attention_mask = create_attention_mask
        self.indexed = IndexedDataset(path_prefix)
        document_indices = self.indexed.document_indices
        if len(document_indices) < 2 or not numpy.all(numpy.diff(document_indices) == 2):
            raise ValueError(
                f"{path_prefix}: not a context + target dataset (every document must hold two "
                "sequences, context then target); build it with tools/preprocess_lambada.py"
            )

    def __len__(self) -> int:
        return len(self.indexed.document_indices) - 1

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        context = self.indexed[2 * idx].astype(numpy.int64)
        target = self.indexed[2 * idx + 1].astype(numpy.int64)
        text = numpy.concatenate([context, target])[-(self.seq_length + 1):]
        context_len = len(text) - len(target)
        tokens = torch.zeros(self.seq_length, dtype=torch.long)
        labels = torch.zeros(self.seq_length, dtype=torch.long)
        loss_mask = torch.zeros(self.seq_length, dtype=torch.float)
        n = len(text) - 1
        tokens[:n] = torch.from_numpy(text[:-1])
        labels[:n] = torch.from_numpy(text[1:])
        loss_mask[max(context_len - 1, 0):n] = 1.0  # label j is token j + 1
        sample = {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": torch.arange(self.seq_length, dtype=torch.long),
        }
        if self.create_attention_mask:
            causal = torch.tril(torch.ones(self.seq_length, self.seq_length)).unsqueeze(0)
            sample["attention_mask"] = causal < 0.5  # megatron-core: True = masked out
        sample["domain_id"] = torch.tensor(VALIDATION_DOMAIN_ID, dtype=torch.long)
        sample["document_id"] = torch.tensor(idx, dtype=torch.long)
        return sample
