"""The `rluf` command line: help, ingest (counts, exit codes), stats --json; in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from rluf.cli import EXIT_BAD_INPUT, EXIT_TOO_MANY_REJECTS, app
from rluf.data import examples
from rluf.data.store import Store

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def rejects(store_dir) -> list[dict]:
    path = Store(store_dir).rejects_path
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


@pytest.fixture
def logs(tmp_path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    examples.write_nested_jsonl(d / "conversations.jsonl", 30, seed=1)
    examples.write_flat(d / "flat", 10, seed=2, fmt="csv")
    return d


def n_flat_rows(d: Path) -> int:
    return sum(len(p.read_text().splitlines()) - 1 for p in (d / "flat").glob("*.csv"))


def test_exit_code_constants():
    assert (EXIT_BAD_INPUT, EXIT_TOO_MANY_REJECTS) == (2, 3)


def test_help_lists_the_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for command in ("ingest", "stats", "demo"):
        assert command in res.stdout
    res = invoke("ingest", "--help")
    assert res.exit_code == 0
    for option in ("--store", "--format", "--layout", "--max-reject-rate", "--max-text-chars", "--workers", "--json"):
        assert option in res.stdout


def test_no_arguments_shows_help_and_fails():
    res = invoke()
    assert res.exit_code == 2 and "ingest" in res.output


def test_ingest_prints_counts(logs, tmp_path):
    total = 30 + n_flat_rows(logs)
    res = invoke("ingest", logs, "--store", tmp_path / "s", "--workers", 1)
    assert res.exit_code == 0, res.output
    assert f"read {total}  accepted {total}  rejected 0  duplicate 0  (blank lines 0)  reconciles: True" in res.stdout
    assert "stored: 30 conversations, 240 messages" in res.stdout
    again = invoke("ingest", logs, "--store", tmp_path / "s", "--workers", 1)
    assert again.exit_code == 0
    assert f"read {total}  accepted 0  rejected 0  duplicate {total}" in again.stdout
    assert "stored: 0 conversations, 0 messages, 0 reaction events, 0 user rows" in again.stdout


def test_ingest_json_summary(logs, tmp_path):
    res = invoke("ingest", logs / "conversations.jsonl", "--store", tmp_path / "s", "--json", "--workers", 1)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["read"], d["accepted"], d["rejected"], d["duplicate"], d["committed"], d["reconciles"]) == (
        30, 30, 0, 0, True, True)  # fmt: skip
    assert (d["conversations"], d["messages"], d["files"], d["batch_no"]) == (30, 180, 1, 1)
    assert d["rejects_file"] == str(tmp_path / "s" / "rejects.jsonl")


def test_ingest_reports_rejects_and_commits_under_the_rate(tmp_path):
    lines = (tmp_path / "c.jsonl")
    examples.write_nested_jsonl(lines, 200, seed=3)
    with open(lines, "ab") as f:
        f.write(b'{"conversation_id": "x", "user_id": "u", "turns": "none"}\n')  # 1 of 201 < 1 %
    res = invoke("ingest", lines, "--store", tmp_path / "s", "--workers", 1)
    assert res.exit_code == 0, res.output
    assert "read 201  accepted 200  rejected 1  duplicate 0" in res.stdout
    assert "rejects (0.50%) written to" in res.stdout and "turns: expected a list of turns" in res.stdout
    (r,) = rejects(tmp_path / "s")
    assert (r["line"], r["field"], r["committed"]) == (201, "turns", True)


def test_ingest_exit_3_over_the_reject_rate(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"message_id": "m1", "conversation_id": "c", "user_id": "u", "role": "user", '
                                      '"text": "x", "time": "2026-01-01T00:00:00Z"}\n{"message_id": "m2"}\n')  # fmt: skip
    res = invoke("ingest", tmp_path / "m.jsonl", "--store", tmp_path / "s", "--workers", 1)
    assert res.exit_code == EXIT_TOO_MANY_REJECTS
    assert "read 2  accepted 1  rejected 1" in res.stdout and "[NOT COMMITTED]" in res.stdout
    assert "batch not committed" in res.stderr and "--max-reject-rate" in res.stderr
    assert Store(tmp_path / "s").manifest()["batches"] == []
    assert [(r["line"], r["field"], r["committed"]) for r in rejects(tmp_path / "s")] == [(2, "conversation_id", False)]
    ok = invoke("ingest", tmp_path / "m.jsonl", "--store", tmp_path / "s", "--workers", 1, "--max-reject-rate", 0.5)
    assert ok.exit_code == 0 and "accepted 1  rejected 1" in ok.stdout
    assert len(Store(tmp_path / "s").manifest()["batches"]) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing.jsonl"], "no such file or directory"),
        (["{tmp}/c.jsonl", "--format", "xml"], "unknown format 'xml'"),
        (["{tmp}/c.jsonl", "--layout", "table"], "unknown layout 'table'"),
        (["{tmp}/c.jsonl", "--max-reject-rate", "1.5"], "--max-reject-rate must be between 0 and 1"),
        (["{tmp}/notes.txt"], "cannot tell the format"),
        (["{tmp}/c.jsonl.gz"], "cannot be read"),
        (["{tmp}/odd.jsonl"], "cannot tell which layout"),
        (["{tmp}/c.csv"], "nested conversations cannot be CSV"),
        (["{tmp}/empty"], "holds no .jsonl"),
    ],
)
def test_ingest_exit_2_on_unreadable_input(tmp_path, args, message):
    examples.write_nested_jsonl(tmp_path / "c.jsonl", 3)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "c.jsonl.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "odd.jsonl").write_text('{"foo": 1}\n')
    (tmp_path / "c.csv").write_text("conversation_id,turns\nc,x\n")
    (tmp_path / "empty").mkdir()
    res = invoke("ingest", *[a.format(tmp=tmp_path) for a in args], "--store", tmp_path / "s", "--workers", 1)
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert "Traceback" not in res.output
    assert not Store(tmp_path / "s").exists()


def test_ingest_options_reach_the_ingest(tmp_path):
    (tmp_path / "m.txt").write_text('{"message_id": "m1", "conversation_id": "c", "user_id": "u", "role": "user", '
                                    '"text": "0123456789AB", "time": 1767225600}\n')  # fmt: skip
    res = invoke("ingest", tmp_path / "m.txt", "--store", tmp_path / "s", "--format", "jsonl", "--layout", "message",
                 "--max-text-chars", 10, "--max-reject-rate", 1, "--json", "--workers", 1)  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["read"], d["rejected"]) == (1, 1)
    (r,) = rejects(tmp_path / "s")
    assert r["field"] == "text" and "limit is 10" in r["reason"]


def test_stats_json(logs, tmp_path):
    assert invoke("ingest", logs, "--store", tmp_path / "s", "--workers", 1).exit_code == 0
    res = invoke("stats", "--store", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert {"counts", "reaction_rates", "by_category", "by_policy", "retention"} <= set(s)
    c = s["counts"]
    assert (c["batches"], c["messages"], c["conversations"]) == (1, 240, 40)
    assert c["messages_by_role"] == {"assistant": 120, "user": 120}
    con = Store(tmp_path / "s").connect()
    events, resolved, users = con.execute(
        "SELECT (SELECT count(*) FROM reaction_events), (SELECT count(*) FROM reactions), (SELECT count(*) FROM users)"
    ).fetchone()
    per_name = dict(con.execute("""SELECT r.reaction, count(DISTINCT r.message_id) FROM reactions r
                                   JOIN messages m USING (message_id) WHERE m.role = 'assistant' GROUP BY 1""").fetchall())
    con.close()
    assert (c["reaction_events"], c["reactions_resolved"], c["users"]) == (events, resolved, users)
    assert s["assistant_messages"] == 120
    assert {k: v["k"] for k, v in s["reaction_rates"].items()} == per_name
    for rate in s["reaction_rates"].values():
        assert rate["n"] == 120 and rate["ci95"][0] <= rate["rate"] <= rate["ci95"][1]
    assert sum(g["assistant_messages"] for g in s["by_policy"].values()) == 120
    assert sum(g["assistant_messages"] for g in s["by_category"].values()) == 120
    assert set(s["by_policy"]) <= set(examples.POLICIES)
    r = s["retention"]
    assert r["window_days"] == [14, 28]
    assert r["users_with_known_retention"] + r["users_window_not_elapsed"] == users
    assert r["users_with_override"] == 10  # the flat users table
    res = invoke("stats", "--store", tmp_path / "s", "--json", "--retention-start", 1, "--retention-end", 2)
    assert json.loads(res.stdout)["retention"]["window_days"] == [1, 2]


def test_stats_table_output(logs, tmp_path):
    invoke("ingest", logs / "conversations.jsonl", "--store", tmp_path / "s", "--workers", 1)
    res = invoke("stats", "--store", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert "30 conversations, 180 messages" in res.stdout and "retention" in res.stdout


def test_stats_without_a_store_is_exit_2(tmp_path):
    res = invoke("stats", "--store", tmp_path / "nothing")
    assert res.exit_code == EXIT_BAD_INPUT and "no store here" in res.stderr
    assert invoke("stats", "--store", tmp_path, "--retention-start", 5, "--retention-end", 5).exit_code == 2


def test_stats_bad_window_is_exit_2(logs, tmp_path):
    invoke("ingest", logs / "conversations.jsonl", "--store", tmp_path / "s", "--workers", 1)
    res = invoke("stats", "--store", tmp_path / "s", "--retention-start", 5, "--retention-end", 5)
    assert res.exit_code == EXIT_BAD_INPUT and "retention window" in res.stderr


def test_as_a_subprocess(tmp_path):
    """The real entry point: `python -m rluf.cli` (the `rluf` script runs the same app)."""
    examples.write_nested_jsonl(tmp_path / "c.jsonl", 20, seed=4)
    with open(tmp_path / "c.jsonl", "ab") as f:
        f.write(b"\xff not json\n")
    env = {**os.environ, "COLUMNS": "120"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "rluf.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)  # fmt: skip

    res = run("--help")
    assert res.returncode == 0 and all(c in res.stdout for c in ("ingest", "stats", "demo"))
    res = run("ingest", tmp_path / "c.jsonl", "--store", tmp_path / "s", "--workers", 2)
    assert res.returncode == 3, res.stderr
    assert "read 21  accepted 20  rejected 1  duplicate 0" in res.stdout and "batch not committed" in res.stderr
    res = run("ingest", tmp_path / "c.jsonl", "--store", tmp_path / "s", "--workers", 2, "--max-reject-rate", 0.1,
              "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["accepted"] == 20
    res = run("ingest", tmp_path / "missing.jsonl", "--store", tmp_path / "s")
    assert res.returncode == 2 and "no such file" in res.stderr and "Traceback" not in res.stderr
    res = run("stats", "--store", tmp_path / "s", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["counts"]["conversations"] == 20
    script = Path(sys.executable).with_name("rluf")
    if script.exists():
        res = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0 and "ingest" in res.stdout


def test_ingest_into_a_file_is_exit_2(tmp_path):
    examples.write_nested_jsonl(tmp_path / "c.jsonl", 2)
    (tmp_path / "not-a-dir").write_text("x")
    res = invoke("ingest", tmp_path / "c.jsonl", "--store", tmp_path / "not-a-dir", "--workers", 1)
    assert res.exit_code == EXIT_BAD_INPUT and res.stderr.startswith("error: ")
