"""ConvAI2 and OpenAssistant importers: on small fixtures, and on the real samples when present."""

import collections
import json
import os
from pathlib import Path

import orjson
import pytest

from rluf.data.ingest import ingest
from rluf.data.store import Store

REAL = Path(os.environ.get("RLUF_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


def q(store_dir, sql):
    return Store(store_dir).connect().execute(sql).fetchall()


def convai2_dialog(user="User 1", bot="Bot 7", scores=(None, 1, None, 0)):
    turns = [{"id": i, "sender": "participant1" if i % 2 == 0 else "participant2",
              "sender_class": "Human" if i % 2 == 0 else "Bot", "text": f"t{i}", "evaluation_score": s}
             for i, s in enumerate(scores)]  # fmt: skip
    return {"dialog": turns, "start_time": "2018-07-09 04:29:15", "end_time": "2018-07-09 04:30:15",
            "bot_profile": ["p"], "user_profile": ["q"], "eval_score": 4, "profile_match": 1,
            "participant1_id": {"class": "User", "user_id": user}, "participant2_id": {"class": "Bot", "user_id": bot}}  # fmt: skip


def test_convai2_fixture(tmp_path):
    bad = convai2_dialog()
    bad["dialog"][1]["sender_class"] = "Robot"
    (tmp_path / "c.json").write_text(json.dumps([convai2_dialog(), bad, convai2_dialog(user="User 2")]))
    s = ingest([tmp_path / "c.json"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected) == (3, 2, 1)
    rej = orjson.loads(Store(tmp_path / "s").rejects_path.read_bytes().splitlines()[0])
    assert (rej["record"], rej["field"]) == (2, "dialog[1].sender_class")
    assert q(tmp_path / "s", "SELECT reaction, count(*) FROM reactions GROUP BY 1 ORDER BY 1") == [
        ("thumbs_down", 2), ("thumbs_up", 2)]  # fmt: skip
    assert q(tmp_path / "s", "SELECT DISTINCT policy FROM conversations") == [("Bot 7",)]
    # reactions are by the human, on bot replies, in turn order with interpolated times
    rows = q(tmp_path / "s", """SELECT r.user_id, m.role, m.turn_index FROM reactions r JOIN messages m USING (message_id)
                                 WHERE m.conversation_id IN (SELECT conversation_id FROM conversations WHERE user_id = 'User 1')
                                 ORDER BY 3""")  # fmt: skip
    assert rows == [("User 1", "assistant", 1), ("User 1", "assistant", 3)]
    assert ingest([tmp_path / "c.json"], tmp_path / "s", workers=1, max_reject_rate=1.0).duplicate == 2


def oasst_message(mid, parent, role, emojis, tree="t1"):
    return {"message_id": mid, "parent_id": parent, "user_id": f"author-{mid}", "created_date": "2023-02-07T17:29:24+00:00",
            "text": f"text {mid}", "role": role, "lang": "en", "message_tree_id": tree,
            "emojis": {"name": list(emojis), "count": list(emojis.values())}, "labels": {"name": ["quality"], "value": [0.5]}}  # fmt: skip


def test_oasst_messages_fixture(tmp_path):
    rows = [oasst_message("r", None, "prompter", {"+1": 2}),
            oasst_message("a1", "r", "assistant", {"+1": 3, "-1": 1, "_skip_reply": 4}),
            oasst_message("a2", "r", "assistant", {"red_flag": 1}),
            oasst_message("orphan", "missing", "assistant", {"+1": 1}),
            oasst_message("x", "r", "moderator", {})]  # fmt: skip
    (tmp_path / "o.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    s = ingest([tmp_path / "o.jsonl"], tmp_path / "s", workers=1, max_reject_rate=1.0)
    assert (s.read, s.accepted, s.rejected) == (5, 3, 2)
    fields = sorted(orjson.loads(x)["field"] for x in Store(tmp_path / "s").rejects_path.read_bytes().splitlines())
    assert fields == ["parent_id", "role"]
    got = dict(q(tmp_path / "s", "SELECT reaction, count(*) FROM reactions GROUP BY 1"))
    assert got == {"+1": 5, "-1": 1, "red_flag": 1}  # _skip_* are not reactions
    extra = json.loads(q(tmp_path / "s", "SELECT extra FROM messages WHERE message_id = 'a1'")[0][0])
    assert extra["emojis"]["name"] == ["+1", "-1", "_skip_reply"] and extra["labels"]["value"] == [0.5]


def test_oasst_tree_fixture(tmp_path):
    tree = {"message_tree_id": "t9", "tree_state": "ready_for_export", "prompt": {
        "message_id": "p", "text": "q", "role": "prompter", "emojis": {"+1": 1}, "replies": [
            {"message_id": "a", "text": "x", "role": "assistant", "emojis": {"-1": 2, "_skip_labeling": 1}, "replies": [
                {"message_id": "f", "text": "more?", "role": "prompter", "replies": []}]},
            {"message_id": "b", "text": "y", "role": "assistant", "replies": []}]}}  # fmt: skip
    (tmp_path / "t.jsonl").write_bytes(orjson.dumps(tree) + b"\n")
    s = ingest([tmp_path / "t.jsonl"], tmp_path / "s", workers=1)
    assert (s.accepted, s.messages, s.reaction_events) == (1, 4, 3)
    parents = dict(q(tmp_path / "s", "SELECT message_id, parent_id FROM messages"))
    assert parents == {"p": None, "a": "p", "f": "a", "b": "p"}


needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"public samples not found at {REAL}")


@needs_real
def test_real_convai2_reconciles_and_counts_every_rating(tmp_path):
    files = sorted((REAL / "convai2").glob("*.json"))
    s = ingest(files, tmp_path / "s", workers=2)
    dialogs = [d for f in files for d in json.loads(f.read_text())]
    scores = collections.Counter(t["evaluation_score"] for d in dialogs for t in d["dialog"])
    assert s.read == len(dialogs) and s.reconciles and s.accepted + s.duplicate == s.read - s.rejected
    assert s.rejected == 0
    got = dict(q(tmp_path / "s", "SELECT reaction, count(*) FROM reaction_events GROUP BY 1"))
    assert got == {"thumbs_up": scores[1], "thumbs_down": scores[0]}


@needs_real
def test_real_oasst_reconciles_and_keeps_every_vote(tmp_path):
    path = REAL / "oasst" / "en-validation.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    s = ingest([path], tmp_path / "s", workers=2, max_reject_rate=0.05)
    assert s.read == len(rows) and s.reconciles and s.committed
    accepted = {r[0] for r in q(tmp_path / "s", "SELECT message_id FROM messages")}
    expected = collections.Counter()
    for r in rows:
        if r["message_id"] in accepted and r["emojis"]:
            for name, n in zip(r["emojis"]["name"], r["emojis"]["count"]):
                if not name.startswith("_skip"):
                    expected[name] += n
    assert dict(q(tmp_path / "s", "SELECT reaction, count(*) FROM reaction_events GROUP BY 1")) == dict(expected)
    trees = REAL / "oasst_trees" / "en_100_tree.jsonl"
    t = ingest([trees], tmp_path / "t", workers=1)
    assert t.read == t.accepted == sum(1 for x in trees.read_text().splitlines() if x.strip())
