"""The efficacy lab's scenarios (quick builds from the demo corpus): blends and references, disjoint
target halves, examples that fit the sequence, resumable and byte-identical builds, and a
--per-split-data-args-path file that the trainer's own dataset code accepts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "demo_data"
sys.path.insert(0, str(REPO / "bench"))

from efficacy_lab import scenarios  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402

from megatron_dwm.path_checks import _per_split_problems  # noqa: E402
from megatron_dwm.data import build_tokenizer, build_train_valid_test_datasets  # noqa: E402
from megatron_dwm.data.datasets import load_per_split_data_args  # noqa: E402

pytestmark = pytest.mark.skipif(not (DEMO_DATA / "indexed" / "data_path.txt").exists(),
                                reason="run `make demo-data` first")

DEMO_DOMAINS = ["RedPajamaBook", "RedPajamaC4", "RedPajamaCommonCrawl", "RedPajamaGithub", "RedPajamaWikipedia"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, scenarios.Scenario]:
    out = tmp_path_factory.mktemp("scenarios")
    return {name: scenarios.build_scenario(name, str(out), str(DEMO_DATA), quick=True) for name in scenarios.SCENARIOS}


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


@pytest.mark.parametrize("name, harmful", [("junk", "Junk"), ("duplicates", "Duplicates")])
def test_a_harmful_domain_has_0_3_of_the_blend_and_the_oracles_drop_it(built, name, harmful):
    scenario = built[name]
    assert scenario.domains == [*DEMO_DOMAINS, harmful] and scenario.harmful_domain == harmful
    weights = [weight for weight, _prefix in scenario.blend]
    assert sum(weights) == pytest.approx(1.0) and weights[-1] == pytest.approx(0.3)
    clean_tokens = [scenario.domain_tokens[domain] for domain in DEMO_DOMAINS]
    assert weights[:-1] == pytest.approx([0.7 * t / sum(clean_tokens) for t in clean_tokens])
    assert [weight for weight, _prefix in scenario.oracle_blend] == pytest.approx([w / 0.7 for w in weights[:-1]])
    assert [prefix for _weight, prefix in scenario.oracle_blend] == [prefix for _weight, prefix in scenario.blend[:-1]]
    assert scenario.oracle_grid == [[1.0] * 5 + [0.0], [1.0] * 5 + [0.5]]


def test_the_target_scenario_keeps_the_demo_blend_and_favours_the_book_domain(built):
    scenario = built["target"]
    assert scenario.domains == DEMO_DOMAINS and scenario.target_domain == "RedPajamaBook"
    assert scenario.harmful_domain is None and scenario.oracle_blend is None
    items = (DEMO_DATA / "indexed" / "data_path.txt").read_text().split()
    demo_weights = [float(weight) for weight in items[0::2]]
    assert [weight for weight, _prefix in scenario.blend] == pytest.approx([w / sum(demo_weights) for w in demo_weights])
    assert [scenario.domain_tokens[domain] for domain in DEMO_DOMAINS] == demo_weights
    assert scenario.oracle_grid == [[2.0, 1.0, 1.0, 1.0, 1.0], [4.0, 1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_target_halves_are_disjoint_and_kept_out_of_training(built, name):
    scenario = built[name]
    dev = [record["context"] + record["target"] for record in _jsonl(scenario.directory + "/target_dev.jsonl")]
    test = [record["text"] for record in _jsonl(scenario.directory + "/target_test.jsonl")]
    assert not any(example in text for example in dev for text in test)
    docs = scenarios.read_demo_docs(str(DEMO_DATA), None if name == "target" else scenarios.QUICK.docs_per_domain)
    training = [doc.text for doc in (docs if name == "target" else scenarios.split_clean(docs)[0])]
    # a held-out document's start (its test text, its first dev example) starts no training document
    assert not any(text.startswith(held_out) for held_out in [*dev, *test] for text in training)


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_target_sets_are_large_enough_and_dev_examples_fit_the_sequence(built, name):
    scenario = built[name]
    test = IndexedDataset(scenario.target_test_prefix)
    assert scenario.target_test_tokens == int(test.sequence_lengths.sum()) >= scenarios.QUICK.min_test_tokens
    dev = IndexedDataset(scenario.target_dev_prefix)
    lengths = dev.sequence_lengths.reshape(-1, 2).sum(axis=1)  # context + target of each example
    assert 32 <= len(lengths) <= scenarios.QUICK.dev_examples and lengths.max() <= scenarios.SEQ_LENGTH
    assert lengths.mean() > 0.7 * scenarios.SEQ_LENGTH  # chunks use most of the sequence


def test_a_build_is_reused_and_identical_when_repeated_elsewhere(built, tmp_path):
    scenario = built["junk"]
    manifest = Path(scenario.directory) / scenarios.MANIFEST
    before = manifest.stat().st_mtime_ns
    assert scenarios.build_scenario("junk", str(Path(scenario.directory).parent), str(DEMO_DATA), quick=True) == scenario
    assert manifest.stat().st_mtime_ns == before
    again = scenarios.build_scenario("junk", str(tmp_path), str(DEMO_DATA), quick=True)
    assert _files(Path(again.directory)) == _files(Path(scenario.directory))
    assert scenarios.Scenario.from_dict(json.loads(json.dumps(again.to_dict()))) == again


def test_a_partial_build_is_replaced(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "target_dev_text_document.bin").write_bytes(b"partial")
    scenario = scenarios.build_scenario("target", str(tmp_path), str(DEMO_DATA), quick=True)
    assert (Path(scenario.directory) / scenarios.MANIFEST).exists()
    assert len(IndexedDataset(scenario.target_dev_prefix)) > 0
    assert not [path for path in os.listdir(tmp_path) if ".tmp-" in path]


def test_the_per_split_file_is_what_the_trainer_reads(built, tmp_path):
    scenario = built["junk"]
    flags = scenario.data_flags()
    assert flags[0] == "--per-split-data-args-path" and flags[2:] == [
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", scenario.tokenizer_model]
    assert _per_split_problems(flags[1]) == []
    train, valid, test = load_per_split_data_args(flags[1])
    assert train == ([prefix for _w, prefix in scenario.blend], [weight for weight, _p in scenario.blend])
    assert valid == ([scenario.target_test_prefix], None) and test is None
    oracle_path = scenario.per_split_json(scenario.oracle_blend)
    assert oracle_path != flags[1] and load_per_split_data_args(oracle_path)[0][0] == train[0][:-1]
    tokenizer = build_tokenizer("SentencePieceTokenizer", scenario.tokenizer_model)
    datasets = build_train_valid_test_datasets(None, None, scenarios.SEQ_LENGTH, 1234, tokenizer, str(tmp_path),
                                               (64, 32, 0), per_split_data_args_path=flags[1])
    assert datasets.domains == scenario.domains
    assert len(datasets.train) >= 64 and datasets.test is None
    assert len(datasets.valid) == (scenario.target_test_tokens - 1) // scenarios.SEQ_LENGTH  # one whole epoch
