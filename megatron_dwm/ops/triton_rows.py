"""Triton row kernels: same contract as `torch_rows`, one program per row.

Each program walks its row in tiles of `BLOCK` columns with fp32 accumulation: an online softmax
pass reads the row once for the max, the sum of exponentials and the target logit; a second pass
(for the gradient) reads it again, normally from L2, and overwrites it with the gradient. Row
offsets are int64, so `rows * columns` may exceed 2**31.

Importing this module needs triton. With `TRITON_INTERPRET=1` set before the import the kernels
run on CPU tensors through Triton's interpreter (slow; for tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_SIZE = 4096


@triton.jit
def _online_row_stats(row_ptr, n_cols, target, BLOCK: tl.constexpr):
    """(max, sum of exp(x - max), target logit or 0) of one row, in fp32."""
    cols = tl.arange(0, BLOCK)
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, n_cols, BLOCK):
        in_row = start + cols < n_cols
        x = tl.load(row_ptr + start + cols, mask=in_row, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    owned = (target >= 0) & (target < n_cols)
    target_logit = tl.load(row_ptr + target, mask=owned, other=0.0).to(tl.float32)
    return running_max, running_sum, target_logit


@triton.jit
def _overwrite_row_with_grad(row_ptr, n_cols, target, log_sum_exp, coeff, BLOCK: tl.constexpr):
    """row <- coeff * (softmax(row) - onehot(target)), tile by tile, in the row's dtype."""
    cols = tl.arange(0, BLOCK)
    for start in range(0, n_cols, BLOCK):
        in_row = start + cols < n_cols
        x = tl.load(row_ptr + start + cols, mask=in_row, other=0.0).to(tl.float32)
        grad = tl.exp(x - log_sum_exp)
        grad = tl.where(start + cols == target, grad - 1.0, grad)
        tl.store(row_ptr + start + cols, (grad * coeff).to(row_ptr.dtype.element_ty), mask=in_row)


@triton.jit
def _row_stats_kernel(
    logits_ptr, targets_ptr, row_max_ptr, sum_exp_ptr, target_logit_ptr,
    n_cols, row_stride, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row)
    row_max, sum_exp, target_logit = _online_row_stats(logits_ptr + row * row_stride, n_cols, target, BLOCK)
    tl.store(row_max_ptr + row, row_max)
    tl.store(sum_exp_ptr + row, sum_exp)
    tl.store(target_logit_ptr + row, target_logit)


@triton.jit
def _write_grad_kernel(
    logits_ptr, targets_ptr, log_sum_exp_ptr, coeff_ptr,
    n_cols, row_stride, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row)
    log_sum_exp = tl.load(log_sum_exp_ptr + row)
    coeff = tl.load(coeff_ptr + row)
    _overwrite_row_with_grad(logits_ptr + row * row_stride, n_cols, target, log_sum_exp, coeff, BLOCK)


@triton.jit
def _loss_and_grad_kernel(
    logits_ptr, targets_ptr, coeff_ptr, token_loss_ptr,
    n_cols, row_stride, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    row_max, sum_exp, target_logit = _online_row_stats(row_ptr, n_cols, target, BLOCK)
    log_sum_exp = row_max + tl.log(sum_exp)
    tl.store(token_loss_ptr + row, log_sum_exp - target_logit)
    coeff = tl.load(coeff_ptr + row)
    _overwrite_row_with_grad(row_ptr, n_cols, target, log_sum_exp, coeff, BLOCK)


INTERPRETED = type(_row_stats_kernel).__name__ == "InterpretedFunction"


def _launch_config(n_cols: int, block_size: int | None) -> dict:
    block = block_size or min(triton.next_power_of_2(n_cols), MAX_BLOCK_SIZE)
    num_warps = 16 if block >= 8192 else 8 if block >= 2048 else 4
    return {"BLOCK": block, "num_warps": num_warps}


def _launch(kernel, logits2d: torch.Tensor, per_row: tuple, block_size: int | None) -> None:
    """One program per row of `logits2d`; `per_row` are the kernel's per-row tensor arguments."""
    if logits2d.dim() != 2 or logits2d.stride(1) != 1:
        raise ValueError("row kernels need 2-D logits with contiguous rows")
    if logits2d.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the fused loss kernel got CPU tensors but Triton is not in interpreter mode: "
            "set TRITON_INTERPRET=1 before megatron_dwm.ops first uses the kernel, or use kernel='torch'"
        )
    rows, n_cols = logits2d.shape
    if rows:
        kernel[(rows,)](logits2d, *per_row, n_cols, logits2d.stride(0), **_launch_config(n_cols, block_size))


def row_stats(
    logits2d: torch.Tensor,
    targets: torch.Tensor,
    row_max: torch.Tensor,
    sum_exp: torch.Tensor,
    target_logit: torch.Tensor,
    block_size: int | None = None,
) -> None:
    """Per row: max, `sum(exp(x - max))` and the target logit (0 where not owned), into the outputs."""
    _launch(_row_stats_kernel, logits2d, (targets, row_max, sum_exp, target_logit), block_size)


def write_grad(
    logits2d: torch.Tensor,
    targets: torch.Tensor,
    log_sum_exp: torch.Tensor,
    coeff: torch.Tensor,
    block_size: int | None = None,
) -> None:
    """Overwrite every row with `coeff[row] * (softmax(row) - onehot(target))`."""
    _launch(_write_grad_kernel, logits2d, (targets, log_sum_exp, coeff), block_size)


def loss_and_grad(
    logits2d: torch.Tensor,
    targets: torch.Tensor,
    coeff: torch.Tensor,
    token_loss: torch.Tensor,
    block_size: int | None = None,
) -> None:
    """Unsharded vocabulary: per-row cross-entropy into `token_loss`, then the gradient in place."""
    _launch(_loss_and_grad_kernel, logits2d, (targets, coeff, token_loss), block_size)
