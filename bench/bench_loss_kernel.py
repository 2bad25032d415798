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
    python bench/bench_loss_kernel.py --json kernel.json   # the table's rows and the checks, as JSON

``--device cpu`` (tiny sizes, the kernel in Triton's interpreter, host-clock timings, no memory
figures) is the rehearsal ``bench/gpu_check.py --cpu-smoke`` runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_dwm.ops import per_sample_cross_entropy, weighted_cross_entropy  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEVICE = torch.device("cuda")  # --device cpu replaces it (rehearsal only)
# fused against megatron-core on the same inputs: the kernel tests' tolerances (tests/ops/cases.py).
TOLERANCE = {"bf16": {"per-sample loss": 1e-5, "gradient": 1e-2}, "fp32": {"per-sample loss": 1e-5, "gradient": 1e-5}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a rehearsal of this script (tiny sizes, Triton's interpreter); its times mean nothing")
    parser.add_argument("--json", metavar="FILE", help="also write the rows, checks and device to FILE")
    return parser.parse_args()


def init_single_rank_group(backend: str = "nccl") -> dist.ProcessGroup:
    """A one-rank group: the tensor-parallel group megatron-core's cross-entropy needs."""
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.group.WORLD


def elapsed_ms(run: Callable[[], object]) -> float:
    """One call of `run` timed with CUDA events (on the CPU: the host clock)."""
    if DEVICE.type == "cpu":
        start = time.perf_counter()
        run()
        return 1000 * (time.perf_counter() - start)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def median_ms(run: Callable[[], object], restore: Callable[[], None], runs: int, warmup: int) -> float:
    """Median time of `run`, with the untimed `restore` before each call."""
    times = []
    for index in range(warmup + runs):
        restore()
        ms = elapsed_ms(run)
        if index >= warmup:
            times.append(ms)
    return statistics.median(times)


def extra_peak_bytes(run: Callable[[], object], restore: Callable[[], None]) -> int | None:
    """Peak memory during `run` above what was allocated before it (its results kept alive);
    None on the CPU."""
    if DEVICE.type == "cpu":
        return None
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


def bench_micro_batch(args, batch: int, tp_group, copy_gbps: float) -> tuple[list[dict], dict]:
    """The table's rows for one micro-batch size, and the check of fused against megatron-core."""
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

    # Each gradient may share the logits' storage (the fused kernel writes it there; in fp32 so may
    # megatron-core): copy it out before the logits are restored for the next pass.
    restore()
    expected_grad, expected_per_sample = (tensor.clone() for tensor in mcore())
    restore()
    grad, per_sample = (tensor.clone() for tensor in fused())
    restore()
    check = {"mbs": batch, "per-sample loss": relative_error(per_sample, expected_per_sample),
             "gradient": relative_error(grad, expected_grad),
             "loss-only": relative_error(fused_loss_only(), expected_per_sample)}
    check["ok"] = all(check[key] <= bound for key, bound in TOLERANCE[args.dtype].items()) and (
        check["loss-only"] <= TOLERANCE[args.dtype]["per-sample loss"])
    del expected_grad, grad

    methods = [("fused", fused, 2), ("mcore", mcore, 2)]
    if not args.no_compile and _compiles(compiled, restore):
        methods.append(("compiled", compiled, 2))
    methods += [("fused loss-only", fused_loss_only, 1), ("mcore loss-only", mcore_loss_only, 1)]
    rows = []
    for name, run, passes in methods:
        ms = median_ms(run, restore, args.runs, args.warmup)
        gbps = passes * logits_bytes / ms / 1e6
        rows.append({
            "mbs": batch, "method": name, "ms": ms, "GB/s": gbps, "% copy bw": 100 * gbps / copy_gbps,
            "extra peak (x logits)": _ratio(extra_peak_bytes(run, restore), logits_bytes),
        })
    base = {row["method"]: row["ms"] for row in rows}
    for row in rows:
        row["speed-up vs mcore"] = base["mcore loss-only" if "loss-only" in row["method"] else "mcore"] / row["ms"]
        row["speed-up vs compiled"] = base["compiled"] / row["ms"] if row["method"] == "fused" and "compiled" in base else None
    print(f"mbs={batch}: fused vs mcore relative error per-sample {check['per-sample loss']:.1e}, gradient "
          f"{check['gradient']:.1e}, loss-only {check['loss-only']:.1e}: {'ok' if check['ok'] else 'FAILED'}")
    return rows, check


def _compiles(compiled: Callable[[], object], restore: Callable[[], None]) -> bool:
    """Whether torch.compile handles the megatron-core path here (a baseline, so its failure is
    reported and the other measurements go on)."""
    try:
        restore()
        compiled()
        return True
    except Exception as error:  # noqa: BLE001 - any compiler error only drops this baseline
        print(f"torch.compile baseline left out: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
        return False


def _ratio(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{value:.3g}" if isinstance(value, float) else "-" if value is None else str(value)
                 for value in row.values()]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    global DEVICE
    args = parse_args()
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_loss_kernel.py needs a CUDA GPU and none is available; nothing was measured.")
    tp_group = init_single_rank_group("nccl" if DEVICE.type == "cuda" else "gloo")
    logits_bytes = args.seq * max(args.micro_batch) * args.vocab * DTYPES[args.dtype].itemsize
    copy_gbps = copy_bandwidth(logits_bytes, args.runs, args.warmup)
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU (rehearsal)"
    print(f"{device_name}  torch {torch.__version__}  vocab {args.vocab}  seq {args.seq}  "
          f"{args.dtype}  device-to-device copy {copy_gbps:.0f} GB/s")
    rows, checks = [], []
    for batch in args.micro_batch:
        batch_rows, check = bench_micro_batch(args, batch, tp_group, copy_gbps)
        rows += batch_rows
        checks.append(check)
    print_table(rows)
    fused = [row for row in rows if row["method"] == "fused"]
    print("targets (fused, forward + backward): >= 80% of copy bandwidth, >= 1.5x mcore")
    for row in fused:
        print(f"  mbs={row['mbs']}: {row['% copy bw']:.0f}% of copy bandwidth, {row['speed-up vs mcore']:.2f}x mcore")
    dist.destroy_process_group()
    ok = all(check["ok"] for check in checks)
    if args.json:
        report = {"device": device_name, "torch": torch.__version__, "dtype": args.dtype, "vocab": args.vocab,
                  "seq": args.seq, "runs": args.runs, "copy GB/s": copy_gbps, "rows": rows, "checks": checks, "ok": ok}
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not ok:
        sys.exit("the fused kernel disagrees with megatron-core beyond the tests' tolerance (see the lines above)")


if __name__ == "__main__":
    main()
