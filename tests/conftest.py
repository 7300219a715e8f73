"""Session-wide test settings, imported before any test module is collected.

Triton kernels run in Triton's CPU interpreter in tests (DESIGN.md §6). `TRITON_INTERPRET` must be
set before the first `@triton.jit` is created, and test modules of every folder import chunksft
(and deepspeed imports triton), so it is set here rather than in tests/ops.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
