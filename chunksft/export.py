"""python -m chunksft.export --checkpoint DIR [--tag TAG] --output HF_DIR

Consolidates a sharded ZeRO-3 checkpoint through DeepSpeed's zero_to_fp32 API into a Hugging Face
folder: the HybridModel (safetensors + config, loads with `HybridModel.from_pretrained`), the
tokenizer, and `backbone/`, the backbone alone, which stock transformers loads with
`AutoModelForCausalLM.from_pretrained(HF_DIR + "/backbone")`. Runs in one process, no launcher.

DIR is a run's output_dir (newest complete checkpoint), its checkpoints/ folder, or one tag folder.
"""
from __future__ import annotations

import argparse
import os
import sys

from chunksft.checkpoint.manager import CHECKPOINTS, CheckpointError, newest_complete, read_marker, validate_tag

# The attention the backbone uses outside chunksft (our registered function exists only after
# `import chunksft.models`).
_STOCK_ATTENTION = "sdpa"


def resolve_checkpoint(checkpoint: str, tag: str | None) -> tuple[str, str]:
    """(checkpoint root, tag) of a complete checkpoint; CheckpointError (one line) otherwise."""
    path = os.path.abspath(checkpoint.rstrip("/"))
    if tag is None and os.path.isfile(os.path.join(path, "COMPLETE")):
        root, tag = os.path.dirname(path), os.path.basename(path)
    elif tag is not None:
        root = path if os.path.isdir(os.path.join(path, tag)) else os.path.join(path, CHECKPOINTS)
    else:
        found = newest_complete(path, path) if os.path.isdir(path) else None
        if found is None:
            raise CheckpointError(f"--checkpoint {checkpoint}: no complete checkpoint found; pass a run's "
                                  "output_dir or a checkpoints/global_step<N> folder")
        root, tag = found[0], found[1]
    problem = validate_tag(os.path.join(root, tag))
    if problem is not None:
        raise CheckpointError(f"--checkpoint {checkpoint} --tag {tag}: {problem}")
    return root, tag


def export(checkpoint: str, output: str, tag: str | None = None) -> str:
    """Write the HF folder for `checkpoint` (see module docstring) and return its path."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from chunksft.data import load_tokenizer
    from chunksft.models import HybridConfig, HybridModel

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
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    backbone_dir = os.path.join(output, "backbone")
    model.backbone.config._attn_implementation = _STOCK_ATTENTION
    model.backbone.save_pretrained(backbone_dir)
    tokenizer = load_tokenizer(marker.get("tokenizer"), add_mask_token=True)
    tokenizer.save_pretrained(output)
    tokenizer.save_pretrained(backbone_dir)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chunksft.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run output_dir, its checkpoints/ folder, or a tag folder")
    parser.add_argument("--tag", default=None, help="checkpoint tag, e.g. global_step200 (default: newest complete)")
    parser.add_argument("--output", required=True, help="Hugging Face folder to write")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.output, args.tag)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {out} (HybridModel; stock-transformers backbone in {os.path.join(out, 'backbone')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
