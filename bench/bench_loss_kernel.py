"""Benchmark the fused weighted cross-entropy kernel on one GPU (TP=1, Llama-2 shapes).

Compares, per micro-batch size, forward + backward down to the logits' gradient of
  fused     megatron_dwm.ops.weighted_cross_entropy(kernel="fused")
  mcore     megatron-core's vocab_parallel_cross_entropy, then masking and weighting in torch
  compiled  the same as mcore under torch.compile
and the loss-only pass (per-sample losses, no gradient) of fused and mcore. Times are medians of
CUDA-event timings; the logits are restored from a pristine copy (untimed) before every run,
since all three overwrite them. Bandwidth is measured against the floor of reading the logits
once and writing the gradient once (loss-only: reading once), and compared with the measured
device-to-device copy bandwidth. "extra peak" is the peak memory above what was allocated before
the call, in units of the logits' size.

    python bench/bench_loss_kernel.py                      # vocab 32000, seq 4096, mbs 1 2 4 8, bf16
    python bench/bench_loss_kernel.py --micro-batch 1 --dtype fp32 --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_dwm.ops import per_sample_cross_entropy, weighted_cross_entropy  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEVICE = torch.device("cuda")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    return parser.parse_args()


def init_single_rank_group(backend: str = "nccl") -> dist.ProcessGroup:
    """A one-rank group: the tensor-parallel group megatron-core's cross-entropy needs."""
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.group.WORLD


def median_ms(run: Callable[[], object], restore: Callable[[], None], runs: int, warmup: int) -> float:
    """Median CUDA-event time of `run`, with the untimed `restore` before each call."""
    times = []
    for index in range(warmup + runs):
        restore()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def extra_peak_bytes(run: Callable[[], object], restore: Callable[[], None]) -> int:
    """Peak memory during `run` above what was allocated before it (its results kept alive)."""
    restore()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run()  # noqa: F841 - held so its outputs count
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def copy_bandwidth(nbytes: int, runs: int, warmup: int) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), lambda: None, runs, warmup)
    return 2 * nbytes / ms / 1e6


def mcore_loss(logits, labels, loss_mask, weights, normalizer, tp_group):
    """megatron-core's vocab-parallel cross-entropy, then explicit masking and weighting."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    token_loss = vocab_parallel_cross_entropy(logits, labels.t().contiguous(), tp_group=tp_group).t()
    per_sample = (token_loss * loss_mask).sum(1) / loss_mask.sum(1).clamp_min(1.0)
    return (weights * per_sample).sum() / normalizer, per_sample.detach()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def bench_micro_batch(args, batch: int, tp_group, copy_gbps: float) -> list[dict]:
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=DEVICE).manual_seed(batch)
    pristine = (4 * torch.randn(args.seq, batch, args.vocab, device=DEVICE, generator=gen)).to(dtype)
    labels = torch.randint(0, args.vocab, (batch, args.seq), device=DEVICE, generator=gen)
    loss_mask = (torch.rand(batch, args.seq, device=DEVICE, generator=gen) < 0.9).float()
    weights = torch.rand(batch, device=DEVICE, generator=gen) * 2
    normalizer = float(batch)
    logits = torch.empty_like(pristine).requires_grad_()
    logits_bytes = pristine.numel() * pristine.element_size()

    def restore() -> None:
        with torch.no_grad():
            logits.copy_(pristine)

    def fused():
        out = weighted_cross_entropy(logits, labels, loss_mask, weights, normalizer=normalizer, kernel="fused")
        return torch.autograd.grad(out.loss, logits)[0], out.per_sample_loss

    def mcore():
        loss, per_sample = mcore_loss(logits, labels, loss_mask, weights, normalizer, tp_group)
        return torch.autograd.grad(loss, logits)[0], per_sample

    compiled_loss = torch.compile(mcore_loss)

    def compiled():
        loss, per_sample = compiled_loss(logits, labels, loss_mask, weights, normalizer, tp_group)
        return torch.autograd.grad(loss, logits)[0], per_sample

    def fused_loss_only():
        return per_sample_cross_entropy(logits.detach(), labels, loss_mask, kernel="fused")

    @torch.no_grad()
    def mcore_loss_only():
        return mcore_loss(logits.detach(), labels, loss_mask, weights, normalizer, tp_group)[1]

    restore()
    expected_grad, expected_per_sample = mcore()
    restore()
    grad, per_sample = fused()
    check = (relative_error(per_sample, expected_per_sample), relative_error(grad, expected_grad))
    del expected_grad, grad

    methods = [("fused", fused, 2), ("mcore", mcore, 2)]
    if not args.no_compile:
        methods.append(("compiled", compiled, 2))
    methods += [("fused loss-only", fused_loss_only, 1), ("mcore loss-only", mcore_loss_only, 1)]
    rows = []
    for name, run, passes in methods:
        ms = median_ms(run, restore, args.runs, args.warmup)
        gbps = passes * logits_bytes / ms / 1e6
        rows.append({
            "mbs": batch, "method": name, "ms": ms, "GB/s": gbps, "% copy bw": 100 * gbps / copy_gbps,
            "extra peak (x logits)": extra_peak_bytes(run, restore) / logits_bytes,
        })
    base = {row["method"]: row["ms"] for row in rows}
    for row in rows:
        row["speed-up vs mcore"] = base["mcore loss-only" if "loss-only" in row["method"] else "mcore"] / row["ms"]
    print(f"mbs={batch}: fused vs mcore relative error per-sample {check[0]:.1e}, gradient {check[1]:.1e}")
    return rows


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{value:.3g}" if isinstance(value, float) else str(value) for value in row.values()]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_loss_kernel.py needs a CUDA GPU and none is available; nothing was measured.")
    tp_group = init_single_rank_group()
    logits_bytes = args.seq * max(args.micro_batch) * args.vocab * DTYPES[args.dtype].itemsize
    copy_gbps = copy_bandwidth(logits_bytes, args.runs, args.warmup)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  vocab {args.vocab}  seq {args.seq}  "
          f"{args.dtype}  device-to-device copy {copy_gbps:.0f} GB/s")
    rows = [row for batch in args.micro_batch for row in bench_micro_batch(args, batch, tp_group, copy_gbps)]
    print_table(rows)
    fused = [row for row in rows if row["method"] == "fused"]
    print("targets (fused, forward + backward): >= 80% of copy bandwidth, >= 1.5x mcore")
    for row in fused:
        print(f"  mbs={row['mbs']}: {row['% copy bw']:.0f}% of copy bandwidth, {row['speed-up vs mcore']:.2f}x mcore")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
