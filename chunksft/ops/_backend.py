"""Backend resolution shared by the op dispatchers (docs/design.md §2.1).

backend: "eager" (the reference), "triton", "cpp", "auto" (triton on CUDA, cpp on CPU when a C++
implementation is registered, else eager). `CHUNKSFT_BACKEND=eager` in the environment forces the
eager reference everywhere, whatever the caller asked for (debugging switch).

An op file with C++ glue (`<op>_cpp`, beside its reference) declares it with `register_cpp(op)`, so
"auto" picks it for CPU tensors; the glue itself falls back to the eager reference when the
extension can be neither imported nor built (`_cpp.load`).
"""
from __future__ import annotations

import os

import torch

from chunksft.ops._triton import interpreter_enabled, triton_installed

BACKENDS = ("auto", "eager", "triton", "cpp")
FORCE_ENV = "CHUNKSFT_BACKEND"

_CPP_OPS: set[str] = set()


def register_cpp(op: str) -> None:
    """`op` has a "cpp" implementation; "auto" then picks it for CPU tensors."""
    _CPP_OPS.add(op)


def resolve_backend(op: str, backend: str, device: torch.device, *, extra: tuple[str, ...] = ()) -> str:
    """The concrete backend ("eager" | "triton" | "cpp" | one of `extra`) that runs `op` on `device`."""
    if backend not in BACKENDS + extra:
        raise ValueError(f"unknown backend {backend!r} for {op}; expected one of {BACKENDS + extra}")
    forced = os.environ.get(FORCE_ENV, "")
    if forced:
        if forced != "eager":
            raise ValueError(f"{FORCE_ENV}={forced!r} is not supported; only {FORCE_ENV}=eager (or unset)")
        return "eager"
    if backend == "auto":
        if device.type == "cuda" and triton_installed():
            return "triton"
        if device.type == "cpu" and op in _CPP_OPS:
            return "cpp"
        return "eager"
    if backend == "triton":
        if not triton_installed():
            raise RuntimeError(f"{op}: backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError(f"{op}: backend='triton' on {device.type} tensors runs only in Triton's interpreter; "
                               "set TRITON_INTERPRET=1 before importing triton, or use backend='eager'")
    if backend == "cpp" and op not in _CPP_OPS:
        raise RuntimeError(f"{op}: backend='cpp' is not available (the C++ extension is not built); "
                           "use backend='eager' or 'auto'")
    return backend
