"""Tokenization into chunk_sft rows: exact prompt length, EOS-padded response chunks, overflow policy.

A row is `{"input_ids": list[int], "prompt_len": int, "answer": str}` with

    input_ids = [bos?] + ids(prompt) + ids(response) + [eos] * k,   len(input_ids) - prompt_len = n * chunk_size

The prompt and the response are tokenized *separately* and concatenated, so `prompt_len` is exactly
len(ids(prompt)) (+1 for a BOS the tokenizer itself would add) and the prompt ids are a prefix of
input_ids by construction, whatever merges the tokenizer would make across the boundary. At least
one EOS always ends an untruncated response (the model learns to stop), then more EOS fill the last
chunk. Over-long rows (`max_length`): `truncate` drops whole trailing response chunks (the row is
kept and counted), `skip` drops the row (counted), `error` raises; a prompt that leaves no room for
one chunk is always skipped (counted) or raises under `error`.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Iterable

import numpy as np
import torch

from chunksft.data.errors import DataError, DataStats
from chunksft.data.formats import Rejection, iter_examples
from chunksft.data.holdout import HASH_PARTS, HELD_OUT_FRACTION, filter_part
from chunksft.data.template import ReasoningExample, render, render_prompt
from chunksft.ops.masks import check_chunk_size

OVERFLOW_POLICIES = ("truncate", "skip", "error")


def check_chunk_args(chunk_size: int, max_length: int | None, overflow: str) -> None:
    try:
        check_chunk_size(chunk_size)
    except ValueError as error:
        raise DataError(str(error)) from None
    if max_length is not None and (not isinstance(max_length, int) or max_length < chunk_size):
        raise DataError(f"max_length must be an integer >= chunk_size ({chunk_size}), got {max_length!r}; "
                        f"e.g. --max_length 1024")
    if overflow not in OVERFLOW_POLICIES:
        raise DataError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {overflow!r}")


def bos_prefix(tokenizer) -> list[int]:
    """[bos] when the tokenizer itself prepends BOS with add_special_tokens=True, else []."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and len(full) > len(plain) and full[0] == bos else []


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Prompt ids for generation: exactly the prompt part of a training row."""
    return bos_prefix(tokenizer) + tokenizer(render_prompt(question), add_special_tokens=False)["input_ids"]


def encode_examples(items: Iterable[tuple[str, ReasoningExample | Rejection]], tokenizer, stats: DataStats, *,
                    chunk_size: int = 16, max_length: int | None = 1024, overflow: str = "truncate") -> list[dict]:
    """(where, example) pairs -> rows (see module docstring); rejections are counted into `stats`."""
    check_chunk_args(chunk_size, max_length, overflow)
    kept: list[tuple[str, ReasoningExample]] = []
    for where, item in items:
        stats.rows += 1
        if isinstance(item, Rejection):
            stats.reject(item.reason, where)
        else:
            kept.append((where, item))
    if not kept:
        return []
    prompts, responses = zip(*(render(example) for _, example in kept))
    # one batched call each: the Rust tokenizer parallelises, and each part is tokenized on its own
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    prefix, eos = bos_prefix(tokenizer), tokenizer.eos_token_id
    rows = []
    for (where, example), p_ids, r_ids in zip(kept, prompt_ids, response_ids):
        prompt = prefix + p_ids
        response = r_ids + [eos]
        response += [eos] * (-len(response) % chunk_size)
        if max_length is not None and len(prompt) + len(response) > max_length:
            room = (max_length - len(prompt)) // chunk_size  # whole chunks that still fit
            if overflow == "error":
                raise DataError(f"{where}: row has {len(prompt) + len(response)} tokens > max_length {max_length} "
                                f"(prompt {len(prompt)}); raise --max_length or use overflow truncate/skip")
            if room <= 0:
                stats.reject("prompt_too_long", where)
                continue
            if overflow == "skip":
                stats.reject("too_long", where)
                continue
            response = response[:room * chunk_size]
            stats.truncated += 1
        rows.append({"input_ids": prompt + response, "prompt_len": len(prompt), "answer": example.answer})
        stats.tokens += len(prompt) + len(response)
    stats.kept += len(rows)
    return rows


class ChunkDataset(torch.utils.data.Dataset):
    """Map-style dataset of encoded rows; item = {"input_ids": list[int], "prompt_len": int, "answer": str}."""

    def __init__(self, rows: list[dict], chunk_size: int, stats: DataStats):
        self.rows, self.chunk_size, self.stats = rows, chunk_size, stats

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the encoded rows in order: token ids and prompt lengths. It changes
        with the data file's content, the tokenizer, the template, the chunk size or the row filter."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(np.asarray([row["prompt_len"], len(row["input_ids"])], dtype=np.int64).tobytes())
            digest.update(np.asarray(row["input_ids"], dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]


def build_dataset(source: str | None = None, *, tokenizer=None, chunk_size: int = 16,
                  max_length: int | None = 1024, format: str = "auto", split: str = "train",
                  max_rows: int | None = None, overflow: str = "truncate",
                  hash_split: str | None = None) -> tuple[ChunkDataset, DataStats]:
    """Load, map, template and tokenize a source -> (ChunkDataset, DataStats).

    source: a .jsonl/.json/.parquet file, a hub dataset name (`name` or `name:config`), or
    None / "bundled" / "bundled:<level>" for the bundled split `split` (train | validation | test).
    tokenizer: a loaded tokenizer; None = the bundled one.
    hash_split: None = every row; "train" / "held_out" = the rows outside / inside the held-out part
    chosen by question hash (chunksft.data.holdout; for a source without a separate eval set).
    `stats.held_out` counts the rows the "train" part left out. max_rows counts rows of the part.
    Raises DataError (one line) on unreadable input, bad arguments, or when no row is usable.
    """
    check_chunk_args(chunk_size, max_length, overflow)
    if hash_split is not None and hash_split not in HASH_PARTS:
        raise DataError(f"hash_split must be None or one of {', '.join(HASH_PARTS)}, got {hash_split!r}")
    if source is None or source == "bundled" or source.startswith("bundled:"):
        from chunksft.data.bundled import split_path

        try:
            source, format = str(split_path(source or "bundled", split)), "plain"
        except ValueError as exc:
            raise DataError(str(exc)) from None
    if tokenizer is None:
        from chunksft.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    if hash_split is None:
        stats = DataStats(source)
        items = iter_examples(source, format=format, split=split, max_rows=max_rows)
    else:
        part = "held-out part" if hash_split == "held_out" else "training part"
        stats = DataStats(f"{source} ({part}, {HELD_OUT_FRACTION:.0%} of questions held out by hash)")
        left_out = [0]
        items = itertools.islice(filter_part(iter_examples(source, format=format, split=split), hash_split, left_out),
                                 max_rows)
    rows = encode_examples(items, tokenizer, stats, chunk_size=chunk_size, max_length=max_length, overflow=overflow)
    if hash_split == "train":
        stats.held_out = left_out[0]
    if hash_split == "held_out" and not stats.rows:
        raise DataError(f"{source}: none of its rows falls in the held-out part ({HELD_OUT_FRACTION:.0%} of questions "
                        f"by hash; too few rows?); pass a separate eval file (--eval_dataset_name FILE) or disable "
                        f"evaluation (--eval_loss_rows 0 --eval_generate_rows 0)")
    stats.raise_if_empty()
    return ChunkDataset(rows, chunk_size, stats), stats
