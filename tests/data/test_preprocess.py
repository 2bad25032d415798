import io
import json
import os
import subprocess
import sys

import numpy
import pytest
import sentencepiece
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_dwm.data.jsonl_reader import expand_inputs
from megatron_dwm.data.preprocess import (
    PreprocessConfig,
    PreprocessError,
    format_summary,
    preprocess,
)
from tests.data.conftest import DOMAINS, synthetic_documents, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(inputs, output_prefix, spm_model, **overrides) -> PreprocessConfig:
    options = dict(
        inputs=[str(p) for p in inputs], output_prefix=str(output_prefix),
        tokenizer_type="SentencePieceTokenizer", tokenizer_model=spm_model,
        append_eod=True, chunk_size=7,
    )
    options.update(overrides)
    return PreprocessConfig(**options)


def _read_documents(prefix) -> list[list[int]]:
    dataset = IndexedDataset(str(prefix))
    assert list(dataset.document_indices) == list(range(len(dataset) + 1))  # one sequence per doc
    return [dataset[i].tolist() for i in range(len(dataset))]


def _expected(docs, spm_model, domain=None) -> list[list[int]]:
    """The reference: sentencepiece's own encoding of each document, plus EOS."""
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    return [
        sp.encode(d["text"]) + [sp.eos_id()]
        for d in docs
        if domain is None or d["meta"]["redpajama_set_name"] == domain
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
@pytest.mark.parametrize("workers", [1, 3])
def test_round_trip_per_domain(tmp_path, spm_model, suffix, workers):
    docs = synthetic_documents(300, seed=workers)
    files = [tmp_path / f"part{i}{suffix}" for i in range(3)]
    for i, path in enumerate(files):
        write_jsonl(path, docs[i * 100:(i + 1) * 100])

    stats = preprocess(_config(files, tmp_path / "out", spm_model, workers=workers, split_by_domain=True))

    assert stats.docs_in == stats.docs_written == len(docs)
    assert not stats.rejected
    for domain in DOMAINS:
        prefix = tmp_path / "out" / f"{domain}_text_document"
        assert _read_documents(prefix) == _expected(docs, spm_model, domain)
        assert stats.tokens_per_domain[domain] == sum(map(len, _expected(docs, spm_model, domain)))
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        f"{d}_text_document.{ext}" for d in DOMAINS for ext in ("bin", "idx")
    )


def test_single_output_keeps_input_order_and_megatron_naming(tmp_path, spm_model):
    docs = synthetic_documents(50)
    write_jsonl(tmp_path / "a.jsonl", docs[:20])
    write_jsonl(tmp_path / "b.jsonl.zst", docs[20:])
    stats = preprocess(_config([tmp_path / "b.jsonl.zst", tmp_path / "a.jsonl"], tmp_path / "corpus",
                               spm_model, workers=2))
    assert stats.outputs == [str(tmp_path / "corpus_text_document")]
    assert _read_documents(tmp_path / "corpus_text_document") == _expected(docs[20:] + docs[:20], spm_model)
    # 16-bit tokens for a 600-piece vocabulary, as Megatron-LM writes them
    assert IndexedDataset(str(tmp_path / "corpus_text_document")).index.dtype == numpy.uint16


def test_without_append_eod_and_with_several_json_keys(tmp_path, spm_model):
    records = [{"text": f"kalo {i}", "title": f"mine {i}"} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", records)
    preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "o", spm_model,
                       json_keys=("text", "title"), append_eod=False))
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    assert _read_documents(tmp_path / "o_text_document") == [sp.encode(r["text"]) for r in records]
    assert _read_documents(tmp_path / "o_title_document") == [sp.encode(r["title"]) for r in records]


def _truncated_zst(path, good_records, cut_records) -> None:
    """Two frames; the second is cut in half, so only ``good_records`` can be recovered."""
    frames = [
        zstandard.ZstdCompressor().compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))
        for records in (good_records, cut_records)
    ]
    path.write_bytes(frames[0] + frames[1][: len(frames[1]) // 2])


def _bad_inputs(tmp_path):
    """Every kind of bad input next to valid documents; returns (files, valid docs, expected rejections)."""
    docs = synthetic_documents(40, seed=5)
    mixed = tmp_path / "mixed.jsonl"
    write_jsonl(mixed, [
        docs[0],
        b'{"text": "kalo", "meta": ',                      # 2: malformed JSON
        {"meta": {"redpajama_set_name": "RedPajamaC4"}},     # 3: no text key
        {"text": 17, "meta": {}},                            # 4: non-string text
        {"text": "   ", "meta": {}},                         # 5: empty text
        b'{"text": "caf\xe9 au lait"}',                      # 6: Latin-1 byte, not UTF-8
        docs[1],
        b"[1, 2, 3]",                                        # 8: JSON, but not an object
        docs[2],
    ])
    truncated = tmp_path / "truncated.jsonl.zst"
    _truncated_zst(truncated, docs[3:20], docs[20:40])
    corrupt = tmp_path / "corrupt.jsonl.zst"
    corrupt.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "x"}\n')[:6] + b"garbage" * 20)
    unreadable = tmp_path / "unreadable.jsonl"
    os.symlink(tmp_path / "gone.jsonl", unreadable)       # exists as a name, cannot be opened
    tail = tmp_path / "tail.jsonl"
    write_jsonl(tail, docs[20:22])
    expected = {
        (str(mixed), 2, "malformed_json"), (str(mixed), 3, "missing_key"),
        (str(mixed), 4, "non_string_text"), (str(mixed), 5, "empty_text"),
        (str(mixed), 6, "invalid_utf8"), (str(mixed), 8, "malformed_json"),
        (str(truncated), 18, "truncated_zst"), (str(corrupt), 1, "corrupt_zst"),
        (str(unreadable), 0, "unreadable_file"),
    }
    valid = [docs[0], docs[1], docs[2], *docs[3:20], docs[20], docs[21]]
    return [mixed, truncated, corrupt, unreadable, tail], valid, expected


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_input_is_counted_reported_and_loses_nothing_valid(tmp_path, spm_model, workers):
    files, valid, expected = _bad_inputs(tmp_path)
    log = io.StringIO()
    stats = preprocess(_config(files, tmp_path / "out", spm_model, workers=workers), progress_stream=log)

    assert {(r.path, r.line_no, r.reason) for r in stats.rejections} == expected
    assert stats.docs_written == len(valid)
    assert stats.docs_in == stats.docs_written + sum(stats.rejected.values())
    assert sum(stats.rejected.values()) == len(expected)
    assert stats.rejected["malformed_json"] == 2
    assert _read_documents(tmp_path / "out_text_document") == _expected(valid, spm_model)
    reported = log.getvalue()
    assert f"{files[0]}:6: invalid_utf8" in reported
    assert f"{files[1]}:18: truncated_zst" in reported
    summary = format_summary(stats)
    assert f"docs in: {stats.docs_in}  written: {len(valid)}  rejected: {len(expected)}" in summary
    assert "rejected truncated_zst: 1" in summary and "rejected unreadable_file: 1" in summary


def test_split_by_domain_rejects_documents_without_a_domain(tmp_path, spm_model):
    write_jsonl(tmp_path / "a.jsonl", [
        {"text": "kalo", "meta": {"redpajama_set_name": "RedPajamaC4"}},
        {"text": "mine"},
        {"text": "ruta", "meta": {"redpajama_set_name": "../escape"}},
    ])
    stats = preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "out", spm_model, split_by_domain=True))
    assert [(r.line_no, r.reason) for r in stats.rejections] == [(2, "missing_domain"), (3, "missing_domain")]
    assert stats.outputs == [str(tmp_path / "out" / "RedPajamaC4_text_document")]


def test_strict_stops_at_the_first_bad_record_and_writes_nothing(tmp_path, spm_model):
    files, _valid, _expected_rejections = _bad_inputs(tmp_path)
    with pytest.raises(PreprocessError, match=rf"{files[0]}:2: malformed_json"):
        preprocess(_config(files, tmp_path / "out", spm_model, strict=True, workers=2))
    with pytest.raises(PreprocessError, match=rf"{files[1]}:18: truncated_zst"):
        preprocess(_config(files[1:], tmp_path / "out", spm_model, strict=True))
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


def test_strict_cli_exits_non_zero_naming_file_and_line(tmp_path, spm_model):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "kalo"}, {"text": ""}, {"text": "mine"}])
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", str(tmp_path / "in.jsonl"),
         "--output-prefix", str(tmp_path / "out"), "--tokenizer-type", "SentencePieceTokenizer",
         "--tokenizer-model", spm_model, "--append-eod", "--workers", "1", "--strict"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'in.jsonl'}:2: empty_text" in result.stderr
    assert not (tmp_path / "out_text_document.bin").exists()
    assert not (tmp_path / "out_text_document.idx").exists()


def test_failed_run_leaves_no_finished_looking_output(tmp_path, spm_model, monkeypatch):
    from megatron_dwm.data import preprocess as module

    docs = synthetic_documents(30)
    write_jsonl(tmp_path / "a.jsonl", docs)
    preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "out", spm_model))  # a previous, good run
    before = _read_documents(tmp_path / "out_text_document")

    seen_during_run = []
    real_encode = module._encode_line

    def interrupted_encode(data, *args):
        if b"kill-here" in data:
            seen_during_run.extend(sorted(os.listdir(tmp_path)))
            raise KeyboardInterrupt
        return real_encode(data, *args)

    monkeypatch.setattr(module, "_encode_line", interrupted_encode)
    write_jsonl(tmp_path / "a.jsonl", docs + [{"text": "kill-here"}])
    with pytest.raises(KeyboardInterrupt):
        preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "out", spm_model, chunk_size=1, overwrite=True))
    # while running, the new data existed only under temporary names
    assert any(".bin.tmp-" in name for name in seen_during_run)
    # the interrupted run left the previous output untouched and no temporary files
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "out_text_document.bin", "out_text_document.idx"]
    assert _read_documents(tmp_path / "out_text_document") == before


def test_progress_lines_when_not_on_a_terminal(tmp_path, spm_model):
    write_jsonl(tmp_path / "a.jsonl", synthetic_documents(25))
    log = io.StringIO()
    preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "o", spm_model, log_interval=10), progress_stream=log)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and all("docs/s" in line and "MB/s" in line for line in lines)
    assert lines[0].startswith("preprocess: 10 docs")


def test_progress_bar_on_a_terminal(tmp_path, spm_model):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    write_jsonl(tmp_path / "a.jsonl", synthetic_documents(25))
    screen = Terminal()
    preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "o", spm_model), progress_stream=screen)
    assert "25 docs" in screen.getvalue() and "MB/s" in screen.getvalue() and "\r" in screen.getvalue()


def test_inputs_expand_files_globs_and_directories(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/x.jsonl", "d/sub/y.jsonl.zst", "d/notes.txt", "z.jsonl"):
        (tmp_path / name).write_text("")
    assert expand_inputs([str(tmp_path / "d"), str(tmp_path / "*.jsonl")]) == [
        str(tmp_path / "d/sub/y.jsonl.zst"), str(tmp_path / "d/x.jsonl"), str(tmp_path / "z.jsonl"),
    ]
    with pytest.raises(FileNotFoundError, match=r"--input '.*nothing\*.jsonl'"):
        expand_inputs([str(tmp_path / "nothing*.jsonl")])


def test_arguments_are_checked_before_any_work(tmp_path, spm_model):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "kalo"}])
    with pytest.raises(PreprocessError, match="--input 'missing.jsonl'"):
        preprocess(_config(["missing.jsonl"], tmp_path / "o", spm_model))
    with pytest.raises(PreprocessError, match="--tokenizer-model"):
        preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "o", str(tmp_path / "none.model")))
    with pytest.raises(PreprocessError, match="--workers"):
        preprocess(_config([tmp_path / "a.jsonl"], tmp_path / "o", spm_model, workers=0))
