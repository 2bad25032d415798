#!/usr/bin/env python3
"""Zero- and few-shot evaluation with lm-evaluation-harness (the paper's downstream tasks).

    python tools/evaluate.py --load-dir hf_export/ --output results/eval
    python tools/evaluate.py --load-dir ckpt/ --tokenizer-model tokenizer.model --num-fewshot 0 5

--load-dir is a Hugging Face Llama directory (config.json + weights + tokenizer) or a megatron-dwm
checkpoint root (it holds latest_checkpointed_iteration.txt). A checkpoint is first exported
with tools/convert_checkpoint.py megatron-to-hf, tokenizer included, into --export-dir (kept) or
a temporary directory (removed afterwards). The model runs through lm-eval's "hf" backend.

The results table (task, n-shot, metric, value, stderr) is printed and, with --output PATH,
written to PATH.md (markdown) and PATH.json (the rows plus lm-eval's per-task results), each
atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACKER_FILE = "latest_checkpointed_iteration.txt"
# The paper's downstream tasks (lm-eval names).
PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "lambada_openai", "piqa", "sciq", "winogrande",
               "boolq", "logiqa")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-dir", required=True,
                        help="Hugging Face Llama directory, or a megatron-dwm checkpoint root (exported first)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="tokenizer to export with a megatron checkpoint (see convert_checkpoint.py)")
    parser.add_argument("--export-dir", default=None,
                        help="where to export a megatron checkpoint (kept); default: a temporary directory")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS),
                        help="comma-separated lm-eval task names (default: the paper's tasks)")
    parser.add_argument("--num-fewshot", type=int, nargs="+", default=[0],
                        help="number(s) of in-context examples; several values run one evaluation each")
    parser.add_argument("--batch-size", default="1", help="per-device batch size, or 'auto'")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None,
                        help="weights' dtype in evaluation (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--include-path", action="append", default=[],
                        help="folder of extra lm-eval task YAMLs (repeatable), e.g. tests/eval_tasks")
    parser.add_argument("--limit", type=float, default=None,
                        help="examples per task (a fraction if < 1); for smoke tests, not for reported numbers")
    parser.add_argument("--bootstrap-iters", type=int, default=100000,
                        help="bootstrap resamples for stderrs that have no closed form (lm-eval's default)")
    parser.add_argument("--output", default=None, help="write the results to OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.limit is not None and math.isfinite(args.limit) and args.limit >= 1:
        args.limit = int(args.limit)
    args.device = args.device or _default_device()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    problems = []
    load = Path(args.load_dir)
    if not load.is_dir():
        problems.append(f"--load-dir {load}: no such directory")
    elif not (load / TRACKER_FILE).is_file() and not (load / "config.json").is_file():
        problems.append(f"--load-dir {load}: neither a Hugging Face directory (config.json) nor a megatron "
                        f"checkpoint root ({TRACKER_FILE})")
    elif (load / TRACKER_FILE).is_file() and args.tokenizer_model is None:
        problems.append(f"--load-dir {load} is a megatron checkpoint: give --tokenizer-model to export it with")
    for path in args.include_path:
        if not Path(path).is_dir():
            problems.append(f"--include-path {path}: no such directory")
    if any(n < 0 for n in args.num_fewshot):
        problems.append("--num-fewshot: must be >= 0")
    if args.limit is not None and not (math.isfinite(args.limit) and args.limit > 0):
        problems.append(f"--limit {args.limit} must be a finite number > 0")
    if args.bootstrap_iters < 0:
        problems.append(f"--bootstrap-iters {args.bootstrap_iters} must be >= 0")
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) >= 1):
        problems.append(f"--batch-size {args.batch_size} must be 'auto' or an integer >= 1")
    if not args.tasks:
        problems.append("--tasks: empty")
    if problems:
        parser.error("; ".join(problems))
    return args


def export_checkpoint(load: Path, save: Path, tokenizer_model: str) -> None:
    """megatron-dwm checkpoint -> Hugging Face directory, in a separate process (its gloo world and
    the full CPU copy of the model end with it)."""
    command = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "megatron-to-hf",
               "--load-dir", str(load), "--save-dir", str(save), "--tokenizer-model", tokenizer_model]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"exporting {load} failed:\n{result.stderr[-4000:]}")


def result_rows(results: dict, num_fewshot: int) -> list[dict]:
    """One row per (task, metric) of an lm-eval results dict: task, n-shot, metric, value, stderr."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({
                "task": task,
                "n_shot": results.get("n-shot", {}).get(task, num_fewshot),
                "metric": metric if filt == "none" else f"{metric} ({filt})",
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    def number(x: float | None) -> str:
        return "" if x is None or math.isnan(x) else f"{x:.4f}"

    lines = ["| task | n-shot | metric | value | stderr |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['task']} | {r['n_shot']} | {r['metric']} | {number(r['value'])} | {number(r['stderr'])} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(output: str, rows: list[dict], raw: dict, model_dir: str) -> tuple[Path, Path]:
    stem = Path(output)
    if stem.suffix in (".md", ".json"):
        stem = stem.with_suffix("")
    md, js = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".json")
    _write_atomically(md, f"# Evaluation of `{model_dir}`\n\n" + format_table(rows))
    _write_atomically(js, json.dumps({"model": model_dir, "rows": rows, "lm_eval_results": raw}, indent=2,
                                     default=str) + "\n")
    return md, js


def evaluate(args: argparse.Namespace, model_dir: Path) -> tuple[list[dict], dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own tasks takes seconds: skip it when the local YAMLs hold every task.
    task_manager = TaskManager(include_path=args.include_path, include_defaults=False) if args.include_path else None
    if task_manager is None or not set(args.tasks) <= set(task_manager.all_tasks):
        task_manager = TaskManager(include_path=args.include_path or None)
    unknown = [t for t in args.tasks if t not in task_manager.all_tasks]
    if unknown:
        raise SystemExit(f"unknown lm-eval task(s): {', '.join(unknown)} (see `lm_eval ls tasks`; local task "
                         "YAMLs need --include-path)")
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    rows, raw = [], {}
    for shots in args.num_fewshot:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={model_dir},dtype={args.dtype}", tasks=args.tasks,
            num_fewshot=shots, batch_size=batch_size, device=args.device, limit=args.limit,
            bootstrap_iters=args.bootstrap_iters, task_manager=task_manager, log_samples=False)
        rows += result_rows(results, shots)
        raw[str(shots)] = {key: results.get(key) for key in ("results", "n-shot", "configs", "versions")}
    return rows, raw


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    load = Path(args.load_dir)
    with tempfile.TemporaryDirectory(prefix="evaluate_export_") as tmp:
        model_dir = load
        if (load / TRACKER_FILE).is_file():
            model_dir = Path(args.export_dir) if args.export_dir else Path(tmp) / "hf"
            export_checkpoint(load, model_dir, args.tokenizer_model)
            print(f"exported {load} to {model_dir}")
        rows, raw = evaluate(args, model_dir)
    print(format_table(rows), end="")
    if args.output:
        for path in write_results(args.output, rows, raw, str(load)):
            print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
