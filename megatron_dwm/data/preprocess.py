"""jsonl(.zst) documents -> Megatron indexed datasets, optionally one per SlimPajama domain.

The main process streams lines from the inputs in order and hands chunks of them to a pool of
workers, which decode, validate and tokenize; results come back in input order and are written
with megatron-core's ``IndexedDatasetBuilder`` (through :class:`AtomicIndexedWriter`). Every
input record ends up either written or rejected with its file, line and reason:
``docs_in == docs_written + sum(rejected.values())``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy

from megatron_dwm.data.documents import REJECTION_REASONS, Document, Rejection, parse_document
from megatron_dwm.data.indexed_writer import AtomicIndexedWriter
from megatron_dwm.data.jsonl_reader import Line, ReadFailure, expand_inputs, read_lines
from megatron_dwm.data.progress_bar import Progress
from megatron_dwm.data.tokenizer import TextTokenizer, build_tokenizer


class PreprocessError(RuntimeError):
    """Bad input under ``--strict`` (the message names file and line), or unusable arguments."""


@dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: str
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    workers: int = 1
    split_by_domain: bool = False
    strict: bool = False
    overwrite: bool = False  # replace existing outputs (else they are refused before any work)
    chunk_size: int = 64
    log_interval: int = 100_000
    max_reported: int = 100  # rejections printed one by one; all are counted


@dataclass(frozen=True)
class RejectedRecord:
    path: str
    line_no: int
    reason: str
    message: str

    def location(self) -> str:
        return f"{self.path}:{self.line_no}" if self.line_no else self.path

    def __str__(self) -> str:
        return f"{self.location()}: {self.reason}: {self.message}"


@dataclass
class PreprocessStats:
    docs_in: int = 0
    docs_written: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    rejections: list[RejectedRecord] = field(default_factory=list)
    docs_per_domain: Counter = field(default_factory=Counter)
    tokens_per_domain: Counter = field(default_factory=Counter)
    outputs: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(self.tokens_per_domain.values())


def output_prefix_for(output_prefix: str, json_key: str, domain: str | None) -> str:
    """Megatron's ``{prefix}_{key}_document``; with a domain, ``{prefix}/{domain}_{key}_document``."""
    if domain is None:
        return f"{output_prefix}_{json_key}_document"
    return os.path.join(output_prefix, f"{domain}_{json_key}_document")


# ---------------------------------------------------------------------------- workers

_worker_tokenizer: TextTokenizer | None = None
_worker_options: tuple = ()


def _init_worker(tokenizer_type: str, tokenizer_model: str, json_keys, append_eod, require_domain):
    global _worker_tokenizer, _worker_options
    _worker_tokenizer = build_tokenizer(tokenizer_type, tokenizer_model)
    _worker_options = (tuple(json_keys), append_eod, require_domain)


def _encode_chunk(chunk: list[Line | ReadFailure]) -> list[tuple]:
    """Per record: (path, line, nbytes, domain, {key: ids}) or (path, line, nbytes, Rejection)."""
    json_keys, append_eod, require_domain = _worker_options
    results = []
    for item in chunk:
        if isinstance(item, ReadFailure):
            results.append((item.path, item.line_no, 0, Rejection(item.reason, item.message)))
            continue
        parsed = _encode_line(item.data, json_keys, append_eod, require_domain)
        results.append((item.path, item.line_no, len(item.data) + 1, *parsed))
    return results


def _encode_line(data: bytes, json_keys, append_eod: bool, require_domain: bool) -> tuple:
    document = parse_document(data, json_keys, require_domain)
    if isinstance(document, Rejection):
        return (document,)
    encoded = {}
    for key, text in document.texts.items():
        ids = _worker_tokenizer.tokenize(text)
        if not ids:
            return (Rejection("empty_text", f"{key!r} tokenizes to no tokens"),)
        if append_eod:
            ids = [*ids, _worker_tokenizer.eod]
        encoded[key] = numpy.asarray(ids, dtype=numpy.int32)
    return document.domain, encoded


def _chunks(files: Iterable[str], size: int) -> Iterator[list[Line | ReadFailure]]:
    records = itertools.chain.from_iterable(read_lines(path) for path in files)
    while chunk := list(itertools.islice(records, size)):
        yield chunk


# ---------------------------------------------------------------------------- driver


def preprocess(config: PreprocessConfig, progress_stream=None) -> PreprocessStats:
    """Run the whole conversion; returns the counts. Raises :class:`PreprocessError`."""
    files, tokenizer = _validate(config)
    init_args = (
        config.tokenizer_type,
        config.tokenizer_model,
        config.json_keys,
        config.append_eod,
        config.split_by_domain,
    )
    stats = PreprocessStats()
    writers: dict[tuple[str | None, str], AtomicIndexedWriter] = {}
    progress = Progress("preprocess", config.log_interval, progress_stream)
    pool = None
    try:
        chunks = _chunks(files, config.chunk_size)
        if config.workers > 1:
            pool = multiprocessing.get_context("fork").Pool(config.workers, _init_worker, init_args)
            results = pool.imap(_encode_chunk, chunks, chunksize=4)
        else:
            _init_worker(*init_args)
            results = map(_encode_chunk, chunks)
        for chunk_results in results:
            for record in chunk_results:
                _consume(record, config, tokenizer, stats, writers, progress)
        for writer in writers.values():
            writer.commit()
            stats.outputs.append(writer.path_prefix)
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        progress.close()
    stats.seconds = progress.elapsed
    stats.bytes_in = progress.bytes
    return stats


def _validate(config: PreprocessConfig) -> tuple[list[str], TextTokenizer]:
    """Check arguments before any work: inputs exist, tokenizer loads, output is writable."""
    if config.workers < 1:
        raise PreprocessError(f"--workers must be at least 1, got {config.workers}")
    if not config.json_keys:
        raise PreprocessError("--json-keys needs at least one key")
    try:
        files = expand_inputs(config.inputs)
        tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model)
    except (FileNotFoundError, ValueError) as error:
        raise PreprocessError(str(error)) from error
    out_dir = config.output_prefix if config.split_by_domain else os.path.dirname(config.output_prefix)
    out_dir = out_dir or "."
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise PreprocessError(f"--output-prefix {config.output_prefix!r}: {error}") from error
    if not os.access(out_dir, os.W_OK):
        raise PreprocessError(f"--output-prefix {config.output_prefix!r}: {out_dir} is not writable")
    if not config.overwrite:
        refuse_existing(existing_outputs(config))
    return files, tokenizer


def existing_outputs(config: PreprocessConfig) -> list[str]:
    """Output files already on disk that this run could replace: its ``.bin``/``.idx``; with
    ``--split-by-domain`` every ``*_<key>_document.{bin,idx}`` in the output directory (the domains
    are known only once the input is read)."""
    if not config.split_by_domain:
        return [path for key in config.json_keys
                for path in existing_files(output_prefix_for(config.output_prefix, key, None))]
    if not os.path.isdir(config.output_prefix):
        return []
    endings = tuple(f"_{key}_document{suffix}" for key in config.json_keys for suffix in (".bin", ".idx"))
    return sorted(os.path.join(config.output_prefix, name) for name in os.listdir(config.output_prefix)
                  if name.endswith(endings))


def existing_files(prefix: str) -> list[str]:
    """Which of ``prefix.bin`` and ``prefix.idx`` are on disk."""
    return [path for path in (prefix + ".bin", prefix + ".idx") if os.path.lexists(path)]


def refuse_existing(paths: list[str], shown: int = 10) -> None:
    """Raise PreprocessError naming existing outputs: data is never replaced without --overwrite."""
    if not paths:
        return
    named = ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
    raise PreprocessError(f"{named} already exist{'s' if len(paths) == 1 else ''}; nothing was written "
                          "(pass --overwrite to replace, or choose another --output-prefix)")


def _consume(record, config, tokenizer, stats, writers, progress) -> None:
    path, line_no, nbytes, *payload = record
    stats.docs_in += 1
    progress.update(1, nbytes)
    if isinstance(payload[0], Rejection):
        rejected = RejectedRecord(path, line_no, payload[0].reason, payload[0].message)
        if config.strict:
            raise PreprocessError(f"{rejected} (--strict)")
        stats.rejected[rejected.reason] += 1
        stats.rejections.append(rejected)
        if len(stats.rejections) <= config.max_reported:
            progress.write(f"rejected {rejected}")
        return
    domain, encoded = payload
    for key, ids in encoded.items():
        writer_domain = domain if config.split_by_domain else None
        writer = writers.get((writer_domain, key))
        if writer is None:
            prefix = output_prefix_for(config.output_prefix, key, writer_domain)
            writer = writers[(writer_domain, key)] = AtomicIndexedWriter(prefix, tokenizer.vocab_size)
        writer.add_document([ids])
        stats.tokens_per_domain[domain] += len(ids)
    stats.docs_written += 1
    stats.docs_per_domain[domain] += 1


def format_summary(stats: PreprocessStats) -> str:
    """The end-of-run report: counts, rejections by reason, tokens per domain, outputs."""
    seconds = max(stats.seconds, 1e-9)
    rejected = sum(stats.rejected.values())
    lines = [
        f"docs in: {stats.docs_in}  written: {stats.docs_written}  rejected: {rejected}",
        f"throughput: {stats.docs_in / seconds:.0f} docs/s, {stats.bytes_in / 1e6 / seconds:.2f} MB/s, "
        f"{stats.tokens / seconds:.0f} tokens/s ({seconds:.1f} s)",
    ]
    for reason in sorted(stats.rejected, key=_reason_order):
        lines.append(f"  rejected {reason}: {stats.rejected[reason]}")
    if len(stats.rejections) > 0:
        lines.append(f"  first rejected record: {stats.rejections[0]}")
    for domain in sorted(stats.tokens_per_domain):
        lines.append(
            f"  domain {domain}: {stats.docs_per_domain[domain]} docs, "
            f"{stats.tokens_per_domain[domain]} tokens"
        )
    for prefix in stats.outputs:
        lines.append(f"  wrote {prefix}.bin/.idx")
    return "\n".join(lines)


def run_as_command(job: Callable[[], PreprocessStats]) -> int:
    """Exit status of a preprocessing command: 0 with the summary on stdout, or 1 with the error
    (bad arguments, or bad input under ``--strict``) on stderr."""
    try:
        stats = job()
    except (PreprocessError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_summary(stats))
    return 0


def _reason_order(reason: str) -> int:
    return REJECTION_REASONS.index(reason) if reason in REJECTION_REASONS else len(REJECTION_REASONS)
