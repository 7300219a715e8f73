"""Checkpoint pickles opened without running code: the check every ``.pt`` passes before DeepSpeed loads it.

A ``.pt`` file is a pickle, and unpickling may call any importable function: a checkpoint is code.
DeepSpeed's own loaders (``engine.load_checkpoint``, ``zero_to_fp32``, ``ds_to_universal``) unpickle
with ``torch.load(weights_only=False)``. So `validate_tag` first opens every ``.pt`` of a tag, after
the marker's size and CRC-32 checks, with torch's weights-only unpickler: it rebuilds tensors,
containers and plain values and calls nothing outside torch's allowlist and `checkpoint_globals()`,
the few types a chunksft ZeRO-3 checkpoint holds. A file that needs anything else is refused before
any of its code runs, so DeepSpeed only ever unpickles files that passed.
"""
from __future__ import annotations

import pickle
from typing import Optional

import torch
from torch.serialization import get_unsafe_globals_in_checkpoint


def checkpoint_globals() -> list:
    """The non-torch types in our checkpoints: numpy arrays (the numpy RNG state of the client
    state) and DeepSpeed's ZeRO stage enum and loss scalers (its optimizer state)."""
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct, ZeroStageEnum, LossScaler,
            DynamicLossScaler]


def pickle_problem(path: str) -> Optional[str]:
    """None when the ``.pt`` file `path` loads (memory-mapped) with the weights-only unpickler and
    `checkpoint_globals()`; otherwise why not, one line (a refused pickle names what it would call)."""
    allowed = checkpoint_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return None
    except pickle.UnpicklingError as exc:
        names = {f"{obj.__module__}.{obj.__name__}" for obj in allowed}
        try:  # reads the pickle's opcodes only, runs nothing
            refused = [name for name in get_unsafe_globals_in_checkpoint(path) if name not in names]
        except Exception:  # noqa: BLE001 - a stream this scan cannot read is reported as unreadable below
            refused = []
        if refused:
            return (f"{path}: refused without loading it, its pickle would call {', '.join(refused[:3])}, which no "
                    "chunksft checkpoint holds; a checkpoint is code: resume or export only checkpoints you trust")
        # torch's message wraps the unpickler's reason in advice on weights_only=False: keep the reason.
        reason = " ".join(str(exc).split()).split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0]
        return f"{path}: unreadable (UnpicklingError: {reason.strip()[:160]})"
    except Exception as exc:  # any zip / storage error means the file is unusable
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return f"{path}: unreadable ({type(exc).__name__}: {detail})"
