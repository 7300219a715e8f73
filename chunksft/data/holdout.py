"""Held-out rows for a source without a separate eval set: a deterministic split by question hash.

A row is held out iff

    int.from_bytes(sha256(question.encode("utf-8")).digest()[:8], "big") / 2**64 < HELD_OUT_FRACTION

where `question` is the row's normalized question (after format mapping and whitespace stripping).
The decision depends on the question text only, so the training part and the held-out part are
disjoint by construction, identical on every run, rank and machine, and rows sharing a question
(e.g. several answers to one problem) all fall on the same side: a held-out question is never seen
in training. About 5% of the distinct questions are held out.

`plan_splits` decides, for a run's (training source, eval source, splits), where the held-out rows
come from; `build_dataset(..., hash_split="train" | "held_out")` builds either part.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

HELD_OUT_FRACTION = 0.05
HASH_PARTS = ("train", "held_out")


def is_held_out(question: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether a row with this (normalized) question belongs to the held-out part."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


@dataclass(frozen=True)
class Part:
    """Where one dataset of a run comes from: `build_dataset(source, split=split, hash_split=hash_split)`.

    hash_split: None = every row of the split; "train" = the rows that are not held out;
    "held_out" = the held-out rows (see the module docstring).
    """

    source: Optional[str]
    split: str
    hash_split: Optional[str] = None

    def kwargs(self) -> dict:
        return {"source": self.source, "split": self.split, "hash_split": self.hash_split}


def _is_bundled(source: Optional[str]) -> bool:
    return source is None or source == "bundled" or source.startswith("bundled:")


def _same_source(a: Optional[str], b: Optional[str]) -> bool:
    if _is_bundled(a) and _is_bundled(b):
        return (a or "bundled") == (b or "bundled")
    if a is not None and b is not None and os.path.isfile(a) and os.path.isfile(b):
        return os.path.samefile(a, b)
    return a == b


def hub_splits(source: str) -> Optional[set]:
    """The split names of a hub dataset (`name` or `name:config`), or None when they cannot be listed."""
    try:
        import datasets

        name, _, config = source.partition(":")
        return set(datasets.get_dataset_split_names(name, config or None))
    except Exception:  # offline, unknown name...: loading the split itself reports the problem
        return None


def plan_splits(source: Optional[str], eval_source: Optional[str], train_split: str = "train",
                eval_split: str = "validation", *,
                list_splits: Callable[[str], Optional[set]] = hub_splits) -> tuple[Part, Part]:
    """-> (training part, held-out part) of a run; held-out rows are never training rows.

    - eval_source given and different from source: train on all of `source`, evaluate on
      `eval_source` at `eval_split`;
    - otherwise the held-out rows come from `source` itself: the bundled data and a hub dataset
      that has `eval_split` (a split other than `train_split`) use it; a local file (one split), a
      hub dataset without `eval_split`, or eval_split == train_split are split by question hash.
    """
    if eval_source is not None and not _same_source(source, eval_source):
        return Part(source, train_split), Part(eval_source, eval_split)
    hashed = (Part(source, train_split, "train"), Part(source, train_split, "held_out"))
    if eval_split == train_split or (source is not None and os.path.isfile(source)):
        return hashed
    if _is_bundled(source):
        return Part(source, train_split), Part(source, eval_split)
    splits = list_splits(source)
    if splits is not None and eval_split not in splits:
        return hashed
    return Part(source, train_split), Part(source, eval_split)


def filter_part(items: Iterable, hash_split: str, counter: list[int],
                fraction: float = HELD_OUT_FRACTION) -> Iterator:
    """Keep the (where, example) pairs of one hash part; counter[0] += each pair left out.

    Rows already rejected (no question to hash) stay with the training part, where they are counted.
    """
    want = hash_split == "held_out"
    for where, example in items:
        question = getattr(example, "question", None)
        if question is None:
            if not want:
                yield where, example
            continue
        if is_held_out(question, fraction) == want:
            yield where, example
        else:
            counter[0] += 1
