"""Hypergradient fidelity: the finite-difference outer step against the exact dL_V/dw from autograd
(double backward through one SGD step), on a tiny language model in float64."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_dwm.dwm.hypergradient import finite_difference_hypergradient

VOCAB, HIDDEN, SEQ, N = 48, 32, 12, 16
LR = 0.5


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.mix = torch.nn.Linear(2 * HIDDEN, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, VOCAB)

    def per_sample_losses(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens[:, :-1])
        previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # a bigram context
        h = torch.tanh(self.mix(torch.cat([x, previous], dim=-1)))
        logits = self.out(h)
        token_losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        return token_losses.mean(dim=1)


class AutogradBilevel:
    """The BilevelModel protocol over TinyLM; `validation_at` fixes where v is taken."""

    def __init__(self, model: TinyLM, train: torch.Tensor, valid: torch.Tensor, v: list[torch.Tensor] | None = None):
        self.model, self.train, self.valid, self.v = model, train, valid, v

    def parameters(self):
        return list(self.model.parameters())

    def validation_gradient(self):
        if self.v is not None:
            return self.v
        loss = self.model.per_sample_losses(self.valid).mean()
        return torch.autograd.grad(loss, self.parameters())

    def preconditioner(self, index: int, gradient):
        return 1.0

    def global_norm(self, tensors):
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))

    def per_sample_losses(self):
        with torch.no_grad():
            return self.model.per_sample_losses(self.train)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyLM().double()
    generator = torch.Generator().manual_seed(seed + 1)
    train = torch.randint(0, VOCAB, (N, SEQ), generator=generator)
    valid = torch.randint(0, VOCAB // 2, (8, SEQ), generator=generator)  # a different distribution
    weights = (torch.rand(N, generator=generator, dtype=torch.float64) + 0.5)
    return model, train, valid, weights / weights.mean()


def _exact_hypergradient(model, train, valid, weights):
    """dL_V(theta - lr grad (1/n) sum w_i l_i) / dw by double backward."""
    w = weights.clone().requires_grad_(True)
    params = list(model.parameters())
    train_loss = (w * model.per_sample_losses(train)).sum() / N
    grads = torch.autograd.grad(train_loss, params, create_graph=True)
    stepped = [p - LR * g for p, g in zip(params, grads)]
    original = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.requires_grad_(False)
    for module_param, new in zip(_param_slots(model), stepped):
        module, name = module_param
        delattr(module, name)
        setattr(module, name, new)
    valid_loss = model.per_sample_losses(valid).mean()
    (exact,) = torch.autograd.grad(valid_loss, w)
    return exact, original, [s.detach() for s in stepped]


def _param_slots(model):
    return [(model.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]) for name, _ in model.named_parameters()]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def _fresh_model_with(params: list[torch.Tensor]) -> TinyLM:
    model = TinyLM().double()
    with torch.no_grad():
        for param, value in zip(model.parameters(), params):
            param.copy_(value)
    return model


# Tolerances of the comparisons below, and what they were measured at (seed 0, float64):
AT_THETA_T_ERROR = 1e-6  # max |g - exact| / max |exact| of the FD at theta_t; measured 4e-8 (r = 1e-3)
POST_STEP_COSINE = 0.999  # cosine of the post-step FD with the exact one; measured 0.99963
POST_STEP_NORM = (0.97, 1.03)  # ||g|| / ||exact||; measured 0.99998


def _error(g: torch.Tensor, exact: torch.Tensor) -> float:
    return float((g.double() - exact).abs().max() / exact.abs().max())


def _fd_at_theta_t(train, valid, theta_t, v) -> torch.Tensor:
    """The exact first-order form: l_i's gradient at theta_t, along d = v."""
    return finite_difference_hypergradient(AutogradBilevel(_fresh_model_with(theta_t), train, valid, v=list(v)),
                                           LR, N, radius=1e-3).hypergradient


def _post_step_fd(train, valid, theta_next, v=None) -> torch.Tensor:
    """The trainer's form: everything at theta_{t+1} (v from the validation batch there unless given)."""
    model = AutogradBilevel(_fresh_model_with(theta_next), train, valid, v=None if v is None else list(v))
    return finite_difference_hypergradient(model, LR, N, radius=1e-2).hypergradient


def _validation_gradient_at(params, train, valid):
    return AutogradBilevel(_fresh_model_with(params), train, valid).validation_gradient()


def test_fd_at_theta_t_matches_exact_hypergradient():
    model, train, valid, weights = _setup()
    exact, theta_t, theta_next = _exact_hypergradient(model, train, valid, weights)
    g = _fd_at_theta_t(train, valid, theta_t, _validation_gradient_at(theta_next, train, valid))
    print(f"FD at theta_t vs exact: relative error {_error(g, exact):.1e}, cosine {_cosine(g, exact):.9f}")
    assert _error(g, exact) <= AT_THETA_T_ERROR


def test_post_step_fd_matches_exact_hypergradient_and_restores_parameters():
    model, train, valid, weights = _setup()
    exact, _, theta_next = _exact_hypergradient(model, train, valid, weights)
    stepped = _fresh_model_with(theta_next)
    before = [p.detach().clone() for p in stepped.parameters()]
    result = finite_difference_hypergradient(AutogradBilevel(stepped, train, valid), LR, N, radius=1e-2)
    g = result.hypergradient
    cosine, ratio = _cosine(g, exact), float(g.double().norm() / exact.norm())
    print(f"post-step FD vs exact: cosine {cosine:.6f}, norm ratio {ratio:.5f}")
    assert cosine >= POST_STEP_COSINE
    assert POST_STEP_NORM[0] <= ratio <= POST_STEP_NORM[1]
    assert all(torch.equal(p, b) for p, b in zip(stepped.parameters(), before))  # bit-exact restore


def test_the_tolerances_reject_nearly_right_hypergradients():
    """Negative controls: what a wrong implementation would return fails the tolerances above.

    - the right values paired with the wrong samples (each sample gets its neighbour's g);
    - the validation gradient taken at the wrong parameters (theta_t, before the LLM's step): a
      small error in direction only, which the at-theta_t comparison must still see, and which
      the post-step cosine also resolves."""
    model, train, valid, weights = _setup()
    exact, theta_t, theta_next = _exact_hypergradient(model, train, valid, weights)
    v_next, v_t = (_validation_gradient_at(p, train, valid) for p in (theta_next, theta_t))

    at_theta_t, post_step = _fd_at_theta_t(train, valid, theta_t, v_next), _post_step_fd(train, valid, theta_next)
    assert _error(at_theta_t.roll(1), exact) > 0.5
    assert _cosine(post_step.roll(1), exact) < 0.5

    stale_at_theta_t = _fd_at_theta_t(train, valid, theta_t, v_t)
    stale_post_step = _post_step_fd(train, valid, theta_next, v=v_t)
    print(f"v at theta_t: relative error {_error(stale_at_theta_t, exact):.1e} (at theta_t), "
          f"cosine {_cosine(stale_post_step, exact):.6f} (post-step)")
    assert _error(stale_at_theta_t, exact) > 1000 * AT_THETA_T_ERROR
    assert _cosine(stale_post_step, exact) < POST_STEP_COSINE


def test_standardized_hypergradient_moves_the_dwm_as_the_raw_one_up_to_scale():
    """--dwm-hypergradient-scaling standardized: mean 0 and unit spread over the batch (a formula in
    float64), and, weights being n softmax(s), the DWM's score gradient of sum_i g_i w_i keeps its
    direction (autograd): only the step's scale changes. A constant g carries no signal: zeros."""
    from megatron_dwm.dwm.hypergradient import standardized

    g = torch.tensor([3e-4, -1e-3, 2e-3, 5e-4, -7e-4], dtype=torch.float64)
    expected = (g - g.mean()) / ((g - g.mean()) ** 2).mean().sqrt()
    scaled = standardized(g)
    assert torch.allclose(scaled, expected, rtol=1e-12, atol=0)
    assert abs(float(scaled.mean())) < 1e-12 and abs(float(scaled.pow(2).mean()) - 1) < 1e-12

    scores = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def score_gradient(hypergradient: torch.Tensor) -> torch.Tensor:
        s = scores.clone().requires_grad_()
        (hypergradient * 5 * torch.softmax(s, dim=0)).sum().backward()
        return s.grad

    raw, normalised = score_gradient(g), score_gradient(scaled)
    cosine = float(torch.dot(raw, normalised) / (raw.norm() * normalised.norm()))
    assert cosine > 1 - 1e-12
    shifted = score_gradient(g + 0.1)  # the shift alone changes nothing
    assert torch.allclose(shifted, raw, rtol=1e-9, atol=1e-15)
    assert torch.equal(standardized(torch.full((4,), 2e-3)), torch.zeros(4))
