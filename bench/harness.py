"""The benchmark harness: time a candidate against baselines, fairly, and keep the numbers.

    python -m bench ingest --messages 200000 --json

Fair means: every case runs once per round, from one benchmark process and on the same input,
and rounds alternate (candidate, baseline, baseline, candidate, ...), so drift in the machine's
state (page cache, thermal, neighbours) hits every case alike. Each case reports the median
wall time over its runs, the throughput that implies, and the peak RSS of the process tree
it started (sampled every 50 ms: the sum over a process and all its children).

Ratios are throughput ratios, candidate / baseline: above 1 the candidate is faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

RESULTS = Path(__file__).resolve().parent / "results"  # gitignored
SAMPLE_SECONDS = 0.05


class PeakRSS:
    """Max over time of the summed RSS of process `pid` and all its descendants, in bytes.

    Shared pages are counted once per process, so this errs high: it is an upper bound.
    """

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS):
        self.root, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:  # the root has exited
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a child exited between listing and sampling
                pass
        self.peak = max(self.peak, total)


def run_child(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd` to completion; return (peak RSS of its process tree in bytes, its stdout).

    Raises RuntimeError with the child's stderr when it exits non-zero.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as rss:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-4000:]}")
    return rss.peak, out


@dataclasses.dataclass
class Case:
    """One thing to time. `run` does the work once and returns its peak RSS in bytes (or None).

    `before` runs untimed ahead of each run (e.g. to remove the previous run's output).
    """

    run: Callable[[], int | None]
    before: Callable[[], None] | None = None


def measure(cases: dict[str, Case], items: int, repeats: int = 3) -> dict[str, dict]:
    """Run every case `repeats` times, alternating, and summarise each: median seconds, items/s, peak RSS."""
    runs: dict[str, list[tuple[float, int | None]]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            case = cases[name]
            if case.before:
                case.before()
            t0 = time.perf_counter()
            rss = case.run()
            runs[name].append((time.perf_counter() - t0, rss))
    out = {}
    for name, rs in runs.items():
        seconds = [s for s, _ in rs]
        peaks = [p for _, p in rs if p is not None]
        median = statistics.median(seconds)
        out[name] = {"seconds": seconds, "median_s": median, "items_per_s": items / median,
                     "peak_rss_bytes": max(peaks) if peaks else None}  # fmt: skip
    return out


def ratios(results: dict[str, dict], candidate: str) -> dict[str, float]:
    """Throughput of `candidate` over each other case's: > 1 means the candidate is faster."""
    c = results[candidate]["items_per_s"]
    return {name: c / r["items_per_s"] for name, r in results.items() if name != candidate}


def goal(label: str, value: float, op: str, threshold: float) -> dict:
    passed = value >= threshold if op == ">=" else value < threshold if op == "<" else None
    if passed is None:
        raise ValueError(f"unknown comparison {op!r}; use '>=' or '<'")
    return {"goal": f"{label} {op} {threshold:g}", "value": value, "passed": passed}


def environment() -> dict:
    """What the numbers depend on: the machine, the versions and the commit."""
    import duckdb

    root = Path(__file__).resolve().parents[1]
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "cpus": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(), "duckdb": duckdb.__version__,
        "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "src")),
    }  # fmt: skip


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; each adds its own."""
    ap = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="runs of each case (the median is reported)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout (the table goes to stderr)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    return ap


def in_workdir(args: argparse.Namespace, name: str, run: Callable[[argparse.Namespace, Path], dict]) -> dict:
    """run(args, work) in `args.workdir` (created, kept) or, when it is None, in a temporary directory."""
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        return run(args, Path(tmp))


def report(name: str, args: argparse.Namespace, items_label: str, results: dict[str, dict], candidate: str,
           goals: list[dict]) -> dict:  # fmt: skip
    """Print the table, write bench/results/NAME.json, and (with --json) the same JSON to stdout."""
    from rich.console import Console
    from rich.table import Table

    params = {k: v for k, v in vars(args).items() if k not in ("json", "check")}
    rel = ratios(results, candidate)
    t = Table(title=f"bench {name}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    for col in ("case", "median s", f"{items_label}/s", f"{candidate} / case", "peak RSS MB", "runs (s)"):
        t.add_column(col, justify="left" if col == "case" else "right")
    for case, r in results.items():
        rss = r["peak_rss_bytes"]
        t.add_row(case, f"{r['median_s']:.2f}", f"{r['items_per_s']:,.0f}",
                  f"{rel[case]:.2f}" if case in rel else "-", "-" if rss is None else f"{rss / 1e6:,.0f}",
                  " ".join(f"{s:.2f}" for s in r["seconds"]))  # fmt: skip
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = 120  # a log file: don't wrap the table at 80 columns
    console.print(t)
    for g in goals:
        mark = "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]"
        console.print(f"{mark}  {g['goal']}  (measured {g['value']:.3g})")
    doc = {"bench": name, "params": params, "env": environment(), "candidate": candidate, "results": results,
           "ratios": rel, "goals": goals, "check": args.check}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    console.print(f"[dim]written {path}[/]")
    if args.json:
        json.dump(doc, sys.stdout, indent=1, default=str)
        print()
    return doc


def finish(name: str, doc: dict, console, as_json: bool) -> None:
    """Print each goal's verdict, write bench/results/NAME.json, and (with --json) the same JSON to stdout."""
    for g in doc["goals"]:
        console.print(f"{'[green]PASS[/]' if g['passed'] else '[red]FAIL[/]'}  {g['goal']}  (measured {g['value']:.4g})")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    console.print(f"[dim]written {path}[/]")
    if as_json:
        json.dump(doc, sys.stdout, indent=1, default=str)
        print()
