"""The C++ CPU backend (csrc/): building and loading the extension. Each op's glue (its autograd
wiring) lives in the op's file beside its reference: `chunk_attention_cpp`, `linear_cross_entropy_cpp`,
`chunk_mask_counter_cpp`.

Loading, first that works: the `chunksft._C` extension that setup.py builds; a JIT build of csrc/
with `torch.utils.cpp_extension.load`, cached under $CHUNKSFT_CPP_BUILD_DIR (default build/cpp-<key>
in the checkout, the key hashing the interpreter's real path, torch and the flags, so that different
environments never rebuild over each other while `python` and `python3` of one environment share a
build; rebuilt only when a source changes); otherwise nothing, with
ONE warning, and every "cpp" call runs the op's eager reference. `CHUNKSFT_NO_JIT=1` disables the JIT
step (then only a prebuilt extension is used).

The extension is loaded by the first `load()`, never at import.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

# Keep in sync with setup.py (the prebuilt extension). -fopenmp: the ops run on ATen's intra-op
# threads through at::parallel_for, a header template that is parallel only when the file including
# it is compiled with OpenMP (without it every op ran on one thread). The extension links
# libgomp.so.1 by soname, so the process keeps the one OpenMP runtime torch already loaded (and
# torch.set_num_threads governs the ops). -fno-trapping-math lets the compiler if-convert the clamps
# of the vectorised exp.
_OPENMP = torch.backends.openmp.is_available()
CXX_FLAGS = ["-O3", "-fopenmp" if _OPENMP else "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno"]
LD_FLAGS = ["-fopenmp"] if _OPENMP else []
CSRC = Path(__file__).resolve().parents[2] / "csrc"
JIT_NAME = "chunksft_cpp"

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "module": None, "source": None, "error": None}


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def build_dir() -> Path:
    if "CHUNKSFT_CPP_BUILD_DIR" in os.environ:
        return Path(os.environ["CHUNKSFT_CPP_BUILD_DIR"])
    interpreter = os.path.realpath(sys.executable)  # DeepSpeed's launcher starts ranks as `python3`
    key = "|".join([interpreter, torch.__file__, torch.__version__, os.environ.get("CXX", ""), *CXX_FLAGS])
    return CSRC.parent / "build" / f"cpp-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _jit_build() -> ModuleType:
    from torch.utils.cpp_extension import load

    srcs = sources()
    if not srcs:
        raise RuntimeError(f"no C++ sources in {CSRC} (an installed wheel does not ship csrc/)")
    path = build_dir()
    path.mkdir(parents=True, exist_ok=True)
    # One builder at a time, under an OS lock that dies with its process. torch's own `lock` file
    # (its FileBaton) outlives a build that was killed, and `load` would then wait for it forever;
    # holding ours, any `lock` file left is such a leftover.
    with open(path / "build.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        leftover = path / "lock"
        if leftover.exists():
            warnings.warn(f"chunksft: removing {leftover}, left by a C++ build that did not finish", RuntimeWarning,
                          stacklevel=2)
            leftover.unlink()
        # Reuse a finished build newer than the sources without asking ninja: processes whose
        # environments make torch emit another compile command would otherwise rebuild over each other.
        library = path / f"{JIT_NAME}.so"
        if library.exists() and not _stale(library):
            spec = importlib.util.spec_from_file_location(JIT_NAME, library)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        return load(name=JIT_NAME, sources=[str(s) for s in srcs], extra_cflags=CXX_FLAGS,
                    extra_ldflags=LD_FLAGS, build_directory=str(path),
                    verbose=os.environ.get("CHUNKSFT_CPP_VERBOSE", "0") == "1")


def _stale(library: Path) -> bool:
    """A setup.py build older than the checkout's sources would silently run old kernels."""
    newest = max((f.stat().st_mtime for f in CSRC.glob("*") if f.suffix in (".cpp", ".h")), default=0.0)
    return library.stat().st_mtime < newest


def load() -> ModuleType | None:
    """The extension module, or None (after one warning) when it can be neither imported nor built."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        errors = []
        try:
            prebuilt = importlib.import_module("chunksft._C")
            if _stale(Path(prebuilt.__file__)):
                errors.append("prebuilt chunksft._C is older than csrc/ (rerun setup.py); ignored")
            else:
                _state["module"], _state["source"] = prebuilt, f"prebuilt {prebuilt.__file__}"
        except ImportError as exc:
            errors.append(f"no prebuilt chunksft._C ({exc})")
        if _state["module"] is None and os.environ.get("CHUNKSFT_NO_JIT", "0") != "1":
            try:
                _state["module"], _state["source"] = _jit_build(), f"JIT build in {build_dir()}"
            except Exception as exc:  # noqa: BLE001 - any build failure means "fall back", reported once
                errors.append(f"JIT build failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}")
        elif _state["module"] is None:
            errors.append("JIT disabled by CHUNKSFT_NO_JIT=1")
        if _state["module"] is None:
            _state["error"] = "; ".join(errors)
            warnings.warn(f"chunksft: C++ ops unavailable, using the eager PyTorch ops instead ({_state['error']})",
                          RuntimeWarning, stacklevel=3)
        _state["tried"] = True
    return _state["module"]


def status() -> dict[str, Any]:
    """Load (if not yet tried) and report: {"available", "source", "error", "threads"}; threads is how
    many of torch's intra-op threads one at::parallel_for of the extension runs on (None without it)."""
    module = load()
    return {"available": module is not None, "source": _state["source"], "error": _state["error"],
            "threads": module.parallel_for_threads() if module is not None else None}
