"""Chunk-level masking (chunk_sft) and token-level diffusion masking (pretrain / sft).

The eager functions here are the specification; the C++ and Triton kernels are tested against them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100


class ChunkMask(NamedTuple):
    input_ids: torch.Tensor     # int64 [B, L]: masked chunks replaced by mask_id
    labels: torch.Tensor        # int64 [B, L]: token id on masked positions, -100 elsewhere
    chunk_masked: torch.Tensor  # bool [B, N]: N = max number of response chunks in the batch


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}; set it to e.g. 0.3")


def num_chunks(prompt_lens: torch.Tensor, seq_lens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Whole response chunks per row: (seq_len - prompt_len) // C, clamped at 0.  -> int64 [B]"""
    return torch.clamp(torch.div(seq_lens - prompt_lens, chunk_size, rounding_mode="floor"), min=0).long()


def chunk_positions(prompt_lens: torch.Tensor, seq_len: int, chunk_size: int, n_chunks: int) -> torch.Tensor:
    """Token position of every (row, chunk, offset), clamped into [0, L).  -> int64 [B, N, C]"""
    offsets = torch.arange(n_chunks * chunk_size, device=prompt_lens.device).view(n_chunks, chunk_size)
    return (prompt_lens.long()[:, None, None] + offsets[None]).clamp_(max=max(seq_len - 1, 0))


def expand_chunk_mask(chunk_masked: torch.Tensor, prompt_lens: torch.Tensor, seq_len: int,
                      chunk_size: int) -> torch.Tensor:
    """Per-chunk flags [B, N] -> per-token flags bool [B, L] (prompt and tail positions False)."""
    rel = torch.arange(seq_len, device=prompt_lens.device)[None, :] - prompt_lens.long()[:, None]
    chunk = torch.div(rel, chunk_size, rounding_mode="floor")
    inside = (rel >= 0) & (chunk < chunk_masked.shape[1])
    gathered = torch.gather(chunk_masked, 1, chunk.clamp(0, max(chunk_masked.shape[1] - 1, 0)))
    return inside & gathered


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


def chunk_mask_eager(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, chunk_size: int = 16,
                     mask_prob: float = 0.3, mask_id: int, generator: torch.Generator | None = None,
                     attention_mask: torch.Tensor | None = None,
                     chunk_masked: torch.Tensor | None = None) -> ChunkMask:
    """Reference chunk masking.

    input_ids: int64 [B, L] (prompt, then EOS-padded response, then right padding);
    prompt_lens: int [B]; attention_mask: optional [B, L] (0 = right padding, never masked);
    chunk_masked: optional bool [B, N] to use instead of a random draw.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}; e.g. --chunk_size 16")
    _check_probability("mask_probability", mask_prob)
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
    token_masked = expand_chunk_mask(chunk_masked, prompt_lens, seq_len, chunk_size)
    noisy = torch.where(token_masked, torch.full_like(input_ids, mask_id), input_ids)
    labels = torch.where(token_masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return ChunkMask(noisy, labels, chunk_masked)


def chunk_mask(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, chunk_size: int = 16, mask_prob: float = 0.3,
               mask_id: int, generator: torch.Generator | None = None, backend: str = "auto",
               attention_mask: torch.Tensor | None = None, chunk_masked: torch.Tensor | None = None) -> ChunkMask:
    """Mask whole response chunks (DESIGN.md §1). See `chunk_mask_eager` for shapes.

    backend: "eager" | "cpp" | "triton" | "auto". Fused backends draw from a counter-based RNG
    and therefore do not consume `generator`; "auto" resolves to eager until they exist.
    """
    if backend not in ("auto", "eager", "cpp", "triton"):
        raise ValueError(f"unknown backend {backend!r}; expected auto, eager, cpp or triton")
    return chunk_mask_eager(input_ids, prompt_lens, chunk_size=chunk_size, mask_prob=mask_prob, mask_id=mask_id,
                            generator=generator, attention_mask=attention_mask, chunk_masked=chunk_masked)


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
