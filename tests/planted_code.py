"""Checkpoint files whose pickle runs code: `canary` appears iff something unpickled them unsafely."""
from __future__ import annotations

from pathlib import Path

import torch

from chunksft.checkpoint.tags import read_marker, write_marker


class WritesFile:
    """Unpickling this object calls open(path, "w"), which creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def plant_code(pt_file: Path, canary: Path) -> None:
    """Add a `WritesFile(canary)` entry to the torch file `pt_file` (a dict) and re-mark its tag as
    an attacker would: the COMPLETE marker's sizes and CRC-32s match the planted file."""
    state = torch.load(pt_file, weights_only=False)  # the test's own file
    torch.save({**state, "planted": WritesFile(canary)}, pt_file)
    tag_dir = str(pt_file.parent)
    write_marker(tag_dir, {k: v for k, v in read_marker(tag_dir).items() if k not in ("files", "crc32")})
