"""Property tests: valid logs with random lines corrupted in random ways.

For every generated case: read == accepted + rejected + duplicate; every corrupted line is in
rejects.jsonl with its source, exact line number and the field at fault (or is counted as a blank
line or a duplicate); every other line is accepted and stored with its own line number.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rluf.data.ingest as ingest_mod
from rluf.data import examples
from rluf.data.contract import Limits
from rluf.data.ingest import ingest
from rluf.data.store import Store

MAX_TEXT = 2000  # example texts are at most a few hundred characters
LIMITS = Limits(max_text_chars=MAX_TEXT)
# RLUF_PROPERTY_EXAMPLES=500 for a longer search than the suite's default.
SETTINGS = settings(max_examples=int(os.environ.get("RLUF_PROPERTY_EXAMPLES", 25)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
BLANKS = [b"", b"   ", b"\t", b" \t "]
WRONG_TYPES = [1.5, True, [1], {"a": 1}]
BAD_TIMES = ["2026-02-30T00:00:00Z", "yesterday", 1_767_607_200_000, "1960-01-01T00:00:00Z", False]

ACCEPTED, DUPLICATE, BLANK = "accepted", "duplicate", "blank"


def rejected(field: str) -> tuple[str, str]:
    return ("rejected", field)


# ---------------------------------------------------------------- assembling a file


class Lines:
    """Output lines of one file with what each must become."""

    def __init__(self):
        self.items: list[tuple[bytes, object, object]] = []  # (bytes, outcome, tag)

    def add(self, data: bytes, outcome, tag=None):
        self.items.append((data, outcome, tag))

    def sprinkle(self, rng: random.Random, n_dup: int, n_blank: int, can_duplicate) -> None:
        """Insert copies of accepted lines (after their original) and blank lines, at random places."""
        for _ in range(n_dup):
            candidates = [i for i, (_, outcome, tag) in enumerate(self.items) if outcome == ACCEPTED and can_duplicate(tag)]
            if not candidates:
                break
            i = rng.choice(candidates)
            j = rng.randint(i + 1, len(self.items))
            self.items.insert(j, (self.items[i][0], DUPLICATE, self.items[i][2]))
        for _ in range(n_blank):
            self.items.insert(rng.randint(0, len(self.items)), (rng.choice(BLANKS), BLANK, None))

    def write(self, path: Path, crlf: bool, final_newline: bool) -> None:
        nl = b"\r\n" if crlf else b"\n"
        data = nl.join(d for d, _, _ in self.items)
        if final_newline or (self.items and self.items[-1][1] == BLANK):
            data += nl  # (a blank last line needs its newline to exist at all)
        path.write_bytes(data)

    def expected(self, skip: int = 0) -> dict[int, object]:
        """{line number: outcome}; `skip` leading lines (a CSV header) are not records."""
        return {n: outcome for n, (_, outcome, _) in enumerate(self.items, start=1) if n > skip}


def check(summary, store_dir: Path, files: dict[str, dict[int, object]]) -> None:
    """Compare an ingest's summary, rejects and stored lineage with what each line must become."""
    assert summary.read == summary.accepted + summary.rejected + summary.duplicate
    assert summary.reconciles and summary.committed
    want_rejects, want_accepted = {}, set()
    n = {ACCEPTED: 0, DUPLICATE: 0, BLANK: 0, "rejected": 0}
    for name, expected in files.items():
        for line, outcome in expected.items():
            if isinstance(outcome, tuple):
                want_rejects[(name, line)] = outcome[1]
                n["rejected"] += 1
            else:
                n[outcome] += 1
                if outcome == ACCEPTED:
                    want_accepted.add((name, line))
    assert (summary.read, summary.accepted, summary.rejected, summary.duplicate, summary.blank_lines) == (
        n[ACCEPTED] + n["rejected"] + n[DUPLICATE], n[ACCEPTED], n["rejected"], n[DUPLICATE], n[BLANK])  # fmt: skip
    path = Store(store_dir).rejects_path
    rejects = [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []
    for r in rejects:
        assert {"source", "line", "field", "reason", "batch_id", "committed"} <= set(r)
        assert r["committed"] is True and r["reason"]
    got = {(Path(r["source"]).name, r["line"]): r["field"] for r in rejects}
    assert len(got) == len(rejects)  # one reject per line
    assert got == want_rejects
    con = Store(store_dir).connect()
    try:
        stored = set()
        for table in ("conversations", "messages", "reaction_events", "user_overrides"):
            stored |= set(con.execute(f"SELECT DISTINCT source_file, source_line FROM {table}").fetchall())
        stored |= set(con.execute("SELECT DISTINCT source_file, source_line FROM ledger").fetchall())
    finally:
        con.close()
    assert {(Path(f).name, line) for f, line in stored} == want_accepted


def run_ingest(paths, store_dir, vectorized: bool, small_blocks: bool):
    old = ingest_mod.BLOCK_BYTES
    ingest_mod.BLOCK_BYTES = 2048 if small_blocks else old
    try:
        return ingest(paths, store_dir, workers=1, max_reject_rate=1.0, limits=LIMITS, vectorized=vectorized)
    finally:
        ingest_mod.BLOCK_BYTES = old


def corrupt_bytes(kind: str, line: bytes, rng: random.Random) -> tuple[bytes, str] | None:
    """Corruptions of the raw line that make it unreadable: the field is always <record>."""
    if kind == "truncate":
        return line[: rng.randint(1, len(line) - 1)], "<record>"
    if kind == "bad_utf8":
        at = line.find(b'"text":"')
        at = line.find(b'":"') + 3 if at < 0 else at + 8  # inside the text, else the first string value
        data = line[:at] + rng.choice([b"\xff", b"\xc3(", b"\xed\xa0\x80"]) + line[at:]
        assert data != line
        return data, "<record>"
    if kind == "not_object":
        # (not b"null": a nested JSONL block starting with `null` crashes the ingest; see
        # test_ingest.py::test_null_first_line_does_not_crash_the_ingest)
        return rng.choice([b"[1, 2]", b'"text"', b"42", b"true"]), "<record>"
    return None


# ---------------------------------------------------------------- nested conversations

NESTED_KINDS = ["truncate", "bad_utf8", "not_object", "drop_key", "drop_turn_key", "wrong_type", "bad_role",
                "early_reaction", "long_text", "bad_time", "dup_message_id", "unknown_reaction_field",
                "started_late"]  # fmt: skip


def corrupt_conversation(kind: str, rec: dict, rng: random.Random) -> str:
    """Corrupt a nested record in place; return the field the reject must name."""
    turns = rec["turns"]
    i = rng.randrange(len(turns))
    if kind == "drop_key":
        key = rng.choice(["conversation_id", "user_id", "turns"])
        del rec[key]
        return key
    if kind == "drop_turn_key":
        key = rng.choice(["role", "text", "time"])
        del turns[i][key]
        return f"turns[{i}].{key}"
    if kind == "wrong_type":
        where = rng.choice(["conversation_id", "user_id", "turns", "text", "message_id"])
        if where == "turns":
            rec["turns"] = rng.choice(["turns", 3, {"0": 1}])
            return "turns"
        if where in ("text", "message_id"):
            turns[i][where] = rng.choice(WRONG_TYPES)
            return f"turns[{i}].{where}"
        rec[where] = rng.choice(WRONG_TYPES)
        return where
    if kind == "bad_role":
        turns[i]["role"] = rng.choice(["bot", "User", "", None, 1])
        return f"turns[{i}].role"
    if kind == "early_reaction":
        turns[i]["reactions"] = [{"name": "love", "time": "2001-01-01T00:00:00Z"}]
        return f"turns[{i}].reactions[0].time"
    if kind == "long_text":
        turns[i]["text"] = "y" * (MAX_TEXT + rng.randint(1, 50))
        return f"turns[{i}].text"
    if kind == "bad_time":
        turns[i]["time"] = rng.choice(BAD_TIMES)
        return f"turns[{i}].time"
    if kind == "dup_message_id":
        if len(turns) < 2:
            turns.append(dict(turns[0]))  # the copy keeps the first turn's id
            return "turns[1].message_id"
        j = rng.randrange(1, len(turns))
        turns[j]["message_id"] = turns[rng.randrange(j)]["message_id"]
        return f"turns[{j}].message_id"
    if kind == "unknown_reaction_field":
        turns[i]["reactions"] = [{"name": "love", "time": turns[i]["time"], "emoji": "x"}]
        return f"turns[{i}].reactions[0].emoji"
    if kind == "started_late":
        rec["started_at"] = "2099-01-01T00:00:00Z"
        return "started_at"
    raise AssertionError(kind)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 400),  # over 256 lines the vectorized path splits failing ranges
    corruptions=st.lists(st.tuples(st.sampled_from(NESTED_KINDS), st.integers(0, 10**6)), max_size=10),
    n_dup=st.integers(0, 3),
    n_blank=st.integers(0, 3),
    vectorized=st.booleans(),
    small_blocks=st.booleans(),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_nested_jsonl_corruption(tmp_path_factory, seed, n, corruptions, n_dup, n_blank, vectorized, small_blocks,
                                 crlf, final_newline):  # fmt: skip
    tmp = tmp_path_factory.mktemp("nested")
    rng = random.Random(seed)
    records = [examples.conversation(i, rng, turns=rng.randint(1, 4)) for i in range(n)]
    bad: dict[int, str] = {}
    for kind, pos in corruptions:
        i = pos % n
        if i not in bad and len(bad) < n - 1:  # keep one valid record for layout detection
            bad[i] = kind
    lines = Lines()
    for i, rec in enumerate(records):
        raw = orjson.dumps(rec)
        if i not in bad:
            lines.add(raw, ACCEPTED)
            continue
        broken = corrupt_bytes(bad[i], raw, rng)
        if broken is None:
            field = corrupt_conversation(bad[i], rec, rng)
            broken = (orjson.dumps(rec), field)
        lines.add(broken[0], rejected(broken[1]))
    lines.sprinkle(rng, n_dup, n_blank, lambda tag: True)
    lines.write(tmp / "conversations.jsonl", crlf, final_newline)
    s = run_ingest([tmp / "conversations.jsonl"], tmp / "store", vectorized, small_blocks)
    check(s, tmp / "store", {"conversations.jsonl": lines.expected()})


# ---------------------------------------------------------------- flat messages, reactions and users

MESSAGE_KINDS = ["truncate", "bad_utf8", "not_object", "drop_key", "wrong_type", "bad_role", "long_text", "bad_time"]
REACTION_KINDS = ["truncate", "bad_utf8", "not_object", "drop_key", "wrong_type", "bad_action", "unknown_field",
                  "early", "ghost"]  # fmt: skip
USER_KINDS = ["truncate", "drop_key", "bad_retained", "unknown_field"]


def corrupt_message(kind: str, rec: dict, rng: random.Random) -> str:
    if kind == "drop_key":
        key = rng.choice(["message_id", "conversation_id", "user_id", "role", "text", "time"])
        del rec[key]
        return key
    if kind == "wrong_type":
        key = rng.choice(["message_id", "conversation_id", "user_id", "text", "time", "policy", "category"])
        rec[key] = rng.choice(WRONG_TYPES[1:] if key == "time" else WRONG_TYPES)
        return key
    if kind == "bad_role":
        rec["role"] = rng.choice(["bot", "ASSISTANT", ""])
        return "role"
    if kind == "long_text":
        rec["text"] = "z" * (MAX_TEXT + 1)
        return "text"
    if kind == "bad_time":
        rec["time"] = rng.choice(BAD_TIMES)
        return "time"
    raise AssertionError(kind)


def corrupt_reaction(kind: str, rec: dict, rng: random.Random, message_time: str, k: int) -> str:
    if kind == "drop_key":
        key = rng.choice(["message_id", "user_id", "reaction", "time"])
        del rec[key]
        return key
    if kind == "wrong_type":
        key = rng.choice(["message_id", "user_id", "reaction", "time"])
        rec[key] = rng.choice(WRONG_TYPES[1:] if key == "time" else WRONG_TYPES)  # 1.5 is a valid epoch time
        return key
    if kind == "bad_action":
        rec["action"] = rng.choice(["delete", "ADD", 1])
        return "action"
    if kind == "unknown_field":
        rec[rng.choice(["emoji", "count", "zz"])] = 1
        return [k for k in rec if k not in ("message_id", "user_id", "reaction", "action", "time")][0]
    if kind == "early":
        rec["time"] = shift(message_time, -(k + 1))
        return "time"  # a cross-record check
    if kind == "ghost":
        rec["message_id"] = f"ghost-{k}"
        return "message_id"  # a cross-record check
    raise AssertionError(kind)


def shift(iso: str, seconds: int) -> str:
    return (datetime.fromisoformat(iso) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pick(corruptions, kinds_for, n, keep_one=True):
    bad = {}
    for kind, pos in corruptions:
        i = pos % n
        if kind in kinds_for and i not in bad and (len(bad) < n - 1 or not keep_one):
            bad[i] = kind
    return bad


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_conv=st.integers(2, 15),
    m_corr=st.lists(st.tuples(st.sampled_from(MESSAGE_KINDS), st.integers(0, 10**6)), max_size=6),
    r_corr=st.lists(st.tuples(st.sampled_from(REACTION_KINDS), st.integers(0, 10**6)), max_size=6),
    u_corr=st.lists(st.tuples(st.sampled_from(USER_KINDS), st.integers(0, 10**6)), max_size=3),
    n_dup=st.integers(0, 3),
    n_blank=st.integers(0, 2),
    small_blocks=st.booleans(),
    crlf=st.booleans(),
)
def test_flat_jsonl_corruption(tmp_path_factory, seed, n_conv, m_corr, r_corr, u_corr, n_dup, n_blank, small_blocks,
                               crlf):  # fmt: skip
    tmp = tmp_path_factory.mktemp("flat")
    rng = random.Random(seed)
    messages, reactions, users = [], [], {}
    for c in range(n_conv):
        conv = examples.conversation(c, rng, rng.randint(2, 5), prefix="f")
        users[conv["user_id"]] = rng.random() < 0.5
        for t in conv["turns"]:
            messages.append({"message_id": t["message_id"], "conversation_id": conv["conversation_id"],
                             "user_id": conv["user_id"], "role": t["role"], "text": t["text"], "time": t["time"],
                             "policy": conv["policy"], "category": conv["category"]})  # fmt: skip
            if t["role"] == "assistant":
                for j in range(rng.randint(1, 2)):
                    reactions.append({"message_id": t["message_id"], "user_id": conv["user_id"],
                                      "reaction": rng.choice(examples.REACTIONS), "action": rng.choice(["add", "remove"]),
                                      "time": shift(t["time"], j * rng.randint(0, 600))})  # fmt: skip
    # reaction events must be unique events
    seen, unique = set(), []
    for r in reactions:
        key = orjson.dumps(r)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    reactions = unique
    message_time = {m["message_id"]: m["time"] for m in messages}

    bad_m = _pick(m_corr, MESSAGE_KINDS, len(messages))
    m_lines, message_ok = Lines(), {}
    for i, rec in enumerate(messages):
        message_ok[rec["message_id"]] = i not in bad_m
        raw = orjson.dumps(rec)
        if i not in bad_m:
            m_lines.add(raw, ACCEPTED, rec["message_id"])
            continue
        broken = corrupt_bytes(bad_m[i], raw, rng) or (None, corrupt_message(bad_m[i], rec, rng))
        m_lines.add(broken[0] if broken[0] is not None else orjson.dumps(rec), rejected(broken[1]))

    bad_r = _pick(r_corr, REACTION_KINDS, len(reactions))
    r_lines = Lines()
    for k, rec in enumerate(reactions):
        mid = rec["message_id"]
        raw = orjson.dumps(rec)
        if k not in bad_r:
            outcome = ACCEPTED if message_ok[mid] else rejected("message_id")
            r_lines.add(raw, outcome, mid)
            continue
        broken = corrupt_bytes(bad_r[k], raw, rng)
        if broken is None:
            field = corrupt_reaction(bad_r[k], rec, rng, message_time[mid], k)
            if bad_r[k] == "early" and not message_ok[mid]:
                field = "message_id"
            broken = (orjson.dumps(rec), field)
        r_lines.add(broken[0], rejected(broken[1]))

    user_rows = [{"user_id": u, "retained": v} for u, v in sorted(users.items())]
    bad_u = _pick(u_corr, USER_KINDS, len(user_rows))
    u_lines = Lines()
    for i, rec in enumerate(user_rows):
        raw = orjson.dumps(rec)
        kind = bad_u.get(i)
        if kind is None:
            u_lines.add(raw, ACCEPTED, rec["user_id"])
        elif kind == "truncate":
            u_lines.add(raw[: rng.randint(1, len(raw) - 1)], rejected("<record>"))
        elif kind == "drop_key":
            del rec["user_id"]
            u_lines.add(orjson.dumps(rec), rejected("user_id"))
        elif kind == "bad_retained":
            rec["retained"] = rng.choice(["maybe", 2, None, [True]])
            u_lines.add(orjson.dumps(rec), rejected("retained"))
        else:
            rec["cohort"] = "a"
            u_lines.add(orjson.dumps(rec), rejected("cohort"))

    m_lines.sprinkle(rng, n_dup, n_blank, lambda mid: True)
    r_lines.sprinkle(rng, n_dup, n_blank, lambda mid: message_ok[mid])
    u_lines.sprinkle(rng, 1 if n_dup else 0, n_blank, lambda uid: True)
    files = {"messages.jsonl": m_lines, "reactions.jsonl": r_lines, "users.jsonl": u_lines}
    for name, lines in files.items():
        lines.write(tmp / name, crlf, final_newline=True)
    # reactions first on the command line: the ingest still reads the messages before them
    paths = [tmp / "reactions.jsonl", tmp / "users.jsonl", tmp / "messages.jsonl"]
    s = run_ingest(paths, tmp / "store", vectorized=True, small_blocks=small_blocks)
    check(s, tmp / "store", {name: lines.expected() for name, lines in files.items()})


# ---------------------------------------------------------------- flat CSV

CSV_HEADER = ["message_id", "conversation_id", "user_id", "role", "text", "time", "policy", "category"]
CSV_KINDS = ["drop_cell", "extra_cell", "empty_required", "bad_role", "bad_time", "bad_utf8", "long_text", "epoch_ms"]


def _csv_line(cells: list[str]) -> bytes:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue().encode("utf-8")


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_conv=st.integers(1, 12),
    corruptions=st.lists(st.tuples(st.sampled_from(CSV_KINDS), st.integers(0, 10**6)), max_size=6),
    n_dup=st.integers(0, 2),
    n_blank=st.integers(0, 2),
    crlf=st.booleans(),
)
def test_flat_csv_corruption(tmp_path_factory, seed, n_conv, corruptions, n_dup, n_blank, crlf):
    tmp = tmp_path_factory.mktemp("csv")
    rng = random.Random(seed)
    rows = []
    for c in range(n_conv):
        conv = examples.conversation(c, rng, rng.randint(1, 4), prefix="k")
        for t in conv["turns"]:
            epoch = str(int(datetime.fromisoformat(t["time"]).timestamp()))
            rows.append([t["message_id"], conv["conversation_id"], conv["user_id"], t["role"], t["text"],
                         rng.choice([t["time"], epoch]), conv["policy"], rng.choice([conv["category"], ""])])  # fmt: skip
    bad = _pick(corruptions, CSV_KINDS, len(rows))
    lines = Lines()
    lines.add(_csv_line(CSV_HEADER), "header")
    for i, cells in enumerate(rows):
        kind = bad.get(i)
        if kind is None:
            lines.add(_csv_line(cells), ACCEPTED)
        elif kind == "drop_cell":
            lines.add(_csv_line(cells[:-1]), rejected("<record>"))
        elif kind == "extra_cell":
            lines.add(_csv_line(cells + ["x"]), rejected("<record>"))
        elif kind == "empty_required":
            j = rng.randrange(6)
            cells[j] = ""
            lines.add(_csv_line(cells), rejected(CSV_HEADER[j]))
        elif kind == "bad_role":
            cells[3] = "robot"
            lines.add(_csv_line(cells), rejected("role"))
        elif kind == "bad_time":
            cells[5] = rng.choice(["31/01/2026", "noon", "2026-13-01T00:00:00Z", "-5"])
            lines.add(_csv_line(cells), rejected("time"))
        elif kind == "epoch_ms":
            cells[5] = "1767225600000"
            lines.add(_csv_line(cells), rejected("time"))
        elif kind == "bad_utf8":
            data = _csv_line(cells).replace(cells[4].encode(), cells[4].encode() + b"\xff", 1)
            lines.add(data, rejected("text"))
        elif kind == "long_text":
            cells[4] = "w" * (MAX_TEXT + 1)
            lines.add(_csv_line(cells), rejected("text"))
    lines.sprinkle(rng, n_dup, 0, lambda tag: True)
    for _ in range(n_blank):  # a row of empty cells, or an empty line
        blank = rng.choice([b"", b",,,,,,,"])
        lines.items.insert(rng.randint(1, len(lines.items)), (blank, BLANK, None))
    lines.write(tmp / "messages.csv", crlf, final_newline=True)
    s = run_ingest([tmp / "messages.csv"], tmp / "store", vectorized=True, small_blocks=False)
    check(s, tmp / "store", {"messages.csv": lines.expected(skip=1)})  # the header is line 1


def test_checker_detects_a_wrong_expectation(tmp_path):
    """The property checker itself must be able to fail."""
    rng = random.Random(0)
    lines = Lines()
    for i in range(3):
        lines.add(orjson.dumps(examples.conversation(i, rng)), ACCEPTED)
    lines.write(tmp_path / "c.jsonl", crlf=False, final_newline=True)
    s = run_ingest([tmp_path / "c.jsonl"], tmp_path / "s", vectorized=True, small_blocks=False)
    check(s, tmp_path / "s", {"c.jsonl": lines.expected()})
    lines.items[1] = (lines.items[1][0], rejected("turns"), None)
    with pytest.raises(AssertionError):
        check(s, tmp_path / "s", {"c.jsonl": lines.expected()})
    with pytest.raises(AssertionError):
        check(s, tmp_path / "s", {"c.jsonl": {1: ACCEPTED, 2: ACCEPTED, 3: DUPLICATE}})
