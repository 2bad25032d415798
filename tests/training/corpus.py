"""A small synthetic corpus in Megatron's formats, made in a second: per-domain indexed data, a
LAMBADA-style context + target set and a word-level ``tokenizer.json``.

Each domain is a first-order Markov chain over its own band of the vocabulary, so a model can
learn it quickly and domains differ in loss.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy

from megatron_dwm.data.indexed_writer import AtomicIndexedWriter

VOCAB = 200  # word tokens; then <eos>
DOMAINS = ("RedPajamaC4", "RedPajamaBook", "RedPajamaGithub")


def write_tokenizer(path: str) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB)} | {"<unk>": VOCAB, "</s>": VOCAB + 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(path)
    with open(os.path.join(os.path.dirname(path), "tokenizer_config.json"), "w") as file:
        json.dump({"eos_token": "</s>", "unk_token": "<unk>"}, file)
    return path


def _markov_document(rng: numpy.random.Generator, band: range, transitions: numpy.ndarray, length: int):
    tokens = [band.start + rng.integers(len(band))]
    for _ in range(length - 1):
        tokens.append(band.start + rng.choice(len(band), p=transitions[tokens[-1] - band.start]))
    return numpy.array(tokens + [VOCAB + 1], dtype=numpy.int32)


def make_corpus(directory: str, docs_per_domain: int = 120, seed: int = 0, noise_weight: float = 0.0,
                clean_weights: tuple[float, ...] = (3, 2, 1), shared_chain: bool = False) -> dict[str, object]:
    """Write the corpus under `directory`; returns its --data-path list, tokenizer and valid prefix.

    The clean domains are blended in the ratio `clean_weights`. With `noise_weight` > 0 the blend
    also holds a "Noise" domain with that share of the samples: token-shuffled documents, whose
    tokens are drawn at random from the whole corpus's tokens. `shared_chain`: every clean domain
    runs the same chain on its own band, so the clean domains are equally hard."""
    os.makedirs(directory, exist_ok=True)
    rng = numpy.random.default_rng(seed)
    band_width = VOCAB // len(DOMAINS)
    prefixes = []
    chains = []
    shared = rng.dirichlet(numpy.full(band_width, 0.1), size=band_width) if shared_chain else None
    for index, domain in enumerate(DOMAINS):
        band = range(index * band_width, (index + 1) * band_width)
        transitions = shared if shared_chain else rng.dirichlet(numpy.full(band_width, 0.1), size=band_width)
        chains.append((band, transitions))
        prefix = os.path.join(directory, f"{domain}_text_document")
        writer = AtomicIndexedWriter(prefix, VOCAB + 2)
        for _ in range(docs_per_domain):
            writer.add_document([_markov_document(rng, band, transitions, int(rng.integers(20, 150)))])
        writer.commit()
        prefixes.append(prefix)
    valid_prefix = os.path.join(directory, "lambada_style_text_document")
    writer = AtomicIndexedWriter(valid_prefix, VOCAB + 2)
    for i in range(60):
        band, transitions = chains[i % len(chains)]
        text = _markov_document(rng, band, transitions, int(rng.integers(20, 50)))[:-1]
        writer.add_document([text[:-8], text[-8:]])  # the last 8 tokens are the target
    writer.commit()
    weights = [str(w) for w in clean_weights]
    if noise_weight > 0:
        prefix = os.path.join(directory, "Noise_text_document")
        writer = AtomicIndexedWriter(prefix, VOCAB + 2)
        for _ in range(docs_per_domain):
            length = int(rng.integers(20, 150))
            band, transitions = chains[int(rng.integers(len(chains)))]
            pool = numpy.concatenate([_markov_document(rng, b, t, length)[:-1] for b, t in chains])
            writer.add_document([numpy.append(rng.choice(pool, size=length), VOCAB + 1).astype(numpy.int32)])
        writer.commit()
        prefixes.append(prefix)
        weights = [str(w * (1 - noise_weight) / sum(clean_weights)) for w in clean_weights] + [str(noise_weight)]
    data_path = [item for pair in zip(weights, prefixes) for item in pair]
    return {
        "data_path": data_path,
        "tokenizer": write_tokenizer(os.path.join(directory, "tokenizer.json")),
        "valid": valid_prefix,
    }


def training_flags(corpus: dict[str, object], *extra: str, dwm: bool = False) -> list[str]:
    """A tiny Llama on the synthetic corpus; `extra` flags are appended (and win).

    megatron-core's index caches go to a new directory for every call (beside the corpus), so no
    job reads indices another test's job wrote (or left half-written when it was killed).

    `dwm`: a small DWM in 2 stages (DWM phases of 2 iterations, updated at each) learning from the corpus's
    LAMBADA-style set; otherwise --dwm-disable."""
    dwm_flags = (["--dwm-valid-data-path", str(corpus["valid"]), "--dwm-stages", "2", "--dwm-update-iters", "2",
                  "--dwm-update-interval", "1", "--dwm-seq-length", "32", "--dwm-hidden-size", "32", "--dwm-lr", "1e-2"]
                 if dwm else ["--dwm-disable"])
    return [
        "--model-preset", "tiny", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "8",
        "--lr", "3e-3", "--lr-warmup-iters", "1", "--log-interval", "1", "--eval-interval", "1000",
        "--eval-iters", "1", "--num-workers", "0", "--seed", "7", *dwm_flags,
        "--data-path", *corpus["data_path"], "--split", "90,10,0",
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(corpus["tokenizer"]),
        "--data-cache-path", tempfile.mkdtemp(prefix="index-cache-", dir=os.path.dirname(str(corpus["tokenizer"]))),
        *extra,
    ]
