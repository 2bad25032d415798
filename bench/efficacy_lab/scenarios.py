"""The lab's data scenarios, built offline and deterministically from the demo corpus (`make demo-data`).

``build_scenario(name, out_dir)`` builds ``out_dir/<name>/`` once and returns its :class:`Scenario`:

- ``junk``: the five demo domains less a held-out ~5% of their documents (chosen by a hash of the
  text: the target), plus a ``Junk`` domain of base64 lines of random bytes. Blend: the clean
  domains 0.7 (in proportion to their tokens), Junk 0.3; the data oracle trains on the clean
  domains only.
- ``target``: the demo corpus's indexed domains as they are; the target is the Moby-Dick chapters
  kept out of the training chunks (the domain RedPajamaBook).
- ``duplicates``: the clean domains and target of ``junk`` (built anew), plus a ``Duplicates``
  domain: a few clean training documents, each repeated hundreds of times. Blend as ``junk``.

Every target is split, by whole documents, into two disjoint halves: ``target_dev``, context +
target examples of at most ``SEQ_LENGTH`` tokens for the DWM's outer objective
(``--dwm-valid-data-path``), and ``target_test``, plain documents (in junk and duplicates the first
tokens of each held-out document), the runs' valid split: the target loss. ``out_dir/<name>/``::

    train/<Domain>_text_document.{bin,idx}   training domains (junk, duplicates)
    target_dev_text_document.{bin,idx}       and target_dev.jsonl, its {"context", "target"} records
    target_test_text_document.{bin,idx}      and target_test.jsonl, its {"text"} records
    per_split/blend.json, <hash>.json        --per-split-data-args-path files, written on demand
    scenario.json                            the Scenario, paths inside the directory relative to it

A build is staged in ``out_dir/<name>.tmp-<pid>`` and renamed into place once its scenario.json is
written, so ``out_dir/<name>/`` is always complete; an existing build is reused unless it was made
with other sizes, another demo corpus or an older version of this module.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_dwm.data import demo_sources
from megatron_dwm.data.context_target_writer import Example, encode_example, preprocess_context_target
from megatron_dwm.data.datasets import domain_name
from megatron_dwm.data.jsonl_reader import ReadFailure, expand_inputs, read_lines
from megatron_dwm.data.preprocess import PreprocessConfig, preprocess
from megatron_dwm.data.tokenizer import TextTokenizer, build_tokenizer

SCENARIOS = ("junk", "target", "duplicates")
BUILD_VERSION = 1  # raise when a build's content changes: older builds are then rebuilt
SEQ_LENGTH = 128  # the lab's --seq-length: every target-dev example fits in it whole
TOKENIZER_TYPE = "SentencePieceTokenizer"
HARMFUL_SHARE = 0.3  # blend weight of the Junk or Duplicates domain (the clean domains share the rest)
TARGET_ONE_IN = 20  # one clean document in 20 is held out as the target of junk and duplicates
MOBY_DICK_DOMAIN = "RedPajamaBook"  # the target domain of the target scenario
CONTEXT_WORDS = 8  # words of a target-dev example's context; the rest of it is its target
MANIFEST = "scenario.json"


@dataclass(frozen=True)
class Sizes:
    """How much each build holds."""

    quick: bool
    docs_per_domain: Optional[int]  # clean documents read per domain (None: all)
    dev_examples: int  # target-dev examples at most
    test_tokens: int  # held-out clean documents go to target-test until it has this many tokens
    min_test_tokens: int  # a build whose target-test is smaller fails
    test_tokens_per_doc: int  # target-test holds the first tokens of each held-out clean document
    junk_docs: int
    duplicate_docs: int
    duplicate_copies: int


FULL = Sizes(False, None, 256, 32_000, 20_000, 512, 1000, 8, 300)
QUICK = Sizes(True, 200, 64, 6_000, 4_000, 512, 100, 8, 30)


@dataclass(frozen=True)
class Doc:
    text: str
    domain: str


@dataclass(frozen=True)
class Scenario:
    """A built scenario: its training blend and references, and its target sets."""

    name: str
    directory: str
    quick: bool
    domains: list[str]  # in blend order, named as training logs them (from the prefixes)
    blend: list[list]  # [weight, prefix] per domain; the weights sum to 1
    oracle_blend: Optional[list[list]]  # the harmful domain removed; None without one
    harmful_domain: Optional[str]
    target_domain: Optional[str]
    oracle_grid: list[list[float]]  # candidate --domain-weights, one weight per domain
    target_dev_prefix: str
    target_test_prefix: str
    tokenizer_model: str
    target_test_tokens: int
    domain_tokens: dict[str, int]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scenario":
        return cls(**data)

    def per_split_json(self, blend: Optional[list[list]] = None) -> str:
        """Path of the --per-split-data-args-path file training on ``blend`` (default: the scenario's)
        with the target-test set as the valid split; written (atomically) unless already there."""
        blend = self.blend if blend is None else blend
        content = json.dumps({"train": [item for weight, prefix in blend for item in (weight, prefix)],
                              "valid": [self.target_test_prefix]}, indent=1) + "\n"
        name = "blend" if blend == self.blend else hashlib.sha256(content.encode()).hexdigest()[:12]
        path = os.path.join(self.directory, "per_split", f"{name}.json")
        if not os.path.exists(path) or _read_text(path) != content:
            _write_text(path, content)
        return path

    def data_flags(self, blend: Optional[list[list]] = None) -> list[str]:
        """pretrain_dwm.py's data flags for training on ``blend`` (default: the scenario's)."""
        return ["--per-split-data-args-path", self.per_split_json(blend),
                "--tokenizer-type", TOKENIZER_TYPE, "--tokenizer-model", self.tokenizer_model]


def build_scenario(name: str, out_dir: str, demo_data: str = "demo_data", quick: bool = False) -> Scenario:
    """The scenario ``name`` in ``out_dir/<name>/``, built there unless a matching build exists."""
    if name not in BUILDERS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    directory = os.path.abspath(os.path.join(out_dir, name))
    demo_data = os.path.abspath(demo_data)
    existing = load_scenario(directory)
    if existing is not None and existing.quick == quick and existing.tokenizer_model == tokenizer_path(demo_data):
        return existing
    staging = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        _write_manifest(BUILDERS[name](staging, demo_data, QUICK if quick else FULL))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(staging, directory)
    return load_scenario(directory)


def load_scenario(directory: str) -> Optional[Scenario]:
    """The complete build in ``directory``, or None (none, or one of an older version)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    data = json.loads(_read_text(path))
    if data.pop("version") != BUILD_VERSION:
        return None
    directory = os.path.abspath(directory)
    return Scenario.from_dict({**_map_paths(data, lambda p: os.path.normpath(os.path.join(directory, p))),
                               "directory": directory})


def tokenizer_path(demo_data: str) -> str:
    return os.path.join(os.path.abspath(demo_data), "tokenizers", "demo-spm.model")


# ---------------------------------------------------------------------------- builders


def build_junk(directory: str, demo_data: str, sizes: Sizes) -> Scenario:
    """Clean domains less the target, and a Junk domain of random base64 documents."""
    train, target = split_clean(read_demo_docs(demo_data, sizes.docs_per_domain))
    junk = junk_texts(sorted(len(doc.text) for doc in train), sizes.junk_docs)
    return _harmful_scenario("junk", directory, demo_data, sizes, train, target, "Junk", junk)


def build_duplicates(directory: str, demo_data: str, sizes: Sizes) -> Scenario:
    """Clean domains less the target, and a Duplicates domain: clean documents repeated many times."""
    train, target = split_clean(read_demo_docs(demo_data, sizes.docs_per_domain))
    texts = duplicated_texts(train, sizes.duplicate_docs)
    copies = [text for _ in range(sizes.duplicate_copies) for text in texts]
    return _harmful_scenario("duplicates", directory, demo_data, sizes, train, target, "Duplicates", copies)


def build_target(directory: str, demo_data: str, sizes: Sizes) -> Scenario:
    """The demo's indexed domains as they are; the held-out Moby-Dick chapters as the target."""
    model = tokenizer_path(demo_data)
    tokenizer = build_tokenizer(TOKENIZER_TYPE, model)
    blend = demo_blend(demo_data)
    domains = [domain_name(prefix) for _weight, prefix in blend]
    chapters = held_out_chapters(demo_data)
    dev_prefix, test_prefix = write_target_sets(directory, tokenizer, model, chapters[0::2], chapters[1::2],
                                                sizes.dev_examples)
    return _scenario("target", directory, sizes, blend, None, None, MOBY_DICK_DOMAIN,
                     [[m if domain == MOBY_DICK_DOMAIN else 1.0 for domain in domains] for m in (2.0, 4.0)],
                     dev_prefix, test_prefix, model)


BUILDERS: dict[str, Callable[[str, str, Sizes], Scenario]] = {
    "junk": build_junk, "target": build_target, "duplicates": build_duplicates,
}


def _harmful_scenario(name: str, directory: str, demo_data: str, sizes: Sizes, train: list[Doc], target: list[Doc],
                      harmful: str, harmful_texts: list[str]) -> Scenario:
    """Clean domains plus a harmful one at HARMFUL_SHARE of the blend; the data oracle drops it."""
    model = tokenizer_path(demo_data)
    tokenizer = build_tokenizer(TOKENIZER_TYPE, model)
    prefixes = preprocess_domains(directory, model, [*train, *(Doc(text, harmful) for text in harmful_texts)])
    clean = sorted(domain for domain in prefixes if domain != harmful)
    tokens = {domain: indexed_tokens(prefix) for domain, prefix in prefixes.items()}
    clean_total = sum(tokens[domain] for domain in clean)
    oracle_blend = [[tokens[domain] / clean_total, prefixes[domain]] for domain in clean]
    blend = [[(1 - HARMFUL_SHARE) * weight, prefix] for weight, prefix in oracle_blend]
    blend.append([HARMFUL_SHARE, prefixes[harmful]])
    dev, test = split_dev_test([doc.text for doc in target])
    test = texts_until(tokenizer, (leading_text(tokenizer, text, sizes.test_tokens_per_doc) for text in test),
                       sizes.test_tokens)
    dev_prefix, test_prefix = write_target_sets(directory, tokenizer, model, dev, test, sizes.dev_examples)
    grid = [[*(1.0 for _ in clean), weight] for weight in (0.0, 0.5)]
    return _scenario(name, directory, sizes, blend, oracle_blend, harmful, None, grid,
                     dev_prefix, test_prefix, model)


def _scenario(name: str, directory: str, sizes: Sizes, blend: list[list], oracle_blend: Optional[list[list]],
              harmful: Optional[str], target_domain: Optional[str], grid: list[list[float]], dev_prefix: str,
              test_prefix: str, model: str) -> Scenario:
    """The Scenario record of a build, once its target-test set is checked to be large enough."""
    test_tokens = indexed_tokens(test_prefix)
    if test_tokens < sizes.min_test_tokens:
        raise RuntimeError(f"{name}: the target-test set holds {test_tokens} tokens, fewer than "
                           f"{sizes.min_test_tokens}; the demo corpus is too small")
    domains = [domain_name(prefix) for _weight, prefix in blend]
    return Scenario(name, directory, sizes.quick, domains, blend, oracle_blend, harmful, target_domain, grid,
                    dev_prefix, test_prefix, model, test_tokens,
                    {domain: indexed_tokens(prefix) for domain, (_w, prefix) in zip(domains, blend)})


# ---------------------------------------------------------------------------- documents


def read_demo_docs(demo_data: str, docs_per_domain: Optional[int] = None) -> list[Doc]:
    """The demo training chunks' documents in file order (at most ``docs_per_domain`` per domain)."""
    docs: list[Doc] = []
    counts: dict[str, int] = {}
    for path in expand_inputs([os.path.join(demo_data, "slimpajama", "train")]):
        for line in read_lines(path):
            if isinstance(line, ReadFailure):
                raise RuntimeError(f"{line.path}:{line.line_no}: {line.message}")
            record = json.loads(line.data)
            domain = record["meta"]["redpajama_set_name"]
            if docs_per_domain is None or counts.get(domain, 0) < docs_per_domain:
                counts[domain] = counts.get(domain, 0) + 1
                docs.append(Doc(record["text"], domain))
    return docs


def held_out_chapters(demo_data: str) -> list[str]:
    """The Moby-Dick chapters that are not in the training chunks, in chapter order."""
    train_texts = {doc.text for doc in read_demo_docs(demo_data)}
    cache = demo_sources.PackageCache(os.path.join(demo_data, "downloads"))
    chapters = [doc.text for doc in demo_sources.moby_dick_chapters(cache) if doc.text not in train_texts]
    if len(chapters) < 2:
        raise RuntimeError(f"{demo_data}: fewer than two Moby-Dick chapters are kept out of the training chunks")
    return chapters


def demo_blend(demo_data: str) -> list[list]:
    """The demo's ``indexed/data_path.txt`` as [weight, prefix] pairs, the weights summing to 1."""
    indexed = os.path.join(demo_data, "indexed")
    items = _read_text(os.path.join(indexed, "data_path.txt")).split()
    pairs = [(float(weight), os.path.join(indexed, os.path.basename(prefix)))
             for weight, prefix in zip(items[0::2], items[1::2])]
    total = sum(weight for weight, _prefix in pairs)
    return [[weight / total, prefix] for weight, prefix in pairs]


def text_hash(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "big")


def split_clean(docs: list[Doc]) -> tuple[list[Doc], list[Doc]]:
    """(training documents, target documents): one text in TARGET_ONE_IN, by its hash."""
    is_target = [text_hash(doc.text, "target") % TARGET_ONE_IN == 0 for doc in docs]
    return ([doc for doc, held in zip(docs, is_target) if not held],
            [doc for doc, held in zip(docs, is_target) if held])


def split_dev_test(texts: list[str]) -> tuple[list[str], list[str]]:
    """Distinct texts in hash order, alternately to dev and test (disjoint halves)."""
    ordered = sorted(set(texts), key=lambda text: (text_hash(text, "dev-test"), text))
    return ordered[0::2], ordered[1::2]


def leading_text(tokenizer: TextTokenizer, text: str, max_tokens: int) -> str:
    """The start of ``text``, cut after a word, of at most ``max_tokens`` tokens (or its first word)."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    words = len(ends)
    while words > 1:
        size = len(tokenizer.tokenize(text[:ends[words - 1]]))
        if size <= max_tokens:
            break
        words = max(1, min(words - 1, words * max_tokens // size))
    return text[:ends[words - 1]] if ends else text


def texts_until(tokenizer: TextTokenizer, texts: Iterable[str], tokens: int) -> list[str]:
    """The first texts that together reach ``tokens`` tokens (with an end-of-document token each)."""
    taken, total = [], 0
    for text in texts:
        if total >= tokens:
            break
        taken.append(text)
        total += len(tokenizer.tokenize(text)) + 1
    return taken


def junk_texts(lengths: list[int], count: int, seed: int = 0) -> list[str]:
    """``count`` documents of 76-character base64 lines of random bytes, of lengths drawn from
    ``lengths`` (kept within 500-8000 characters)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        lines = min(max(rng.choice(lengths), 500), 8000) // 77
        texts.append("\n".join(base64.b64encode(rng.randbytes(57)).decode() for _ in range(lines)))
    return texts


def duplicated_texts(train: list[Doc], count: int) -> list[str]:
    """``count`` distinct training texts of 2000-8000 characters, in hash order."""
    texts = {doc.text for doc in train if 2000 <= len(doc.text) <= 8000}
    return sorted(texts, key=lambda text: (text_hash(text, "duplicates"), text))[:count]


# ---------------------------------------------------------------------------- target-dev examples


def dev_examples(tokenizer: TextTokenizer, texts: list[str], count: int) -> list[Example]:
    """At most ``count`` examples: each text's first chunk, then each one's second, and so on."""
    rounds = itertools.zip_longest(*(chunk_examples(tokenizer, text) for text in texts))
    return list(itertools.islice((example for round_ in rounds for example in round_ if example is not None), count))


def chunk_examples(tokenizer: TextTokenizer, text: str) -> Iterator[Example]:
    """Consecutive chunks of ``text``, as long as fits in SEQ_LENGTH tokens: the first CONTEXT_WORDS
    words are the context, the rest (with the whitespace before it) the target."""
    spans = [match.span() for match in re.finditer(r"\S+", text)]
    start, words = 0, 4 * CONTEXT_WORDS
    while start + CONTEXT_WORDS < len(spans):
        words = min(words + CONTEXT_WORDS, len(spans) - start)  # grows back after a long chunk
        while words > CONTEXT_WORDS:
            chunk = spans[start:start + words]
            example = Example(text[chunk[0][0]:chunk[CONTEXT_WORDS - 1][1]],
                              text[chunk[CONTEXT_WORDS - 1][1]:chunk[-1][1]], "")
            size = example_tokens(tokenizer, example)
            if size is not None and size <= SEQ_LENGTH:
                yield example
                break
            words = min(words - 1, words * SEQ_LENGTH // size) if size else words - 1
        start += max(words, 1)  # past the chunk, or past words that fit in no chunk


def example_tokens(tokenizer: TextTokenizer, example: Example) -> Optional[int]:
    """Tokens of the example as preprocess_context_target writes it; None if it would reject it."""
    encoded = encode_example(tokenizer, example)
    return len(encoded[0]) + len(encoded[1]) if isinstance(encoded, tuple) else None


# ---------------------------------------------------------------------------- writing


def preprocess_domains(directory: str, model: str, docs: list[Doc]) -> dict[str, str]:
    """Documents -> ``directory/train/<domain>_text_document``; returns domain -> prefix."""
    inputs = os.path.join(directory, "train.jsonl")
    _write_jsonl(inputs, ({"text": doc.text, "meta": {"redpajama_set_name": doc.domain}} for doc in docs))
    stats = preprocess(PreprocessConfig(
        inputs=[inputs], output_prefix=os.path.join(directory, "train"), tokenizer_type=TOKENIZER_TYPE,
        tokenizer_model=model, append_eod=True, workers=min(4, os.cpu_count() or 1), split_by_domain=True,
        strict=True))
    os.remove(inputs)
    return {domain_name(prefix): prefix for prefix in stats.outputs}


def write_target_sets(directory: str, tokenizer: TextTokenizer, model: str, dev: list[str], test: list[str],
                      dev_count: int) -> tuple[str, str]:
    """Write target-dev (context + target examples of ``dev``) and target-test (``test`` as
    documents); returns their prefixes."""
    dev_jsonl, test_jsonl = os.path.join(directory, "target_dev.jsonl"), os.path.join(directory, "target_test.jsonl")
    examples = dev_examples(tokenizer, dev, dev_count)
    _write_jsonl(dev_jsonl, ({"context": example.context, "target": example.target} for example in examples))
    dev_stats = preprocess_context_target([dev_jsonl], os.path.join(directory, "target_dev"), tokenizer, strict=True)
    _write_jsonl(test_jsonl, ({"text": text} for text in test))
    test_stats = preprocess(PreprocessConfig(
        inputs=[test_jsonl], output_prefix=os.path.join(directory, "target_test"), tokenizer_type=TOKENIZER_TYPE,
        tokenizer_model=model, append_eod=True, strict=True))
    return dev_stats.outputs[0], test_stats.outputs[0]


def indexed_tokens(prefix: str) -> int:
    dataset = IndexedDataset(prefix)  # held while its memory-mapped lengths are read
    return int(dataset.sequence_lengths.sum())


_PATH_FIELDS = ("target_dev_prefix", "target_test_prefix", "tokenizer_model")


def _map_paths(data: dict, convert: Callable[[str], str]) -> dict:
    """``data`` (a Scenario's dict) with ``convert`` applied to every path in it."""
    data = {**data, **{key: convert(data[key]) for key in _PATH_FIELDS}}
    for key in ("blend", "oracle_blend"):
        if data[key] is not None:
            data[key] = [[weight, convert(prefix)] for weight, prefix in data[key]]
    return data


def _write_manifest(scenario: Scenario) -> None:
    """scenario.json, the build's last file: paths inside the directory relative to it."""
    def relative(path: str) -> str:
        inside = os.path.relpath(path, scenario.directory)
        return path if inside.startswith("..") else inside

    data = _map_paths(scenario.to_dict(), relative)
    del data["directory"]
    _write_text(os.path.join(scenario.directory, MANIFEST),
                json.dumps({"version": BUILD_VERSION, **data}, indent=1) + "\n")


def _write_jsonl(path: str, records: Iterable[dict]) -> None:
    _write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def _write_text(path: str, text: str) -> None:
    """Write ``path`` atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp, path)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()
