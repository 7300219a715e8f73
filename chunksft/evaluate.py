"""python -m chunksft.evaluate --model HF_DIR [--dataset bundled] [--split test] [--rows N]

Held-out answer accuracy of an exported model, without and with the refinement head.

Each held-out row is decoded chunk by chunk twice, without and with the refinement head; the table
also gives the mean number of refinement steps per generated chunk. `answer_accuracy` is the
function the training loop's periodic evaluation uses too.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch

from chunksft.data.template import extract_answer
from chunksft.generate import flag_below_one, write_atomically


@dataclass
class AnswerScore:
    correct: float = 0.0       # rows whose generated <answer> equals the reference
    rows: float = 0.0
    refine_steps: float = 0.0  # summed over generated chunks
    chunks: float = 0.0

    def __add__(self, other: "AnswerScore") -> "AnswerScore":
        return AnswerScore(self.correct + other.correct, self.rows + other.rows,
                           self.refine_steps + other.refine_steps, self.chunks + other.chunks)


def answer_accuracy(model, tokenizer, items: list[dict], *, refine: bool, max_new_tokens: int, batch_size: int = 16,
                    counted: list[bool] | None = None, synced_ranks: bool = False) -> AnswerScore:
    """Generate for dataset rows (`{"input_ids", "prompt_len", "answer"}`) and score exact-match answers.

    counted: per item, whether it counts (ranks pad their shards to equal length so that their
    ZeRO-3 forwards stay in lockstep; padding items run but are not counted).
    """
    counted = counted if counted is not None else [True] * len(items)
    score = AnswerScore()
    was_training = model.training
    model.eval()
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        prompts = [item["input_ids"][:item["prompt_len"]] for item in batch]
        out = model.generate_with_refinement(prompts, max_length=max(map(len, prompts)) + max_new_tokens,
                                             enable_refinement=refine, synced_ranks=synced_ranks)
        for item, response, steps, keep in zip(batch, out.responses, out.chunk_steps, counted[start:]):
            if keep:
                predicted = extract_answer(tokenizer.decode(response))
                score += AnswerScore(float(predicted is not None and predicted == item["answer"].strip()), 1.0,
                                     sum(steps), len(steps))
    model.train(was_training)
    return score


def accuracy_table(rows: list[tuple[str, AnswerScore, AnswerScore]]) -> str:
    """Markdown table: label, accuracy without / with refinement, mean refinement steps."""
    lines = ["| held-out answer accuracy | without refinement | with refinement | mean refinement steps |",
             "|---|---|---|---|"]
    for label, plain, refined in rows:
        lines.append(f"| {label} | {plain.correct / max(plain.rows, 1):.1%} | "
                     f"{refined.correct / max(refined.rows, 1):.1%} | "
                     f"{refined.refine_steps / max(refined.chunks, 1):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chunksft.evaluate", description=__doc__.splitlines()[2])
    parser.add_argument("--model", required=True, help="an exported HF folder (python -m chunksft.export)")
    parser.add_argument("--dataset", default="bundled", help="bundled, a .jsonl/.json/.parquet file or a hub name")
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--output", default=None, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    bad_flag = flag_below_one(args, rows="the number of held-out rows to evaluate",
                              max_new_tokens="the number of tokens to generate per row",
                              batch_size="the number of rows per generate call")
    if bad_flag:
        print(f"error: {bad_flag}", file=sys.stderr)
        return 2

    from chunksft.data import DataError, build_dataset
    from chunksft.data.holdout import plan_splits
    from chunksft.checkpoint.export import ExportFolderError, load_export

    try:
        model, tokenizer = load_export(args.model)
    except ExportFolderError as exc:
        print(f"error: --model {exc}", file=sys.stderr)
        return 2
    try:
        # Held-out rows only: a single file without splits is evaluated on its question-hash held-out
        # part, the rows training left out (never on training rows).
        _, held_out = plan_splits(args.dataset, None, "train", args.split)
        data, stats = build_dataset(**held_out.kwargs(), tokenizer=tokenizer, chunk_size=model.config.chunk_size,
                                    max_rows=args.rows)
    except (DataError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    items = [data[i] for i in range(len(data))]
    with torch.no_grad():
        plain, refined = (answer_accuracy(model, tokenizer, items, refine=refine, max_new_tokens=args.max_new_tokens,
                                          batch_size=args.batch_size) for refine in (False, True))
    print(stats.summary())
    print(accuracy_table([(f"{args.dataset}:{args.split} ({len(items)} rows)", plain, refined)]))
    if args.output:
        scores = {"dataset": args.dataset, "split": args.split, "rows": len(items),
                  "accuracy": plain.correct / max(plain.rows, 1), "accuracy_refined": refined.correct / max(refined.rows, 1),
                  "mean_refinement_steps": refined.refine_steps / max(refined.chunks, 1),
                  "max_refinement_steps": model.config.max_recursive_steps,
                  "steps_per_chunk": model.config.steps_per_chunk}
        write_atomically(args.output, json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
