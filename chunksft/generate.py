"""python -m chunksft.generate --model HF_DIR --prompt "question" [--refine]

Decodes the answer to one question chunk by chunk (DESIGN.md §1 inference). The prompt is wrapped
in the training template unless --raw is given.
"""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chunksft.generate", description=__doc__.splitlines()[2])
    parser.add_argument("--model", required=True, help="an exported HF folder (python -m chunksft.export)")
    parser.add_argument("--prompt", required=True, help="the question (or the full prompt text with --raw)")
    parser.add_argument("--raw", action="store_true", help="use --prompt as is, without the training template")
    parser.add_argument("--refine", action="store_true", help="run the refinement head in the loop")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--steps_per_chunk", type=int, default=4)
    args = parser.parse_args(argv)

    from chunksft.data import encode_prompt, load_tokenizer
    from chunksft.models import HybridModel

    try:
        tokenizer = load_tokenizer(args.model)
        model = HybridModel.from_pretrained(args.model).eval()
    except (OSError, ValueError) as exc:
        print(f"error: --model {args.model}: {exc}", file=sys.stderr)
        return 2
    prompt = tokenizer(args.prompt, add_special_tokens=False)["input_ids"] if args.raw \
        else encode_prompt(tokenizer, args.prompt)
    with torch.no_grad():
        out = model.generate_with_refinement([prompt], max_length=len(prompt) + args.max_new_tokens,
                                             enable_refinement=args.refine, steps_per_chunk=args.steps_per_chunk)
    print(tokenizer.decode(out.responses[0], skip_special_tokens=True))
    if args.refine:
        for k, (steps, conf) in enumerate(zip(out.chunk_steps[0], out.chunk_confidences[0])):
            print(f"chunk {k}: refinement steps {steps:.2f}, confidence {conf:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
