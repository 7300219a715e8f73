"""Chunk attention: scaled dot-product attention under a chunk layout of `masks.py`.

The eager reference materialises the dense mask from `chunk_attention_mask` and calls SDPA; it is
the specification the fused (C++ / Triton) backends are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from chunksft.ops.masks import chunk_attention_mask


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


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                    chunk_size: int = 16, layout: str = "bd3", backend: str = "auto",
                    seq_lens: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Chunk attention (DESIGN.md §1 layouts). Shapes as in `chunk_attention_eager`.

    backend: "eager" | "cpp" | "triton" | "auto"; "auto" uses the fused kernel of the device when
    it is available and the eager reference otherwise.
    """
    if backend not in ("auto", "eager", "cpp", "triton"):
        raise ValueError(f"unknown backend {backend!r}; expected auto, eager, cpp or triton")
    return chunk_attention_eager(q, k, v, prompt_lens=prompt_lens, chunk_size=chunk_size, layout=layout,
                                 seq_lens=seq_lens, scale=scale)
