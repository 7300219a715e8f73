"""The one attention function every backbone layer calls, registered with transformers.

`HybridModel` passes a `ChunkLayout` through the backbone's forward kwargs; this facade turns it into
a call of the right kernel, so neither the model code nor transformers' modeling code branches on
hardware: flash-attn for plain bidirectional passes on CUDA when importable, otherwise
`chunksft.ops.chunk_attention` (eager SDPA + dense mask, C++ on CPU, Triton on CUDA).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from chunksft.ops import chunk_attention

ATTN_IMPLEMENTATION = "chunksft"


@dataclass
class ChunkLayout:
    """Visibility metadata of one backbone pass.

    layout: "bd3" (keys/queries are `[x_t ; x_0]`), "compact" (`[masked chunks of x_t ; x_0]`),
    "block_causal" or "bidirectional".
    prompt_lens: int [B] (chunk layouts). seq_lens: int [B] valid tokens per stream (right padding).
    key_padding: bool [B, S_k], True = real key (bidirectional passes, incl. cached generation).
    chunk_index: int [B, NM] masked chunk ids per row, ascending, -1 padded ("compact" only).
    """

    layout: str = "bidirectional"
    prompt_lens: torch.Tensor | None = None
    chunk_size: int = 16
    seq_lens: torch.Tensor | None = None
    key_padding: torch.Tensor | None = None
    backend: str = "auto"
    chunk_index: torch.Tensor | None = None


@functools.lru_cache(maxsize=1)
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def chunksft_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       chunk_layout: ChunkLayout | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention interface: query [B, H, Sq, D], key/value [B, Hkv, Sk, D] -> ([B, Sq, H, D], None).

    Without a `chunk_layout` (e.g. a stock transformers call) the pass is plain bidirectional.
    """
    layout = chunk_layout or ChunkLayout()
    if layout.layout == "bidirectional":
        out = _bidirectional(query, key, value, layout.key_padding, scaling)
    else:
        out = chunk_attention(query, key, value, prompt_lens=layout.prompt_lens, chunk_size=layout.chunk_size,
                              layout=layout.layout, backend=layout.backend, seq_lens=layout.seq_lens, scale=scaling,
                              chunk_index=layout.chunk_index)
    return out.transpose(1, 2).contiguous(), None


def _bidirectional(query, key, value, key_padding, scaling):
    flash = _flash_attn_func()
    if flash is not None and query.is_cuda and key_padding is None and query.dtype in (torch.float16, torch.bfloat16):
        return flash(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                     softmax_scale=scaling, causal=False).transpose(1, 2)
    mask = None if key_padding is None else key_padding[:, None, None, :].to(torch.bool)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                          enable_gqa=key.shape[1] != query.shape[1])


AttentionInterface.register(ATTN_IMPLEMENTATION, chunksft_attention)
