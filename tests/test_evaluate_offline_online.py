"""Offline evaluation (rluf.evaluate.offline) and online serving (rluf.evaluate.online) on a tiny Llama,
tiny n-gram reward models and a small simulated store."""

import json
from collections import Counter

import numpy as np
import pytest
from conftest import tiny_policy_world

from rluf.data.ingest import ingest
from rluf.data.store import Store
from rluf.evaluate.abtest import analyze
from rluf.evaluate.hacking import compare, read_rows
from rluf.evaluate.offline import (
    OfflineConfig,
    OfflineEvalError,
    evaluate_offline,
    main,
    mean_ci,
)
from rluf.evaluate.online import OnlineEvalError, assign_arms, serve_ab


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    rows = tiny_policy_world(root)
    return root, rows


def _models(root):
    return {"love": root / "rm" / "love", "helpful": root / "rm" / "helpful"}


CFG = {"prompts": 24, "max_new_tokens": 8, "seed": 3}


def test_offline_scores_are_probabilities_with_intervals_and_replies_feed_the_monitor(setup, tmp_path):
    root, rows = setup
    result = evaluate_offline(root / "policy", rows, _models(root), OfflineConfig(**CFG, samples_per_prompt=2),
                              replies_out=tmp_path / "r.jsonl")  # fmt: skip
    assert result["candidate"] == "policy" and result["n_prompts"] == 24 and result["n_replies"] == 48
    for name in ("love", "helpful"):
        for kind in ("p", "calibrated"):
            m = result["rewards"][name][kind]
            assert 0 <= m["mean"] <= 1 and m["n"] == 24
            assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert set(result["judges"]) == {"love_bait", "repetition", "all"}
    for j in result["judges"].values():
        assert 0 <= j["pass_rate"] <= 1 and j["ci95"][0] <= j["pass_rate"] <= j["ci95"][1] and j["n"] == 48
        assert j["fail_rate"] == 0
    assert result["judges"]["all"]["pass_rate"] <= min(result["judges"]["love_bait"]["pass_rate"],
                                                       result["judges"]["repetition"]["pass_rate"])  # fmt: skip
    assert result["words"]["mean"] > 0
    assert sum(c["n_prompts"] for c in result["categories"].values()) == 24
    written = read_rows(tmp_path / "r.jsonl")
    assert len(written) == 48 and set(written[0]) >= {"prompt", "category", "reply", "baseline"}
    json.dumps(result)  # JSON-ready
    drift = compare([w["prompt"] for w in written], [w["baseline"] for w in written], [w["reply"] for w in written],
                    min_count=2)  # fmt: skip
    assert drift["design"] == "same_prompts" and drift["n"] == {"prompts": 48, "baseline": 48, "candidate": 48}


@pytest.mark.slow
def test_offline_is_reproducible_and_the_same_prompts_serve_every_candidate(setup, tmp_path):
    root, rows = setup
    a = evaluate_offline(root / "policy", rows, _models(root), OfflineConfig(**CFG), replies_out=tmp_path / "a.jsonl")
    b = evaluate_offline(root / "policy", rows, _models(root), OfflineConfig(**CFG), replies_out=tmp_path / "b.jsonl")
    logged = evaluate_offline(None, rows, _models(root), OfflineConfig(**CFG), replies_out=tmp_path / "c.jsonl")
    for r in (a, b, logged):
        r.pop("seconds"), r.pop("replies")
    assert a == b
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    ids = [[x["message_id"] for x in read_rows(tmp_path / f"{k}.jsonl")] for k in "ac"]
    assert ids[0] == ids[1]
    assert logged["candidate"] == "logged"
    for name in ("love", "helpful"):  # the log against itself: calibrated exactly 0.5
        assert logged["rewards"][name]["calibrated"]["mean"] == pytest.approx(0.5)
    other = evaluate_offline(root / "policy", rows, _models(root), OfflineConfig(**{**CFG, "seed": 4}))
    assert other["rewards"]["love"]["p"] != a["rewards"]["love"]["p"]


def test_prompt_set_is_stratified_by_category(setup):
    _, rows = setup
    result = evaluate_offline(None, rows, {}, OfflineConfig(prompts=40, seed=0))
    share = Counter(r.category for r in rows)
    for category, n in share.items():
        expected = 40 * n / len(rows)
        assert abs(result["categories"][category]["n_prompts"] - expected) < 1 + 1e-9
    assert result["rewards"] == {}


def test_mean_ci_by_hand():
    x = np.array([0.2, 0.4, 0.6, 0.8])
    m = mean_ci(x)
    half = 1.959963984540054 * x.std(ddof=1) / 2
    assert m["mean"] == pytest.approx(0.5) and m["ci95"] == pytest.approx([0.5 - half, 0.5 + half])
    assert mean_ci(np.array([0.99, 0.98, 0.2]))["ci95"][1] == 1.0  # clipped
    assert mean_ci(np.array([0.3]))["ci95"] is None


def test_offline_errors_are_clear(setup, tmp_path):
    root, rows = setup
    with pytest.raises(OfflineEvalError, match="reward model love: .* is not a directory"):
        evaluate_offline(None, rows, {"love": tmp_path / "nope"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(OfflineEvalError, match="reward model love: .*no config.json"):
        evaluate_offline(None, rows, {"love": tmp_path / "empty"})
    with pytest.raises(OfflineEvalError, match="prompt_rows is empty"):
        evaluate_offline(None, [], _models(root))
    with pytest.raises(OfflineEvalError, match="policy .*no such directory"):
        evaluate_offline(tmp_path / "missing", rows, {})
    with pytest.raises(OfflineEvalError, match="not a Hugging Face causal-LM"):
        evaluate_offline(tmp_path / "empty", rows[:3], {})
    with pytest.raises(OfflineEvalError, match="samples_per_prompt"):
        OfflineConfig(samples_per_prompt=0)
    with pytest.raises(OfflineEvalError, match="unknown judge type"):
        OfflineConfig(judges=[{"type": "nope"}])
    with pytest.raises(OfflineEvalError, match="unknown OfflineConfig keys"):
        OfflineConfig.from_dict({"prompt": 3})


def test_offline_cli(setup, tmp_path, capsys):
    root, _ = setup
    out = tmp_path / "eval.json"
    rc = main(["--store", str(root / "store"), "--model", f"love={root / 'rm' / 'love'}", "--prompts", "10",
               "--out", str(out), "--replies", str(tmp_path / "r.jsonl")])  # fmt: skip
    assert rc == 0 and json.loads(out.read_text())["candidate"] == "logged"
    assert "P[love]" in capsys.readouterr().out
    assert main(["--store", str(root / "store"), "--model", "love"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err


def test_assignment_is_an_equal_seeded_split():
    a = assign_arms(101, ["baseline", "candidate"], seed=0)
    assert sorted(a["baseline"] + a["candidate"]) == list(range(101))
    assert abs(len(a["baseline"]) - len(a["candidate"])) <= 1
    assert a == assign_arms(101, ["baseline", "candidate"], seed=0)
    assert a != assign_arms(101, ["baseline", "candidate"], seed=1)


def test_shares_give_an_unequal_seeded_split():
    a = assign_arms(1000, ["control", "main", "x", "y"], seed=2, shares={"control": 3, "main": 3})
    assert sorted(sum(a.values(), [])) == list(range(1000))
    assert [len(a[k]) for k in ("control", "main", "x", "y")] == [375, 375, 125, 125]
    assert assign_arms(10, ["a", "b"], shares={"a": 1}) == assign_arms(10, ["a", "b"])  # all ones: the equal split
    with pytest.raises(OnlineEvalError, match="not among the arms"):
        assign_arms(10, ["a", "b"], shares={"c": 2})
    with pytest.raises(OnlineEvalError, match="whole number >= 1"):
        assign_arms(10, ["a", "b"], shares={"a": 0})
    with pytest.raises(OnlineEvalError, match="one round of seats"):
        assign_arms(4, ["a", "b"], shares={"a": 4})


@pytest.mark.slow
def test_serve_ab_logs_ingest_and_analyze(setup, tmp_path):
    root, _ = setup
    arms = {"baseline": None, "candidate": root / "policy"}
    summary = serve_ab(arms, tmp_path / "ab", users=6, days=2, seed=5, start_day=50, max_new_tokens=6)
    assert set(summary["arms"]) == {"baseline", "candidate"}
    assert all(a["active_users"] >= 1 for a in summary["arms"].values())
    report = ingest([tmp_path / "ab" / "logs"], tmp_path / "store", workers=1)
    assert report.rejected == 0 and report.accepted > 0
    con = Store(tmp_path / "store").connect()
    try:
        arms_of = con.execute("SELECT user_id, count(DISTINCT policy) FROM messages WHERE role = 'assistant' "
                              "GROUP BY 1").fetchall()  # fmt: skip
        policies = {r[0] for r in con.execute("SELECT DISTINCT policy FROM messages WHERE role = 'assistant'").fetchall()}
    finally:
        con.close()
    assert all(n == 1 for _, n in arms_of) and policies == {"baseline", "candidate"}
    assignment = json.loads((tmp_path / "ab" / "truth" / "assignment.json").read_text())["assignment"]
    assert not set(assignment["baseline"]) & set(assignment["candidate"])
    assert {u for u, _ in arms_of} <= set(assignment["baseline"]) | set(assignment["candidate"])
    assert all(u.startswith("ab-") for u, _ in arms_of)
    result = analyze(Store(tmp_path / "store"), min_users_per_cell=2)
    assert result["control"] == "baseline"
    with pytest.raises(OnlineEvalError, match="already holds files"):
        serve_ab(arms, tmp_path / "ab", users=6, days=2)


@pytest.mark.slow
def test_serve_ab_output_does_not_depend_on_workers(setup, tmp_path):
    root, _ = setup
    arms = {"baseline": None, "candidate": root / "policy"}
    kw = {"users": 10, "days": 2, "seed": 3, "max_new_tokens": 6, "batch_users": 3}
    calls = []
    one = serve_ab(arms, tmp_path / "one", workers=1, progress=lambda done, total: calls.append((done, total)), **kw)
    assert calls == [(1, 3), (2, 3), (3, 3)]  # the baseline arm is one group; the model arm's 5 users are groups of 3
    two = serve_ab(arms, tmp_path / "two", workers=2, **kw)
    assert one["arms"] == two["arms"]
    assert (tmp_path / "one" / "logs" / "conversations.jsonl").read_bytes() == \
        (tmp_path / "two" / "logs" / "conversations.jsonl").read_bytes()


def test_serve_ab_errors(tmp_path):
    with pytest.raises(OnlineEvalError, match="at least two arms"):
        serve_ab({"baseline": None}, tmp_path / "x")
    with pytest.raises(OnlineEvalError, match="arm candidate: .* is not a directory"):
        serve_ab({"baseline": None, "candidate": tmp_path / "missing"}, tmp_path / "x")
    with pytest.raises(OnlineEvalError, match="days must be"):
        serve_ab({"a": None, "b": None}, tmp_path / "x", days=0)
    with pytest.raises(OnlineEvalError, match="workers must be"):
        serve_ab({"a": None, "b": None}, tmp_path / "x", workers=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnlineEvalError, match="no config.json"):
        serve_ab({"a": None, "b": tmp_path / "empty"}, tmp_path / "x")
