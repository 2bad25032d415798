"""Train a Llama-style SentencePiece BPE model (byte fallback; unk=0, bos=1, eos=2, no pad)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator

from megatron_dwm.data.documents import Document, parse_document
from megatron_dwm.data.jsonl_reader import Line, expand_inputs, read_lines

MAX_SENTENCE_BYTES = 16_384


def iter_jsonl_texts(inputs: list[str], json_key: str = "text") -> Iterator[str]:
    """The ``json_key`` text of every valid record in the inputs (bad records are skipped)."""
    for path in expand_inputs(inputs):
        for item in read_lines(path):
            if isinstance(item, Line):
                document = parse_document(item.data, (json_key,), require_domain=False)
                if isinstance(document, Document):
                    yield document.texts[json_key]


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty lines of the texts, cut to SentencePiece's sentence limit."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line.encode("utf-8")[:MAX_SENTENCE_BYTES].decode("utf-8", "ignore")


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int = 32000,
    max_sentences: int = 2_000_000,
    num_threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
) -> str:
    """Train on ``texts`` and write ``{model_prefix}.model`` (and ``.vocab``); returns the model path.

    The settings follow the Llama-2 tokenizer: BPE, byte fallback, digits split, whitespace kept
    as is, unk/bos/eos = 0/1/2 and no pad id.
    """
    import sentencepiece

    directory = os.path.dirname(model_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_sentences(texts),
        model_prefix=model_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=0.99995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    return f"{model_prefix}.model"
