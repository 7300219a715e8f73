"""The model hyperparameters that the training config also sets: their defaults and range checks, once.

`HybridConfig` (models/config.py) takes its defaults from `DEFAULTS` and validates with `check`; the
training config (train/config.py) declares the same keys in its YAML sections with these defaults,
builds `HybridConfig`'s arguments from them (`TrainConfig.hybrid_kwargs`) and validates them through
`check` as well, naming its own YAML key and flag in the error. This module imports neither
transformers nor deepspeed, so the training config stays cheap to import.
"""
from __future__ import annotations

from typing import Any, Callable

from chunksft.ops._backend import BACKENDS

GRADIENTS = ("full", "last")  # the refinement head's gradient rules (models/head.py)

DEFAULTS: dict[str, Any] = {
    "chunk_size": 16,
    "mask_probability": 0.3,
    "bd3_t_min": 1e-3,
    "bd3_t_max": 1.0,
    "steps_per_chunk": 4,
    "max_recursive_steps": 8,
    "head_hidden_size": None,  # None: half the backbone width, at most 256 (HybridConfig)
    "head_gradient": "last",
    "deep_supervision_weight": 0.3,
    "enable_deep_supervision": True,
    "deep_supervision_interval": 1,
    "backend": "auto",
}


class HyperparameterError(ValueError):
    """One hyperparameter out of range; the message is `name = value: fix`."""

    def __init__(self, name: str, value: Any, fix: str):
        super().__init__(f"{name} = {value!r}: {fix}")
        self.name, self.value, self.fix = name, value, fix


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# (name reported, names read, test on the values read, fix). A rule runs when every name it reads is given.
_RULES: list[tuple[str, tuple[str, ...], Callable[..., bool], str]] = [
    ("chunk_size", ("chunk_size",), _positive_int, "must be a positive number of tokens, e.g. 16"),
    ("mask_probability", ("mask_probability",), lambda p: 0.0 <= p <= 1.0,
     "must be a probability in [0, 1], e.g. 0.3"),
    ("confidence_threshold", ("confidence_threshold",), lambda p: 0.0 <= p <= 1.0,
     "must be a probability in [0, 1], e.g. 0.9"),
    ("bd3_t_min", ("bd3_t_min",), lambda t: 1e-6 <= t <= 1.0, "must lie in [1e-6, 1], e.g. 0.001"),
    ("bd3_t_max", ("bd3_t_min", "bd3_t_max"), lambda lo, hi: lo <= hi <= 1.0, "must lie in [bd3_t_min, 1], e.g. 1.0"),
    ("steps_per_chunk", ("steps_per_chunk", "chunk_size"), lambda n, size: 1 <= n <= size,
     "must lie in [1, chunk_size] (one token per forward at most), e.g. 4"),
    ("max_recursive_steps", ("max_recursive_steps",), lambda k: k >= 1, "must be >= 1, e.g. 8"),
    ("head_hidden_size", ("head_hidden_size",), lambda d: d is None or _positive_int(d),
     "must be a positive integer or null"),
    ("head_gradient", ("head_gradient",), lambda g: g in GRADIENTS, f"must be one of {', '.join(GRADIENTS)}"),
    ("deep_supervision_weight", ("deep_supervision_weight",), lambda w: w >= 0.0, "must be >= 0, e.g. 0.3"),
    ("deep_supervision_interval", ("deep_supervision_interval",), lambda n: n >= 1, "must be >= 1 (1 = every step)"),
    ("backend", ("backend",), lambda b: b in BACKENDS, f"must be one of {', '.join(BACKENDS)}"),
]


def check(values: dict[str, Any]) -> None:
    """Raise `HyperparameterError` for the first out-of-range value among `values` (any subset of
    the hyperparameters; other keys are ignored)."""
    for name, reads, ok, fix in _RULES:
        if all(key in values for key in reads) and not ok(*(values[key] for key in reads)):
            raise HyperparameterError(name, values[name], fix)
