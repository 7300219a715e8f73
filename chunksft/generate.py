"""python -m chunksft.generate --model HF_DIR (--prompt "question" | --input FILE --output FILE) [--refine]

Decodes answers chunk by chunk (docs/design.md §1.8) for one question or a file of questions.
The question is wrapped in the training template unless --raw is given.

Batch prediction: --input reads a .jsonl/.json/.parquet file in any supported data format (only
each row's question is used; a row without one is a one-line error naming the file and the row,
before anything is generated) and --output gets one JSON object per input row, in input order:

    {"question": str, "response": str, "answer": str | null, "refinement_steps": [float per chunk]}

`answer` is the content of the response's last <answer>...</answer> (null if none);
`refinement_steps` is written with --refine only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def _predict(model, tokenizer, questions: list[str], *, refine: bool, max_new_tokens: int, steps_per_chunk: int,
             batch_size: int) -> list[dict]:
    from chunksft.data import encode_prompt, extract_answer

    records = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        prompts = [encode_prompt(tokenizer, q) for q in batch]
        with torch.no_grad():
            out = model.generate_with_refinement(prompts, max_length=max(map(len, prompts)) + max_new_tokens,
                                                 enable_refinement=refine, steps_per_chunk=steps_per_chunk)
        for question, response, steps in zip(batch, out.responses, out.chunk_steps):
            text = tokenizer.decode(response, skip_special_tokens=True)
            record = {"question": question, "response": text, "answer": extract_answer(text)}
            if refine:
                record["refinement_steps"] = steps
            records.append(record)
    return records


def flag_below_one(args: argparse.Namespace, **meaning: str) -> str | None:
    """The one-line error for the first of the integer flags `meaning` (dest -> what it counts) whose
    value is below 1, or None."""
    for dest, what in meaning.items():
        value = getattr(args, dest)
        if value is not None and value < 1:
            return f"--{dest} {value}: {what} must be at least 1; pass --{dest} N with N >= 1"
    return None


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` (its folder created when missing) as a finished file or none."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chunksft.generate", description=__doc__.splitlines()[2])
    parser.add_argument("--model", required=True, help="an exported HF folder (python -m chunksft.export)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the question (or the full prompt text with --raw)")
    source.add_argument("--input", help="batch prediction: a .jsonl/.json/.parquet file of questions (any data format)")
    parser.add_argument("--output", help="with --input: the predictions file (one JSON object per input row)")
    parser.add_argument("--format", default="auto", help="with --input: the data format (default: detected)")
    parser.add_argument("--raw", action="store_true", help="use --prompt as is, without the training template")
    parser.add_argument("--refine", action="store_true", help="run the refinement head in the loop")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--steps_per_chunk", type=int, default=None,
                        help="denoising forwards per chunk without --refine (default: the model's own, the value "
                             "training evaluated with; at most the chunk size)")
    parser.add_argument("--batch_size", type=int, default=32, help="with --input: questions per generate call")
    args = parser.parse_args(argv)
    if args.input is not None and args.output is None:
        parser.error("--input needs --output FILE")
    if args.input is None and args.output is not None:
        parser.error("--output goes with --input FILE")
    bad_flag = flag_below_one(args, max_new_tokens="the number of tokens to generate",
                              batch_size="the number of questions per generate call",
                              steps_per_chunk="the number of denoising forwards per chunk")
    if bad_flag:
        print(f"error: {bad_flag}", file=sys.stderr)
        return 2

    from chunksft.data import DataError, encode_prompt, iter_questions
    from chunksft.checkpoint.export import ExportFolderError, load_export

    questions = None
    if args.input is not None:
        try:  # every row is read (and checked) before the model loads and anything is written
            questions = [q for _, q in iter_questions(args.input, format=args.format)]
        except DataError as exc:
            print(f"error: --input {exc}", file=sys.stderr)
            return 2
    try:
        model, tokenizer = load_export(args.model)
    except ExportFolderError as exc:
        print(f"error: --model {exc}", file=sys.stderr)
        return 2

    if questions is not None:
        records = _predict(model, tokenizer, questions, refine=args.refine, max_new_tokens=args.max_new_tokens,
                           steps_per_chunk=args.steps_per_chunk, batch_size=args.batch_size)
        write_atomically(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        answered = sum(r["answer"] is not None for r in records)
        print(f"{args.output}: {len(records)} predictions ({answered} with an <answer>)", file=sys.stderr)
        return 0

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
