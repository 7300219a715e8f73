"""Triton kernels run in Triton's CPU interpreter in these tests (docs/design.md §6).

`TRITON_INTERPRET` is read when a kernel is jitted; chunksft.ops jits lazily on first launch, so
setting it here, before any test runs, is enough. The AOT compile test runs its compiler in a
subprocess without it.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
