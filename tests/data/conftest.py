"""Fixtures for the data tests: synthetic SlimPajama-style documents and a small tokenizer."""

from __future__ import annotations

import json
import random

import pytest
import zstandard

DOMAINS = ("RedPajamaC4", "RedPajamaBook", "RedPajamaGithub")
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "qu", "xe", "ßo", "é", "漢", "ж")


def synthetic_text(rng: random.Random, domain_index: int, words: int) -> str:
    """A pseudo-text; each domain draws from its own syllable range, so domains differ."""
    syllables = _SYLLABLES[domain_index * 3: domain_index * 3 + 8]
    sentence = [
        "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(words)
    ]
    return " ".join(sentence).capitalize() + ".\n" + str(rng.randint(0, 10_000))


def synthetic_documents(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        domain = i % len(DOMAINS) if rng.random() > 0.2 else 0
        docs.append({
            "text": synthetic_text(rng, domain, rng.randint(3, 60)),
            "meta": {"redpajama_set_name": DOMAINS[domain]},
        })
    return docs


def write_jsonl(path, records_or_lines) -> None:
    """Write dicts as JSON lines and bytes/str as they are; ``.zst`` paths are compressed."""
    lines = []
    for item in records_or_lines:
        if isinstance(item, dict):
            item = json.dumps(item, ensure_ascii=False)
        lines.append(item.encode("utf-8") if isinstance(item, str) else item)
    data = b"\n".join(lines) + b"\n"
    if str(path).endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
    """A 600-piece SentencePiece BPE model trained by the project's own trainer."""
    from megatron_dwm.data.tokenizer_training import train_sentencepiece

    texts = [d["text"] for d in synthetic_documents(1500, seed=99)]
    texts.append("Plain English words: the quick brown fox jumps over the lazy dog, 0123456789.")
    prefix = tmp_path_factory.mktemp("tokenizer") / "spm"
    return train_sentencepiece(texts, str(prefix), vocab_size=600, num_threads=1)
