#!/usr/bin/env python3
"""Train a Llama-style SentencePiece BPE tokenizer from jsonl / jsonl.zst documents.

BPE with byte fallback, digits split, unk=0 bos=1 eos=2 (no pad), like the Llama-2 tokenizer;
for users without a licence to the Llama-2 file. Example::

    python tools/train_tokenizer.py --input 'data/*.jsonl.zst' --output-prefix tok/spm32k \\
        --vocab-size 32000
    # -> tok/spm32k.model, use with --tokenizer-type SentencePieceTokenizer
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_dwm.library_warnings import quiet_library_messages  # noqa: E402

quiet_library_messages()  # before megatron-core is imported

from megatron_dwm.data.jsonl_reader import expand_inputs  # noqa: E402
from megatron_dwm.data.tokenizer_training import iter_jsonl_texts, train_sentencepiece  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="jsonl / jsonl.zst files, globs or directories")
    parser.add_argument("--json-key", default="text", help="key holding the text (default: text)")
    parser.add_argument("--output-prefix", required=True, help="writes OUTPUT_PREFIX.model and .vocab")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--max-sentences", type=int, default=2_000_000,
                        help="lines sampled for training (default: 2M)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="training threads")
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error("--vocab-size must be at least 300 (256 byte pieces + specials + merges)")
    try:
        expand_inputs(args.input)
    except FileNotFoundError as error:
        parser.error(str(error))
    model = train_sentencepiece(
        iter_jsonl_texts(args.input, args.json_key),
        args.output_prefix,
        vocab_size=args.vocab_size,
        max_sentences=args.max_sentences,
        num_threads=args.workers,
    )
    print(f"wrote {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
