"""One output folder, one run (issue 13): a fresh start moves the previous run aside as a whole, a
resume on changed training rows stops with one line, and a stale lock of a dead run is taken over.

Single-process `python -m chunksft.train` runs (no launcher needed for these decisions); the busy
folder and Ctrl-C on a real 2-rank launch are in test_faults.py.
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from launching import QUIET, STEPS, assert_one_error_line, module_cmd, read_jsonl, run, tree_digest

pytestmark = pytest.mark.faults


def test_fresh_start_moves_the_previous_run_aside(run_a, tmp_path, train_flags):
    """--resume none in a folder that holds run_a (checkpoints, metrics, eval, TensorBoard, plots) and a
    lock left by a dead process: the lock is taken over with a warning, run_a's files move to
    previous_runs/<time>/ byte for byte, and the folder then holds only the new run."""
    from chunksft.train.run_folder import LOCK_FILE, RUN_FILES

    out = tmp_path / "out"
    shutil.copytree(run_a, out)
    before = {name: tree_digest(out / name) if (out / name).is_dir() else tree_digest(out)[name]
              for name in RUN_FILES if (out / name).exists()}
    assert {"checkpoints", "metrics.jsonl", "eval.jsonl", "tensorboard"} <= before.keys()
    (out / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 7, "started": "then"}))
    proc = run(module_cmd("chunksft.train", *train_flags, *QUIET, "--output_dir", str(out), "--resume", "none",
                          "--max_steps", "2", "--save_interval", "0"), log=tmp_path / "fresh.log")
    assert "took over" in proc.stdout and "no longer running" in proc.stdout
    assert "held another run: moved its files to" in proc.stdout
    (moved,) = (out / "previous_runs").iterdir()
    assert {name: tree_digest(moved / name) if (moved / name).is_dir() else tree_digest(moved)[name]
            for name in before} == before
    assert [row["step"] for row in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").glob("global_step*")) == ["global_step2"]
    assert not (out / LOCK_FILE).exists()


def test_resume_on_changed_rows_is_one_line(tmp_path, train_flags, data_files):
    """A checkpoint records its rows' fingerprint: editing one row or dropping one stops the resume
    with one line before anything is loaded; --allow_data_change continues on the new rows."""
    data = tmp_path / "train.jsonl"
    shutil.copy(data_files["train"], data)
    out = tmp_path / "out"
    flags = [*train_flags, *QUIET, "--dataset_name", str(data), "--output_dir", str(out), "--save_interval", "0"]
    run(module_cmd("chunksft.train", *flags, "--stop_at_step", "1"), log=tmp_path / "first.log")
    saved = tree_digest(out / "checkpoints")
    rows = data.read_text().splitlines()
    edited = json.loads(rows[5])
    edited["answer"] = str(int(edited["answer"]) + 1)
    for changed in ([*rows[:5], json.dumps(edited), *rows[6:]], rows[:-1]):
        data.write_text("\n".join(changed) + "\n")
        proc = run(module_cmd("chunksft.train", *flags, "--stop_at_step", "2"), check=False)
        assert proc.returncode == 2
        assert_one_error_line(proc, "was trained on other rows")
        assert tree_digest(out / "checkpoints") == saved
    proc = run(module_cmd("chunksft.train", *flags, "--stop_at_step", "2", "--allow_data_change", "true"))
    assert "continuing on the new rows from a fresh epoch" in proc.stdout
    assert json.loads((out / "run_info.json").read_text())["start_step"] == 1
    assert max(row["step"] for row in read_jsonl(out / "metrics.jsonl")) == 2 < STEPS


def test_time_based_save(tmp_path, train_flags):
    """--save_every_minutes: a save whenever that much time passed since the last one (here a few
    milliseconds: every step), independent of --save_interval."""
    out = tmp_path / "out"
    run(module_cmd("chunksft.train", *train_flags, *QUIET, "--output_dir", str(out), "--save_interval", "0",
                   "--save_every_minutes", "0.0001", "--keep_last", "10", "--stop_at_step", "3"),
        log=tmp_path / "timed.log")
    assert sorted(p.name for p in (out / "checkpoints").glob("global_step*")) == \
        ["global_step1", "global_step2", "global_step3"]
