"""`rluf.reward.score`: scoring a store and a file with reward models, locally and on Ray Data.

Covers: one output row per assistant message with its keys; the context each model sees (the last
context_turns turns before the message, rendered by render_context); scores equal to the model's
own predict_proba; batches smaller than the input; the summary (n, mean, 95 % interval); file
scoring of JSONL and Parquet with string, text and content contexts; a bad record failing the run
with its line, or going to the rejects file with counts that reconcile; bad options; and the Ray
path (a local Ray with 2 CPUs) writing the same file as the local path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rluf.data import examples
from rluf.data.ingest import ingest
from rluf.reward.base import LengthRewardModel, RewardModel
from rluf.reward.score import ScoreError, score_file, score_store
from rluf.reward.text import as_turns, render_context

T0 = "2026-01-0{d}T10:00:{s:02d}Z"


def turn(role, text, s, d=1, **kw):
    return {"role": role, "text": text, "time": T0.format(d=d, s=s), **kw}


CONVERSATIONS = [
    {"conversation_id": "a", "user_id": "u1", "category": "coding", "policy": "p1", "turns": [
        turn("system", "be brief", 0), turn("user", "fix my loop", 1), turn("assistant", "use range", 2),
        turn("user", "and then?", 3), turn("assistant", "print it out, all of it", 4),
        turn("assistant", "also sort it", 5)]},
    {"conversation_id": "b", "user_id": "u2", "category": "advice", "policy": "p2", "turns": [
        turn("user", "plan a trip", 0, d=2), turn("assistant", "go to Lisbon for three days", 1, d=2)]},
    {"conversation_id": "c", "user_id": "u3", "turns": [turn("user", "hello?", 0, d=3)]},
    # a branch: d2 regenerates d1 (both answer d0), and the conversation goes on from d2
    {"conversation_id": "d", "user_id": "u4", "turns": [
        turn("user", "name a colour", 0, d=4, message_id="d0"), turn("assistant", "red", 1, d=4, message_id="d1"),
        turn("assistant", "blue", 2, d=4, message_id="d2", parent_id="d0"),
        turn("user", "why blue?", 3, d=4, message_id="d3", parent_id="d2"),
        turn("assistant", "it is calm", 4, d=4, message_id="d4")]},
]  # fmt: skip
# Flat messages without parent_id, lines out of order: the context follows turn_index.
FLAT = [
    {"message_id": "f3", "conversation_id": "f", "user_id": "u5", "role": "assistant", "text": "at nine",
     "time": T0.format(d=5, s=3), "turn_index": 3, "category": "advice", "policy": "p3"},
    {"message_id": "f0", "conversation_id": "f", "user_id": "u5", "role": "user", "text": "when do you open?",
     "time": T0.format(d=5, s=0), "turn_index": 0, "category": "advice", "policy": "p3"},
    {"message_id": "f2", "conversation_id": "f", "user_id": "u5", "role": "user", "text": "and on Sunday?",
     "time": T0.format(d=5, s=2), "turn_index": 2, "category": "advice", "policy": "p3"},
    {"message_id": "f1", "conversation_id": "f", "user_id": "u5", "role": "assistant", "text": "at eight",
     "time": T0.format(d=5, s=1), "turn_index": 1, "category": "advice", "policy": "p3"},
]  # fmt: skip


class Probe:
    """A stand-in model that shows what it was given: its score is a function of the exact context."""

    kind, signal = "probe", "love"

    def __init__(self, k: int):
        self.context_turns = k
        self.seen: list[tuple[str, str]] = []

    @staticmethod
    def f(context: str, response: str) -> float:
        return (len(context) * 7 + len(response)) % 997 / 1000 + 0.0005

    def predict_proba(self, contexts, responses):
        self.seen += list(zip(contexts, responses))
        return np.array([self.f(c, r) for c, r in zip(contexts, responses)])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict]:
    """A store of the hand-made conversations plus 20 generated ones; and each assistant message's turns."""
    d = tmp_path_factory.mktemp("store")
    examples.write_nested_jsonl(d / "gen.jsonl", 20, seed=1, turns=5)
    (d / "hand.jsonl").write_bytes(b"\n".join(orjson.dumps(c) for c in CONVERSATIONS) + b"\n")
    (d / "flat.jsonl").write_bytes(b"\n".join(orjson.dumps(m) for m in FLAT) + b"\n")
    summary = ingest([d / "hand.jsonl", d / "gen.jsonl", d / "flat.jsonl"], d / "store", workers=1)
    assert summary.rejected == 0
    msgs = {}  # message_id -> (conversation, role, text, parent id)
    convs = CONVERSATIONS + [orjson.loads(x) for x in (d / "gen.jsonl").read_bytes().splitlines()]
    for conv in convs:
        for i, t in enumerate(conv["turns"]):
            mid = t.get("message_id", f"{conv['conversation_id']}:{i}")
            prev = conv["turns"][i - 1].get("message_id", f"{conv['conversation_id']}:{i - 1}") if i else None
            msgs[mid] = (conv, t["role"], t["text"], t.get("parent_id", prev))
    chain = sorted(FLAT, key=lambda m: m["turn_index"])
    for i, m in enumerate(chain):
        msgs[m["message_id"]] = (m, m["role"], m["text"], chain[i - 1]["message_id"] if i else None)
    expected = {}  # assistant message_id -> (its conversation or row, its ancestors oldest first, its text)
    for mid, (conv, role, text, parent) in msgs.items():
        if role == "assistant":
            before = []
            while parent is not None:
                before.insert(0, {"role": msgs[parent][1], "text": msgs[parent][2]})
                parent = msgs[parent][3]
            expected[mid] = (conv, before, text)
    return d / "store", expected


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    rs = ["a", "a b c d e f", "b", "c d e f g h i", "x y", "one two three four five six seven eight"]
    LengthRewardModel(context_turns=2).fit([""] * 6, rs, [0, 1, 0, 1, 0, 1]).save(d / "len")
    LengthRewardModel(signal="thumbs_up", context_turns=0).fit([""] * 6, rs, [1, 0, 1, 1, 0, 0]).save(d / "up")
    return {"len": d / "len", "up": d / "up"}


@pytest.fixture
def probes(monkeypatch) -> dict[str, Probe]:
    """Directories named probe<k> load as a Probe with context_turns k."""
    made: dict[str, Probe] = {}
    real = RewardModel.load

    def load(directory):
        name = Path(directory).name
        if name.startswith("probe"):
            made[name] = Probe(int(name[5:]))
            return made[name]
        return real(directory)

    monkeypatch.setattr(RewardModel, "load", staticmethod(load))
    return made


# ------------------------------------------------------------------ store


def test_store_rows_keys_and_scores(store, models, tmp_path):
    store_dir, expected = store
    out = tmp_path / "scores.parquet"
    res = score_store([models["len"], models["up"]], store_dir, out, batch_size=7)
    t = pq.read_table(out)
    assert t.column_names == ["message_id", "conversation_id", "user_id", "category", "policy", "p_len", "p_up"]
    assert res["rows"] == t.num_rows == len(expected) == 4 + 3 + 2 + 20 * 2
    rows = {r["message_id"]: r for r in t.to_pylist()}
    assert set(rows) == set(expected)
    for name in ("len", "up"):
        m = RewardModel.load(models[name])
        ids = sorted(expected)
        want = m.predict_proba([render_context(expected[i][1], m.context_turns) for i in ids], [expected[i][2] for i in ids])
        np.testing.assert_array_equal([rows[i][f"p_{name}"] for i in ids], want)
        s = res["summary"][name]
        assert s["n"] == len(ids) and s["mean"] == pytest.approx(float(np.mean(want)))
        assert s["ci95"][0] < s["mean"] < s["ci95"][1]
    for mid, (conv, _, _) in expected.items():
        r = rows[mid]
        assert (r["conversation_id"], r["user_id"]) == (conv["conversation_id"], conv["user_id"]), mid
        assert (r["category"], r["policy"]) == (conv.get("category"), conv.get("policy"))
    assert sorted(os.listdir(tmp_path)) == ["scores.parquet"]  # no temporary file left behind
    # every model without context (k = 0 for all): the same rows and scores
    score_store([models["up"]], store_dir, tmp_path / "up.parquet")
    assert pq.read_table(tmp_path / "up.parquet").equals(t.select(t.column_names[:5] + ["p_up"]))


def test_store_contexts_are_the_last_k_turns(store, probes, tmp_path):
    store_dir, expected = store
    out = tmp_path / "probe.parquet"
    score_store([tmp_path / "probe0", tmp_path / "probe1", tmp_path / "probe3"], store_dir, out, batch_size=4)
    rows = {r["message_id"]: r for r in pq.read_table(out).to_pylist()}
    for k in (0, 1, 3):
        assert len(probes[f"probe{k}"].seen) == len(expected)  # each model scored each message once
        for mid, (_, before, text) in expected.items():
            want = render_context(before, k)
            assert rows[mid][f"p_probe{k}"] == Probe.f(want, text)
    # the system turn is context; two assistant turns in a row see each other; a branch sees its own line only;
    # flat messages without parent_id follow turn_index
    assert rows["a:2"]["p_probe3"] == Probe.f("system: be brief\nuser: fix my loop", "use range")
    assert rows["a:5"]["p_probe1"] == Probe.f("assistant: print it out, all of it", "also sort it")
    assert rows["d2"]["p_probe3"] == Probe.f("user: name a colour", "blue")
    assert rows["d4"]["p_probe3"] == Probe.f("user: name a colour\nassistant: blue\nuser: why blue?", "it is calm")
    assert rows["f3"]["p_probe3"] == Probe.f("user: when do you open?\nassistant: at eight\nuser: and on Sunday?",
                                             "at nine")  # fmt: skip


def test_store_errors(store, models, tmp_path):
    store_dir, _ = store
    with pytest.raises(ScoreError, match="not a store"):
        score_store([models["len"]], tmp_path / "nowhere", tmp_path / "o.parquet")
    with pytest.raises(ScoreError, match="share the name"):
        score_store([models["len"], tmp_path / "x" / "len"], store_dir, tmp_path / "o.parquet")
    with pytest.raises(ScoreError, match="no config.json"):
        score_store([tmp_path], store_dir, tmp_path / "o.parquet")
    with pytest.raises(ScoreError, match="batch_size"):
        score_store([models["len"]], store_dir, tmp_path / "o.parquet", batch_size=0)
    with pytest.raises(ScoreError, match="at least one model"):
        score_store([], store_dir, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


# ------------------------------------------------------------------ files


RECORDS = [
    {"context": "how do I sort a list?", "response": "use sorted()", "id": "r1"},
    {"context": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}, {"role": "user", "text": "plan a day"}],
     "response": "morning walk, museum, dinner", "id": 7},
    {"context": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "thanks"}], "response": "any time"},
    {"context": "", "response": "", "extra": "ignored"},
]  # fmt: skip


def expected_probs(model_dir: Path, records: list[dict]) -> np.ndarray:
    m = RewardModel.load(model_dir)
    return m.predict_proba([render_context(as_turns(r["context"]), m.context_turns) for r in records],
                           [r["response"] for r in records])  # fmt: skip


def test_file_jsonl_and_parquet(models, probes, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(RECORDS[0]) + b"\n\n" + b"\n".join(orjson.dumps(r) for r in RECORDS[1:]) + b"\n")
    res = score_file([models["len"], tmp_path / "probe2"], src, tmp_path / "out.parquet", batch_size=3)
    assert (res["read"], res["scored"], res["rejected"], res["blank_lines"]) == (4, 4, 0, 1)
    t = pq.read_table(tmp_path / "out.parquet")
    assert t.column_names == ["line", "id", "p_len", "p_probe2"]
    assert t.column("line").to_pylist() == [1, 3, 4, 5]
    assert t.column("id").to_pylist() == ["r1", "7", None, None]
    np.testing.assert_array_equal(t.column("p_len").to_numpy(), expected_probs(models["len"], RECORDS))
    assert [c for c, _ in probes["probe2"].seen] == [
        "user: how do I sort a list?", "assistant: hello\nuser: plan a day", "system: be kind\nuser: thanks", "user: "]

    rows = [RECORDS[1], {"context": [{"role": "user", "text": "why?"}], "response": "x y z", "id": 9}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")  # a column holds one type: turns here
    res = score_file([models["len"]], tmp_path / "in.parquet", tmp_path / "outp.parquet")
    t = pq.read_table(tmp_path / "outp.parquet")
    assert res["scored"] == 2 and t.column("line").to_pylist() == [1, 2] and t.column("id").to_pylist() == ["7", "9"]
    np.testing.assert_array_equal(t.column("p_len").to_numpy(), expected_probs(models["len"], rows))


BAD = [
    (b"{not json", "(line)", "not valid JSON"),
    (b"[1, 2]", "(record)", "JSON object"),
    (b'{"context": "hi"}', "response", "missing"),
    (b'{"context": "hi", "response": 3}', "response", "expected a string"),
    (b'{"response": "x"}', "context", "missing"),
    (b'{"context": [{"text": "no role"}], "response": "x"}', "context", "'role'"),
    (b'{"context": 5, "response": "x"}', "context", "string or a list"),
    (b'{"context": "", "response": "x", "id": [1]}', "id", "string or an integer"),
    (b'{"context": "\xff", "response": "x"}', "(line)", "UTF-8"),
]


@pytest.mark.parametrize("raw,field,reason", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_file_bad_record_fails_with_its_line(models, tmp_path, raw, field, reason):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(RECORDS[0]) + b"\n" + orjson.dumps(RECORDS[1]) + b"\n" + raw + b"\n")
    with pytest.raises(ScoreError) as e:
        score_file([models["len"]], src, tmp_path / "out.parquet", batch_size=1)
    msg = str(e.value)
    assert f"{src}, line 3: {field}:" in msg and reason in msg and "--rejects" in msg
    assert not (tmp_path / "out.parquet").exists()


def test_file_rejects_file_keeps_the_run_going(models, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [orjson.dumps(RECORDS[0]), BAD[0][0], orjson.dumps(RECORDS[1]), BAD[2][0], orjson.dumps(RECORDS[2])]
    src.write_bytes(b"\n".join(lines) + b"\n")
    res = score_file([models["len"]], src, tmp_path / "out.parquet", rejects=tmp_path / "rej" / "rejects.jsonl")
    assert (res["read"], res["scored"], res["rejected"]) == (5, 3, 2)
    assert pq.read_table(tmp_path / "out.parquet").column("line").to_pylist() == [1, 3, 5]
    rej = [json.loads(x) for x in (tmp_path / "rej" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rej] == [(2, "(line)"), (4, "response")]
    assert rej[1]["raw"] == BAD[2][0].decode() and rej[0]["source"] == str(src)


def test_file_errors(models, tmp_path):
    with pytest.raises(ScoreError, match="no such file"):
        score_file([models["len"]], tmp_path / "missing.jsonl", tmp_path / "o.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ScoreError, match="not a readable Parquet"):
        score_file([models["len"]], tmp_path / "bad.parquet", tmp_path / "o.parquet")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    res = score_file([models["len"]], tmp_path / "empty.jsonl", tmp_path / "o.parquet")
    assert res["rows"] == 0 and pq.read_table(tmp_path / "o.parquet").column_names == ["line", "id", "p_len"]


# ------------------------------------------------------------------ Ray


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own, from its DataContext
def test_ray_local_equals_local(store, models, tmp_path, monkeypatch):
    """A local Ray (2 CPUs) writes the same file as the local path; Ray is shut down afterwards."""
    ray = pytest.importorskip("ray")
    store_dir, _ = store
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    try:
        local = score_store([models["len"], models["up"]], store_dir, tmp_path / "local.parquet", batch_size=16)
        on_ray = score_store([models["len"], models["up"]], store_dir, tmp_path / "ray.parquet", batch_size=16,
                             ray_address="local", concurrency=1)  # fmt: skip
        assert not ray.is_initialized()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert on_ray["backend"] == "ray" and on_ray["rows"] == local["rows"] == 49
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    for name, s in local["summary"].items():  # the same scores, summed in other batches
        assert on_ray["summary"][name]["n"] == s["n"] and on_ray["summary"][name]["mean"] == pytest.approx(s["mean"])
