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


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so an RSS baseline is not inflated by an earlier call."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], Any], device: str) -> float:
    """Extra memory at the peak of one fn() call, in MB."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    _trim_heap()
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


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str, *, warmup: int = 1, reps: int = 5,
                     peak: bool = True) -> dict[str, tuple[float, float, float, float | None]]:
    """Time several providers side by side: every round runs each fn once, in a rotating order, so a
    slow phase of a shared machine hits all of them alike (ratios stay meaningful under load).

    The first warm-up call of each fn also measures its peak memory (`peak_memory_mb`).
    Returns {name: (median ms, p20 ms, p80 ms, peak MB or None)}.
    """
    names = list(fns)
    peaks: dict[str, float | None] = {name: None for name in names}
    for i in range(warmup):
        for name in names:
            if i == 0 and peak:
                peaks[name] = peak_memory_mb(fns[name], device)
            else:
                fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fns[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), _quantile(t, 0.2), _quantile(t, 0.8), peaks[name])
            for name, t in times.items()}


def fit_exponent(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares fit of log y = a + p log x -> (p, a); None with fewer than 2 distinct x."""
    import math

    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return slope, my - slope * mx


def plot_scaling(name: str, series: dict[str, tuple[list[float], list[float]]], *, xlabel: str = "L",
                 ylabel: str = "median ms", title: str | None = None, panels: dict[str, list[str]] | None = None) -> Path:
    """Log-log lines of y vs x per series with the fitted exponent in the legend -> results/<name>.png.

    panels: optional {panel title: [series names]} to split the series over subplots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panels or {title or name: list(series)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (panel, members) in zip(axes[0], panels.items()):
        for key in members:
            xs, ys = series[key]
            fit = fit_exponent(xs, ys)
            label = key if fit is None else f"{key}  (~L^{fit[0]:.2f})"
            ax.plot(xs, ys, "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title or name)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def machine() -> dict[str, Any]:
    """Machine description stored with every result: CPU model, cores, threads, load, versions."""
    import platform

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version())
    try:  # the vector ISA and what runs on it: csrc's SIMD clone, ATen's kernels, the BLAS
        from chunksft.env import machine as env_machine

        found = env_machine()
        info.update({k: found[k] for k in ("cpu", "isa", "simd_clone", "aten_capability", "blas") if k in found})
    except Exception:  # noqa: BLE001 - an informational field must never fail a benchmark
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
           meta: dict[str, Any] | None = None, plot: bool = True) -> None:
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
        json.dump({"meta": meta or {}, "machine": machine(), "rate_unit": rate_unit, "rows": records}, f, indent=1)
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k != "extra"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    if plot:
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


# ------------------------------------------------------------------ markdown summary of results/
SUMMARY_BEGIN, SUMMARY_END = "<!-- results:begin -->", "<!-- results:end -->"


def markdown_summary(results: Path = RESULTS) -> str:
    """One markdown table per results/*.json (the latest run of every benchmark)."""
    parts = []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not data.get("rows"):
            continue  # not a timing report (cost_model, learning: their own README sections)
        rows, meta, unit = data["rows"], data.get("meta", {}), data.get("rate_unit", "rate")
        shown = {k: v for k, v in meta.items() if not isinstance(v, (dict, list))}
        parts.append(f"**{path.stem}** — " + ", ".join(f"{k}={v}" for k, v in shown.items()) + "\n")
        if data.get("machine"):
            m = data["machine"]
            isa = "+".join(m.get("isa", [])) or "?"
            parts.append(f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, ISA {isa}, csrc SIMD clone "
                         f"{m.get('simd_clone', '?')}, ATen {m.get('aten_capability', '?')}, BLAS {m.get('blas', '?')}"
                         + (f", load {m['loadavg_1m']}" if "loadavg_1m" in m else "") + "\n")
        parts.append(f"| provider | case | median ms | p20-p80 ms | peak MB | {unit} | note |")
        parts.append("|---|---|---:|---:|---:|---:|---|")
        for r in rows:
            spread = f"{r['ms_p20']:.1f}-{r['ms_p80']:.1f}" if r.get("ms") else "-"
            parts.append(f"| {r['provider']} | {r['case']} | {_fmt(r.get('ms'), '.1f')} | {spread} | "
                         f"{_fmt(r.get('peak_mb'), '.0f')} | {_fmt(r.get('rate'), '.1f')} | {r.get('note', '')} |")
        parts.append("")
    return "\n".join(parts)


def update_readme(readme: Path = Path(__file__).resolve().parent / "README.md") -> None:
    """Replace the block between the results markers of benchmarks/README.md with `markdown_summary()`."""
    text = readme.read_text() if readme.exists() else f"{SUMMARY_BEGIN}\n{SUMMARY_END}\n"
    if SUMMARY_BEGIN not in text:
        text += f"\n{SUMMARY_BEGIN}\n{SUMMARY_END}\n"
    head, rest = text.split(SUMMARY_BEGIN, 1)
    tail = rest.split(SUMMARY_END, 1)[1]
    readme.write_text(f"{head}{SUMMARY_BEGIN}\n{markdown_summary()}\n{SUMMARY_END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--summary"]:
        update_readme()
    else:
        print(markdown_summary())
