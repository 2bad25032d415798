#!/usr/bin/env python3
"""Peak memory per rank of training steps on CPU: activation recomputation and the distributed optimizer.

Every configuration trains the same model (the ``small`` preset by default, fp32, random tokens)
for a few steps on DP=2 gloo ranks, through this project's training step (megatron-core's
schedule with the weighted loss, its DDP and Adam), with:

  plain                     no recomputation, megatron-core's plain optimizer
  selective                 --recompute-granularity selective (megatron-core's core_attn: the attention scores)
  full                      --recompute-granularity full --recompute-method uniform --recompute-num-layers 1
  distopt                   --use-distributed-optimizer (Adam's state sharded over DP)
  full+distopt              both

The model is built directly (megatron_dwm.model.provider.llama_transformer_config with megatron-core's
recompute_* fields). Each configuration runs in fresh processes (torchrun), so nothing carries over.

Measuring: the CPU allocator has no high-water mark, so each rank runs model building and the
steps under torch.profiler with ``profile_memory=True``, which records every allocation and free
of torch's CPU allocator; the running sum of those events is the memory held by tensors, and its
maximum is the peak (what ``torch.cuda.max_memory_allocated`` is on a GPU). It is exact and
deterministic. The process's resident set, the operating system's view, is reported beside it as a
check: its growth over the same window (``ru_maxrss`` at the end minus the resident set at the
start). The ranks run with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``, 128 KiB), so
a freed tensor's pages go back to the system; with malloc's adaptive threshold they stay in its
heap and the resident set grows by about 2 GiB in every configuration, whatever its peak.

Next to each measurement: what Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models") predict, adapted to this model (fp32, SwiGLU, megatron-core's local spec):
per layer the backward pass keeps 4 bytes x (s b h x 4 (both norms' input and output) + s b q x 4
(Q, K and V, expanded to every head, and the attention's output) + a s^2 b (softmax) + s b f x 4
(SwiGLU's gate and up projections, silu's output, their product)), q = heads x head dim, f = FFN
size. Selective recomputation drops a s^2 b; full keeps only each layer's input, s b h. Either
recomputes one layer at a time in the backward pass, which adds back at most one layer's worth.
The distributed optimizer divides Adam's two fp32 moments (8 bytes a parameter) by DP.

    python bench/bench_memory.py                 # the small preset, seq 512, micro batch 4 (about 2 minutes)
    python bench/bench_memory.py --markdown      # the table for docs/performance.md
    python bench/bench_memory.py --json out.json --preset tiny --seq-length 64 --micro-batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gpu_check import markdown_table  # noqa: E402

DATA_PARALLEL = 2
MIB = 2**20
FP32 = 4  # bytes
FULL = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
# name: (megatron-core's recompute fields, --use-distributed-optimizer)
CONFIGS: dict[str, tuple[dict[str, object], bool]] = {
    "plain": ({}, False),
    "selective": ({"recompute_granularity": "selective"}, False),
    "full": (FULL, False),
    "distopt": ({}, True),
    "full+distopt": (FULL, True),
}


@dataclass(frozen=True)
class Shape:
    """The measured model and batch (the same for every configuration)."""

    preset: str = "small"
    seq_length: int = 512
    micro_batch_size: int = 4
    vocab_size: int = 4096
    steps: int = 2  # Adam's state exists from the first step's end: the second step's backward holds it all

    def describe(self) -> str:
        return (f"{self.preset} preset, fp32, CPU, {DATA_PARALLEL} gloo ranks (DP={DATA_PARALLEL}), seq "
                f"{self.seq_length}, micro batch {self.micro_batch_size}, vocabulary {self.vocab_size}, "
                f"{self.steps} steps")


# ---------------------------------------------------------------------------------------------
# Theory
# ---------------------------------------------------------------------------------------------


def expected(shape: Shape) -> dict[str, dict[str, float]]:
    """Per configuration, the bytes theory predicts per rank: "layer activations" (what the layers keep
    for the backward pass), "adam" (the optimizer's state), and "saving" against plain."""
    from megatron_dwm.model.presets import get_preset

    arch = get_preset(shape.preset)
    s, b, h, f = shape.seq_length, shape.micro_batch_size, arch.hidden_size, arch.ffn_hidden_size
    a, q, layers = arch.num_attention_heads, arch.num_attention_heads * arch.head_dim, arch.num_layers
    softmax = a * s * s * b
    layer = FP32 * (4 * s * b * h + 4 * s * b * q + softmax + 4 * s * b * f)
    kept = {"plain": layers * layer, "selective": layers * (layer - FP32 * softmax), "full": layers * FP32 * s * b * h}
    adam = 2 * FP32 * parameter_count(shape)
    result = {}
    for name, (recompute, distributed) in CONFIGS.items():
        granularity = recompute.get("recompute_granularity", "plain")
        state = adam / DATA_PARALLEL if distributed else adam
        result[name] = {"layer activations": kept[granularity], "adam": state,
                        "saving": kept["plain"] - kept[granularity] + adam - state}
    return result


def parameter_count(shape: Shape) -> int:
    """The model's parameters (untied embeddings, no biases)."""
    from megatron_dwm.model.presets import get_preset

    arch = get_preset(shape.preset)
    h, f, q, kv = arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads * arch.head_dim, arch.kv_heads
    per_layer = h * (q + 2 * kv * arch.head_dim) + q * h + 2 * h * f + f * h + 2 * h
    return arch.num_layers * per_layer + 2 * shape.vocab_size * h + h


# ---------------------------------------------------------------------------------------------
# One rank of one configuration
# ---------------------------------------------------------------------------------------------


def measure_rank(config: str, shape: Shape) -> dict[str, int]:
    """Build and train `config` on this rank (one of DP gloo ranks, their environment set) under the
    memory profiler; this rank's figures in bytes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from megatron_dwm.parallel import initialize_parallel
    from megatron_dwm.platform import init_platform

    platform = init_platform(force_cpu=True, verbose=False)
    context = initialize_parallel(1, 1, seed=1234)
    rss_start = _resident_bytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        static = _train(config, shape, context, platform.device)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rank": torch.distributed.get_rank(), "peak allocated": _peak_allocated(profiler),
            "rss growth": rss_peak - rss_start, **static}


def _train(config: str, shape: Shape, context, device) -> dict[str, int]:
    """Build the model, DDP and optimizer and run `shape.steps` training steps; the bytes of the
    parameters, the gradient buffers and Adam's state on this rank."""
    import torch
    from megatron.core.distributed import finalize_model_grads

    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.model.provider import build_llama_model, llama_transformer_config
    from megatron_dwm.training.build import build_optimizer, wrap_ddp
    from megatron_dwm.training.loss import WeightedLoss
    from megatron_dwm.training.step import run_global_batch

    recompute, distributed = CONFIGS[config]
    arch = get_preset(shape.preset).with_overrides(vocab_size=shape.vocab_size)
    model_config = llama_transformer_config(arch, use_cpu_initialization=True, **recompute)
    model = build_llama_model(arch, model_config, shape.vocab_size, shape.seq_length,
                              pg_collection=context.pg_collection)
    ddp = wrap_ddp(model, use_distributed_optimizer=distributed)
    optimizer = build_optimizer(ddp, lr=1e-4, use_distributed_optimizer=distributed)
    model_config.finalize_model_grads_func = finalize_model_grads
    model_config.grad_scale_func = optimizer.scale_loss
    loss = WeightedLoss("torch", device)
    generator = torch.Generator().manual_seed(torch.distributed.get_rank())
    for _ in range(shape.steps):
        tokens = torch.randint(0, shape.vocab_size, (shape.micro_batch_size, shape.seq_length + 1), generator=generator)
        batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(tokens[:, 1:].shape),
                 "position_ids": torch.arange(shape.seq_length).expand(shape.micro_batch_size, -1),
                 "domain_id": torch.zeros(shape.micro_batch_size, dtype=torch.long)}
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        run_global_batch(ddp, [batch], None, loss)
        optimizer.step()
    states = [state for member in getattr(optimizer, "chained_optimizers", [optimizer])
              for state in member.optimizer.state.values()]
    return {"parameters": sum(p.numel() * p.element_size() for p in ddp.parameters()),
            "gradient buffers": sum(buffer.grad_data.numel() * buffer.grad_data.element_size()
                                    for buffer in ddp.buffers),
            "adam": sum(value.numel() * value.element_size() for state in states for key, value in state.items()
                        if key in ("exp_avg", "exp_avg_sq"))}


def _peak_allocated(profiler) -> int:
    """The highest total of tensor memory the CPU allocator held during the profile (bytes above its start)."""
    events = sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def measure_with_torchrun(config: str, shape: Shape) -> list[dict[str, int]]:
    """`config` on DP fresh processes (torchrun): each rank's figures."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(DATA_PARALLEL), str(Path(__file__).resolve()), "--rank-of", config, "--out", out,
                   "--shape", json.dumps(asdict(shape))]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MEGATRON_DWM_FORCE_CPU": "1",
               "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode:
            raise RuntimeError(f"{config} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return [json.loads((Path(out) / f"rank{rank}.json").read_text()) for rank in range(DATA_PARALLEL)]


def report(shape: Shape, configs: list[str],
           measure: Callable[[str, Shape], list[dict[str, int]]] = measure_with_torchrun) -> dict:
    """Every configuration of `configs` (plain first: the reference), each figure the highest of any
    rank, beside theory's."""
    theory = expected(shape)
    rows = []
    for config in ["plain", *[name for name in configs if name != "plain"]]:
        ranks = measure(config, shape)
        rows.append({"config": config, **{key: max(rank[key] for rank in ranks) for key in ranks[0] if key != "rank"},
                     "expected": theory[config]})
    for row in rows:
        row["saving"] = rows[0]["peak allocated"] - row["peak allocated"]
    return {"shape": asdict(shape), "description": shape.describe(), "parameters": parameter_count(shape),
            "rows": rows}


def render_markdown(result: dict) -> str:
    """The table for docs/performance.md: measured figures beside theory's, in MiB."""
    names = {"peak": "peak allocated", "saving": "saving vs plain", "expected saving": "saving, theory",
             "activations": "peak - parameters, gradients, Adam", "expected activations": "layer activations, theory",
             "adam": "Adam state", "expected adam": "Adam state, theory", "rss growth": "resident set growth"}
    rows = [{"config": row["config"], "peak": row["peak allocated"] / MIB, "saving": row["saving"] / MIB,
             "expected saving": row["expected"]["saving"] / MIB,
             "activations": (row["peak allocated"] - row["parameters"] - row["gradient buffers"] - row["adam"]) / MIB,
             "expected activations": row["expected"]["layer activations"] / MIB, "adam": row["adam"] / MIB,
             "expected adam": row["expected"]["adam"] / MIB, "rss growth": row["rss growth"] / MIB}
            for row in result["rows"]]
    title = f"{result['description']}; {result['parameters']:,} parameters; per rank (the higher of the two), MiB:"
    return "\n".join([title, "", *markdown_table(rows, ["config", *names], {"config": "configuration", **names})])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Shape()
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--seq-length", type=int, default=defaults.seq_length)
    parser.add_argument("--micro-batch-size", type=int, default=defaults.micro_batch_size)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="a multiple of 128 (no padding)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--markdown", action="store_true", help="print the table for docs/performance.md")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    parser.add_argument("--rank-of", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # one rank (torchrun)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=json.loads, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rank_of:  # one rank of measure_with_torchrun
        record = measure_rank(args.rank_of, Shape(**args.shape))
        (args.out / f"rank{record['rank']}.json").write_text(json.dumps(record))
        return 0
    if args.vocab_size % 128:
        sys.exit("--vocab-size must be a multiple of 128 (the model's padding)")
    shape = Shape(args.preset, args.seq_length, args.micro_batch_size, args.vocab_size, args.steps)
    result = report(shape, args.configs)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(render_markdown(result) if args.markdown else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
