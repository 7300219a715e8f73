"""Semantics of the eager chunk_mask / diffusion_mask references (docs/design.md §1.3, §1.4)."""
import math

import pytest
import torch

from chunksft.ops import chunk_mask, diffusion_mask
from tests.ops.cases import TOKEN_RATES

MASK = 2


def rows(prompt_lens, n_chunks, size=16, seed=0, tails=None):
    """Right-padded rows: prompt, n whole chunks, then `tails[b]` tokens short of a whole chunk."""
    g = torch.Generator().manual_seed(seed)
    tails = tails or [0] * len(prompt_lens)
    lens = [p + n * size + t for p, n, t in zip(prompt_lens, n_chunks, tails)]
    ids = torch.randint(5, 1000, (len(lens), max(lens)), generator=g)
    attn = (torch.arange(max(lens))[None] < torch.tensor(lens)[:, None]).long()
    return ids, attn, torch.tensor(prompt_lens)


@pytest.mark.parametrize("token_rate", TOKEN_RATES)
@pytest.mark.parametrize("backend", ["eager", "auto"])  # the reference; the default (fused, counter draw)
def test_prompt_never_masked_chunks_whole_labels_exact(token_rate, backend):
    # Prompts not chunk-aligned, partial tails (odd lengths), right padding, a row without a whole chunk.
    ids, attn, prompts = rows([5, 19, 32, 1, 9], [4, 3, 6, 1, 0], tails=[3, 0, 7, 15, 11])
    # t is float32 (eager) or round(t * 2^24) / 2^24 (counter draw): within 2^-24 of [t_min, t_max].
    t_min, t_max = token_rate[0] - 2 ** -24, token_rate[1] + 2 ** -24
    for seed in range(20):
        out = chunk_mask(ids, prompts, chunk_size=16, mask_prob=0.5, mask_id=MASK, attention_mask=attn,
                         generator=torch.Generator().manual_seed(seed), token_rate=token_rate, backend=backend)
        masked = out.input_ids == MASK
        rate = out.chunk_rate
        assert rate.dtype == torch.float32 and rate.shape == out.chunk_masked.shape
        assert torch.equal(rate == 0, ~out.chunk_masked), "t on selected chunks, 0 elsewhere"
        assert ((rate[out.chunk_masked] >= t_min) & (rate[out.chunk_masked] <= t_max)).all()
        for b, p in enumerate(prompts.tolist()):
            assert not masked[b, :p].any()
            n = (int(attn[b].sum()) - p) // 16
            assert not masked[b, p + 16 * n:].any(), "partial tail and padding are never masked"
            for k in range(n):
                span = masked[b, p + 16 * k: p + 16 * (k + 1)]
                assert span.any() == bool(out.chunk_masked[b, k]), "a selected chunk masks >= 1 token"
                if token_rate == (1.0, 1.0):
                    assert span.all() or not span.any()
            assert out.chunk_masked[b, :n].any() or n == 0, "every row with a chunk trains"
            assert not out.chunk_masked[b, n:].any()
        assert torch.equal(out.labels != -100, masked)
        assert torch.equal(out.labels[masked], ids[masked])


@pytest.mark.parametrize("token_rate", TOKEN_RATES)
@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_masked_fraction_per_chunk_matches_rate(token_rate, backend):
    # Per chunk E[masked / C] = E[t] + E[(1 - t)^C] / C (the at-least-one rule adds one token when none
    # was drawn); t ~ U(a, b). Checked within 3 standard errors of the mean over all selected chunks.
    ids, attn, prompts = rows([7] * 64, [8] * 64)
    a, b = token_rate
    size = 16
    if a == b:
        none = (1 - a) ** size
    else:
        none = ((1 - a) ** (size + 1) - (1 - b) ** (size + 1)) / ((size + 1) * (b - a))
    expected = (a + b) / 2 + none / size
    fractions, rates = [], []
    for s in range(20):
        out = chunk_mask(ids, prompts, mask_prob=1.0, mask_id=MASK, generator=torch.Generator().manual_seed(s),
                         token_rate=token_rate, backend=backend)
        fractions.append((out.input_ids[:, 7:] == MASK).view(64, 8, size).float().mean(dim=2).flatten())
        rates.append(out.chunk_rate.flatten())
    fractions, rates = torch.cat(fractions).double(), torch.cat(rates).double()
    sem = fractions.std() / math.sqrt(fractions.numel())
    assert abs(fractions.mean().item() - expected) <= 3 * sem.item() + 1e-6
    # The drawn rates themselves: mean (a + b) / 2, sd (b - a) / sqrt(12).
    assert abs(rates.mean().item() - (a + b) / 2) <= 3 * (b - a) / math.sqrt(12 * rates.numel()) + 1e-6


def test_whole_chunk_rate_is_the_chunk_draw():
    # token_rate = (1, 1) (the default) is exactly the whole-chunk masking: the chunk draw alone,
    # expanded over the chunk, t = 1 on selected chunks; no extra generator draws.
    from chunksft.ops.chunk_mask import chunk_mask_eager, draw_chunk_mask, num_chunks

    ids, attn, prompts = rows([5, 19, 32, 1, 9], [4, 3, 6, 1, 0], tails=[3, 0, 7, 15, 11])
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        out = chunk_mask_eager(ids, prompts, mask_prob=0.4, mask_id=MASK, attention_mask=attn, generator=g,
                               token_rate=(1.0, 1.0))
        after = torch.rand(3, generator=g)
        default = chunk_mask_eager(ids, prompts, mask_prob=0.4, mask_id=MASK, attention_mask=attn,
                                   generator=torch.Generator().manual_seed(seed))
        assert all(torch.equal(x, y) for x, y in zip(out, default))
        g = torch.Generator().manual_seed(seed)
        n = num_chunks(prompts, attn.sum(1), 16)
        chunks = draw_chunk_mask(n, int(n.max()), 0.4, g)
        assert torch.equal(torch.rand(3, generator=g), after), "(1, 1) draws nothing beyond the chunk draw"
        whole = torch.zeros_like(ids, dtype=torch.bool)  # every token of every selected chunk, spelled out
        for b, j in chunks.nonzero().tolist():
            start = int(prompts[b]) + 16 * j
            whole[b, start:start + 16] = True
        assert torch.equal(out.chunk_masked, chunks) and torch.equal(out.chunk_rate, chunks.float())
        assert torch.equal(out.input_ids, torch.where(whole, torch.full_like(ids, MASK), ids))
        assert torch.equal(out.labels, torch.where(whole, ids, torch.full_like(ids, -100)))


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


@pytest.mark.parametrize("token_rate", [(0.0, 1.0), (1e-9, 1.0), (-0.1, 0.5), (0.7, 0.3), (0.5, 1.5), (1.0, 1.01)])
@pytest.mark.parametrize("seed", [None, 3])  # None: chunk_mask_eager; 3: the counter reference
def test_bad_token_rate(token_rate, seed):
    ids, attn, prompts = rows([3], [2])
    with pytest.raises(ValueError, match=r"token_rate .*1e-06 <= t_min <= t_max <= 1") as info:
        chunk_mask(ids, prompts, mask_id=MASK, backend="eager", seed=seed, token_rate=token_rate)
    assert "\n" not in str(info.value), "one-line message"


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
