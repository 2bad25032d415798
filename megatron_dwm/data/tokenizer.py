"""Text tokenizers behind the interface megatron-core's datasets expect.

Two kinds, selected with Megatron-LM's flags ``--tokenizer-type`` and ``--tokenizer-model``:

- ``SentencePieceTokenizer``: a SentencePiece ``.model`` (the Llama-2 format). BOS, EOS, pad and
  unk ids are read from the model. ``tokenize`` adds no BOS/EOS, like Megatron-LM's
  SentencePiece tokenizers; the end-of-document token (``eod``) is the model's EOS.
- ``HuggingFaceTokenizer``: a Hugging Face ``tokenizer.json`` (a file, or a directory holding one),
  loaded with the ``tokenizers`` package. ``tokenize`` applies the tokenizer's own post-processor
  (the Llama-2 file adds BOS), like Megatron-LM's ``HuggingFaceTokenizer``. Special tokens come
  from a ``tokenizer_config.json`` beside the file when there is one, else from well-known names.

Both subclass megatron-core's ``MegatronTokenizerBase`` and expose ``eod``, ``pad``, ``bos``,
``eos``, ``vocab_size`` (an int), ``tokenize``, ``detokenize``, ``vocab`` and ``inv_vocab``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from megatron.core.tokenizers import MegatronTokenizerBase

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer")

_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


class TextTokenizer(MegatronTokenizerBase):
    """Common interface: token ids in and out, special ids as properties."""

    def __init__(self, path: str) -> None:
        super().__init__(str(path), {})

    @property
    def eod(self) -> int:
        """End-of-document id appended by ``--append-eod`` and used by GPTDataset."""
        return self.eos

    @property
    def unique_identifiers(self) -> OrderedDict:
        """What identifies the tokenizer in megatron-core's dataset cache keys."""
        return OrderedDict([("class", type(self).__qualname__), ("tokenizer_path", self.path)])

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError("chat templates are not used in pretraining")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size}, "
            f"bos={self.bos}, eos={self.eos}, pad={self.pad})"
        )


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece ``.model``; special ids come from the model itself."""

    def __init__(self, model_path: str) -> None:
        import sentencepiece

        super().__init__(model_path)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self._vocab: dict[str, int] | None = None

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def detokenize(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = {self._sp.id_to_piece(i): i for i in range(self.vocab_size)}
        return self._vocab

    @property
    def inv_vocab(self) -> dict[int, str]:
        return {i: piece for piece, i in self.vocab.items()}

    @property
    def bos(self) -> int:
        return self._sp.bos_id()

    @property
    def eos(self) -> int:
        return self._sp.eos_id()

    @property
    def pad(self) -> int:
        """The model's pad id; -1 when it has none (megatron-core then pads with -1 too)."""
        return self._sp.pad_id()

    @property
    def unk(self) -> int:
        return self._sp.unk_id()


class HuggingFaceTokenizer(TextTokenizer):
    """A Hugging Face ``tokenizer.json`` read with the ``tokenizers`` package."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        super().__init__(str(file))
        self._tok = Tokenizer.from_file(str(file))
        names = _special_token_names(file)
        self._bos = self._find_id(names.get("bos_token"), _BOS_NAMES)
        self._eos = self._find_id(names.get("eos_token"), _EOS_NAMES)
        self._pad = self._find_id(names.get("pad_token"), _PAD_NAMES)
        if self._eos is None:
            raise ValueError(
                f"{file}: no end-of-text token found (looked for {', '.join(_EOS_NAMES)}); "
                "put a tokenizer_config.json with an 'eos_token' beside it"
            )

    def _find_id(self, configured: str | None, candidates: tuple[str, ...]) -> int | None:
        for name in (configured, *candidates):
            if name is not None and self._tok.token_to_id(name) is not None:
                return self._tok.token_to_id(name)
        return None

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def inv_vocab(self) -> dict[int, str]:
        return {i: token for token, i in self.vocab.items()}

    @property
    def bos(self) -> int | None:
        return self._bos

    @property
    def eos(self) -> int:
        return self._eos

    @property
    def pad(self) -> int:
        """The pad token's id; -1 when there is none (megatron-core's own default)."""
        return -1 if self._pad is None else self._pad


def _special_token_names(tokenizer_file: Path) -> dict[str, str]:
    """Special token strings from a ``tokenizer_config.json`` next to the file, if any."""
    config_file = tokenizer_file.parent / "tokenizer_config.json"
    if config_file == tokenizer_file or not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text(encoding="utf-8"))
    names = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):  # {"content": "</s>", ...}
            value = value.get("content")
        if isinstance(value, str):
            names[key] = value
    return names


def build_tokenizer(tokenizer_type: str, tokenizer_model: str) -> TextTokenizer:
    """The tokenizer named by ``--tokenizer-type`` loaded from ``--tokenizer-model``."""
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(
            f"--tokenizer-type {tokenizer_type!r} is not supported; use one of {', '.join(TOKENIZER_TYPES)}"
        )
    if not tokenizer_model or not Path(tokenizer_model).exists():
        raise FileNotFoundError(f"--tokenizer-model {tokenizer_model!r} does not exist")
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    return HuggingFaceTokenizer(tokenizer_model)
