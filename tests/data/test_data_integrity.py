"""Never train on the wrong data: a .bin/.idx pair that does not belong together is refused before
any work, naming the file; re-preprocessed data never reuses megatron-core's cached indices of the
old files; preprocessing never replaces existing outputs without --overwrite; a UTF-8 BOM is not
part of a record."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_dwm.data import build_tokenizer, build_train_valid_test_datasets, parse_data_path
from megatron_dwm.data.indexed_writer import AtomicIndexedWriter
from megatron_dwm.data.integrity import HEADER_BYTES, indexed_problem
from megatron_dwm.data.preprocess import PreprocessConfig, preprocess
from tests.data.conftest import write_jsonl

VOCAB = 202  # the session corpus's word-level tokenizer: w0 .. w199, <unk>, </s>
TOKEN_BYTES = 2  # uint16 for that vocabulary


def _lengths(count: int, seed: int) -> list[int]:
    return [int(n) for n in numpy.random.default_rng(seed).integers(20, 150, size=count)]


def _write_prefix(prefix: Path, count: int, seed: int = 0) -> list[int]:
    """`count` documents of random tokens; returns their lengths."""
    rng = numpy.random.default_rng(seed + 1000)
    writer = AtomicIndexedWriter(str(prefix), VOCAB)
    lengths = _lengths(count, seed)
    for length in lengths:
        writer.add_document([rng.integers(0, 200, size=length).astype(numpy.int32)])
    writer.commit()
    return lengths


def _sha(*paths: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


# ------------------------------------------------------------------ the .bin/.idx check


@pytest.fixture
def pairs(tmp_path) -> dict[str, object]:
    """A 20-document and a 94-document prefix, with their lengths."""
    return {"small": tmp_path / "small_text_document", "large": tmp_path / "large_text_document",
            "small_lengths": _write_prefix(tmp_path / "small_text_document", 20, seed=1),
            "large_lengths": _write_prefix(tmp_path / "large_text_document", 94, seed=2)}


def _mixed(pairs, tmp_path: Path, idx_of: str, bin_of: str) -> Path:
    prefix = tmp_path / "mixed_text_document"
    shutil.copy(f"{pairs[idx_of]}.idx", f"{prefix}.idx")
    shutil.copy(f"{pairs[bin_of]}.bin", f"{prefix}.bin")
    return prefix


def test_consistent_pairs_pass(pairs):
    assert indexed_problem(str(pairs["small"])) is None and indexed_problem(str(pairs["large"])) is None


def test_an_index_of_other_data_with_a_larger_bin_is_named(pairs, tmp_path):
    prefix = _mixed(pairs, tmp_path, idx_of="small", bin_of="large")
    described = sum(pairs["small_lengths"]) * TOKEN_BYTES  # what the small data's .idx describes
    actual = sum(pairs["large_lengths"]) * TOKEN_BYTES
    assert indexed_problem(str(prefix)) == (
        f"{prefix}.bin is {actual} bytes but {prefix}.idx describes {described}: the pair does not belong "
        "together (the .idx indexes other data); re-run tools/preprocess_data.py")
    with pytest.raises(ValueError, match=f"--data-path: {prefix}.bin is {actual} bytes"):  # the data layer too
        parse_data_path([str(prefix)])


def test_a_truncated_bin_is_named(pairs):
    prefix = pairs["large"]
    full = sum(pairs["large_lengths"]) * TOKEN_BYTES
    os.truncate(f"{prefix}.bin", full - 7)
    assert indexed_problem(str(prefix), "tools/preprocess_lambada.py") == (
        f"{prefix}.bin is {full - 7} bytes but {prefix}.idx describes {full}: the .bin is truncated or the "
        "pair does not belong together; re-run tools/preprocess_lambada.py")


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


@pytest.mark.parametrize("damage,message", [
    (lambda idx: os.truncate(idx, 20), "{idx} is 20 bytes, shorter than an index header (34 bytes): not a Megatron "
                                       ".idx, or truncated; re-run tools/preprocess_data.py"),
    (lambda idx: _patch(idx, 0, b"NOTANIDX\x00"), "{idx} does not start with Megatron's index header "
                                                   "b'MMIDIDX\\x00\\x00': not a Megatron .idx"),
    (lambda idx: _patch(idx, 9, struct.pack("<Q", 2)), "{idx}: index version 2, expected 1"),
    (lambda idx: _patch(idx, 17, b"\x09"), "{idx}: unknown token dtype code 9 (megatron-core knows 1 to 8)"),
    (lambda idx: os.truncate(idx, os.path.getsize(idx) - 8), "{idx} is {size_minus_8} bytes but its header announces "
     "20 sequences and 20 documents ({size} bytes): the .idx is truncated or corrupt; "
     "re-run tools/preprocess_data.py"),
    (lambda idx: _patch(idx, os.path.getsize(idx) - 8, struct.pack("<q", 19)),
     "{idx}: its documents end at sequence 19, but it holds 20 sequences: corrupt .idx; "
     "re-run tools/preprocess_data.py"),
    (lambda idx: os.remove(idx), "no {idx} (only {bin} exists); re-run tools/preprocess_data.py"),
])
def test_a_damaged_index_is_named(pairs, damage, message):
    prefix = str(pairs["small"])
    idx, size = prefix + ".idx", os.path.getsize(prefix + ".idx")
    assert size == HEADER_BYTES + 12 * 20 + 8 * 21  # megatron-core's layout, independently
    damage(idx)
    assert indexed_problem(prefix) == message.format(idx=idx, bin=prefix + ".bin", size=size, size_minus_8=size - 8)


# A mismatched pair and a truncated .bin, through the entry point: exit 2 before any process group,
# naming the file, for every flag that takes a prefix.

def _main_fails(argv: list[str], capsys, monkeypatch) -> str:
    import torch.distributed as dist

    import megatron_dwm.parallel
    import pretrain_dwm

    def past_validation(*_args, **_kwargs):
        raise AssertionError("the arguments were accepted: training would start")

    monkeypatch.setattr(megatron_dwm.parallel, "initialize_parallel", past_validation)
    with pytest.raises(SystemExit) as exit_info:
        pretrain_dwm.main(argv)
    assert exit_info.value.code == 2
    assert not dist.is_initialized()
    return capsys.readouterr().err


@pytest.fixture
def broken(pairs, tmp_path) -> dict[str, tuple[Path, str]]:
    """A mismatched pair and a truncated .bin, with the message each must give."""
    mixed = _mixed(pairs, tmp_path, idx_of="small", bin_of="large")
    truncated = tmp_path / "truncated_text_document"
    shutil.copy(f"{pairs['large']}.idx", f"{truncated}.idx")
    shutil.copy(f"{pairs['large']}.bin", f"{truncated}.bin")
    full = sum(pairs["large_lengths"]) * TOKEN_BYTES
    os.truncate(f"{truncated}.bin", full // 2)
    return {"mismatched": (mixed, f"{mixed}.bin is {full} bytes but {mixed}.idx describes "
                                  f"{sum(pairs['small_lengths']) * TOKEN_BYTES}: the pair does not belong together"),
            "truncated": (truncated, f"{truncated}.bin is {full // 2} bytes but {truncated}.idx describes {full}: "
                                     "the .bin is truncated")}


@pytest.mark.parametrize("case", ["mismatched", "truncated"])
def test_entry_point_refuses_a_bad_pair_in_every_data_flag(corpus, broken, case, tmp_path, capsys, monkeypatch):
    prefix, message = broken[case]
    common = ["--dwm-disable", "--tokenizer-type", "HuggingFaceTokenizer",
              "--tokenizer-model", str(corpus["tokenizer"])]
    err = _main_fails([*common, "--data-path", "0.5", corpus["data_path"][1], "0.5", str(prefix)], capsys,
                      monkeypatch)
    assert f"--data-path: {message}" in err and "re-run tools/preprocess_data.py" in err

    per_split = tmp_path / "split.json"
    per_split.write_text(json.dumps({"train": [corpus["data_path"][1]], "valid": [str(prefix)]}))
    err = _main_fails([*common, "--per-split-data-args-path", str(per_split)], capsys, monkeypatch)
    assert f"--per-split-data-args-path {per_split} valid: {message}" in err

    err = _main_fails([*common, "--data-path", *corpus["data_path"], "--dwm-valid-data-path", str(prefix)], capsys,
                      monkeypatch)
    assert f"--dwm-valid-data-path: {message}" in err and "re-run tools/preprocess_lambada.py" in err


# ------------------------------------------------------------------ index caches keyed on the data


@pytest.mark.parametrize("cache", ["next-to-the-data", "data-cache-path"])
def test_rewritten_data_never_reuses_cached_indices(corpus, tmp_path, cache):
    """Build, rewrite the prefix with fewer then more documents, build again into the same cache:
    each build samples exactly what a build into an empty cache does."""
    tokenizer = build_tokenizer("HuggingFaceTokenizer", corpus["tokenizer"])
    prefix = tmp_path / "data" / "web_text_document"
    cache_dir = None if cache == "next-to-the-data" else str(tmp_path / "cache")

    def document_ids(cache_dir: str | None) -> list[int]:
        data = build_train_valid_test_datasets([str(prefix)], "1,0,0", 32, 5, tokenizer, cache_dir, (60, 0, 0))
        return [int(data.train[i]["document_id"]) for i in range(len(data.train))]

    for step, count in enumerate((40, 12, 94)):
        _write_prefix(prefix, count, seed=step)
        ids = document_ids(cache_dir)
        assert max(ids) < count  # only documents of the new file
        assert ids == document_ids(str(tmp_path / f"fresh{step}"))  # the reference: an empty cache
    assert max(ids) >= 40  # the grown file's new documents are read


def _identities_seen_by(rank: int, world_size: int, prefix: str) -> dict[str, str]:
    from megatron_dwm.data import datasets

    if rank == 1:  # a node whose copy of the data has other timestamps
        datasets.dataset_identity = lambda path: "bin:1:1 idx:1:1"
    return datasets.data_identities(([prefix], None), None)


def test_every_rank_keys_the_cache_on_rank_0s_files(tmp_path):
    """megatron-core builds the indices on rank 0 and the other ranks load them by name: every rank
    must name them after rank 0's view of the files."""
    from megatron_dwm.data.integrity import dataset_identity
    from tests.distributed import run_distributed

    prefix = str(tmp_path / "web_text_document")
    _write_prefix(Path(prefix), 5)
    assert run_distributed(_identities_seen_by, 2, args=(prefix,)) == [{prefix: dataset_identity(prefix)}] * 2


# ------------------------------------------------------------------ preprocessing


def _word_docs(count: int, seed: int = 0) -> list[dict]:
    rng = numpy.random.default_rng(seed)
    return [{"text": " ".join(f"w{t}" for t in rng.integers(0, 200, size=int(n)))}
            for n in rng.integers(20, 150, size=count)]


def _preprocess_argv(corpus, inputs: Path, output_prefix: Path, *extra: str) -> list[str]:
    return ["--input", str(inputs), "--output-prefix", str(output_prefix), "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", str(corpus["tokenizer"]), "--append-eod", "--workers", "1", *extra]


def _refuse_any_tokenizing(monkeypatch) -> None:
    from megatron_dwm.data import preprocess as module

    def no_work(*_args):
        raise AssertionError("the refusal must come before any tokenizing")

    monkeypatch.setattr(module, "_init_worker", no_work)


@pytest.mark.parametrize("split_by_domain", [False, True])
def test_existing_output_is_refused_unless_overwrite(corpus, tmp_path, capsys, monkeypatch, split_by_domain):
    from tools.preprocess_data import main

    write_jsonl(tmp_path / "old.jsonl", [{**d, "meta": {"redpajama_set_name": "Web"}} for d in _word_docs(20)])
    write_jsonl(tmp_path / "new.jsonl", [{**d, "meta": {"redpajama_set_name": "Web"}} for d in _word_docs(9, 1)])
    extra = ["--split-by-domain"] if split_by_domain else []
    out = tmp_path / "out"
    prefix = out / "Web_text_document" if split_by_domain else tmp_path / "out_text_document"
    assert main(_preprocess_argv(corpus, tmp_path / "old.jsonl", out, *extra)) == 0
    files = [Path(f"{prefix}.bin"), Path(f"{prefix}.idx")]
    before, listing = _sha(*files), sorted(os.listdir(prefix.parent))
    capsys.readouterr()

    with monkeypatch.context() as patch:
        _refuse_any_tokenizing(patch)
        assert main(_preprocess_argv(corpus, tmp_path / "new.jsonl", out, *extra)) == 1
    err = capsys.readouterr().err
    assert f"error: {files[0]}, {files[1]} already exist; nothing was written (pass --overwrite" in err
    assert _sha(*files) == before and sorted(os.listdir(prefix.parent)) == listing  # no byte changed, no temp file

    assert main(_preprocess_argv(corpus, tmp_path / "new.jsonl", out, *extra, "--overwrite")) == 0
    assert len(IndexedDataset(str(prefix))) == 9
    reference = tmp_path / "reference"
    assert main(_preprocess_argv(corpus, tmp_path / "new.jsonl", reference, *extra)) == 0
    reference_prefix = reference / "Web_text_document" if split_by_domain else tmp_path / "reference_text_document"
    assert _sha(*files) == _sha(Path(f"{reference_prefix}.bin"), Path(f"{reference_prefix}.idx"))


def test_lambada_output_is_refused_unless_overwrite(corpus, tmp_path, capsys):
    from tools.preprocess_lambada import main

    write_jsonl(tmp_path / "l.jsonl", [{"context": "w1 w2 w3", "target": " w4"}, {"context": "w5 w6", "target": " w7"}])
    argv = ["--input", str(tmp_path / "l.jsonl"), "--output-prefix", str(tmp_path / "v"),
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(corpus["tokenizer"])]
    assert main(argv) == 0
    files = [tmp_path / "v_text_document.bin", tmp_path / "v_text_document.idx"]
    before = _sha(*files)
    write_jsonl(tmp_path / "l.jsonl", [{"context": "w8 w9", "target": " w10"}])
    capsys.readouterr()
    assert main(argv) == 1
    assert f"error: {files[0]}, {files[1]} already exist; nothing was written" in capsys.readouterr().err
    assert _sha(*files) == before
    assert main([*argv, "--overwrite"]) == 0 and len(IndexedDataset(str(tmp_path / "v_text_document"))) == 2


def test_a_byte_order_mark_is_not_part_of_the_record(corpus, tmp_path):
    """A BOM at the start of the file and of a line (concatenated files) is dropped; the documents
    are written exactly as without it."""
    docs = _word_docs(4)
    lines = [json.dumps(d).encode() for d in docs]
    (tmp_path / "plain.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    bom = b"\xef\xbb\xbf"
    (tmp_path / "bom.jsonl").write_bytes(bom + lines[0] + b"\n" + lines[1] + b"\n" + bom + lines[2] + b"\n"
                                         + lines[3] + b"\n")
    stats = {}
    for name in ("plain", "bom"):
        stats[name] = preprocess(PreprocessConfig([str(tmp_path / f"{name}.jsonl")], str(tmp_path / name),
                                                  "HuggingFaceTokenizer", str(corpus["tokenizer"]), append_eod=True))
    assert (stats["bom"].docs_written, dict(stats["bom"].rejected)) == (4, {})
    assert _sha(tmp_path / "bom_text_document.bin", tmp_path / "bom_text_document.idx") == \
        _sha(tmp_path / "plain_text_document.bin", tmp_path / "plain_text_document.idx")


# ------------------------------------------------------------------ end to end: train, re-preprocess, train


def _flags_with_cache_next_to_the_data(corpus, prefix: Path, run_dir: Path) -> list[str]:
    """The session corpus's tiny run on `prefix` alone, with a frozen DWM (so that every global
    batch's document ids are logged to dwm_samples.jsonl) and megatron-core's default cache: next
    to the data, where a stale index would be found."""
    from tests.training.corpus import training_flags

    flags = training_flags({**corpus, "data_path": [str(prefix)]}, "--train-iters", "2", "--dwm-stages", "1",
                           "--dwm-freeze", "--metrics-file", str(run_dir / "metrics.jsonl"), dwm=True)
    at = flags.index("--data-cache-path")
    shutil.rmtree(flags[at + 1])
    return flags[:at] + flags[at + 2:]


def _reference_document_ids(flags: list[str], cache_dir: Path) -> list[list[int]]:
    """Per iteration, the document ids of the global batch the run must read: the run's own dataset
    code on the current files, with an empty cache."""
    from megatron_dwm.arguments import build_parser
    from megatron_dwm.config_checks import validate_args
    from megatron_dwm.training.data_iterators import build_datasets

    args = build_parser().parse_args([*flags, "--data-cache-path", str(cache_dir)])
    validate_args(args, world_size=1)
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
    train = build_datasets(args, tokenizer, is_built_on_rank=lambda: True).train
    batch = args.global_batch_size
    return [[int(train[i]["document_id"]) for i in range(k * batch, (k + 1) * batch)] for k in range(args.train_iters)]


def test_training_after_re_preprocessing_reads_the_new_data(corpus, tmp_path):
    """Preprocess 40 documents and train; re-preprocess the same prefix with 12, train; with 94,
    train: every run reads exactly the global batches of the current file (the shrunk file once
    crashed on the cached index, the grown one trained on the old 20-document index)."""
    from tests.training.launch import run_job

    prefix = tmp_path / "data" / "web"
    document_prefix = Path(f"{prefix}_text_document")
    for step, count in enumerate((40, 12, 94)):
        write_jsonl(tmp_path / "web.jsonl", _word_docs(count, seed=step))
        preprocess(PreprocessConfig([str(tmp_path / "web.jsonl")], str(prefix), "HuggingFaceTokenizer",
                                    str(corpus["tokenizer"]), append_eod=True, overwrite=step > 0))
        assert len(IndexedDataset(str(document_prefix)).document_indices) - 1 == count
        run_dir = tmp_path / f"run{step}"
        flags = _flags_with_cache_next_to_the_data(corpus, document_prefix, run_dir)
        run_job(flags, 1, run_dir / "logs")
        read = [record["document_id"] for record in map(json.loads, (run_dir / "dwm_samples.jsonl").open())]
        assert read == _reference_document_ids(flags, tmp_path / f"reference-cache{step}")
        assert max(max(ids) for ids in read) < count
    assert max(max(ids) for ids in read) >= 40  # documents only the grown file has were read


def test_every_training_job_of_the_suite_has_its_own_index_cache(corpus):
    """Jobs on the session corpus never share megatron-core's index caches (a job killed while
    writing them would leave half-written indices for the next test)."""
    from tests.training.corpus import training_flags

    caches = [flags[flags.index("--data-cache-path") + 1]
              for flags in (training_flags(corpus), training_flags(corpus, dwm=True))]
    assert caches[0] != caches[1] and all(os.path.isdir(c) and not os.listdir(c) for c in caches)
