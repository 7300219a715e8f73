"""Ops: one file per op with its eager reference (the specification) beside its kernels.

Imports only torch here; Triton and the C++ extension are loaded lazily by the backends.
"""
from chunksft.ops.chunk_attention import chunk_attention
from chunksft.ops.chunk_mask import ChunkMask, chunk_mask, diffusion_mask
from chunksft.ops.linear_cross_entropy import linear_cross_entropy
from chunksft.ops.masks import chunk_attention_mask
from chunksft.ops.rms_norm import rms_norm

__all__ = ["ChunkMask", "chunk_mask", "diffusion_mask", "chunk_attention_mask", "chunk_attention",
           "linear_cross_entropy", "rms_norm"]
