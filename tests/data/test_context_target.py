import numpy
import pytest
import sentencepiece
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_dwm.data.context_target_reader import ContextTargetDataset
from megatron_dwm.data.context_target_writer import parse_example, preprocess_context_target, split_last_word
from megatron_dwm.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megatron_dwm.data.tokenizer import build_tokenizer
from tests.data.conftest import write_jsonl

PASSAGES = [
    "Kalo mine ruta vozi kalo. The quick brown fox saw the dog and the fox",
    "Mine mine ruta. Vozi lo mi ne, said the quick dog",
    "The lazy dog jumps over 42 foxes and 7 dogs",
]


def test_split_last_word_follows_lambada():
    example = split_last_word("  He looked at the  ship\n")
    assert (example.context, example.target, example.text) == ("He looked at the", "ship", "He looked at the  ship")
    assert split_last_word("single") is None


def test_both_input_formats_parse():
    assert parse_example(b'{"text": "a b c"}').target == "c"
    example = parse_example(b'{"context": "a b ", "target": "c"}')
    assert (example.context, example.target, example.text) == ("a b ", "c", "a b c")
    assert parse_example(b'{"text": "alone"}').reason == "no_context"
    assert parse_example(b'{"text": 3}').reason == "non_string_text"


def _build(tmp_path, spm_model, records, **kwargs):
    write_jsonl(tmp_path / "lambada.jsonl", records)
    tokenizer = build_tokenizer("SentencePieceTokenizer", spm_model)
    stats = preprocess_context_target([str(tmp_path / "lambada.jsonl")], str(tmp_path / "valid"), tokenizer, **kwargs)
    return stats, str(tmp_path / "valid_text_document")


def test_indexed_format_is_context_then_target(tmp_path, spm_model):
    records = [{"text": p} for p in PASSAGES] + [{"context": "Kalo mine", "target": "ruta"}]
    stats, prefix = _build(tmp_path, spm_model, records)
    assert stats.docs_written == 4 and stats.outputs == [prefix]

    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    indexed = IndexedDataset(prefix)
    assert list(indexed.document_indices) == [0, 2, 4, 6, 8]
    texts = PASSAGES + ["Kalo mine ruta"]
    targets = [p.split()[-1] for p in texts]
    for i, (text, target) in enumerate(zip(texts, targets)):
        context_ids, target_ids = indexed[2 * i].tolist(), indexed[2 * i + 1].tolist()
        assert context_ids + target_ids == sp.encode(text)
        assert sp.decode(target_ids).strip() == target
        assert sp.decode(context_ids) == text[: -len(target)].rstrip()


def test_validation_samples_mask_only_the_target(tmp_path, spm_model):
    _stats, prefix = _build(tmp_path, spm_model, [{"text": p} for p in PASSAGES])
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    dataset = ContextTargetDataset(prefix, seq_length=64, create_attention_mask=True)
    assert len(dataset) == len(PASSAGES)
    for i, passage in enumerate(PASSAGES):
        sample = dataset[i]
        ids = sp.encode(passage)
        target_ids = sp.encode(passage)[len(sp.encode(passage.rsplit(" ", 1)[0])):]
        n = len(ids) - 1
        assert sample["tokens"][:n].tolist() == ids[:-1]
        assert sample["labels"][:n].tolist() == ids[1:]
        assert sample["labels"][sample["loss_mask"] == 1].tolist() == target_ids
        assert sample["loss_mask"].sum().item() == len(target_ids)
        assert sample["tokens"][n:].eq(0).all() and sample["loss_mask"][n:].eq(0).all()
        assert sample["attention_mask"].shape == (1, 64, 64)
        assert sample["attention_mask"][0, 0, 1].item() and not sample["attention_mask"][0, 1, 0].item()
        assert sample["domain_id"].item() == -1 and sample["document_id"].item() == i


def test_dwm_validation_loader_cycles_through_the_examples(tmp_path, spm_model):
    from megatron_dwm.data import build_pretraining_data_loader

    _stats, prefix = _build(tmp_path, spm_model, [{"text": p} for p in PASSAGES])
    loader = iter(build_pretraining_data_loader(ContextTargetDataset(prefix, 32), consumed_samples=1,
                                                micro_batch_size=2, data_parallel_rank=0, data_parallel_size=1,
                                                cyclic=True))
    assert [next(loader)["document_id"].tolist() for _ in range(3)] == [[1, 2], [0, 1], [2, 0]]


def test_long_examples_lose_the_start_of_the_context(tmp_path, spm_model):
    passage = " ".join(["kalo mine ruta"] * 40) + " vozi"
    _stats, prefix = _build(tmp_path, spm_model, [{"text": passage}])
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    ids = sp.encode(passage)
    target_ids = ids[len(sp.encode(passage.rsplit(" ", 1)[0])):]
    sample = ContextTargetDataset(prefix, seq_length=16)[0]
    assert sample["labels"].tolist() == ids[-16:]
    assert sample["labels"][sample["loss_mask"] == 1].tolist() == target_ids
    assert sample["loss_mask"].sum().item() == len(target_ids)


def test_bad_examples_are_reported_and_strict_fails(tmp_path, spm_model):
    records = [{"text": PASSAGES[0]}, {"text": "alone"}, b"{oops", {"text": PASSAGES[1]}]
    stats, prefix = _build(tmp_path, spm_model, records)
    assert [(r.line_no, r.reason) for r in stats.rejections] == [(2, "no_context"), (3, "malformed_json")]
    assert stats.docs_in == 4 and stats.docs_written == 2
    with pytest.raises(PreprocessError, match=r"lambada.jsonl:2: no_context"):
        _build(tmp_path, spm_model, records, strict=True, overwrite=True)


def test_a_plain_indexed_dataset_is_refused_as_validation_set(tmp_path, spm_model):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "kalo mine"}, {"text": "ruta vozi"}])
    preprocess(PreprocessConfig([str(tmp_path / "a.jsonl")], str(tmp_path / "plain"),
                                "SentencePieceTokenizer", spm_model))
    with pytest.raises(ValueError, match="not a context \\+ target dataset"):
        ContextTargetDataset(str(tmp_path / "plain_text_document"), seq_length=8)


def test_lambada_tool(tmp_path, spm_model, capsys):
    from tools.preprocess_lambada import main

    write_jsonl(tmp_path / "l.jsonl", [{"text": p} for p in PASSAGES])
    argv = ["--input", str(tmp_path / "l.jsonl"), "--output-prefix", str(tmp_path / "v"),
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", spm_model]
    assert main(argv) == 0
    assert "docs in: 3  written: 3  rejected: 0" in capsys.readouterr().out
    assert len(ContextTargetDataset(str(tmp_path / "v_text_document"), 32)) == 3
    assert main(argv[:1] + [str(tmp_path / "nothing.jsonl")] + argv[2:]) == 1
