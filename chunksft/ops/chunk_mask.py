"""Chunk-level masking (chunk_sft, bd3) and token-level diffusion masking (pretrain / sft).

Chunk masking is two draws: each response chunk is selected with probability `mask_prob` (at least
one per row), then inside a selected chunk each token is masked with the chunk's rate
t ~ U(t_min, t_max) (at least one token per chunk). chunk_sft masks whole chunks (t = 1, the
default `token_rate=(1, 1)`); bd3 selects every chunk (`mask_prob=1`) with `token_rate=(eps, 1)`.

The eager functions here are the specification; the C++ and Triton kernels are tested against them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from chunksft.ops import _cpp
from chunksft.ops._backend import register_cpp, resolve_backend
from chunksft.ops._triton import kernel, lazy_jit, next_power_of_2
from chunksft.ops.masks import CompactLayout, check_chunk_size, compact_layout

IGNORE_INDEX = -100


class ChunkMask(NamedTuple):
    input_ids: torch.Tensor     # int64 [B, L]: masked tokens replaced by mask_id
    labels: torch.Tensor        # int64 [B, L]: token id on masked positions, -100 elsewhere
    chunk_masked: torch.Tensor  # bool [B, N]: selected chunks; N = max number of response chunks in the batch
    chunk_rate: torch.Tensor | None = None  # float32 [B, N]: t of each selected chunk (1 = whole chunk), 0 elsewhere


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}; set it to e.g. 0.3")


MIN_TOKEN_RATE = 1e-6  # the counter draws quantise rates to 2**-24: smaller ones would round to 0 (a 1/0 loss weight)


def _check_token_rate(token_rate: tuple[float, float]) -> tuple[float, float]:
    t_min, t_max = map(float, token_rate)
    if not MIN_TOKEN_RATE <= t_min <= t_max <= 1.0:
        raise ValueError(f"token_rate (t_min, t_max) must satisfy {MIN_TOKEN_RATE:g} <= t_min <= t_max <= 1, got "
                         f"{token_rate}; e.g. (0.001, 1.0) for bd3, (1.0, 1.0) for whole chunks")
    return t_min, t_max


def check_mask_args(chunk_size: int, mask_prob: float, token_rate: tuple[float, float]) -> tuple[float, float]:
    """The arguments every chunk-masking backend takes, checked once; returns (t_min, t_max)."""
    check_chunk_size(chunk_size)
    _check_probability("mask_probability", mask_prob)
    return _check_token_rate(token_rate)


def expand_token_mask(token_masked: torch.Tensor, prompt_lens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Per-chunk-token flags bool [B, N, C] -> per-position flags bool [B, L] (prompt and tail False)."""
    batch, n_chunks, size = token_masked.shape
    rel = torch.arange(seq_len, device=prompt_lens.device)[None, :] - prompt_lens.long()[:, None]
    inside = (rel >= 0) & (rel < n_chunks * size)
    if n_chunks * size == 0:
        return inside
    flat = token_masked.reshape(batch, n_chunks * size)
    return inside & torch.gather(flat, 1, rel.clamp(0, n_chunks * size - 1))


def num_chunks(prompt_lens: torch.Tensor, seq_lens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Whole response chunks per row: (seq_len - prompt_len) // C, clamped at 0.  -> int64 [B]"""
    return torch.clamp(torch.div(seq_lens - prompt_lens, chunk_size, rounding_mode="floor"), min=0).long()


def draw_chunk_mask(n_chunks: torch.Tensor, max_chunks: int, mask_prob: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli(mask_prob) per chunk; a row that drew none gets one uniformly chosen chunk.

    n_chunks: int [B] real chunks per row. Returns bool [B, max_chunks] (False past n_chunks).
    """
    batch = n_chunks.shape[0]
    device = n_chunks.device
    exists = torch.arange(max_chunks, device=device)[None, :] < n_chunks[:, None]
    u = torch.rand(batch, max_chunks, generator=generator, device=device)
    masked = (u < mask_prob) & exists
    # Every row trains: pick one of its real chunks when the draw masked none.
    fallback = torch.floor(torch.rand(batch, generator=generator, device=device) * n_chunks.clamp(min=1)).long()
    needs = (~masked.any(dim=1)) & (n_chunks > 0)
    masked[needs, fallback[needs]] = True
    return masked


def draw_token_mask(chunk_masked: torch.Tensor, chunk_size: int, token_rate: tuple[float, float],
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-chunk masking: per chunk t ~ U(t_min, t_max), each token masked w.p. t, at least one.

    chunk_masked: bool [B, N]. Returns (token flags bool [B, N, C], chunk rate float32 [B, N], 0 on
    unselected chunks). token_rate == (1, 1) masks whole chunks without drawing (the draw stream of
    whole-chunk masking is just `draw_chunk_mask`'s).
    """
    t_min, t_max = _check_token_rate(token_rate)
    batch, n_chunks = chunk_masked.shape
    if t_min == 1.0:
        tokens = chunk_masked[:, :, None].expand(batch, n_chunks, chunk_size)
        return tokens, chunk_masked.float()
    device = chunk_masked.device
    rate = t_min + (t_max - t_min) * torch.rand(batch, n_chunks, generator=generator, device=device)
    tokens = torch.rand(batch, n_chunks, chunk_size, generator=generator, device=device) < rate[:, :, None]
    fallback = torch.floor(torch.rand(batch, n_chunks, generator=generator, device=device) * chunk_size).long()
    offsets = torch.arange(chunk_size, device=device)
    tokens |= (~tokens.any(dim=2, keepdim=True)) & (offsets == fallback[:, :, None])
    return tokens & chunk_masked[:, :, None], torch.where(chunk_masked, rate, torch.zeros_like(rate))


def chunk_mask_eager(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, chunk_size: int = 16,
                     mask_prob: float = 0.3, mask_id: int, generator: torch.Generator | None = None,
                     attention_mask: torch.Tensor | None = None, chunk_masked: torch.Tensor | None = None,
                     token_rate: tuple[float, float] = (1.0, 1.0)) -> ChunkMask:
    """Reference chunk masking (module docstring).

    input_ids: int64 [B, L] (prompt, then EOS-padded response, then right padding);
    prompt_lens: int [B]; attention_mask: optional [B, L] (0 = right padding, never masked);
    chunk_masked: optional bool [B, N] to use instead of the chunk draw;
    token_rate: (t_min, t_max) of the within-chunk rate; (1, 1) masks whole chunks.
    """
    check_mask_args(chunk_size, mask_prob, token_rate)
    batch, seq_len = input_ids.shape
    prompt_lens = prompt_lens.to(device=input_ids.device, dtype=torch.long)
    if attention_mask is None:
        seq_lens = torch.full((batch,), seq_len, dtype=torch.long, device=input_ids.device)
    else:
        seq_lens = attention_mask.to(torch.long).sum(dim=1)
    n_chunks = num_chunks(prompt_lens, seq_lens, chunk_size)
    max_chunks = int(n_chunks.max().item()) if batch else 0
    if chunk_masked is None:
        chunk_masked = draw_chunk_mask(n_chunks, max_chunks, mask_prob, generator)
    else:
        exists = torch.arange(chunk_masked.shape[1], device=input_ids.device)[None, :] < n_chunks[:, None]
        chunk_masked = chunk_masked.to(device=input_ids.device, dtype=torch.bool) & exists
    tokens, rate = draw_token_mask(chunk_masked, chunk_size, token_rate, generator)
    return _apply_token_mask(input_ids, prompt_lens, mask_id, chunk_masked, tokens, rate)


def _apply_token_mask(input_ids, prompt_lens, mask_id, chunk_masked, tokens, rate) -> ChunkMask:
    token_masked = expand_token_mask(tokens, prompt_lens, input_ids.shape[1])
    noisy = torch.where(token_masked, torch.full_like(input_ids, mask_id), input_ids)
    labels = torch.where(token_masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return ChunkMask(noisy, labels, chunk_masked, rate)


# ----------------------------------------------------------------------------------------------
# Counter-based draws (seed, row, chunk): the fused kernels and this reference give identical masks
# ----------------------------------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31: x * m < 2**63 for any 32-bit x, so int64 tensors hold the exact product.
_MUL1, _MUL2 = 0x7FEB352D, 0x2C1B3C6D
_CHUNK_SALT, _FALLBACK_SALT = 0x5BD1E995, 0x68E31DA4
_RATE_SALT, _TOKEN_SALT, _OFFSET_SALT = 0x1B873593, 0x27D4EB2F, 0x165667B1
_DRAW_BITS = 24  # a draw is the top 24 bits of the hash; masked iff draw < round(p * 2**24)


def mix32(x):
    """32-bit integer finaliser (xorshift-multiply). Works on Python ints and int64 tensors of uint32 values."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """Fold a 64-bit seed into the 32-bit key of the row hashes."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return mix32(mix32(seed >> 32) ^ (seed & _MASK32))


def mask_threshold(mask_prob: float) -> int:
    return int(round(float(mask_prob) * (1 << _DRAW_BITS)))


def draw_token_mask_counter(chunk_masked: torch.Tensor, chunk_size: int, token_rate: tuple[float, float],
                            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`draw_token_mask` with counter-based randomness, in integer arithmetic (bit-exact in kernels).

    With lo, hi = mask_threshold(t_min), mask_threshold(t_max), row_key as in `draw_chunk_mask_counter`:
      chunk j's threshold  T_j = lo + ((mix32(row_key ^ mix32(j ^ RATE_SALT)) >> 8) * (hi - lo) >> 24),
      its rate             t_j = T_j / 2**24,
      token o of chunk j   masked iff mix32(row_key ^ mix32((j*C + o) ^ TOKEN_SALT)) >> 8 < T_j,
      none masked          -> token mix32(row_key ^ mix32(j ^ OFFSET_SALT)) % C.
    With t_min = t_max = 1 every token is below T_j = 2**24: whole chunks, the same draw as before.
    Returns (token flags bool [B, N, C], chunk rate float32 [B, N], 0 on unselected chunks).
    """
    t_min, t_max = _check_token_rate(token_rate)
    lo, hi = mask_threshold(t_min), mask_threshold(t_max)
    batch, n_chunks = chunk_masked.shape
    device = chunk_masked.device
    rows = torch.arange(batch, device=device, dtype=torch.int64)
    row_key = mix32(seed_key(seed) ^ rows)[:, None, None]                       # [B, 1, 1]
    chunks = torch.arange(n_chunks, device=device, dtype=torch.int64)[None, :, None]
    offsets = torch.arange(chunk_size, device=device, dtype=torch.int64)[None, None, :]
    rate_draw = mix32(row_key ^ mix32(chunks ^ _RATE_SALT)) >> (32 - _DRAW_BITS)  # [B, N, 1]
    threshold = lo + ((rate_draw * (hi - lo)) >> _DRAW_BITS)
    draw = mix32(row_key ^ mix32((chunks * chunk_size + offsets) ^ _TOKEN_SALT)) >> (32 - _DRAW_BITS)
    tokens = draw < threshold
    fallback = mix32(row_key ^ mix32(chunks ^ _OFFSET_SALT)) % chunk_size
    tokens |= (~tokens.any(dim=2, keepdim=True)) & (offsets == fallback)
    selected = chunk_masked[:, :, None]
    rate = threshold[:, :, 0].float() / (1 << _DRAW_BITS)
    return tokens & selected, torch.where(chunk_masked, rate, torch.zeros_like(rate))


def draw_chunk_mask_counter(n_chunks: torch.Tensor, max_chunks: int, mask_prob: float, seed: int) -> torch.Tensor:
    """`draw_chunk_mask` with counter-based randomness: chunk j of row b is masked iff
    mix32(row_key ^ mix32(j ^ SALT)) >> 8 < round(p * 2**24), row_key = mix32(seed_key(seed) ^ b); a row that
    drew none masks chunk mix32(row_key ^ FALLBACK_SALT) % n_chunks. Returns bool [B, max_chunks]."""
    device = n_chunks.device
    rows = torch.arange(n_chunks.shape[0], device=device, dtype=torch.int64)
    row_key = mix32(seed_key(seed) ^ rows)[:, None]
    chunks = torch.arange(max_chunks, device=device, dtype=torch.int64)[None, :]
    draw = mix32(row_key ^ mix32(chunks ^ _CHUNK_SALT)) >> (32 - _DRAW_BITS)
    exists = chunks < n_chunks[:, None]
    masked = (draw < mask_threshold(mask_prob)) & exists
    fallback = mix32(row_key ^ _FALLBACK_SALT) % n_chunks.clamp(min=1)[:, None]
    needs = (~masked.any(dim=1, keepdim=True)) & (n_chunks[:, None] > 0)
    return masked | (needs & (chunks == fallback))


def _seq_lens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    return attention_mask.to(torch.long).sum(dim=1)


def chunk_mask_counter(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, seed: int, chunk_size: int = 16,
                       mask_prob: float = 0.3, mask_id: int, attention_mask: torch.Tensor | None = None,
                       token_rate: tuple[float, float] = (1.0, 1.0)) -> tuple[ChunkMask, CompactLayout]:
    """Reference of the fused chunk masking: the counter-based chunk and token draws of `seed`
    applied as in `chunk_mask_eager`, plus the compacted layout. The Triton kernel (and any other
    fused backend) must match it exactly."""
    check_mask_args(chunk_size, mask_prob, token_rate)
    prompt_lens = prompt_lens.to(device=input_ids.device, dtype=torch.long)
    n_chunks = num_chunks(prompt_lens, _seq_lens(input_ids, attention_mask), chunk_size)
    max_chunks = int(n_chunks.max().item()) if input_ids.shape[0] else 0
    drawn = draw_chunk_mask_counter(n_chunks, max_chunks, mask_prob, seed)
    tokens, rate = draw_token_mask_counter(drawn, chunk_size, token_rate, seed)
    out = _apply_token_mask(input_ids, prompt_lens, mask_id, drawn, tokens, rate)
    return out, compact_layout(out.chunk_masked, prompt_lens, chunk_size)


@lazy_jit
def _mix32_tl(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x2C1B3C6D
    return x ^ (x >> 16)


@lazy_jit
def _chunk_mask_kernel(IDS, OUT_IDS, LABELS, CHUNK_MASKED, CHUNK_RATE, CHUNK_INDEX, POSITIONS, COUNTS, PL, SL,
                       key, threshold, lo, hi, mask_id, L, N, C,
                       BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """One row per program: draw its chunks, write chunk flags, chunk rates, compact index /
    positions, then masked ids and labels (per token every flag is recomputed from the hashes, so no
    program reads back what another thread of it wrote). CHUNK_INDEX / POSITIONS come pre-filled
    with -1 / 0. lo / hi: mask_threshold(t_min) / mask_threshold(t_max) of the within-chunk rate
    (lo = hi = 2**24: whole chunks); the token draw is `draw_token_mask_counter`'s."""
    row = tl.program_id(0)
    P = tl.load(PL + row)
    n = tl.maximum((tl.load(SL + row) - P) // C, 0)
    row_key = _mix32_tl((key ^ row.to(tl.int64)).to(tl.uint32))
    j = tl.arange(0, BLOCK_N)
    exists = j < n
    draw = _mix32_tl(row_key ^ _mix32_tl(j.to(tl.uint32) ^ 0x5BD1E995)) >> 8
    masked = (draw < threshold) & exists
    count = tl.sum(masked.to(tl.int32), axis=0)
    fallback = (_mix32_tl(row_key ^ 0x68E31DA4) % tl.maximum(n, 1).to(tl.uint32)).to(tl.int32)
    # Row-level flags broadcast to tensors: the interpreter mis-types scalar-bool & tensor masks.
    use_fallback = ((j * 0 + count) == 0) & ((j * 0 + n) > 0)
    masked = masked | (use_fallback & (j == fallback))
    count = tl.sum(masked.to(tl.int32), axis=0)
    fallback_row = tl.max(use_fallback.to(tl.int32), axis=0)
    row64 = row.to(tl.int64)
    # Chunk threshold T_j = lo + (rate_draw * (hi - lo) >> 24) in int64 (the product needs 48 bits);
    # T_j <= 2**24, so it is exact in fp32 and t_j = T_j / 2**24 is too.
    rate_draw = (_mix32_tl(row_key ^ _mix32_tl(j.to(tl.uint32) ^ 0x1B873593)) >> 8).to(tl.int64)
    chunk_thr = lo + ((rate_draw * (hi - lo)) >> 24)
    rate = tl.where(masked, chunk_thr.to(tl.float32) * (1.0 / 16777216.0), 0.0)
    tl.store(CHUNK_MASKED + row64 * N + j, masked.to(tl.int8), mask=j < N)
    tl.store(CHUNK_RATE + row64 * N + j, rate, mask=j < N)
    tl.store(COUNTS + row, count)
    rank = tl.cumsum(masked.to(tl.int32), axis=0) - 1
    tl.store(CHUNK_INDEX + row64 * N + rank, j.to(tl.int64), mask=masked)
    for o in range(0, C):
        tl.store(POSITIONS + row64 * N * C + rank * C + o, (P + j * C + o).to(tl.int64), mask=masked)
    for start in range(0, L, BLOCK_L):
        pos = start + tl.arange(0, BLOCK_L)
        rel = tl.maximum(pos - P, 0)
        chunk = rel // C
        offset = rel - chunk * C
        ctr = chunk.to(tl.uint32)
        # Chunk selection (the chunk draw above, recomputed per token).
        sel_draw = _mix32_tl(row_key ^ _mix32_tl(ctr ^ 0x5BD1E995)) >> 8
        selected = (sel_draw < threshold) | ((chunk == fallback) & ((pos * 0 + fallback_row) > 0))
        # Token draw inside the chunk: token counter rel = chunk * C + offset.
        t_draw = (_mix32_tl(row_key ^ _mix32_tl(rel.to(tl.uint32) ^ 0x27D4EB2F)) >> 8).to(tl.int32)
        t_rate = (_mix32_tl(row_key ^ _mix32_tl(ctr ^ 0x1B873593)) >> 8).to(tl.int64)
        thr = (lo + ((t_rate * (hi - lo)) >> 24)).to(tl.int32)
        # At least one token per chunk: a chunk none of whose C draws is below T_j masks its fallback
        # offset. The smallest draw of the chunk decides; the token's own draw is one of them, which
        # already decides whole chunks (lo = 2**24: every draw < T_j = 2**24), so they skip the loop.
        # (The minimum is carried as int32: a loop-carried bool vector goes through the stack on sm_90.)
        min_draw = t_draw
        if lo < 16777216:
            first = chunk * C
            for o2 in range(0, C):
                d = (_mix32_tl(row_key ^ _mix32_tl((first + o2).to(tl.uint32) ^ 0x27D4EB2F)) >> 8).to(tl.int32)
                min_draw = tl.minimum(min_draw, d)
        fb_offset = (_mix32_tl(row_key ^ _mix32_tl(ctr ^ 0x165667B1)) % (pos * 0 + C).to(tl.uint32)).to(tl.int32)
        hit = (t_draw < thr) | ((min_draw >= thr) & (offset == fb_offset))
        tok_masked = (pos >= P) & (chunk < n) & selected & hit
        ids = tl.load(IDS + row64 * L + pos, mask=pos < L, other=0)
        tl.store(OUT_IDS + row64 * L + pos, tl.where(tok_masked, mask_id, ids), mask=pos < L)
        tl.store(LABELS + row64 * L + pos, tl.where(tok_masked, ids, -100), mask=pos < L)


_MASK_BLOCK_L = 1024
# One program holds all chunk flags of its row; BLOCK_N = next power of 2 >= chunks (16 ... 1024).
_MAX_CHUNKS = 1024


def chunk_mask_counter_triton(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, seed: int, chunk_size: int = 16,
                              mask_prob: float = 0.3, mask_id: int, attention_mask: torch.Tensor | None = None,
                              token_rate: tuple[float, float] = (1.0, 1.0)) -> tuple[ChunkMask, CompactLayout]:
    """`chunk_mask_counter` in one Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    t_min, t_max = check_mask_args(chunk_size, mask_prob, token_rate)
    batch, seq_len = input_ids.shape
    device = input_ids.device
    ids = input_ids.to(torch.int64).contiguous()
    prompt_lens = prompt_lens.to(device=device, dtype=torch.int32).contiguous()
    seq_lens = _seq_lens(input_ids, attention_mask).to(torch.int32).contiguous()
    n_chunks = num_chunks(prompt_lens.long(), seq_lens.long(), chunk_size)
    max_chunks = int(n_chunks.max().item()) if batch else 0
    if max_chunks > _MAX_CHUNKS:
        raise ValueError(f"chunk_mask triton backend handles up to {_MAX_CHUNKS} chunks per row, got {max_chunks}; "
                         "use backend='eager' (same draw with seed=...) or a larger chunk_size")
    out_ids = torch.empty_like(ids)
    labels = torch.empty_like(ids)
    flags = torch.zeros(batch, max_chunks, dtype=torch.int8, device=device)
    rates = torch.zeros(batch, max_chunks, dtype=torch.float32, device=device)
    chunk_index = torch.full((batch, max(max_chunks, 1)), -1, dtype=torch.int64, device=device)
    positions = torch.zeros(batch, max(max_chunks, 1) * chunk_size, dtype=torch.int64, device=device)
    counts = torch.zeros(batch, dtype=torch.int32, device=device)
    if batch:
        kernel(_chunk_mask_kernel)[(batch,)](
            ids, out_ids, labels, flags, rates, chunk_index, positions, counts, prompt_lens, seq_lens,
            seed_key(seed), mask_threshold(mask_prob), mask_threshold(t_min), mask_threshold(t_max), mask_id,
            seq_len, max_chunks, chunk_size,
            BLOCK_N=max(16, next_power_of_2(max_chunks)), BLOCK_L=_MASK_BLOCK_L, num_warps=4, num_stages=1)
    width = int(counts.max().item()) if batch else 0
    layout = CompactLayout(chunk_index[:, :width].contiguous(), positions[:, :width * chunk_size].contiguous())
    return ChunkMask(out_ids.to(input_ids.dtype), labels, flags.bool(), rates), layout


def chunk_mask_counter_cpp(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, seed: int, chunk_size: int = 16,
                           mask_prob: float = 0.3, mask_id: int, attention_mask: torch.Tensor | None = None,
                           token_rate: tuple[float, float] = (1.0, 1.0)) -> tuple[ChunkMask, CompactLayout]:
    """`chunk_mask_counter` (same draws, bit for bit) on the C++ kernel (csrc/chunk_mask.cpp); the
    reference itself when the extension is unavailable."""
    ext = _cpp.load()
    if ext is None:
        return chunk_mask_counter(input_ids, prompt_lens, seed=seed, chunk_size=chunk_size, mask_prob=mask_prob,
                                  mask_id=mask_id, attention_mask=attention_mask, token_rate=token_rate)
    t_min, t_max = check_mask_args(chunk_size, mask_prob, token_rate)
    seq_lens = _seq_lens(input_ids, attention_mask)
    ids, labels, flags, chunk_index, positions, rate = ext.chunk_mask_counter(
        input_ids.long(), prompt_lens.long(), seq_lens.long(), seed_key(seed), mask_threshold(mask_prob),
        mask_threshold(t_min), mask_threshold(t_max), int(mask_id), chunk_size)
    return ChunkMask(ids.to(input_ids.dtype), labels, flags, rate), CompactLayout(chunk_index, positions)


register_cpp("chunk_mask")


def chunk_mask(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, chunk_size: int = 16, mask_prob: float = 0.3,
               mask_id: int, generator: torch.Generator | None = None, backend: str = "auto",
               attention_mask: torch.Tensor | None = None, chunk_masked: torch.Tensor | None = None,
               seed: int | None = None, token_rate: tuple[float, float] = (1.0, 1.0), return_layout: bool = False
               ) -> ChunkMask | tuple[ChunkMask, CompactLayout]:
    """Mask response chunks (docs/design.md §1.4): whole chunks, or tokens inside them at a per-chunk rate
    t ~ U(*token_rate) (bd3). See `chunk_mask_eager` for shapes. With `return_layout`, also the
    draw's `CompactLayout` (masks.py), which the fused backends compute in the same pass.

    backend: "eager" | "cpp" | "triton" | "auto" ("auto": triton on CUDA, else eager / cpp).
    The eager default draws from `generator` (torch.rand). `seed`, and every fused backend, use the
    counter-based draw of `chunk_mask_counter` instead; a fused backend without `seed` takes one
    64-bit seed from `generator` (reproducible under a seeded generator). `chunk_masked` overrides
    the draw and always runs the eager reference.
    """
    resolved = resolve_backend("chunk_mask", backend, input_ids.device)
    if chunk_masked is not None or (resolved == "eager" and seed is None):
        drawn = chunk_mask_eager(input_ids, prompt_lens, chunk_size=chunk_size, mask_prob=mask_prob, mask_id=mask_id,
                                 generator=generator, attention_mask=attention_mask, chunk_masked=chunk_masked,
                                 token_rate=token_rate)
        return (drawn, compact_layout(drawn.chunk_masked, prompt_lens, chunk_size)) if return_layout else drawn
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())
    counter = {"triton": chunk_mask_counter_triton, "cpp": chunk_mask_counter_cpp}.get(resolved, chunk_mask_counter)
    drawn, layout = counter(input_ids, prompt_lens, seed=seed, chunk_size=chunk_size, mask_prob=mask_prob,
                            mask_id=mask_id, attention_mask=attention_mask, token_rate=token_rate)
    return (drawn, layout) if return_layout else drawn


def aot_specs() -> list[dict]:
    """The masking kernel configs the dispatcher can launch (BLOCK_N grows with the chunk count)."""
    fn = kernel(_chunk_mask_kernel)
    signature = {"IDS": "*i64", "OUT_IDS": "*i64", "LABELS": "*i64", "CHUNK_MASKED": "*i8", "CHUNK_RATE": "*fp32",
                 "CHUNK_INDEX": "*i64", "POSITIONS": "*i64", "COUNTS": "*i32", "PL": "*i32", "SL": "*i32",
                 "key": "i64", "threshold": "i32", "lo": "i32", "hi": "i32", "mask_id": "i32", "L": "i32",
                 "N": "i32", "C": "i32"}
    return [dict(name=f"chunk_mask.kernel[N{block_n}]", fn=fn, signature=signature,
                 constexprs=dict(BLOCK_N=block_n, BLOCK_L=_MASK_BLOCK_L), num_warps=4, num_stages=1)
            for block_n in (16, 32, 64, 128, 256, 512, _MAX_CHUNKS)]


def diffusion_mask(input_ids: torch.Tensor, src_mask: torch.Tensor | None, *, mask_id: int, eps: float = 1e-3,
                   generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA forward process: per row t ~ U(0,1), p = (1 - eps) t + eps, mask each maskable token w.p. p.

    input_ids: int64 [B, L]; src_mask: bool [B, L] (True = instruction, never masked) or None
    (every non-pad token is maskable); attention_mask: optional [B, L] (0 = padding, never masked).
    Returns (noisy_ids int64 [B, L], masked bool [B, L], p_mask float32 [B]).
    """
    _check_probability("eps", eps)
    batch, seq_len = input_ids.shape
    maskable = torch.ones_like(input_ids, dtype=torch.bool)
    if src_mask is not None:
        maskable &= ~src_mask.to(torch.bool)
    if attention_mask is not None:
        maskable &= attention_mask.to(torch.bool)
    t = torch.rand(batch, generator=generator, device=input_ids.device)
    p_mask = (1.0 - eps) * t + eps
    u = torch.rand(batch, seq_len, generator=generator, device=input_ids.device)
    masked = (u < p_mask[:, None]) & maskable
    noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    return noisy, masked, p_mask
