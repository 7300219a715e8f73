"""Training configuration: dataclass sections loaded from YAML, overridden by CLI flags.

Kept free of deepspeed / transformers imports so that the data and model code (and tests) can
import it cheaply.

Resolution order (later wins): dataclass defaults -> ``--config`` YAML -> CLI flags. A flag is
either a dotted ``--section.key value`` or a bare ``--key value`` for any key whose name is
unique across sections (this covers the run flags of docs/design.md §2.4 and the seed's flag names, e.g.
``--chunk_size 16``, ``--freeze_backbone``). ``--key=value`` works too; a boolean flag without a
value means ``true``. Values are parsed as YAML scalars and then checked against the field type.

Every mistake is reported as a single-line :class:`ConfigError` naming where the value came from
(the YAML file or the flag), the key, and the fix; an unknown key suggests the closest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from chunksft.hyperparameters import DEFAULTS, GRADIENTS, HyperparameterError, check
from chunksft.ops._backend import BACKENDS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "train", "tiny.yaml")

# Fields whose change must not invalidate a resume (paths, cadence of side effects, logging):
# they are excluded from the config hash stored in checkpoints.
_RUN_ONLY = {"hash": False}


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line naming the source, key and fix."""


@dataclass
class ModelConfig:
    # None = HybridConfig() (the tiny CPU default, random init); a folder saved by
    # HybridModel.save_pretrained / chunksft.checkpoint.export loads it; anything else is a Hugging Face
    # backbone name or path wrapped by HybridModel.from_backbone.
    name_or_path: Optional[str] = None
    # None = True in chunk_sft (the head trains on a frozen backbone), False otherwise.
    freeze_backbone: Optional[bool] = None
    max_recursive_steps: int = DEFAULTS["max_recursive_steps"]
    # Size of the tiny random backbone (name_or_path: null); null keeps HybridConfig()'s default
    # (d=256, 4 layers, 4 heads). Heads are GQA 2:1, intermediate size 2.75 x hidden by default.
    hidden_size: Optional[int] = None
    num_hidden_layers: Optional[int] = None
    num_attention_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    # Width of the refinement head's core block (null: HybridConfig's default, half the backbone
    # width, at most 256).
    head_hidden_size: Optional[int] = DEFAULTS["head_hidden_size"]
    # "last": TRM's gradient (each refinement step backpropagates through its last recursion only);
    # "full": through every update of every step (backward cost grows with the steps).
    head_gradient: Literal[GRADIENTS] = DEFAULTS["head_gradient"]
    backend: Literal[BACKENDS] = DEFAULTS["backend"]
    # Compute/storage dtype of the DeepSpeed engine (bf16/fp16 enable DeepSpeed's mixed precision).
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # "auto": the attention dispatch picks flash-attn on CUDA when installed, else SDPA / cpp / triton.
    # "flash_attention_2": require flash-attn (CUDA + the flash-attn package), a clear error otherwise.
    # Same function either way, so outside the config hash.
    attn_implementation: Literal["auto", "flash_attention_2"] = field(default="auto", metadata=_RUN_ONLY)


@dataclass
class DataConfig:
    # "bundled" = the generated arithmetic reasoning set shipped with chunksft.data; otherwise a
    # hub name or a local json/jsonl/parquet path understood by chunksft.data.build_dataset.
    dataset_name: str = "bundled"
    dataset_format: str = "auto"
    # None = the bundled tokenizer; otherwise any Hugging Face tokenizer name or path.
    tokenizer: Optional[str] = None
    max_length: int = 512
    overlong: Literal["truncate", "skip"] = "truncate"
    train_split: str = "train"
    # Held-out rows: eval_dataset_name at eval_split. None = from dataset_name itself: its eval_split
    # when it has one (bundled, hub), else (a local file, a hub dataset without eval_split) ~5% of
    # its rows chosen by question hash, which are then left out of training (chunksft.data.holdout).
    eval_dataset_name: Optional[str] = field(default=None, metadata=_RUN_ONLY)
    eval_split: str = field(default="validation", metadata=_RUN_ONLY)
    # Held-out rows used for the eval loss and for the generation accuracy (0 = none).
    eval_loss_rows: int = field(default=64, metadata=_RUN_ONLY)
    eval_generate_rows: int = field(default=32, metadata=_RUN_ONLY)
    # Prompts per generate call (generation cost is per forward, nearly flat in the batch size).
    generate_batch_size: int = field(default=64, metadata=_RUN_ONLY)
    max_new_tokens: int = field(default=128, metadata=_RUN_ONLY)
    # Denoising forwards per generated chunk, at most chunk_size (one token per forward); stored in
    # the model config as its decoding default.
    steps_per_chunk: int = field(default=DEFAULTS["steps_per_chunk"], metadata=_RUN_ONLY)


@dataclass
class ObjectiveConfig:
    training_mode: Literal["pretrain", "sft", "bd3", "chunk_sft"] = "chunk_sft"
    chunk_size: int = DEFAULTS["chunk_size"]
    mask_probability: float = DEFAULTS["mask_probability"]
    # bd3: per-chunk masking rate t ~ U(bd3_t_min, bd3_t_max).
    bd3_t_min: float = DEFAULTS["bd3_t_min"]
    bd3_t_max: float = DEFAULTS["bd3_t_max"]
    deep_supervision_weight: float = DEFAULTS["deep_supervision_weight"]
    enable_deep_supervision: bool = DEFAULTS["enable_deep_supervision"]
    # Decode (and supervise) only every n-th refinement step plus the last: fewer LM-head passes.
    deep_supervision_interval: int = DEFAULTS["deep_supervision_interval"]


@dataclass
class TrainingConfig:
    output_dir: str = field(default="runs/tiny", metadata=_RUN_ONLY)
    seed: int = 42
    # Bitwise-reproducible runs (exact resume relies on it): torch.use_deterministic_algorithms
    # (warn_only), cuDNN deterministic without benchmark, CUBLAS_WORKSPACE_CONFIG on CUDA. Outside
    # the config hash: it picks kernels, not what is computed.
    deterministic: bool = field(default=True, metadata=_RUN_ONLY)
    # Micro batch per rank; the global batch is batch_size x gradient_accumulation_steps x world.
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_epochs: int = 1
    # Optimizer steps; overrides num_epochs when set.
    max_steps: Optional[int] = None
    # End the process (after saving) at this step without changing the LR schedule: for
    # time-limited allocations that resume later.
    stop_at_step: Optional[int] = field(default=None, metadata=_RUN_ONLY)
    # "adamw": torch's AdamW on every trainable parameter. "muon": DeepSpeed's Muon (ZeRO-3 aware) on
    # the weight matrices (DeepSpeed tags every 2-D parameter outside the embeddings and the LM head)
    # with AdamW (learning_rate, betas) on the rest; the LR schedule scales both.
    optimizer: Literal["adamw", "muon"] = "adamw"
    learning_rate: float = 1e-3
    muon_learning_rate: float = 0.02
    muon_momentum: float = 0.95
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_steps: int = 0
    # The cosine decays from learning_rate to learning_rate * min_lr_ratio.
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Batches whose loss is NaN/inf on any rank are skipped; this many in a row stops the run.
    max_nonfinite_in_a_row: int = 5
    # DeepSpeed JSON (ZeRO stage, offload, communication); batch, optimizer, clipping and dtype
    # entries are filled in from this config.
    deepspeed_config: str = field(default="configs/deepspeed/zero3.json", metadata=_RUN_ONLY)
    eval_interval: int = field(default=0, metadata=_RUN_ONLY)  # 0 = evaluate only at the end
    eval_at_start: bool = field(default=False, metadata=_RUN_ONLY)


@dataclass
class CheckpointConfig:
    save_interval: int = field(default=0, metadata=_RUN_ONLY)  # 0 = save only at the end
    # Also save when this many minutes passed since the last save (0 = never by time), so a long
    # run is never far from its last checkpoint; SIGTERM / SIGINT save as well.
    save_every_minutes: float = field(default=30.0, metadata=_RUN_ONLY)
    keep_last: int = field(default=2, metadata=_RUN_ONLY)
    # "auto" = newest complete checkpoint in output_dir (none: start fresh); a path = that
    # checkpoint (a run folder or one of its tags); "none" = start fresh. A fresh start moves the
    # files of a run already in output_dir to output_dir/previous_runs/<time>/ (nothing is deleted).
    resume: str = field(default="auto", metadata=_RUN_ONLY)
    # Resume although the training rows differ from the checkpoint's (content fingerprint); the
    # epoch then restarts at the beginning of the new data.
    allow_data_change: bool = field(default=False, metadata=_RUN_ONLY)
    # Resume even if the checkpoint was written by a different (hashed) configuration.
    allow_config_mismatch: bool = field(default=False, metadata=_RUN_ONLY)


@dataclass
class LoggingConfig:
    tensorboard: bool = field(default=True, metadata=_RUN_ONLY)
    plot: bool = field(default=True, metadata=_RUN_ONLY)
    # Print the data debug view (masking statistics, chunks, per-chunk loss); DEBUG=1 also sets it.
    debug: bool = field(default=False, metadata=_RUN_ONLY)
    debug_rows: int = field(default=2, metadata=_RUN_ONLY)
    debug_interval: int = field(default=50, metadata=_RUN_ONLY)  # the view prints at step 1 and every N steps
    # Save the noise-free logits of the first held-out batch at the end (reference for exports).
    save_eval_logits: bool = field(default=False, metadata=_RUN_ONLY)
    progress_bar: bool = field(default=True, metadata=_RUN_ONLY)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    # ---- views -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hashed_dict(self) -> dict[str, dict[str, Any]]:
        """The fields that change what training computes (those without ``metadata={"hash": False}``)."""
        return {
            section.name: {
                f.name: getattr(getattr(self, section.name), f.name)
                for f in dataclasses.fields(getattr(self, section.name))
                if f.metadata.get("hash", True)
            }
            for section in dataclasses.fields(self)
        }

    def hash(self) -> str:
        """Stable 16-hex-digit digest of `hashed_dict`.

        Paths, save/eval cadence, evaluation, resume and logging fields are excluded, so a run can
        be resumed into another folder, with another save interval or another eval set.
        """
        blob = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def freeze_backbone(self) -> bool:
        """model.freeze_backbone with its mode-dependent default resolved."""
        if self.model.freeze_backbone is None:
            return self.objective.training_mode == "chunk_sft"
        return self.model.freeze_backbone

    def hybrid_kwargs(self) -> dict[str, Any]:
        """The `HybridConfig` arguments this config decides: every name of `hyperparameters.DEFAULTS`,
        read from the section that declares it, and the resolved freeze_backbone."""
        index = _leaf_index()
        values = {name: self._value(index[name][0]) for name in DEFAULTS}
        # data.steps_per_chunk may exceed chunk_size: at most one token per forward is used.
        values["steps_per_chunk"] = min(values["steps_per_chunk"], values["chunk_size"])
        if values["head_hidden_size"] is None:  # the model's own width: a saved model's, or the default
            del values["head_hidden_size"]
        return values | {"freeze_backbone": self.freeze_backbone}

    def _value(self, dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)


def _sections() -> dict[str, type]:
    """Section name -> its dataclass."""
    return typing.get_type_hints(TrainConfig)


def _resolve(cls: type, name: str) -> Any:
    """The evaluated annotation of field ``name`` (annotations are strings under __future__)."""
    return typing.get_type_hints(cls)[name]


def _leaf_index() -> dict[str, list[str]]:
    """Bare key -> dotted keys carrying that name (a bare flag is valid when this is unique)."""
    index: dict[str, list[str]] = {}
    for section, cls in _sections().items():
        for f in dataclasses.fields(cls):
            index.setdefault(f.name, []).append(f"{section}.{f.name}")
    return index


def valid_keys() -> list[str]:
    """Every dotted key ``section.key``."""
    return [dotted for names in _leaf_index().values() for dotted in names]


def _suggest(name: str, candidates: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return "python -m chunksft.train --help lists the valid keys"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}"
                              + _closest_choice(value, choices))
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            # "~/runs" means the home folder, as in a shell (a quoted YAML value is not expanded by one).
            return os.path.expanduser(value) if str(value).startswith("~") else str(value)
    else:
        raise TypeError(f"unsupported config annotation {annotation!r}")
    raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")


def _closest_choice(value: Any, choices: tuple) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _set(cfg: TrainConfig, dotted: str, value: Any, source: str) -> None:
    section, key = dotted.split(".", 1)
    obj = getattr(cfg, section)
    setattr(obj, key, _coerce(value, _resolve(type(obj), key), f"{source}: {dotted}"))


class _StrictLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{self.name}: line {key_node.start_mark.line + 1}: key '{key}' given twice "
                                  f"(first on line {seen[key]}); keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _apply_yaml(cfg: TrainConfig, path: str) -> None:
    try:
        with open(path) as fh:
            raw = yaml.load(fh, Loader=_StrictLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found; pass a YAML under configs/train/") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections ({', '.join(_sections())})")
    sections = _sections()
    for section, body in raw.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section '{section}'; {_suggest(section, list(sections))}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping of key: value")
        fields = [f.name for f in dataclasses.fields(sections[section])]
        for key, value in body.items():
            if key not in fields:
                raise ConfigError(f"{path}: unknown key '{section}.{key}'; {_suggest(key, fields)}")
            _set(cfg, f"{section}.{key}", value, path)


def _flag_key(flag: str) -> str:
    """Map a CLI flag name (without dashes) to its dotted key, or raise with a suggestion."""
    index = _leaf_index()
    if "." in flag:
        if flag in valid_keys():
            return flag
        raise ConfigError(f"unknown flag --{flag}; {_suggest(flag, valid_keys(), '--')}")
    if flag in index:
        if len(index[flag]) > 1:
            raise ConfigError(f"--{flag} is ambiguous; use one of " + ", ".join(f"--{d}" for d in index[flag]))
        return index[flag][0]
    candidates = list(index) + valid_keys()
    raise ConfigError(f"unknown flag --{flag}; {_suggest(flag, candidates, '--')}")


def _parse_flags(argv: list[str]) -> tuple[Optional[str], list[tuple[str, Any, str]]]:
    """Split argv into (config path, [(dotted key, value, flag text)]).

    ``--local_rank`` (added by the deepspeed launcher) is accepted and ignored: the rank comes from
    the environment, which every launcher sets.
    """
    config_path = None
    overrides: list[tuple[str, Any, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}'; flags look like --key value (e.g. --max_steps 10)")
        name, eq, inline = arg[2:].partition("=")
        if eq:
            text, i = inline, i + 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            text, i = argv[i + 1], i + 2
        else:
            text, i = None, i + 1
        if name == "local_rank":
            continue
        if name == "config":
            if text is None:
                raise ConfigError("--config needs a path, e.g. --config configs/train/tiny.yaml")
            config_path = text
            continue
        dotted = _flag_key(name)
        section, key = dotted.split(".")
        annotation = _resolve(_sections()[section], key)
        if text is None:
            if annotation not in (bool, Optional[bool]):
                raise ConfigError(f"--{name} needs a value (e.g. --{name} <value>)")
            value: Any = True
        elif annotation in (str, Optional[str]):
            # Text fields take the text as typed: YAML would turn "0x10" into 16 and "1e3" into 1000.0.
            value = None if annotation == Optional[str] and text.lower() in ("null", "none") else text
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text
        overrides.append((dotted, value, f"--{name}"))
    return config_path, overrides


def load_config(argv: Optional[list[str]] = None, *, config_path: Optional[str] = None) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from ``--config`` YAML (default tiny.yaml) and flags.

    ``argv`` is the flag list without the program name (``sys.argv[1:]``). ``DEBUG=1`` in the
    environment turns on ``logging.debug``. Raises :class:`ConfigError` (one line) on bad input.
    """
    path_from_flags, overrides = _parse_flags(list(argv or []))
    path = path_from_flags or config_path or DEFAULT_CONFIG
    cfg = TrainConfig()
    _apply_yaml(cfg, path)
    for dotted, value, flag in overrides:
        _set(cfg, dotted, value, flag)
    if os.environ.get("DEBUG", "0") not in ("", "0"):
        cfg.logging.debug = True
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Range checks the type system cannot express; raises a one-line ConfigError."""

    def need(ok: bool, dotted: str, fix: str) -> None:
        if not ok:
            raise ConfigError(f"{dotted} = {cfg._value(dotted)!r}: {fix} (--{dotted.split('.')[1]} ...)")

    o, t, d, c, m = cfg.objective, cfg.training, cfg.data, cfg.checkpoint, cfg.model
    try:  # the model hyperparameters: HybridConfig's own checks, reported under this config's key
        check(cfg.hybrid_kwargs())
    except HyperparameterError as err:
        need(False, _leaf_index()[err.name][0], err.fix)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        need(getattr(m, key) is None or getattr(m, key) > 0, f"model.{key}", "must be a positive integer or null")
    need(m.hidden_size is None or m.hidden_size % (m.num_attention_heads or 4) == 0, "model.hidden_size",
         "must be divisible by model.num_attention_heads (default 4)")
    need(d.max_length >= 2 * o.chunk_size, "data.max_length", f"must hold a prompt and a chunk: >= {2 * o.chunk_size}")
    need(d.eval_loss_rows >= 0, "data.eval_loss_rows", "must be >= 0 (0 disables the eval loss)")
    need(d.eval_generate_rows >= 0, "data.eval_generate_rows", "must be >= 0 (0 disables the accuracy eval)")
    need(d.max_new_tokens > 0, "data.max_new_tokens", "must be positive, e.g. 128")
    need(d.generate_batch_size > 0, "data.generate_batch_size", "must be positive, e.g. 64")
    need(t.batch_size > 0, "training.batch_size", "must be a positive micro batch per rank, e.g. 8")
    need(t.gradient_accumulation_steps > 0, "training.gradient_accumulation_steps", "must be >= 1")
    need(t.num_epochs > 0, "training.num_epochs", "must be >= 1")
    need(t.max_steps is None or t.max_steps > 0, "training.max_steps", "must be a positive step count or null")
    need(t.stop_at_step is None or t.stop_at_step > 0, "training.stop_at_step", "must be a positive step or null")
    need(t.learning_rate > 0.0, "training.learning_rate", "must be positive, e.g. 1e-3")
    need(t.muon_learning_rate > 0.0, "training.muon_learning_rate", "must be positive, e.g. 0.02")
    need(0.0 <= t.muon_momentum < 1.0, "training.muon_momentum", "must be in [0, 1), e.g. 0.95")
    need(t.weight_decay >= 0.0, "training.weight_decay", "must be >= 0")
    need(0.0 <= t.adam_beta1 < 1.0, "training.adam_beta1", "must be in [0, 1), e.g. 0.9")
    need(0.0 <= t.adam_beta2 < 1.0, "training.adam_beta2", "must be in [0, 1), e.g. 0.999")
    need(t.warmup_steps >= 0, "training.warmup_steps", "must be >= 0")
    need(0.0 <= t.min_lr_ratio <= 1.0, "training.min_lr_ratio", "must be in [0, 1], e.g. 0.1")
    need(t.max_grad_norm >= 0.0, "training.max_grad_norm", "must be >= 0 (0 disables clipping)")
    need(t.max_nonfinite_in_a_row >= 1, "training.max_nonfinite_in_a_row", "must be >= 1")
    need(t.eval_interval >= 0, "training.eval_interval", "must be >= 0 (0 = only at the end)")
    need(c.save_interval >= 0, "checkpoint.save_interval", "must be >= 0 (0 = only at the end)")
    need(c.save_every_minutes >= 0.0, "checkpoint.save_every_minutes", "must be >= 0 (0 = no time-based saves)")
    need(c.keep_last >= 1, "checkpoint.keep_last", "must keep at least 1 checkpoint")
    need(bool(c.resume), "checkpoint.resume", "must be auto, none or a checkpoint path")
    need(cfg.logging.debug_interval >= 1, "logging.debug_interval", "must be >= 1")


def help_text() -> str:
    """Usage plus every key with its current default (bare flag where unambiguous)."""
    index = _leaf_index()
    lines = ["usage: python -m chunksft.train [--config configs/train/<name>.yaml] [--key value ...]",
             "keys (YAML section.key; flag --section.key or --key):"]
    defaults = TrainConfig()
    for section, cls in _sections().items():
        for f in dataclasses.fields(cls):
            flag = f"--{f.name}" if len(index[f.name]) == 1 else f"--{section}.{f.name}"
            lines.append(f"  {section}.{f.name:<28} {flag:<30} default {getattr(getattr(defaults, section), f.name)!r}")
    return "\n".join(lines)
