"""Reward-model examples (rluf.reward.data): labels, censoring, context, the split invariants, the
adversarial filter, the cap, upsampling, saving, errors, and the public ConvAI2 / OpenAssistant stores.

Hand-written logs check each label exactly; a simulated world (300 users, more spammers and haters than
the default) checks the split invariants and the filter against the simulator's truth. The real-data
tests skip cleanly when ../shared/data/real is absent.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rluf.data.ingest import ingest
from rluf.reward.data import SCHEMA, ExampleConfig, ExampleError, ExampleSet, build_examples, main, upsample
from rluf.reward.text import render_context

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
REAL = Path(os.environ.get("RLUF_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real")


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def at(days: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(days=days, seconds=seconds)


def conv(cid: str, user: str, start: datetime, turns: list[tuple], category: str = "chat") -> dict:
    """turns: (role, text, seconds after start, [reaction events as (name, seconds after the turn, action)])."""
    out = []
    for i, (role, text, dt, *rest) in enumerate(turns):
        turn = {"message_id": f"{cid}:{i}", "role": role, "text": text, "time": iso(start + timedelta(seconds=dt))}
        if rest and rest[0]:
            turn["reactions"] = [{"name": n, "time": iso(start + timedelta(seconds=dt + d)), "action": a}
                                 for n, d, a in rest[0]]  # fmt: skip
        out.append(turn)
    return {"conversation_id": cid, "user_id": user, "category": category, "policy": "p1", "turns": out}


def write_store(tmp: Path, records: list[dict], flat: list[dict] | None = None) -> Path:
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if flat:
        (logs / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    s = ingest([logs], tmp / "store", workers=1)
    assert s.rejected == 0, s
    return tmp / "store"


def fillers(n: int = 40) -> list[dict]:
    """n one-exchange conversations by n users, spread over days 0..20, without reactions."""
    return [conv(f"f{i:02d}", f"fu{i:02d}", at(days=i * 20 / n), [("user", f"question {i}", 0), ("assistant", f"answer {i}", 3)])
            for i in range(n)]  # fmt: skip


def everything(store: Path, **kw) -> tuple[dict[str, dict], ExampleSet]:
    """All examples, whatever their split: a grouped split, no filter, no cap."""
    cfg = ExampleConfig(min_split_users=10_000, adversarial_filter=False, max_examples_per_user=None, **kw)
    ex = build_examples(store, cfg)
    rows = pa.concat_tables([ex.train, ex.val, ex.test]).to_pylist()
    return {r["message_id"]: r for r in rows}, ex


# ====================================================================== hand-made logs


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> Path:
    h = 3600
    records = [
        conv("c1", "alice", at(0), [
            ("user", "hello there", 0),
            ("assistant", "hi! how can I help?", 5, [("love", 60, "add")]),                      # inside the window
            ("user", "tell me a joke", 100),
            ("assistant", "a joke about cats", 105, [("love", 200 * h, "add")]),                  # after 168 h
            ("user", "another one", 200),
            ("assistant", "a joke about dogs", 205, [("love", 60, "add"), ("love", 120, "remove")]),  # removed
            ("user", "thanks", 300),
            ("assistant", "you are welcome", 305, [("thumbs_up", 10, "add")]),                    # nothing follows
        ]),
        conv("c2", "alice", at(1, 3 * h), [("user", "back again", 0), ("assistant", "welcome back", 4)]),
        conv("c3", "bob", at(2), [("user", "one question", 0), ("assistant", "one answer", 4, [("love", 7 * 24 * h, "add")])]),
        conv("c4", "carol", at(21), [("user", "late question", 0), ("assistant", "late answer", 4, [("love", 30, "add")])]),
        *fillers(),
    ]  # fmt: skip
    flat = [  # a branching tree (flat layout, parent links): r -> a1 -> u2 -> a3, and r -> a2
        {"message_id": "r", "conversation_id": "tree", "user_id": "dan", "role": "user", "text": "root question", "time": iso(at(3))},
        {"message_id": "a1", "conversation_id": "tree", "user_id": "dan", "parent_id": "r", "role": "assistant",
         "text": "first answer", "time": iso(at(3, 5))},
        {"message_id": "a2", "conversation_id": "tree", "user_id": "dan", "parent_id": "r", "role": "assistant",
         "text": "second answer", "time": iso(at(3, 6))},
        {"message_id": "u2", "conversation_id": "tree", "user_id": "dan", "parent_id": "a1", "role": "user",
         "text": "follow up on the first", "time": iso(at(3, 60))},
        {"message_id": "a3", "conversation_id": "tree", "user_id": "dan", "parent_id": "u2", "role": "assistant",
         "text": "third answer", "time": iso(at(3, 65))},
    ]  # fmt: skip
    return write_store(tmp_path_factory.mktemp("hand"), records, flat)


def test_reaction_labels_window_removal_and_censoring(hand):
    rows, ex = everything(hand, signal="love")
    assert rows["c1:1"]["label"] == 1  # love 60 s after the message
    assert rows["c1:3"]["label"] == 0  # love 200 h later: outside the 168 h window
    assert rows["c1:5"]["label"] == 0  # added then removed: does not stand
    assert rows["c1:7"]["label"] == 0  # a thumbs up is another signal
    assert rows["c3:1"]["label"] == 1  # exactly 168 h later: inside
    assert "c4:1" not in rows  # day 21, less than 168 h before the data end: censored, not labelled 0
    assert ex.report["censored"]["examples"] == 1 + sum(1 for i in range(40) if i * 0.5 > 21 - 7)
    assert ex.report["data"]["reaction_times"]["mode"] == "observed"
    rows, _ = everything(hand, signal="love", label_window_hours=300.0)
    assert rows["c1:3"]["label"] == 1  # a wider window takes the late love in
    rows, _ = everything(hand, signal="thumbs_up")
    assert rows["c1:7"]["label"] == 1 and rows["c1:1"]["label"] == 0


def test_continued_follows_the_branch(hand):
    rows, ex = everything(hand, signal="continued")
    assert ex.report["censored"]["examples"] == 0  # known at once: nothing censored
    assert [rows[f"c1:{i}"]["label"] for i in (1, 3, 5, 7)] == [1, 1, 1, 0]
    assert rows["c2:1"]["label"] == 0  # a new conversation is not a continuation
    assert (rows["a1"]["label"], rows["a2"]["label"], rows["a3"]["label"]) == (1, 0, 0)  # u2 answers a1, not a2


def test_returned_next_day(hand):
    rows, ex = everything(hand, signal="returned_next_day")
    assert rows["c1:1"]["label"] == 1  # alice writes on day 1
    assert rows["c2:1"]["label"] == 0  # ...and not on day 2
    assert rows["c3:1"]["label"] == 0  # bob never again
    assert "c4:1" not in rows  # day 21 is the last day: day 22 is not in the data
    assert ex.report["censored"]["examples"] >= 1


def test_context_is_the_last_k_turns_oldest_first(hand):
    rows, _ = everything(hand, signal="love", context_turns=2)
    assert rows["c1:5"]["context"] == "assistant: a joke about cats\nuser: another one"
    assert rows["c1:5"]["response"] == "a joke about dogs" and rows["c1:5"]["response_words"] == 4
    assert rows["c1:1"]["context"] == "user: hello there"
    assert rows["a3"]["context"] == "assistant: first answer\nuser: follow up on the first"  # the branch, not a2
    rows, _ = everything(hand, signal="love", context_turns=10)
    turns = [{"role": r, "text": t} for r, t in [("user", "hello there"), ("assistant", "hi! how can I help?"),
                                                 ("user", "tell me a joke"), ("assistant", "a joke about cats"),
                                                 ("user", "another one")]]  # fmt: skip
    assert rows["c1:5"]["context"] == render_context(turns, 10)
    assert rows["a3"]["context"] == "user: root question\nassistant: first answer\nuser: follow up on the first"
    rows, _ = everything(hand, signal="love", context_turns=0)
    assert rows["c1:5"]["context"] == ""


def test_schema_save_load_and_describe(hand, tmp_path):
    _, ex = everything(hand, signal="love")
    for t in (ex.train, ex.val, ex.test):
        assert t.schema.equals(SCHEMA)
        times = t["time"].to_pylist()
        assert times == sorted(times)
    json.dumps(ex.report)  # serialisable
    ex.save(tmp_path / "ex")
    back = ExampleSet.load(tmp_path / "ex")
    assert back.config == ex.config and back.report == json.loads(json.dumps(ex.report))
    assert all(getattr(back, s).equals(getattr(ex, s)) for s in ("train", "val", "test"))
    assert "base rate" in ex.describe()
    with pytest.raises(ExampleError, match="not an example set"):
        ExampleSet.load(tmp_path)


def test_clear_errors(hand, tmp_path):
    with pytest.raises(ExampleError, match=r"'lov' is not a reaction.*love, thumbs_up.*continued"):
        build_examples(hand, ExampleConfig(signal="lov"))
    with pytest.raises(ExampleError, match="not a store"):
        build_examples(tmp_path / "nowhere", ExampleConfig())
    empty = write_store(tmp_path / "u", [conv("x", "u", at(0), [("user", "only a question", 0)])])
    with pytest.raises(ExampleError, match="no assistant messages"):
        build_examples(empty, ExampleConfig())
    tiny = write_store(tmp_path / "t", [conv("y", "u", at(0), [("user", "q", 0), ("assistant", "a", 1)])])
    with pytest.raises(ExampleError, match=r"the (train|val|test) split is empty.*(raise|lower)"):
        build_examples(tiny, ExampleConfig(signal="continued"))
    with pytest.raises(ExampleError, match="val_share"):
        ExampleConfig(val_share=0.5, test_share=0.5)
    with pytest.raises(ExampleError, match="context_turns"):
        ExampleConfig(context_turns=-1)
    with pytest.raises(ExampleError, match="expected an integer"):
        ExampleConfig(min_messages=True)
    with pytest.raises(ExampleError, match="unknown key 'sigal'"):
        ExampleConfig.from_dict({"sigal": "love"})


def test_main_writes_the_set(hand, tmp_path, capsys):
    assert main(["--store", str(hand), "--out", str(tmp_path / "o"), "--signal", "continued"]) == 0
    assert (tmp_path / "o" / "report.json").is_file() and "train" in capsys.readouterr().out
    assert main(["--store", str(hand), "--out", str(tmp_path / "o"), "--signal", "nope"]) == 2


# ====================================================================== upsample


def test_upsample_share_and_determinism():
    t = pa.table({"message_id": [f"m{i}" for i in range(1000)], "label": pa.array([1] * 13 + [0] * 987, pa.int8())})
    up, share = upsample(t, 0.10, seed=0)
    labels = up["label"].to_numpy()
    assert share == labels.mean() and 0.10 <= share < 0.101
    assert up.slice(0, 1000).equals(t)  # the original rows first, unchanged
    assert set(up["message_id"].to_pylist()[1000:]) <= {f"m{i}" for i in range(13)}  # only positives duplicated
    counts = np.bincount([int(m[1:]) for m in up["message_id"].to_pylist()[1000:]])
    assert counts.max() - counts.min() <= 1  # spread evenly over the positives
    again, _ = upsample(t, 0.10, seed=0)
    other, _ = upsample(t, 0.10, seed=1)
    assert again.equals(up) and not other.equals(up) and other.num_rows == up.num_rows
    same, s = upsample(up, 0.05)
    assert same is up and s == share  # already above the target
    with pytest.raises(ExampleError, match="no positive"):
        upsample(t.filter(pc.equal(t["label"], 0)))
    with pytest.raises(ExampleError, match="target_share"):
        upsample(t, 1.0)


# ====================================================================== simulated world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """300 simulated users, with 4 % spammers and 4 % haters (the default world has 1 % each)."""
    from rluf.sim.config import config_from_dict
    from rluf.sim.simulate import simulate

    out = tmp_path_factory.mktemp("world")
    cfg = config_from_dict({"users": {"segments": {"spammer": 0.04, "hater": 0.04}}})
    simulate(out, users=300, seed=0, workers=2, config=cfg)
    ingest([out / "logs"], out / "store", workers=1)
    return out, build_examples(out / "store", ExampleConfig(signal="love"))


def test_split_invariants_on_the_simulated_world(world):
    out, ex = world
    r = ex.report
    assert r["split"]["scheme"] == "time" and r["checks"] == dict.fromkeys(r["checks"], True)
    tr, va, te = ex.train, ex.val, ex.test
    last_train = pc.max(tr["time"]).as_py()
    assert last_train < pc.min(va["time"]).as_py() and last_train < pc.min(te["time"]).as_py()
    assert pc.max(va["time"]).as_py() <= pc.min(te["time"]).as_py()  # val before test
    users = {s: set(t["user_id"].to_pylist()) for s, t in (("train", tr), ("val", va), ("test", te))}
    assert not users["train"] & users["test"] and not users["train"] & users["val"]
    n = tr.num_rows + va.num_rows + te.num_rows
    assert abs(te.num_rows / n - 0.2) < 0.05 and abs(va.num_rows / n - 0.1) < 0.05
    assert tr.num_rows > 0.5 * n
    for s, t in (("train", tr), ("val", va), ("test", te)):
        st = r["splits"][s]
        assert st["examples"] == t.num_rows and st["positives"] == pc.sum(t["label"]).as_py()
        assert st["base_rate_ci95"][0] <= st["base_rate"] <= st["base_rate_ci95"][1]
        assert max(np.unique(t["user_id"].to_numpy(zero_copy_only=False), return_counts=True)[1]) <= 200
    # censored: reaction signals stop 168 h before the data end
    data_end = datetime.fromisoformat(r["data"]["data_end"].replace("Z", "+00:00"))
    assert pc.max(te["time"]).as_py() <= data_end - timedelta(hours=168)
    assert r["censored"]["examples"] > 0
    # every label agrees with the logged reactions: the last love event is an add, within 168 h
    window, expected = timedelta(hours=168), {}
    for line in (out / "logs" / "conversations.jsonl").read_text().splitlines():
        for turn in json.loads(line)["turns"]:
            events = sorted((e for e in turn.get("reactions", []) if e["name"] == "love"), key=lambda e: e["time"])
            last = events[-1] if events else None
            sent = datetime.fromisoformat(turn["time"].replace("Z", "+00:00"))
            expected[turn["message_id"]] = int(last is not None and last.get("action", "add") == "add"
                                               and datetime.fromisoformat(last["time"].replace("Z", "+00:00")) - sent <= window)  # fmt: skip
    got = {m: l for t in (tr, va, te) for m, l in zip(t["message_id"].to_pylist(), t["label"].to_pylist())}
    assert sum(got.values()) > 30 and got == {m: expected[m] for m in got}
    # a different seed moves users between the groups but keeps the invariants
    ex2 = build_examples(out / "store", ExampleConfig(signal="love", seed=1))
    assert set(ex2.train["user_id"].to_pylist()) != users["train"]
    assert ex2.report["checks"] == dict.fromkeys(ex2.report["checks"], True)


def test_adversarial_filter_catches_spammers_and_haters(world):
    out, ex = world
    truth = pq.read_table(out / "truth" / "users.parquet").to_pylist()
    segment = {u["user_id"]: u["segment"] for u in truth}
    adv = ex.report["adversarial"]
    flagged = {f["user_id"] for f in adv["flagged"]}
    for f in adv["flagged"]:
        assert f["rule"] == "reaction_share" and f["value"] >= f["threshold"] and f["n"] >= 20
    # users with enough training-period messages to judge
    cut = datetime.fromisoformat(ex.report["split"]["cut_time"].replace("Z", "+00:00"))
    msgs = pq.read_table(out / "truth" / "messages.parquet", columns=["user_id", "time"]).to_pylist()
    n_before = {}
    for m in msgs:
        if m["time"] < cut:
            n_before[m["user_id"]] = n_before.get(m["user_id"], 0) + 1
    judgeable = [u for u, s in segment.items() if s in ("spammer", "hater") and n_before.get(u, 0) >= 20]
    assert len(judgeable) >= 6
    assert sum(u in flagged for u in judgeable) >= 0.7 * len(judgeable)
    assert {segment[u] for u in flagged & set(judgeable)} == {"spammer", "hater"}
    false = [u for u in flagged if segment[u] in ("normal", "vulnerable")]
    assert len(false) <= 2
    kept = set().union(*(set(t["user_id"].to_pylist()) for t in (ex.train, ex.val, ex.test)))
    assert not kept & flagged  # set aside from every split
    assert adv["examples_removed"] > 0 and adv["fast_rule"].startswith("applied")
    # off: the same users come back
    off = build_examples(out / "store", ExampleConfig(signal="love", adversarial_filter=False))
    back = set().union(*(set(t["user_id"].to_pylist()) for t in (off.train, off.val, off.test)))
    assert flagged & back and off.report["adversarial"]["flagged"] == []


def test_fast_reactions_rule(tmp_path):
    # 80-word answers: reading them takes at least 4 s at 0.05 s a word; one user reacts after 1 s, one after 60 s
    records = fillers(30)
    for u, delay in (("speedy", 1), ("reader", 60)):
        for c in range(6):
            turns = [("user", f"q{c}", 0), ("assistant", " ".join(["word"] * 80), 5, [("love", delay, "add")])]
            records.append(conv(f"{u}{c}", u, at(c), turns))
    store = write_store(tmp_path, records)
    ex = build_examples(store, ExampleConfig(signal="continued"))
    adv = ex.report["adversarial"]
    assert ex.report["split"]["scheme"] == "time" and adv["fast_rule"].startswith("applied")
    fast = [f for f in adv["flagged"] if f["rule"] == "fast_reactions"]
    assert [(f["user_id"], f["value"], f["n"]) for f in fast] == [("speedy", 1.0, 6)]
    assert "speedy" not in set(ex.train["user_id"].to_pylist()) | set(ex.test["user_id"].to_pylist())
    lenient = build_examples(store, ExampleConfig(signal="continued", read_seconds_per_word=0.0))
    assert lenient.report["adversarial"]["flagged"] == []  # 1 s is not below min_read_seconds = 1 s


# ====================================================================== public stores


def _real_store(tmp_path_factory, name: str, paths: list[Path]) -> Path:
    if not REAL.is_dir() or not all(p.exists() for p in paths):
        pytest.skip(f"real samples not found at {REAL} (set RLUF_REAL_DATA)")
    store = tmp_path_factory.mktemp(name)
    ingest(paths, store, workers=1, max_reject_rate=1.0)
    return store


def test_convai2_store(tmp_path_factory):
    store = _real_store(tmp_path_factory, "convai2", [REAL / "convai2"])
    ex = build_examples(store, ExampleConfig(signal="thumbs_up"))
    r = ex.report
    assert r["data"]["reaction_times"]["mode"] == "placeholder"  # the importer stamps the turn's time
    assert r["censored"]["examples"] == 0 and r["adversarial"]["fast_rule"].startswith("skipped")
    assert r["split"]["scheme"] == "time" and all(r["checks"].values())
    assert all(r["splits"][s]["positives"] > 0 for s in ("train", "val", "test"))
    with pytest.raises(ExampleError, match="thumbs_down, thumbs_up"):
        build_examples(store, ExampleConfig(signal="love"))


def test_openassistant_stores(tmp_path_factory):
    store = _real_store(tmp_path_factory, "oasst", [REAL / "oasst" / "en-validation.jsonl"])
    ex = build_examples(store, ExampleConfig(signal="+1"))
    assert ex.report["signal"]["reactions_in_store"] == ["+1", "-1", "red_flag"]
    assert ex.report["splits"]["train"]["positives"] > 0
    trees = _real_store(tmp_path_factory, "trees", [REAL / "oasst_trees" / "en_100_tree.jsonl"])
    ex = build_examples(trees, ExampleConfig(signal="-1"))
    assert ex.report["split"]["scheme"] == "grouped" and "placeholders" in ex.report["split"]["reason"]
    assert ex.report["warnings"] and ex.report["checks"]["train_test_users_disjoint"]


def test_per_user_cap_keeps_a_seeded_subset(world):
    out, _ = world

    def ids_by_user(ex):
        rows = [(u, m) for t in (ex.train, ex.val, ex.test) for u, m in zip(t["user_id"].to_pylist(), t["message_id"].to_pylist())]
        by = {}
        for u, m in rows:
            by.setdefault(u, set()).add(m)
        return by

    free = build_examples(out / "store", ExampleConfig(signal="love", max_examples_per_user=None))
    capped = build_examples(out / "store", ExampleConfig(signal="love", max_examples_per_user=5))
    again = build_examples(out / "store", ExampleConfig(signal="love", max_examples_per_user=5))
    all_, few = ids_by_user(free), ids_by_user(capped)
    assert max(len(m) for m in all_.values()) > 5  # the cap has work to do
    assert max(len(m) for m in few.values()) <= 5
    assert all(few[u] <= all_[u] for u in few)  # a subset of each user's own examples
    assert {u for u in all_ if len(all_[u]) > 5} <= set(few)  # users over the cap stay, with 5 examples
    cap = capped.report["cap"]
    assert cap["examples_removed"] == sum(map(len, all_.values())) - sum(map(len, few.values())) > 0
    assert cap["users_capped"] == sum(len(m) > 5 for m in all_.values())
    assert ids_by_user(again) == few  # seeded: the same subset every time
    other = build_examples(out / "store", ExampleConfig(signal="love", max_examples_per_user=5, seed=1))
    assert ids_by_user(other) != few
