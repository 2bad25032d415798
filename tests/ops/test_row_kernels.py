"""The Triton row kernels against the PyTorch reference rows and torch's own softmax, tile by
tile: shard widths below, at and across the block size, ragged last tiles, targets outside the
shard, every output poisoned with NaN before the call."""

import pytest
import torch

from megatron_dwm.ops import torch_rows
from tests.ops.cases import DEVICE, GRAD_TOLERANCE, relative_error

triton_rows = pytest.importorskip("megatron_dwm.ops.triton_rows")

# (shard width, block size): one tile, ragged single tile, exact tiles, ragged tail, width 1.
SHAPES = [(16, 16), (37, 64), (128, 32), (301, 64), (1, 16), (200, None)]
DTYPES = [torch.float32, torch.bfloat16]


def _rows_case(seed: int, n_cols: int, dtype: torch.dtype, rows: int = 12):
    gen = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(rows, n_cols, generator=gen)).to(dtype)
    targets = torch.randint(-3, n_cols + 3, (rows,), generator=gen)  # some rows owned elsewhere
    coeff = torch.rand(rows, generator=gen)
    coeff[0] = 0.0  # a masked token
    return logits.to(DEVICE), targets.to(DEVICE), coeff.to(DEVICE)


def _nan(rows: int) -> torch.Tensor:
    return torch.full((rows,), float("nan"), device=DEVICE)


def _expected_grad(logits, targets, coeff):
    """coeff * (softmax - onehot) from torch.softmax, in the logits' dtype."""
    grad = torch.softmax(logits.float(), dim=1)
    owned = (targets >= 0) & (targets < logits.shape[1])
    grad[owned, targets[owned]] -= 1.0
    return (grad * coeff[:, None]).to(logits.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_cols,block", SHAPES)
def test_row_stats_match_reference_and_logsumexp(n_cols, block, dtype):
    logits, targets, _ = _rows_case(n_cols * 7 + 1, n_cols, dtype)
    fused = [_nan(len(targets)) for _ in range(3)]
    reference = [_nan(len(targets)) for _ in range(3)]
    triton_rows.row_stats(logits, targets, *fused, block_size=block)
    torch_rows.row_stats(logits, targets, *reference)
    for got, expected in zip(fused, reference):
        assert relative_error(got, expected) <= 1e-6
    row_max, sum_exp, target_logit = fused
    assert relative_error(row_max + sum_exp.log(), torch.logsumexp(logits.float(), dim=1)) <= 1e-6
    owned = (targets >= 0) & (targets < n_cols)
    assert torch.equal(target_logit[~owned], torch.zeros_like(target_logit[~owned]))
    assert torch.equal(target_logit[owned], logits.float()[owned, targets[owned]])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_cols,block", SHAPES)
def test_write_grad_matches_softmax_gradient(n_cols, block, dtype):
    logits, targets, coeff = _rows_case(n_cols * 7 + 2, n_cols, dtype)
    log_sum_exp = torch.logsumexp(logits.float(), dim=1)
    expected = _expected_grad(logits, targets, coeff)
    fused, reference = logits.clone(), logits.clone()
    triton_rows.write_grad(fused, targets, log_sum_exp, coeff, block_size=block)
    torch_rows.write_grad(reference, targets, log_sum_exp, coeff)
    assert relative_error(fused, expected) <= GRAD_TOLERANCE[dtype]
    assert relative_error(reference, expected) <= GRAD_TOLERANCE[dtype]
    assert torch.equal(fused[0], torch.zeros_like(fused[0]))  # coeff 0: row fully overwritten


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_cols,block", SHAPES)
def test_single_pass_loss_and_grad(n_cols, block, dtype):
    logits, targets, coeff = _rows_case(n_cols * 7 + 3, n_cols, dtype)
    targets = targets.clamp(0, n_cols - 1)  # whole vocabulary on one rank
    fused, token_loss = logits.clone(), _nan(len(targets))
    triton_rows.loss_and_grad(fused, targets, coeff, token_loss, block_size=block)
    expected_loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    assert relative_error(token_loss, expected_loss) <= 1e-6
    assert relative_error(fused, _expected_grad(logits, targets, coeff)) <= GRAD_TOLERANCE[dtype]


def test_rows_with_a_stride_wider_than_the_shard():
    """Rows of a wider buffer (a column slice) are read and written in place, the rest untouched."""
    logits, targets, coeff = _rows_case(5, 40, torch.float32)
    buffer = torch.randn(logits.shape[0], 64, device=DEVICE)
    buffer[:, :40] = logits
    untouched = buffer[:, 40:].clone()
    token_loss = _nan(len(targets))
    triton_rows.loss_and_grad(buffer[:, :40], targets.clamp(0, 39), coeff, token_loss, block_size=16)
    assert relative_error(buffer[:, :40], _expected_grad(logits, targets.clamp(0, 39), coeff)) <= 1e-5
    assert torch.equal(buffer[:, 40:], untouched)
