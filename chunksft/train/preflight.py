"""Checks of the train config against this machine and the Hugging Face hub, run by every rank
right after the config parsed, before the process group, the data and DeepSpeed start: each
problem is a one-line ConfigError naming the key and the fix instead of a traceback minutes later.

Kept free of deepspeed imports (distributed.py picks DeepSpeed's accelerator before its import).
"""
from __future__ import annotations

import os

from chunksft.train.config import ConfigError, TrainConfig


def preflight(cfg: TrainConfig) -> None:
    check_dtype(cfg.model.dtype)
    check_backbone_source(cfg.model.name_or_path)


def check_dtype(dtype: str) -> None:
    """float16 needs a GPU: DeepSpeed's CPU accelerator (chosen when no CUDA device is visible)
    trains in float32 or bfloat16 only."""
    import torch

    if dtype == "float16" and not torch.cuda.is_available():
        raise ConfigError("model.dtype = 'float16': DeepSpeed trains in float16 on GPUs only and this machine has "
                          "none; use --dtype float32 or --dtype bfloat16 on CPU")


def check_backbone_source(source: str | None) -> None:
    """model.name_or_path must be a model folder (config.json + weights) or a hub model we can reach:
    its config.json is fetched now (cached; the weights follow when the model is built)."""
    if source is None:
        return
    key = f"model.name_or_path = {source!r}"
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ConfigError(f"{key}: the folder has no config.json; pass a folder written by save_pretrained "
                              "or python -m chunksft.export")
        return
    if os.path.exists(source):
        raise ConfigError(f"{key} is a file; pass a model folder (config.json + weights) or a hub model name")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError)

    download = (f"pass a local model folder instead (e.g. from `hf download {source} --local-dir DIR` where the "
                "hub is reachable)")
    try:
        hf_hub_download(source, "config.json")
        return
    except HFValidationError:
        problem, fix = "is neither a local folder nor a hub model name (owner/name)", "check the path"
    except LocalEntryNotFoundError:  # no network (or HF_HUB_OFFLINE=1) and nothing cached
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub is unreachable"
        problem, fix = f"is not a local folder, and {why} with no cached copy", download
    except GatedRepoError:
        problem, fix = "is a gated hub model", "accept its terms on huggingface.co and run `hf auth login`"
    except RepositoryNotFoundError:
        problem = "is not a local folder, and the hub has no such model (or it is private)"
        fix = "check the path or the name (owner/name); for a private model run `hf auth login`"
    except RemoteEntryNotFoundError:
        problem, fix = "is a hub repository without config.json", "pass a transformers model or a local model folder"
    except HfHubHTTPError as exc:
        problem, fix = f"is not a local folder, and the hub request failed ({str(exc).splitlines()[0]})", download
    raise ConfigError(f"{key} {problem}; {fix}")
