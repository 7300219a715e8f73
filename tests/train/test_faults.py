"""Fault injection on real 2-rank DeepSpeed ZeRO-3 runs (CPU, gloo): kill, corrupt, fill the disk, resume.

Every fault ends with a relaunch under `--resume auto` and two checks (issue 8, docs/design.md §5):
- the final weights equal the uninterrupted reference run_a's bit for bit (with deterministic CPU
  settings a run resumed from an older checkpoint reaches the same weights, so this also covers the
  faults that destroy the newest checkpoint);
- every checkpoint that was complete before the fault has the same bytes afterwards (sha256).

Runs start from a copy of run_a's checkpoints where the fault allows it (a 3-step resume instead of
a 6-step run), with evaluation and plots off (run-only settings, outside the config hash).
`make test` runs the tests marked only `faults`; `make test-faults` (pytest --faults) adds
those marked `faults_full`.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from launching import (HALF, QUIET, REPO, STEPS, assert_one_error_line, assert_same_weights, deepspeed_cmd, free_port,
                       module_cmd, run, run_env, start, tree_digest)

pytestmark = pytest.mark.faults
FAULT = "CHUNKSFT_FAULT"


def tag(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"global_step{step}"


def launch(train_flags, out: Path, log: str, *, check: bool = True, env: dict | None = None,
           prefix: list[str] | None = None, log_dir: Path | None = None) -> subprocess.CompletedProcess:
    """One 2-rank deepspeed launch of the shared test flags into `out` (auto-resume is the default);
    output to (log_dir or out)/log."""
    return run([*(prefix or []), *deepspeed_cmd(2), *train_flags, *QUIET, "--output_dir", str(out)], check=check, env=env,
               log=(log_dir or out) / log)


def copy_checkpoints(reference: Path, out: Path, steps: tuple[int, ...]) -> dict[str, str]:
    """Copy tags `steps` of the reference run (and its `latest`) into out/checkpoints; digest of the copy."""
    for step in steps:
        shutil.copytree(tag(reference, step), tag(out, step))
    shutil.copy(reference / "checkpoints" / "latest", out / "checkpoints" / "latest")
    return tree_digest(out / "checkpoints")


def assert_untouched(out: Path, before: dict[str, str], steps: tuple[int, ...]) -> None:
    """The files of the complete tags `steps` are byte-identical to `before` (a tree_digest)."""
    after = tree_digest(out / "checkpoints")
    for step in steps:
        prefix = f"global_step{step}/"
        kept = {k: v for k, v in before.items() if k.startswith(prefix)}
        assert kept and kept == {k: v for k, v in after.items() if k.startswith(prefix)}, f"global_step{step} changed"


# ------------------------------------------------------------------------------------- kill in save
SAVE_FAULTS = [
    pytest.param(f"after_shard:{STEPS}:1", id="rank1-after-first-shard"),
    pytest.param(f"after_shard:{STEPS}:0", id="rank0-after-first-shard", marks=pytest.mark.faults_full),
    pytest.param(f"before_marker:{STEPS}", id="before-marker", marks=pytest.mark.faults_full),
    pytest.param(f"before_prune:{STEPS}", id="after-marker-before-prune", marks=pytest.mark.faults_full),
]


@pytest.mark.parametrize("fault", SAVE_FAULTS)
def test_sigkill_during_save_then_resume(run_a, tmp_path, train_flags, fault):
    """Resume at step 3, SIGKILL a rank inside the save of step 6 (CHUNKSFT_FAULT hook), relaunch."""
    before = copy_checkpoints(run_a, tmp_path, (HALF,))
    killed = launch(train_flags, tmp_path, "killed.log", check=False, env={FAULT: fault})
    assert killed.returncode != 0
    marker = tag(tmp_path, STEPS) / "COMPLETE"
    assert marker.exists() == fault.startswith("before_prune")  # killed before the marker: never counts
    assert_untouched(tmp_path, before, (HALF,))
    resumed = launch(train_flags, tmp_path, "resumed.log")
    expected_start = STEPS if fault.startswith("before_prune") else HALF
    assert json.loads((tmp_path / "run_info.json").read_text())["start_step"] == expected_start, resumed.stdout[-2000:]
    assert_same_weights(tmp_path, run_a)
    assert_untouched(tmp_path, before, (HALF,))


# ------------------------------------------------------------------------------------- preemption
def test_sigterm_saves_the_step_then_resume(run_a, tmp_path, train_flags):
    """SIGTERM reaches rank 1 right after step 2 (CHUNKSFT_FAULT=sigterm:2:1, the signal a scheduler
    sends before preempting): every rank finishes step 2, saves a complete global_step2, one line is
    printed, the launcher exits non-zero; the relaunch continues to run_a's weights bit for bit.
    The start uses an empty torch-extensions cache: on CPU nothing is JIT-compiled (DeepSpeed's
    shared-memory comm op would be, for minutes, on a machine's first start)."""
    from chunksft.checkpoint.tags import validate_tag

    extensions = tmp_path / "torch_extensions"
    stopped = launch(train_flags, tmp_path, "stopped.log", check=False,
                     env={FAULT: "sigterm:2:1", "TORCH_EXTENSIONS_DIR": str(extensions)})
    assert not list(extensions.rglob("*shm_comm*")), "DeepSpeed compiled its shm comm op at start-up"
    assert stopped.returncode != 0
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("stopped by")]
    assert lines == [f"stopped by SIGTERM after step 2; saved {tag(tmp_path, 2)}: relaunch with --resume auto "
                     "to continue"], stopped.stderr[-3000:]
    assert validate_tag(str(tag(tmp_path, 2))) is None and _steps_logged(tmp_path / "metrics.jsonl") == 2
    launch(train_flags, tmp_path, "resumed.log")
    assert json.loads((tmp_path / "run_info.json").read_text())["start_step"] == 2
    assert_same_weights(tmp_path, run_a)


def test_busy_folder_is_refused_then_ctrl_c_saves(tmp_path, train_flags):
    """A long 2-rank run (launch/train.sh) holds its folder's lock: a second run there stops with one
    line naming the first (host, pid). Ctrl-C (SIGINT to the script's whole process group, as a
    terminal sends it): every rank finishes its step, saves it completely, one line, no traceback,
    exit non-zero, lock released."""
    from chunksft.checkpoint.tags import validate_tag
    from chunksft.train.run_folder import LOCK_FILE

    log = tmp_path / "first.log"
    config, flags = train_flags[1], train_flags[2:]
    first = subprocess.Popen(["bash", "launch/train.sh", config, *flags, *QUIET, "--output_dir", str(tmp_path),
                              "--max_steps", "5000", "--save_interval", "0"], cwd=REPO,
                             env=run_env(NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), stdout=log.open("w"),
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while _steps_logged(tmp_path / "metrics.jsonl") < 1:
            assert first.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        owner = json.loads((tmp_path / LOCK_FILE).read_text())
        second = run(module_cmd("chunksft.train", *train_flags, "--output_dir", str(tmp_path)), check=False)
        assert second.returncode == 2
        assert_one_error_line(second, f"in use by another run (host {owner['host']}, pid {owner['pid']}")
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=300) != 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    (line,) = [line for line in text.splitlines() if line.startswith("stopped by SIGINT after step")]
    step = int(re.search(r"after step (\d+);", line).group(1))
    assert validate_tag(str(tag(tmp_path, step))) is None and _steps_logged(tmp_path / "metrics.jsonl") == step
    assert not (tmp_path / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------- kill any time
def _steps_logged(metrics: Path) -> int:
    """Newest step in a metrics.jsonl being written (a half-written last line is ignored)."""
    newest = 0
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                newest = max(newest, json.loads(line)["step"])
            except (ValueError, KeyError):
                pass
    return newest


def kill_rank_after_step(proc: subprocess.Popen, out: Path, rank: int, step: int, timeout: float = 900) -> int:
    """SIGKILL the training process of `rank` (a child of the launcher) as soon as step `step` is
    logged; returns the launcher's exit code."""
    deadline = time.time() + timeout
    while _steps_logged(out / "metrics.jsonl") < step:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before step {step}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"step {step} not reached in {timeout} s")
        time.sleep(0.05)
    victims = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if p.environ().get("RANK") == str(rank) and "chunksft.train" in " ".join(p.cmdline())]
    assert len(victims) == 1, victims
    victims[0].send_signal(signal.SIGKILL)
    return proc.wait(timeout=300)


@pytest.mark.faults_full
@pytest.mark.parametrize("seed", [0, 1, 7])  # seed -> (step, rank): 0 -> (4, 1), 1 -> (2, 0), 7 -> (3, 0)
def test_sigkill_random_rank_at_random_step(run_a, tmp_path, train_flags, seed):
    """A fresh run; a seeded random rank is SIGKILLed right after a seeded random step is logged
    (before the first save, during it, or after it); the relaunch reaches run_a's weights."""
    rng = random.Random(seed)
    step, rank = rng.randint(1, STEPS - 1), rng.randint(0, 1)
    proc = start([*deepspeed_cmd(2), *train_flags, *QUIET, "--output_dir", str(tmp_path)], log=tmp_path / "killed.log")
    assert kill_rank_after_step(proc, tmp_path, rank, step) != 0
    complete = tuple(s for s in (HALF, STEPS) if (tag(tmp_path, s) / "COMPLETE").exists())
    before = tree_digest(tmp_path / "checkpoints") if complete else {}
    launch(train_flags, tmp_path, "resumed.log")
    start_step = json.loads((tmp_path / "run_info.json").read_text())["start_step"]
    assert start_step == (max(complete) if complete else 0)
    assert_same_weights(tmp_path, run_a)
    if complete:
        assert_untouched(tmp_path, before, complete)


# ------------------------------------------------------------------------------------- damaged files
def _shard(run_dir: Path) -> Path:
    return tag(run_dir, STEPS) / "zero_pp_rank_1_mp_rank_00_optim_states.pt"


def _garble(path: Path) -> None:
    """Flip 64 bytes in the middle: same size, and the torch zip still opens (only a checksum sees it)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncate-shard": lambda out: _shard(out).write_bytes(_shard(out).read_bytes()[:len(_shard(out).read_bytes()) // 2]),
    "garble-shard": lambda out: _garble(_shard(out)),
    "delete-shard": lambda out: _shard(out).unlink(),
    "garble-marker": lambda out: (tag(out, STEPS) / "COMPLETE").write_text("{not json"),
    "delete-latest": lambda out: (out / "checkpoints" / "latest").unlink(),
}


@pytest.mark.faults_full  # the fast check of the CRC: tests/checkpoint/test_manager.py (damage "flip")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_then_resume(run_a, tmp_path, train_flags, damage):
    """Damage run_a's newest tag (step 6) in a copy; auto-resume skips it for step 3 (or, for a
    deleted `latest`, which chunksft never reads, keeps step 6) and ends at run_a's weights."""
    before = copy_checkpoints(run_a, tmp_path, (HALF, STEPS))
    DAMAGE[damage](tmp_path)
    launch(train_flags, tmp_path, "resumed.log")
    start_step = json.loads((tmp_path / "run_info.json").read_text())["start_step"]
    assert start_step == (STEPS if damage == "delete-latest" else HALF)
    passed_over = [line for line in (tmp_path / "resumed.log").read_text().splitlines()
                   if "passed over a newer checkpoint" in line]
    if damage == "delete-latest":
        assert not passed_over
    else:  # the log says which step was lost and why, once (rank 0)
        assert len(passed_over) == 1 and f"global_step{STEPS}" in passed_over[0], passed_over
    assert_same_weights(tmp_path, run_a)
    assert_untouched(tmp_path, before, (HALF, STEPS) if damage == "delete-latest" else (HALF,))


# ------------------------------------------------------------------------------------- disk full
def _size_limited(path: Path, total: int, per_file: int) -> list[str]:
    """Make `path` a tmpfs of `total` bytes when this process may mount one (root) and return [];
    otherwise return a command prefix capping every file the launch writes at `per_file` bytes
    (RLIMIT_FSIZE via `ulimit -f`: writes past it fail with EFBIG, Python ignores SIGXFSZ).
    Either way the next checkpoint save fails midway, like on a full disk."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={total}", "tmpfs", str(path)], capture_output=True)
    return [] if mount.returncode == 0 else ["bash", "-c", f'ulimit -f {per_file // 1024} && exec "$@"', "bash"]


@pytest.mark.faults_full
def test_disk_full_during_save_then_resume(run_a, tmp_path, train_flags):
    """The save of step 6 runs out of space: one clear error line, step 3 intact; with space again
    the relaunch resumes from step 3 and reaches run_a's weights."""
    out = tmp_path / "small"
    files = [f for f in tag(run_a, HALF).rglob("*") if f.is_file()]
    # Room for step 3 and the logs but not step 6; or (no mount) files up to half a shard.
    prefix = _size_limited(out, sum(f.stat().st_size for f in files) + 4 * 2**20,
                           max(f.stat().st_size for f in files) // 2)
    try:
        before = copy_checkpoints(run_a, out, (HALF,))
        full = launch(train_flags, out, "full.log", check=False, prefix=prefix, log_dir=tmp_path)  # out is full
        assert full.returncode != 0
        errors = [line for line in full.stderr.splitlines() if "saving failed on rank" in line]
        assert errors and "older checkpoints are intact" in errors[0], full.stderr[-3000:]
        assert not (tag(out, STEPS) / "COMPLETE").exists()
        assert_untouched(out, before, (HALF,))
        if not prefix:
            subprocess.run(["mount", "-o", "remount,size=256m", str(out)], check=True)
        launch(train_flags, out, "resumed.log", log_dir=tmp_path)
        assert json.loads((out / "run_info.json").read_text())["start_step"] == HALF
        assert_same_weights(out, run_a)
        assert_untouched(out, before, (HALF,))
    finally:
        if not prefix:
            subprocess.run(["umount", "-l", str(out)], capture_output=True)
