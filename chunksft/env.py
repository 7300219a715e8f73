"""`python -m chunksft.env`: which backends of the chunksft ops this machine can run (like ds_report).

Reports torch / CPU threading, the C++ toolchain and extension (csrc/: prebuilt by setup.py, JIT-built
and cached, or unavailable and why), Triton (GPU kernels, interpreter), flash-attn, DeepSpeed, and
what backend="auto" resolves to for every op on each available device. Loading the C++ extension
may JIT-build it the first time (about a minute); `--no-build` only reports what is already there.

It also reports what makes floating-point results differ between machines (issue 11): the CPU model
and its vector ISA (AVX2 / FMA / AVX-512 / AVX512-BF16 / AMX), which SIMD clone the csrc element-wise
loops run (GCC `target_clones`, picked at load time: x86-64-v4, -v3 or the baseline), the kernels ATen
dispatches to, the BLAS (MKL picks its GEMM kernels by CPU, thread count and matrix shape), the
thread counts, the environment variables that change those choices, and the C++ build flags (which
must stay free of -march=native so a build runs on any x86-64 CPU). Results are not bitwise equal
across such machines; the tests compare them with one rule relative to PyTorch's own rounding
(tests/tolerance.py).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
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


# Environment variables that change which kernels (hence which rounding) the CPU libraries use.
NUMERICS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE",
                "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "CXXFLAGS", "CFLAGS")
# GCC's x86-64 micro-architecture levels used by csrc's `target_clones` (kernels.h), as torch's cpuinfo names.
X86_64_V3 = ("avx", "avx2", "bmi", "bmi2", "f16c", "fma3", "lzcnt")
X86_64_V4 = X86_64_V3 + ("avx512_f", "avx512_bw", "avx512_cd", "avx512_dq", "avx512_vl")
ISA_SHOWN = ("sse4_2", "avx", "avx2", "fma3", "f16c", "avx512_f", "avx512_bw", "avx512_vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def machine() -> dict:
    """The machine facts that change floating-point results: CPU, vector ISA, SIMD clone, BLAS, threads."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        caps = {}
    flags = {name for name, value in caps.items() if value is True}
    arch = caps.get("architecture") or platform.machine()
    if arch in ("x86_64", "AMD64"):
        clone = "x86-64-v4 (AVX-512)" if all(f in flags for f in X86_64_V4) else \
            "x86-64-v3 (AVX2 + FMA)" if all(f in flags for f in X86_64_V3) else "baseline x86-64 (SSE2)"
    else:
        clone = f"none ({arch}: one build for the target)"
    if "amx_bf16" in flags:
        bf16 = "AMX (oneDNN bf16 GEMMs use the tile unit)"
    elif "avx512_bf16" in flags:
        bf16 = "AVX512-BF16 dot products"
    else:
        bf16 = "no native bf16: oneDNN / ATen convert to fp32"
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    dnnl = re.search(r"MKL-DNN v([\w.]+)", config)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = _cpuinfo()
    cpu = info.get("model name") or caps.get("cpu_name") or platform.processor() or "unknown"
    if "cpu family" in info:  # virtual machines often show a generic name: the family / model identify the core
        cpu += f" [{info.get('vendor_id', '?')} family {info['cpu family']} model {info.get('model', '?')}]"
    return {
        "cpu": cpu,
        "arch": arch,
        "isa": [f for f in ISA_SHOWN if f in flags],
        "isa_missing": [f for f in ISA_SHOWN if caps and f not in flags],
        "simd_clone": clone,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16": bf16,
        "blas": (blas.group(1) if blas else "unknown") + (f" {mkl.group(1)}" if mkl else ""),
        "onednn": dnnl.group(1) if dnnl else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "env": {name: os.environ[name] for name in NUMERICS_ENV if name in os.environ},
    }


def _machine_rows(color: bool) -> list[str]:
    from chunksft.ops import _cpp

    m = machine()
    rows = [_row("CPU", None, f"{m['cpu']} ({m['arch']}), {m['cpus']} logical CPUs, {m['usable_cpus']} usable", color)]
    isa = " ".join(m["isa"]) or "unknown"
    if m["isa_missing"]:
        isa += "; not: " + " ".join(m["isa_missing"])
    rows.append(_row("vector ISA", None, isa, color))
    rows.append(_row("ATen CPU kernels", None, f"{m['aten_capability']} (ATEN_CPU_CAPABILITY overrides)", color))
    rows.append(_row("csrc SIMD clone", None, f"{m['simd_clone']}: picked at load time by GCC target_clones; "
                     "the clones round differently (vector width, FMA)", color))
    rows.append(_row("bf16 matmul", None, m["bf16"], color))
    rows.append(_row("BLAS", None, f"{m['blas']}" + (f", oneDNN {m['onednn']}" if m["onednn"] else "") +
                     ": GEMM kernels chosen by CPU, threads and shape", color))
    rows.append(_row("threads", None, f"{m['threads']} intra-op, {m['interop_threads']} inter-op (results of "
                     "threaded reductions depend on it)", color))
    cpp = _cpp.status()
    if cpp["available"]:
        parallel = cpp["threads"] == m["threads"]
        rows.append(_row("C++ op threads", parallel, f"{cpp['threads']} of {m['threads']}" +
                         ("" if parallel else ": built without OpenMP, the ops run serially"), color))
    flags = " ".join(_cpp.CXX_FLAGS)
    portable = not any(f.startswith(("-march", "-mtune=native", "-mcpu")) for f in _cpp.CXX_FLAGS)
    rows.append(_row("C++ build flags", portable, flags + ("" if portable else ": CPU-specific, not portable"),
                     color))
    env = m["env"]
    detail = ", ".join(f"{k}={v}" for k, v in env.items()) if env else "none of " + " ".join(NUMERICS_ENV) + " set"
    native = any("-march=native" in env.get(k, "") for k in ("CXXFLAGS", "CFLAGS"))
    rows.append(_row("numerics env", False if native else None,
                     detail + (": -march=native makes the prebuilt extension CPU-specific" if native else ""), color))
    return rows


def report(build: bool = True, color: bool = False) -> str:
    from chunksft.ops import _cpp
    from chunksft.ops._backend import FORCE_ENV, resolve_backend
    from chunksft.ops._triton import interpreter_enabled, triton_installed

    lines = ["chunksft environment report", "-" * 80]
    lines.append(_row("torch", True, f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, "
                      f"{torch.backends.cpu.get_cpu_capability()}", color))
    lines += _machine_rows(color)
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
