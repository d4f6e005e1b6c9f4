"""Simulator throughput and memory: `rluf simulate` at the default world, against the 5-minute goal.

    python -m bench simulate --conversations 1000000    # the goal: 1M conversations in <= 5 min on 2 cores
    python -m bench simulate --conversations 50000      # a quick check

There is no baseline for a simulator; the reference case writes the same number of conversations
with rluf.data.examples.write_nested_jsonl (random words, 4 turns each, one process), the cheapest
way to put that many contract-valid records on disk, so the ratio says what the world model costs
on top of writing. Each case runs in a child process (peak RSS covers its whole process tree).
The user count is derived from a pilot run (conversations per user at the default config).
Goals: 1M conversations in <= 300 s (scaled linearly from the measured rate), peak RSS < 2 GB.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench import harness

GOAL_SECONDS_PER_MILLION = 300.0
GOAL_RSS_BYTES = 2e9

EXAMPLES = """import sys
from rluf.data.examples import write_nested_jsonl
write_nested_jsonl(sys.argv[1], int(sys.argv[2]), seed=0, turns=4)"""


def main(argv: list[str]) -> dict:
    ap = harness.parser("simulate", __doc__)
    ap.add_argument("--conversations", type=int, default=1_000_000, help="about this many conversations")
    ap.add_argument("--workers", type=int, default=2, help="rluf simulate --workers (the goal is for 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the outputs go (default: a temporary directory)")
    args = ap.parse_args(argv)
    return harness.in_workdir(args, "simulate", run)


def run(args, work: Path) -> dict:
    from rluf.sim.simulate import simulate

    pilot = simulate(work / "pilot", users=2000, seed=args.seed, workers=args.workers, overwrite=True)
    per_user = pilot["conversations"] / pilot["users"]
    args.users = max(1, round(args.conversations / per_user))
    shutil.rmtree(work / "pilot")
    out, ref = work / "sim", work / "examples.jsonl"
    produced = []

    def rluf() -> int:
        cmd = [sys.executable, "-m", "rluf.cli", "simulate", "--users", str(args.users), "--seed", str(args.seed),
               "--out", str(out), "--workers", str(args.workers), "--overwrite", "--json"]  # fmt: skip
        rss, stdout = harness.run_child(cmd)
        produced.append(json.loads(stdout))
        return rss

    def examples() -> int:
        n = produced[-1]["conversations"] if produced else args.conversations
        return harness.run_child([sys.executable, "-c", EXAMPLES, str(ref), str(n)])[0]

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)
        ref.unlink(missing_ok=True)

    cases = {"rluf_simulate": harness.Case(rluf, before=clean), "examples_write": harness.Case(examples, before=clean)}
    try:
        results = harness.measure(cases, items=0, repeats=args.repeats)
    finally:
        clean()
    conversations = produced[-1]["conversations"]
    for r in results.values():  # items were unknown before the first run: fill in conversations/s now
        r["items_per_s"] = conversations / r["median_s"]
    results["rluf_simulate"]["summary"] = produced[-1]
    args.conversations_produced = conversations
    seconds_per_million = results["rluf_simulate"]["median_s"] * 1e6 / conversations
    goals = [
        harness.goal("rluf simulate seconds per 1M conversations", seconds_per_million, "<", GOAL_SECONDS_PER_MILLION),
        harness.goal("rluf simulate peak RSS GB", results["rluf_simulate"]["peak_rss_bytes"] / 1e9, "<",
                     GOAL_RSS_BYTES / 1e9),
    ]  # fmt: skip
    return harness.report("simulate", args, "conversations", results, "rluf_simulate", goals)
