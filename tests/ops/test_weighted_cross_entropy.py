"""`weighted_cross_entropy` and `per_sample_cross_entropy` on one rank, both kernels, against
torch's cross-entropy + explicit masking and weighting differentiated by autograd."""

import pytest
import torch

from megatron_dwm.ops import per_sample_cross_entropy, weighted_cross_entropy
from tests.ops.cases import (
    DEVICE,
    GRAD_TOLERANCE,
    LOSS_TOLERANCE,
    LossCase,
    autograd_reference,
    random_case,
    relative_error,
    run_per_sample_cross_entropy,
    run_weighted_cross_entropy,
)

KERNELS = ["torch", "fused"]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_autograd_reference(kernel, dtype, seed):
    case = random_case(seed, dtype, vocab=int(torch.randint(2, 300, (), generator=torch.Generator().manual_seed(seed))))
    loss, per_sample, grad = run_weighted_cross_entropy(case, kernel)
    ref_loss, ref_per_sample, ref_grad = autograd_reference(case)
    assert relative_error(per_sample, ref_per_sample) <= LOSS_TOLERANCE, case.describe()
    assert relative_error(loss, ref_loss) <= LOSS_TOLERANCE, case.describe()
    assert relative_error(grad, ref_grad) <= GRAD_TOLERANCE[dtype], case.describe()
    assert grad.dtype == dtype


@pytest.mark.parametrize("kernel", KERNELS)
def test_loss_only_mode_matches_and_leaves_logits_untouched(kernel):
    case = random_case(21, torch.float32, vocab=97)
    per_sample = run_per_sample_cross_entropy(case, kernel)
    assert relative_error(per_sample, autograd_reference(case)[1]) <= LOSS_TOLERANCE


@pytest.mark.parametrize("kernel", KERNELS)
def test_batch_first_logits(kernel):
    case = random_case(31, torch.float32, vocab=50)
    ref_loss, ref_per_sample, ref_grad = autograd_reference(case)
    logits = case.logits.transpose(0, 1).contiguous().requires_grad_()
    out = weighted_cross_entropy(
        logits, case.labels, case.loss_mask, case.weights, normalizer=case.normalizer,
        kernel=kernel, sequence_first=False,
    )
    out.loss.backward()
    assert relative_error(out.per_sample_loss, ref_per_sample) <= LOSS_TOLERANCE
    assert relative_error(logits.grad.transpose(0, 1), ref_grad) <= GRAD_TOLERANCE[torch.float32]


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_samples_contribute_nothing(kernel):
    case = random_case(41, torch.float32, vocab=30, max_batch=1)
    case.loss_mask.zero_()
    loss, per_sample, grad = run_weighted_cross_entropy(case, kernel)
    assert torch.equal(per_sample, torch.zeros_like(per_sample))
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("kernel", KERNELS)
def test_incoming_gradient_and_weight_gradient(kernel):
    case = random_case(51, torch.float32, vocab=40)
    logits = case.logits.clone().requires_grad_()
    weights = case.weights.clone().requires_grad_()
    out = weighted_cross_entropy(logits, case.labels, case.loss_mask, weights, normalizer=case.normalizer, kernel=kernel)
    (3.0 * out.loss).backward()

    ref_logits = case.logits.clone().requires_grad_()
    ref_weights = case.weights.clone().requires_grad_()
    token_loss = torch.nn.functional.cross_entropy(ref_logits.permute(1, 2, 0), case.labels, reduction="none")
    per_sample = (token_loss * case.loss_mask).sum(1) / case.loss_mask.sum(1).clamp_min(1.0)
    (3.0 * (ref_weights * per_sample).sum() / case.normalizer).backward()

    assert relative_error(logits.grad, ref_logits.grad) <= 1e-5
    assert relative_error(weights.grad, ref_weights.grad) <= 1e-5


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradient_is_written_into_the_logits_storage(kernel):
    """The gradient reaching the layer before the loss is the logits' own buffer: no
    logits-sized allocation for it."""
    case = random_case(61, torch.float32, vocab=33)
    hidden = torch.randn(*case.logits.shape[:2], 8, device=DEVICE, requires_grad=True)
    logits = hidden @ torch.randn(8, case.logits.shape[-1], device=DEVICE)
    grad_storage = []
    logits.register_hook(lambda grad: grad_storage.append(grad.untyped_storage().data_ptr()))
    out = weighted_cross_entropy(logits, case.labels, case.loss_mask, case.weights, kernel=kernel)
    (2.0 * out.loss).backward()
    assert grad_storage == [logits.untyped_storage().data_ptr()]


def test_kernel_selection():
    case = random_case(71, torch.float32, vocab=20)
    out = weighted_cross_entropy(case.logits.clone(), case.labels, case.loss_mask, case.weights,
                                 normalizer=case.normalizer, kernel="auto")  # the PyTorch reference on CPU
    assert relative_error(out.loss, autograd_reference(case)[0]) <= LOSS_TOLERANCE
    with pytest.raises(ValueError, match="unknown loss kernel"):
        weighted_cross_entropy(case.logits.clone(), case.labels, case.loss_mask, kernel="cudnn")
    with pytest.raises(ValueError, match="unknown loss kernel"):
        per_sample_cross_entropy(case.logits, case.labels, case.loss_mask, kernel="cudnn")


@pytest.mark.parametrize("kernel", KERNELS)
def test_overwriting_logits_another_op_saved_is_caught_by_autograd(kernel):
    """exp saves its output for backward; overwriting it with the gradient must not pass silently."""
    case = random_case(81, torch.float32, vocab=25)
    hidden = case.logits.clone().requires_grad_()
    logits = torch.exp(hidden)
    out = weighted_cross_entropy(logits, case.labels, case.loss_mask, kernel=kernel)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_grad_call_leaves_logits_untouched(kernel):
    case = random_case(91, torch.float32, vocab=45)
    logits = case.logits.clone().requires_grad_()
    with torch.no_grad():
        out = weighted_cross_entropy(logits, case.labels, case.loss_mask, case.weights, normalizer=case.normalizer, kernel=kernel)
    assert torch.equal(logits, case.logits)
    ref_loss, ref_per_sample, _ = autograd_reference(case)
    assert relative_error(out.loss, ref_loss) <= LOSS_TOLERANCE
    assert relative_error(out.per_sample_loss, ref_per_sample) <= LOSS_TOLERANCE


def test_weight_gradient_alone_leaves_logits_untouched():
    case = random_case(93, torch.float32, vocab=45)
    logits = case.logits.clone()
    weights = case.weights.clone().requires_grad_()
    out = weighted_cross_entropy(logits, case.labels, case.loss_mask, weights, normalizer=case.normalizer, kernel="fused")
    (2.0 * out.loss).backward()
    assert torch.equal(logits, case.logits)
    assert relative_error(weights.grad, 2.0 * autograd_reference(case)[1] / case.normalizer) <= 1e-6


def test_logits_that_are_not_rows_of_one_buffer_are_refused():
    labels, loss_mask = torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5)
    batch_major = torch.randn(3, 5, 16)
    with pytest.raises(ValueError, match="viewable"):
        weighted_cross_entropy(batch_major.transpose(0, 1), labels, loss_mask)  # [s, b, v] strided view
    vocab_strided = torch.randn(16, 5, 3).permute(1, 2, 0)  # [s, b, v]: rows mergeable, vocabulary stride 15
    with pytest.raises(ValueError, match="contiguous along the vocabulary"):
        weighted_cross_entropy(vocab_strided, labels, loss_mask)


OUT_OF_VOCABULARY = (-100, -1, 2**31, 2**40)  # plus V and V + 7 (see below): no rank owns any of them


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_out_of_vocabulary_labels_on_masked_tokens_are_harmless(kernel, dtype):
    """docs/ops.md: labels outside the vocabulary are harmless on masked tokens. The same batch with
    such labels where the mask is 0 gives exactly the losses and gradient of in-vocabulary labels."""
    case = random_case(101, dtype, vocab=37, max_seq=16, max_batch=4)
    vocab = case.logits.shape[-1]
    masked = case.loss_mask == 0
    assert 0 < int(masked.sum()) < masked.numel()
    bad = LossCase(case.seed, case.logits, case.labels.clone(), case.loss_mask, case.weights, case.normalizer)
    choices = torch.tensor(OUT_OF_VOCABULARY + (vocab, vocab + 7), device=DEVICE)
    bad.labels[masked] = choices[torch.arange(int(masked.sum()), device=DEVICE) % len(choices)]
    good = LossCase(case.seed, case.logits, case.labels.clone(), case.loss_mask, case.weights, case.normalizer)
    good.labels[masked] = 0

    expected, actual = run_weighted_cross_entropy(good, kernel), run_weighted_cross_entropy(bad, kernel)
    for name, want, got in zip(("loss", "per-sample loss", "logits gradient"), expected, actual):
        assert torch.isfinite(got).all(), name
        assert torch.equal(got, want), name
    assert torch.equal(run_per_sample_cross_entropy(bad, kernel), run_per_sample_cross_entropy(good, kernel))
    assert relative_error(actual[1], autograd_reference(good)[1]) <= LOSS_TOLERANCE
