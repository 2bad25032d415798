"""A few SGD steps of a tiny language model trained on the weighted loss give the same loss
curve with the fused kernel, the PyTorch reference and torch's cross-entropy + autograd."""

import torch
import torch.nn.functional as F

from megatron_dwm.ops import weighted_cross_entropy
from tests.ops.cases import DEVICE, relative_error

VOCAB, HIDDEN, SEQ, BATCH, STEPS = 48, 16, 12, 3, 4


def _batches():
    """One batch seen every step (so the loss must fall), with new weights each step."""
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    mask = (torch.rand(BATCH, SEQ, generator=gen) < 0.8).float()
    for _ in range(STEPS):
        weights = BATCH * torch.softmax(torch.randn(BATCH, generator=gen), dim=0)
        yield tuple(tensor.to(DEVICE) for tensor in (tokens[:, :-1], tokens[:, 1:], mask, weights))


def _reference_loss(logits, labels, mask, weights):
    token_loss = F.cross_entropy(logits.permute(1, 2, 0), labels, reduction="none")
    per_sample = (token_loss * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return (weights * per_sample).mean()


def _loss_curve(loss_fn) -> torch.Tensor:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, VOCAB)).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    curve = []
    for inputs, labels, mask, weights in _batches():
        logits = model(inputs.t().contiguous())  # [s, b, V], megatron-core's layout
        loss = loss_fn(logits, labels, mask, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    return torch.tensor(curve)


def test_fused_and_reference_kernels_give_the_same_loss_curve():
    reference = _loss_curve(_reference_loss)
    for kernel in ("fused", "torch"):
        curve = _loss_curve(lambda *batch: weighted_cross_entropy(*batch, kernel=kernel).loss)
        assert relative_error(curve, reference) <= 1e-5, (kernel, curve, reference)
    assert reference[-1] < reference[0]  # the model does learn
