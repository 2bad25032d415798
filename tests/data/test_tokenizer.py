import json

import pytest
import sentencepiece

from megatron_dwm.data.tokenizer import (
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
)
from megatron_dwm.data.tokenizer_training import iter_jsonl_texts, train_sentencepiece
from tests.data.conftest import write_jsonl


def test_sentencepiece_ids_come_from_the_model(spm_model):
    reference = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.unk, tok.bos, tok.eos, tok.pad) == (0, 1, 2, -1)  # Llama-style, no pad
    assert tok.eod == tok.eos
    assert tok.vocab_size == reference.get_piece_size() == 600
    text = "Kalo mine ruta, the quick fox 42 é漢ж!"
    assert tok.tokenize(text) == reference.encode(text)
    assert tok.detokenize(tok.tokenize(text)) == text
    assert tok.vocab[reference.id_to_piece(7)] == 7
    assert tok.inv_vocab[7] == reference.id_to_piece(7)


def test_trained_model_falls_back_to_bytes_for_unseen_characters(spm_model):
    tok = build_tokenizer("SentencePieceTokenizer", spm_model)
    text = "never seen: Ω≈ç√ 🙂"
    assert tok.detokenize(tok.tokenize(text)) == text
    assert "<0xF0>" in tok.vocab  # first byte of the emoji's UTF-8


def test_sentencepiece_special_ids_are_read_not_assumed(tmp_path):
    model = train_sentencepiece(
        ["alpha beta gamma delta " * 5] * 50, str(tmp_path / "m"), vocab_size=300, num_threads=1
    )
    # Re-train with a different layout through the raw API to prove ids are read from the file.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["alpha beta gamma delta " * 5] * 50), model_prefix=str(tmp_path / "n"),
        model_type="bpe", vocab_size=300, byte_fallback=True, unk_id=3, bos_id=-1, eos_id=1, pad_id=0,
        minloglevel=2,
    )
    assert build_tokenizer("SentencePieceTokenizer", model).eod == 2
    other = build_tokenizer("SentencePieceTokenizer", str(tmp_path / "n.model"))
    assert (other.eos, other.eod, other.pad, other.bos, other.unk) == (1, 1, 0, -1, 3)


def _hf_tokenizer_json(path, special_tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", *special_tokens])
    tok.train_from_iterator(["kalo mine ruta vozi"] * 100 + ["the quick fox"] * 100, trainer)
    tok.save(str(path))
    return Tokenizer.from_file(str(path))


def test_huggingface_tokenizer_json(tmp_path):
    reference = _hf_tokenizer_json(tmp_path / "tokenizer.json", ["<s>", "</s>", "<pad>"])
    for path in (tmp_path / "tokenizer.json", tmp_path):  # file or its directory
        tok = build_tokenizer("HuggingFaceTokenizer", str(path))
        assert isinstance(tok, HuggingFaceTokenizer)
        assert (tok.bos, tok.eos, tok.eod, tok.pad) == (
            reference.token_to_id("<s>"), reference.token_to_id("</s>"),
            reference.token_to_id("</s>"), reference.token_to_id("<pad>"),
        )
        assert tok.vocab_size == reference.get_vocab_size()
        assert tok.tokenize("kalo the fox") == reference.encode("kalo the fox").ids


def test_huggingface_special_tokens_from_tokenizer_config(tmp_path):
    reference = _hf_tokenizer_json(tmp_path / "tokenizer.json", ["<|done|>"])
    with pytest.raises(ValueError, match="no end-of-text token"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|done|>"}}))
    tok = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json"))
    assert tok.eod == reference.token_to_id("<|done|>")
    assert tok.pad == -1 and tok.bos is None


def test_build_tokenizer_rejects_bad_arguments(tmp_path, spm_model):
    with pytest.raises(ValueError, match="--tokenizer-type 'GPT2BPETokenizer'"):
        build_tokenizer("GPT2BPETokenizer", spm_model)
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "missing.model"))


def test_train_tokenizer_reads_jsonl_and_zst_skipping_bad_lines(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "alpha beta\ngamma"}, b"{broken", {"x": 1}])
    write_jsonl(tmp_path / "b.jsonl.zst", [{"text": "delta epsilon"}])
    assert list(iter_jsonl_texts([str(tmp_path)])) == ["alpha beta\ngamma", "delta epsilon"]
