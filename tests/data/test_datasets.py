import json
import os
from collections import Counter

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_dwm.data import (
    CyclicBatchSampler,
    build_pretraining_data_loader,
    build_tokenizer,
    build_train_valid_test_datasets,
    parse_data_path,
)
from megatron_dwm.data.preprocess import PreprocessConfig, preprocess
from tests.data.conftest import DOMAINS, synthetic_documents, write_jsonl

SEQ = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, spm_model):
    """Per-domain indexed datasets of synthetic documents."""
    root = tmp_path_factory.mktemp("corpus")
    write_jsonl(root / "docs.jsonl", synthetic_documents(600, seed=3))
    preprocess(PreprocessConfig([str(root / "docs.jsonl")], str(root / "indexed"), "SentencePieceTokenizer",
                                spm_model, append_eod=True, split_by_domain=True))
    return {domain: str(root / "indexed" / f"{domain}_text_document") for domain in DOMAINS}


def _build(corpus, spm_model, tmp_path, weights=(0.25, 0.75), samples=(400, 40, 0), **kwargs):
    tokenizer = build_tokenizer("SentencePieceTokenizer", spm_model)
    names = ["RedPajamaC4", "RedPajamaBook"]
    data_path = [x for w, n in zip(weights, names) for x in (str(w), corpus[n])]
    return build_train_valid_test_datasets(
        data_path, "90,10,0", SEQ, 1234, tokenizer, str(tmp_path / "cache"), samples, **kwargs
    ), names


def _starts_inside(sample_tokens: numpy.ndarray, document: numpy.ndarray) -> bool:
    """The sample's first segment (up to its first EOD) is a contiguous run of ``document``
    that, if it ends with EOD, is the document's end."""
    eod_positions = numpy.flatnonzero(sample_tokens == 2)
    segment = sample_tokens[: eod_positions[0] + 1] if len(eod_positions) else sample_tokens
    n = len(segment)
    for start in range(len(document) - n + 1):
        if numpy.array_equal(document[start:start + n], segment):
            return segment[-1] != 2 or start + n == len(document)
    return False


def test_samples_carry_their_domain_and_document(corpus, spm_model, tmp_path):
    data, names = _build(corpus, spm_model, tmp_path)
    assert data.domains == names
    assert len(data.train) == 400 and len(data.valid) == 40 and data.test is None
    indexed = [IndexedDataset(corpus[n]) for n in names]
    loader = build_pretraining_data_loader(data.train, 0, micro_batch_size=8, data_parallel_rank=0,
                                           data_parallel_size=1)
    domains = Counter()
    for batch in loader:
        assert batch["tokens"].shape == (8, SEQ) and batch["domain_id"].shape == (8,)
        for tokens, labels, domain, document in zip(batch["tokens"], batch["labels"],
                                                   batch["domain_id"], batch["document_id"]):
            text = numpy.concatenate([tokens.numpy(), labels.numpy()[-1:]])
            assert _starts_inside(text, indexed[domain][int(document)])
            # and, where the segment is long enough to tell, not the other domain's document
            other = indexed[1 - domain]
            eods = numpy.flatnonzero(text == 2)
            segment_length = eods[0] + 1 if len(eods) else len(text)
            if segment_length > 4 and int(document) < len(other):
                assert not _starts_inside(text, other[int(document)])
            domains[int(domain)] += 1
    assert abs(domains[0] / 400 - 0.25) < 0.02  # the blend's weights
    assert sorted(domains) == [0, 1]


def test_index_caches_go_to_the_cache_dir(corpus, spm_model, tmp_path):
    _build(corpus, spm_model, tmp_path)
    cached = os.listdir(tmp_path / "cache")
    assert any("DomainGPTDataset-train-shuffle_index.npy" in name for name in cached)
    assert any("BlendedDataset-train-dataset_index.npy" in name for name in cached)


def test_a_single_prefix_has_domain_zero(corpus, spm_model, tmp_path):
    tokenizer = build_tokenizer("SentencePieceTokenizer", spm_model)
    data = build_train_valid_test_datasets([corpus["RedPajamaGithub"]], "1,0,0", SEQ, 1, tokenizer,
                                           str(tmp_path / "cache"), (20, None, None))
    batch = next(iter(build_pretraining_data_loader(data.train, 0, 4, 0, 1)))
    assert batch["domain_id"].tolist() == [0, 0, 0, 0]
    assert data.domains == ["RedPajamaGithub"]


def test_per_split_data_args_path(corpus, spm_model, tmp_path):
    args = {"train": ["1", corpus["RedPajamaC4"], "1", corpus["RedPajamaBook"]], "valid": [corpus["RedPajamaGithub"]]}
    (tmp_path / "split.json").write_text(json.dumps(args))
    tokenizer = build_tokenizer("SentencePieceTokenizer", spm_model)
    data = build_train_valid_test_datasets(None, None, SEQ, 1, tokenizer, str(tmp_path / "c"), (50, 10, None),
                                           per_split_data_args_path=str(tmp_path / "split.json"))
    assert data.domains == ["RedPajamaC4", "RedPajamaBook"]
    assert len(data.train) == 50 and data.test is None
    assert len(data.valid) >= 10  # a lone dataset is built for whole epochs
    assert data.valid.dataset_path == corpus["RedPajamaGithub"]


def test_data_path_is_checked(corpus, tmp_path):
    assert parse_data_path(["0.3", corpus["RedPajamaC4"], "0.7", corpus["RedPajamaBook"]]) == (
        [corpus["RedPajamaC4"], corpus["RedPajamaBook"]], [0.3, 0.7])
    assert parse_data_path([corpus["RedPajamaC4"]]) == ([corpus["RedPajamaC4"]], None)
    with pytest.raises(FileNotFoundError, match="no .*missing_text_document.bin/.idx"):
        parse_data_path(["1", str(tmp_path / "missing_text_document")])
    with pytest.raises(ValueError, match="positive"):
        parse_data_path(["0", corpus["RedPajamaC4"]])


def test_data_parallel_ranks_split_each_global_batch_and_resume(corpus, spm_model, tmp_path):
    data, _ = _build(corpus, spm_model, tmp_path)

    def batches(rank, consumed, count):
        loader = build_pretraining_data_loader(data.train, consumed, 4, rank, 2)
        return [b["document_id"].tolist() + b["domain_id"].tolist() for _, b in zip(range(count), loader)]

    def sample_keys(indices):
        return [[int(data.train[i]["document_id"]) for i in indices] + [int(data.train.dataset_index[i]) for i in indices]]

    rank0, rank1 = batches(0, 0, 3), batches(1, 0, 3)
    for step in range(3):  # global batch = samples [8 step, 8 step + 8): rank 0 first half
        assert rank0[step] == sample_keys(range(8 * step, 8 * step + 4))[0]
        assert rank1[step] == sample_keys(range(8 * step + 4, 8 * step + 8))[0]
    assert batches(0, 8, 2) == rank0[1:]  # resuming after one global batch


def test_cyclic_sampler_wraps_around():
    sampler = CyclicBatchSampler(5, consumed_samples=2, micro_batch_size=2, data_parallel_rank=1, data_parallel_size=2)
    iterator = iter(sampler)
    assert [next(iterator) for _ in range(3)] == [[4, 0], [3, 4], [2, 3]]
    with pytest.raises(ValueError, match="empty"):
        CyclicBatchSampler(0, 0, 1, 0, 1)
