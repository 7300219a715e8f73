"""Bundled default data and tokenizer, generated deterministically by our own code.

`ensure_bundled()` returns the directory holding

    <level>/train.jsonl  validation.jsonl  test.jsonl   rows {question, steps, answer, template}
    tokenizer/                                          PreTrainedTokenizerFast, trained on every level
    manifest.json                                       written last: marks a complete build

for each difficulty level of `problems.LEVELS` ("sums", "arith", "chain", "word"; `--dataset_name bundled`
is the default level, `bundled:<level>` any other, see `split_path`),

building it on first use (`python -m chunksft.data.bundled` / `make data` builds it eagerly). The
directory is `chunksft/data/bundled/generated/`, or `$CHUNKSFT_BUNDLED_DIR`, or
`~/.cache/chunksft/bundled` when the package directory is read-only (a pip-installed package).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from chunksft.data.bundled.problems import DEFAULT_LEVEL, LEVELS, examples, generate
from chunksft.data.bundled.vocab import (ANSWER_CLOSE_ID, ANSWER_OPEN_ID, BUNDLED_VOCAB_SIZE, EOS_TOKEN,
                                         EOS_TOKEN_ID, MASK_TOKEN, MASK_TOKEN_ID, PAD_TOKEN, PAD_TOKEN_ID,
                                         SPECIAL_TOKENS, train_tokenizer)
from chunksft.data.template import render

# Rows per split of each level. The default level has many rows: the default job sees tens of
# thousands of rows, and repeating a small set would teach it the rows, not the arithmetic.
LEVEL_SIZES = {"small": {"train": 9000, "validation": 400, "test": 400},
               "sums": {"train": 20000, "validation": 1000, "test": 1000},
               "arith": {"train": 60000, "validation": 1000, "test": 1000},
               "chain": {"train": 20000, "validation": 1000, "test": 1000},
               "word": {"train": 8000, "validation": 500, "test": 500}}
SPLIT_SIZES = LEVEL_SIZES[DEFAULT_LEVEL]
SEED = 1234
# Bump when the generator or the tokenizer recipe changes: stale builds are then rebuilt.
VERSION = 7
PACKAGE_DIR = Path(__file__).resolve().parent / "generated"

__all__ = ["ensure_bundled", "build", "bundled_dir", "split_path", "LEVELS", "DEFAULT_LEVEL", "SPLIT_SIZES", "BUNDLED_VOCAB_SIZE", "PAD_TOKEN_ID",
           "EOS_TOKEN_ID", "MASK_TOKEN_ID", "ANSWER_OPEN_ID", "ANSWER_CLOSE_ID", "PAD_TOKEN", "EOS_TOKEN",
           "MASK_TOKEN", "SPECIAL_TOKENS"]


def bundled_dir() -> Path:
    """Where the bundled data lives (see module docstring for the order of choices)."""
    if os.environ.get("CHUNKSFT_BUNDLED_DIR"):
        return Path(os.environ["CHUNKSFT_BUNDLED_DIR"])
    if os.access(PACKAGE_DIR.parent, os.W_OK):
        return PACKAGE_DIR
    return Path.home() / ".cache" / "chunksft" / "bundled"


def split_path(name: str, split: str, root: Path | None = None) -> Path:
    """The jsonl of `split` for dataset name "bundled" (the default level) or "bundled:<level>".

    Raises ValueError (one line) for an unknown level or split."""
    level = name.partition(":")[2] or DEFAULT_LEVEL
    if level not in LEVELS:
        raise ValueError(f"bundled data has no level {level!r}; use bundled or bundled:<level> with one of "
                         f"{', '.join(LEVELS)}")
    if split not in LEVEL_SIZES[level]:
        raise ValueError(f"bundled data has no split {split!r}; use one of {', '.join(LEVEL_SIZES[level])}")
    return (root if root is not None else ensure_bundled()) / level / f"{split}.jsonl"


def _manifest(sizes: dict[str, dict[str, int]], seed: int) -> dict:
    return {"version": VERSION, "seed": seed, "sizes": sizes}


def _is_complete(out: Path, sizes: dict[str, dict[str, int]], seed: int) -> bool:
    try:
        recorded = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return {k: recorded.get(k) for k in ("version", "seed", "sizes")} == _manifest(sizes, seed)


def build(out_dir: str | os.PathLike | None = None, *, sizes: dict[str, dict[str, int]] | None = None,
          seed: int = SEED, force: bool = False) -> Path:
    """Generate every level's splits and train the tokenizer into `out_dir`; a no-op when complete.

    sizes: {level: {split: rows}} (default LEVEL_SIZES).

    Safe under concurrent callers (e.g. every rank of a launch): builders serialise on a lock file.
    """
    out = Path(out_dir) if out_dir is not None else bundled_dir()
    sizes = {level: dict(split_sizes) for level, split_sizes in (sizes or LEVEL_SIZES).items()}
    if not force and _is_complete(out, sizes, seed):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _is_complete(out, sizes, seed):  # another process finished meanwhile
            return out
        (out / "manifest.json").unlink(missing_ok=True)
        digests, texts = {}, []
        for level, split_sizes in sizes.items():
            rows = generate(split_sizes, seed, level)
            (out / level).mkdir(exist_ok=True)
            for split, split_rows in rows.items():
                data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows).encode()
                (out / level / f"{split}.jsonl").write_bytes(data)
                digests[f"{level}/{split}.jsonl"] = hashlib.sha256(data).hexdigest()
            texts += ["".join(render(e)) for e in examples(rows.get("train") or next(iter(rows.values())))]
        train_tokenizer(texts).save_pretrained(str(out / "tokenizer"))
        manifest = {**_manifest(sizes, seed), "sha256": digests}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def ensure_bundled() -> Path:
    """The bundled data directory, built on first use."""
    return build()
