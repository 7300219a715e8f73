"""C++ chunk attention (csrc/chunk_attention.cpp) == the eager reference: forward and dQ/dK/dV on awkward
shapes (odd L, prompts not multiples of C, an empty prompt, GQA 4:1, right padding, a fully padded row,
several query blocks and key pieces), every layout, fp32 and half inputs, under the tolerance rule
(tests/tolerance.py); dispatch and the model."""
import copy

import pytest
import torch

from chunksft.ops import chunk_attention
from chunksft.ops._backend import resolve_backend
from tests.ops.cases import ATTENTION_CASES, attention_inputs, attention_reference
from tests.ops.cpp_support import require_cpp
from tests.ops.references import linear_cross_entropy_fp64
from tests.tolerance import assert_close_to_reference, fp64


@pytest.fixture(scope="module", autouse=True)
def extension():
    return require_cpp()


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_forward_and_gradients_match_eager_fp32(name):
    inputs, kwargs = attention_inputs(ATTENTION_CASES[name])
    mine = [x.clone().requires_grad_() for x in inputs]
    eager_in = [x.clone().requires_grad_() for x in inputs]
    ref_in = fp64(*inputs, requires_grad=True)
    out = chunk_attention(*mine, backend="cpp", **kwargs)
    eager = attention_reference(*eager_in, kwargs)
    ref = attention_reference(*ref_in, kwargs)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    assert_close_to_reference("out", out, eager, ref)
    grads = zip("qkv", torch.autograd.grad(out, mine, grad), torch.autograd.grad(eager, eager_in, grad),
                torch.autograd.grad(ref, ref_in, grad.double()))
    for label, a, b, c in grads:
        assert_close_to_reference(f"d{label}", a, b, c)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    inputs, kwargs = attention_inputs(ATTENTION_CASES["bd3-gqa4-odd"], dtype=dtype)
    mine = [x.clone().requires_grad_() for x in inputs]
    eager_in = [x.clone().requires_grad_() for x in inputs]
    ref_in = fp64(*inputs, requires_grad=True)
    out = chunk_attention(*mine, backend="cpp", **kwargs)
    # The baseline: the eager reference on the same half inputs (SDPA in the half dtype).
    eager = attention_reference(*eager_in, kwargs)
    ref = attention_reference(*ref_in, kwargs)
    assert out.dtype == dtype
    assert_close_to_reference("out", out, eager, ref)
    grads = zip("qkv", torch.autograd.grad(out, mine, torch.ones_like(out)),
                torch.autograd.grad(eager, eager_in, torch.ones_like(eager)),
                torch.autograd.grad(ref, ref_in, torch.ones_like(ref)))
    for label, a, b, c in grads:
        assert a.dtype == dtype
        assert_close_to_reference(f"d{label}", a, b, c)


def test_non_contiguous_heads_layout():
    """q, k, v as the backbone produces them: [B, S, H, D] memory viewed as [B, H, S, D]."""
    (q, k, v), kwargs = attention_inputs(ATTENTION_CASES["bd3-noprompt-gqa2"])
    views = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
    assert not views[0].is_contiguous()
    assert_close_to_reference("out", chunk_attention(*views, backend="cpp", **kwargs),
                              attention_reference(q, k, v, kwargs), attention_reference(*fp64(q, k, v), kwargs))


def test_auto_picks_cpp_on_cpu(monkeypatch):
    (q, k, v), kwargs = attention_inputs(ATTENTION_CASES["block_causal-d24"])
    assert resolve_backend("chunk_attention", "auto", q.device) == "cpp"
    assert torch.equal(chunk_attention(q, k, v, backend="auto", **kwargs),
                       chunk_attention(q, k, v, backend="cpp", **kwargs)), "auto runs the same kernel as cpp"
    monkeypatch.setenv("CHUNKSFT_BACKEND", "eager")
    assert resolve_backend("chunk_attention", "cpp", q.device) == "eager"


def test_model_chunk_sft_cpp_matches_eager(monkeypatch):
    """HybridModel(backend="cpp") in chunk_sft: same loss and gradients as backend="eager" (tolerance
    rule; the reference is an fp64 copy of the eager model)."""
    import chunksft.models.hybrid as hybrid
    from chunksft.models import HybridConfig, HybridModel

    torch.manual_seed(0)
    models = {}
    for backend in ("eager", "cpp"):
        torch.manual_seed(0)
        models[backend] = HybridModel(HybridConfig(backend=backend, freeze_backbone=False)).train()
    models["cpp"].load_state_dict(models["eager"].state_dict())
    models["fp64"] = copy.deepcopy(models["eager"]).double()
    # The eager linear CE computes fp32 logits by contract: the fp64 model's LM-head loss runs its formula in fp64.
    fused_ce = hybrid.linear_cross_entropy
    monkeypatch.setattr(hybrid, "linear_cross_entropy", lambda h, w, t, backend, **kw: linear_cross_entropy_fp64(
        h, w, t, **kw) if h.dtype == torch.float64 else fused_ce(h, w, t, backend=backend, **kw))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 200, (2, 71), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 60:] = 0
    prompts = torch.tensor([9, 14])
    chunk_masked = torch.tensor([[True, False, True, False], [False, True, True, False]])
    losses, grads = {}, {}
    for backend, model in models.items():
        out = model(ids, attention_mask=attn, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked)
        out.loss.backward()
        losses[backend] = out.loss.detach()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert_close_to_reference("loss", losses["cpp"], losses["eager"], losses["fp64"])
    assert grads["cpp"].keys() == grads["eager"].keys() == grads["fp64"].keys() and grads["eager"]
    for name, grad in grads["eager"].items():
        assert_close_to_reference(f"d {name}", grads["cpp"][name], grad, grads["fp64"][name])
