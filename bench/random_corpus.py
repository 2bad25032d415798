"""A corpus of random tokens in Megatron's formats, made offline in seconds: what a throughput run
needs where no real corpus is at hand (a lent GPU machine starts bare).

- two training domains, each a Megatron indexed dataset (``.bin``/``.idx``) of documents of
  random length and uniformly random token ids;
- a DWM validation set in the context + target format of ``tools/preprocess_lambada.py``;
- a word-level ``tokenizer.json`` (Hugging Face ``tokenizers``) whose vocabulary is the ids, with
  ``<unk>``, ``<s>`` and ``</s>`` as ids 0-2, so ``--tokenizer-type HuggingFaceTokenizer`` reads it.

The token ids follow no pattern, so the loss stays near ln(vocab): only speed and memory mean
anything in runs on this corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy

from megatron_dwm.data.indexed_writer import AtomicIndexedWriter

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
DOMAINS = ("random_a", "random_b")


@dataclass(frozen=True)
class RandomCorpus:
    train_prefixes: tuple[str, ...]
    valid_prefix: str
    tokenizer: str

    def flags(self) -> list[str]:
        """The data and tokenizer flags of pretrain_dwm.py for this corpus (equal domain blend)."""
        blend = [item for prefix in self.train_prefixes for item in ("1", prefix)]
        return ["--data-path", *blend, "--split", "100,0,0", "--dwm-valid-data-path", self.valid_prefix,
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", self.tokenizer]


def write_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json over `vocab_size` ids ("t3", "t4", ... after the special tokens)."""
    vocab = {name: index for index, name in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"t{index}": index for index in range(len(SPECIAL_TOKENS), vocab_size)})
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": index, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for index, name in enumerate(SPECIAL_TOKENS)],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
        "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    path.write_text(json.dumps(tokenizer))


def make_random_corpus(directory: str | Path, vocab_size: int = 32000, tokens_per_domain: int = 4_000_000,
                       valid_examples: int = 256, context_length: int = 1024, seed: int = 1234) -> RandomCorpus:
    """Write the corpus under `directory` (made if missing; existing files are replaced)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = numpy.random.default_rng(seed)
    eod = SPECIAL_TOKENS.index("</s>")
    first_id = len(SPECIAL_TOKENS)

    def random_tokens(length: int) -> numpy.ndarray:
        return rng.integers(first_id, vocab_size, length, dtype=numpy.int32)

    prefixes = []
    for domain in DOMAINS:
        prefix = str(directory / f"{domain}_text_document")
        writer = AtomicIndexedWriter(prefix, vocab_size)
        while writer.tokens < tokens_per_domain:
            document = random_tokens(int(rng.integers(200, 4000)))
            writer.add_document([numpy.append(document, eod).astype(numpy.int32)])
        writer.commit()
        prefixes.append(prefix)

    valid_prefix = str(directory / "valid_context_target")
    writer = AtomicIndexedWriter(valid_prefix, vocab_size)
    for _ in range(valid_examples):
        writer.add_document([random_tokens(context_length), random_tokens(int(rng.integers(1, 4)))])
    writer.commit()

    tokenizer = directory / "tokenizer.json"
    write_tokenizer(tokenizer, vocab_size)
    return RandomCorpus(tuple(prefixes), valid_prefix, str(tokenizer))
