"""Attention visibility of the chunk layouts, written once.

Every kernel (C++, Triton) derives its tile tables from the same per-position block ids
(`block_ids`) and is tested for equality against the dense mask built here.

Blocks: the prompt of row b is block -1; response chunk k (positions
`[prompt_len_b + k*C, prompt_len_b + (k+1)*C)`) is block k.

Layouts (q may attend k):
  * "bidirectional" (S = L): every key.
  * "block_causal"  (S = L): keys of blocks <= block(q).
  * "bd3"           (S = 2L; `[x_t ; x_0]`, x_t the noisy stream, x_0 the clean one):
      - q in x_0 at block b: x_0 keys of blocks <= b;
      - q in x_t at chunk i >= 0: x_0 keys of blocks < i and x_t keys of chunk i;
      - q in x_t in the prompt: x_0 prompt keys (so its output equals the clean stream's).
Keys at positions >= `seq_lens[b]` (right padding, per stream) are invisible in every layout.

"compact" is the bd3 layout with the x_t stream reduced to its masked chunks (`CompactLayout`): the
sequence is `[masked chunks of x_t ; x_0]`, S = NM*C + L; every compact row is the bd3 row of the same
query, so its visibility is `visible(..., "bd3")` evaluated on the compact positions. The chunk
masking kernels compute the layout with the draw (`chunk_mask(..., return_layout=True)`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

LAYOUTS = ("bd3", "block_causal", "bidirectional")
# Kernel codes of the layouts, "compact" (below) included: a runtime argument of the
# Triton and C++ attention kernels (one compiled kernel serves every layout). Mirrored once, by
# `enum Layout` in csrc/chunk_attention.cpp.
LAYOUT_CODES = {"bidirectional": 0, "block_causal": 1, "bd3": 2, "compact": 3}


def check_chunk_size(chunk_size: int) -> int:
    """`chunk_size` when it is a positive integer, else ValueError (one line with the fix)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}; e.g. --chunk_size 16")
    return chunk_size


def block_ids(prompt_lens: torch.Tensor, seq_len: int, chunk_size: int) -> torch.Tensor:
    """Block id of every position: -1 in the prompt, k in response chunk k.  -> int64 [B, L]"""
    check_chunk_size(chunk_size)
    pos = torch.arange(seq_len, device=prompt_lens.device)
    rel = pos[None, :] - prompt_lens.to(torch.long)[:, None]
    return torch.where(rel < 0, torch.full_like(rel, -1), torch.div(rel, chunk_size, rounding_mode="floor"))


def visible(q_block: torch.Tensor, q_clean: torch.Tensor, k_block: torch.Tensor, k_clean: torch.Tensor,
            layout: str) -> torch.Tensor:
    """The visibility predicate on broadcastable block ids and stream flags (True = x_0 / clean).

    This is the one definition of each layout; `chunk_attention_mask` evaluates it densely and
    kernels evaluate it per tile.
    """
    if layout == "bidirectional":
        return torch.ones(torch.broadcast_shapes(q_block.shape, k_block.shape), dtype=torch.bool,
                          device=q_block.device)
    if layout == "block_causal":
        return k_block <= q_block
    if layout == "bd3":
        clean_query = q_clean & k_clean & (k_block <= q_block)
        noisy_prompt = ~q_clean & k_clean & (q_block < 0) & (k_block < 0)
        noisy_chunk = ~q_clean & ((k_clean & (k_block < q_block)) | (~k_clean & (k_block == q_block) & (q_block >= 0)))
        return clean_query | noisy_prompt | noisy_chunk
    raise ValueError(f"unknown attention layout {layout!r}; expected one of {LAYOUTS}")


def chunk_attention_mask(prompt_lens: torch.Tensor, seq_len: int, *, chunk_size: int = 16, layout: str = "bd3",
                         seq_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Dense visibility mask (True = q may attend k).

    prompt_lens: int [B]; seq_len: L (tokens per stream); seq_lens: optional int [B] valid length per row.
    Returns bool [B, S, S] with S = 2L for "bd3" (`[x_t ; x_0]`), S = L otherwise.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown attention layout {layout!r}; expected one of {LAYOUTS}")
    blocks = block_ids(prompt_lens, seq_len, chunk_size)  # [B, L]
    batch = blocks.shape[0]
    valid = torch.ones(batch, seq_len, dtype=torch.bool, device=blocks.device)
    if seq_lens is not None:
        valid = torch.arange(seq_len, device=blocks.device)[None, :] < seq_lens.to(blocks.device)[:, None]
    if layout == "bd3":
        blocks = torch.cat([blocks, blocks], dim=1)
        clean = torch.cat([torch.zeros_like(valid), torch.ones_like(valid)], dim=1)
        valid = torch.cat([valid, valid], dim=1)
    else:
        clean = torch.ones_like(valid)
    mask = visible(blocks[:, :, None], clean[:, :, None], blocks[:, None, :], clean[:, None, :], layout)
    return mask & valid[:, None, :]


# ----------------------------------------------------------------------------------------------
# The compact layout
# ----------------------------------------------------------------------------------------------
class CompactLayout(NamedTuple):
    chunk_index: torch.Tensor  # int64 [B, NM]: masked chunk ids per row, increasing, -1 padded (NM = max count)
    positions: torch.Tensor    # int64 [B, NM*C]: token position of each compact x_t slot (0 on padding slots)

    @property
    def real(self) -> torch.Tensor:
        """bool [B, NM]: the slots that hold a chunk (the others pad the row to NM)."""
        return self.chunk_index >= 0


def compact_layout(chunk_masked: torch.Tensor, prompt_lens: torch.Tensor, chunk_size: int) -> CompactLayout:
    """The compacted x_t layout of `chunk_attention(layout="compact")` for a chunk draw [B, N]."""
    count = chunk_masked.sum(dim=1)
    width = int(count.max().item()) if chunk_masked.numel() else 0
    ids = torch.arange(chunk_masked.shape[1], device=chunk_masked.device).expand_as(chunk_masked)
    # Masked ids first, in increasing order: sort by (not masked, id).
    order = torch.sort(torch.where(chunk_masked, ids, ids + chunk_masked.shape[1]), dim=1).values[:, :width]
    slots = torch.arange(width, device=chunk_masked.device)[None, :]
    chunk_index = torch.where(slots < count[:, None], order, torch.full_like(order, -1))
    pos = prompt_lens.to(chunk_masked.device).long()[:, None, None] + chunk_index[:, :, None] * chunk_size
    pos = pos + torch.arange(chunk_size, device=chunk_masked.device)
    positions = torch.where(chunk_index[:, :, None] >= 0, pos, torch.zeros_like(pos)).flatten(1)
    return CompactLayout(chunk_index, positions)


def compact_positions(chunk_index: torch.Tensor, prompt_lens: torch.Tensor, chunk_size: int,
                      seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token position in x_t of every compact slot and whether the slot is real.

    chunk_index: int [B, NM] (increasing chunk ids, -1 padding). Returns (positions int64 [B, NM*C],
    real bool [B, NM*C]); padding slots get position 0. Real chunks must lie inside the row.
    """
    offsets = torch.arange(chunk_size, device=chunk_index.device)
    pos = prompt_lens.to(chunk_index.device).long()[:, None, None] + chunk_index.long()[:, :, None] * chunk_size
    pos = (pos + offsets).flatten(1)
    real = (chunk_index >= 0)[:, :, None].expand(-1, -1, chunk_size).flatten(1)
    if bool((real & (pos >= seq_len)).any()):
        raise ValueError("chunk_index names a chunk that does not fit in the sequence; "
                         "only whole chunks inside [0, L) can be compacted")
    return torch.where(real, pos, torch.zeros_like(pos)), real


def compact_attention_mask(prompt_lens: torch.Tensor, seq_len: int, chunk_index: torch.Tensor, *,
                           chunk_size: int = 16, seq_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Dense mask of the compact layout: the bd3 mask restricted to the compact positions, evaluated
    with `masks.visible` on the compact positions' block ids and streams (no [2L, 2L] bd3 mask).

    Returns bool [B, S, S] with S = NM*C + L; padding slots neither see nor are seen.
    """
    pos, real = compact_positions(chunk_index, prompt_lens, chunk_size, seq_len)  # noisy slots: [B, NM*C]
    blocks = block_ids(prompt_lens, seq_len, chunk_size).to(pos.device)          # x_0: [B, L]
    tokens = torch.ones_like(blocks, dtype=torch.bool) if seq_lens is None else \
        torch.arange(seq_len, device=pos.device)[None, :] < seq_lens.to(pos.device)[:, None]
    block = torch.cat([torch.gather(blocks, 1, pos), blocks], dim=1)
    clean = torch.cat([torch.zeros_like(real), torch.ones_like(tokens)], dim=1)
    valid = torch.cat([real & torch.gather(tokens, 1, pos), tokens], dim=1)     # keys that exist
    present = torch.cat([real, torch.ones_like(tokens)], dim=1)                  # queries that exist
    mask = visible(block[:, :, None], clean[:, :, None], block[:, None, :], clean[:, None, :], "bd3")
    return mask & valid[:, None, :] & present[:, :, None]
