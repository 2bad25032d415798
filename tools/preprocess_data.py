#!/usr/bin/env python3
"""Tokenize jsonl / jsonl.zst documents into Megatron indexed datasets (.bin/.idx).

Megatron-LM's flags, plus ``--split-by-domain`` (one output per ``meta.redpajama_set_name``) and
``--strict`` (any bad record is a non-zero exit naming its file and line). Example::

    python tools/preprocess_data.py --input 'slimpajama/train/chunk1/*.jsonl.zst' \\
        --output-prefix data/slimpajama --split-by-domain --json-keys text \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tokenizer.model \\
        --append-eod --workers 16
    # -> data/slimpajama/RedPajamaC4_text_document.{bin,idx}, ...
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_dwm.library_warnings import quiet_library_messages  # noqa: E402

quiet_library_messages()  # before megatron-core is imported

from megatron_dwm.data.preprocess import PreprocessConfig, preprocess, run_as_command  # noqa: E402
from megatron_dwm.data.tokenizer import TOKENIZER_TYPES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True,
                       help="jsonl / jsonl.zst files, globs or directories (searched recursively)")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="keys to extract from each json line (default: text)")
    group.add_argument("--split-by-domain", action="store_true",
                       help="one output per meta.redpajama_set_name: "
                            "OUTPUT_PREFIX/<domain>_<key>_document.{bin,idx}")
    group.add_argument("--strict", action="store_true",
                       help="stop with a non-zero exit at the first bad record (file and line named)")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    group.add_argument("--tokenizer-model", required=True,
                       help="SentencePiece .model, or Hugging Face tokenizer.json (file or directory)")
    group.add_argument("--append-eod", action="store_true", help="append an end-of-document token")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True,
                       help="output prefix, <prefix>_<key>_document.{bin,idx}; "
                            "with --split-by-domain an output directory")
    group.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs (without it, any existing output .bin/.idx - with "
                            "--split-by-domain any *_<key>_document.bin/.idx in the directory - is an error)")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=os.cpu_count(),
                       help="tokenizer processes (default: all CPUs)")
    group.add_argument("--log-interval", type=int, default=100_000,
                       help="documents between progress lines when not on a terminal")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = PreprocessConfig(
        inputs=args.input,
        output_prefix=args.output_prefix,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        json_keys=tuple(args.json_keys),
        append_eod=args.append_eod,
        workers=args.workers,
        split_by_domain=args.split_by_domain,
        strict=args.strict,
        overwrite=args.overwrite,
        log_interval=args.log_interval,
    )
    return run_as_command(lambda: preprocess(config))


if __name__ == "__main__":
    sys.exit(main())
