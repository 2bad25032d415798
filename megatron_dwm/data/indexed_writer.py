"""Write a Megatron indexed dataset (``.bin``/``.idx``) atomically.

megatron-core's ``IndexedDatasetBuilder`` writes to temporary names; :meth:`commit` flushes both
to disk and renames them into place only once both are complete: any older ``.idx`` is removed
first, the ``.bin`` is renamed, the ``.idx`` last. A run interrupted at any point leaves the old
pair, or a ``.bin`` without ``.idx``, or the new pair: never a ``.bin``/``.idx`` pair that does not
belong together. Whether existing outputs may be replaced at all is the caller's decision
(``--overwrite``).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)


class AtomicIndexedWriter:
    """One output prefix; add documents, then :meth:`commit` or :meth:`discard`."""

    def __init__(self, path_prefix: str, vocab_size: int) -> None:
        self.path_prefix = path_prefix
        self.dtype = DType.optimal_dtype(vocab_size)
        suffix = f".tmp-{os.getpid()}"
        self._tmp_bin = get_bin_path(path_prefix) + suffix
        self._tmp_idx = get_idx_path(path_prefix) + suffix
        directory = os.path.dirname(path_prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._builder = IndexedDatasetBuilder(self._tmp_bin, dtype=self.dtype)
        self.documents = 0
        self.tokens = 0

    def add_document(self, sequences: Sequence[numpy.ndarray]) -> None:
        """One document made of one or more token sequences."""
        lengths = [len(s) for s in sequences]
        tokens = numpy.concatenate(sequences) if len(sequences) > 1 else sequences[0]
        self._builder.add_document(tokens, lengths)
        self.documents += 1
        self.tokens += sum(lengths)

    def commit(self) -> None:
        """Finish the index and move both files to their final names."""
        self._builder.finalize(self._tmp_idx)
        for path in (self._tmp_bin, self._tmp_idx):
            _flush_to_disk(path)
        final_bin, final_idx = get_bin_path(self.path_prefix), get_idx_path(self.path_prefix)
        if os.path.exists(final_idx):
            os.remove(final_idx)
        os.replace(self._tmp_bin, final_bin)
        os.replace(self._tmp_idx, final_idx)

    def discard(self) -> None:
        """Drop the temporary files (after an error)."""
        self._builder.data_file.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)


def _flush_to_disk(path: str) -> None:
    """fsync a finished file, so that a crash after its rename cannot leave it short."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())
