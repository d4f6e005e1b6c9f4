"""Importers of public feedback formats: ConvAI2, OpenAssistant messages and OpenAssistant trees.

Hand-written fixtures check the mapping exactly; the real samples (../shared/data/real, or
$RLUF_REAL_DATA) check reconciliation and that every reaction in the source is stored once. The
real-data tests skip cleanly when the samples are absent.
"""

from __future__ import annotations

import collections
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from rluf.data import importers
from rluf.data.contract import RecordError
from rluf.data.ingest import ingest, plan_files
from rluf.data.store import Store

REAL = Path(os.environ.get("RLUF_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
OASST_EPOCH_US = int(datetime(2023, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000


def rejects(store_dir) -> list[dict]:
    path = Store(store_dir).rejects_path
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def q(store_dir, sql):
    con = Store(store_dir).connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def us(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


# ====================================================================== ConvAI2


def dialog(scores=(None, 1, None, 0), human="User 00172", bot="Bot 004", bot_first=False, **kw) -> dict:
    p_human = {"class": "User", "user_id": human}
    p_bot = {"class": "Bot", "user_id": bot}
    human_name, bot_name = ("participant2", "participant1") if bot_first else ("participant1", "participant2")
    turns = [{"id": i, "sender": human_name if i % 2 == 0 else bot_name,
              "sender_class": "Human" if i % 2 == 0 else "Bot", "text": f"turn {i}", "evaluation_score": s}
             for i, s in enumerate(scores)]  # fmt: skip
    d = {"dialog": turns, "start_time": "2018-10-29 03:32:08.296000", "end_time": "2018-10-29 03:35:08.296000",
         "bot_profile": ["i love dogs."], "user_profile": ["i am a runner."], "eval_score": 3, "profile_match": "",
         "participant1_id": p_bot if bot_first else p_human, "participant2_id": p_human if bot_first else p_bot}  # fmt: skip
    d.update(kw)
    return d


def test_convai2_dialog_mapping_exact():
    u = importers.convai2_dialog(dialog(), "convai2.json")
    start = us("2018-10-29 03:32:08.296000")
    (conv,) = u.conversations
    cid = conv[0]
    assert cid.startswith("convai2-") and len(cid) == len("convai2-") + 16 and int(cid[8:], 16) >= 0
    assert conv[1:6] == ("User 00172", start, None, "Bot 004", 4)
    assert json.loads(conv[6]) == {"convai2_source": "convai2.json", "eval_score": 3, "profile_match": "",
                                   "bot_profile": ["i love dogs."], "user_profile": ["i am a runner."]}  # fmt: skip
    # one minute between start and end: four turns 20 s apart
    assert [(m[0], m[2], m[3], m[4], m[5], m[6], m[7]) for m in u.messages] == [
        (f"{cid}:0", None, 0, "User 00172", "user", "turn 0", start),
        (f"{cid}:1", f"{cid}:0", 1, "User 00172", "assistant", "turn 1", start + 60_000_000),
        (f"{cid}:2", f"{cid}:1", 2, "User 00172", "user", "turn 2", start + 120_000_000),
        (f"{cid}:3", f"{cid}:2", 3, "User 00172", "assistant", "turn 3", start + 180_000_000),
    ]
    assert [json.loads(m[10]) for m in u.messages] == [{"convai2_turn_id": i, "convai2_sender": s} for i, s in
                                                       enumerate(["participant1", "participant2"] * 2)]  # fmt: skip
    assert u.reactions == [(f"{cid}:1", "User 00172", "thumbs_up", "add", start + 60_000_000, 0),
                           (f"{cid}:3", "User 00172", "thumbs_down", "add", start + 180_000_000, 1)]  # fmt: skip


def test_convai2_bot_as_participant1_and_no_end_time():
    d = dialog(bot_first=True, scores=(None, 1, None))
    del d["end_time"]
    u = importers.convai2_dialog(d, "x.json")
    assert u.conversations[0][1] == "User 00172" and u.conversations[0][4] == "Bot 004"
    assert [m[5] for m in u.messages] == ["user", "assistant", "user"]
    assert len({m[7] for m in u.messages}) == 1  # all at start_time
    assert [r[1] for r in u.reactions] == ["User 00172"]


def test_convai2_id_is_stable_and_depends_on_content():
    a = importers.convai2_dialog(dialog(), "a.json").key
    assert importers.convai2_dialog(dialog(), "b.json").key == a
    assert importers.convai2_dialog(dialog(human="User 2"), "a.json").key != a
    assert importers.convai2_dialog(dialog(start_time="2018-10-29 03:32:09"), "a.json").key != a


CONVAI2_BAD = [
    ("dialog not a list", lambda d: d.update(dialog="hi"), "dialog"),
    ("participant not an object", lambda d: d.update(participant2_id="Bot 004"), "participant2_id"),
    ("no human id", lambda d: d["participant1_id"].update(user_id=""), "participant1_id.user_id"),
    ("bad start", lambda d: d.update(start_time="yesterday"), "start_time"),
    ("end before start", lambda d: d.update(end_time="2018-10-29 03:00:00"), "end_time"),
    ("bad sender", lambda d: d["dialog"][2].update(sender="participant3"), "dialog[2].sender"),
    ("list sender", lambda d: d["dialog"][2].update(sender=["participant1"]), "dialog[2].sender"),
    ("list sender class", lambda d: d["dialog"][0].update(sender_class=["Human"]), "dialog[0].sender_class"),
    ("bad sender class", lambda d: d["dialog"][1].update(sender_class="Robot"), "dialog[1].sender_class"),
    ("score 2", lambda d: d["dialog"][1].update(evaluation_score=2), "dialog[1].evaluation_score"),
    ("score bool", lambda d: d["dialog"][3].update(evaluation_score=True), "dialog[3].evaluation_score"),
    ("turn not an object", lambda d: d["dialog"].__setitem__(1, "hi"), "dialog[1]"),
    ("text missing", lambda d: d["dialog"][1].pop("text"), "turns[1].text"),
    ("empty dialog", lambda d: d.update(dialog=[]), "turns"),
]


@pytest.mark.parametrize("name, mutate, field", CONVAI2_BAD, ids=[x[0] for x in CONVAI2_BAD])
def test_convai2_rejects(name, mutate, field):
    d = dialog()
    mutate(d)
    with pytest.raises(RecordError) as info:
        importers.convai2_dialog(d, "x.json")
    assert info.value.field == field


def test_convai2_file_end_to_end(tmp_path):
    bad = dialog()
    bad["dialog"][1]["sender_class"] = "Robot"
    dialogs = [dialog(), bad, dialog(human="User 2", scores=(None, 1, None, 1, None, 0)), dialog(), [1]]
    (tmp_path / "convai2.json").write_text(json.dumps(dialogs, indent=1))
    assert plan_files([tmp_path / "convai2.json"]) == [(tmp_path / "convai2.json", "convai2", None)]
    s = ingest([tmp_path / "convai2.json"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (5, 2, 2, 1)
    assert [(r["record"], r["field"]) for r in rejects(tmp_path / "s")] == [(2, "dialog[1].sender_class"),
                                                                           (5, "<record>")]  # fmt: skip
    assert all("line" not in r for r in rejects(tmp_path / "s"))
    assert q(tmp_path / "s", "SELECT reaction, count(*) FROM reaction_events GROUP BY 1 ORDER BY 1") == [
        ("thumbs_down", 2), ("thumbs_up", 3)]  # fmt: skip
    assert q(tmp_path / "s", "SELECT user_id, count(*) FROM reactions GROUP BY 1 ORDER BY 1") == [
        ("User 00172", 2), ("User 2", 3)]  # fmt: skip
    # every reaction is on an assistant message
    assert q(tmp_path / "s", "SELECT DISTINCT m.role FROM reactions r JOIN messages m USING (message_id)") == [
        ("assistant",)]  # fmt: skip
    assert q(tmp_path / "s", "SELECT count(*), count(DISTINCT conversation_id) FROM messages") == [(10, 2)]
    # importing the same file again: duplicates only
    again = ingest([tmp_path / "convai2.json"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (again.accepted, again.duplicate, again.rejected) == (0, 3, 2)
    # the same dialogs from a file with another name conflict (the file name is kept in extra)
    (tmp_path / "other.json").write_text(json.dumps(dialogs[:1]))
    other = ingest([tmp_path / "other.json"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (other.accepted, other.rejected) == (0, 1)
    assert rejects(tmp_path / "s")[-1]["field"] == "conversation_id"


def test_convai2_file_that_is_not_one_array(tmp_path):
    (tmp_path / "a.json").write_text('[{"dialog": []}')  # starts like an array, is not JSON
    s = ingest([tmp_path / "a.json"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.rejected, s.accepted) == (1, 1, 0)
    (r,) = rejects(tmp_path / "s")
    assert (r["record"], r["field"]) == (1, "<file>")
    (tmp_path / "b.json").write_text('{"dialog": []}')
    s = ingest([tmp_path / "b.json"], tmp_path / "s2", fmt="convai2", workers=1, max_reject_rate=1.0)
    assert (s.read, s.rejected) == (1, 1) and rejects(tmp_path / "s2")[0]["field"] == "<file>"


def test_convai2_empty_array(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    s = ingest([tmp_path / "a.json"], tmp_path / "s", workers=1)
    assert (s.read, s.accepted, s.rejected, s.committed) == (0, 0, 0, True)


# ====================================================================== OpenAssistant messages


def oasst_message(mid, parent, role, emojis, tree="t1", as_lists=True, **kw) -> dict:
    e = {"name": list(emojis), "count": list(emojis.values())} if as_lists else dict(emojis)
    return {"message_id": mid, "parent_id": parent, "user_id": f"author-{mid}",
            "created_date": "2023-02-07T17:29:24.727400+00:00", "text": f"text {mid}", "role": role, "lang": "en",
            "review_count": 3, "synthetic": False, "model_name": None, "message_tree_id": tree, "emojis": e,
            "labels": {"name": ["quality"], "value": [0.5], "count": [3]}, **kw}  # fmt: skip


def test_oasst_message_mapping_exact():
    rec = oasst_message("a1", "r", "assistant", {"+1": 2, "-1": 1, "_skip_labeling": 3, "red_flag": 1})
    u = importers.oasst_message(rec)
    t = us("2023-02-07T17:29:24.727400+00:00")
    (m,) = u.messages
    assert m[:10] == ("a1", "t1", "r", None, "author-a1", "assistant", "text a1", t, None, None)
    extra = json.loads(m[10])
    assert extra["emojis"] == rec["emojis"] and extra["labels"] == rec["labels"] and extra["lang"] == "en"
    assert "message_tree_id" not in extra and "created_date" not in extra and "role" not in extra
    assert u.reactions == [
        ("a1", "oasst-anon:a1:+1:0", "+1", "add", t, 0), ("a1", "oasst-anon:a1:+1:1", "+1", "add", t, 1),
        ("a1", "oasst-anon:a1:-1:0", "-1", "add", t, 2), ("a1", "oasst-anon:a1:red_flag:0", "red_flag", "add", t, 3),
    ]  # fmt: skip
    p = importers.oasst_message(oasst_message("r", None, "prompter", {"+1": 1}, as_lists=False))
    assert p.messages[0][5] == "user" and p.messages[0][2] is None
    assert [r[2] for r in p.reactions] == ["+1"]
    assert importers.oasst_message({**oasst_message("x", None, "prompter", {}), "emojis": None}).reactions == []


OASST_BAD = [
    ("moderator role", {"role": "moderator"}, "role"),
    ("no role", {"role": None}, "role"),
    ("list role", {"role": ["assistant"]}, "role"),
    ("emojis not an object", {"emojis": ["+1"]}, "emojis"),
    ("emojis lists of unequal length", {"emojis": {"name": ["+1", "-1"], "count": [1]}}, "emojis"),
    ("negative count", {"emojis": {"+1": -1}}, "emojis"),
    ("bool count", {"emojis": {"+1": True}}, "emojis"),
    ("no tree id", {"message_tree_id": None}, "conversation_id"),
    ("bad created_date", {"created_date": "Feb 7"}, "time"),
    ("no text", {"text": None}, "text"),
    ("empty message id", {"message_id": ""}, "message_id"),
]


@pytest.mark.parametrize("name, change, field", OASST_BAD, ids=[x[0] for x in OASST_BAD])
def test_oasst_message_rejects(name, change, field):
    rec = oasst_message("a1", "r", "assistant", {"+1": 1})
    rec.update(change)
    with pytest.raises(RecordError) as info:
        importers.oasst_message(rec)
    assert info.value.field == field


def test_oasst_messages_file_end_to_end(tmp_path):
    rows = [oasst_message("r", None, "prompter", {"+1": 2, "_skip_reply": 1}),
            oasst_message("a1", "r", "assistant", {"+1": 3, "-1": 1, "_skip_labeling": 4}),
            oasst_message("a2", "r", "assistant", {"red_flag": 1}, as_lists=False),
            oasst_message("orphan", "missing", "assistant", {"+1": 1}),  # a partial export
            oasst_message("child", "orphan", "prompter", {"-1": 5}),  # whose parent was rejected
            oasst_message("x", "r", "moderator", {})]  # fmt: skip
    (tmp_path / "oasst.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    assert plan_files([tmp_path / "oasst.jsonl"]) == [(tmp_path / "oasst.jsonl", "oasst", None)]
    s = ingest([tmp_path / "oasst.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.duplicate) == (6, 3, 3, 0)
    assert [(r["line"], r["field"]) for r in sorted(rejects(tmp_path / "s"), key=lambda r: r["line"])] == [
        (4, "parent_id"), (5, "parent_id"), (6, "role")]  # fmt: skip
    assert dict(q(tmp_path / "s", "SELECT reaction, count(*) FROM reaction_events GROUP BY 1")) == {
        "+1": 5, "-1": 1, "red_flag": 1}  # fmt: skip
    assert q(tmp_path / "s", "SELECT count(*) FROM reaction_events WHERE reaction LIKE '\\_skip%' ESCAPE '\\'") == [(0,)]
    assert dict(q(tmp_path / "s", "SELECT message_id, conversation_id FROM messages")) == {"r": "t1", "a1": "t1",
                                                                                          "a2": "t1"}  # fmt: skip
    # the skips survive in extra, verbatim
    extra = json.loads(q(tmp_path / "s", "SELECT extra FROM messages WHERE message_id = 'a1'")[0][0])
    assert dict(zip(extra["emojis"]["name"], extra["emojis"]["count"]))["_skip_labeling"] == 4
    again = ingest([tmp_path / "oasst.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (again.duplicate, again.accepted) == (3, 0)
    assert q(tmp_path / "s", "SELECT count(*) FROM reaction_events") == [(7,)]


# ====================================================================== OpenAssistant trees

DOC_TREE = {"message_tree_id": "ea20", "tree_state": "ready_for_export", "prompt": {
    "message_id": "ea20", "text": "How do I protect my eyes at a screen?", "role": "prompter", "lang": "en",
    "emojis": {"+1": 3, "_skip_reply": 1}, "replies": [
        {"message_id": "2318", "parent_id": "ea20", "text": "Follow the 20/20/20 rule.", "role": "assistant",
         "lang": "en", "emojis": {"red_flag": 1}, "replies": [
             {"message_id": "daed", "parent_id": "2318", "text": "Do blue light glasses help?", "role": "prompter",
              "replies": []}]},
        {"message_id": "9f1c", "parent_id": "ea20", "text": "Take breaks and blink more.", "role": "assistant",
         "emojis": {"+1": 2}, "replies": []}]}}  # fmt: skip


def test_oasst_tree_mapping_exact():
    u = importers.oasst_tree(json.loads(json.dumps(DOC_TREE)))
    assert u.key == "ea20"
    assert u.conversations == [("ea20", "oasst-tree:ea20", OASST_EPOCH_US, None, None, 4,
                                '{"tree_state":"ready_for_export"}')]  # fmt: skip
    # depth first, replies in listed order, one second apart, parents kept
    assert [(m[0], m[2], m[3], m[5], m[7]) for m in u.messages] == [
        ("ea20", None, 0, "user", OASST_EPOCH_US),
        ("2318", "ea20", 1, "assistant", OASST_EPOCH_US + 1_000_000),
        ("daed", "2318", 2, "user", OASST_EPOCH_US + 2_000_000),
        ("9f1c", "ea20", 3, "assistant", OASST_EPOCH_US + 3_000_000),
    ]
    assert json.loads(u.messages[0][10]) == {"lang": "en", "emojis": {"+1": 3, "_skip_reply": 1}}
    assert u.messages[2][10] is None
    assert [(r[0], r[2], r[5]) for r in u.reactions] == [("ea20", "+1", 0), ("ea20", "+1", 1), ("ea20", "+1", 2),
                                                         ("2318", "red_flag", 3), ("9f1c", "+1", 4), ("9f1c", "+1", 5)]  # fmt: skip
    assert all(r[4] == m_time for r in u.reactions for m in u.messages if m[0] == r[0] for m_time in [m[7]])


OASST_TREE_BAD = [
    ("no tree id", lambda t: t.pop("message_tree_id"), "message_tree_id"),
    ("prompt not an object", lambda t: t.update(prompt=[]), "prompt"),
    ("bad root role", lambda t: t["prompt"].update(role="user"), "prompt.role"),
    ("object root role", lambda t: t["prompt"].update(role={"r": 1}), "prompt.role"),
    ("bad reply role", lambda t: t["prompt"]["replies"][1].update(role="bot"), "prompt.replies[1].role"),
    ("deep bad role", lambda t: t["prompt"]["replies"][0]["replies"][0].update(role=None),
     "prompt.replies[0].replies[0].role"),
    ("reply not an object", lambda t: t["prompt"]["replies"].__setitem__(1, "x"), "prompt.replies[1]"),
    ("replies not a list", lambda t: t["prompt"]["replies"][1].update(replies="x"), "prompt.replies[1].replies"),
    ("bad emojis", lambda t: t["prompt"]["replies"][0].update(emojis={"+1": "x"}), "prompt.replies[0].emojis"),
    ("duplicate message id", lambda t: t["prompt"]["replies"][1].update(message_id="2318"), "turns[3].message_id"),
    ("no text", lambda t: t["prompt"]["replies"][0]["replies"][0].pop("text"), "turns[2].text"),
]  # fmt: skip


@pytest.mark.parametrize("name, mutate, field", OASST_TREE_BAD, ids=[x[0] for x in OASST_TREE_BAD])
def test_oasst_tree_rejects(name, mutate, field):
    tree = json.loads(json.dumps(DOC_TREE))
    mutate(tree)
    with pytest.raises(RecordError) as info:
        importers.oasst_tree(tree)
    assert info.value.field == field


def test_oasst_tree_file_end_to_end(tmp_path):
    other = json.loads(json.dumps(DOC_TREE).replace("ea20", "bb00").replace("2318", "2319"))
    other["prompt"]["replies"][1]["role"] = "bot"
    lines = [orjson.dumps(DOC_TREE), orjson.dumps(other), b"", orjson.dumps(DOC_TREE)]
    (tmp_path / "trees.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert plan_files([tmp_path / "trees.jsonl"]) == [(tmp_path / "trees.jsonl", "oasst-tree", None)]
    s = ingest([tmp_path / "trees.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.duplicate, s.blank_lines) == (3, 1, 1, 1, 1)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(2, "prompt.replies[1].role")]
    assert (s.messages, s.reaction_events, s.conversations) == (4, 6, 1)
    assert dict(q(tmp_path / "s", "SELECT reaction, count(*) FROM reactions GROUP BY 1")) == {"+1": 5, "red_flag": 1}


def test_public_format_is_detected_after_blank_or_broken_first_lines(tmp_path):
    (tmp_path / "o.jsonl").write_bytes(b"\n{oops\n" + orjson.dumps(oasst_message("r", None, "prompter", {})) + b"\n")
    assert plan_files([tmp_path / "o.jsonl"])[0][1] == "oasst"
    s = ingest([tmp_path / "o.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected, s.blank_lines) == (2, 1, 1, 1)
    assert [(r["line"], r["field"]) for r in rejects(tmp_path / "s")] == [(2, "<record>")]


# ====================================================================== the real samples

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real samples not found at {REAL} (set RLUF_REAL_DATA)")


def _real(*parts) -> Path:
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    made = {}

    def get(name: str, paths: list[Path]):
        if name not in made:
            store = tmp_path_factory.mktemp(f"real-{name}")
            made[name] = (ingest(paths, store, workers=2, max_reject_rate=1.0), store)
        return made[name]

    return get


@needs_real
def test_real_convai2(real_store):
    folder = _real("convai2")
    files = sorted(folder.glob("*.json"))
    assert files
    s, store = real_store("convai2", [folder])
    dialogs = {f.name: json.loads(f.read_bytes()) for f in files}
    n = sum(len(d) for d in dialogs.values())
    assert s.read == n and s.read == s.accepted + s.rejected + s.duplicate and s.committed
    rejected = {(Path(r["source"]).name, r["record"]) for r in rejects(store)}
    assert len(rejected) == s.rejected
    # expected: over the records not rejected, each distinct dialog once (identical dialogs are duplicates)
    seen, up, down, kept = set(), 0, 0, 0
    for name, ds in dialogs.items():
        for i, d in enumerate(ds, start=1):
            key = (name, json.dumps(d, sort_keys=True))
            if (name, i) in rejected or key in seen:
                continue
            seen.add(key)
            kept += 1
            scores = [t.get("evaluation_score") for t in d["dialog"]]
            up += scores.count(1)
            down += scores.count(0)
    assert kept == s.accepted
    assert up > 0 and down > 0
    got = dict(q(store, "SELECT reaction, count(*) FROM reaction_events GROUP BY 1"))
    assert got == {"thumbs_up": up, "thumbs_down": down}
    assert dict(q(store, "SELECT reaction, count(*) FROM reactions GROUP BY 1")) == got
    assert q(store, "SELECT count(*) FROM conversations")[0][0] == s.accepted
    n_turns = sum(len(d["dialog"]) for ds in dialogs.values() for d in ds)
    assert q(store, "SELECT count(*) FROM messages")[0][0] == n_turns - sum(
        len(dialogs[name][i - 1]["dialog"]) for name, i in rejected)  # fmt: skip
    # per source file
    by_source = dict(q(store, """SELECT json_extract_string(c.extra, '$.convai2_source'), count(*)
                                 FROM reaction_events r JOIN messages m USING (message_id)
                                 JOIN conversations c USING (conversation_id) GROUP BY 1"""))  # fmt: skip
    assert sum(by_source.values()) == up + down and set(by_source) <= set(dialogs)


@needs_real
def test_real_oasst_messages(real_store):
    path = _real("oasst", "en-validation.jsonl")
    s, store = real_store("oasst", [path])
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]
    assert s.read == len(rows) and s.read == s.accepted + s.rejected + s.duplicate and s.committed
    # exactly the messages whose ancestry leaves the (partial) export are rejected, for their parent_id
    by_id = {r["message_id"]: r for r in rows}

    def orphaned(r, depth=0):
        p = r["parent_id"]
        return p is not None and (p not in by_id or orphaned(by_id[p], depth + 1))

    want = {i for i, r in enumerate(rows, start=1) if orphaned(r)}
    got = rejects(store)
    assert {r["line"] for r in got} == want and {r["field"] for r in got} <= {"parent_id"}
    assert s.accepted == len(rows) - len(want) and s.duplicate == 0
    expected, skips = collections.Counter(), 0
    for i, r in enumerate(rows, start=1):
        e = r.get("emojis") or {"name": [], "count": []}
        for name, count in zip(e["name"], e["count"]):
            if name.startswith("_skip"):
                skips += count
            elif i not in want:
                expected[name] += count
    assert skips > 0 and expected["+1"] > 0 and expected["-1"] > 0 and expected["red_flag"] > 0
    assert dict(q(store, "SELECT reaction, count(*) FROM reaction_events GROUP BY 1")) == dict(expected)
    assert q(store, "SELECT count(*) FROM reaction_events WHERE starts_with(reaction, '_skip')") == [(0,)]
    # the skips are kept in extra
    stored_skips = sum(c for (extra,) in q(store, "SELECT extra FROM messages WHERE extra LIKE '%_skip%'")
                       for n, c in zip(json.loads(extra)["emojis"]["name"], json.loads(extra)["emojis"]["count"])
                       if n.startswith("_skip"))  # fmt: skip
    assert stored_skips == sum(c for i, r in enumerate(rows, start=1) if i not in want
                               for n, c in zip((r.get("emojis") or {}).get("name", []),
                                               (r.get("emojis") or {}).get("count", [])) if n.startswith("_skip"))  # fmt: skip
    roles = dict(q(store, "SELECT role, count(*) FROM messages GROUP BY 1"))
    src_roles = collections.Counter({"prompter": "user", "assistant": "assistant"}[r["role"]]
                                    for i, r in enumerate(rows, start=1) if i not in want)  # fmt: skip
    assert roles == dict(src_roles)


@needs_real
def test_real_oasst_trees(real_store):
    path = _real("oasst_trees", "en_100_tree.jsonl")
    s, store = real_store("trees", [path])
    trees = [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]
    assert s.read == len(trees) and s.read == s.accepted + s.rejected + s.duplicate and s.committed
    rejected = {r["line"] for r in rejects(store)}
    assert len(rejected) == s.rejected

    def walk(msg):
        yield msg
        for reply in msg.get("replies") or []:
            yield from walk(reply)

    expected, skips, n_messages = collections.Counter(), 0, 0
    for i, tree in enumerate(trees, start=1):
        if i in rejected:
            continue
        for m in walk(tree["prompt"]):
            n_messages += 1
            for name, count in (m.get("emojis") or {}).items():
                if name.startswith("_skip"):
                    skips += count
                else:
                    expected[name] += count
    assert skips > 0 and expected["+1"] > 0
    assert dict(q(store, "SELECT reaction, count(*) FROM reaction_events GROUP BY 1")) == dict(expected)
    assert q(store, "SELECT count(*) FROM reaction_events WHERE starts_with(reaction, '_skip')") == [(0,)]
    assert q(store, "SELECT count(*) FROM messages")[0][0] == n_messages == s.messages
    assert q(store, "SELECT count(*) FROM conversations")[0][0] == s.accepted
    # every non-root turn keeps its tree parent
    assert q(store, """SELECT count(*) FROM messages m LEFT JOIN messages p ON p.message_id = m.parent_id
                       WHERE m.parent_id IS NOT NULL AND p.message_id IS NULL""") == [(0,)]  # fmt: skip
    assert q(store, "SELECT count(*) FROM messages WHERE parent_id IS NULL")[0][0] == s.accepted


@needs_real
def test_real_reingest_is_all_duplicates(tmp_path):
    path = _real("oasst_trees", "en_100_tree.jsonl")
    first = ingest([path], tmp_path / "s", workers=1, max_reject_rate=1.0)
    again = ingest([path], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (again.read, again.accepted, again.duplicate, again.rejected) == (first.read, 0, first.accepted,
                                                                             first.rejected)  # fmt: skip
    assert q(tmp_path / "s", "SELECT count(*) FROM messages")[0][0] == first.messages


def test_convai2_missing_human_id_names_the_human_participant():
    d = dialog(bot_first=True)
    d["participant2_id"]["user_id"] = ""
    with pytest.raises(RecordError) as info:
        importers.convai2_dialog(d, "x.json")
    assert info.value.field == "participant2_id.user_id"
