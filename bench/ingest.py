"""Ingest throughput and memory: `rluf ingest` against DuckDB's own raw `read_json` of the same file.

    python -m bench ingest                        # 1M messages (what `make bench` runs)
    python -m bench ingest --messages 10000000    # the full run
    python -m bench ingest --messages 200000      # a quick check

The input is nested JSONL from rluf.data.examples (6 turns per conversation). Cases, each in a
child process so that peak RSS covers its whole process tree:
  rluf         `rluf ingest INPUT --store fresh/ --json` (validation, dedup, store)
  duckdb_load  COPY (SELECT * FROM read_json(INPUT)) TO x.parquet: the same load, no validation
  duckdb_read  CREATE TABLE t AS SELECT * FROM read_json(INPUT), in memory: every field read, nothing
               checked or written
  duckdb_scan  SELECT count(*), sum(len(turns)) FROM read_json(INPUT): parsing, with DuckDB reading
               only the fields the count needs
Goals: rluf throughput >= 0.5 x duckdb_read (DuckDB's raw read of every field, which validates and
stores nothing), rluf peak RSS < 2 GB. The ratios against duckdb_load and duckdb_scan are printed too.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench import harness
from rluf.data.examples import write_nested_jsonl

TURNS = 6
GOAL_RATIO = 0.5  # rluf messages/s over duckdb_read messages/s
GOAL_RSS_BYTES = 2e9

# The console script, as users run it (`python -m rluf.cli` where it is not installed beside Python).
_SCRIPT = Path(sys.executable).with_name("rluf")
RLUF = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "rluf.cli"]
# DuckDB prints a progress bar on stdout for long queries: off, so that stdout is the counts alone.
DUCKDB_LOAD = """import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute(f"COPY (SELECT * FROM read_json('{sys.argv[1]}', format='newline_delimited')) "
            f"TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)")"""
DUCKDB_READ = """import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute(f"CREATE TABLE t AS SELECT * FROM read_json('{sys.argv[1]}', format='newline_delimited')")
print(*con.execute("SELECT count(*), sum(len(turns)) FROM t").fetchone())"""
DUCKDB_SCAN = """import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
q = f"SELECT count(*), sum(len(turns)) FROM read_json('{sys.argv[1]}', format='newline_delimited')"
print(*con.execute(q).fetchone())"""


def main(argv: list[str]) -> dict:
    ap = harness.parser("ingest", __doc__)
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages in the input (6 per conversation)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the input here and reuse it on later runs (default: a temporary directory)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=None, help="rluf ingest --workers (default: its own)")
    args = ap.parse_args(argv)
    return harness.in_workdir(args, "ingest", run)


def run(args, work: Path) -> dict:
    conversations = args.messages // TURNS
    messages = args.messages = conversations * TURNS  # a whole number of conversations
    data = work / f"nested-{messages}.jsonl"
    if not data.exists():
        print(f"writing {messages:,} messages to {data} ...", file=sys.stderr)
        tmp = data.with_suffix(".tmp")
        write_nested_jsonl(tmp, conversations, seed=0, turns=TURNS)
        tmp.rename(data)
    store, parquet = work / "store", work / "duckdb_load.parquet"
    for path in (store, parquet):
        if path.exists() or path.is_symlink():
            raise SystemExit(f"{path} exists; the benchmark writes it afresh: remove it or pick another --workdir")

    reported = []  # the ingest's own timing, without interpreter start-up

    def rluf() -> int:
        cmd = [*RLUF, "ingest", str(data), "--store", str(store), "--json"]
        rss, out = harness.run_child(cmd + (["--workers", str(args.workers)] if args.workers else []))
        summary = json.loads(out)
        if not (summary["committed"] and summary["messages"] == messages and summary["rejected"] == 0):
            raise RuntimeError(f"rluf ingest did not store every message: {summary}")
        reported.append(summary["seconds"])
        return rss

    def duckdb_load() -> int:
        return harness.run_child([sys.executable, "-c", DUCKDB_LOAD, str(data), str(parquet)])[0]

    def duckdb_counts(script: str) -> int:
        rss, out = harness.run_child([sys.executable, "-c", script, str(data)])
        if out.split() != [str(conversations), str(messages)]:
            raise RuntimeError(f"duckdb counted {out.strip()!r}, expected {conversations} {messages}")
        return rss

    def clean() -> None:
        shutil.rmtree(store, ignore_errors=True)
        parquet.unlink(missing_ok=True)

    cases = {
        "rluf": harness.Case(rluf, before=clean),
        "duckdb_load": harness.Case(duckdb_load, before=clean),
        "duckdb_read": harness.Case(lambda: duckdb_counts(DUCKDB_READ)),
        "duckdb_scan": harness.Case(lambda: duckdb_counts(DUCKDB_SCAN)),
    }
    try:
        results = harness.measure(cases, items=messages, repeats=args.repeats)
    finally:
        clean()
    results["rluf"]["ingest_seconds_reported"] = reported
    args.input_mb = round(data.stat().st_size / 1e6, 1)
    ratio = harness.ratios(results, "rluf")["duckdb_read"]
    goals = [
        harness.goal("rluf / duckdb_read messages/s", ratio, ">=", GOAL_RATIO),
        harness.goal("rluf peak RSS GB", results["rluf"]["peak_rss_bytes"] / 1e9, "<", GOAL_RSS_BYTES / 1e9),
    ]
    return harness.report("ingest", args, "messages", results, "rluf", goals)
