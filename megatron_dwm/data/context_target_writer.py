"""Writer of context + target examples (LAMBADA and alike) as a Megatron indexed dataset.

Input: jsonl(.zst) records, either ``{"text": "... context ... target"}`` (LAMBADA: the last word
is the target) or ``{"context": ..., "target": ...}``.

On-disk format: a standard ``.bin/.idx`` pair in which every example is one *document of two
sequences*: sequence 0 is the context's tokens, sequence 1 the target's tokens (so
``document_indices == [0, 2, 4, ...]``). The loss mask of an example is implied: it covers
exactly the target's tokens. The tokens are those of the whole text (context + target tokenized
together), split where the context's own tokenization ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from megatron_dwm.data.documents import Rejection, load_record, text_field
from megatron_dwm.data.indexed_writer import AtomicIndexedWriter
from megatron_dwm.data.jsonl_reader import Line, expand_inputs, read_lines
from megatron_dwm.data.preprocess import (
    PreprocessError,
    PreprocessStats,
    RejectedRecord,
    existing_files,
    output_prefix_for,
    refuse_existing,
)
from megatron_dwm.data.progress_bar import Progress
from megatron_dwm.data.tokenizer import TextTokenizer

@dataclass(frozen=True)
class Example:
    context: str
    target: str
    separator: str = " "

    @property
    def text(self) -> str:
        return self.context + self.separator + self.target


def split_last_word(text: str) -> Example | None:
    """LAMBADA's rule: the target is the last whitespace-separated word of the passage."""
    text = text.strip()
    words = text.split()
    if len(words) < 2:
        return None
    target = words[-1]
    start = len(text) - len(target)
    context = text[:start].rstrip()
    return Example(context, target, text[len(context):start])


def parse_example(data: bytes, text_key: str = "text") -> Example | Rejection:
    """One jsonl line: ``{"context", "target"}`` if present, else the last word of ``text_key``."""
    record = load_record(data)
    if isinstance(record, Rejection):
        return record
    if "context" in record and "target" in record:
        context, target = text_field(record, "context"), text_field(record, "target")
        for field in (context, target):
            if isinstance(field, Rejection):
                return field
        separator = "" if context[-1].isspace() or target[0].isspace() else " "
        return Example(context, target, separator)
    text = text_field(record, text_key)
    if isinstance(text, Rejection):
        return text
    example = split_last_word(text)
    return example if example is not None else Rejection("no_context", "a single word, no context")


def encode_example(tokenizer: TextTokenizer, example: Example) -> tuple[list[int], list[int]] | Rejection:
    """(context ids, target ids): the whole text's tokens, split after the context's tokens."""
    context_ids = tokenizer.tokenize(example.context)
    full_ids = tokenizer.tokenize(example.text)
    if full_ids[: len(context_ids)] != context_ids or len(full_ids) == len(context_ids):
        return Rejection(
            "target_boundary", "the tokens of context + target do not start with the context's tokens"
        )
    return context_ids, full_ids[len(context_ids):]


def preprocess_context_target(
    inputs: list[str],
    output_prefix: str,
    tokenizer: TextTokenizer,
    text_key: str = "text",
    strict: bool = False,
    progress_stream=None,
    overwrite: bool = False,
) -> PreprocessStats:
    """Write ``{output_prefix}_text_document.{bin,idx}`` in the two-sequence format above; existing
    outputs are refused before any work unless ``overwrite``."""
    try:
        files = expand_inputs(inputs)
    except FileNotFoundError as error:
        raise PreprocessError(str(error)) from error
    prefix = output_prefix_for(output_prefix, "text", None)
    if not overwrite:
        refuse_existing(existing_files(prefix))
    stats = PreprocessStats()
    writer = AtomicIndexedWriter(prefix, tokenizer.vocab_size)
    progress = Progress("context+target", stream=progress_stream)
    try:
        for path in files:
            for item in read_lines(path):
                stats.docs_in += 1
                if isinstance(item, Line):
                    progress.update(1, len(item.data) + 1)
                    example = parse_example(item.data, text_key)
                    encoded = encode_example(tokenizer, example) if isinstance(example, Example) else example
                else:
                    encoded = Rejection(item.reason, item.message)
                if isinstance(encoded, Rejection):
                    rejected = RejectedRecord(item.path, item.line_no, encoded.reason, encoded.message)
                    if strict:
                        raise PreprocessError(f"{rejected} (--strict)")
                    stats.rejected[rejected.reason] += 1
                    stats.rejections.append(rejected)
                    progress.write(f"rejected {rejected}")
                    continue
                context_ids, target_ids = encoded
                writer.add_document([numpy.asarray(context_ids), numpy.asarray(target_ids)])
                stats.docs_written += 1
                stats.docs_per_domain["examples"] += 1
                stats.tokens_per_domain["examples"] += len(context_ids) + len(target_ids)
        if stats.docs_written == 0:
            raise PreprocessError(f"no valid example in {', '.join(files)}")
        writer.commit()
        stats.outputs.append(writer.path_prefix)
    except BaseException:
        writer.discard()
        raise
    finally:
        progress.close()
    stats.seconds = progress.elapsed
    stats.bytes_in = progress.bytes
    return stats

