"""Sharded DeepSpeed checkpoints with completion markers, keep-last-k and loud resume.

Layout of a run's ``output_dir``::

    checkpoints/global_step{N}/            engine.save_checkpoint(tag=...) of every rank
    checkpoints/global_step{N}/COMPLETE    JSON marker written by rank 0 after all ranks saved
    checkpoints/global_step{N}_universal/  DeepSpeed universal form (world-size change), + COMPLETE

A tag counts only with its marker (`tags`: names, markers, validation); the marker lists every file
with its size and CRC-32, so a truncated, missing or bit-flipped shard is detected before the engine
touches it (a garbled byte range inside a torch zip still loads, sizes alone do not catch it). Resume
picks the newest tag that validates and fails with one clear line when tags exist but none is
usable: a run never silently starts over. Every rank must call `save` and `load` (the engine's
collectives run inside).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from chunksft.checkpoint.tags import (CHECKPOINTS, UNIVERSAL_SUFFIX, CheckpointError, file_crc, list_tags,
                                      newest_complete, read_marker, step_of, tag_files, tag_for, validate_tag,
                                      write_marker)
from chunksft.checkpoint.universal import convert_to_universal

# Fault injection for tests/reliability (never set in normal runs): CHUNKSFT_FAULT=POINT:STEP[:RANK]
# SIGKILLs the process at POINT of the save of step STEP on rank RANK (default 0). Points:
#   after_shard    right after this rank wrote its first checkpoint file (other shards, marker missing)
#   before_marker  rank 0, every rank's files written, before the COMPLETE marker
#   before_prune   rank 0, marker written, before older tags are pruned
#   sigterm        the training loop sends SIGTERM to its own rank right after optimizer step STEP
#                  (chunksft/train/loop.py: the graceful stop path, deterministically)
FAULT_ENV = "CHUNKSFT_FAULT"


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch (CPU and, when present, CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------- resume
@dataclass(frozen=True)
class ResumePoint:
    """What to load: `ckpt_root`/`tag`, whether it is the universal form of a native tag, and why
    newer tags were passed over (`tags.Found.skipped`)."""
    ckpt_root: str
    tag: str
    marker: dict
    universal: bool
    skipped: tuple[str, ...] = ()


def find_resume(resume: str, output_dir: str, world_size: int,
                check: Optional[Callable[[ResumePoint], None]] = None) -> Optional[ResumePoint]:
    """The checkpoint to resume for `resume` (auto | none | path), or None to start fresh.

    Call on rank 0 only (it reads files and may convert) and broadcast the result. A checkpoint
    saved by another number of ranks resolves to its universal form, converted here on first use.
    Raises CheckpointError when checkpoints exist but none validates. `check` (e.g. the config
    hash comparison) sees the native checkpoint first and may raise: a rejected checkpoint is
    never converted (the conversion is slow and writes a new folder next to it).
    """
    if resume == "none":
        return None
    found = newest_complete(resume, output_dir)
    if found is None:
        return None
    point = ResumePoint(found.root, found.tag, found.marker, universal=False, skipped=found.skipped)
    if check is not None:
        check(point)
    if found.marker["world_size"] == world_size:
        return point
    universal_dir = convert_to_universal(os.path.join(found.root, found.tag))
    return replace(point, tag=os.path.basename(universal_dir), universal=True)


def check_config_hash(point: ResumePoint, config_hash: str, config: dict, allow_mismatch: bool) -> Optional[str]:
    """Raise when the checkpoint's config hash differs (unless allowed); returns a warning line or None.

    config: this run's hashed fields ({section: {key: value}}); the keys whose values differ from
    the configuration recorded in the marker are named in the message.
    """
    saved = point.marker.get("config_hash")
    if saved == config_hash:
        return None
    old = point.marker.get("config", {})
    changed = sorted(f"{section}.{key}" for section, body in config.items() for key, value in body.items()
                     if key in old.get(section, {}) and old[section][key] != value)
    # Keys this version of chunksft has and the checkpoint's did not (a newer release added them).
    added = sorted(f"{section}.{key}" for section, body in config.items() for key in body
                   if old and key not in old.get(section, {}))
    parts = ([f"changed: {', '.join(changed)}"] if changed else []) + \
        ([f"not in that checkpoint's config (added by a newer chunksft): {', '.join(added)}"] if added else [])
    detail = "; ".join(parts) or "changed fields unknown"
    line = (f"{os.path.join(point.ckpt_root, point.tag)} was written with config hash {saved}, this run has "
            f"{config_hash} ({detail})")
    if not allow_mismatch:
        raise CheckpointError(line + "; restore those values, pass --allow_config_mismatch true, or start over with "
                                     "--resume none (the old run moves to previous_runs/)")
    return "warning: " + line + "; continuing because --allow_config_mismatch is set"


# ---------------------------------------------------------------------------------------------- faults
def fault_here(point: str, step: int, rank: int) -> bool:
    """True when CHUNKSFT_FAULT names this point of the save of `step` on `rank` (see FAULT_ENV)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return False
    name, at, *who = spec.split(":")
    return name == point and int(at) == step and int(who[0] if who else 0) == rank


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_first_file(engine) -> None:
    """Make this rank SIGKILL itself right after the engine wrote its first checkpoint file."""
    save = engine.checkpoint_engine.save

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        _kill_self()

    engine.checkpoint_engine.save = save_then_die


# ---------------------------------------------------------------------------------------------- manager
class CheckpointManager:
    """Saves and prunes the checkpoints of one run; every rank constructs one."""

    def __init__(self, output_dir: str, keep_last: int, *, rank: int, world_size: int):
        self.root = os.path.join(output_dir, CHECKPOINTS)
        self.keep_last, self.rank, self.world_size = keep_last, rank, world_size

    def save(self, engine, step: int, client_state: dict, meta: dict) -> str:
        """Save tag global_step{step} on every rank; rank 0 marks it complete after a barrier.

        client_state goes into the engine checkpoint (restored by `load`); it gets every rank's
        RNG states added here. meta (step, config hash, configs, ...) goes into the marker.
        """
        tag = tag_for(step)
        tag_dir = os.path.join(self.root, tag)
        if self.rank == 0:
            if os.path.isdir(tag_dir) and validate_tag(tag_dir) is None:
                # A valid checkpoint of this step exists only after --resume none or an explicit
                # older --resume PATH: keep it (renamed, no longer a tag) rather than delete saved work.
                kept = f"{tag_dir}.replaced-{int(time.time())}"
                os.replace(tag_dir, kept)
                print(f"warning: {tag_dir} already held a complete checkpoint; moved it to {kept}", flush=True)
            # A leftover of an interrupted save of the same step must not mix with the new files.
            shutil.rmtree(tag_dir, ignore_errors=True)
            shutil.rmtree(tag_dir + UNIVERSAL_SUFFIX, ignore_errors=True)
        dist.barrier()
        states = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        if fault_here("after_shard", step, self.rank):
            _kill_after_first_file(engine)
        try:
            engine.save_checkpoint(self.root, tag=tag, client_state={**client_state, "rng": states})
        except (OSError, RuntimeError) as exc:
            # Disk full / quota / file-size limit (torch.save reports these as a RuntimeError
            # "PytorchStreamWriter failed writing file" or "unexpected pos"): one line instead of a
            # traceback. The tag has no marker, so it never counts; every older tag is untouched.
            # (The other ranks stop when this process exits: their next collective fails.)
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            free = shutil.disk_usage(self.root).free / 2**20
            raise CheckpointError(f"{tag_dir}: saving failed on rank {self.rank} ({reason}; {free:.0f} MiB free); "
                                  "older checkpoints are intact: free space (or lift the file-size limit) and "
                                  "rerun with --resume auto") from None
        dist.barrier()
        # CRC-32 of the files, hashed in parallel: rank r reads every world_size-th file.
        files = tag_files(tag_dir)
        mine = {rel: file_crc(os.path.join(tag_dir, rel)) for rel in files[self.rank::self.world_size]}
        crcs = [None] * self.world_size
        dist.all_gather_object(crcs, mine)
        if self.rank == 0:
            if fault_here("before_marker", step, 0):
                _kill_self()
            write_marker(tag_dir, {**meta, "step": step, "world_size": self.world_size, "time": time.time()},
                         {rel: crc for part in crcs for rel, crc in part.items()})
            if fault_here("before_prune", step, 0):
                _kill_self()
            self._prune()
        dist.barrier()
        return tag_dir

    def _prune(self) -> None:
        """Keep the newest `keep_last` complete tags; drop older ones and stale incomplete ones."""
        tags = list_tags(self.root)
        complete = [t for t in tags if read_marker(os.path.join(self.root, t)) is not None]
        keep = set(complete[:self.keep_last])
        oldest_kept = step_of(complete[min(len(complete), self.keep_last) - 1]) if complete else None
        for tag in tags:
            # Incomplete tags newer than the kept ones may be a save in flight elsewhere: keep them.
            if tag in keep or (oldest_kept is not None and step_of(tag) > oldest_kept):
                continue
            shutil.rmtree(os.path.join(self.root, tag), ignore_errors=True)
            shutil.rmtree(os.path.join(self.root, tag + UNIVERSAL_SUFFIX), ignore_errors=True)

    def load(self, engine, point: ResumePoint) -> dict:
        """Load `point` into the engine on every rank and restore this rank's RNG (same world size).

        Returns the client state. With another world size (universal form) the RNG streams of the
        old ranks do not map onto the new ones, so they are left as seeded by the caller.
        """
        load_path, client_state = engine.load_checkpoint(point.ckpt_root, tag=point.tag)
        if load_path is None:
            raise CheckpointError(f"{os.path.join(point.ckpt_root, point.tag)}: DeepSpeed could not load it; "
                                  "pass --resume with an older tag or --resume none")
        states = client_state.get("rng") or []
        if not point.universal and len(states) == self.world_size:
            set_rng_state(states[self.rank])
        return client_state
