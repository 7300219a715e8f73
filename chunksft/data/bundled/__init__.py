"""Bundled default data and tokenizer, generated deterministically by our own code.

`ensure_bundled()` returns the directory holding

    train.jsonl  validation.jsonl  test.jsonl   rows {question, steps, answer, template}
    tokenizer/                                  PreTrainedTokenizerFast (tokenizer.json + config)
    manifest.json                               written last: marks a complete build

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

from chunksft.data.bundled.problems import examples, generate
from chunksft.data.bundled.vocab import (ANSWER_CLOSE_ID, ANSWER_OPEN_ID, BUNDLED_VOCAB_SIZE, EOS_TOKEN,
                                         EOS_TOKEN_ID, MASK_TOKEN, MASK_TOKEN_ID, PAD_TOKEN, PAD_TOKEN_ID,
                                         SPECIAL_TOKENS, train_tokenizer)
from chunksft.data.template import render

SPLIT_SIZES = {"train": 8000, "validation": 500, "test": 500}
SEED = 1234
# Bump when the generator or the tokenizer recipe changes: stale builds are then rebuilt.
VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent / "generated"

__all__ = ["ensure_bundled", "build", "bundled_dir", "SPLIT_SIZES", "BUNDLED_VOCAB_SIZE", "PAD_TOKEN_ID",
           "EOS_TOKEN_ID", "MASK_TOKEN_ID", "ANSWER_OPEN_ID", "ANSWER_CLOSE_ID", "PAD_TOKEN", "EOS_TOKEN",
           "MASK_TOKEN", "SPECIAL_TOKENS"]


def bundled_dir() -> Path:
    """Where the bundled data lives (see module docstring for the order of choices)."""
    if os.environ.get("CHUNKSFT_BUNDLED_DIR"):
        return Path(os.environ["CHUNKSFT_BUNDLED_DIR"])
    if os.access(PACKAGE_DIR.parent, os.W_OK):
        return PACKAGE_DIR
    return Path.home() / ".cache" / "chunksft" / "bundled"


def _manifest(sizes: dict[str, int], seed: int) -> dict:
    return {"version": VERSION, "seed": seed, "sizes": sizes}


def _is_complete(out: Path, sizes: dict[str, int], seed: int) -> bool:
    try:
        recorded = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return {k: recorded.get(k) for k in ("version", "seed", "sizes")} == _manifest(sizes, seed)


def build(out_dir: str | os.PathLike | None = None, *, sizes: dict[str, int] | None = None, seed: int = SEED,
          force: bool = False) -> Path:
    """Generate the splits and train the tokenizer into `out_dir`; a no-op when already complete.

    Safe under concurrent callers (e.g. every rank of a launch): builders serialise on a lock file.
    """
    out = Path(out_dir) if out_dir is not None else bundled_dir()
    sizes = dict(sizes or SPLIT_SIZES)
    if not force and _is_complete(out, sizes, seed):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _is_complete(out, sizes, seed):  # another process finished meanwhile
            return out
        (out / "manifest.json").unlink(missing_ok=True)
        rows = generate(sizes, seed)
        digests = {}
        for split, split_rows in rows.items():
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows).encode()
            (out / f"{split}.jsonl").write_bytes(data)
            digests[f"{split}.jsonl"] = hashlib.sha256(data).hexdigest()
        texts = ["".join(render(e)) for e in examples(rows.get("train") or next(iter(rows.values())))]
        train_tokenizer(texts).save_pretrained(str(out / "tokenizer"))
        manifest = {**_manifest(sizes, seed), "sha256": digests}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def ensure_bundled() -> Path:
    """The bundled data directory, built on first use."""
    return build()
