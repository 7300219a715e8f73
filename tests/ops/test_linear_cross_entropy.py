"""Fused linear cross-entropy (Triton row kernel in the interpreter, and the chunked PyTorch path) ==
the eager fp32 reference: loss and the gradients of hidden and weight, every reduction."""
import pytest
import torch

from chunksft.ops._backend import resolve_backend
from chunksft.ops.linear_cross_entropy import (linear_cross_entropy, linear_cross_entropy_eager,
                                               linear_cross_entropy_fused)

pytest.importorskip("triton")

VOCAB = 65_601  # > 64k and not a multiple of the 4096-wide vocab block


def problem(n=21, hidden_size=32, vocab=VOCAB, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, hidden_size, generator=g) * 2).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size ** 0.5).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[[2, 5, n - 1]] = -100
    token_weights = torch.rand(n, generator=g) + 0.5
    token_weights[4] = 0.0  # a zero-weight row is skipped like an ignored one
    return hidden, weight, targets, token_weights


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("row_kernel", ["triton", "torch"])
def test_matches_eager_fp32(reduction, row_kernel):
    hidden, weight, targets, token_weights = problem()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    # block=8 rows: several row blocks, the last one partial.
    out = linear_cross_entropy_fused(h1, w1, targets, token_weights=token_weights, reduction=reduction,
                                     row_kernel=row_kernel, block=8)
    ref = linear_cross_entropy_eager(h2, w2, targets, token_weights=token_weights, reduction=reduction)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5
    grad = torch.rand(ref.shape, generator=torch.Generator().manual_seed(3)) if reduction == "none" else torch.tensor(0.7)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    assert rel_err(h1.grad, h2.grad) <= 1e-4
    assert rel_err(w1.grad, w2.grad) <= 1e-4
    assert h1.grad[[2, 4, 5, 20]].abs().sum() == 0, "ignored and zero-weight rows get no gradient"


def test_half_precision_inputs():
    hidden, weight, targets, token_weights = problem(n=9, vocab=5000, dtype=torch.float16)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    out = linear_cross_entropy_fused(h1, w1, targets, token_weights=token_weights, row_kernel="triton")
    ref = linear_cross_entropy_eager(h2, w2, targets, token_weights=token_weights)
    out.backward()
    ref.backward()
    assert h1.grad.dtype == torch.float16 and w1.grad.dtype == torch.float16
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(h1.grad, h2.grad) <= 2e-3 and rel_err(w1.grad, w2.grad) <= 2e-3


def test_mean_is_weighted_mean_over_counted_tokens():
    hidden, weight, targets, token_weights = problem(n=8, vocab=50)
    per_token = linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights, reduction="none")
    counted = (targets != -100).float() * token_weights
    mean = linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights)
    torch.testing.assert_close(mean, per_token.sum() / counted.sum())
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    torch.testing.assert_close(linear_cross_entropy_eager(hidden, weight, targets), plain)


def test_dispatch(monkeypatch):
    hidden, weight, targets, token_weights = problem(n=7, vocab=40)
    ref = linear_cross_entropy_eager(hidden, weight, targets)
    assert resolve_backend("linear_cross_entropy", "auto", hidden.device) in ("cpp", "eager")
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets), ref)
    for backend in ("chunked", "triton"):
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, backend=backend), ref)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        linear_cross_entropy(hidden, weight, targets, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        linear_cross_entropy(hidden, weight, targets, backend="fast")
