"""One-process runs (plain python): NaN/inf guard, DEBUG view, loud failure on corrupt checkpoints."""
from __future__ import annotations

import sys

from launching import NAN_RUNNER, module_cmd, read_jsonl, run


def test_nonfinite_batches_are_skipped_then_the_run_stops(tmp_path, train_flags):
    proc = run([sys.executable, "-c", NAN_RUNNER, *train_flags, "--output_dir", str(tmp_path),
                "--max_nonfinite_in_a_row", "3", "--eval_interval", "0", "--debug", "true"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "3 non-finite losses in a row at step 4" in proc.stderr
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(m["step"], m["skipped"]) for m in metrics] == [(1, 0), (2, 2), (3, 2)]
    assert (tmp_path / "checkpoints" / "global_step3" / "COMPLETE").exists()  # saved work is kept
    # The DEBUG view printed at step 1: masking statistics, chunks, ground truth, per-chunk loss.
    assert "[debug] masked tokens" in proc.stdout and "ground truth of masked chunks" in proc.stdout
    assert "per-chunk loss and current prediction" in proc.stdout


def test_only_corrupt_checkpoints_stop_with_a_clear_error(tmp_path, train_flags):
    tag = tmp_path / "checkpoints" / "global_step3"
    tag.mkdir(parents=True)
    (tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"garbage")
    (tag / "COMPLETE").write_text('{"step": 3, "world_size": 1, "files": '
                                  '{"zero_pp_rank_0_mp_rank_00_model_states.pt": 7}}')
    proc = run(module_cmd("chunksft.train", *train_flags, "--output_dir", str(tmp_path)), check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "none is usable" in errors[0] and "unreadable" in errors[0]
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing started over


def test_bad_flag_is_one_line_before_any_heavy_import(tmp_path):
    proc = run(module_cmd("chunksft.train", "--chunk_sise", "8"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown flag --chunk_sise; did you mean '--chunk_size'?"
