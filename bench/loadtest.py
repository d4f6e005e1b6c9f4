"""Load test of the reward-model server: concurrent clients against `rluf serve` on loopback.

    python -m bench loadtest --seconds 120 --clients 8               # a length model trained here
    python -m bench loadtest --model runs/rm/love --seconds 30 --items 16

Starts `python -m rluf.reward.serve` on 127.0.0.1 at a free port in a child process, with the given
model directory or, without one, a length model trained here on synthetic rows; waits for /ready;
runs --clients threads, each posting requests of --items (context, response) pairs back to back to
--endpoint (/score, or /get_reward with ChatML prompts) for --seconds; then stops the server.
Only loopback is contacted, and proxies from the environment are ignored.

Reported: requests, errors, items; latency p50/p95/p99 in ms, each with a distribution-free 95 %
interval from order statistics (n = requests); throughput in requests/s and items/s, overall and as
the mean over 1-second windows with its 95 % interval (n = windows). The table prints, the JSON goes to
bench/results/loadtest.json (--out to change). Goal: zero errors (--check exits 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import harness

Z95 = 1.959963984540054
WORDS = ("the a to of and in plan trip code bug fix day week city museum walk rain idea list step check "
         "thanks great sure here is how you can try this then that maybe first next finally").split()  # fmt: skip


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench loadtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model", type=Path, default=None, help="reward model directory (default: train a length model)")
    ap.add_argument("--seconds", type=float, default=120.0, help="how long the clients send requests")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (threads, one connection each)")
    ap.add_argument("--items", type=int, default=8, help="(context, response) pairs per request")
    ap.add_argument("--endpoint", choices=("score", "get_reward"), default="score")
    ap.add_argument("--seed", type=int, default=0, help="seed of the request texts")
    ap.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server's /ready")
    ap.add_argument("--out", type=Path, default=harness.RESULTS / "loadtest.json", help="where the JSON result goes")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout (the table goes to stderr)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1 or args.items < 1:
        ap.error("--seconds must be > 0, --clients and --items >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-loadtest-") as tmp:
        model = args.model or train_length_model(Path(tmp) / "length")
        with Server(model, Path(tmp) / "server.log", args.startup_timeout) as server:
            results = run_clients(server.url, args)
    goals = [harness.goal("errors", results["errors"], "<", 1)]
    return report(args, results, goals)


def train_length_model(directory: Path) -> Path:
    """A length reward model fitted on synthetic rows (longer answers get the signal more often)."""
    from rluf.reward.base import LengthRewardModel

    rng = random.Random(0)
    responses = [" ".join(rng.choices(WORDS, k=rng.randint(1, 80))) for _ in range(400)]
    labels = [int(rng.random() < min(0.9, len(r.split()) / 100)) for r in responses]
    LengthRewardModel(signal="love", context_turns=4).fit([""] * len(responses), responses, labels).save(directory)
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m rluf.reward.serve` on 127.0.0.1 in a child process, ready on entry, stopped on exit."""

    def __init__(self, model: Path, log: Path, timeout: float):
        self.model, self.log_path, self.timeout = model, log, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "rluf.reward.serve", "--model", f"rm={self.model}", "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as c:
            while True:
                if self.proc.poll() is not None:
                    self._stop()
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self._log_tail()}")
                try:
                    if c.get("/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self._stop()
                    raise RuntimeError(f"the server was not ready within {self.timeout:g} s:\n{self._log_tail()}")
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def _log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]


def make_payloads(endpoint: str, items: int, seed: int, count: int = 64) -> list[dict]:
    """`count` request bodies of `items` pairs each, with varied lengths; clients cycle through them."""
    rng = random.Random(seed)
    words = lambda lo, hi: " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))  # noqa: E731
    out = []
    for _ in range(count):
        pairs = [([{"role": "user", "text": words(3, 30)}, {"role": "assistant", "text": words(5, 60)},
                   {"role": "user", "text": words(3, 30)}], words(1, 120)) for _ in range(items)]  # fmt: skip
        if endpoint == "score":
            out.append({"items": [{"context": ctx, "response": r} for ctx, r in pairs]})
        else:
            prompts = ["".join(f"<|im_start|>{t['role']}\n{t['text']}<|im_end|>\n" for t in ctx)
                       + "<|im_start|>assistant\n" for ctx, _ in pairs]  # fmt: skip
            out.append({"query": [p + r + "<|im_end|>" for p, (_, r) in zip(prompts, pairs)], "prompts": prompts,
                        "labels": [None] * items})  # fmt: skip
    return out


def run_clients(url: str, args) -> dict:
    """Every client posts back to back until the deadline; returns the counts and statistics."""
    payloads = make_payloads(args.endpoint, args.items, args.seed)
    path = "/score" if args.endpoint == "score" else "/get_reward"
    done: list[tuple[float, float]] = []  # (finish time, latency s) of each successful request
    failures: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0, trust_env=False) as c:
            k = i
            while time.monotonic() < deadline:
                body = payloads[k % len(payloads)]
                k += args.clients
                t0 = time.monotonic()
                try:
                    r = c.post(path, json=body)
                    ok = r.status_code == 200 and _n_scores(r.json(), args.endpoint) == args.items
                    why = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except (httpx.HTTPError, ValueError) as exc:
                    why = f"{type(exc).__name__}: {exc}"
                t1 = time.monotonic()
                with lock:
                    if why is None:
                        done.append((t1 - start, t1 - t0))
                    else:
                        failures.append(why)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return summarise(done, failures, elapsed, args.items)


def _n_scores(body: dict, endpoint: str) -> int:
    if endpoint == "score":
        return min(len(v) for v in body["scores"].values())
    return len(body["rewards"])


def quantile_ci(sorted_x: list[float], q: float) -> dict:
    """The q-quantile with a distribution-free 95 % interval from the binomial order statistics."""
    n = len(sorted_x)
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo = max(1, math.floor(n * q - half))
    hi = min(n, math.ceil(n * q + half))
    point = sorted_x[max(0, math.ceil(n * q) - 1)]
    return {"value": point, "ci95": [sorted_x[lo - 1], sorted_x[hi - 1]], "n": n}


def summarise(done: list[tuple[float, float]], failures: list[str], elapsed: float, items: int) -> dict:
    lat_ms = sorted(lat * 1000 for _, lat in done)
    windows = [0] * int(elapsed)  # requests finished in each full second
    for t, _ in done:
        if int(t) < len(windows):
            windows[int(t)] += 1
    if len(windows) >= 2:
        mean, sd = statistics.fmean(windows), statistics.stdev(windows)
        half = Z95 * sd / math.sqrt(len(windows))
        per_s = {"mean": mean, "ci95": [mean - half, mean + half], "n_windows": len(windows)}
    else:
        per_s = {"mean": None, "ci95": None, "n_windows": len(windows)}
    return {
        "requests": len(done) + len(failures), "ok": len(done), "errors": len(failures), "items": len(done) * items,
        "seconds": elapsed, "requests_per_s": len(done) / elapsed, "items_per_s": len(done) * items / elapsed,
        "requests_per_s_windows": per_s,
        "latency_ms": {f"p{int(q * 100)}": quantile_ci(lat_ms, q) for q in (0.5, 0.95, 0.99)},
        "latency_ms_mean": statistics.fmean(lat_ms) if lat_ms else None,
        "first_errors": failures[:5],
    }  # fmt: skip


def report(args, results: dict, goals: list[dict]) -> dict:
    from rich.console import Console
    from rich.table import Table

    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("json", "check")}
    t = Table(title="bench loadtest: " + ", ".join(f"{k}={v}" for k, v in params.items() if k != "out"))
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("95 % interval", justify="right")
    t.add_column("n", justify="right")
    t.add_row("requests (ok / errors)", f"{results['ok']:,} / {results['errors']:,}", "-", "-")
    w = results["requests_per_s_windows"]
    t.add_row("requests/s (overall)", f"{results['requests_per_s']:,.1f}", "-", f"{results['requests']:,}")
    if w["mean"] is not None:
        t.add_row("requests/s (1-s windows)", f"{w['mean']:,.1f}", f"{w['ci95'][0]:,.1f} - {w['ci95'][1]:,.1f}",
                  f"{w['n_windows']} windows")  # fmt: skip
    t.add_row("items/s", f"{results['items_per_s']:,.0f}", "-", f"{results['items']:,}")
    for name, q in results["latency_ms"].items():
        if q["value"] is not None:
            t.add_row(f"latency {name} ms", f"{q['value']:.1f}", f"{q['ci95'][0]:.1f} - {q['ci95'][1]:.1f}", f"{q['n']:,}")
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = 120
    console.print(t)
    for g in goals:
        console.print(f"{'[green]PASS[/]' if g['passed'] else '[red]FAIL[/]'}  {g['goal']}  (measured {g['value']:.3g})")
    for e in results["first_errors"]:
        console.print(f"[red]error[/] {e}")
    doc = {"bench": "loadtest", "params": params, "env": harness.environment(), "results": results, "goals": goals,
           "check": args.check}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    console.print(f"[dim]written {args.out}[/]")
    if args.json:
        json.dump(doc, sys.stdout, indent=1, default=str)
        print()
    return doc
