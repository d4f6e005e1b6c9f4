"""`rluf.data.ingest.ingest()` end to end on files written into tmp_path.

Covers every layout and file format, reconciliation, idempotent re-ingest, conflicts, cross-record
checks, the `reactions` and `users` views, line handling (blank lines, CRLF, no final newline,
invalid UTF-8), --max-reject-rate, block splitting, worker counts and Parquet positions.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rluf.data import contract, examples
from rluf.data.ingest import IngestError, ingest, iter_tasks, plan_files
from rluf.data.store import Store

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86_400


# ---------------------------------------------------------------- helpers


def iso(seconds: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rejects(store_dir) -> list[dict]:
    path = Store(store_dir).rejects_path
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def q(store_dir, sql, **kw):
    con = Store(store_dir).connect(**kw)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def count(store_dir, table) -> int:
    return q(store_dir, f"SELECT count(*) FROM {table}")[0][0]


def write_jsonl(path: Path, records, newline: bytes = b"\n", final: bool = True) -> Path:
    lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
    path.write_bytes(newline.join(lines) + (newline if final else b""))
    return path


def msg(mid, user="u1", t=T0, role="user", conv="c1", **kw) -> dict:
    return {"message_id": mid, "conversation_id": conv, "user_id": user, "role": role, "text": f"text {mid}",
            "time": iso(t), **kw}  # fmt: skip


def rx(mid, t, reaction="love", action="add", user="u1") -> dict:
    return {"message_id": mid, "user_id": user, "reaction": reaction, "action": action, "time": iso(t)}


def check_reconciles(s, store_dir=None):
    assert s.read == s.accepted + s.rejected + s.duplicate
    assert s.reconciles and s.as_dict()["reconciles"] is True
    if store_dir is not None:
        batch = [r for r in rejects(store_dir) if r["batch_id"] == s.batch_id]
        assert len(batch) == s.rejected


MESSAGE_SQL = ("SELECT message_id, conversation_id, parent_id, turn_index, user_id, role, text, epoch_us(time), "
               "policy, category, extra FROM messages ORDER BY message_id")  # fmt: skip
REACTION_SQL = "SELECT message_id, user_id, reaction, action, epoch_us(time), seq FROM reaction_events ORDER BY ALL"
CONVERSATION_SQL = ("SELECT conversation_id, user_id, epoch_us(started_at), category, policy, n_turns, extra "
                    "FROM conversations ORDER BY conversation_id")  # fmt: skip


def expected_from_nested(path: Path):
    """What the contract says a nested JSONL file becomes (every line valid)."""
    convs, msgs, reacts = [], [], []
    for line in path.read_bytes().splitlines():
        if line.strip():
            u = contract.normalize_conversation(orjson.loads(line))
            convs += u.conversations
            msgs += u.messages
            reacts += u.reactions
    return sorted(convs), sorted(msgs, key=lambda m: m[0]), sorted(reacts)


def n_rows(paths: dict) -> dict[str, int]:
    out = {}
    for name, p in paths.items():
        if p.suffix == ".parquet":
            out[name] = pq.ParquetFile(p).metadata.num_rows
        elif p.suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as f:
                out[name] = sum(1 for _ in csv.reader(f)) - 1
        else:
            out[name] = len(p.read_bytes().splitlines())
    return out


# ---------------------------------------------------------------- layouts and formats


@pytest.mark.parametrize("vectorized", [True, False])
def test_nested_jsonl_stores_exactly_what_the_contract_says(tmp_path, vectorized):
    examples.write_nested_jsonl(tmp_path / "c.jsonl", 40, seed=5, turns=4)
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, vectorized=vectorized)
    check_reconciles(s)
    assert (s.read, s.accepted, s.rejected, s.duplicate, s.blank_lines) == (40, 40, 0, 0, 0)
    assert s.committed and (s.conversations, s.messages) == (40, 160)
    assert s.vectorized == (40 if vectorized else 0)
    convs, msgs, reacts = expected_from_nested(tmp_path / "c.jsonl")
    assert s.reaction_events == len(reacts)
    assert q(tmp_path / "s", CONVERSATION_SQL) == convs
    assert q(tmp_path / "s", MESSAGE_SQL) == msgs
    assert q(tmp_path / "s", REACTION_SQL) == reacts
    # lineage: every row knows its file and line
    assert q(tmp_path / "s", "SELECT DISTINCT source_file FROM messages") == [(str(tmp_path / "c.jsonl"),)]
    assert q(tmp_path / "s", "SELECT min(source_line), max(source_line), count(DISTINCT source_line) FROM messages") == [
        (1, 40, 40)]  # fmt: skip
    assert q(tmp_path / "s", "SELECT source_line FROM conversations WHERE conversation_id = 'c17'") == [(18,)]
    assert not Store(tmp_path / "s").rejects_path.exists()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_flat_layout_in_each_format(tmp_path, fmt):
    paths = examples.write_flat(tmp_path / "logs", 25, seed=3, fmt=fmt)
    rows = n_rows(paths)
    assert rows["reactions"] > 0 and rows["users"] > 0
    s = ingest([tmp_path / "logs"], tmp_path / "s", workers=1)
    check_reconciles(s)
    total = sum(rows.values())
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (total, total, 0, 0)
    assert (s.messages, s.reaction_events, s.user_overrides, s.conversations) == (
        150, rows["reactions"], rows["users"], 0)  # fmt: skip
    assert count(tmp_path / "s", "messages") == 150
    assert count(tmp_path / "s", "conversations") == 0
    assert count(tmp_path / "s", "ledger") == total
    # the stored rows are what the contract makes of the JSON records
    ref = examples.write_flat(tmp_path / "ref", 25, seed=3, fmt="jsonl")
    want = sorted((contract.normalize_message(orjson.loads(x)).messages[0]
                   for x in ref["messages"].read_bytes().splitlines()), key=lambda m: m[0])  # fmt: skip
    assert q(tmp_path / "s", MESSAGE_SQL) == want
    want_rx = sorted(contract.normalize_reaction(orjson.loads(x)).reactions[0]
                     for x in ref["reactions"].read_bytes().splitlines())  # fmt: skip
    assert q(tmp_path / "s", REACTION_SQL) == want_rx
    want_users = sorted((r["user_id"], r["retained"]) for r in map(orjson.loads, ref["users"].read_bytes().splitlines()))
    assert q(tmp_path / "s", "SELECT user_id, retained FROM user_overrides ORDER BY 1") == want_users


def test_same_flat_rows_in_another_format_are_duplicates(tmp_path):
    csv_paths = examples.write_flat(tmp_path / "csv", 10, seed=4, fmt="csv")
    examples.write_flat(tmp_path / "pq", 10, seed=4, fmt="parquet")
    examples.write_flat(tmp_path / "js", 10, seed=4, fmt="jsonl")
    first = ingest([tmp_path / "csv"], tmp_path / "s", workers=1)
    total = sum(n_rows(csv_paths).values())
    assert first.accepted == total
    for other in ("pq", "js"):
        again = ingest([tmp_path / other], tmp_path / "s", workers=1)
        assert (again.read, again.accepted, again.rejected, again.duplicate) == (total, 0, 0, total)
    assert count(tmp_path / "s", "messages") == 60


def test_mixed_directory_reads_messages_before_reactions(tmp_path):
    logs = tmp_path / "logs"
    (logs / "flat").mkdir(parents=True)
    examples.write_nested_jsonl(logs / "b_conversations.jsonl", 12, seed=9)
    # reaction files whose names sort before the messages they refer to
    write_jsonl(logs / "flat" / "a_reactions.jsonl", [rx("m2", T0 + 60), rx("c3-1", T0 + 50 * DAY)])
    write_jsonl(logs / "flat" / "z_messages.jsonl", [msg("m1"), msg("m2", role="assistant", t=T0 + 5)])
    (logs / "flat" / "a_users.csv").write_text("user_id,retained\nu1,no\n")
    (logs / "notes.txt").write_text("ignored: not a log suffix")
    planned = plan_files([logs], store_dir=tmp_path / "s")
    kinds = [(p.name, k) for p, _, k in planned]
    assert kinds == [("b_conversations.jsonl", "conversation"), ("z_messages.jsonl", "message"),
                     ("a_reactions.jsonl", "reaction"), ("a_users.csv", "user")]  # fmt: skip
    s = ingest([logs], tmp_path / "s", workers=1)
    check_reconciles(s)
    assert (s.files, s.read, s.accepted, s.rejected) == (4, 17, 17, 0)
    assert count(tmp_path / "s", "messages") == 12 * 6 + 2
    assert q(tmp_path / "s", "SELECT message_id FROM reaction_events WHERE seq = 0 AND user_id = 'u1' ORDER BY 1") == [
        ("c3-1",), ("m2",)]  # fmt: skip


def test_parquet_positions_are_rows(tmp_path):
    rows = [msg(f"m{i}", t=T0 + i) for i in range(30)]
    rows[4]["role"] = "bot"  # row 5
    rows[12]["time"] = "12/01/2026"  # row 13
    rows[29]["text"] = None  # row 30, in the last row group
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=7)
    assert pq.ParquetFile(tmp_path / "m.parquet").metadata.num_row_groups == 5
    s = ingest([tmp_path / "m.parquet"], tmp_path / "s", workers=2, max_reject_rate=1.0)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected) == (30, 27, 3)
    got = [(r["row"], r["field"]) for r in rejects(tmp_path / "s")]
    assert got == [(5, "role"), (13, "time"), (30, "text")]
    assert all("line" not in r and r["source"] == str(tmp_path / "m.parquet") for r in rejects(tmp_path / "s"))
    assert json.loads(rejects(tmp_path / "s")[0]["raw"])["message_id"] == "m4"
    assert q(tmp_path / "s", "SELECT source_line FROM messages WHERE message_id = 'm28'") == [(29,)]


def test_parquet_native_types(tmp_path):
    """Timestamp columns are times (naive = UTC), integer ids are kept as text."""
    from datetime import datetime

    table = pa.table({
        "message_id": pa.array([1, 2], pa.int64()), "conversation_id": ["c", "c"], "user_id": ["u", "u"],
        "role": ["user", "assistant"], "text": ["a", "b"],
        "time": pa.array([datetime(2026, 1, 1), datetime(2026, 1, 1, 0, 0, 5)], pa.timestamp("us")),
        "turn_index": pa.array([0, 1], pa.int32())})  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    s = ingest([tmp_path / "m.parquet"], tmp_path / "s", workers=1)
    assert s.accepted == 2
    assert q(tmp_path / "s", "SELECT message_id, epoch_us(time), turn_index FROM messages ORDER BY 1") == [
        ("1", T0 * 1_000_000, 0), ("2", (T0 + 5) * 1_000_000, 1)]  # fmt: skip


@pytest.mark.parametrize("vectorized", [True, False])
def test_stored_files_read_with_plain_types(tmp_path, vectorized):
    """Any Parquet reader sees a stored table in one schema, whether its block was moved into the
    store as staged (label columns dictionary-encoded) or rewritten without its rejected rows."""
    examples.write_nested_jsonl(tmp_path / "clean.jsonl", 40, seed=1)
    rec = next(r for r in map(orjson.loads, (tmp_path / "clean.jsonl").read_bytes().splitlines())
               if any(t.get("reactions") for t in r["turns"]))  # fmt: skip
    rec["conversation_id"] = "copy"
    for t in rec["turns"]:
        t["message_id"] = "copy-" + t["message_id"]
    write_jsonl(tmp_path / "dirty.jsonl", [rec, b'{"conversation_id": 1'])
    s = ingest([tmp_path / "clean.jsonl", tmp_path / "dirty.jsonl"], tmp_path / "s", workers=1,
               max_reject_rate=1.0, vectorized=vectorized)  # fmt: skip
    assert s.committed and s.rejected == 1
    for table in ("conversations", "messages", "reaction_events", "ledger"):
        files = sorted((tmp_path / "s" / "tables" / table).glob("*.parquet"))
        assert len(files) == 2, table  # one block per input file
        schemas = [pq.read_schema(f) for f in files]
        assert schemas[0] == schemas[1], table
        assert not any(pa.types.is_dictionary(f.type) for f in schemas[0]), table
    assert pq.read_schema(files[0]).field("source_file").type == pa.string()
    assert pq.read_schema(tmp_path / "s/tables/messages" / files[0].name).field("time").type == pa.timestamp("us", "UTC")


def test_nested_parquet_matches_nested_jsonl(tmp_path):
    rng = random.Random(11)
    convs = [examples.conversation(i, rng, turns=rng.randint(1, 5)) for i in range(25)]
    convs[0]["client"] = "ios"  # extra field on one record (a null elsewhere; from_pylist takes row 1's keys)
    convs[3]["turns"][0]["latency_ms"] = 12
    write_jsonl(tmp_path / "c.jsonl", convs)
    bad = [dict(c) for c in convs]
    bad[20] = json.loads(json.dumps(convs[20]))
    bad[20]["turns"][-1]["role"] = "narrator"
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "c.parquet", row_group_size=8)
    a = ingest([tmp_path / "c.jsonl"], tmp_path / "a", workers=1)
    b = ingest([tmp_path / "c.parquet"], tmp_path / "b", workers=1, max_reject_rate=1.0)
    assert (a.accepted, b.accepted, b.rejected) == (25, 24, 1)
    (r,) = rejects(tmp_path / "b")
    last = len(convs[20]["turns"]) - 1
    assert (r["row"], r["field"]) == (21, f"turns[{last}].role")
    for sql in (CONVERSATION_SQL, MESSAGE_SQL, REACTION_SQL):
        want = [row for row in q(tmp_path / "a", sql) if not str(row[0]).startswith("c20")]
        assert q(tmp_path / "b", sql) == want
    assert json.loads(q(tmp_path / "b", "SELECT extra FROM conversations WHERE conversation_id = 'c0'")[0][0]) == {
        "client": "ios"}  # fmt: skip
    assert json.loads(q(tmp_path / "b", "SELECT extra FROM messages WHERE message_id = 'c3-0'")[0][0]) == {
        "latency_ms": 12}  # fmt: skip
    assert q(tmp_path / "b", "SELECT extra FROM conversations WHERE conversation_id = 'c4'") == [(None,)]


# ---------------------------------------------------------------- reconciliation and idempotency


def test_reconciliation_with_every_outcome(tmp_path):
    good = [msg(f"m{i}", t=T0 + i) for i in range(8)]
    lines = [orjson.dumps(r) for r in good]
    lines.insert(3, orjson.dumps(good[0]))  # line 4: a duplicate of line 1
    lines.insert(5, b'{"message_id": "m1", ')  # line 6: not JSON
    lines.insert(7, orjson.dumps({**good[2], "text": "changed"}))  # line 8: conflicts with line 3
    lines.append(orjson.dumps({**good[5], "message_id": "m99", "role": "robot"}))  # line 12
    write_jsonl(tmp_path / "m.jsonl", lines)
    s = ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (12, 8, 3, 1)
    got = {r["line"]: r["field"] for r in rejects(tmp_path / "s")}
    assert got == {6: "<record>", 8: "message_id", 12: "role"}
    conflict = next(r for r in rejects(tmp_path / "s") if r["line"] == 8)
    assert "earlier in this batch" in conflict["reason"] and "raw" not in conflict
    assert sum(s.reasons.values()) == 3
    assert q(tmp_path / "s", "SELECT text FROM messages WHERE message_id = 'm2'") == [("text m2",)]


def test_reingest_is_idempotent(tmp_path):
    (tmp_path / "logs").mkdir()
    examples.write_nested_jsonl(tmp_path / "logs" / "c.jsonl", 30, seed=2)
    flat = examples.write_flat(tmp_path / "logs" / "flat", 15, seed=2, fmt="csv")
    first = ingest([tmp_path / "logs"], tmp_path / "s", workers=1)
    total = 30 + sum(n_rows(flat).values())
    assert (first.read, first.accepted) == (total, total)
    tables = ("conversations", "messages", "reaction_events", "user_overrides", "ledger")
    before = {t: count(tmp_path / "s", t) for t in tables}
    standing = q(tmp_path / "s", "SELECT * FROM reactions ORDER BY ALL")
    users = q(tmp_path / "s", "SELECT * FROM users ORDER BY ALL")
    for _ in range(2):
        again = ingest([tmp_path / "logs"], tmp_path / "s", workers=1)
        check_reconciles(again)
        assert (again.read, again.accepted, again.rejected, again.duplicate) == (total, 0, 0, total)
        assert (again.messages, again.reaction_events, again.user_overrides, again.conversations) == (0, 0, 0, 0)
        assert again.committed
    assert {t: count(tmp_path / "s", t) for t in tables} == before
    assert before["messages"] == 30 * 6 + 15 * 6 and before["conversations"] == 30
    assert q(tmp_path / "s", "SELECT count(*) - count(DISTINCT message_id) FROM messages") == [(0,)]
    assert q(tmp_path / "s", "SELECT * FROM reactions ORDER BY ALL") == standing
    assert q(tmp_path / "s", "SELECT * FROM users ORDER BY ALL") == users
    batches = Store(tmp_path / "s").manifest()["batches"]
    assert [b["batch_no"] for b in batches] == [1, 2, 3]
    assert batches[1]["files"] == {} and batches[1]["counts"]["duplicate"] == total
    assert not Store(tmp_path / "s").rejects_path.exists()


def test_duplicates_inside_one_batch(tmp_path):
    c = examples.conversation(1, random.Random(1))
    r = rx("m1", T0 + 9)
    write_jsonl(tmp_path / "c.jsonl", [c, c, c])
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m1")])
    write_jsonl(tmp_path / "r.jsonl", [r, r])
    (tmp_path / "u.csv").write_text("user_id,retained\nu1,true\nu1,TRUE\nu1,1\n")  # the same content
    s = ingest([tmp_path / "c.jsonl", tmp_path / "m.jsonl", tmp_path / "r.jsonl", tmp_path / "u.csv"], tmp_path / "s",
               workers=1)  # fmt: skip
    assert (s.read, s.accepted, s.duplicate, s.rejected) == (10, 4, 6, 0)
    assert (count(tmp_path / "s", "conversations"), count(tmp_path / "s", "messages")) == (1, 7)
    n_nested = len(contract.normalize_conversation(c).reactions)
    assert (count(tmp_path / "s", "reaction_events"), count(tmp_path / "s", "user_overrides")) == (n_nested + 1, 1)


# ---------------------------------------------------------------- conflicts and cross-record checks


def test_conflicts_with_the_store(tmp_path):
    rng = random.Random(4)
    c = examples.conversation(1, rng)
    write_jsonl(tmp_path / "c.jsonl", [c])
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m2", role="assistant", t=T0 + 1)])
    ingest([tmp_path / "c.jsonl", tmp_path / "m.jsonl"], tmp_path / "s", workers=1)

    c2 = json.loads(json.dumps(c))
    c2["turns"][1]["text"] += "!"  # same conversation id, different content
    c3 = examples.conversation(77, rng)
    c3["turns"][0]["message_id"] = "m2"  # a new conversation that reuses a stored (flat) message id
    write_jsonl(tmp_path / "c2.jsonl", [c2, c3])
    write_jsonl(tmp_path / "m2.jsonl", [msg("m1", t=T0 + 3), msg("m3", t=T0 + 4), msg("c1-0", t=T0)])
    s = ingest([tmp_path / "c2.jsonl", tmp_path / "m2.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (5, 1, 4, 0)
    got = {(Path(r["source"]).name, r["line"]): (r["field"], r["reason"]) for r in rejects(tmp_path / "s")}
    assert set(got) == {("c2.jsonl", 1), ("c2.jsonl", 2), ("m2.jsonl", 1), ("m2.jsonl", 3)}
    assert got["c2.jsonl", 1][0] == "conversation_id" and "already in the store" in got["c2.jsonl", 1][1]
    assert got["c2.jsonl", 2][0] == "message_id" and "m2 already exists in the store" in got["c2.jsonl", 2][1]
    assert got["m2.jsonl", 1][0] == "message_id" and "different content" in got["m2.jsonl", 1][1]
    # a flat message cannot take a nested turn's id
    assert got["m2.jsonl", 3][0] == "message_id" and "already exists in the store" in got["m2.jsonl", 3][1]
    # the stored records are unchanged
    assert q(tmp_path / "s", "SELECT text FROM messages WHERE message_id = 'c1-1'") == [(c["turns"][1]["text"],)]
    assert q(tmp_path / "s", "SELECT epoch_us(time) FROM messages WHERE message_id = 'm1'") == [(T0 * 1_000_000,)]
    assert count(tmp_path / "s", "messages") == 6 + 2 + 1


def test_conflict_inside_one_batch_keeps_the_first(tmp_path):
    c = examples.conversation(1, random.Random(4))
    c2 = json.loads(json.dumps(c))
    c2["category"] = "other"
    write_jsonl(tmp_path / "c.jsonl", [c, c2, c])
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected, s.duplicate) == (1, 1, 1)
    (r,) = rejects(tmp_path / "s")
    assert (r["line"], r["field"]) == (2, "conversation_id") and "earlier in this batch" in r["reason"]
    assert q(tmp_path / "s", "SELECT category FROM conversations") == [(c["category"],)]


def test_message_id_shared_by_two_conversations(tmp_path):
    rng = random.Random(3)
    a, b = examples.conversation(1, rng), examples.conversation(2, rng)
    b["turns"][2]["message_id"] = a["turns"][4]["message_id"]
    write_jsonl(tmp_path / "c.jsonl", [a, b])
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (1, 1)
    (r,) = rejects(tmp_path / "s")
    assert (r["line"], r["field"]) == (2, "message_id") and "earlier record in this batch" in r["reason"]


def test_reaction_cross_checks(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m2", role="assistant", t=T0 + 10)])
    events = [rx("m2", T0 + 20),  # 1 ok
              rx("nope", T0 + 20),  # 2 unknown message
              rx("m2", T0 + 9),  # 3 earlier than its message
              rx("m2", T0 + 10, reaction="thumbs_up"),  # 4 at the message's time: ok
              rx("m1", T0 - 1)]  # 5 earlier  # fmt: skip
    write_jsonl(tmp_path / "r.jsonl", events)
    s = ingest([tmp_path / "r.jsonl", tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected) == (7, 4, 3)
    got = {r["line"]: (r["field"], r["source"]) for r in rejects(tmp_path / "s")}
    src = str(tmp_path / "r.jsonl")
    assert got == {2: ("message_id", src), 3: ("time", src), 5: ("time", src)}
    reasons = {r["line"]: r["reason"] for r in rejects(tmp_path / "s")}
    assert "no message nope" in reasons[2] and "earlier than its message" in reasons[3]
    # the same file again, once the messages are stored: the good ones are duplicates
    again = ingest([tmp_path / "r.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (again.accepted, again.duplicate, again.rejected) == (0, 2, 3)


def test_reaction_to_a_rejected_message_is_rejected(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m2", role="robot")])
    write_jsonl(tmp_path / "r.jsonl", [rx("m1", T0 + 1), rx("m2", T0 + 1)])
    s = ingest([tmp_path / "m.jsonl", tmp_path / "r.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (2, 2)
    assert sorted((Path(r["source"]).name, r["line"], r["field"]) for r in rejects(tmp_path / "s")) == [
        ("m.jsonl", 2, "role"), ("r.jsonl", 2, "message_id")]  # fmt: skip


def test_unknown_parent(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m2", parent_id="m1", t=T0 + 1),
                                       msg("m3", parent_id="ghost", t=T0 + 2), msg("m4", parent_id="m3", t=T0 + 3)])  # fmt: skip
    s = ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (2, 2)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(3, "parent_id"), (4, "parent_id")]


# ---------------------------------------------------------------- views


def test_reactions_view_last_action_wins(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1", role="assistant"), msg("m2", role="assistant")])
    events = [
        rx("m1", T0 + 10, "love"), rx("m1", T0 + 20, "love", "remove"),  # removed
        rx("m1", T0 + 30, "up"), rx("m1", T0 + 10, "up", "remove"),  # remove is older: up stands
        rx("m1", T0 + 10, "star"), rx("m1", T0 + 20, "star", "remove"), rx("m1", T0 + 30, "star"),  # re-added
        rx("m1", T0 + 10, "ghost", "remove"),  # remove without add: nothing
        rx("m1", T0 + 10, "love", user="u2"),  # another user's love stands
        rx("m2", T0 + 50, "tie"), rx("m2", T0 + 50, "tie", "remove"),  # equal times: the later line wins
        rx("m2", T0 + 50, "tie2", "remove"), rx("m2", T0 + 50, "tie2"),
    ]  # fmt: skip
    write_jsonl(tmp_path / "r.jsonl", events)
    s = ingest([tmp_path / "m.jsonl", tmp_path / "r.jsonl"], tmp_path / "s", workers=1)
    assert (s.accepted, s.reaction_events) == (2 + len(events), len(events))
    got = q(tmp_path / "s", "SELECT message_id, user_id, reaction, epoch_us(time) FROM reactions ORDER BY ALL")
    assert got == [("m1", "u1", "star", (T0 + 30) * 10**6), ("m1", "u1", "up", (T0 + 30) * 10**6),
                   ("m1", "u2", "love", (T0 + 10) * 10**6), ("m2", "u1", "tie2", (T0 + 50) * 10**6)]  # fmt: skip
    # a later batch: an equal-time remove wins over the earlier batch's add; a new add revives love
    write_jsonl(tmp_path / "r2.jsonl", [rx("m1", T0 + 30, "up", "remove"), rx("m1", T0 + 40, "love")])
    ingest([tmp_path / "r2.jsonl"], tmp_path / "s", workers=1)
    got = q(tmp_path / "s", "SELECT message_id, user_id, reaction FROM reactions ORDER BY ALL")
    assert got == [("m1", "u1", "love"), ("m1", "u1", "star"), ("m1", "u2", "love"), ("m2", "u1", "tie2")]


def test_nested_reactions_resolve_in_record_order(tmp_path):
    c = {"conversation_id": "c", "user_id": "u", "turns": [
        {"role": "user", "text": "q", "time": T0},
        {"role": "assistant", "text": "a", "time": T0 + 1, "reactions": [
            {"name": "love", "time": T0 + 5}, {"name": "love", "time": T0 + 5, "action": "remove"},
            {"name": "up", "time": T0 + 5, "action": "remove"}, {"name": "up", "time": T0 + 5},
            {"name": "down", "time": T0 + 9, "user_id": "other"}]}]}  # fmt: skip
    write_jsonl(tmp_path / "c.jsonl", [c])
    ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1)
    assert q(tmp_path / "s", "SELECT message_id, user_id, reaction FROM reactions ORDER BY ALL") == [
        ("c:1", "other", "down"), ("c:1", "u", "up")]  # fmt: skip


def test_users_view_retention(tmp_path):
    rows = [
        msg("a0", "keeps", T0), msg("a1", "keeps", T0 + 20 * DAY),  # active on day 20
        msg("b0", "edge14", T0), msg("b1", "edge14", T0 + 14 * DAY),  # exactly day 14: in
        msg("c0", "edge28", T0), msg("c1", "edge28", T0 + 28 * DAY),  # exactly day 28: out
        msg("d0", "leaves", T0), msg("d1", "leaves", T0 + 10 * DAY),
        msg("d2", "leaves", T0 + 20 * DAY, role="assistant"),  # an assistant message is not the user coming back
        msg("e0", "recent", T0 + 25 * DAY), msg("e1", "recent", T0 + 40 * DAY),  # active day 15, window not elapsed
        msg("f0", "told", T0), msg("f1", "told", T0 + 20 * DAY),  # derived true, the users table says false
        msg("g0", "toldnew", T0 + 45 * DAY),  # censored, but the users table says true
        msg("z0", "late", T0 + 50 * DAY),  # the data end: day 50
    ]  # fmt: skip
    write_jsonl(tmp_path / "m.jsonl", rows)
    (tmp_path / "users.csv").write_text("user_id,retained\ntold,false\ntoldnew,true\nnobody,true\n")
    s = ingest([tmp_path / "m.jsonl", tmp_path / "users.csv"], tmp_path / "s", workers=1)
    assert s.user_overrides == 3
    got = {r[0]: r[1:] for r in q(tmp_path / "s", """
        SELECT user_id, retained_derived, window_elapsed, retained_override, retained, n_messages, n_conversations
        FROM users""")}  # fmt: skip
    assert got == {
        "keeps": (True, True, None, True, 2, 1),
        "edge14": (True, True, None, True, 2, 1),
        "edge28": (False, True, None, False, 2, 1),
        "leaves": (False, True, None, False, 3, 1),
        "recent": (True, False, None, None, 2, 1),  # retained stays NULL until the window has elapsed
        "told": (True, True, False, False, 2, 1),
        "toldnew": (False, False, True, True, 1, 1),
        "late": (False, False, None, None, 1, 1),
    }  # "nobody" has no messages: not in the view
    assert q(tmp_path / "s", "SELECT epoch_us(first_seen), epoch_us(last_seen) FROM users WHERE user_id = 'leaves'") == [
        (T0 * 10**6, (T0 + 20 * DAY) * 10**6)]  # fmt: skip
    # the users table is an upsert: a later row wins, an unchanged row is a duplicate
    (tmp_path / "users2.csv").write_text("user_id,retained\ntold,true\ntoldnew,true\n")
    s2 = ingest([tmp_path / "users2.csv"], tmp_path / "s", workers=1)
    assert (s2.accepted, s2.duplicate) == (1, 1)
    assert q(tmp_path / "s", "SELECT retained FROM users WHERE user_id = 'told'") == [(True,)]
    # another window
    got = dict(q(tmp_path / "s", "SELECT user_id, retained_derived FROM users", retention_days=(5, 12)))
    assert (got["keeps"], got["leaves"], got["edge14"]) == (False, True, False)


# ---------------------------------------------------------------- lines


@pytest.mark.parametrize("vectorized", [True, False])
def test_invalid_utf8_line(tmp_path, vectorized):
    rng = random.Random(2)
    lines = [orjson.dumps(examples.conversation(i, rng)) for i in range(5)]
    lines[2] = lines[2].replace(b'"text":"', b'"text":"\xff\xfe', 1)
    write_jsonl(tmp_path / "c.jsonl", lines)
    write_jsonl(tmp_path / "m.jsonl", [orjson.dumps(msg("m1")), orjson.dumps(msg("m2")).replace(b"text m2", b"t\xc3")])
    s = ingest([tmp_path / "c.jsonl", tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0,
               vectorized=vectorized)  # fmt: skip
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected) == (7, 5, 2)
    got = [(Path(r["source"]).name, r["line"], r["field"]) for r in rejects(tmp_path / "s")]
    assert sorted(got) == [("c.jsonl", 3, "<record>"), ("m.jsonl", 2, "<record>")]
    assert all("invalid UTF-8" in r["reason"] for r in rejects(tmp_path / "s"))
    assert r"\xff" in next(r["raw"] for r in rejects(tmp_path / "s") if r["line"] == 3)


@pytest.mark.parametrize("vectorized", [True, False])
def test_blank_lines_are_not_records(tmp_path, vectorized):
    rng = random.Random(3)
    recs = [orjson.dumps(examples.conversation(i, rng)) for i in range(4)]
    data = b"\n" + recs[0] + b"\n\n   \n\t\n" + recs[1] + b"\n" + b'{"conversation_id": 5}' + b"\n\n" + recs[2] + b"\n" + recs[3] + b"\n\n"
    (tmp_path / "c.jsonl").write_bytes(data)
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=vectorized)
    check_reconciles(s)
    assert (s.read, s.accepted, s.rejected, s.blank_lines) == (5, 4, 1, 6)
    (r,) = rejects(tmp_path / "s")
    assert (r["line"], r["field"]) == (7, "user_id")
    assert q(tmp_path / "s", "SELECT source_line FROM conversations ORDER BY 1") == [(2,), (6,), (9,), (10,)]


def test_blank_lines_in_flat_files(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(orjson.dumps(msg("m1")) + b"\n\n" + orjson.dumps(msg("m2", role="x")) + b"\n \n")
    (tmp_path / "u.csv").write_text("user_id,retained\nu1,yes\n,\n\nu2,maybe\n")
    s = ingest([tmp_path / "m.jsonl", tmp_path / "u.csv"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.blank_lines) == (4, 2, 2, 4)
    got = sorted((Path(r["source"]).name, r["line"], r["field"]) for r in rejects(tmp_path / "s"))
    assert got == [("m.jsonl", 3, "role"), ("u.csv", 5, "retained")]


@pytest.mark.parametrize("vectorized", [True, False])
def test_crlf_line_endings(tmp_path, vectorized):
    rng = random.Random(5)
    recs = [examples.conversation(i, rng) for i in range(6)]
    recs[4]["turns"][0]["role"] = "bot"
    write_jsonl(tmp_path / "c.jsonl", recs, newline=b"\r\n")
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m2", time=None), msg("m3")], newline=b"\r\n")
    (tmp_path / "r.csv").write_bytes(b"message_id,user_id,reaction,action,time\r\nm1,u1,love,,%d\r\nm1,u1,love,bad,%d\r\n"
                                     % (T0 + 1, T0 + 1))  # fmt: skip
    s = ingest([tmp_path / "c.jsonl", tmp_path / "m.jsonl", tmp_path / "r.csv"], tmp_path / "s", workers=1,
               max_reject_rate=1.0, vectorized=vectorized)  # fmt: skip
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected, s.blank_lines) == (11, 8, 3, 0)
    got = sorted((Path(r["source"]).name, r["line"], r["field"]) for r in rejects(tmp_path / "s"))
    assert got == [("c.jsonl", 5, "turns[0].role"), ("m.jsonl", 2, "time"), ("r.csv", 3, "action")]
    assert q(tmp_path / "s", "SELECT count(*) FROM messages WHERE text LIKE '%' || chr(13) || '%'") == [(0,)]
    assert q(tmp_path / "s", "SELECT count(*) FROM conversations WHERE extra IS NOT NULL") == [(0,)]
    assert not any(r["raw"].endswith("\r") for r in rejects(tmp_path / "s") if "raw" in r)


@pytest.mark.parametrize("vectorized", [True, False])
def test_file_without_trailing_newline(tmp_path, vectorized):
    rng = random.Random(6)
    recs = [examples.conversation(i, rng) for i in range(3)]
    write_jsonl(tmp_path / "a.jsonl", recs, final=False)
    bad = recs[:2] + [{**recs[2], "conversation_id": "last", "user_id": 1.5}]
    write_jsonl(tmp_path / "b.jsonl", bad, final=False)
    (tmp_path / "u.csv").write_text("user_id,retained\nu1,yes\nu2,no")
    s = ingest([tmp_path / "a.jsonl", tmp_path / "u.csv"], tmp_path / "s", workers=1, vectorized=vectorized)
    assert (s.read, s.accepted, s.blank_lines) == (5, 5, 0)
    assert q(tmp_path / "s", "SELECT max(source_line) FROM conversations") == [(3,)]
    s = ingest([tmp_path / "b.jsonl"], tmp_path / "s2", workers=1, vectorized=vectorized, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected) == (3, 2, 1)
    (r,) = rejects(tmp_path / "s2")
    assert (r["line"], r["field"]) == (3, "user_id")


def test_csv_positions_are_the_line_a_row_ends_on(tmp_path):
    text = ('message_id,conversation_id,user_id,role,text,time\n'
            'm1,c,u,user,"two\nlines",2026-01-01T00:00:00Z\n'  # lines 2-3
            'm2,c,u,robot,x,2026-01-01T00:00:01Z\n'  # line 4
            'm3,c,u,user,x\n'  # line 5: too few cells
            'm4,c,u,user,"a ""quoted"", text",1767225602\n'  # line 6
            'm5,c,u,user,x,1767225602000\n')  # line 7: epoch ms  # fmt: skip
    (tmp_path / "m.csv").write_text(text)
    s = ingest([tmp_path / "m.csv"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected) == (5, 2, 3)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(4, "role"), (5, "<record>"), (7, "time")]
    assert q(tmp_path / "s", "SELECT message_id, text, source_line FROM messages ORDER BY 1") == [
        ("m1", "two\nlines", 3), ("m4", 'a "quoted", text', 6)]  # fmt: skip


def test_csv_invalid_utf8_names_its_column(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"message_id,conversation_id,user_id,role,text,time\n"
                                     b"m1,c,u,user,ok,1767225600\nm2,c,u,user,bad\xff,1767225600\n")  # fmt: skip
    s = ingest([tmp_path / "m.csv"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (1, 1)
    (r,) = rejects(tmp_path / "s")
    assert (r["line"], r["field"]) == (3, "text") and "UTF-8" in r["reason"]


def test_csv_with_utf8_bom(tmp_path):
    (tmp_path / "m.csv").write_bytes("\ufeffmessage_id,conversation_id,user_id,role,text,time\n"
                                     "m1,c,u,user,hi,1767225600\n".encode("utf-8"))  # fmt: skip
    s = ingest([tmp_path / "m.csv"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected) == (1, 1, 0)


# ---------------------------------------------------------------- --max-reject-rate


def test_dirty_batch_is_not_committed(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 20, seed=1)
    first = ingest([tmp_path / "a.jsonl"], tmp_path / "s", workers=1)
    assert first.committed
    manifest = Store(tmp_path / "s").manifest_path.read_bytes()
    files_before = sorted(p.relative_to(tmp_path / "s") for p in (tmp_path / "s" / "tables").rglob("*.parquet"))

    rng = random.Random(8)
    lines = [orjson.dumps(examples.conversation(100 + i, rng)) for i in range(50)]
    lines[9] = b"{broken"
    write_jsonl(tmp_path / "b.jsonl", lines)  # 1 of 50 = 2 % > 1 %
    s = ingest([tmp_path / "b.jsonl"], tmp_path / "s", workers=1)
    check_reconciles(s, tmp_path / "s")
    assert not s.committed and (s.read, s.accepted, s.rejected) == (50, 49, 1)
    assert s.reject_rate == pytest.approx(0.02) and s.max_reject_rate == 0.01
    assert (s.messages, s.conversations) == (0, 0)
    assert Store(tmp_path / "s").manifest_path.read_bytes() == manifest
    assert count(tmp_path / "s", "conversations") == 20
    after = sorted(p.relative_to(tmp_path / "s") for p in (tmp_path / "s" / "tables").rglob("*.parquet"))
    assert after == files_before
    assert not (tmp_path / "s" / "_staging").exists()
    (r,) = rejects(tmp_path / "s")
    assert (r["committed"], r["line"], r["field"], r["batch_id"]) == (False, 10, "<record>", s.batch_id)

    # raised limit: committed, and the same reject is written again, now committed
    s2 = ingest([tmp_path / "b.jsonl"], tmp_path / "s", workers=1, max_reject_rate=0.05)
    assert s2.committed and s2.accepted == 49 and s2.batch_no == 2
    assert [(r["committed"], r["line"]) for r in rejects(tmp_path / "s")] == [(False, 10), (True, 10)]
    assert count(tmp_path / "s", "conversations") == 69


def test_reject_rate_equal_to_the_limit_commits(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg(f"m{i}", t=T0 + i) for i in range(99)] + [b"nope"])
    s = ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1)
    assert s.reject_rate == 0.01 and s.committed and s.accepted == 99
    s = ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=0.0)
    assert not s.committed and s.duplicate == 99
    with pytest.raises(IngestError, match="between 0 and 1"):
        ingest([tmp_path / "m.jsonl"], tmp_path / "s", max_reject_rate=-0.1)


# ---------------------------------------------------------------- blocks and workers


def _corrupted_nested(path: Path, n: int, seed: int) -> dict[int, str]:
    """n conversations with bad lines at known places; returns {line: field}."""
    rng = random.Random(seed)
    lines = [orjson.dumps(examples.conversation(i, rng, turns=rng.randint(1, 8))) for i in range(n)]
    expected = {}
    for i in sorted(rng.sample(range(n), 12)):
        kind = len(expected) % 4
        rec = orjson.loads(lines[i])
        if kind == 0:
            lines[i] = lines[i][: len(lines[i]) // 2]
            expected[i + 1] = "<record>"
        elif kind == 1:
            rec["turns"][-1]["role"] = "robot"
            lines[i] = orjson.dumps(rec)
            expected[i + 1] = f"turns[{len(rec['turns']) - 1}].role"
        elif kind == 2:
            rec["turns"][0]["reactions"] = [{"name": "love", "time": "2001-01-01T00:00:00Z"}]
            lines[i] = orjson.dumps(rec)
            expected[i + 1] = "turns[0].reactions[0].time"
        else:
            lines[i] = lines[i].replace(b'"text":"', b'"text":"\xc3(', 1)
            expected[i + 1] = "<record>"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected


@pytest.mark.parametrize("vectorized", [True, False])
def test_blocks_keep_exact_line_numbers(tmp_path, monkeypatch, vectorized):
    monkeypatch.setattr("rluf.data.ingest.BLOCK_BYTES", 4096)
    expected = _corrupted_nested(tmp_path / "c.jsonl", 150, seed=21)
    planned = plan_files([tmp_path / "c.jsonl"])
    tasks = list(iter_tasks(planned))
    assert len(tasks) > 10
    # blocks are whole lines, contiguous, covering the file
    assert tasks[0].offset == 0 and tasks[0].first_line == 1
    for a, b in zip(tasks, tasks[1:]):
        assert b.offset == a.offset + a.length
        assert b.first_line == a.first_line + a.read_block().count(b"\n")
        assert a.read_block().endswith(b"\n")
    assert tasks[-1].offset + tasks[-1].length == (tmp_path / "c.jsonl").stat().st_size

    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=vectorized)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected) == (150, 138, 12)
    assert {r["line"]: r["field"] for r in rejects(tmp_path / "s")} == expected
    bad_ids = {f"c{line - 1}" for line in expected}
    got = q(tmp_path / "s", "SELECT conversation_id, source_line FROM conversations ORDER BY source_line")
    assert got == [(f"c{i}", i + 1) for i in range(150) if f"c{i}" not in bad_ids]
    assert q(tmp_path / "s", "SELECT count(DISTINCT block) FROM conversations")[0][0] > 10


def test_blocks_of_flat_reactions_keep_line_numbers_in_cross_checks(tmp_path, monkeypatch):
    monkeypatch.setattr("rluf.data.ingest.BLOCK_BYTES", 4096)
    msgs = [msg(f"m{i}", t=T0 + i) for i in range(50)]
    events, expected = [], {}
    for k in range(400):
        mid = k % 50
        if k % 37 == 5:
            events.append(rx(f"missing{k}", T0 + 100 + k))
            expected[k + 1] = "message_id"
        elif k % 53 == 7:
            events.append(rx(f"m{mid}", T0 + mid - 1, reaction=f"r{k}"))
            expected[k + 1] = "time"
        else:
            events.append(rx(f"m{mid}", T0 + 100 + k))
    write_jsonl(tmp_path / "m.jsonl", msgs)
    write_jsonl(tmp_path / "r.jsonl", events)
    assert len(list(iter_tasks(plan_files([tmp_path / "r.jsonl"])))) > 5
    s = ingest([tmp_path / "m.jsonl", tmp_path / "r.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.rejected) == (450, len(expected))
    assert {r["line"]: r["field"] for r in rejects(tmp_path / "s")} == expected


def _dump(store_dir) -> dict:
    out = {}
    for table in ("conversations", "messages", "reaction_events", "user_overrides", "ledger"):
        out[table] = q(store_dir, f"SELECT * FROM {table} ORDER BY ALL")
    out["rejects"] = sorted(json.dumps({k: v for k, v in r.items() if k != "batch_id"}, sort_keys=True)
                            for r in rejects(store_dir))  # fmt: skip
    return out


def test_one_and_two_workers_give_identical_stores(tmp_path, monkeypatch):
    monkeypatch.setattr("rluf.data.ingest.BLOCK_BYTES", 8192)
    logs = tmp_path / "logs"
    logs.mkdir()
    expected = _corrupted_nested(logs / "c.jsonl", 120, seed=5)
    examples.write_flat(logs / "flat", 20, seed=5, fmt="jsonl")
    examples.write_flat(tmp_path / "pq", 20, seed=6, fmt="parquet")
    (tmp_path / "pq" / "messages.parquet").rename(logs / "more_messages.parquet")  # same ids, other content
    summaries = {}
    for workers in (1, 2):
        summaries[workers] = ingest([logs], tmp_path / f"s{workers}", workers=workers, max_reject_rate=1.0)
    one, two = (summaries[w].as_dict() for w in (1, 2))
    for d in (one, two):
        for k in ("batch_id", "seconds", "timings"):
            d.pop(k)
        d.pop("rejects_file")
    assert one == two
    assert one["rejected"] > len(expected)  # the Parquet messages conflict with the JSONL ones
    assert _dump(tmp_path / "s1") == _dump(tmp_path / "s2")
    assert {r["line"]: r["field"] for r in rejects(tmp_path / "s1") if r["source"].endswith("c.jsonl")} == expected


# ---------------------------------------------------------------- odd values are rejected, never a crash


def test_an_unexpected_validator_failure_rejects_only_that_record(tmp_path, monkeypatch):
    real = contract.NORMALIZERS[contract.MESSAGE]

    def flaky(record, limits):
        if record.get("message_id") == "m2":
            raise ZeroDivisionError("boom")
        return real(record, limits)

    monkeypatch.setitem(contract.NORMALIZERS, contract.MESSAGE, flaky)
    write_jsonl(tmp_path / "m.jsonl", [msg("m1"), msg("m2"), msg("m3")])
    s = ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected) == (3, 2, 1)
    (r,) = rejects(tmp_path / "s")
    assert (r["line"], r["field"]) == (2, "<record>") and "ZeroDivisionError: boom" in r["reason"]


def test_infinite_parquet_time_is_rejected_not_a_crash(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1")])
    pq.write_table(pa.table({"message_id": ["m1", "m1"], "user_id": ["u1", "u1"], "reaction": ["a", "b"],
                             "time": [float(T0 + 5), float("inf")]}), tmp_path / "r.parquet")  # fmt: skip
    s = ingest([tmp_path / "m.jsonl", tmp_path / "r.parquet"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (2, 1)
    assert [(r["row"], r["field"]) for r in rejects(tmp_path / "s")] == [(2, "time")]


def test_huge_turn_index_is_rejected_not_a_crash(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1", turn_index=0), msg("m2", turn_index=2**40)])
    s = ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (1, 1)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(2, "turn_index")]


def test_users_upsert_compares_with_the_latest_row(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1", user="u1")])
    (tmp_path / "a_users.csv").write_text("user_id,retained\nu1,true\nu2,true\n")
    (tmp_path / "b_users.csv").write_text("user_id,retained\nu3,false\nu1,false\n")
    s = ingest([tmp_path / "m.jsonl", tmp_path / "a_users.csv", tmp_path / "b_users.csv"], tmp_path / "s", workers=1)
    assert s.accepted == 5
    assert q(tmp_path / "s", "SELECT retained_override FROM users WHERE user_id = 'u1'") == [(False,)]
    (tmp_path / "c_users.csv").write_text("user_id,retained\nu1,true\n")
    s = ingest([tmp_path / "c_users.csv"], tmp_path / "s", workers=1)
    assert (s.accepted, s.duplicate) == (1, 0)
    assert q(tmp_path / "s", "SELECT retained_override FROM users WHERE user_id = 'u1'") == [(True,)]


_INGEST_IN_A_CHILD = """
import json, sys
from rluf.data.ingest import ingest
s = ingest([sys.argv[1]], sys.argv[2], workers=1, max_reject_rate=1.0, vectorized=sys.argv[3] == "1")
print(json.dumps([s.read, s.accepted, s.rejected]))
"""


def _ingest_in_a_child(path: Path, store: Path, vectorized: bool):
    """Run an ingest in a child process, so that a crash of the parser cannot take the test run down."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _INGEST_IN_A_CHILD, str(path), str(store), "1" if vectorized else "0"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _null_first(tmp_path: Path) -> Path:
    rng = random.Random(1)
    lines = [b"null"] + [orjson.dumps(examples.conversation(i, rng)) for i in range(2)]
    return write_jsonl(tmp_path / "c.jsonl", lines)


def test_null_line_is_rejected_by_the_reference_path(tmp_path):
    path = _null_first(tmp_path)
    s = ingest([path], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=False)
    assert (s.read, s.accepted, s.rejected) == (3, 2, 1)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(1, "<record>")]


def test_null_line_after_the_first_is_rejected_by_the_fast_path(tmp_path):
    rng = random.Random(1)
    lines = [orjson.dumps(examples.conversation(i, rng)) for i in range(3)]
    lines.insert(1, b"null")
    write_jsonl(tmp_path / "c.jsonl", lines)
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=True)
    assert (s.read, s.accepted, s.rejected) == (4, 3, 1)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(2, "<record>")]


def test_null_first_line_does_not_crash_the_ingest(tmp_path):
    res = _ingest_in_a_child(_null_first(tmp_path), tmp_path / "s", vectorized=True)
    assert res.returncode == 0, f"exit status {res.returncode}: {res.stderr[-2000:]}"
    assert json.loads(res.stdout.splitlines()[-1]) == [3, 2, 1]
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(1, "<record>")]


# ---------------------------------------------------------------- more cross-record rules


@pytest.mark.parametrize("vectorized", [True, False])
def test_one_layout_per_file(tmp_path, vectorized):
    rng = random.Random(2)
    lines = [orjson.dumps(examples.conversation(i, rng)) for i in range(3)]
    lines.insert(1, orjson.dumps(msg("m1")))  # a flat message in a file of conversations
    lines.append(orjson.dumps(rx("m1", T0)))  # a reaction event
    write_jsonl(tmp_path / "c.jsonl", lines)
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=vectorized)
    assert (s.accepted, s.rejected) == (3, 2)
    got = [(r["line"], r["field"]) for r in rejects(tmp_path / "s")]
    assert got == [(2, "<record>"), (5, "<record>")]
    reasons = [r["reason"] for r in rejects(tmp_path / "s")]
    assert "looks like a message record" in reasons[0] and "looks like a reaction record" in reasons[1]


def test_users_rows_are_upserts_inside_one_batch(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [msg("m1", user="u1"), msg("m2", user="u2")])
    (tmp_path / "users.jsonl").write_text('{"user_id": "u1", "retained": true}\n{"user_id": "u1", "retained": false}\n'
                                          '{"user_id": "u1", "retained": "yes"}\n{"user_id": "u2", "retained": 0}\n'
                                          '{"user_id": "u2", "retained": "no"}\n')  # fmt: skip
    s = ingest([tmp_path / "m.jsonl", tmp_path / "users.jsonl"], tmp_path / "s", workers=1)
    assert (s.read, s.accepted, s.duplicate, s.user_overrides) == (7, 6, 1, 4)
    assert dict(q(tmp_path / "s", "SELECT user_id, retained_override FROM users")) == {"u1": True, "u2": False}


def test_a_locked_store_is_refused(tmp_path):
    from rluf.data.store import StoreError

    write_jsonl(tmp_path / "m.jsonl", [msg("m1")])
    with Store(tmp_path / "s").lock():
        with pytest.raises(StoreError, match="being written by another rluf process"):
            ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1)
    assert ingest([tmp_path / "m.jsonl"], tmp_path / "s", workers=1).accepted == 1


def test_flat_reaction_identical_to_a_nested_one_is_a_duplicate(tmp_path):
    c = {"conversation_id": "c", "user_id": "u1", "turns": [
        {"message_id": "m1", "role": "assistant", "text": "x", "time": iso(T0),
         "reactions": [{"name": "love", "time": iso(T0 + 60)}]}]}  # fmt: skip
    write_jsonl(tmp_path / "c.jsonl", [c])
    write_jsonl(tmp_path / "r.jsonl", [rx("m1", T0 + 60)])
    ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1)
    s = ingest([tmp_path / "r.jsonl"], tmp_path / "s", workers=1)
    assert (s.accepted, s.duplicate) == (0, 1)
    assert count(tmp_path / "s", "reaction_events") == 1


def test_vectorized_path_splits_around_unparseable_lines(tmp_path):
    rng = random.Random(12)
    lines = [orjson.dumps(examples.conversation(i, rng, turns=2)) for i in range(700)]
    bad = {40: "<record>", 333: "<record>", 334: "turns[1].role", 650: "<record>"}
    lines[40] = lines[40][:-3]
    lines[333] = b"[]"
    lines[334] = lines[334].replace(b'"role":"assistant"', b'"role":"critic"')
    lines[650] = lines[650].replace(b'"text":"', b'"text":"\xff', 1)
    write_jsonl(tmp_path / "c.jsonl", lines)
    s = ingest([tmp_path / "c.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=True)
    check_reconciles(s, tmp_path / "s")
    assert (s.read, s.accepted, s.rejected) == (700, 696, 4)
    assert 0 < s.vectorized < s.accepted  # some ranges cleared column-wise, the failing ones line by line
    assert {r["line"] - 1: r["field"] for r in rejects(tmp_path / "s")} == bad
    ref = ingest([tmp_path / "c.jsonl"], tmp_path / "ref", workers=1, max_reject_rate=1.0, vectorized=False)
    assert ref.vectorized == 0
    for sql in (CONVERSATION_SQL, MESSAGE_SQL, REACTION_SQL, "SELECT source_line FROM messages ORDER BY 1"):
        assert q(tmp_path / "s", sql) == q(tmp_path / "ref", sql)


def test_the_store_is_never_read_as_input(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 10, seed=1)
    ingest([tmp_path], tmp_path / "store", workers=1)
    again = ingest([tmp_path], tmp_path / "store", workers=1)
    assert again.read == 10 and again.duplicate == 10
    with pytest.raises(IngestError, match="inside the store"):
        ingest([tmp_path / "store"], tmp_path / "store")


def test_an_empty_jsonl_file_reads_nothing(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    s = ingest([tmp_path / "empty.jsonl"], tmp_path / "s", workers=1)
    assert (s.read, s.blank_lines, s.committed) == (0, 2, True)


def test_gzip_compressed_jsonl_and_csv_read_like_plain_files(tmp_path, monkeypatch):
    import gzip

    monkeypatch.setattr("rluf.data.ingest.BLOCK_BYTES", 4096)  # several blocks from one stream
    examples.write_nested_jsonl(tmp_path / "c.jsonl", 60, seed=4)
    flat = examples.write_flat(tmp_path / "flat", 20, seed=5)
    data = (tmp_path / "c.jsonl").read_bytes().replace(b'"role":"user"', b'"role":"robot"', 1)
    (tmp_path / "c.jsonl").write_bytes(data)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "c.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "gz" / "messages.csv.gz").write_bytes(gzip.compress(flat["messages"].read_bytes()))
    plain = ingest([tmp_path / "c.jsonl", flat["messages"]], tmp_path / "plain", workers=2, max_reject_rate=1.0)
    zipped = ingest([tmp_path / "gz"], tmp_path / "zipped", workers=2, max_reject_rate=1.0)
    for key in ("read", "accepted", "rejected", "messages", "reaction_events"):
        assert getattr(plain, key) == getattr(zipped, key), key
    assert [r["line"] for r in rejects(tmp_path / "zipped")] == [r["line"] for r in rejects(tmp_path / "plain")] == [1]
    sql = "SELECT message_id, text, time, source_line FROM messages ORDER BY ALL"
    assert q(tmp_path / "plain", sql) == q(tmp_path / "zipped", sql)
    (tmp_path / "x.parquet.gz").write_bytes(b"")
    with pytest.raises(IngestError, match="decompress"):
        ingest([tmp_path / "x.parquet.gz"], tmp_path / "s")


def test_workers_are_forked_only_from_a_single_threaded_process():
    """Forking copies a lock another thread holds; with a thread running, a fork server starts them."""
    import subprocess
    import sys

    script = """
import threading
from rluf.data import workers
print(workers.context().get_start_method())
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
print(workers.context().get_start_method())
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["fork", "forkserver"], out.stderr
