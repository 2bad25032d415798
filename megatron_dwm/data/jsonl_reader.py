"""Find ``.jsonl``/``.jsonl.zst`` inputs and stream their lines, reporting read failures.

Lines come out as raw bytes (decoding and JSON parsing happen later, in the workers). ``.zst``
files are decompressed on the fly, frame after frame; a stream that ends inside a frame
(a truncated download) or fails to decompress is reported as a :class:`ReadFailure` right after
the last complete line, and so is a file that cannot be opened or read.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import zstandard

INPUT_SUFFIXES = (".jsonl", ".jsonl.zst", ".json", ".json.zst")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Line:
    """One input line: where it came from and its raw bytes (without the newline)."""

    path: str
    line_no: int
    data: bytes


@dataclass(frozen=True)
class ReadFailure:
    """A file (or the rest of one) that could not be read; ``line_no`` is the line it stopped at."""

    path: str
    line_no: int
    reason: str  # "unreadable_file" | "truncated_zst" | "corrupt_zst"
    message: str


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by ``--input``: files, globs and directories (searched recursively), in order.

    Raises ``FileNotFoundError`` naming the pattern when one matches no input file.
    """
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = sorted(
                str(p) for p in Path(pattern).rglob("*") if p.is_file() and is_input_file(p.name)
            )
        elif glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        else:
            matches = [pattern] if os.path.lexists(pattern) else []
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r}: no .jsonl or .jsonl.zst file found")
        files.extend(m for m in matches if m not in files)
    return files


def is_input_file(name: str) -> bool:
    return name.endswith(INPUT_SUFFIXES)


def read_lines(path: str) -> Iterator[Line | ReadFailure]:
    """Every line of one file, then a ``ReadFailure`` if the file could not be read to its end.

    Empty lines (blank separators) are skipped but keep the line numbering of the file.
    """
    line_no = 0
    pending = b""
    try:
        with open(path, "rb") as raw:
            chunks = _zstd_chunks(raw, path) if path.endswith(".zst") else _plain_chunks(raw)
            for chunk in chunks:
                pieces = (pending + chunk).split(b"\n")
                pending = pieces.pop()
                for piece in pieces:
                    line_no += 1
                    if piece.strip():
                        yield Line(path, line_no, piece)
        if pending.strip():
            yield Line(path, line_no + 1, pending)
    except _TruncatedStream as error:
        yield ReadFailure(path, line_no + 1, "truncated_zst", str(error))
    except zstandard.ZstdError as error:
        yield ReadFailure(path, line_no + 1, "corrupt_zst", f"zstd decompression failed: {error}")
    except OSError as error:
        yield ReadFailure(path, line_no + 1 if line_no else 0, "unreadable_file", f"cannot read: {error}")


class _TruncatedStream(Exception):
    pass


def _plain_chunks(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(_CHUNK_BYTES):
        yield chunk


def _zstd_chunks(raw: BinaryIO, path: str) -> Iterator[bytes]:
    """Decompressed bytes of all frames; raises ``_TruncatedStream`` if the last frame is cut."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    inside_frame = False
    while compressed := raw.read(_CHUNK_BYTES):
        while compressed:
            inside_frame = True
            out = decompressor.decompress(compressed)
            if out:
                yield out
            if decompressor.eof:
                compressed = decompressor.unused_data
                decompressor = zstandard.ZstdDecompressor().decompressobj()
                inside_frame = False
            else:
                compressed = b""
    if inside_frame:
        raise _TruncatedStream(
            f"{path}: the zstd stream ends inside a frame (truncated file); "
            "the lines of the incomplete block are lost"
        )
