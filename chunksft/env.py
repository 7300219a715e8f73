"""`python -m chunksft.env`: which backends of the chunksft ops this machine can run (like ds_report).

Reports torch / CPU threading, the C++ toolchain and extension (csrc/: prebuilt by setup.py, JIT-built
and cached, or unavailable and why), Triton (GPU kernels, interpreter), flash-attn, DeepSpeed, and
what backend="auto" resolves to for every op on each available device. Loading the C++ extension
may JIT-build it the first time (about a minute); `--no-build` only reports what is already there.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil

import torch

OPS = ("chunk_attention", "linear_cross_entropy", "chunk_mask")
GREEN, RED, YELLOW, END = "\033[92m", "\033[91m", "\033[93m", "\033[0m"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _row(name: str, ok: bool | None, detail: str, color: bool) -> str:
    label = {True: "[OKAY]", False: "[NO]", None: "[--]"}[ok]
    if color:
        label = {True: GREEN, False: RED, None: YELLOW}[ok] + label + END
    return f"{name:<36} {label:<{17 if color else 8}} {detail}"


def report(build: bool = True, color: bool = False) -> str:
    from chunksft.ops import _cpp
    from chunksft.ops._backend import FORCE_ENV, resolve_backend
    from chunksft.ops._triton import interpreter_enabled, triton_installed

    lines = ["chunksft environment report", "-" * 80]
    lines.append(_row("torch", True, f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, "
                      f"{torch.backends.cpu.get_cpu_capability()}", color))
    cuda = torch.cuda.is_available()
    lines.append(_row("CUDA device", cuda, torch.cuda.get_device_name(0) if cuda else "none (CPU only)", color))
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    lines.append(_row("C++ compiler", compiler is not None, compiler or "not found: the cpp backend falls back to eager",
                      color))
    lines.append(_row("ninja", shutil.which("ninja") is not None, shutil.which("ninja") or "not found (JIT needs it)",
                      color))
    if build:
        status = _cpp.status()
        detail = status["source"] if status["available"] else status["error"]
        lines.append(_row("C++ ops (csrc/)", status["available"], detail, color))
    else:
        prebuilt = importlib.util.find_spec("chunksft._C") is not None
        cached = any(_cpp.build_dir().glob(f"{_cpp.JIT_NAME}*.so"))
        detail = "prebuilt chunksft._C" if prebuilt else f"JIT cache in {_cpp.build_dir()}" if cached else \
            "not built yet (JIT-built on first use)"
        lines.append(_row("C++ ops (csrc/)", prebuilt or cached or None, detail, color))
    triton = triton_installed()
    lines.append(_row("triton", triton, (_version("triton") or "?") + (", interpreter on (TRITON_INTERPRET=1)"
                                                                         if interpreter_enabled() else "")
                      if triton else "not installed (GPU kernels unavailable)", color))
    flash = _version("flash-attn") or _version("flash_attn")
    lines.append(_row("flash-attn", flash is not None, flash or "not installed (CUDA only)", color))
    ds = _version("deepspeed")
    lines.append(_row("deepspeed", ds is not None, ds or "not installed", color))
    if os.environ.get(FORCE_ENV):
        lines.append(_row(FORCE_ENV, None, f"{os.environ[FORCE_ENV]}: every op forced to the eager reference", color))
    lines.append("-" * 80)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    for op in OPS:
        picks = []
        for device in devices:
            try:
                resolved = resolve_backend(op, "auto", device)
            except (RuntimeError, ValueError) as exc:
                resolved = f"error: {exc}"
            if resolved == "cpp" and build and not _cpp.status()["available"]:
                resolved = "eager (cpp unavailable)"
            picks.append(f"{device.type}: {resolved}")
        lines.append(_row(f'{op} backend="auto"', None, ", ".join(picks), color))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chunksft.env", description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="do not load / JIT-build the C++ extension")
    args = parser.parse_args(argv)
    import sys

    print(report(build=not args.no_build, color=sys.stdout.isatty()))


if __name__ == "__main__":
    main()
