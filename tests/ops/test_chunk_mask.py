"""Semantics of the eager chunk_mask / diffusion_mask references (DESIGN.md §1)."""
import math

import pytest
import torch

from chunksft.ops import chunk_mask, diffusion_mask

MASK = 2


def rows(prompt_lens, n_chunks, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [p + n * size for p, n in zip(prompt_lens, n_chunks)]
    ids = torch.randint(5, 1000, (len(lens), max(lens)), generator=g)
    attn = (torch.arange(max(lens))[None] < torch.tensor(lens)[:, None]).long()
    return ids, attn, torch.tensor(prompt_lens)


def test_prompt_never_masked_chunks_whole_labels_exact():
    ids, attn, prompts = rows([5, 19, 32, 1], [4, 3, 6, 1])
    for seed in range(20):
        out = chunk_mask(ids, prompts, chunk_size=16, mask_prob=0.5, mask_id=MASK, attention_mask=attn,
                         generator=torch.Generator().manual_seed(seed))
        masked = out.input_ids == MASK
        for b, p in enumerate(prompts.tolist()):
            assert not masked[b, :p].any()
            assert not masked[b, attn[b].sum():].any(), "padding is never masked"
            n = (int(attn[b].sum()) - p) // 16
            for k in range(n):
                span = masked[b, p + 16 * k: p + 16 * (k + 1)]
                assert span.all() == bool(out.chunk_masked[b, k]) and (span.all() or not span.any())
            assert out.chunk_masked[b, :n].any(), "every row trains"
            assert not out.chunk_masked[b, n:].any()
        assert torch.equal(out.labels != -100, masked)
        assert torch.equal(out.labels[masked], ids[masked])


def test_masked_fraction_matches_probability():
    ids, attn, prompts = rows([7] * 64, [8] * 64)
    p, draws = 0.3, 50
    total = sum(int(chunk_mask(ids, prompts, mask_prob=p, mask_id=MASK, generator=torch.Generator().manual_seed(s)
                               ).chunk_masked.sum()) for s in range(draws))
    n = 64 * 8 * draws
    # The at-least-one rule adds P(no chunk) = (1-p)^8 extra chunks per row on top of n*p.
    expected = n * p + 64 * draws * (1 - p) ** 8
    assert abs(total - expected) < 3 * math.sqrt(n * p * (1 - p))


def test_generator_reproduces_draw_and_override():
    ids, attn, prompts = rows([3, 9], [5, 2])
    a = chunk_mask(ids, prompts, mask_id=MASK, attention_mask=attn, generator=torch.Generator().manual_seed(7))
    b = chunk_mask(ids, prompts, mask_id=MASK, attention_mask=attn, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    forced = torch.tensor([[0, 1, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    c = chunk_mask(ids, prompts, mask_id=MASK, attention_mask=attn, chunk_masked=forced)
    assert torch.equal(c.chunk_masked, forced & torch.tensor([[True] * 5, [True, True, False, False, False]]))


def test_bad_arguments():
    ids, attn, prompts = rows([3], [2])
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_mask(ids, prompts, chunk_size=0, mask_id=MASK)
    with pytest.raises(ValueError, match="mask_probability"):
        chunk_mask(ids, prompts, mask_prob=1.5, mask_id=MASK)


def test_diffusion_mask_respects_src_and_rate():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (256, 64), generator=g)
    src = torch.zeros_like(ids, dtype=torch.bool)
    src[:, :20] = True
    noisy, masked, p = diffusion_mask(ids, src, mask_id=MASK, generator=g)
    assert not masked[:, :20].any() and torch.equal(noisy == MASK, masked)
    assert ((p >= 1e-3) & (p <= 1)).all()
    # Per-row masked count ~ Binomial(44, p): the mean over rows matches within 3 sigma.
    count = masked[:, 20:].sum(1).float()
    mean, var = 44 * p, 44 * p * (1 - p)
    assert abs((count - mean).sum()) < 3 * var.sum().sqrt()
    _, all_masked, _ = diffusion_mask(ids, None, mask_id=MASK, generator=g)
    assert all_masked[:, :20].any(), "pretrain masks every token"
