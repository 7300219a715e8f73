"""Shared benchmark harness: timing, peak memory, table / CSV / JSON / PNG output.

CUDA timings use `triton.testing.do_bench` (median of many launches, L2 flushed between them);
CPU timings are wall-clock: median and the 20% / 80% quantiles over `reps` runs after `warmup`.
Peak memory is the increase over the level before the call: `torch.cuda.max_memory_allocated` on
CUDA, resident set size sampled every millisecond by a thread on CPU.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    provider: str
    case: str
    ms: float | None = None        # median
    ms_p20: float | None = None
    ms_p80: float | None = None
    peak_mb: float | None = None   # extra memory over the starting level
    rate: float | None = None      # useful GFLOP/s (or another unit named by the bench)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_fn(fn: Callable[[], Any], device: str, *, warmup: int = 1, reps: int = 5) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of fn()."""
    if device == "cuda":
        import triton.testing

        median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return median, p20, p80
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn: Callable[[], Any], device: str) -> float:
    """Extra memory at the peak of one fn() call, in MB."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return (max(peak[0], _rss_bytes()) - base) / 2 ** 20


def measure(provider: str, case: str, fn: Callable[[], Any], device: str, *, reps: int = 5,
            flops: float | None = None, note: str = "") -> Row:
    """Peak memory of a first call (which doubles as the warm-up), then the timing runs."""
    peak = peak_memory_mb(fn, device)
    median, p20, p80 = time_fn(fn, device, warmup=0, reps=reps)
    rate = flops / (median * 1e-3) / 1e9 if flops else None
    return Row(provider, case, median, p20, p80, peak, rate, note)


def unavailable(provider: str, case: str, why: str) -> Row:
    return Row(provider, case, note=why)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(name: str, rows: list[Row], *, rate_unit: str = "useful GFLOP/s", baseline: str | None = None,
           meta: dict[str, Any] | None = None) -> None:
    """Print a table; write benchmarks/results/<name>.csv, .json and .png."""
    base = {r.case: r.ms for r in rows if r.provider == baseline and r.ms}
    header = f"{'provider':<26} {'case':<22} {'median ms':>10} {'p20-p80 ms':>17} {'peak MB':>9} " \
             f"{rate_unit:>15} {'speedup':>8}  note"
    print(f"\n== {name} ==")
    if meta:
        print("  " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    print(header)
    print("-" * len(header))
    for r in rows:
        speedup = base[r.case] / r.ms if r.ms and base.get(r.case) else None
        spread = f"{_fmt(r.ms_p20, '.1f')}-{_fmt(r.ms_p80, '.1f')}" if r.ms else "-"
        print(f"{r.provider:<26} {r.case:<22} {_fmt(r.ms, '.1f'):>10} {spread:>17} {_fmt(r.peak_mb, '.0f'):>9} "
              f"{_fmt(r.rate, '.1f'):>15} {_fmt(speedup, '.2f'):>8}  {r.note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in rows]
    with open(RESULTS / f"{name}.json", "w") as f:
        json.dump({"meta": meta or {}, "rate_unit": rate_unit, "rows": records}, f, indent=1)
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k != "extra"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    _plot(name, rows)
    print(f"results: {RESULTS / name}.{{csv,json,png}}")


def _plot(name: str, rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.ms]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(timed) + 1.8))
    labels = [f"{r.provider}\n{r.case}" for r in timed]
    axes[0].barh(labels, [r.ms for r in timed], xerr=[[r.ms - r.ms_p20 for r in timed], [r.ms_p80 - r.ms for r in timed]])
    axes[0].set_xlabel("median ms (p20-p80)")
    axes[1].barh(labels, [r.peak_mb or 0 for r in timed])
    axes[1].set_xlabel("peak extra memory (MB)")
    axes[1].set_yticklabels([])
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=90)
    plt.close(fig)


def device_arg(value: str) -> str:
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return value
