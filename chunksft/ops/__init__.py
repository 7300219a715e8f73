"""Ops: one file per op with its eager reference (the specification) beside its kernels.

Imports only torch here; Triton and the C++ extension are loaded lazily by the backends.
"""
from chunksft.ops.chunk_mask import ChunkMask, chunk_mask, diffusion_mask
from chunksft.ops.masks import chunk_attention_mask

__all__ = ["ChunkMask", "chunk_mask", "diffusion_mask", "chunk_attention_mask"]
from chunksft.ops.chunk_attention import chunk_attention  # noqa: E402

__all__.append("chunk_attention")
# Registers the C++ CPU backend (csrc/) with the dispatchers; the extension itself loads on first use.
from chunksft.ops import _cpp  # noqa: E402,F401
