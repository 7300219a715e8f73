"""python -m chunksft.export --checkpoint DIR [--tag TAG] --output HF_DIR (entry: chunksft/export.py)

Consolidates a sharded ZeRO-3 checkpoint through DeepSpeed's zero_to_fp32 API into a Hugging Face
folder: the HybridModel (safetensors + config, loads with `HybridModel.from_pretrained`), the
tokenizer, a model card (README.md: what the folder is, how to load and decode it), and
`backbone/`, the backbone's weights alone in the stock transformers format
(`AutoModelForCausalLM.from_pretrained(HF_DIR + "/backbone")`). Stock transformers runs that
backbone as a causal LM although it was trained bidirectionally: it is weights only, its stock
`generate` is not a valid decoder (decode with `python -m chunksft.generate`). Runs in one process,
no launcher.

DIR is a run's output_dir (newest complete checkpoint), its checkpoints/ folder, or one tag folder.
`load_export` is the loading side: `python -m chunksft.generate / evaluate` accept only a folder
this module wrote (a HybridModel config with every weight present and a tokenizer that fits it).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from chunksft.checkpoint.tags import (CHECKPOINTS, MARKER, CheckpointError, newest_complete, passed_over, read_marker,
                                      validate_tag)

# The attention the backbone uses outside chunksft (our registered function exists only after
# `import chunksft.models`).
_STOCK_ATTENTION = "sdpa"
MODEL_CARD = "README.md"

_CARD = """# chunksft HybridModel

Exported by `python -m chunksft.export` from {source}. DIR below is this folder.

A chunk-level masked-diffusion language model: a {backbone_type} backbone ({layers} layers, hidden
size {hidden}, {vocab} embedding rows) trained **bidirectionally** (the tokens of a chunk see each
other, not only the past), plus a recursive refinement head. It decodes {chunk_size} tokens at a
time by unmasking a chunk of mask tokens (`{mask_token}`, id {mask_id}), not left to right one token
at a time.

## Load

```python
from transformers import AutoTokenizer

from chunksft.models import HybridModel  # also registers the model type with transformers

model = HybridModel.from_pretrained("DIR").eval()
tokenizer = AutoTokenizer.from_pretrained("DIR")
```

## Decode

```bash
python -m chunksft.generate --model DIR --prompt "Compute 4 * 8 + 6." [--refine]
python -m chunksft.generate --model DIR --input questions.jsonl --output predictions.jsonl
python -m chunksft.evaluate --model DIR --dataset bundled --split test
```

From Python: `model.generate_with_refinement(prompt_ids, max_length=..., enable_refinement=True)`.

## `backbone/` is weights only

`backbone/` holds the backbone alone in the stock transformers format, so
`AutoModelForCausalLM.from_pretrained("DIR/backbone")` loads it without chunksft. That gives the
weights only: stock transformers runs it as a causal (left-to-right) LM, but it was trained as a
bidirectional masked-diffusion backbone, so its stock `generate()` output and causal-LM logits are
not valid outputs of this model. Decode with chunksft as above.
"""

_BACKBONE_CARD = """# Backbone of a chunksft HybridModel: weights only

The backbone of the chunksft HybridModel in the parent folder, in the stock transformers format.
It was trained bidirectionally as a masked-diffusion backbone: stock transformers loads it as a
causal LM, and its stock `generate()` output is not valid. Load and decode the whole model with
chunksft (see `../{card}`): `HybridModel.from_pretrained(PARENT)`, `python -m chunksft.generate
--model PARENT`.
"""


class ExportFolderError(ValueError):
    """A folder that is not a usable export (one line: the folder, what is wrong, the fix)."""


def resolve_checkpoint(checkpoint: str, tag: str | None) -> tuple[str, str]:
    """(checkpoint root, tag) of a complete checkpoint; CheckpointError (one line) otherwise."""
    path = os.path.abspath(checkpoint.rstrip("/"))
    if tag is None and os.path.isfile(os.path.join(path, MARKER)):
        root, tag = os.path.dirname(path), os.path.basename(path)
    elif tag is not None:
        root = path if os.path.isdir(os.path.join(path, tag)) else os.path.join(path, CHECKPOINTS)
    else:
        found = newest_complete(path, path) if os.path.isdir(path) else None
        if found is None:
            raise CheckpointError(f"--checkpoint {checkpoint}: no complete checkpoint found; pass a run's "
                                  "output_dir or a checkpoints/global_step<N> folder")
        for line in passed_over(found.skipped, found.tag, "exporting"):
            print(line, file=sys.stderr)
        return found.root, found.tag  # newest_complete validated it
    problem = validate_tag(os.path.join(root, tag))
    if problem is not None:
        raise CheckpointError(f"--checkpoint {checkpoint} --tag {tag}: {problem}")
    return root, tag


class OutputError(ValueError):
    """--output cannot be the export folder (one line naming it and the fix)."""


def check_output_folder(output: str) -> None:
    """`output` must be a folder, or a path where one can be created, that takes files; checked
    without writing anything, before the (slow) consolidation."""
    existing = os.path.abspath(output)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    subject = f"--output {output}" + ("" if existing == os.path.abspath(output) else f": {existing}")
    if not os.path.isdir(existing):
        raise OutputError(f"{subject} is a file; pass a folder path (created when missing)")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise OutputError(f"{subject} is not writable ({exc.strerror}); pass a writable folder") from None


def export(checkpoint: str, output: str, tag: str | None = None) -> str:
    """Write the HF folder for `checkpoint` (see module docstring) and return its path."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from chunksft.data import load_tokenizer
    from chunksft.models import HybridConfig, HybridModel

    check_output_folder(output)
    root, tag = resolve_checkpoint(checkpoint, tag)
    marker = read_marker(os.path.join(root, tag))
    state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    config = HybridConfig.from_dict(marker["model_config"])
    model = HybridModel(config)
    # The checkpoint stores tied weights (LM head = embeddings) once; strict=False tolerates the
    # alias, and anything else missing is an error.
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(model.backbone.all_tied_weights_keys) if hasattr(model.backbone, "all_tied_weights_keys") else set()
    missing = [k for k in missing if k.removeprefix("backbone.") not in tied]
    if missing or unexpected:
        raise CheckpointError(f"{os.path.join(root, tag)}: weights do not match the saved model config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    tokenizer = load_tokenizer(marker.get("tokenizer"), add_mask_token=True)
    save_export(model, tokenizer, output, source=f"checkpoint `{os.path.join(root, tag)}` (step {marker['step']})")
    return output


def save_export(model, tokenizer, output: str, *, source: str) -> None:
    """Write `model` (a HybridModel), its tokenizer, the model card and `backbone/` to `output`.

    source: where the weights come from, one phrase for the model card.
    """
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    backbone_dir = os.path.join(output, "backbone")
    model.backbone.config._attn_implementation = _STOCK_ATTENTION
    model.backbone.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    backbone = model.backbone.config
    card = _CARD.format(source=source, backbone_type=backbone.model_type, layers=backbone.num_hidden_layers,
                        hidden=backbone.hidden_size, vocab=model.backbone.get_input_embeddings().num_embeddings,
                        chunk_size=model.config.chunk_size, mask_token=tokenizer.mask_token,
                        mask_id=model.config.mask_token_id)
    with open(os.path.join(output, MODEL_CARD), "w", encoding="utf-8") as fh:
        fh.write(card)
    with open(os.path.join(backbone_dir, MODEL_CARD), "w", encoding="utf-8") as fh:
        fh.write(_BACKBONE_CARD.format(card=MODEL_CARD))


def load_export(path: str):
    """(HybridModel in eval mode, tokenizer) of a folder `save_export` wrote.

    Raises ExportFolderError (one line) unless the folder's config is a HybridModel's, every weight
    of the model is in the folder (none left randomly initialised, none ignored, no shape
    mismatch), and the tokenizer fits the model: no more tokens than embedding rows, and the mask /
    pad / EOS ids the model config records.
    """
    from transformers.utils import logging as hf_logging

    from chunksft.data import load_tokenizer
    from chunksft.models import HybridConfig, HybridModel

    fix = "pass the folder python -m chunksft.export wrote (not its backbone/)"
    try:
        config, _ = HybridConfig.get_config_dict(path)
    except (OSError, ValueError) as exc:
        raise ExportFolderError(f"{path}: {_first_line(exc)}; {fix}") from None
    if config.get("model_type") != HybridConfig.model_type:
        raise ExportFolderError(f"{path}: config.json has model_type {config.get('model_type')!r}, not "
                                f"{HybridConfig.model_type!r}: not a HybridModel export (its refinement head would be "
                                f"random weights); {fix}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' multi-line load report: the check below says it in one line
    try:
        model, info = HybridModel.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True)
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise ExportFolderError(f"{path}: {_first_line(exc)}; {fix}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    for kind, keys in (("of another shape than the config says", [key for key, *_ in info["mismatched_keys"]]),
                       ("missing from the folder (they would be random)", info["missing_keys"]),
                       ("in the folder but not in the model (they would be ignored)", info["unexpected_keys"])):
        if keys:
            raise ExportFolderError(f"{path}: {len(keys)} weight(s) {kind}, e.g. {sorted(keys)[0]}; {fix}")
    rows = model.backbone.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ExportFolderError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model {rows} embedding "
                                "rows; use the tokenizer exported with the model")
    for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
        wanted, got = getattr(model.config, name), getattr(tokenizer, name)
        if wanted is not None and got not in (wanted if isinstance(wanted, list) else [wanted]):
            raise ExportFolderError(f"{path}: the tokenizer's {name} is {got}, the model config's {wanted}; use the "
                                    "tokenizer exported with the model")
    return model.eval(), tokenizer


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chunksft.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run output_dir, its checkpoints/ folder, or a tag folder")
    parser.add_argument("--tag", default=None, help="checkpoint tag, e.g. global_step200 (default: newest complete)")
    parser.add_argument("--output", required=True, help="Hugging Face folder to write")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.output, args.tag)
    except (CheckpointError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {out} (HybridModel and tokenizer; model card {os.path.join(out, MODEL_CARD)}; "
          f"{os.path.join(out, 'backbone')}: the backbone's weights only, see the card)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
