"""Lazy Triton support shared by the op files.

`chunksft.ops` must import on machines without Triton or CUDA, and `TRITON_INTERPRET` is read by
`triton.jit` when a kernel is *decorated*. So kernels are written as plain functions under
`@lazy_jit` (their modules use `from __future__ import annotations`, which keeps `tl.constexpr`
annotations as strings that Triton still recognises) and are handed to `triton.jit` only when a
launcher first needs them: at that point Triton is imported, `triton` / `tl` are bound in the
kernel module's globals and every lazy kernel or helper of that module is replaced by its jitted
object, so kernels can call `@lazy_jit` helpers like ordinary `@triton.jit` functions.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class LazyJIT:
    """A kernel or device function that becomes `triton.jit(fn)` on first use."""

    def __init__(self, fn: Callable[..., Any], **jit_kwargs: Any):
        self.fn = fn
        self.jit_kwargs = jit_kwargs
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._jitted: Any = None

    def build(self) -> Any:
        """Jit this function and every other lazy function of its module; returns the jitted object."""
        if self._jitted is None:
            import triton
            import triton.language as tl

            module_globals = self.fn.__globals__
            module_globals["triton"] = triton
            module_globals["tl"] = tl
            for name, value in list(module_globals.items()):
                if isinstance(value, LazyJIT):
                    if value._jitted is None:
                        value._jitted = triton.jit(value.fn, **value.jit_kwargs)
                    module_globals[name] = value._jitted
        return self._jitted

    def __getitem__(self, grid: Any) -> Any:
        return self.build()[grid]


def lazy_jit(fn: Callable[..., Any] | None = None, **jit_kwargs: Any) -> Any:
    """`@lazy_jit` or `@lazy_jit(do_not_specialize=[...])`, like `@triton.jit`."""
    if fn is None:
        return lambda f: LazyJIT(f, **jit_kwargs)
    return LazyJIT(fn)


def kernel(obj: Any) -> Any:
    """The jitted object behind a module-level kernel name (lazy or already built)."""
    return obj.build() if isinstance(obj, LazyJIT) else obj


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def cuobjdump_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_for(fn: Any, signature: dict[str, str], constexprs: dict[str, Any], arch: int, *,
                num_warps: int, num_stages: int) -> dict[str, int]:
    """Compile a kernel ahead of time for sm_<arch> (no GPU needed) and read its resource usage.

    Returns {"REG", "STACK", "LOCAL", "SHARED"} from cuobjdump; STACK or LOCAL > 0 means spills.
    Must run without TRITON_INTERPRET (the interpreter has no compiler).
    """
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jitted = kernel(fn)
    signature = dict(signature)
    for name in constexprs:
        signature[name] = "constexpr"
    src = ASTSource(jitted, signature, constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        report = subprocess.run([cuobjdump_path(), "--dump-resource-usage", f.name], check=True,
                                capture_output=True, text=True).stdout
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        match = re.search(rf"\b{key}:(\d+)", report)
        usage[key] = int(match.group(1)) if match else -1
    return usage
