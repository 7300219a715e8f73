"""Counter-based chunk masking: the Triton kernel (interpreter) == `chunk_mask_counter` bit for bit,
and the counter reference keeps the chunk_mask semantics and the compacted layout is consistent."""
import math

import pytest
import torch

from chunksft.ops.chunk_mask import (chunk_mask, chunk_mask_counter, chunk_mask_counter_triton, mix32,
                                     seed_key)
from chunksft.ops.masks import compact_positions
from tests.ops.cases import MASK_ID, TOKEN_RATES, assert_same_mask, mask_batch

pytest.importorskip("triton")


@pytest.mark.parametrize("token_rate", TOKEN_RATES)
@pytest.mark.parametrize("seed,prob,chunk_size,prompts", [
    (0, 0.3, 4, None), (2 ** 40 + 3, 0.3, 4, None), (7, 0.0, 4, None), (7, 1.0, 4, None),
    (11, 1.0, 5, None), (12, 0.5, 16, None),
    (3, 0.5, 4, (80, 61, 80, 50, 80)),  # no row has a whole chunk
])
def test_kernel_matches_counter_reference(seed, prob, chunk_size, prompts, token_rate):
    ids, prompts, attn = mask_batch() if prompts is None else mask_batch(prompts=prompts)
    kwargs = dict(seed=seed, chunk_size=chunk_size, mask_prob=prob, mask_id=MASK_ID, attention_mask=attn,
                  token_rate=token_rate)
    assert_same_mask(chunk_mask_counter_triton(ids, prompts, **kwargs), chunk_mask_counter(ids, prompts, **kwargs))


def test_counter_draw_semantics_and_layout():
    ids, prompts, attn = mask_batch()
    out, layout = chunk_mask_counter(ids, prompts, seed=11, chunk_size=4, mask_prob=0.3, mask_id=MASK_ID,
                                     attention_mask=attn)
    n_chunks = ((attn.sum(1) - prompts) // 4).clamp(min=0)
    assert out.chunk_masked[n_chunks > 0].any(dim=1).all(), "every row with a chunk trains"
    masked = out.input_ids == MASK_ID
    assert torch.equal(out.labels != -100, masked) and torch.equal(out.labels[masked], ids[masked])
    # Compact layout: the masked chunks in increasing order, their token positions, -1 / 0 padding.
    for b in range(ids.shape[0]):
        chunks = out.chunk_masked[b].nonzero()[:, 0].tolist()
        row = layout.chunk_index[b].tolist()
        assert row[:len(chunks)] == chunks and all(c == -1 for c in row[len(chunks):])
    pos, real = compact_positions(layout.chunk_index, prompts, 4, ids.shape[1])
    assert torch.equal(layout.positions, pos) and torch.equal(masked.gather(1, pos) & real, real)


def test_counter_hash_is_uniform_enough():
    draws = mix32(seed_key(5) ^ torch.arange(200_000, dtype=torch.int64)) >> 8
    u = draws.double() / 2 ** 24
    assert abs(u.mean().item() - 0.5) < 0.005 and abs((u < 0.3).double().mean().item() - 0.3) < 0.005


def test_masked_fraction_matches_probability():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (64, 7 + 8 * 16), generator=g)
    prompts = torch.full((64,), 7)
    total = sum(int(chunk_mask_counter(ids, prompts, seed=s, mask_prob=0.3, mask_id=MASK_ID)[0].chunk_masked.sum())
                for s in range(50))
    n, p = 64 * 8 * 50, 0.3
    expected = n * p + 64 * 50 * (1 - p) ** 8
    assert abs(total - expected) < 3 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("token_rate", [(1.0, 1.0), (0.3, 0.7)])
def test_dispatch_seed_and_generator(monkeypatch, token_rate):
    ids, prompts, attn = mask_batch()
    kwargs = dict(chunk_size=4, mask_prob=0.3, mask_id=MASK_ID, attention_mask=attn, token_rate=token_rate)
    ref = chunk_mask_counter(ids, prompts, seed=3, **kwargs)[0]
    for backend in ("eager", "triton"):
        out = chunk_mask(ids, prompts, seed=3, backend=backend, **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(out, ref)), backend
    # A fused backend without a seed takes one from the generator: reproducible.
    a = chunk_mask(ids, prompts, backend="triton", generator=torch.Generator().manual_seed(9), **kwargs)
    b = chunk_mask(ids, prompts, backend="triton", generator=torch.Generator().manual_seed(9), **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    monkeypatch.setenv("CHUNKSFT_BACKEND", "eager")
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    from chunksft.ops.chunk_mask import chunk_mask_eager
    forced = chunk_mask(ids, prompts, backend="triton", generator=g1, **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(forced, chunk_mask_eager(ids, prompts, generator=g2, **kwargs)))


@pytest.mark.parametrize("token_rate", [(0.0, 1.0), (0.7, 0.3), (0.5, 1.5)])
def test_bad_token_rate(token_rate):
    ids, prompts, attn = mask_batch()
    with pytest.raises(ValueError, match="token_rate") as info:
        chunk_mask_counter_triton(ids, prompts, seed=1, mask_id=MASK_ID, token_rate=token_rate)
    assert "\n" not in str(info.value)
