"""Triton chunk attention (interpreter) == the eager reference under the tolerance rule
(tests/tolerance.py): forward, dQ/dK/dV; the tile schedule."""
import pytest
import torch

from chunksft.ops import chunk_attention
from chunksft.ops._backend import resolve_backend
from chunksft.ops.chunk_attention import (chunk_attention_compact_eager, chunk_attention_eager,
                                          chunk_attention_triton, kernel_configs, tile_schedule)
from chunksft.ops.masks import chunk_attention_mask, compact_attention_mask, compact_positions
from tests.ops.cases import ATTENTION_CASES, attention_dense_mask, attention_inputs, attention_reference
from tests.tolerance import assert_close_to_reference, fp64

pytest.importorskip("triton")

# The Triton interpreter is slow: the short cases of the shared table, each in one dtype.
CASES = {"bd3-gqa4-odd": torch.float32, "bd3-noprompt-gqa2": torch.float16, "block_causal-d24": torch.float32,
         "bidirectional": torch.float16, "compact-gqa4": torch.float32, "compact-short": torch.float16}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_eager(name):
    dtype = CASES[name]
    inputs, kwargs = attention_inputs(ATTENTION_CASES[name], dtype)
    fused_in = [x.clone().requires_grad_() for x in inputs]
    # Eager at the tested precision (the same fp32 / fp16 inputs) and the eager reference on fp64 copies.
    eager_in = [x.clone().requires_grad_() for x in inputs]
    ref_in = fp64(*inputs, requires_grad=True)
    out = chunk_attention_triton(*fused_in, **kwargs)
    eager = attention_reference(*eager_in, kwargs)
    ref = attention_reference(*ref_in, kwargs)
    assert out.dtype == dtype and out.shape == ref.shape
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    fused_grads = torch.autograd.grad(out, fused_in, grad)
    eager_grads = torch.autograd.grad(eager, eager_in, grad)
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    assert_close_to_reference("out", out, eager, ref)
    for name_, a, b, c in zip("qkv", fused_grads, eager_grads, ref_grads):
        assert a.dtype == dtype
        assert_close_to_reference(f"d{name_}", a, b, c)


@pytest.mark.parametrize("name", ["bd3-gqa4-odd", "bd3-noprompt-gqa2", "block_causal-d24", "bidirectional",
                                  "compact-gqa4"])
def test_tile_schedule_is_exactly_the_visible_tiles(name):
    """Every kernel visits each (query tile, key tile) with >= 1 visible pair once per head, and no other."""
    case = dict(ATTENTION_CASES[name], heads=(1, 1), head_dim=16)
    (q, k, v), kwargs = attention_inputs(case)
    mask = attention_dense_mask(case, kwargs)
    counts = tile_schedule(q, k, v, **kwargs)
    cfgs = kernel_configs(16, torch.float32, "cpu")
    total = q.shape[2]
    for kernel_name, visited in counts.items():
        bm, bn = cfgs[kernel_name].block_m, cfgs[kernel_name].block_n
        n_qt, n_kt = visited.shape[1:]
        padded = torch.zeros(2, n_qt * bm, n_kt * bn, dtype=torch.bool)
        padded[:, :total, :total] = mask
        expected = padded.view(2, n_qt, bm, n_kt, bn).any(dim=4).any(dim=2).int()
        assert torch.equal(visited, expected), kernel_name
        # The point of the schedule: most tiles of a chunk layout hold no visible pair.
        if kwargs["layout"] != "bidirectional":
            assert expected.sum() < expected.numel()


def test_dispatch(monkeypatch):
    case = dict(ATTENTION_CASES["block_causal-d24"], heads=(1, 1), seq_len=9, head_dim=16)
    (q, k, v), kwargs = attention_inputs(case)
    del kwargs["layout"], kwargs["chunk_index"]
    ref = chunk_attention_eager(q, k, v, layout="block_causal", **kwargs)
    ref64 = chunk_attention_eager(*fp64(q, k, v), layout="block_causal", **kwargs)
    # "auto" on CPU: the C++ op when registered (issue 6), else the eager reference.
    assert resolve_backend("chunk_attention", "auto", q.device) in ("cpp", "eager")
    assert_close_to_reference("out (auto)", chunk_attention(q, k, v, layout="block_causal", **kwargs), ref, ref64)
    assert_close_to_reference("out (triton)", chunk_attention(q, k, v, layout="block_causal", backend="triton",
                                                              **kwargs), ref, ref64)
    monkeypatch.setenv("CHUNKSFT_BACKEND", "eager")
    assert torch.equal(chunk_attention(q, k, v, layout="block_causal", backend="triton", **kwargs), ref)
    monkeypatch.delenv("CHUNKSFT_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        chunk_attention(q, k, v, layout="block_causal", backend="triton", **kwargs)
    with pytest.raises(ValueError, match="chunk_index"):
        chunk_attention(q, k, v, layout="compact", **kwargs)


@pytest.mark.parametrize("name", ["compact-gqa4", "compact-short"])
def test_compact_sdpa_path_matches_the_reference(name):
    """The eager backend's compact path (two SDPA calls on the compact tensors, no bd3 scatter)
    against the reference: outputs and gradients, padding slots exactly 0."""
    case, dtype = ATTENTION_CASES[name], CASES[name]
    inputs, kwargs = attention_inputs(case, dtype)
    chunk_index = kwargs["chunk_index"]
    fast_in = [x.clone().requires_grad_() for x in inputs]
    eager_in = [x.clone().requires_grad_() for x in inputs]
    ref_in = fp64(*inputs, requires_grad=True)
    out = chunk_attention(*fast_in, backend="eager", **kwargs)
    eager = attention_reference(*eager_in, kwargs)
    ref = attention_reference(*ref_in, kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    assert_close_to_reference("out", out, eager, ref)
    padding = (chunk_index < 0).repeat_interleave(case["chunk"], dim=1)
    assert torch.equal(out[:, :, :padding.shape[1]][padding[:, None].expand(-1, out.shape[1], -1)],
                       torch.zeros(int(padding.sum()) * out.shape[1], case["head_dim"], dtype=out.dtype))
    for name_, a, b, c in zip("qkv", torch.autograd.grad(out, fast_in, grad), torch.autograd.grad(eager, eager_in, grad),
                              torch.autograd.grad(ref, ref_in, grad.double())):
        assert torch.isfinite(a).all()
        assert_close_to_reference(f"d{name_}", a, b, c)


@pytest.mark.parametrize("seed", range(20))
def test_compact_mask_is_the_bd3_mask_restricted(seed):
    """compact_attention_mask (evaluated on the compact positions) == the dense bd3 mask's rows and
    columns at those positions, padding slots seeing and seen by nothing; random awkward layouts
    (prompts not chunk-aligned, ragged seq_lens, rows without masked chunks)."""
    g = torch.Generator().manual_seed(seed)
    batch, chunk = 3, int(torch.randint(1, 6, (1,), generator=g))
    seq_len = int(torch.randint(12, 40, (1,), generator=g))
    prompts = torch.randint(0, seq_len - chunk + 1, (batch,), generator=g)
    seq_lens = torch.stack([torch.randint(int(p) + chunk, seq_len + 1, (1,), generator=g)[0] for p in prompts])
    n_chunks = [(seq_len - int(p)) // chunk for p in prompts]
    chunk_index = torch.full((batch, max(n_chunks)), -1)
    for b, n in enumerate(n_chunks):
        picked = torch.sort(torch.randperm(n, generator=g)[:int(torch.randint(0, n + 1, (1,), generator=g))]).values
        chunk_index[b, :len(picked)] = picked
    bd3 = chunk_attention_mask(prompts, seq_len, chunk_size=chunk, layout="bd3", seq_lens=seq_lens)
    pos, real = compact_positions(chunk_index, prompts, chunk, seq_len)
    index = torch.cat([torch.where(real, pos, -1), seq_len + torch.arange(seq_len).expand(batch, -1)], dim=1)
    for b in range(batch):
        kept = index[b] >= 0
        expected = torch.zeros(len(kept), len(kept), dtype=torch.bool)
        expected[kept[:, None] & kept[None, :]] = bd3[b][index[b][kept]][:, index[b][kept]].flatten()
        mask = compact_attention_mask(prompts, seq_len, chunk_index, chunk_size=chunk, seq_lens=seq_lens)[b]
        assert torch.equal(mask, expected)


def test_compact_reference_is_the_bd3_rows():
    """The compact eager reference is a relabelling of bd3: check it against a direct bd3 call."""
    case = ATTENTION_CASES["compact-gqa4"]
    (q, k, v), kwargs = attention_inputs(case)
    del kwargs["layout"]
    seq_len, size, chunk_index = case["seq_len"], case["chunk"], kwargs.pop("chunk_index")
    out = chunk_attention_compact_eager(q, k, v, chunk_index=chunk_index, **kwargs)
    n_slots = chunk_index.shape[1] * size
    for b in range(2):
        slots = []
        for j, c in enumerate(chunk_index[b].tolist()):
            if c >= 0:
                for o in range(size):
                    slots.append((j * size + o, kwargs["prompt_lens"][b].item() + c * size + o))

        def bd3_rows(dtype):
            """The bd3 reference on row b scattered by hand, its rows in compact order (real slots, then x_0)."""
            full = [torch.zeros(x.shape[1], 2 * seq_len, x.shape[3], dtype=dtype) for x in (q, k, v)]
            for x, f in zip((q, k, v), full):
                f[:, seq_len:] = x[b, :, n_slots:]
                for s, p in slots:
                    f[:, p] = x[b, :, s]
            bd3 = chunk_attention_eager(*(f[None] for f in full), prompt_lens=kwargs["prompt_lens"][b:b + 1],
                                        chunk_size=size, seq_lens=kwargs["seq_lens"][b:b + 1])[0]
            return bd3[:, [p for _, p in slots] + list(range(seq_len, 2 * seq_len))]

        compact_rows = out[b][:, [s for s, _ in slots] + list(range(n_slots, n_slots + seq_len))]
        assert_close_to_reference(f"row {b}", compact_rows, bd3_rows(torch.float32), bd3_rows(torch.float64))
        real = {s for s, _ in slots}
        assert all(out[b, :, s].abs().sum() == 0 for s in range(n_slots) if s not in real), "padding slots are 0"
