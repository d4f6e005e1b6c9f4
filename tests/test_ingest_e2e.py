"""`ingest()` end to end: layouts, reconciliation, idempotency, cross-record checks, the views."""

import json

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rluf.data import examples
from rluf.data.ingest import IngestError, ingest
from rluf.data.store import Store


def rejects(store_dir):
    path = Store(store_dir).rejects_path
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def q(store_dir, sql):
    return Store(store_dir).connect().execute(sql).fetchall()


def write_jsonl(path, records):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records))
    return path


def test_every_layout_and_format_together(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    examples.write_nested_jsonl(logs / "conversations.jsonl", 200, seed=1)
    csv_paths = examples.write_flat(logs / "csv", 50, seed=2, fmt="csv")
    examples.write_flat(tmp_path / "pq", 50, seed=2, fmt="parquet")
    s = ingest([logs], tmp_path / "store", workers=1)
    n_flat = sum(1 for p in csv_paths.values() for _ in open(p)) - 3  # minus the headers
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (200 + n_flat, 200 + n_flat, 0, 0)
    assert s.committed and s.conversations == 200 and s.messages == 200 * 6 + 50 * 6
    assert q(tmp_path / "store", "SELECT count(*) FROM messages") == [(1500,)]
    # The same rows from Parquet are duplicates: identity and content do not depend on the format.
    again = ingest([tmp_path / "pq"], tmp_path / "store", workers=1)
    assert again.duplicate == n_flat and again.accepted == 0 and again.rejected == 0


def test_reingest_is_idempotent(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 300, seed=3)
    first = ingest([tmp_path / "a.jsonl"], tmp_path / "s", workers=1)
    again = ingest([tmp_path / "a.jsonl"], tmp_path / "s", workers=1)
    assert first.accepted == 300 and (again.accepted, again.duplicate, again.rejected) == (0, 300, 0)
    assert q(tmp_path / "s", "SELECT count(*), count(DISTINCT message_id) FROM messages") == [(1800, 1800)]
    assert len(Store(tmp_path / "s").manifest()["batches"]) == 2


def _flat(tmp_path):
    msgs = [
        {"message_id": "m1", "conversation_id": "c", "user_id": "u", "role": "user", "text": "q", "time": "2026-01-01T00:00:00Z"},
        {"message_id": "m2", "conversation_id": "c", "user_id": "u", "role": "assistant", "text": "a", "time": "2026-01-01T00:00:10Z"},
    ]  # fmt: skip
    return write_jsonl(tmp_path / "messages.jsonl", msgs)


def test_reactions_resolve_last_action_wins_and_bad_references_are_rejected(tmp_path):
    events = [
        {"message_id": "m2", "user_id": "u", "reaction": "love", "action": "add", "time": "2026-01-01T00:01:00Z"},
        {"message_id": "m2", "user_id": "u", "reaction": "love", "action": "remove", "time": "2026-01-01T00:02:00Z"},
        {"message_id": "m2", "user_id": "v", "reaction": "love", "action": "add", "time": "2026-01-01T00:03:00Z"},
        {"message_id": "m2", "user_id": "u", "reaction": "thumbs_up", "action": "remove", "time": "2026-01-01T00:01:00Z"},
        {"message_id": "m2", "user_id": "u", "reaction": "thumbs_up", "action": "add", "time": "2026-01-01T00:05:00Z"},
        {"message_id": "nope", "user_id": "u", "reaction": "love", "time": "2026-01-01T00:01:00Z"},
        {"message_id": "m2", "user_id": "u", "reaction": "love", "time": "2025-12-31T00:00:00Z"},
        {"message_id": "m2", "user_id": "v", "reaction": "love", "action": "add", "time": "2026-01-01T00:03:00Z"},
    ]  # fmt: skip
    write_jsonl(tmp_path / "reactions.jsonl", events)
    s = ingest([_flat(tmp_path), tmp_path / "reactions.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (10, 7, 2, 1)
    got = {(r["line"], r["field"]) for r in rejects(tmp_path / "s")}
    assert got == {(6, "message_id"), (7, "time")}
    standing = q(tmp_path / "s", "SELECT user_id, reaction FROM reactions ORDER BY ALL")
    assert standing == [("u", "thumbs_up"), ("v", "love")]


def test_reactions_can_arrive_in_a_later_batch_but_not_before_their_messages(tmp_path):
    write_jsonl(tmp_path / "r.jsonl", [{"message_id": "m2", "user_id": "u", "reaction": "love", "time": "2026-01-02T00:00:00Z"}])
    early = ingest([tmp_path / "r.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert early.rejected == 1 and "ingest the messages first" in rejects(tmp_path / "s")[0]["reason"]
    ingest([_flat(tmp_path)], tmp_path / "s", workers=1)
    late = ingest([tmp_path / "r.jsonl"], tmp_path / "s", workers=1)
    assert late.accepted == 1 and q(tmp_path / "s", "SELECT count(*) FROM reactions") == [(1,)]


def test_users_view_retention(tmp_path):
    def m(mid, user, day, role="user"):
        return {"message_id": mid, "conversation_id": f"c-{mid}", "user_id": user, "role": role, "text": "x",
                "time": f"2026-01-{day:02d}T12:00:00Z"}  # fmt: skip

    rows = [m("a1", "keeps", 1), m("a2", "keeps", 16), m("b1", "leaves", 1), m("b2", "leaves", 6),
            m("b3", "leaves", 20, role="assistant"),  # the assistant writing is not the user coming back
            m("c1", "new", 25), m("d1", "told", 1), m("z", "late", 31)]  # fmt: skip
    write_jsonl(tmp_path / "m.jsonl", rows)
    (tmp_path / "users.csv").write_text("user_id,retained\ntold,true\n")
    ingest([tmp_path / "m.jsonl", tmp_path / "users.csv"], tmp_path / "s", workers=1)
    got = dict(q(tmp_path / "s", "SELECT user_id, retained FROM users"))
    assert got == {"keeps": True, "leaves": False, "new": None, "told": True, "late": None}
    # Another window: active in days 5-13 (keeps came back on day 15, leaves on day 5).
    con = Store(tmp_path / "s").connect(retention_days=(5, 14))
    got = dict(con.execute("SELECT user_id, retained FROM users").fetchall())
    assert (got["keeps"], got["leaves"]) == (False, True)


def test_line_numbers_blank_lines_crlf_and_bad_bytes(tmp_path):
    good = [orjson.dumps(examples.conversation(i, __import__("random").Random(i))) for i in range(4)]
    data = good[0] + b"\r\n\r\n" + good[1] + b"\n" + b'{"conversation_id": "x", "turns": [' + b"\n" + \
        good[2].replace(b'"text":"', b'"text":"\xff', 1) + b"\n   \n" + good[3]  # fmt: skip  (no final newline)
    (tmp_path / "a.jsonl").write_bytes(data)
    s = ingest([tmp_path / "a.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.blank_lines) == (5, 3, 2, 2)
    got = {r["line"]: r for r in rejects(tmp_path / "s")}
    assert set(got) == {4, 5} and "JSON" in got[4]["reason"] and "UTF-8" in got[5]["reason"]
    assert all(r["source"].endswith("a.jsonl") and r["field"] == "<record>" and "raw" in r for r in got.values())
    lines = q(tmp_path / "s", "SELECT DISTINCT source_line FROM messages ORDER BY 1")
    assert lines == [(1,), (3,), (7,)]


def test_blocks_and_workers_keep_exact_line_numbers(tmp_path, monkeypatch):
    rng = __import__("random").Random(7)
    lines = [orjson.dumps(examples.conversation(i, rng)) for i in range(400)]
    bad = sorted(rng.sample(range(400), 3))
    for i in bad:
        lines[i] = lines[i].replace(b'"role":"user"', b'"role":"robot"', 1)
    write_jsonl(tmp_path / "a.jsonl", lines)
    monkeypatch.setattr("rluf.data.ingest.BLOCK_BYTES", 8192)
    one = ingest([tmp_path / "a.jsonl"], tmp_path / "one", workers=1, max_reject_rate=1.0)
    two = ingest([tmp_path / "a.jsonl"], tmp_path / "two", workers=2, max_reject_rate=1.0)
    assert [r["line"] for r in rejects(tmp_path / "one")] == [i + 1 for i in bad]
    assert [r["line"] for r in rejects(tmp_path / "two")] == [i + 1 for i in bad]
    sql = "SELECT message_id, text, source_line FROM messages ORDER BY ALL"
    assert q(tmp_path / "one", sql) == q(tmp_path / "two", sql) and one.accepted == two.accepted == 397


def test_too_many_rejects_commits_nothing(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 20, seed=1)
    with open(tmp_path / "a.jsonl", "ab") as f:
        f.write(b"not json\n")
    s = ingest([tmp_path / "a.jsonl"], tmp_path / "s", workers=1)  # 1 of 21 > 1 %
    assert not s.committed and s.rejected == 1 and s.reconciles
    assert Store(tmp_path / "s").manifest()["batches"] == []
    assert rejects(tmp_path / "s")[0]["committed"] is False
    assert ingest([tmp_path / "a.jsonl"], tmp_path / "s", workers=1, max_reject_rate=0.1).accepted == 20


def test_parquet_rows_and_nested_parquet(tmp_path):
    rng = __import__("random").Random(1)
    convs = [examples.conversation(i, rng) for i in range(30)]
    convs[17]["turns"][1]["role"] = "narrator"
    pq.write_table(pa.Table.from_pylist(convs), tmp_path / "c.parquet", row_group_size=7)
    s = ingest([tmp_path / "c.parquet"], tmp_path / "s", workers=2, max_reject_rate=1.0)
    assert (s.accepted, s.rejected) == (29, 1)
    (r,) = rejects(tmp_path / "s")
    assert (r["row"], r["field"]) == (18, "turns[1].role") and json.loads(r["raw"])["conversation_id"] == "c17"


def test_unreadable_input_is_an_error_not_a_reject(tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        ingest([tmp_path / "missing.jsonl"], tmp_path / "s")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(IngestError, match="--format"):
        ingest([tmp_path / "x.txt"], tmp_path / "s")
    (tmp_path / "odd.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(IngestError, match="--layout"):
        ingest([tmp_path / "odd.jsonl"], tmp_path / "s")
    with pytest.raises(IngestError, match="max-reject-rate"):
        ingest([tmp_path / "odd.jsonl"], tmp_path / "s", max_reject_rate=2)


def test_the_store_is_never_read_as_input(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 10, seed=1)
    ingest([tmp_path], tmp_path / "store", workers=1)
    again = ingest([tmp_path], tmp_path / "store", workers=1)
    assert again.read == 10 and again.duplicate == 10
    with pytest.raises(IngestError, match="inside the store"):
        ingest([tmp_path / "store"], tmp_path / "store")
