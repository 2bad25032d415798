#!/usr/bin/env python3
"""LAMBADA-format jsonl -> an indexed validation set whose loss mask covers only the targets.

Each input line is ``{"text": "... passage ... target"}`` (the last word is the target, as in
LAMBADA's ``lambada_test.jsonl``) or ``{"context": ..., "target": ...}``. The output
``OUTPUT_PREFIX_text_document.{bin,idx}`` stores every example as one document of two sequences,
context tokens then target tokens (see docs/data.md); pass ``OUTPUT_PREFIX_text_document`` to
``--dwm-valid-data-path``. Example::

    python tools/preprocess_lambada.py --input lambada_test.jsonl --output-prefix data/lambada \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tokenizer.model
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_dwm.library_warnings import quiet_library_messages  # noqa: E402

quiet_library_messages()  # before megatron-core is imported

from megatron_dwm.data.context_target_writer import preprocess_context_target  # noqa: E402
from megatron_dwm.data.preprocess import run_as_command  # noqa: E402
from megatron_dwm.data.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="jsonl / jsonl.zst files, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="writes OUTPUT_PREFIX_text_document.{bin,idx}")
    parser.add_argument("--json-keys", nargs=1, default=["text"],
                        help="key of the passage whose last word is the target (default: text)")
    parser.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    parser.add_argument("--tokenizer-model", required=True)
    parser.add_argument("--strict", action="store_true", help="non-zero exit at the first bad record")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUTPUT_PREFIX_text_document.{bin,idx} (else an error)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_as_command(lambda: preprocess_context_target(
        args.input, args.output_prefix, build_tokenizer(args.tokenizer_type, args.tokenizer_model),
        text_key=args.json_keys[0], strict=args.strict,
        overwrite=args.overwrite,
    ))


if __name__ == "__main__":
    sys.exit(main())
