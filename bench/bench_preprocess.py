#!/usr/bin/env python3
"""Preprocessing throughput (docs/s, MB/s, tokens/s) on the demo corpus at 1 and 2 workers.

Run ``make demo-data`` first. Each configuration runs ``--repeat`` times into a temporary
directory; the best run is reported. ``--markdown`` prints the table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")

from megatron_dwm.data.preprocess import PreprocessConfig, preprocess  # noqa: E402


def measure(inputs: list[str], tokenizer_type: str, tokenizer_model: str, workers: int, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            stats = preprocess(PreprocessConfig(
                inputs=inputs, output_prefix=os.path.join(out, "indexed"), tokenizer_type=tokenizer_type,
                tokenizer_model=tokenizer_model, append_eod=True, workers=workers, split_by_domain=True,
                log_interval=10**9,
            ))
        if best is None or stats.seconds < best.seconds:
            best = stats
    return {
        "workers": workers,
        "docs": best.docs_in,
        "mb": best.bytes_in / 1e6,
        "tokens": best.tokens,
        "seconds": best.seconds,
        "docs_per_s": best.docs_in / best.seconds,
        "mb_per_s": best.bytes_in / 1e6 / best.seconds,
        "tokens_per_s": best.tokens / best.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-data", default="demo_data")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    chunks = os.path.join(args.demo_data, "slimpajama", "train")
    tokenizers = {
        "demo SentencePiece 8k": ("SentencePieceTokenizer", os.path.join(args.demo_data, "tokenizers", "demo-spm.model")),
        "Mistral-7B SentencePiece 32k": ("SentencePieceTokenizer", os.path.join(args.demo_data, "tokenizers", "mistral-7b-v0.1.model")),
        "Llama-2 HF tokenizer.json 32k": ("HuggingFaceTokenizer", os.path.join(args.demo_data, "tokenizers", "llama-2.json")),
    }
    missing = [path for _, path in tokenizers.values() if not os.path.exists(path)]
    if not os.path.isdir(chunks) or missing:
        print(f"error: demo data missing under {args.demo_data} (run `make demo-data`)", file=sys.stderr)
        return 1
    rows = []
    for name, (kind, model) in tokenizers.items():
        for workers in args.workers:
            row = measure([chunks], kind, model, workers, args.repeat)
            row["tokenizer"] = name
            rows.append(row)
            print(f"{name}, {workers} worker(s): {row['docs_per_s']:.0f} docs/s, {row['mb_per_s']:.2f} MB/s, "
                  f"{row['tokens_per_s']:.0f} tokens/s ({row['docs']} docs, {row['mb']:.1f} MB, "
                  f"{row['tokens']} tokens in {row['seconds']:.1f} s)", flush=True)
    if args.markdown:
        print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}\n")
        print("| tokenizer | workers | docs/s | MB/s | tokens/s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['tokenizer']} | {r['workers']} | {r['docs_per_s']:.0f} | {r['mb_per_s']:.2f} | "
                  f"{r['tokens_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
