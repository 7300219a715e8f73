"""The C++ CPU backend (csrc/): loading the extension and the autograd wiring of its ops.

Loading, first that works: the `chunksft._C` extension that setup.py builds; a JIT build of csrc/
with `torch.utils.cpp_extension.load`, cached under $CHUNKSFT_CPP_BUILD_DIR (default build/cpp-<key>
in the checkout, the key hashing the interpreter, torch and the flags, so that different environments
never rebuild over each other; rebuilt only when a source changes); otherwise nothing, with
ONE warning, and every "cpp" call runs the op's eager reference. `CHUNKSFT_NO_JIT=1` disables the JIT
step (then only a prebuilt extension is used).

Importing this module only registers the ops with `_backend` (so "auto" picks them on CPU); the
extension is loaded on the first call, never at import.
"""
from __future__ import annotations

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

from chunksft.ops._backend import register_cpp

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
    key = "|".join([sys.executable, torch.__file__, torch.__version__, os.environ.get("CXX", ""), *CXX_FLAGS])
    return CSRC.parent / "build" / f"cpp-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _jit_build() -> ModuleType:
    from torch.utils.cpp_extension import load

    srcs = sources()
    if not srcs:
        raise RuntimeError(f"no C++ sources in {CSRC} (an installed wheel does not ship csrc/)")
    path = build_dir()
    path.mkdir(parents=True, exist_ok=True)
    # Reuse a finished build that is newer than the sources without asking ninja: processes whose
    # environments make torch emit a different compile command would otherwise rebuild over each other.
    # A `lock` file means a build is in progress: then `load` waits for it.
    library = path / f"{JIT_NAME}.so"
    if library.exists() and not (path / "lock").exists() and not _stale(library):
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


def _fp32_rows(x: torch.Tensor) -> torch.Tensor:
    """fp32 with unit stride in the last dim (what the kernels read); a no-op for fp32 rows."""
    x = x.float()
    return x if x.stride(-1) == 1 else x.contiguous()


# ----------------------------------------------------------------------------------------------
# chunk_attention
# ----------------------------------------------------------------------------------------------
# Must match `enum Layout` in csrc/chunk_attention.cpp.
_LAYOUT_CODE = {"bidirectional": 0, "block_causal": 1, "bd3": 2, "compact": 3}


class ChunkAttentionCpp(torch.autograd.Function):
    """C++ chunk attention; saves (q, k, v, out, lse) in fp32 and recomputes probabilities in backward.

    Half-precision inputs are computed in fp32 (upcast once) and the results cast back.
    """

    @staticmethod
    def forward(ctx, q, k, v, meta: tuple, scale: float):
        ext = load()
        qf, kf, vf = _fp32_rows(q), _fp32_rows(k), _fp32_rows(v)
        out, lse = ext.chunk_attention_forward(qf, kf, vf, *meta, scale)
        ctx.save_for_backward(qf, kf, vf, out, lse)
        ctx.meta, ctx.scale, ctx.dtypes = meta, scale, (q.dtype, k.dtype, v.dtype)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        qf, kf, vf, out, lse = ctx.saved_tensors
        dq, dk, dv = load().chunk_attention_backward(_fp32_rows(dout), qf, kf, vf, out, lse, *ctx.meta, ctx.scale)
        return dq.to(ctx.dtypes[0]), dk.to(ctx.dtypes[1]), dv.to(ctx.dtypes[2]), None, None


def chunk_attention_cpp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, prompt_lens: torch.Tensor,
                        chunk_size: int = 16, layout: str = "bd3", seq_lens: torch.Tensor | None = None,
                        scale: float | None = None, chunk_index: torch.Tensor | None = None) -> torch.Tensor:
    """`chunk_attention` on the C++ kernels (CPU tensors, any float dtype). Shapes as in the dispatcher."""
    from chunksft.ops.chunk_attention import (chunk_attention_compact_eager, chunk_attention_eager,
                                              compact_positions)

    if load() is None:
        if layout == "compact":
            return chunk_attention_compact_eager(q, k, v, prompt_lens=prompt_lens, chunk_index=chunk_index,
                                                    chunk_size=chunk_size, seq_lens=seq_lens, scale=scale)
        return chunk_attention_eager(q, k, v, prompt_lens=prompt_lens, chunk_size=chunk_size, layout=layout,
                                        seq_lens=seq_lens, scale=scale)
    batch, total = q.shape[0], q.shape[2]
    if layout == "compact":
        seq_len = total - chunk_index.shape[1] * chunk_size
        compact_positions(chunk_index, prompt_lens, chunk_size, seq_len)  # validates the chunk ids
        noisy_len = chunk_index.shape[1] * chunk_size
        index = chunk_index.to(torch.long).contiguous()
    else:
        seq_len = total // 2 if layout == "bd3" else total
        noisy_len = seq_len if layout == "bd3" else 0
        index = torch.empty(batch, 0, dtype=torch.long)
    lens = torch.full((batch,), seq_len, dtype=torch.long) if seq_lens is None else seq_lens.long().clamp(0, seq_len)
    meta = (prompt_lens.long().contiguous(), lens.contiguous(), index, _LAYOUT_CODE[layout], seq_len, noisy_len,
            chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return ChunkAttentionCpp.apply(q, k, v, meta, scale)


# ----------------------------------------------------------------------------------------------
# linear_cross_entropy
# ----------------------------------------------------------------------------------------------

def rows_per_block(vocab: int, budget_elements: int = 1 << 25) -> int:
    """Rows whose fp32 logits fit in `budget_elements` (128 MB by default), at least 16. Each block
    costs one read-modify-write pass over the [V, H] fp32 weight gradient, so blocks are not smaller."""
    return max(16, budget_elements // max(vocab, 1))


class LinearCrossEntropyCpp(torch.autograd.Function):
    """Row-blocked linear CE in C++ -> (loss, stats ce fp32 [N], stats argmax int64 [N]; the stats
    non-differentiable). For "mean" / "sum" the gradients come out of the forward pass (logits computed
    once; grad_output, a scalar, is applied in backward); "none" recomputes them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, ignore_index: int, reduction: str, return_stats: bool):
        from chunksft.ops.linear_cross_entropy import _scatter_stats, _select_rows

        ext = load()
        weights, loss_rows, rows, safe_targets = _select_rows(targets, token_weights, ignore_index, return_stats)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        denom = weights.sum() if reduction == "mean" else torch.ones(())
        coef = weights[rows] / denom if need_grad and reduction != "none" else None
        block = rows_per_block(weight.shape[0])
        ce, argmax, grad_hidden, grad_weight = ext.linear_cross_entropy_blocked(hidden, weight, safe_targets, rows,
                                                                                coef, block)
        stats = _scatter_stats(hidden.shape[0], rows, ce, argmax)
        ctx.mark_non_differentiable(*stats)
        per_row = stats.ce * weights
        ctx.reduction, ctx.block, ctx.weight_dtype = reduction, block, weight.dtype
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, safe_targets, weights, loss_rows)
            return per_row, *stats
        ctx.save_for_backward(grad_hidden, grad_weight)
        total = per_row.sum()
        return total if reduction == "sum" else total / denom, *stats

    @staticmethod
    def backward(ctx, grad_out, _grad_ce, _grad_argmax):
        if ctx.reduction == "none":
            hidden, weight, targets, weights, rows = ctx.saved_tensors
            coef = (grad_out.float() * weights)[rows]
            _, _, grad_hidden, grad_weight = load().linear_cross_entropy_blocked(hidden, weight, targets, rows, coef,
                                                                                 ctx.block)
        else:
            grad_hidden, grad_weight = ctx.saved_tensors
            # grad_out is 1 for a plain loss.backward(): skip the scaling, which would copy the [V, H]
            # fp32 weight gradient (the largest buffer of the op).
            if not bool(grad_out == 1):
                grad_hidden = (grad_hidden.float() * grad_out.float()).to(grad_hidden.dtype)
                grad_weight = grad_weight * grad_out.float()
        return grad_hidden, grad_weight.to(ctx.weight_dtype), None, None, None, None, None


def linear_cross_entropy_cpp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                             token_weights: torch.Tensor | None = None, ignore_index: int = -100,
                             reduction: str = "mean", return_stats: bool = False):
    """`linear_cross_entropy` on the C++ kernel; contract: `linear_cross_entropy_eager` (incl. return_stats)."""
    from chunksft.ops.linear_cross_entropy import REDUCTIONS, LinearCEStats, linear_cross_entropy_eager

    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if load() is None:
        return linear_cross_entropy_eager(hidden, weight, targets, token_weights=token_weights,
                                          ignore_index=ignore_index, reduction=reduction, return_stats=return_stats)
    loss, ce, argmax = LinearCrossEntropyCpp.apply(hidden, weight, targets, token_weights, ignore_index, reduction,
                                                   return_stats)
    return (loss, LinearCEStats(ce, argmax)) if return_stats else loss


# ----------------------------------------------------------------------------------------------
# chunk_mask
# ----------------------------------------------------------------------------------------------

def chunk_mask_counter_cpp(input_ids: torch.Tensor, prompt_lens: torch.Tensor, *, seed: int, chunk_size: int = 16,
                           mask_prob: float = 0.3, mask_id: int, attention_mask: torch.Tensor | None = None,
                           token_rate: tuple[float, float] = (1.0, 1.0)):
    """`chunk_mask_counter` (same draws, bit for bit) on the C++ kernel -> (ChunkMask, CompactLayout)."""
    from chunksft.ops.chunk_mask import (ChunkMask, CompactLayout, _seq_lens, check_mask_args,
                                         chunk_mask_counter, mask_threshold, seed_key)

    if load() is None:
        return chunk_mask_counter(input_ids, prompt_lens, seed=seed, chunk_size=chunk_size, mask_prob=mask_prob,
                                  mask_id=mask_id, attention_mask=attention_mask, token_rate=token_rate)
    t_min, t_max = check_mask_args(chunk_size, mask_prob, token_rate)
    seq_lens = _seq_lens(input_ids, attention_mask)
    ids, labels, flags, chunk_index, positions, rate = load().chunk_mask_counter(
        input_ids.long(), prompt_lens.long(), seq_lens.long(), seed_key(seed), mask_threshold(mask_prob),
        mask_threshold(t_min), mask_threshold(t_max), int(mask_id), chunk_size)
    return ChunkMask(ids.to(input_ids.dtype), labels, flags, rate), CompactLayout(chunk_index, positions)


register_cpp("chunk_attention", chunk_attention_cpp)
register_cpp("linear_cross_entropy", linear_cross_entropy_cpp)
register_cpp("chunk_mask", chunk_mask_counter_cpp)
