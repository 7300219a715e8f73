"""The DeepSpeed ZeRO-3 engine: DeepSpeed config, model built partitioned, optimizer, LR schedule.

The model is constructed inside `deepspeed.zero.Init` with an `HfDeepSpeedConfig` alive, so every
parameter is partitioned the moment it is created and `from_pretrained` streams weights straight
into the partitions: no rank ever holds the full model. Only trainable parameters (the refinement
head with a frozen backbone) reach the optimizer.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from chunksft.models import HybridConfig, HybridModel
from chunksft.models.config import tiny_backbone
from chunksft.train.config import REPO_ROOT, ConfigError, TrainConfig
from chunksft.train.distributed import DistInfo

# DeepSpeed keys that are derived from the train config; a JSON may leave them "auto".
_DERIVED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


def resolve_path(path: str) -> str:
    """A config-relative path: as given when it exists (cwd), else relative to the repository."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPO_ROOT, path)


def deepspeed_config(cfg: TrainConfig, world_size: int, *, load_universal: bool = False) -> dict[str, Any]:
    """Read `training.deepspeed_config` and fill the entries owned by the train config.

    train_batch_size = micro batch (training.batch_size) x gradient_accumulation_steps x world_size;
    an explicit value in the JSON must agree, otherwise a one-line ConfigError names the key.
    """
    path = resolve_path(cfg.training.deepspeed_config)
    try:
        with open(path) as fh:
            ds = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"training.deepspeed_config: {path} not found; use configs/deepspeed/zero3.json") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    t = cfg.training
    wanted = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train_batch_size": t.batch_size * t.gradient_accumulation_steps * world_size,
        "gradient_clipping": t.max_grad_norm,
    }
    for key in _DERIVED:
        given = ds.get(key, "auto")
        if given != "auto" and given != wanted[key]:
            raise ConfigError(f"{path}: {key} = {given} disagrees with the train config ({wanted[key]} = batch_size "
                              f"{t.batch_size} x gradient_accumulation_steps {t.gradient_accumulation_steps} x world "
                              f"{world_size}); set it to \"auto\"")
        ds[key] = wanted[key]
    for precision in ("bf16", "fp16"):
        section = ds.setdefault(precision, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = cfg.model.dtype == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ConfigError(f"{path}: zero_optimization.stage = {stage}; chunksft trains with ZeRO stage 3")
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    if t.optimizer == "muon":
        if "optimizer" in ds:
            raise ConfigError(f"{path}: has an \"optimizer\" section; chunksft sets it from training.optimizer "
                              "(adamw | muon): remove it from the JSON")
        ds["optimizer"] = {"type": "Muon", "params": {
            "lr": t.learning_rate, "muon_lr": t.muon_learning_rate, "momentum": t.muon_momentum,
            "betas": [t.adam_beta1, t.adam_beta2], "weight_decay": t.weight_decay, "torch_adam": True}}
        # DeepSpeed's Muon orthogonalises whole gradient matrices: it refuses reduce-scatter.
        ds["zero_optimization"]["reduce_scatter"] = False
    return ds


def check_attention(cfg: TrainConfig) -> None:
    """model.attn_implementation = flash_attention_2 needs CUDA and flash-attn: one-line ConfigError
    at start-up (before any data or checkpoint work) instead of a failure inside the first forward."""
    if cfg.model.attn_implementation != "flash_attention_2":
        return
    import importlib.util

    if not torch.cuda.is_available():
        raise ConfigError("model.attn_implementation = 'flash_attention_2': flash-attn runs on CUDA GPUs only and "
                          "this machine has none; use --attn_implementation auto (SDPA / C++ kernels on CPU)")
    if importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("model.attn_implementation = 'flash_attention_2': the flash-attn package is not installed; "
                          "pip install flash-attn, or use --attn_implementation auto")


def _is_hybrid_folder(path: str) -> bool:
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return False
    with open(config_file) as fh:
        return json.load(fh).get("model_type") == HybridConfig.model_type


def build_model(cfg: TrainConfig, ds_config: dict[str, Any], tokenizer) -> tuple[HybridModel, HfDeepSpeedConfig]:
    """The HybridModel with ZeRO-3 partitioned parameters.

    Returns the model and the HfDeepSpeedConfig, which the caller must keep referenced for the
    engine's lifetime: transformers finds it through a weak reference (ZeRO-3 aware loading and
    weight init).
    """
    hf_ds = HfDeepSpeedConfig(ds_config)
    kwargs = cfg.hybrid_kwargs() | {"mask_token_id": tokenizer.mask_token_id}
    dtype = getattr(torch, cfg.model.dtype)
    source = cfg.model.name_or_path
    # With the HfDeepSpeedConfig alive, transformers opens zero.Init itself in `_from_config` /
    # `from_pretrained` and initialises (or loads) every partition gathered module by module.
    if source is None:
        m = cfg.model
        backbone = tiny_backbone(m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.intermediate_size)
        model = HybridModel._from_config(HybridConfig(backbone=backbone, **kwargs), dtype=dtype)
    elif os.path.isdir(source) and _is_hybrid_folder(source):
        model = HybridModel.from_pretrained(source, dtype=dtype, **kwargs)
    else:
        # A Hugging Face backbone (hub name or folder, LLaDA layout included): from_backbone loads it
        # partitioned (transformers' zero.Init path), builds the head under this Init and initialises
        # only the head, gathered; the loaded weights are kept as they are. The Init takes its dtype
        # from ds_config (bf16 / fp16 / fp32, set from model.dtype): DeepSpeed 0.19 ignores an explicit
        # `dtype=` on accelerators without fp16 support (CPU) and partitions in bf16.
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = HybridModel.from_backbone(source, dtype=dtype, **kwargs)
    for module, params in model.zero3_gathered_parameters().items():
        for param in params:
            deepspeed.zero.register_external_parameter(module, param)
    set_leaf_modules(model)
    vocab = model.backbone.config.vocab_size
    if len(tokenizer) > vocab:
        raise ConfigError(f"data.tokenizer has {len(tokenizer)} tokens but the backbone's vocabulary is {vocab}; "
                          "use the backbone's own tokenizer (model.name_or_path) or the bundled one with the tiny model")
    return model, hf_ds


def set_leaf_modules(model: HybridModel) -> list[torch.nn.Module]:
    """Make each backbone decoder layer (the classes transformers lists in `_no_split_modules`) a
    ZeRO-3 leaf module: one parameter fetch / release per layer instead of one per Linear and norm.
    A layer's parameters are gathered together anyway (the prefetcher fetches them in sequence); the
    per-submodule hooks are Python overhead that dominates a small model's step (the tiny default
    job: 0.25 -> 0.21 s per step of 32 rows on 2 cores). Not the refinement head: ZeRO-3 reduces a
    leaf's gradients in the leaf's backward hook, once per call (the head runs several calls per
    forward in generation, and none in step-by-step deep supervision); the head gathers its
    parameters in one fetch through `zero3_gathered_parameters` instead."""
    names = set(getattr(model.backbone, "_no_split_modules", None) or ())
    classes = sorted({type(m) for m in model.backbone.modules() if type(m).__name__ in names},
                     key=lambda cls: cls.__name__)
    return deepspeed.utils.set_z3_leaf_modules(model, classes, raise_if_not_found=False) if classes else []


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """LR multiplier for optimizer step s (0-based): linear warmup over `warmup_steps` (the first
    step already uses 1/warmup_steps), then a cosine from 1 to `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_engine(cfg: TrainConfig, dist_info: DistInfo, tokenizer, total_steps: int, *,
                 load_universal: bool = False):
    """deepspeed.initialize over the partitioned model; returns (engine, hf_ds_config).

    AdamW is torch's (no DeepSpeed op to compile on CPU); DeepSpeed wraps it in its ZeRO-3
    optimizer, steps the LR schedule at every optimizer step and checkpoints both.
    """
    ds_config = deepspeed_config(cfg, dist_info.world_size, load_universal=load_universal)
    model, hf_ds = build_model(cfg, ds_config, tokenizer)
    if cfg.objective.training_mode != "chunk_sft":
        # pretrain / sft / bd3 never run the refinement head: no gradient reaches it, so it stays out
        # of the optimizer (Muon would orthogonalise its zero gradients at every step).
        model.head.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("model.freeze_backbone: nothing left to train (the model has no trainable parameter)")
    t = cfg.training
    factor = warmup_cosine(t.warmup_steps, total_steps, t.min_lr_ratio)

    def schedule(optimizer):  # each parameter group's own base LR (Muon's and AdamW's) times the factor
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    if t.optimizer == "adamw":
        optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                      weight_decay=t.weight_decay)
    else:  # DeepSpeed builds the Muon of ds_config["optimizer"] and calls `schedule` on it
        optimizer = None
        if not torch.cuda.is_available():
            # DeepSpeed wraps Muon's update in torch.compile. On CPU inductor builds C++ for it at the
            # first step (60-90 s on 2 cores), and the compiled update is no faster here (tiny default
            # job: 0.255 s per step either way): run compile directives eagerly in this process.
            torch.compiler.set_stance("force_eager")
    # deepspeed.initialize may edit the dict it is given.
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           model_parameters=trainable, config=copy.deepcopy(ds_config))
    return engine, hf_ds
