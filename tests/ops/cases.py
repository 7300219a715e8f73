"""One case table per op, shared by every backend's tests (Triton, C++, eager paths); the tolerance
rule of tests/tolerance.py applies to all of them. Awkward on purpose: odd lengths, prompts that are
not multiples of the chunk size (and an empty prompt), right padding, a fully padded row, GQA 4:1 and
2:1, head dims that are not powers of two."""
from __future__ import annotations

import torch

from chunksft.ops.chunk_attention import chunk_attention_compact_eager, chunk_attention_eager
from chunksft.ops.masks import chunk_attention_mask, compact_attention_mask

# chunk attention: batch of 2 rows; `chunks` (compact layout only) lists each row's masked chunks, -1 = padding slot.
ATTENTION_CASES = {
    "bd3-gqa4-odd": dict(layout="bd3", heads=(4, 1), seq_len=37, head_dim=32, chunk=5, prompts=[7, 12], lens=[37, 29]),
    "bd3-noprompt-gqa2": dict(layout="bd3", heads=(4, 2), seq_len=23, head_dim=64, chunk=4, prompts=[0, 9],
                              lens=[23, 17]),
    "bd3-empty-row": dict(layout="bd3", heads=(2, 2), seq_len=20, head_dim=8, chunk=4, prompts=[3, 0], lens=[20, 0]),
    "bd3-long": dict(layout="bd3", heads=(2, 1), seq_len=333, head_dim=16, chunk=16, prompts=[45, 70], lens=[333, 260]),
    "block_causal-d24": dict(layout="block_causal", heads=(4, 2), seq_len=45, head_dim=24, chunk=4, prompts=[3, 10],
                             lens=[45, 40]),
    "bidirectional": dict(layout="bidirectional", heads=(2, 1), seq_len=33, head_dim=32, chunk=4, prompts=[5, 2],
                          lens=[33, 20]),
    "bidirectional-pieces": dict(layout="bidirectional", heads=(2, 1), seq_len=1100, head_dim=16, chunk=4,
                                 prompts=[5, 2], lens=[1100, 777]),
    "compact-gqa4": dict(layout="compact", heads=(4, 1), seq_len=37, head_dim=32, chunk=5, prompts=[7, 12],
                         lens=[37, 29], chunks=[[0, 2, 3, 5], [1, 3, -1, -1]]),
    "compact-short": dict(layout="compact", heads=(2, 2), seq_len=30, head_dim=32, chunk=4, prompts=[3, 6],
                          lens=[30, 26], chunks=[[1, 4, 5], [0, -1, -1]]),
    "compact-long": dict(layout="compact", heads=(2, 2), seq_len=200, head_dim=16, chunk=8, prompts=[17, 40],
                         lens=[200, 150], chunks=[[0, 5, 9, 11, 20, 21], [1, 2, 13, -1, -1, -1]]),
}


def attention_inputs(case: dict, dtype: torch.dtype = torch.float32, seed: int = 0):
    """((q, k, v) [2, H(kv), T, D] of `dtype`, op kwargs) of a case; T is 2L for bd3, masked chunks x C
    + L for compact, L otherwise. The kwargs (prompt_lens, chunk_size, seq_lens, layout, chunk_index)
    go to every backend and to `attention_reference` as they are."""
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads = case["heads"]
    chunk_index = torch.tensor(case["chunks"]) if "chunks" in case else None
    if case["layout"] == "compact":
        total = chunk_index.shape[1] * case["chunk"] + case["seq_len"]
    else:
        total = case["seq_len"] * (2 if case["layout"] == "bd3" else 1)
    shapes = [(2, heads, total, case["head_dim"])] + [(2, kv_heads, total, case["head_dim"])] * 2
    q, k, v = (torch.randn(s, generator=g).to(dtype) for s in shapes)
    kwargs = dict(prompt_lens=torch.tensor(case["prompts"]), chunk_size=case["chunk"],
                  seq_lens=torch.tensor(case["lens"]), layout=case["layout"], chunk_index=chunk_index)
    return (q, k, v), kwargs


def attention_reference(q, k, v, kwargs: dict) -> torch.Tensor:
    """The eager reference of `chunk_attention` for `attention_inputs`' kwargs (compact or not)."""
    kwargs = dict(kwargs)
    layout, chunk_index = kwargs.pop("layout"), kwargs.pop("chunk_index")
    if layout == "compact":
        return chunk_attention_compact_eager(q, k, v, chunk_index=chunk_index, **kwargs)
    return chunk_attention_eager(q, k, v, layout=layout, **kwargs)


def attention_dense_mask(case: dict, kwargs: dict) -> torch.Tensor:
    """bool [2, T, T]: which (query, key) pairs of a case's inputs are visible."""
    if kwargs["layout"] == "compact":
        return compact_attention_mask(kwargs["prompt_lens"], case["seq_len"], kwargs["chunk_index"],
                                      chunk_size=kwargs["chunk_size"], seq_lens=kwargs["seq_lens"])
    return chunk_attention_mask(kwargs["prompt_lens"], case["seq_len"], chunk_size=kwargs["chunk_size"],
                                layout=kwargs["layout"], seq_lens=kwargs["seq_lens"])


# chunk masking: the within-chunk rate ranges every backend is checked on (whole chunks, bd3's full
# range, a narrow band, the smallest rate), and one awkward batch.
MASK_ID = 7
TOKEN_RATES = [(1.0, 1.0), (0.001, 1.0), (0.3, 0.7), (1e-3, 1e-3)]


def mask_batch(seed: int = 0, prompts=(0, 5, 13, 40, 80)):
    """(input_ids int64 [5, 83], prompt_lens [5], attention_mask [5, 83]): right padding in rows 1 and 3
    (lengths 61 and 50); the default prompts include an empty one, are not multiples of C, and leave
    the last row without a whole chunk."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (5, 83), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 61:] = 0
    attn[3, 50:] = 0
    return ids, torch.tensor(prompts), attn


def assert_same_mask(a, b) -> None:
    """Two (ChunkMask, CompactLayout) results are identical, dtypes included."""
    assert a[0].chunk_rate is not None
    for x, y in zip(a[0], b[0]):
        assert x.dtype == y.dtype and torch.equal(x, y)
    for x, y in zip(a[1], b[1]):
        assert x.dtype == y.dtype and torch.equal(x, y)


# linear cross entropy: a vocabulary > 64k that is not a multiple of the 4096-wide vocab block.
VOCAB = 65_601


def lce_problem(n: int = 21, hidden_size: int = 32, vocab: int = VOCAB, dtype: torch.dtype = torch.float32,
                seed: int = 0):
    """(hidden [n, H], weight [V, H], targets int64 [n], token_weights float32 [n]): rows 2, 5 and n-1
    ignored (-100), row 4 of weight 0 (skipped like an ignored row)."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, hidden_size, generator=g) * 2).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size ** 0.5).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[[2, 5, n - 1]] = -100
    token_weights = torch.rand(n, generator=g) + 0.5
    token_weights[4] = 0.0
    return hidden, weight, targets, token_weights
