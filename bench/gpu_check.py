#!/usr/bin/env python3
"""One command that proves the GPU path and measures it, on one H100/H200, in under 8 minutes.

    python bench/gpu_check.py                  # everything (about 7.5 minutes on one H200)
    python bench/gpu_check.py --quick          # fewer sizes and runs (about 4.5 minutes)
    python bench/gpu_check.py --cpu-smoke      # a rehearsal on CPU, tiny sizes (what `make test` runs)
    python bench/gpu_check.py --parts training # some parts only (see --help)

Parts, each reported even when another fails:
  environment  GPU, driver, CPU, torch, triton, megatron-core, Transformer Engine or the local spec;
  kernel tests tests/ops with the Triton kernels compiled for the GPU (not the interpreter), among
               them the in-loop fused vs torch loss-curve test;
  loss kernel  bench/bench_loss_kernel.py at Llama-2 shapes (vocab 32000, seq 4096), bf16 and fp32:
               time, bandwidth against the copy bandwidth measured in the same run, speed-up over
               megatron-core's path and torch.compile, extra peak memory;
  training     llama2-370m in bf16 (seq 2048, the distributed optimizer) on a corpus of random tokens
               made on the fly, with the DWM off, frozen (LLM phase) and learning (DWM phase) with
               --loss-kernel fused, and off with torch: tokens/s, TFLOP/s, MFU, peak memory, the
               DWM's overhead and the fused kernel's speed-up in the loop.

Writes ``report.md`` (tables to paste into docs/performance.md), ``report.json`` and ``log.txt``
(every sub-process's output) under ``--out`` (default ``gpu_check/``), rewriting the report after
each part, and exits 1 if a correctness check failed or a part could not run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"  # tools/gpu_wheels.sh downloads the missing packages here
WHEEL_SITE = WHEELS / "site"


def use_carried_wheels() -> None:
    """Install the wheels in .whl/ (if any) into .whl/site, without network, and put that directory
    on the path of this process and its sub-processes."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        return
    marker = WHEEL_SITE / ".installed"
    if not marker.exists() or marker.read_text() != "\n".join(wheel.name for wheel in wheels):
        print(f"[gpu_check] installing {len(wheels)} wheels from {WHEELS} into {WHEEL_SITE}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(WHEEL_SITE), *map(str, wheels)], check=True)
        marker.write_text("\n".join(wheel.name for wheel in wheels))
    sys.path.insert(0, str(WHEEL_SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WHEEL_SITE), os.environ.get("PYTHONPATH")]))


if __name__ == "__main__":  # before megatron-core is first imported, below
    use_carried_wheels()
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import run as run_training  # noqa: E402
from bench_train import MEAN_MS, summarize  # noqa: E402
from random_corpus import make_random_corpus  # noqa: E402

from megatron_dwm.analysis.output import write_text_atomically  # noqa: E402
from megatron_dwm.training.metrics import PEAK_MEMORY_METRIC  # noqa: E402

PARTS = ("environment", "kernel tests", "loss kernel", "training")
MS = "elapsed time per iteration (ms)"
TRAIN_MODES = {"off": "DWM off (--dwm-disable)", "frozen": "LLM phase (DWM frozen)",
               "learning": "DWM phase (DWM learning)", "default": "DWM, default schedule",
               "loss": "loss-based weighting (--weighting loss)"}


@dataclass(frozen=True)
class Sizes:
    """What one mode of the check runs."""

    test_selection: tuple[str, ...]
    kernel_args: tuple[tuple[str, ...], ...]  # one bench_loss_kernel.py invocation per entry
    train_flags: tuple[str, ...]
    train_vocab: int
    train_tokens_per_domain: int
    train_valid_examples: int  # the DWM's validation set, also evaluated once at the end of each run
    train_iters: int
    train_warmup: int
    train_runs: tuple[tuple[str, str], ...]  # (mode, --loss-kernel), modes keys of TRAIN_MODES
    learning_flags: tuple[str, ...]


LLAMA_370M = ("--model-preset", "llama2-370m", "--bf16", "--seq-length", "2048", "--micro-batch-size", "4",
              "--global-batch-size", "32", "--use-distributed-optimizer")
# The distributed optimizer shards Adam's state, so the DWM phase takes the gradient direction.
GPU_LEARNING = ("--dwm-fd-direction", "grad")
# The three modes with the fused kernel, and DWM off with the torch kernel (fused against torch).
FOUR_RUNS = (("off", "fused"), ("frozen", "fused"), ("learning", "fused"), ("off", "torch"))
SIZES = {
    "full": Sizes(
        test_selection=("tests/ops",),
        kernel_args=(("--dtype", "bf16", "--micro-batch", "1", "2", "4", "8"),
                     ("--dtype", "fp32", "--micro-batch", "1", "4", "--runs", "30")),
        train_flags=LLAMA_370M, train_vocab=32000, train_tokens_per_domain=4_000_000, train_valid_examples=64,
        train_iters=12, train_warmup=4, train_runs=FOUR_RUNS, learning_flags=GPU_LEARNING),
    "quick": Sizes(
        test_selection=("tests/ops/test_loss_curve.py", "tests/ops/test_weighted_cross_entropy.py"),
        kernel_args=(("--dtype", "bf16", "--micro-batch", "1", "4", "--runs", "20", "--no-compile"),),
        train_flags=LLAMA_370M, train_vocab=32000, train_tokens_per_domain=2_000_000, train_valid_examples=32,
        train_iters=12, train_warmup=4,
        train_runs=(("off", "fused"), ("frozen", "fused"), ("learning", "fused"), ("default", "fused"),
                    ("loss", "fused")),
        learning_flags=GPU_LEARNING),
    "cpu-smoke": Sizes(
        test_selection=("tests/ops/test_loss_curve.py",
                        "tests/ops/test_weighted_cross_entropy.py::test_loss_only_mode_matches_and_leaves_logits_untouched"),
        kernel_args=(("--device", "cpu", "--vocab", "256", "--seq", "16", "--micro-batch", "1", "2",
                      "--runs", "2", "--warmup", "1", "--no-compile"),),
        # Each fused iteration runs the kernel's programs (one per token) in Triton's interpreter,
        # about 6 ms each: 16 tokens and 2 iterations (the second measured) do for a rehearsal.
        train_flags=("--model-preset", "tiny", "--seq-length", "16", "--micro-batch-size", "1",
                     "--global-batch-size", "2", "--dwm-num-layers", "1", "--dwm-hidden-size", "32",
                     "--dwm-seq-length", "16", "--num-workers", "0"),
        train_vocab=256, train_tokens_per_domain=10_000, train_valid_examples=4, train_iters=2, train_warmup=1,
        train_runs=FOUR_RUNS, learning_flags=()),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer sizes and runs (about 4.5 minutes on one H200)")
    mode.add_argument("--cpu-smoke", action="store_true",
                      help="rehearse every part on CPU with tiny sizes (Triton's interpreter); the figures mean nothing")
    parser.add_argument("--out", default="gpu_check", help="directory for report.md, report.json and log.txt")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help=f"parts to run, among: {', '.join(repr(part) for part in PARTS)} (default: all)")
    parser.add_argument("--tests", nargs="+", metavar="PATH", help="pytest selection of the kernel tests part "
                        "(default: tests/ops; --quick: its single-rank files)")
    parser.add_argument("--train-modes", nargs="+", choices=list(TRAIN_MODES),
                        help="training runs of these modes, DWM off, frozen (LLM phase) or learning (DWM phase), "
                             "each with every --train-kernels (default: the three with fused, and off with torch)")
    parser.add_argument("--train-kernels", nargs="+", choices=["fused", "torch"],
                        help="--loss-kernel of the training runs given by --train-modes (default: fused)")
    return parser.parse_args(argv)


class Check:
    """The state of one invocation: mode, sizes, output files and the report built so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.mode = "cpu-smoke" if args.cpu_smoke else "quick" if args.quick else "full"
        self.sizes = SIZES[self.mode]
        if args.tests:
            self.sizes = replace(self.sizes, test_selection=tuple(args.tests))
        if args.train_modes or args.train_kernels:
            runs = [(mode, kernel) for kernel in args.train_kernels or ["fused"]
                    for mode in args.train_modes or list(TRAIN_MODES)]
            self.sizes = replace(self.sizes, train_runs=tuple(runs))
        self.on_gpu = not args.cpu_smoke
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "log.txt"
        self.log.write_text("")
        self.report: dict = {"mode": self.mode, "parts": {}}

    def env(self) -> dict[str, str]:
        """Environment of the sub-processes: the repository importable, the rehearsal on CPU."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        if self.on_gpu:
            env.pop("TRITON_INTERPRET", None)
            env["MEGATRON_DWM_TEST_DEVICE"] = "cuda"
        else:
            env.update(TRITON_INTERPRET="1", MEGATRON_DWM_TEST_DEVICE="cpu", MEGATRON_DWM_FORCE_CPU="1",
                       CUDA_VISIBLE_DEVICES="")
        return env

    def subprocess(self, command: list[str], timeout: float, env: dict | None = None) -> int:
        """Run `command` in the repository, its output appended to log.txt; its exit status."""
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            try:
                return subprocess.run(command, cwd=REPO, env=env or self.env(), stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                log.write(f"\n(stopped after {timeout:.0f} s)\n")
                return 124

    def write_report(self) -> None:
        """report.json and report.md, each replaced atomically."""
        write_text_atomically(self.out / "report.json", json.dumps(self.report, indent=1))
        write_text_atomically(self.out / "report.md", render_markdown(self.report))


# ---------------------------------------------------------------------------------------------
# Parts: each returns its results, with "ok" False where a correctness check failed.
# ---------------------------------------------------------------------------------------------


def environment(check: Check) -> dict:
    import torch

    versions = {}
    for package in ("torch", "triton", "megatron-core", "transformer-engine", "apex", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    te = importlib.util.find_spec("transformer_engine") is not None
    result = {
        "python": platform.python_version(), "machine": platform.machine(), "cpu": _cpu_model(),
        "cpus": os.cpu_count(), "versions": versions, "cuda": torch.version.cuda,
        "transformer layer spec": "Transformer Engine" if te else "megatron-core local spec (Transformer Engine not installed)",
    }
    if check.on_gpu:
        if not torch.cuda.is_available():
            return {**result, "ok": False, "error": "no CUDA GPU is visible to torch"}
        properties = torch.cuda.get_device_properties(0)
        result.update({
            "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
            "gpu memory (GiB)": properties.total_memory / 2**30, "multiprocessors": properties.multi_processor_count,
            "compute capability": f"{properties.major}.{properties.minor}", "driver": _nvidia_smi("driver_version"),
        })
    return {**result, "ok": True}


def kernel_tests(check: Check) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        junit = Path(directory) / "junit.xml"
        status = check.subprocess([sys.executable, "-m", "pytest", *check.sizes.test_selection, "-q", "-p",
                                   "no:cacheprovider", f"--junitxml={junit}"], timeout=200)
        counts = _junit_counts(junit) if junit.exists() else {"passed": 0, "failed": 0, "errors": 1, "skipped": 0,
                                                               "failures": ["pytest wrote no results"]}
    device = "GPU (Triton kernels compiled)" if check.on_gpu else "CPU (Triton's interpreter)"
    ok = status == 0 and counts["failed"] == 0 and counts["errors"] == 0 and counts["passed"] > 0
    return {"selection": list(check.sizes.test_selection), "device": device, "exit status": status, **counts, "ok": ok}


def loss_kernel(check: Check) -> dict:
    runs, ok = [], True
    with tempfile.TemporaryDirectory() as directory:
        for index, arguments in enumerate(check.sizes.kernel_args):
            output = Path(directory) / f"kernel{index}.json"
            status = check.subprocess([sys.executable, str(REPO / "bench" / "bench_loss_kernel.py"), *arguments,
                                       "--json", str(output)], timeout=240)
            if output.exists():
                runs.append(json.loads(output.read_text()))
                ok = ok and runs[-1]["ok"]
            else:
                runs.append({"arguments": list(arguments), "error": f"exit status {status}, no results (see log.txt)"})
                ok = False
    return {"runs": runs, "ok": ok}


def training(check: Check) -> dict:
    sizes = check.sizes
    config = {"nproc": 1, "flags": list(sizes.train_flags)}
    dwm_flags = ["--dwm-stages", "1"]
    modes = {
        TRAIN_MODES["off"]: None,
        TRAIN_MODES["frozen"]: [*dwm_flags, "--dwm-update-iters", "0"],
        TRAIN_MODES["learning"]: [*dwm_flags, "--dwm-update-iters", str(sizes.train_iters),
                                  "--dwm-update-interval", "1", *sizes.learning_flags],
        TRAIN_MODES["default"]: [*sizes.learning_flags],
        TRAIN_MODES["loss"]: ["--weighting", "loss"],
    }
    runs = [(kernel, TRAIN_MODES[mode], modes[TRAIN_MODES[mode]]) for mode, kernel in sizes.train_runs]
    with tempfile.TemporaryDirectory() as directory:
        corpus = make_random_corpus(Path(directory) / "corpus", vocab_size=sizes.train_vocab,
                                    tokens_per_domain=sizes.train_tokens_per_domain,
                                    valid_examples=sizes.train_valid_examples)

        def train(index: int) -> dict:
            kernel, mode, extra = runs[index]
            row = {"mode": mode, "loss kernel": kernel}
            workdir = Path(directory) / f"run{index}"
            workdir.mkdir()
            log = workdir / "log.txt"
            started = time.monotonic()
            try:
                records = run_training(config, sizes.train_iters, str(workdir), extra=extra,
                                       data_flags=[*corpus.flags(), "--loss-kernel", kernel],
                                       log=str(log), timeout=180, env=check.env())
                row.update(summarize(records, sizes.train_warmup))
                row["lm loss (last)"] = records[-1]["lm loss"]
            except subprocess.CalledProcessError as error:
                row["error"] = f"exit status {error.returncode}: {_last_error_line(log)} (see log.txt)"
            except subprocess.TimeoutExpired as error:
                row["error"] = f"stopped after {error.timeout:.0f} s (see log.txt)"
            row["seconds"] = time.monotonic() - started
            with open(check.log, "a") as main_log:
                main_log.write(log.read_text() if log.exists() else "")
            print(f"  {kernel:>5} {mode}: {_short(row)}", flush=True)
            return row

        # On a GPU the runs take turns (they time the device); the CPU rehearsal runs two at a time.
        with ThreadPoolExecutor(max_workers=1 if check.on_gpu else 2) as pool:
            rows = list(pool.map(train, range(len(runs))))
    _add_overheads(rows)
    return {"configuration": " ".join(sizes.train_flags), "iterations": sizes.train_iters,
            "warm-up iterations (left out)": sizes.train_warmup, "rows": rows,
            "ok": all("error" not in row for row in rows)}


PART_FUNCTIONS: dict[str, Callable[[Check], dict]] = {
    "environment": environment, "kernel tests": kernel_tests, "loss kernel": loss_kernel, "training": training,
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_smi(field: str) -> str | None:
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _last_error_line(log: Path) -> str:
    """The last line of a run's output that names an error, torchrun's own report left out."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line.strip() for line in lines if ("Error" in line or "error:" in line)
              and "ChildFailedError" not in line and "elastic" not in line and "error_file" not in line]
    return errors[-1] if errors else "no error line in the output"


def _junit_counts(path: Path) -> dict:
    root = ElementTree.parse(path).getroot()
    cases = root.iter("testcase")
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in cases:
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped", None: "passed"}[outcome]
        counts[key] += 1
        if outcome in ("failure", "error"):
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
    return counts


def _add_overheads(rows: list[dict]) -> None:
    """Per row: ms/iteration against the DWM-off run with the same kernel, and fused against torch."""
    by_key = {(row["mode"], row["loss kernel"]): row for row in rows if MS in row}
    for row in rows:
        baseline = by_key.get((TRAIN_MODES["off"], row["loss kernel"]))
        torch_row = by_key.get((row["mode"], "torch"))
        if MS in row and baseline:
            row["vs DWM off"] = row[MS] / baseline[MS]
        if MEAN_MS in row and baseline and MEAN_MS in baseline:
            row["mean vs DWM off"] = row[MEAN_MS] / baseline[MEAN_MS]
        if MS in row and torch_row and row["loss kernel"] == "fused":
            row["fused speed-up vs torch"] = torch_row[MS] / row[MS]


def _short(row: dict) -> str:
    if "error" in row:
        return row["error"]
    return f"{row.get(MS, float('nan')):.1f} ms/iteration, {row.get('tokens per second', float('nan')):,.0f} tokens/s"


# ---------------------------------------------------------------------------------------------
# The markdown report
# ---------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str], names: dict[str, str] | None = None) -> list[str]:
    """A markdown table of `rows` (first two columns left-aligned, the others right), headed by `names` or the keys."""
    names = names or {}
    lines = ["| " + " | ".join(names.get(column, column) for column in columns) + " |",
             "|" + "|".join(" --- " if index < 2 else " ---: " for index in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return lines


def render_markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']})", ""]
    parts = report["parts"]
    if report.get("total seconds") is not None:
        lines += [f"Total: {report['total seconds']:.0f} s.", ""]
    lines += ["| part | status | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {name} | {part['status']} | {part['seconds']:.0f} |" for name, part in parts.items()]
    environment_part = parts.get("environment")
    if environment_part:
        lines += ["", "## Environment", ""]
        lines += [f"- {key}: {value}" for key, value in environment_part.items()
                  if key not in ("status", "seconds", "ok", "versions")]
        lines += [f"- {package}: {version or 'not installed'}"
                  for package, version in environment_part.get("versions", {}).items()]
    tests = parts.get("kernel tests")
    if tests:
        lines += ["", "## Kernel tests", "",
                  f"{' '.join(tests.get('selection', []))} on {tests.get('device')}: {tests.get('passed', 0)} passed, "
                  f"{tests.get('failed', 0)} failed, {tests.get('errors', 0)} errors, {tests.get('skipped', 0)} skipped."]
        lines += [f"- failed: {name}" for name in tests.get("failures", [])]
    for run in parts.get("loss kernel", {}).get("runs", []):
        lines += ["", "## Loss kernel", ""]
        if "error" in run:
            lines.append(f"{' '.join(run['arguments'])}: {run['error']}")
            continue
        lines += [f"{run['device']}, torch {run['torch']}, {run['dtype']}, vocab {run['vocab']}, seq {run['seq']}, "
                  f"median of {run['runs']} runs; device-to-device copy {run['copy GB/s']:,.0f} GB/s.", ""]
        lines += markdown_table(run["rows"], list(run["rows"][0]))
        lines += ["", "Fused against megatron-core on the same inputs (relative error, max-norm):", ""]
        lines += markdown_table(run["checks"], ["mbs", "per-sample loss", "loss-only", "gradient", "ok"])
    train = parts.get("training")
    if train and "rows" in train:
        lines += ["", "## Training", "",
                  f"`{train['configuration']}`, {train['iterations']} iterations, medians after the first "
                  f"{train['warm-up iterations (left out)']}; random tokens, so the loss means nothing.", ""]
        columns = ["mode", "loss kernel", "tokens per second", MS, MEAN_MS, "throughput per GPU (TFLOP/s/GPU)", "MFU",
                   PEAK_MEMORY_METRIC, "vs DWM off", "mean vs DWM off", "fused speed-up vs torch", "error"]
        lines += markdown_table(train["rows"], columns, {MS: "median ms/iteration", "throughput per GPU (TFLOP/s/GPU)": "TFLOP/s",
                                                 PEAK_MEMORY_METRIC: "peak memory (GiB)"})
    for name, part in parts.items():
        if part.get("error"):
            lines += ["", f"**{name}: {part['error']}**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check = Check(args)
    started = time.monotonic()
    for name in PARTS:
        if name not in args.parts:
            continue
        print(f"[gpu_check] {name} ...", flush=True)
        part_started = time.monotonic()
        try:
            result = PART_FUNCTIONS[name](check)
        except Exception as error:  # a part that breaks is reported; the others still run
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        result["status"] = "ok" if result["ok"] else "FAILED"
        result["seconds"] = time.monotonic() - part_started
        check.report["parts"][name] = result
        check.write_report()
        print(f"[gpu_check] {name}: {result['status']} in {result['seconds']:.0f} s", flush=True)
    check.report["total seconds"] = time.monotonic() - started
    check.write_report()
    failed = [name for name, part in check.report["parts"].items() if not part["ok"]]
    print(f"[gpu_check] done in {check.report['total seconds']:.0f} s; report in {check.out}/report.md"
          + (f"; FAILED: {', '.join(failed)} (see {check.log})" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
