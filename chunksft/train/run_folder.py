"""The output folder of one run: an exclusive lock, and a fresh start that never mixes two runs.

- `RunLock`: `output_dir/RUN.lock` holds the host, pid and start time of the run that owns the
  folder, under an `fcntl.flock` that the kernel drops when that process dies. A second run in the
  same folder stops with one line naming the first; a lock file left by a dead process (the flock
  is free) is taken over with a warning.
- `move_previous_run`: a fresh start (`--resume none`, or `--resume auto` finding no complete
  checkpoint) in a folder that holds another run's files moves all of them, as a whole, to
  `output_dir/previous_runs/<UTC time>/` (checkpoints, metrics, evaluation, TensorBoard, plots), so
  the next `--resume auto` can only find the new run and nothing saved is deleted.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Optional

from chunksft.train.config import ConfigError

LOCK_FILE = "RUN.lock"
PREVIOUS_RUNS = "previous_runs"
# What a run writes into its output folder (the lock excepted): moved aside together on a fresh start.
RUN_FILES = ("checkpoints", "metrics.jsonl", "eval.jsonl", "tensorboard", "loss.png", "run_info.json",
             "eval_logits.pt")


class RunLock:
    """Exclusive ownership of `output_dir` by this process (take it on global rank 0 only).

    `acquire()` raises ConfigError (one line) when another live run holds the folder; `release()`
    (also on interpreter exit through the OS closing the file) frees it.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Create the folder and take the lock; returns a warning line when a stale lock of a dead run
        was taken over. ConfigError (one line) when the folder cannot be created or written."""
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            what = "is a file" if os.path.isfile(folder) else f"is not writable ({exc.strerror})"
            raise ConfigError(f"training.output_dir {folder} {what}; pass a writable folder as --output_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe(_read_owner(fd))
            os.close(fd)
            raise ConfigError(f"training.output_dir {os.path.dirname(self.path)} is in use by another run ({owner}); "
                              "wait for it to finish, stop it, or pass another --output_dir") from None
        previous = _read_owner(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        if previous:
            return (f"warning: took over {self.path} left by a run that is no longer running "
                    f"({_describe(previous)})")
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the flock: nobody can take a lock on this inode meanwhile
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def _read_owner(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "owner unknown"
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started {owner.get('started', '?')}"


def previous_run_files(output_dir: str) -> list[str]:
    """The run files present in `output_dir` (names from RUN_FILES)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]


def move_previous_run(output_dir: str) -> Optional[str]:
    """Move another run's files out of the way of a fresh start; returns where they went (or None).

    Call with the lock held, on global rank 0, before anything of the new run is written.
    """
    names = previous_run_files(output_dir)
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = os.path.join(output_dir, PREVIOUS_RUNS, stamp)
    suffix = 1
    while os.path.exists(target):  # two fresh starts within one second
        target = os.path.join(output_dir, PREVIOUS_RUNS, f"{stamp}-{suffix}")
        suffix += 1
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(output_dir, name), os.path.join(target, name))
    return target
