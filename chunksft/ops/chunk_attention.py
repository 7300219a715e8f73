"""Chunk attention: scaled dot-product attention under a chunk layout of `masks.py`.

The eager reference materialises the dense mask from `chunk_attention_mask` and calls SDPA; it is
the specification the fused (C++ / Triton) backends are tested against.

Layouts (masks.py): "bd3", "block_causal", "bidirectional" and "compact", the bd3 layout with the
x_t stream reduced to its masked chunks: the sequence is `[masked chunks of x_t ; x_0]`, S = NM*C + L,
where `chunk_index` int [B, NM] lists each row's masked chunk ids in increasing order, padded with
-1 at the end. Every compact row equals the bd3 row of the same query (`chunk_attention_compact_eager`);
padding slots attend nothing and return 0.

Triton path (FlashAttention-2 style): the forward and the dQ kernel own a query tile, the dK/dV kernel
owns a key tile and loops over the query heads of its GQA group. No mask is stored: from prompt_lens /
chunk_size / seq_lens (and chunk_index for "compact") each query row derives the keys `masks.visible`
grants it, which in every layout are two intervals (its own chunk in x_t, a prefix of x_0, both cut at
seq_lens), so a tile's mask is four integer compares per element. The tiles a program visits come from
the same block ids: per query tile the union of its rows' intervals is one interval in x_t plus one
prefix of x_0; per key tile the queries that see it are one own-chunk interval and one suffix of x_t
plus one suffix of x_0. Every key (query) in those unions is visible to some query (key) of the tile,
so the visited tiles are exactly the tiles with at least one visible pair
(`tests/ops/test_chunk_attention.py::test_tile_schedule_is_exactly_the_visible_tiles`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from chunksft.ops import _cpp
from chunksft.ops._backend import register_cpp, resolve_backend
from chunksft.ops._triton import kernel, lazy_jit, next_power_of_2
from chunksft.ops.masks import (LAYOUT_CODES, LAYOUTS, chunk_attention_mask, compact_attention_mask,
                                 compact_positions)


def chunk_attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                          chunk_size: int = 16, layout: str = "bd3", seq_lens: torch.Tensor | None = None,
                          scale: float | None = None) -> torch.Tensor:
    """Reference chunk attention.

    q: [B, H, S, D]; k, v: [B, Hkv, S, D] with H % Hkv == 0 (GQA); S = 2L for "bd3", L otherwise.
    prompt_lens: int [B]; seq_lens: optional int [B] valid tokens per stream (right padding).
    Returns [B, H, S, D] in q's dtype.
    """
    seq_len = q.shape[2] // 2 if layout == "bd3" else q.shape[2]
    mask = chunk_attention_mask(prompt_lens, seq_len, chunk_size=chunk_size, layout=layout, seq_lens=seq_lens)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None].to(q.device), scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


# ----------------------------------------------------------------------------------------------
# Compact layout, defined through the bd3 layout
# ----------------------------------------------------------------------------------------------

def chunk_attention_compact_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                                  chunk_index: torch.Tensor, chunk_size: int = 16,
                                  seq_lens: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Reference of the compact layout: scatter into bd3, run the bd3 reference, gather the rows back.

    q: [B, H, NM*C + L, D]; k, v: [B, Hkv, NM*C + L, D]; chunk_index int [B, NM]. Returns [B, H, S, D]
    (padding slots 0). x_t positions that are not compacted are zero in the scattered bd3 inputs;
    they are invisible to every compacted query, so their content does not matter.
    """
    n_slots = chunk_index.shape[1] * chunk_size
    seq_len = q.shape[2] - n_slots
    pos, real = compact_positions(chunk_index, prompt_lens, chunk_size, seq_len)
    rows, slots = real.nonzero(as_tuple=True)
    target = pos[rows, slots]

    def to_bd3(x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [B, S, H, D]: the index_put below addresses (row, position)
        noisy = x.new_zeros(x.shape[0], seq_len, *x.shape[2:]).index_put((rows, target), x[rows, slots])
        return torch.cat([noisy, x[:, n_slots:]], dim=1).transpose(1, 2)

    out = chunk_attention_eager(to_bd3(q), to_bd3(k), to_bd3(v), prompt_lens=prompt_lens, chunk_size=chunk_size,
                                layout="bd3", seq_lens=seq_lens, scale=scale).transpose(1, 2)
    noisy = out.new_zeros(out.shape[0], n_slots, *out.shape[2:]).index_put((rows, slots), out[rows, target])
    return torch.cat([noisy, out[:, seq_len:]], dim=1).transpose(1, 2)


def chunk_attention_compact_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                                 chunk_index: torch.Tensor, chunk_size: int = 16,
                                 seq_lens: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """The compact layout in PyTorch without the bd3 detour (the eager backend's path; same contract
    as `chunk_attention_compact_eager`).

    The x_0 rows see only x_0 keys, so they run one SDPA over [L, L]; the NM*C compacted x_t rows see
    a prefix of x_0 and their own chunk, so they run one SDPA over [NM*C, NM*C + L]. Score entries:
    L^2 + NM*C*(NM*C + L) instead of the (2L)^2 of the scattered bd3 reference. Both masks are cut
    from `compact_attention_mask`; padding slots return 0.
    """
    n_slots = chunk_index.shape[1] * chunk_size
    seq_len = q.shape[2] - n_slots
    mask = compact_attention_mask(prompt_lens, seq_len, chunk_index, chunk_size=chunk_size,
                                  seq_lens=seq_lens).to(q.device)[:, None]
    gqa = k.shape[1] != q.shape[1]
    clean = F.scaled_dot_product_attention(q[:, :, n_slots:], k[:, :, n_slots:], v[:, :, n_slots:],
                                           attn_mask=mask[:, :, n_slots:, n_slots:], scale=scale, enable_gqa=gqa)
    noisy_mask = mask[:, :, :n_slots]
    noisy = F.scaled_dot_product_attention(q[:, :, :n_slots], k, v, attn_mask=noisy_mask, scale=scale,
                                           enable_gqa=gqa)
    noisy = torch.where(noisy_mask.any(dim=-1, keepdim=True), noisy, torch.zeros_like(noisy))
    return torch.cat([noisy, clean], dim=2)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
# Layout and shape scalars are never value-specialised (Triton would turn e.g. LAYOUT == 1 or GROUP == 1
# into constants), so the kernels compiled at run time are the ones the AOT spill test compiles.
_SCALARS = ["H", "GROUP", "S", "L", "T", "NM", "C", "LAYOUT", "D", "stride_cib"]


@lazy_jit
def _position_meta(pos, in_range, P, L, T, C, CI_row, LAYOUT):
    """Block id, clean-stream flag, key validity (before seq_lens) and query validity of positions.

    pos: global positions (x_t part first: [0, T), then x_0: [T, T + L)); T = 0 for single-stream
    layouts, L for bd3, NM*C for compact. Compact x_t slots read their chunk id from CI_row.
    Returns (block, clean, token position in its stream, real).
    """
    clean = pos >= T
    compact_noisy = in_range & (pos < T) & ((pos * 0 + LAYOUT) == 3)  # tensor compare: the interpreter mis-types scalar-bool masks
    chunk = tl.load(CI_row + pos // C, mask=compact_noisy, other=-1)
    local = tl.where(clean, pos - T, pos)
    block = tl.where(local < P, -1, (local - P) // C)
    block = tl.where(compact_noisy, chunk, block)
    token = tl.where(compact_noisy, P + chunk * C + pos % C, local)
    real = in_range & ((~compact_noisy) | (chunk >= 0))
    return block, clean, token, real


@lazy_jit
def _row_keys(pos, in_range, P, SL, L, T, C, CI_row, LAYOUT):
    """The keys each query row sees, as two intervals of global key positions.

    Every layout's visible set is the query's own chunk in x_t ([own_lo, own_hi), empty unless the
    query is an x_t chunk query) plus a prefix of x_0 ([T, clean_hi)), both cut at seq_lens; this is
    `masks.visible` (& key validity) rewritten per row, so a tile's mask costs four compares per element.
    """
    q_block, q_clean, q_token, q_real = _position_meta(pos, in_range, P, L, T, C, CI_row, LAYOUT)
    clean_end = tl.where(q_clean, P + (q_block + 1) * C, P + tl.maximum(q_block, 0) * C)
    clean_end = tl.where(LAYOUT == 0, SL, tl.minimum(clean_end, SL))
    clean_hi = tl.where(q_real, T + clean_end, 0)
    chunk_start = P + q_block * C
    own_lo = tl.where(LAYOUT == 3, (pos // C) * C, chunk_start)
    own_len = tl.minimum(tl.maximum(SL - chunk_start, 0), C)
    has_own = q_real & (~q_clean) & (q_block >= 0) & (own_len > 0)
    own_lo = tl.where(has_own, own_lo, 0)
    own_hi = tl.where(has_own, own_lo + own_len, 0)
    return own_lo, own_hi, clean_hi


@lazy_jit
def _key_tiles(own_lo, own_hi, clean_hi, T, BLOCK_N: tl.constexpr):
    """Key tiles a query tile must visit: [n_lo, n_hi) then [c_lo, c_hi).

    The union of the rows' own-chunk intervals is one interval of x_t (the rows' chunks are
    consecutive), the union of their x_0 prefixes is the longest prefix. The x_0 range starts after
    the x_t range so a tile straddling the stream boundary is visited once.
    """
    has_own = own_hi > own_lo
    noisy_lo = tl.min(tl.where(has_own, own_lo, 1 << 30), axis=0)
    noisy_hi = tl.max(own_hi, axis=0)
    last = tl.max(clean_hi, axis=0)
    has_noisy = noisy_hi > noisy_lo
    n_lo = tl.where(has_noisy, noisy_lo // BLOCK_N, 0)
    n_hi = tl.where(has_noisy, (noisy_hi + BLOCK_N - 1) // BLOCK_N, 0)
    c_lo = tl.maximum(T // BLOCK_N, n_hi)
    c_hi = tl.where(last > T, (last + BLOCK_N - 1) // BLOCK_N, 0)
    return n_lo, n_hi, c_lo, c_hi


@lazy_jit
def _tile_mask(q_own_lo, q_own_hi, q_clean_hi, k_pos, T):
    """Visibility of a tile from the query rows' intervals (any broadcastable orientation)."""
    return ((k_pos >= q_own_lo) & (k_pos < q_own_hi)) | ((k_pos >= T) & (k_pos < q_clean_hi))


@lazy_jit
def _query_tiles(k_block, k_clean, k_valid, pos, P, L, T, C, NM, CI_row, LAYOUT, BLOCK_M: tl.constexpr):
    """Query tiles a key tile must visit, as three disjoint increasing ranges.

    A valid x_0 key of block kb is seen by the x_0 queries of blocks >= kb (a suffix of x_0) and by the
    x_t queries of chunks > kb (all of x_t for prompt keys; a suffix of x_t). A valid x_t key of chunk j
    is seen by the x_t queries of chunk j. Over the tile: the smallest x_0 key block gives both suffixes,
    the x_t keys give one own-chunk interval, which is merged with the x_t suffix when they touch.
    """
    clean_keys = k_valid & k_clean
    kb_min = tl.min(tl.where(clean_keys, k_block, 1 << 30), axis=0)
    has_clean = kb_min < (1 << 30)
    clean_start = tl.where((LAYOUT == 0) | (kb_min < 0), 0, P + kb_min * C)
    # Compact: x_t queries of chunks > kb_min are the slots after the chunks <= kb_min.
    n_before = kb_min * 0
    n_real = kb_min * 0
    n_iter = tl.where(LAYOUT == 3, (NM + 63) // 64, 0)
    for i in range(0, n_iter):
        offs = i * 64 + tl.arange(0, 64)
        chunk = tl.load(CI_row + offs, mask=offs < NM, other=-1)
        n_before += tl.sum(((chunk >= 0) & (chunk <= kb_min)).to(tl.int32), axis=0)
        n_real += tl.sum((chunk >= 0).to(tl.int32), axis=0)
    noisy_end = tl.where(LAYOUT == 3, n_real * C, L)
    suffix_lo = tl.where(kb_min < 0, 0, tl.where(LAYOUT == 3, n_before * C, P + (kb_min + 1) * C))
    has_suffix = has_clean & (LAYOUT >= 2) & (suffix_lo < noisy_end)
    noisy_keys = k_valid & (~k_clean) & (k_block >= 0)
    own_lo = tl.where(LAYOUT == 3, (pos // C) * C, P + k_block * C)
    own_hi = tl.where(LAYOUT == 3, own_lo + C, tl.minimum(own_lo + C, L))
    a_lo = tl.min(tl.where(noisy_keys, own_lo, 1 << 30), axis=0)
    a_hi = tl.max(tl.where(noisy_keys, own_hi, 0), axis=0)
    has_own = a_hi > a_lo
    at0 = a_lo // BLOCK_M
    at1 = (a_hi + BLOCK_M - 1) // BLOCK_M
    bt0 = suffix_lo // BLOCK_M
    bt1 = (noisy_end + BLOCK_M - 1) // BLOCK_M
    # The own-chunk interval lies inside x_t, the suffix ends x_t: they overlap or the former comes first.
    merge = has_own & has_suffix & (at1 >= bt0)
    split = has_own & has_suffix & (at1 < bt0)
    r1_lo = tl.where(merge, tl.minimum(at0, bt0), tl.where(has_own, at0, tl.where(has_suffix, bt0, 0)))
    r1_hi = tl.where(merge, tl.maximum(at1, bt1), tl.where(has_own, at1, tl.where(has_suffix, bt1, 0)))
    r2_lo = tl.where(split, bt0, 0)
    r2_hi = tl.where(split, bt1, 0)
    r3_lo = tl.maximum((T + clean_start) // BLOCK_M, tl.maximum(r1_hi, r2_hi))
    r3_hi = tl.where(has_clean, (T + L + BLOCK_M - 1) // BLOCK_M, 0)
    return r1_lo, r1_hi, r2_lo, r2_hi, r3_lo, r3_hi


@lazy_jit
def _fwd_tile(acc, m_i, l_i, q, own_lo, own_hi, clean_hi, kt, K_head, V_head, stride_ks, stride_vs, S, T, D,
              qk_scale, REC_row, RECORD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              PRECISION: tl.constexpr):
    offs_n = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < D)
    k = tl.load(K_head + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V_head + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    vis = _tile_mask(own_lo[:, None], own_hi[:, None], clean_hi[:, None], offs_n[None, :], T)
    s = tl.where(vis, s, float("-inf"))
    # m_i starts finite (-1e30), so fully masked rows give exp2(-inf) = 0, never inf - inf.
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    if RECORD:
        tl.atomic_add(REC_row + kt, 1)
    return acc, m_new, l_i


@lazy_jit(do_not_specialize=_SCALARS + ["N_KT"])
def _chunk_attn_fwd(Q, K, V, O, LSE, PL, SL_ptr, CI, REC,
                    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                    stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os, stride_cib,
                    H, GROUP, S, L, T, NM, C, LAYOUT, D, qk_scale, N_KT,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    PRECISION: tl.constexpr, RECORD: tl.constexpr):
    """One (query tile, batch * head) per program. O [B, H, S, D]; LSE fp32 [B, H, S] in log2 units
    (log2-sum-exp2 of the scaled scores; rows that see nothing store 0 and are masked in backward)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    P = tl.load(PL + b)
    SL = tl.load(SL_ptr + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < S
    qd_mask = in_m[:, None] & (offs_d[None, :] < D)
    own_lo, own_hi, clean_hi = _row_keys(offs_m, in_m, P, SL, L, T, C, CI + b * stride_cib, LAYOUT)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=qd_mask, other=0.0)
    K_head = K + b * stride_kb + (h // GROUP) * stride_kh
    V_head = V + b * stride_vb + (h // GROUP) * stride_vh
    REC_row = REC + (b * tl.num_programs(0) + pid_m) * N_KT
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_lo, n_hi, c_lo, c_hi = _key_tiles(own_lo, own_hi, clean_hi, T, BLOCK_N)
    n_noisy = n_hi - n_lo
    # One loop over both ranges: separate loops each get their own pipelined copy and spill.
    for i in range(0, n_noisy + tl.maximum(c_hi - c_lo, 0)):
        kt = tl.where(i < n_noisy, n_lo + i, c_lo + i - n_noisy)
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, own_lo, own_hi, clean_hi, kt, K_head, V_head, stride_ks,
                                  stride_vs, S, T, D, qk_scale, REC_row, RECORD, BLOCK_N, BLOCK_D, PRECISION)
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=qd_mask)
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), 0.0)
    tl.store(LSE + pid_bh.to(tl.int64) * S + offs_m, lse, mask=in_m)


@lazy_jit
def _dq_tile(dq, q, do, lse, delta, own_lo, own_hi, clean_hi, kt, K_head, V_head, stride_ks, stride_vs, S, T, D,
             qk_scale, REC_row, RECORD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             PRECISION: tl.constexpr):
    offs_n = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < S) & (offs_d[None, :] < D)
    k = tl.load(K_head + offs_n[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V_head + offs_n[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    vis = _tile_mask(own_lo[:, None], own_hi[:, None], clean_hi[:, None], offs_n[None, :], T)
    p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    if RECORD:
        tl.atomic_add(REC_row + kt, 1)
    return dq


@lazy_jit(do_not_specialize=_SCALARS + ["N_KT"])
def _chunk_attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, PL, SL_ptr, CI, REC,
                       stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                       stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
                       stride_dqb, stride_dqh, stride_dqs, stride_cib,
                       H, GROUP, S, L, T, NM, C, LAYOUT, D, qk_scale, sm_scale, N_KT,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       PRECISION: tl.constexpr, RECORD: tl.constexpr):
    """dQ of one (query tile, batch * head): same key-tile schedule as the forward."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    P = tl.load(PL + b)
    SL = tl.load(SL_ptr + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < S
    qd_mask = in_m[:, None] & (offs_d[None, :] < D)
    own_lo, own_hi, clean_hi = _row_keys(offs_m, in_m, P, SL, L, T, C, CI + b * stride_cib, LAYOUT)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=qd_mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :],
                 mask=qd_mask, other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * S + offs_m, mask=in_m, other=0.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S + offs_m, mask=in_m, other=0.0)
    K_head = K + b * stride_kb + (h // GROUP) * stride_kh
    V_head = V + b * stride_vb + (h // GROUP) * stride_vh
    REC_row = REC + (b * tl.num_programs(0) + pid_m) * N_KT
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_lo, n_hi, c_lo, c_hi = _key_tiles(own_lo, own_hi, clean_hi, T, BLOCK_N)
    n_noisy = n_hi - n_lo
    for i in range(0, n_noisy + tl.maximum(c_hi - c_lo, 0)):
        kt = tl.where(i < n_noisy, n_lo + i, c_lo + i - n_noisy)
        dq = _dq_tile(dq, q, do, lse, delta, own_lo, own_hi, clean_hi, kt, K_head, V_head, stride_ks, stride_vs,
                      S, T, D, qk_scale, REC_row, RECORD, BLOCK_N, BLOCK_D, PRECISION)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=qd_mask)


@lazy_jit
def _dkdv_tile(dk, dv, k, v, offs_n, qt, Q_head, DO_head, LSE_head, DELTA_head, stride_qs, stride_dos,
               P, SL, L, T, C, CI_row, LAYOUT, S, D, qk_scale, REC_col, N_KT,
               RECORD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    offs_m = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < S
    qd_mask = in_m[:, None] & (offs_d[None, :] < D)
    own_lo, own_hi, clean_hi = _row_keys(offs_m, in_m, P, SL, L, T, C, CI_row, LAYOUT)
    q = tl.load(Q_head + offs_m[:, None] * stride_qs + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO_head + offs_m[:, None] * stride_dos + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE_head + offs_m, mask=in_m, other=0.0)
    delta = tl.load(DELTA_head + offs_m, mask=in_m, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
    vis = _tile_mask(own_lo[None, :], own_hi[None, :], clean_hi[None, :], offs_n[:, None], T)
    p_t = tl.where(vis, tl.exp2(s_t - lse[None, :]), 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    if RECORD:
        tl.atomic_add(REC_col + qt * N_KT, 1)
    return dk, dv


@lazy_jit(do_not_specialize=_SCALARS + ["HKV", "N_QT"])
def _chunk_attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, PL, SL_ptr, CI, REC,
                         stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
                         stride_vb, stride_vh, stride_vs, stride_dob, stride_doh, stride_dos,
                         stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs, stride_cib,
                         H, HKV, GROUP, S, L, T, NM, C, LAYOUT, D, qk_scale, sm_scale, N_QT,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         PRECISION: tl.constexpr, RECORD: tl.constexpr):
    """dK, dV of one (key tile, batch * kv head), summed over the GROUP query heads sharing it (no atomics)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = (pid_bh % HKV).to(tl.int64)
    P = tl.load(PL + b)
    SL = tl.load(SL_ptr + b)
    CI_row = CI + b * stride_cib
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_n = offs_n < S
    kd_mask = in_n[:, None] & (offs_d[None, :] < D)
    k_block, k_clean, k_token, k_real = _position_meta(offs_n, in_n, P, L, T, C, CI_row, LAYOUT)
    r1_lo, r1_hi, r2_lo, r2_hi, r3_lo, r3_hi = _query_tiles(k_block, k_clean, k_real & (k_token < SL), offs_n, P,
                                                            L, T, C, NM, CI_row, LAYOUT, BLOCK_M)
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :],
                mask=kd_mask, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :],
                mask=kd_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    REC_col = REC + b * N_QT * tl.num_programs(0) + pid_n
    n1 = r1_hi - r1_lo
    n12 = n1 + (r2_hi - r2_lo)
    n_tiles = n12 + tl.maximum(r3_hi - r3_lo, 0)
    # One flat loop over (query head of the group, query tile): separate loops each get their own
    # pipelined copy of the body and spill.
    for i in range(0, GROUP * n_tiles):
        g = i // n_tiles
        j = i - g * n_tiles
        qt = tl.where(j < n1, r1_lo + j, tl.where(j < n12, r2_lo + j - n1, r3_lo + j - n12))
        h = hk * GROUP + g
        dk, dv = _dkdv_tile(dk, dv, k, v, offs_n, qt, Q + b * stride_qb + h * stride_qh,
                            DO + b * stride_dob + h * stride_doh, LSE + (b * H + h) * S, DELTA + (b * H + h) * S,
                            stride_qs, stride_dos, P, SL, L, T, C, CI_row, LAYOUT, S, D, qk_scale, REC_col,
                            tl.num_programs(0), RECORD, BLOCK_M, BLOCK_D, PRECISION)
    tl.store(DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvs + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kd_mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def kernel_configs(head_dim: int, dtype: torch.dtype, device_type: str) -> dict[str, KernelConfig]:
    """The launch config of each kernel; the AOT spill test compiles every entry this can return.

    Chosen with `aot_specs` + cuobjdump so that no config spills on sm_80 or sm_90 (see
    tests/ops/test_aot_compile.py). The interpreter uses 16-wide tiles so that small test shapes
    still span many tiles.
    """
    if device_type != "cuda":
        tiny = KernelConfig(16, 16, 1, 1)
        return {"fwd": tiny, "bwd_dq": tiny, "bwd_dkdv": tiny}
    block_d = max(16, next_power_of_2(head_dim))
    if dtype == torch.float32:
        # fp32 products are exact FMAs (no tensor cores), held in registers: 8 warps share them.
        fwd = dq = KernelConfig(64 if block_d <= 64 else 32, 32, 8, 2)
        dkdv = KernelConfig(16, 32, 8, 2)
    elif block_d <= 64:
        fwd, dq, dkdv = KernelConfig(64, 64, 4, 2), KernelConfig(64, 64, 4, 2), KernelConfig(32, 64, 4, 2)
    else:
        fwd, dq, dkdv = KernelConfig(64, 64, 8, 2), KernelConfig(64, 32, 8, 2), KernelConfig(32, 32, 8, 2)
    return {"fwd": fwd, "bwd_dq": dq, "bwd_dkdv": dkdv}


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep full fp32 products, like the eager reference (no silent TF32).
    return "ieee" if dtype == torch.float32 else "tf32"


@dataclass
class _KernelArgs:
    """Per-call layout metadata in the form the kernels read (int32 for Triton, int64 for C++)."""

    code: int
    prompt_lens: torch.Tensor  # int [B]
    seq_lens: torch.Tensor     # int [B]
    chunk_index: torch.Tensor  # int [B, NM] (a [B, 1] dummy of -1 outside "compact" or when NM = 0)
    seq_len: int               # L
    noisy_len: int             # T: length of the x_t part
    n_slots: int               # NM
    chunk_size: int


def _kernel_args(q: torch.Tensor, prompt_lens: torch.Tensor, chunk_size: int, layout: str,
                 seq_lens: torch.Tensor | None, chunk_index: torch.Tensor | None,
                 index_dtype: torch.dtype = torch.int32) -> _KernelArgs:
    batch, _, total, _ = q.shape
    as_index = dict(device=q.device, dtype=index_dtype)
    if layout == "compact":
        n_slots = chunk_index.shape[1]
        noisy_len = n_slots * chunk_size
        seq_len = total - noisy_len
        index = chunk_index.to(**as_index).contiguous()
        if n_slots == 0:
            index = torch.full((batch, 1), -1, **as_index)
    else:
        n_slots = 0
        seq_len = total // 2 if layout == "bd3" else total
        noisy_len = seq_len if layout == "bd3" else 0
        index = torch.full((batch, 1), -1, **as_index)
    if seq_lens is None:
        lens = torch.full((batch,), seq_len, **as_index)
    else:
        lens = seq_lens.to(**as_index).clamp(0, seq_len)
    return _KernelArgs(LAYOUT_CODES[layout], prompt_lens.to(**as_index).contiguous(), lens.contiguous(), index,
                       seq_len, noisy_len, n_slots, chunk_size)


def _rows_last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _attn_forward(q, k, v, meta: _KernelArgs, scale: float, record: torch.Tensor | None = None):
    """-> (o [B, H, S, D] in q.dtype, lse fp32 [B, H, S] log2 units)."""
    batch, heads, total, head_dim = q.shape
    cfg = kernel_configs(head_dim, q.dtype, q.device.type)["fwd"]
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, total, dtype=torch.float32, device=q.device)
    n_qt = _cdiv(total, cfg.block_m)
    n_kt = _cdiv(total, cfg.block_n)
    rec = record if record is not None else lse
    kernel(_chunk_attn_fwd)[(n_qt, batch * heads)](
        q, k, v, o, lse, meta.prompt_lens, meta.seq_lens, meta.chunk_index, rec,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], meta.chunk_index.stride(0),
        heads, heads // k.shape[1], total, meta.seq_len, meta.noisy_len, meta.n_slots, meta.chunk_size,
        meta.code, head_dim, scale * _LOG2E, n_kt,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=max(16, next_power_of_2(head_dim)),
        PRECISION=_precision(q.dtype), RECORD=record is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return o, lse


def _attn_backward(do, q, k, v, o, lse, meta: _KernelArgs, scale: float,
                   record_dq: torch.Tensor | None = None, record_dkdv: torch.Tensor | None = None):
    """-> (dq, dk, dv) in the dtypes of q, k, v."""
    batch, heads, total, head_dim = q.shape
    kv_heads = k.shape[1]
    cfgs = kernel_configs(head_dim, q.dtype, q.device.type)
    block_d = max(16, next_power_of_2(head_dim))
    # delta_i = sum_d dO_id O_id: the rowwise term of the softmax backward (memory bound, done once).
    delta = (do.float() * o.float()).sum(-1).contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    common = dict(PRECISION=_precision(q.dtype), BLOCK_D=block_d)
    cfg = cfgs["bwd_dq"]
    n_kt = _cdiv(total, cfg.block_n)
    kernel(_chunk_attn_bwd_dq)[(_cdiv(total, cfg.block_m), batch * heads)](
        q, k, v, do, dq, lse, delta, meta.prompt_lens, meta.seq_lens, meta.chunk_index,
        record_dq if record_dq is not None else delta,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        meta.chunk_index.stride(0), heads, heads // kv_heads, total, meta.seq_len, meta.noisy_len, meta.n_slots,
        meta.chunk_size, meta.code, head_dim, scale * _LOG2E, scale, n_kt,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, RECORD=record_dq is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    cfg = cfgs["bwd_dkdv"]
    n_qt = _cdiv(total, cfg.block_m)
    kernel(_chunk_attn_bwd_dkdv)[(_cdiv(total, cfg.block_n), batch * kv_heads)](
        q, k, v, do, dk, dv, lse, delta, meta.prompt_lens, meta.seq_lens, meta.chunk_index,
        record_dkdv if record_dkdv is not None else delta,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        meta.chunk_index.stride(0), heads, kv_heads, heads // kv_heads, total, meta.seq_len, meta.noisy_len,
        meta.n_slots, meta.chunk_size, meta.code, head_dim, scale * _LOG2E, scale, n_qt,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, RECORD=record_dkdv is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    return dq, dk, dv


_TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def aot_specs() -> list[dict]:
    """Every (kernel, launch config) the CUDA dispatcher can pick, for the AOT spill test.

    Head dims 1-128 map to BLOCK_D in {16, 32, 64, 128}; one compiled kernel covers all layouts.
    """
    specs = []
    names = {"fwd": _chunk_attn_fwd, "bwd_dq": _chunk_attn_bwd_dq, "bwd_dkdv": _chunk_attn_bwd_dkdv}
    for dtype, ty in _TORCH_TO_TRITON.items():
        tensors = {"Q": ty, "K": ty, "V": ty, "O": ty, "DO": ty, "DQ": ty, "DK": ty, "DV": ty, "LSE": "fp32",
                   "DELTA": "fp32", "REC": "fp32", "PL": "i32", "SL_ptr": "i32", "CI": "i32"}
        for block_d in (16, 32, 64, 128):
            for name, cfg in kernel_configs(block_d, dtype, "cuda").items():
                fn = kernel(names[name])
                constexprs = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
                                  PRECISION=_precision(dtype), RECORD=False)
                signature = {arg: ("*" + tensors[arg] if arg in tensors else
                                   "fp32" if arg.endswith("scale") else "i32")
                             for arg in fn.arg_names if arg not in constexprs}
                specs.append(dict(name=f"chunk_attention.{name}[{ty},D{block_d}]", fn=fn, signature=signature,
                                  constexprs=constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return specs


class AttentionKernels(NamedTuple):
    """One backend's kernels for `ChunkAttentionFunction`.

    prepare(x) -> x as the kernels read it (unit stride in D; the C++ kernels also want fp32);
    forward(q, k, v, meta, scale) -> (o [B, H, S, D], lse fp32 [B, H, S]);
    backward(do, q, k, v, o, lse, meta, scale) -> (dq, dk, dv).
    """

    prepare: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class ChunkAttentionFunction(torch.autograd.Function):
    """Fused chunk attention on a backend's `AttentionKernels`; saves (q, k, v, o, lse) as the kernels
    read them and recomputes the probabilities in backward. Outputs and gradients come back in the
    dtypes of q, k, v."""

    @staticmethod
    def forward(ctx, q, k, v, kernels: AttentionKernels, meta: _KernelArgs, scale: float):
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        q, k, v = (kernels.prepare(x) for x in (q, k, v))
        o, lse = kernels.forward(q, k, v, meta, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.kernels, ctx.meta, ctx.scale = kernels, meta, scale
        return o.to(ctx.dtypes[0])

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        grads = ctx.kernels.backward(ctx.kernels.prepare(do), q, k, v, o, lse, ctx.meta, ctx.scale)
        return (*(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)), None, None, None)


TRITON_KERNELS = AttentionKernels(_rows_last_contiguous, _attn_forward, _attn_backward)


def chunk_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                           chunk_size: int = 16, layout: str = "bd3", seq_lens: torch.Tensor | None = None,
                           scale: float | None = None, chunk_index: torch.Tensor | None = None) -> torch.Tensor:
    """Fused Triton chunk attention (CUDA, or CPU under TRITON_INTERPRET=1). Shapes as in `chunk_attention`.

    Any dtype of fp32 / fp16 / bf16 (fp32 accumulation), head dim <= 128, q/k/v rows contiguous in D.
    """
    if q.shape[-1] > 128:
        raise ValueError(f"chunk_attention triton backend supports head dims up to 128, got {q.shape[-1]}")
    meta = _kernel_args(q, prompt_lens, chunk_size, layout, seq_lens, chunk_index)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return ChunkAttentionFunction.apply(q, k, v, TRITON_KERNELS, meta, scale)


# ----------------------------------------------------------------------------------------------
# C++ kernels (csrc/chunk_attention.cpp)
# ----------------------------------------------------------------------------------------------
def _fp32_rows(x: torch.Tensor) -> torch.Tensor:
    """fp32 with unit stride in the last dim (what the C++ kernels read); a no-op for fp32 rows."""
    x = x.float()
    return x if x.stride(-1) == 1 else x.contiguous()


def _cpp_args(meta: _KernelArgs) -> tuple:
    return (meta.prompt_lens, meta.seq_lens, meta.chunk_index, meta.code, meta.seq_len, meta.noisy_len,
            meta.chunk_size)


def _cpp_kernels(ext) -> AttentionKernels:
    """The C++ kernels compute in fp32: half-precision inputs are upcast once and the results cast back."""
    return AttentionKernels(
        _fp32_rows,
        lambda q, k, v, meta, scale: ext.chunk_attention_forward(q, k, v, *_cpp_args(meta), scale),
        lambda do, q, k, v, o, lse, meta, scale: ext.chunk_attention_backward(do, q, k, v, o, lse,
                                                                              *_cpp_args(meta), scale))


def chunk_attention_cpp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                        chunk_size: int = 16, layout: str = "bd3", seq_lens: torch.Tensor | None = None,
                        scale: float | None = None, chunk_index: torch.Tensor | None = None) -> torch.Tensor:
    """`chunk_attention` on the C++ kernels (CPU tensors, any float dtype); the eager reference when the
    extension is unavailable. Shapes as in the dispatcher."""
    ext = _cpp.load()
    if ext is None:
        if layout == "compact":
            return chunk_attention_compact_eager(q, k, v, prompt_lens=prompt_lens, chunk_index=chunk_index,
                                                 chunk_size=chunk_size, seq_lens=seq_lens, scale=scale)
        return chunk_attention_eager(q, k, v, prompt_lens=prompt_lens, chunk_size=chunk_size, layout=layout,
                                     seq_lens=seq_lens, scale=scale)
    if layout == "compact":  # validates the chunk ids (the kernels trust them)
        compact_positions(chunk_index, prompt_lens, chunk_size, q.shape[2] - chunk_index.shape[1] * chunk_size)
    meta = _kernel_args(q, prompt_lens, chunk_size, layout, seq_lens, chunk_index, index_dtype=torch.int64)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return ChunkAttentionFunction.apply(q, k, v, _cpp_kernels(ext), meta, scale)


register_cpp("chunk_attention")


def tile_schedule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                  chunk_size: int = 16, layout: str = "bd3", seq_lens: torch.Tensor | None = None,
                  chunk_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Tiles each Triton kernel visits, counted over heads: int32 [B, n_query_tiles, n_key_tiles] per kernel
    ("fwd", "bwd_dq", "bwd_dkdv"), in each kernel's own tile sizes (`kernel_configs`)."""
    meta = _kernel_args(q, prompt_lens, chunk_size, layout, seq_lens, chunk_index)
    batch, _, total, head_dim = q.shape
    cfgs = kernel_configs(head_dim, q.dtype, q.device.type)
    counts = {name: torch.zeros(batch, _cdiv(total, c.block_m), _cdiv(total, c.block_n),
                                dtype=torch.int32, device=q.device) for name, c in cfgs.items()}
    scale = head_dim ** -0.5
    o, lse = _attn_forward(q, k, v, meta, scale, record=counts["fwd"])
    _attn_backward(torch.ones_like(o), q, k, v, o, lse, meta, scale, record_dq=counts["bwd_dq"],
                   record_dkdv=counts["bwd_dkdv"])
    return counts


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                    chunk_size: int = 16, layout: str = "bd3", backend: str = "auto",
                    seq_lens: torch.Tensor | None = None, scale: float | None = None,
                    chunk_index: torch.Tensor | None = None) -> torch.Tensor:
    """Chunk attention (docs/design.md §1.5 layouts). Shapes as in `chunk_attention_eager`.

    layout: "bd3" | "block_causal" | "bidirectional" | "compact" (needs `chunk_index` int [B, NM]:
    increasing masked chunk ids per row, -1 padded; S = NM*C + L; see the module docstring).
    backend: "eager" | "cpp" | "triton" | "auto"; "auto" uses the fused kernel of the device when
    it is available and the eager reference otherwise (`_backend.resolve_backend`).
    """
    if layout not in LAYOUTS + ("compact",):
        raise ValueError(f"unknown attention layout {layout!r}; expected one of {LAYOUTS + ('compact',)}")
    if (layout == "compact") != (chunk_index is not None):
        raise ValueError("chunk_index is required by layout='compact' and only used by it")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    resolved = resolve_backend("chunk_attention", backend, q.device)
    if resolved == "triton":
        return chunk_attention_triton(q, k, v, prompt_lens=prompt_lens, chunk_size=chunk_size, layout=layout,
                                      seq_lens=seq_lens, scale=scale, chunk_index=chunk_index)
    if resolved == "cpp":
        return chunk_attention_cpp(q, k, v, prompt_lens=prompt_lens, chunk_size=chunk_size, layout=layout,
                                   seq_lens=seq_lens, scale=scale, chunk_index=chunk_index)
    if layout == "compact":
        return chunk_attention_compact_sdpa(q, k, v, prompt_lens=prompt_lens, chunk_index=chunk_index,
                                            chunk_size=chunk_size, seq_lens=seq_lens, scale=scale)
    return chunk_attention_eager(q, k, v, prompt_lens=prompt_lens, chunk_size=chunk_size, layout=layout,
                                 seq_lens=seq_lens, scale=scale)
