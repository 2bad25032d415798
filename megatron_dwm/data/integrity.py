"""Is a ``.bin``/``.idx`` pair a complete Megatron indexed dataset, and which data is it?

:func:`indexed_problem` reads only the ``.idx`` header and its last entries (a few dozen bytes,
whatever the size of the files) and checks them against megatron-core's format
(``megatron/core/datasets/indexed_dataset.py``)::

    header  "MMIDIDX\\0\\0", version (u64) = 1, token dtype code (u8),
            sequence count S (u64), document count D + 1 (u64)          34 bytes
    body    sequence lengths (S x i32), sequence pointers (S x i64, byte offsets into the .bin),
            document indices (D + 1 x i64, from 0 to S) [, sequence modes (S x i8)]

The ``.bin`` holds exactly ``last pointer + last length x token size`` bytes.

:func:`dataset_identity` names the version of a prefix's files (their sizes and modification
times), so that caches derived from a prefix can be keyed on it.
"""

from __future__ import annotations

import os
import struct
from typing import Optional

from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

HEADER_BYTES = len(_INDEX_HEADER) + 8 + 1 + 8 + 8
INDEX_VERSION = 1


def indexed_problem(prefix: str, tool: str = "tools/preprocess_data.py") -> Optional[str]:
    """What is wrong with ``prefix.bin``/``prefix.idx`` (naming the file), or None if consistent.

    ``tool`` is the preprocessing command the message suggests re-running."""
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    missing = [path for path in (bin_path, idx_path) if not os.path.isfile(path)]
    if len(missing) == 2:
        return f"no {prefix}.bin/.idx"
    if missing:
        present = idx_path if missing[0] == bin_path else bin_path
        return f"no {missing[0]} (only {present} exists); re-run {tool}"
    try:
        return _pair_problem(bin_path, idx_path, tool)
    except OSError as error:
        return f"cannot read {error.filename or idx_path}: {error.strerror or error}"


def _pair_problem(bin_path: str, idx_path: str, tool: str) -> Optional[str]:
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as idx:
        header = idx.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            return (f"{idx_path} is {idx_size} bytes, shorter than an index header ({HEADER_BYTES} bytes): "
                    f"not a Megatron .idx, or truncated; re-run {tool}")
        magic_bytes = len(_INDEX_HEADER)
        if header[:magic_bytes] != _INDEX_HEADER:
            return f"{idx_path} does not start with Megatron's index header {_INDEX_HEADER!r}: not a Megatron .idx"
        version, code, sequences, boundaries = struct.unpack("<QBQQ", header[magic_bytes:])
        if version != INDEX_VERSION:
            return f"{idx_path}: index version {version}, expected {INDEX_VERSION}"
        if code not in {dtype.value for dtype in DType}:
            return f"{idx_path}: unknown token dtype code {code} (megatron-core knows 1 to {len(DType)})"
        problem = _size_problem(idx_path, idx_size, sequences, boundaries, tool)
        if problem:
            return problem
        if boundaries < 2:
            return f"{idx_path} holds no document; re-run {tool} on non-empty input"
        last_boundary = _read(idx, idx_size - _modes_bytes(idx_size, sequences, boundaries) - 8, "<q")
        if last_boundary != sequences:
            return (f"{idx_path}: its documents end at sequence {last_boundary}, but it holds {sequences} "
                    f"sequences: corrupt .idx; re-run {tool}")
        described = _described_bin_bytes(idx, sequences, DType.size(code))
    bin_size = os.path.getsize(bin_path)
    if bin_size == described:
        return None
    why = ("the .bin is truncated or the pair does not belong together" if bin_size < described
           else "the pair does not belong together (the .idx indexes other data)")
    return f"{bin_path} is {bin_size} bytes but {idx_path} describes {described}: {why}; re-run {tool}"


def _size_problem(idx_path: str, idx_size: int, sequences: int, boundaries: int, tool: str) -> Optional[str]:
    """The .idx must hold exactly the arrays its header announces (sequence modes optional)."""
    expected = HEADER_BYTES + 12 * sequences + 8 * boundaries
    if idx_size in (expected, expected + sequences):
        return None
    return (f"{idx_path} is {idx_size} bytes but its header announces {sequences} sequences and "
            f"{max(boundaries - 1, 0)} documents ({expected} bytes): the .idx is truncated or corrupt; re-run {tool}")


def _modes_bytes(idx_size: int, sequences: int, boundaries: int) -> int:
    """Bytes of the optional trailing sequence modes (multimodal datasets), 0 or S."""
    return idx_size - (HEADER_BYTES + 12 * sequences + 8 * boundaries)


def _described_bin_bytes(idx, sequences: int, token_bytes: int) -> int:
    """Bytes of the .bin the index describes: the last sequence's pointer plus its length."""
    if sequences == 0:
        return 0
    last_length = _read(idx, HEADER_BYTES + 4 * (sequences - 1), "<i")
    last_pointer = _read(idx, HEADER_BYTES + 4 * sequences + 8 * (sequences - 1), "<q")
    return last_pointer + last_length * token_bytes


def _read(file, offset: int, fmt: str) -> int:
    file.seek(offset)
    return struct.unpack(fmt, file.read(struct.calcsize(fmt)))[0]


def dataset_identity(prefix: str) -> str:
    """The version of a prefix's files: sizes and modification times (ns) of its .bin and .idx.

    Rewriting either file (re-preprocessing) changes it; reading does not."""
    parts = []
    for suffix in (".bin", ".idx"):
        status = os.stat(prefix + suffix)
        parts.append(f"{suffix[1:]}:{status.st_size}:{status.st_mtime_ns}")
    return " ".join(parts)
