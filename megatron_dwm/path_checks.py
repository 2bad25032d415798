"""The files and directories the flags name, checked before any work: training data (--data-path
or --per-split-data-args-path), tokenizer, the DWM's validation set, and the output and checkpoint
directories. Each check returns its problems (empty if none), naming the flag at fault.
"""

from __future__ import annotations

import argparse
import os


def train_dataset_count(args: argparse.Namespace) -> int | None:
    """Datasets in the training blend (--data-path, or the per-split file's "train"); None if unreadable
    (reported by the data checks)."""
    data_path = args.data_path
    if data_path is None and args.per_split_data_args_path is not None:
        per_split, _ = _read_per_split(args.per_split_data_args_path)
        data_path = per_split.get("train") if per_split else None
    if not isinstance(data_path, list) or not data_path:
        return None
    return len(_blend_prefixes(data_path))


def data_problems(args: argparse.Namespace) -> list[str]:
    """Missing or unreadable inputs: data prefixes, split file, tokenizer, LAMBADA-style set."""
    problems = []
    if (args.data_path is None) == (args.per_split_data_args_path is None):
        problems.append("give the training data with exactly one of --data-path and --per-split-data-args-path")
    elif args.data_path is not None:
        problems += _blend_problems("--data-path", args.data_path)
    else:
        problems += _per_split_problems(args.per_split_data_args_path)
    if args.tokenizer_model is None:
        problems.append(f"--tokenizer-type {args.tokenizer_type} needs --tokenizer-model (a .model or tokenizer.json)")
    elif not os.path.exists(args.tokenizer_model):
        problems.append(f"--tokenizer-model {args.tokenizer_model}: no such file")
    else:
        problems += _tokenizer_problems(args.tokenizer_type, args.tokenizer_model)
    if args.dwm_valid_data_path is not None:
        problem = _indexed_problem(args.dwm_valid_data_path, "tools/preprocess_lambada.py")
        problems += [f"--dwm-valid-data-path: {problem}"] if problem else []
    return problems


def _tokenizer_problems(tokenizer_type: str, tokenizer_model: str) -> list[str]:
    """The tokenizer, loaded as the run will load it (a damaged or wrong file fails here, naming the flag)."""
    from megatron_dwm.data.tokenizer import build_tokenizer

    try:
        build_tokenizer(tokenizer_type, tokenizer_model)
    except Exception as error:  # sentencepiece and tokenizers raise anything on a bad file
        first_line = (str(error).strip().splitlines() or [""])[0]
        return [f"--tokenizer-model {tokenizer_model}: cannot be loaded as --tokenizer-type {tokenizer_type} "
                f"({type(error).__name__}: {first_line})"]
    return []


def _read_per_split(path: str) -> tuple[dict | None, str | None]:
    """--per-split-data-args-path's JSON object, or the problem that stops it being read."""
    import json

    flag = f"--per-split-data-args-path {path}"
    if not os.path.isfile(path):
        return None, f"{flag}: no such file"
    try:
        with open(path, encoding="utf-8") as file:
            per_split = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{flag}: not readable as JSON ({error})"
    if not isinstance(per_split, dict) or set(per_split) - {"train", "valid", "test"}:
        return None, f'{flag}: expected a JSON object with keys among "train", "valid", "test"'
    return per_split, None


def _per_split_problems(path: str) -> list[str]:
    """--per-split-data-args-path: a readable JSON object of --data-path lists, each checked."""
    per_split, problem = _read_per_split(path)
    if problem:
        return [problem]
    flag = f"--per-split-data-args-path {path}"
    problems = []
    for split, data_path in per_split.items():
        if not isinstance(data_path, list) or not all(isinstance(item, (str, int, float)) for item in data_path):
            problems.append(f"{flag} {split}: expected a list in --data-path syntax")
        elif data_path:
            problems += _blend_problems(f"{flag} {split}", [str(item) for item in data_path])
    return problems


def _blend_prefixes(data_path: list) -> list:
    """The prefixes of a --data-path list: itself if it is one prefix, else every second item."""
    return data_path if len(data_path) == 1 else data_path[1::2]


def _blend_problems(flag: str, data_path: list[str]) -> list[str]:
    """A --data-path list: weight prefix pairs (or one prefix) of readable indexed datasets."""
    if not data_path:
        return [f"{flag} is empty"]
    prefixes = _blend_prefixes(data_path)
    if len(data_path) > 1 and len(data_path) % 2:
        return [f"{flag}: expected weight prefix pairs, got {len(data_path)} values"]
    if len(data_path) > 1:
        try:
            weights = [float(w) for w in data_path[0::2]]
        except ValueError:
            return [f"{flag}: expected weight prefix pairs, found a non-numeric weight in {data_path[0::2]}"]
        if any(w <= 0 for w in weights):
            return [f"{flag}: weights must be positive, got {weights}"]
    return [f"{flag}: {problem}" for prefix in prefixes if (problem := _indexed_problem(prefix))]


def _indexed_problem(prefix: str, tool: str = "tools/preprocess_data.py") -> str | None:
    """A missing file, or a .bin/.idx pair that does not belong together (reads only the header and
    last entries of the .idx, so it is fast on any size of data)."""
    from megatron_dwm.data.integrity import indexed_problem

    return indexed_problem(prefix, tool)


def output_problems(args: argparse.Namespace) -> list[str]:
    """Output directories that cannot be written; checkpoint intervals without a place to save."""
    problems = []
    for flag in ("save", "tensorboard_dir"):
        path = getattr(args, flag)
        if path is not None and not _writable_dir(path):
            problems.append(f"--{flag.replace('_', '-')} {path}: cannot create or write this directory")
    if args.metrics_file is not None and not _writable_dir(os.path.dirname(os.path.abspath(args.metrics_file))):
        problems.append(f"--metrics-file {args.metrics_file}: its directory cannot be written")
    if args.save_interval is not None and args.save is None:
        problems.append("--save-interval needs --save")
    problems += _load_problems(args.load, args.save)
    if args.ckpt_step is not None and args.load is None:
        problems.append(f"--ckpt-step {args.ckpt_step} needs --load")
    return problems


def _load_problems(load: str | None, save: str | None) -> list[str]:
    """--load must name a directory. One that does not exist is a mistyped path, unless it is --save:
    a self-resuming job's first start, which trains from scratch (as an existing, empty directory does)."""
    if load is None or os.path.isdir(load):
        return []
    if os.path.exists(load):
        return [f"--load {load}: not a directory"]
    if save is not None and os.path.abspath(load) == os.path.abspath(save):
        return []
    return [f"--load {load}: no such directory (to start from scratch, leave out --load; a job that resumes "
            "itself gives --load and --save the same directory, which may not exist yet)"]


def _writable_dir(path: str) -> bool:
    """True if `path` is a writable directory or could be created (its nearest existing parent is)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)
