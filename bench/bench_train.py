#!/usr/bin/env python3
"""Training throughput of pretrain_dwm.py: tokens/s, samples/s, TFLOP/s per device and MFU.

Each configuration is a real run (torchrun, the full loop on the demo corpus) of ``--iters``
iterations; the figures are medians over the iterations after ``--warmup``, read from the run's
metrics.jsonl. Run ``make demo-data`` first.

    python bench/bench_train.py --config cpu-tiny            # CPU: tiny preset, 2 gloo ranks
    python bench/bench_train.py --config gpu-370m            # one GPU: llama2-370m, bf16
    python bench/bench_train.py --config cpu-tiny --markdown # a row for docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_dwm.training.metrics import PEAK_MEMORY_METRIC, read_metrics  # noqa: E402

DEMO = os.path.join(REPO, "demo_data")
CONFIGS = {
    "cpu-tiny": dict(
        nproc=2, micro_batch=4, global_batch=16, description="tiny preset, fp32, CPU, 2 gloo ranks (DP=2), seq 128, global batch 16",
        flags=["--model-preset", "tiny", "--seq-length", "128", "--micro-batch-size", "4",
               "--global-batch-size", "16"]),
    "cpu-tiny-1rank": dict(
        nproc=1, micro_batch=4, global_batch=16, description="tiny preset, fp32, CPU, 1 training rank, seq 128, global batch 16",
        flags=["--model-preset", "tiny", "--seq-length", "128", "--micro-batch-size", "4",
               "--global-batch-size", "16"]),
    "gpu-370m": dict(
        nproc=1, micro_batch=4, global_batch=32, description="llama2-370m, bf16, 1 GPU, seq 2048, micro batch 4, global batch 32",
        flags=["--model-preset", "llama2-370m", "--bf16", "--seq-length", "2048", "--micro-batch-size", "4",
               "--global-batch-size", "32"]),
}
REPORTED = ("tokens per second", "samples per second", "elapsed time per iteration (ms)",
            "throughput per GPU (TFLOP/s/GPU)", "MFU")
# With an outer step every few iterations the median is a step without one; the mean counts them.
MEAN_MS = "mean ms/iteration"


def demo_data_flags() -> list[str]:
    """The data and tokenizer flags of the demo corpus (`make demo-data`)."""
    with open(os.path.join(DEMO, "indexed", "data_path.txt")) as file:
        data_path = file.read().split()
    return ["--data-path", *data_path, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", os.path.join(DEMO, "tokenizers", "demo-spm.model")]


def run(config: dict, iters: int, workdir: str, extra: list[str] | None = None, extra_ranks: int = 0,
        data_flags: list[str] | None = None, log: str | None = None, timeout: float | None = None,
        env: dict[str, str] | None = None) -> list[dict]:
    """One run of `config` (plus `extra` flags, which replace --dwm-disable, and `extra_ranks` processes
    beyond the training ranks, for --dwm-ranks) on the demo corpus or `data_flags`; its
    per-iteration records. With `log`, the run's output is appended to that file; `env` replaces
    this process's environment."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(config["nproc"] + extra_ranks),
        os.path.join(REPO, "pretrain_dwm.py"), *config["flags"], "--train-iters", str(iters), "--lr", "3e-4",
        "--log-interval", "1", "--eval-interval", str(10 * iters), "--eval-iters", "0",
        *(extra if extra is not None else ["--dwm-disable"]),
        *(data_flags if data_flags is not None else demo_data_flags()), "--metrics-file", metrics,
    ]
    env = dict(env or os.environ)
    env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore")
    if log is None:
        subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, timeout=timeout)
    else:
        with open(log, "a") as output:
            output.write(f"\n$ {' '.join(command)}\n")
            output.flush()
            subprocess.run(command, cwd=REPO, env=env, check=True, stdout=output, stderr=subprocess.STDOUT,
                           timeout=timeout)
    return [record for record in read_metrics(metrics) if "tokens per second" in record]


def summarize(records: list[dict], warmup: int) -> dict[str, float]:
    """Medians over the iterations after `warmup`, and the mean time per iteration (MEAN_MS); the peak
    memory is the run's highest."""
    measured = [record for record in records if record["iteration"] > warmup]
    summary = {key: statistics.median(record[key] for record in measured)
               for key in REPORTED if all(key in record for record in measured)}
    if "elapsed time per iteration (ms)" in summary:
        summary[MEAN_MS] = statistics.fmean(record["elapsed time per iteration (ms)"] for record in measured)
    if any(PEAK_MEMORY_METRIC in record for record in records):
        summary[PEAK_MEMORY_METRIC] = max(record.get(PEAK_MEMORY_METRIC, 0.0) for record in records)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu-tiny")
    parser.add_argument("--iters", type=int, default=30, help="iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="first iterations left out of the medians")
    parser.add_argument("--markdown", action="store_true", help="print a table row for docs/performance.md")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(DEMO, "indexed", "data_path.txt")):
        sys.exit("run `make demo-data` first")
    config = CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as workdir:
        result = summarize(run(config, args.iters, workdir), args.warmup)
    device = "CPU" if args.config.startswith("cpu") else _gpu_name()
    if args.markdown:
        print("| configuration | device | tokens/s | samples/s | ms/iteration | TFLOP/s per device | MFU |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        mfu = f"{100 * result['MFU']:.1f}%" if "MFU" in result else "n/a"
        print(f"| {config['description']} | {device} | {result['tokens per second']:,.0f} | "
              f"{result['samples per second']:.1f} | {result['elapsed time per iteration (ms)']:.1f} | "
              f"{result['throughput per GPU (TFLOP/s/GPU)']:.4g} | {mfu} |")
    else:
        print(json.dumps({"config": args.config, "device": device, "machine": platform.machine(),
                          "cpus": os.cpu_count(), **result}, indent=2))


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


if __name__ == "__main__":
    main()
