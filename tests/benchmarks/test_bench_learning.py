"""benchmarks/bench_learning.py on a fake `make train` output: the causal-LM baseline part runs for a
3-second budget and writes learning.{csv,json,png} with the expected columns and keys."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fake_runs(root: Path, stage1_name: str = "tiny_bd3", dataset: str = "bundled") -> Path:
    """runs/<stage1_name> (stage 1: metrics + exported config) and runs/tiny (stage 2, started from the
    stage-1 export, + test numbers)."""
    from chunksft.models import HybridConfig

    runs = root / "runs"
    stage1, stage2 = runs / stage1_name, runs / "tiny"
    HybridConfig().save_pretrained(str(stage1 / "hf"))
    stage1.mkdir(parents=True, exist_ok=True)
    stage2.mkdir(parents=True, exist_ok=True)
    rows1 = [{"step": s, "loss": 3.0 / s, "time": 1.5 * s, "train_seconds": 1.0 * s} for s in range(1, 5)]
    rows1[1]["accuracy"], rows1[3]["accuracy"] = 0.1, 0.3
    # stage 2 was resumed after step 2: its clock restarts at 0 (the bench makes it cumulative)
    rows2 = [{"step": s, "loss": 1.0 / s, "time": 0.8 * s, "train_seconds": 0.5 * (1 + (s - 1) % 2)}
             for s in range(1, 5)]
    rows2[3].update(accuracy=0.4, accuracy_refined=0.45, mean_refinement_steps=3.2)
    for run_dir, rows, batch in ((stage1, rows1, 16), (stage2, rows2, 8)):
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run_dir / "run_info.json").write_text(json.dumps({"world_size": 2}))
        marker = run_dir / "checkpoints" / "global_step4" / "COMPLETE"
        marker.parent.mkdir(parents=True)
        marker.write_text(json.dumps({"step": 4, "config": {
            "training": {"batch_size": batch}, "model": {"name_or_path": str(stage1 / "hf") if batch == 8 else None},
            "data": {"eval_generate_rows": 4, "dataset_name": dataset}}}))
    (stage2 / "test_accuracy.json").write_text(json.dumps(
        {"rows": 4, "accuracy": 0.5, "accuracy_refined": 0.75, "mean_refinement_steps": 3.0}))
    return runs


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.bench_learning", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_missing_runs_says_make_train(tmp_path):
    out = _run("--runs", str(tmp_path / "nothing"), "--results-dir", str(tmp_path / "results"))
    assert out.returncode == 2
    assert "make train" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def _bench_module():
    from benchmarks import bench_learning

    return bench_learning


def test_hybrid_side_is_read_from_the_runs(tmp_path):
    bench = _bench_module()
    # stage 1 found through stage 2's model.name_or_path, whatever its directory is called
    hybrid = bench.read_hybrid(_fake_runs(tmp_path / "a", stage1_name="my_stage1"))
    assert hybrid["stage1"]["dir"].endswith("my_stage1") and hybrid["train_seconds"] == 6.0
    assert [p["train_seconds"] for p in hybrid["curves"]["hybrid"]] == [2.0, 4.0, 6.0]
    # a hybrid trained on the user's own file is not compared against the bundled data
    try:
        bench.read_hybrid(_fake_runs(tmp_path / "b", dataset="mine.jsonl"))
    except bench.BenchError as exc:
        assert "mine.jsonl" in str(exc) and "DATASET" in str(exc)
    else:
        raise AssertionError("expected BenchError")


def test_baseline_writes_learning_outputs(tmp_path):
    runs = _fake_runs(tmp_path)
    results = tmp_path / "results"
    out = _run("--runs", str(runs), "--budget", "3", "--eval-rows", "4", "--test-rows", "4", "--train-rows", "256",
               "--batch-size", "8", "--threads", "1", "--eval-points", "3", "--max-new-tokens", "32",
               "--results-dir", str(results))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "at equal wall-clock" in out.stdout
    for ext in ("csv", "json", "png"):
        assert (results / f"learning.{ext}").stat().st_size > 0

    with open(results / "learning.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"series", "stage", "split", "step", "train_seconds", "rows_seen", "eval_rows", "accuracy",
                            "loss"}
    by_series = {}
    for r in rows:
        by_series.setdefault((r["series"], r["split"]), []).append(r)
    # hybrid: stage-1 points at their seconds, stage-2 points after the stage-1 total (4 s)
    assert [float(r["train_seconds"]) for r in by_series["hybrid", "validation"]] == [2.0, 4.0, 6.0]
    assert [float(r["train_seconds"]) for r in by_series["hybrid_refined", "validation"]] == [6.0]
    assert [int(r["rows_seen"]) for r in by_series["hybrid", "validation"]] == [64, 128, 128 + 64]
    causal = by_series["causal_lm", "validation"]
    assert 1 <= len(causal) <= 3 and float(causal[-1]["train_seconds"]) >= 3.0
    assert int(causal[-1]["eval_rows"]) == 4
    assert {s for s, split in by_series if split == "test"} == {"hybrid", "hybrid_refined", "causal_lm"}

    data = json.loads((results / "learning.json").read_text())
    assert {"meta", "budget_seconds", "verdict", "final", "hybrid", "causal_lm", "curves", "markdown"} <= set(data)
    assert "rows" not in data  # harness.markdown_summary reads only benches with Row records
    assert data["budget_seconds"] == 3.0 and data["hybrid"]["train_seconds"] == 6.0
    assert data["hybrid"]["rows_seen"] == 4 * 16 * 2 + 4 * 8 * 2
    meta = data["meta"]
    assert {"cpu", "isa", "loadavg_start", "loadavg_end", "budget_seconds"} <= set(meta)
    final = data["final"]
    assert final["split"] == "test" and final["hybrid"] == 0.5 and final["hybrid_refined"] == 0.75
    assert 0.0 <= final["causal_lm"] <= 1.0 and final["causal_lm_rows"] == 4
    assert data["causal_lm"]["rows_seen"] > 0 and data["causal_lm"]["train_seconds"] >= 3.0
    assert data["causal_lm"]["parameters"] > 0
    assert set(data["curves"]) == {"hybrid", "hybrid_refined", "causal_lm"}
