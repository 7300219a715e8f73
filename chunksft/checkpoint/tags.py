"""Checkpoint tags of a run: names, COMPLETE markers, validation and the newest usable tag.

A tag is ``checkpoints/global_step{N}`` (plus ``global_step{N}_universal``, its DeepSpeed universal
form); it counts only with its marker, which lists every file with its size and CRC-32 so that a
truncated, missing or bit-flipped shard is detected before the engine touches it. This module only
reads and writes files: saving and loading through the engine live in `manager`, the universal
conversion in `universal`; both import from here.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from typing import NamedTuple, Optional

from chunksft.checkpoint.pickles import pickle_problem

MARKER = "COMPLETE"
CHECKPOINTS = "checkpoints"
UNIVERSAL_SUFFIX = "_universal"
_TAG = re.compile(r"^global_step(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint problem the user must act on; the message is one line with the fix."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> Optional[int]:
    match = _TAG.match(tag)
    return int(match.group(1)) if match else None


def read_marker(tag_dir: str) -> Optional[dict]:
    """The marker of a tag directory, or None when absent or unreadable (an incomplete save)."""
    try:
        with open(os.path.join(tag_dir, MARKER)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def tag_files(tag_dir: str) -> list[str]:
    """Every file under `tag_dir` except the marker (relative paths, sorted: the same on every rank)."""
    return sorted(os.path.relpath(os.path.join(root, name), tag_dir)
                  for root, _, names in os.walk(tag_dir) for name in names if not name.startswith(MARKER))


def file_crc(path: str) -> str:
    """CRC-32 of a file's bytes (8 hex digits), read in 16 MiB blocks."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def write_marker(tag_dir: str, meta: dict, crcs: Optional[dict[str, str]] = None) -> None:
    """Record `meta` plus the size and CRC-32 of every file under `tag_dir`, atomically (tmp + rename).

    crcs: precomputed {relative path: CRC} (the manager spreads the hashing over the ranks); missing
    entries are computed here.
    """
    files = {rel: os.path.getsize(os.path.join(tag_dir, rel)) for rel in tag_files(tag_dir)}
    crcs = {rel: (crcs or {}).get(rel) or file_crc(os.path.join(tag_dir, rel)) for rel in files}
    tmp = os.path.join(tag_dir, MARKER + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({**meta, "files": files, "crc32": crcs}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(tag_dir, MARKER))


def validate_tag(tag_dir: str) -> Optional[str]:
    """None when the tag is complete and every file is intact; otherwise why not (one line).

    Sizes from the marker, the CRC-32 of every file (markers written before CRCs were recorded
    skip this), then every ``*.pt`` in the folder, recorded in the marker or not (DeepSpeed's loaders
    glob it), opened memory-mapped with the weights-only unpickler (`pickle_problem`: no pickled code
    runs; a torch zip archive whose tail is cut or garbled fails to open).
    """
    marker = read_marker(tag_dir)
    if marker is None:
        return f"{tag_dir}: no {MARKER} marker (the save did not finish)"
    for rel, size in marker["files"].items():
        path = os.path.join(tag_dir, rel)
        if not os.path.isfile(path):
            return f"{path}: missing"
        if os.path.getsize(path) != size:
            return f"{path}: {os.path.getsize(path)} bytes, the marker recorded {size}"
        crc = marker.get("crc32", {}).get(rel)
        if crc is not None and file_crc(path) != crc:
            return f"{path}: CRC-32 {file_crc(path)}, the marker recorded {crc} (the file was modified or corrupted)"
    for rel in tag_files(tag_dir):
        if rel.endswith(".pt") and (problem := pickle_problem(os.path.join(tag_dir, rel))):
            return problem
    return None


def list_tags(ckpt_root: str) -> list[str]:
    """Native tags ``global_step{N}`` under `ckpt_root`, newest first."""
    if not os.path.isdir(ckpt_root):
        return []
    tags = [t for t in os.listdir(ckpt_root) if step_of(t) is not None and os.path.isdir(os.path.join(ckpt_root, t))]
    return sorted(tags, key=step_of, reverse=True)


def _candidates(resume: str, output_dir: str) -> tuple[str, list[str]]:
    """(checkpoint root, native tags to try newest first) for a --resume value."""
    if resume == "auto":
        root = os.path.join(output_dir, CHECKPOINTS)
        return root, list_tags(root)
    path = os.path.abspath(resume.rstrip("/"))
    if not os.path.exists(path):
        raise CheckpointError(f"{resume}: no such path; pass a run's output_dir or one of its "
                              f"{CHECKPOINTS}/global_step<N> folders (or --resume auto / none)")
    if step_of(os.path.basename(path)) is not None:
        return os.path.dirname(path), [os.path.basename(path)]
    root = path if os.path.basename(path) == CHECKPOINTS else os.path.join(path, CHECKPOINTS)
    tags = list_tags(root)
    if not tags:
        raise CheckpointError(f"{resume}: no global_step<N> checkpoint under {root}")
    return root, tags


class Found(NamedTuple):
    """The checkpoint `newest_complete` chose, and why each newer tag was passed over (one line each,
    newest first): a resumed run says so instead of silently starting from an older step."""
    root: str
    tag: str
    marker: dict
    skipped: tuple[str, ...]


def passed_over(skipped: tuple[str, ...], chosen: str, doing: str) -> list[str]:
    """One warning line per newer tag passed over for `chosen` (`Found.skipped`); doing: e.g. "resuming from"."""
    return [f"warning: passed over a newer checkpoint, {doing} {chosen} instead: {problem}" for problem in skipped]


def newest_complete(resume: str, output_dir: str) -> Optional[Found]:
    """The newest valid checkpoint for `resume` (auto | path): root, native tag, marker, skipped newer tags.

    None when there is no checkpoint at all; CheckpointError when checkpoints exist but none is valid.
    With --resume auto, a tag without a marker file is a save that never finished, not a checkpoint:
    when only such tags exist (a run killed during its first save) the run starts fresh, and its
    first save replaces them. A marker that exists but does not parse counts as a (corrupt)
    checkpoint; an explicit path that does not validate is always an error.
    """
    root, tags = _candidates(resume, output_dir)
    problems = []
    for tag in tags:
        problem = validate_tag(os.path.join(root, tag))
        if problem is None:
            return Found(root, tag, read_marker(os.path.join(root, tag)), tuple(problems))
        problems.append(problem)
    if resume == "auto" and not any(os.path.exists(os.path.join(root, tag, MARKER)) for tag in tags):
        return None
    raise CheckpointError(f"{root}: {len(tags)} checkpoint(s) but none is usable (newest problem: {problems[0]}); "
                          "fix or remove them, or pass --resume none to start over deliberately")
