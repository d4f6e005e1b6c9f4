"""Online A/B analysis (rluf.evaluate.abtest): the clustered estimators against hand computation and by
simulation, the bootstrap cross-check, SRM, guardrails, category suppression, clear errors, and a
simulated A/B in which a warmer policy earns more love.

Hand-written logs (the data contract's nested JSONL, ingested into a store) pin every number; the
coverage and bootstrap checks run the estimator functions directly on numpy arrays.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from rluf.data.ingest import ingest
from rluf.data.store import Store
from rluf.evaluate.abtest import (ABTestError, Z95, analyze, bootstrap_lift, compare, format_report, main, ratio_rate,
                                  srm_test)  # fmt: skip
from rluf.reward.base import LengthRewardModel

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
LONG = "Here is a careful answer that walks through each step of the problem and explains why it works well"
SHORT = "Sure, done."
BAIT = " Bye! Sending love!"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def conv(cid: str, user: str, policy: str, replies: list[tuple[str, list]], category: str = "chat",
         day: float = 0) -> dict:  # fmt: skip
    """One conversation: per reply (text, [reaction events as (name, action)]), each after a user turn."""
    start = T0 + timedelta(days=day)
    turns = []
    for i, (text, events) in enumerate(replies):
        t = start + timedelta(minutes=2 * i)
        turns.append({"message_id": f"{cid}:u{i}", "role": "user", "text": f"question {i}", "time": iso(t)})
        turn = {"message_id": f"{cid}:a{i}", "role": "assistant", "text": text, "time": iso(t + timedelta(seconds=5))}
        if events:
            turn["reactions"] = [{"name": n, "time": iso(t + timedelta(seconds=30 + j)), "action": a}
                                 for j, (n, a) in enumerate(events)]  # fmt: skip
        turns.append(turn)
    return {"conversation_id": cid, "user_id": user, "category": category, "policy": policy, "turns": turns}


def write_store(tmp: Path, records: list[dict]) -> Path:
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    s = ingest([logs], tmp / "store", workers=1)
    assert s.rejected == 0, s
    return tmp / "store"


def counted(policy: str, prefix: str, users: list[tuple[int, int]], reaction: str = "love", category: str = "chat",
            text: str = LONG) -> list[dict]:  # fmt: skip
    """One conversation per user; users[i] = (replies, replies with the reaction)."""
    return [conv(f"{prefix}{i}", f"{prefix}u{i}", policy,
                 [(text, [(reaction, "add")] if j < k else []) for j in range(m)], category)
            for i, (m, k) in enumerate(users)]  # fmt: skip


# ====================================================================== estimators by hand


# Control: replies m = (1, 2, 3, 4), loved y = (1, 0, 1, 2): R = 4/10 = 0.4, d = y - 0.4 m = (0.6, -0.8, -0.2, 0.4),
#   sum d^2 = 1.2, mean m = 2.5, Var = 1.2 / (4 * 3 * 2.5^2) = 0.016.
# Treatment: m = (2, 2, 3, 3), y = (1, 2, 1, 2): R = 0.6, d = (-0.2, 0.8, -0.8, 0.2), sum d^2 = 1.36, Var = 1.36 / 75.
# Lift 0.6 / 0.4 - 1 = 0.5; se of the log ratio = sqrt((1.36 / 75) / 0.36 + 0.016 / 0.16).
HAND_C = [(1, 1), (2, 0), (3, 1), (4, 2)]
HAND_T = [(2, 1), (2, 2), (3, 1), (3, 2)]
VAR_C, VAR_T = 0.016, 1.36 / 75
SE_LOG = math.sqrt(VAR_T / 0.36 + VAR_C / 0.16)


def test_ratio_rate_and_compare_by_hand():
    (m_c, y_c), (m_t, y_t) = zip(*HAND_C), zip(*HAND_T)
    assert ratio_rate(y_c, m_c) == pytest.approx((0.4, VAR_C))
    assert ratio_rate(y_t, m_t) == pytest.approx((0.6, VAR_T))
    c = compare(y_t, m_t, y_c, m_c)
    assert c["lift"] == pytest.approx(0.5)
    assert SE_LOG == pytest.approx(0.387776, abs=1e-6)
    assert c["ci95"] == pytest.approx([1.5 * math.exp(-Z95 * SE_LOG) - 1, 1.5 * math.exp(Z95 * SE_LOG) - 1])
    assert c["p_value"] == pytest.approx(2 * sps.norm.sf(math.log(1.5) / SE_LOG))
    assert c["diff"] == pytest.approx(0.2)
    se_diff = math.sqrt(VAR_T + VAR_C)
    assert c["diff_ci95"] == pytest.approx([0.2 - Z95 * se_diff, 0.2 + Z95 * se_diff])
    assert c["mde_relative"] == pytest.approx((Z95 + 0.8416212335729143) * se_diff / 0.4)
    # a treatment without any event: lift -1, no interval, p from the difference
    zero = compare([0, 0, 0], [2, 2, 2], y_c, m_c)
    assert zero["lift"] == -1.0 and zero["ci95"] is None and 0 < zero["p_value"] < 1
    with pytest.raises(ABTestError, match="m .* > 0"):
        ratio_rate([1, 0], [1, 0])


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hand")
    records = counted("A", "c", HAND_C) + counted("B", "t", HAND_T)
    # Neither counts as a love on a reply: a love added then removed, and a love on the user's own turn.
    records[1]["turns"][1]["reactions"] = [{"name": "love", "time": iso(T0 + timedelta(minutes=1)), "action": "add"},
                                           {"name": "love", "time": iso(T0 + timedelta(minutes=2)), "action": "remove"}]
    records[0]["turns"][0]["reactions"] = [{"name": "love", "time": iso(T0 + timedelta(minutes=1))}]
    # Two thumbs_up on one control reply count once, as a reply with a thumbs_up.
    records[3]["turns"][1]["reactions"] = records[3]["turns"][1]["reactions"] + [
        {"name": "thumbs_up", "time": iso(T0 + timedelta(minutes=3))},
        {"name": "thumbs_up", "time": iso(T0 + timedelta(minutes=4))}]
    return write_store(tmp, records)


def test_store_lift_matches_the_hand_computation(hand_store):
    r = analyze(Store(hand_store), control="A", judges=[], min_users_per_cell=2)
    assert json.loads(json.dumps(r, allow_nan=False)) == r  # strict JSON
    assert r["control"] == "A" and r["reactions"] == ["love", "thumbs_up"]
    assert r["arms"]["A"] == {"users": 4, "assistant_messages": 10, "conversations": 4}
    love = r["metrics"]["love"]
    assert love["arms"]["A"]["value"] == pytest.approx(0.4) and love["arms"]["A"]["total"] == 4
    assert love["arms"]["B"]["value"] == pytest.approx(0.6)
    c = love["vs_control"]["B"]
    assert (c["messages"], c["users"], c["control_messages"], c["control_users"]) == (10, 4, 10, 4)
    assert c["lift"] == pytest.approx(0.5)
    assert c["ci95"] == pytest.approx([1.5 * math.exp(-Z95 * SE_LOG) - 1, 1.5 * math.exp(Z95 * SE_LOG) - 1])
    assert c["p_value"] == pytest.approx(2 * sps.norm.sf(math.log(1.5) / SE_LOG))
    up = r["metrics"]["thumbs_up"]
    assert up["arms"]["A"]["total"] == 1 and up["arms"]["B"]["total"] == 0 and up["vs_control"]["B"]["lift"] == -1.0
    assert r["by_category"]["chat"]["B"]["status"] == "ok"
    assert r["by_category"]["chat"]["B"]["metrics"]["love"]["lift"] == pytest.approx(0.5)
    assert r["guardrails"]["B"]["thumbs_down"]["status"] == "not evaluated"  # the store has no thumbs_down
    assert "control" in format_report(r) and "+50.0%" in format_report(r)


def test_window_and_arms_select_replies(hand_store):
    r = analyze(hand_store, arms=["B", "A"], judges=[], since="2026-01-05T09:00:00Z", until="2026-01-05T09:03:00Z")
    assert r["control"] == "B"  # the first of `arms`
    assert r["arms"]["A"]["assistant_messages"] == 1 + 2 + 2 + 2  # the replies at 09:00:05 and 09:02:05
    with pytest.raises(ABTestError, match="no assistant message .* in the window"):
        analyze(hand_store, control="A", since="2027-01-01")
    with pytest.raises(ABTestError, match="not an ISO 8601"):
        analyze(hand_store, control="A", since="yesterday")


# ====================================================================== coverage and bootstrap on arrays


def clustered_arm(rng, n: int, mu: float, kappa: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """n users: 1 + Poisson(6) replies each, a per-user reaction probability ~ Beta(mean mu, concentration kappa)."""
    m = 1 + rng.poisson(6, n)
    p = rng.beta(mu * kappa, (1 - mu) * kappa, n)
    return rng.binomial(m, p).astype(float), m.astype(float)


def test_delta_interval_covers_the_true_lift_and_the_naive_one_does_not():
    rng = np.random.default_rng(0)
    true = 0.06 / 0.05 - 1
    hits = naive = 0
    for _ in range(300):
        y_t, m_t = clustered_arm(rng, 300, 0.06)
        y_c, m_c = clustered_arm(rng, 300, 0.05)
        lo, hi = compare(y_t, m_t, y_c, m_c)["ci95"]
        hits += lo <= true <= hi
        # per-message binomial interval on the log ratio, as if replies were independent
        rt, rc = y_t.sum() / m_t.sum(), y_c.sum() / m_c.sum()
        se = math.sqrt((1 - rt) / (rt * m_t.sum()) + (1 - rc) / (rc * m_c.sum()))
        naive += math.exp(math.log(rt / rc) - Z95 * se) - 1 <= true <= math.exp(math.log(rt / rc) + Z95 * se) - 1
    assert 0.92 <= hits / 300 <= 0.98, hits / 300
    assert naive / 300 < 0.88, naive / 300  # ignoring clustering by user overstates precision


def test_bootstrap_agrees_with_the_delta_method():
    rng = np.random.default_rng(1)
    y_t, m_t = clustered_arm(rng, 400, 0.06)
    y_c, m_c = clustered_arm(rng, 400, 0.05)
    c = compare(y_t, m_t, y_c, m_c)
    b = bootstrap_lift(y_t, m_t, y_c, m_c, n_boot=2000, seed=3)
    width = c["ci95"][1] - c["ci95"][0]
    assert abs(b["ci95"][0] - c["ci95"][0]) < 0.1 * width and abs(b["ci95"][1] - c["ci95"][1]) < 0.1 * width
    se_delta = (1 + c["lift"]) * math.sqrt(c["se"] ** 2 / c["value"] ** 2 + c["control_se"] ** 2 / c["control_value"] ** 2)
    assert b["se"] == pytest.approx(se_delta, rel=0.1)
    assert b["undefined"] == 0
    assert bootstrap_lift(y_t, m_t, y_c, m_c, n_boot=200, seed=3) == bootstrap_lift(y_t, m_t, y_c, m_c, 200, seed=3)


def test_srm_flags_a_60_40_split():
    s = srm_test({"A": 600, "B": 400})
    assert s["chi2"] == pytest.approx(40.0) and s["df"] == 1 and s["flagged"] and s["p_value"] < 1e-6
    assert not srm_test({"A": 600, "B": 400}, {"A": 0.6, "B": 0.4})["flagged"]
    assert not srm_test({"A": 510, "B": 490})["flagged"]
    with pytest.raises(ABTestError, match="one share per arm"):
        srm_test({"A": 1, "B": 2}, {"A": 1})


# ====================================================================== guardrails and categories


@pytest.fixture(scope="module")
def guard_store(tmp_path_factory) -> Path:
    """Control A and two treatments, 30 users each with 4 replies in "chat", plus 3 users each in "rare".

    thumbs_down: A on 1 or 2 of 4 replies (alternating users), B on 1 of 4 for a third of its users,
    C on 2 or 3 of 4. Love bait: A on the first reply of every other user, B on every reply, C on the
    first reply of every third user. B answers in two words, A and C at length."""
    def arm(policy, down, bait, text):
        out = []
        for i in range(30):
            replies = [(text + (BAIT if bait(i, j) else ""), [("thumbs_down", "add")] if j < down(i) else [])
                       for j in range(4)]  # fmt: skip
            out.append(conv(f"{policy}{i}", f"{policy}u{i}", policy, replies))
        out += [conv(f"{policy}r{i}", f"{policy}ru{i}", policy, [(text, [])], category="rare") for i in range(3)]
        return out

    records = (arm("A", lambda i: 1 + i % 2, lambda i, j: i % 2 == 0 and j == 0, LONG)
               + arm("B", lambda i: int(i % 3 == 0), lambda i, j: True, SHORT)
               + arm("C", lambda i: 2 + i % 2, lambda i, j: i % 3 == 0 and j == 0, LONG))  # fmt: skip
    return write_store(tmp_path_factory.mktemp("guard"), records)


@pytest.fixture(scope="module")
def helpful_dir(tmp_path_factory) -> Path:
    """A reward model that calls long replies helpful and short ones not."""
    responses = [LONG] * 20 + [SHORT] * 20 + [LONG + BAIT] * 5 + [SHORT + BAIT] * 5
    labels = [1] * 18 + [0] * 2 + [0] * 18 + [1] * 2 + [1] * 4 + [0] + [0] * 4 + [1]
    model = LengthRewardModel(signal="helpful").fit([""] * len(responses), responses, labels)
    return model.save(tmp_path_factory.mktemp("rm") / "helpful")


@pytest.mark.slow  # loading a reward model directory imports torch (about 4 s)
def test_guardrails_pass_fail_and_not_evaluated(guard_store, helpful_dir):
    r = analyze(guard_store, control="A", models={"helpful": str(helpful_dir)})
    g = r["guardrails"]
    assert set(g) == {"B", "C"}
    assert g["B"]["thumbs_down"]["status"] == "pass" and g["B"]["thumbs_down"]["ci95"][1] < 0.05
    assert g["C"]["thumbs_down"]["status"] == "fail" and g["C"]["thumbs_down"]["estimate"] > 0.5
    assert g["B"]["helpful"]["status"] == "fail" and g["B"]["helpful"]["ci95"][0] < -0.02
    assert g["C"]["helpful"]["status"] == "pass" and g["C"]["helpful"]["ci95"][0] > -0.02
    assert g["B"]["hacking"]["status"] == "fail" and r["metrics"]["flagged"]["arms"]["B"]["value"] == pytest.approx(120 / 123)  # "rare" replies: no bait
    assert g["C"]["hacking"]["status"] == "pass"
    assert r["metrics"]["flagged"]["arms"]["A"]["value"] == pytest.approx(15 / 123)  # 30 users x 4 + 3 "rare" replies
    for arm in ("B", "C"):
        assert g[arm]["safe"]["status"] == "not evaluated" and "no 'safe' reward model" in g[arm]["safe"]["reason"]
    # a wider thumbs_down margin lets C pass; without judges hacking is not evaluated
    loose = analyze(guard_store, control="A", judges=[], guardrails={"thumbs_down": 3.0})["guardrails"]
    assert loose["C"]["thumbs_down"]["status"] == "pass" and loose["C"]["hacking"]["status"] == "not evaluated"
    assert loose["B"]["helpful"]["status"] == "not evaluated"
    with pytest.raises(ABTestError, match="unknown key 'thumbsdown'"):
        analyze(guard_store, control="A", guardrails={"thumbsdown": 0.1})


@pytest.mark.slow
def test_unsafe_rate_guardrail_bounds_the_absolute_change(guard_store, tmp_path):
    """A safety model that calls the two-word replies unsafe: B (all short) fails, C (long, 0 vs 0) passes."""
    responses = [LONG] * 20 + [SHORT] * 20
    safe = LengthRewardModel(signal="safe").fit([""] * 40, responses, [1] * 20 + [0] * 20).save(tmp_path / "safe")
    r = analyze(guard_store, control="A", judges=[], models={"safe": str(safe)})
    unsafe, g = r["metrics"]["unsafe"], r["guardrails"]
    assert unsafe["kind"] == "classified"
    assert unsafe["arms"]["A"]["value"] == 0 and unsafe["arms"]["B"]["value"] == 1 and unsafe["arms"]["C"]["value"] == 0
    assert g["B"]["unsafe"]["status"] == "fail" and g["B"]["unsafe"]["estimate"] == pytest.approx(1.0)
    assert g["C"]["unsafe"]["status"] == "pass" and g["C"]["unsafe"]["ci95"] == [0.0, 0.0]
    assert "P[safe] < 0.5" in g["C"]["unsafe"]["rule"]
    loose = analyze(guard_store, control="A", judges=[], models={"safe": str(safe)}, guardrails={"unsafe": 2.0})
    assert loose["guardrails"]["B"]["unsafe"]["status"] == "pass"
    without = analyze(guard_store, control="A", judges=[])
    assert "unsafe" not in without["metrics"] and without["guardrails"]["B"]["unsafe"]["status"] == "not evaluated"


def test_small_category_cells_are_suppressed_not_dropped(guard_store):
    r = analyze(guard_store, control="A", judges=[])
    rare, chat = r["by_category"]["rare"], r["by_category"]["chat"]
    assert rare["B"]["status"] == "suppressed" and rare["B"]["users"] == 3 and rare["B"]["control_users"] == 3
    assert "metrics" not in rare["B"] and "fewer than 20 users" in rare["B"]["reason"]
    assert chat["B"]["status"] == "ok" and chat["C"]["metrics"]["thumbs_down"]["users"] == 30
    assert chat["C"]["metrics"]["thumbs_down"]["lift"] == pytest.approx((75 / 120) / (45 / 120) - 1)
    assert "suppressed" in format_report(r)
    assert analyze(guard_store, control="A", judges=[], min_users_per_cell=3)["by_category"]["rare"]["B"]["status"] == "ok"


def test_srm_in_a_store_and_multi_arm_split(guard_store):
    r = analyze(guard_store, control="A", judges=[])
    assert r["srm"]["observed_users"] == {"A": 33, "B": 33, "C": 33} and not r["srm"]["flagged"]
    skew = analyze(guard_store, control="A", judges=[], expected_split={"A": 0.8, "B": 0.1, "C": 0.1})
    assert skew["srm"]["flagged"]


# ====================================================================== errors


def test_clear_errors(hand_store, tmp_path):
    with pytest.raises(ABTestError, match="not a store"):
        analyze(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"version": 1, "batches": []}))
    with pytest.raises(ABTestError, match="is empty"):
        analyze(empty)
    with pytest.raises(ABTestError, match="control 'Z' is not an analysed arm"):
        analyze(hand_store, control="Z")
    with pytest.raises(ABTestError, match="which arm is the control"):
        analyze(hand_store)
    with pytest.raises(ABTestError, match="only one arm"):
        analyze(hand_store, arms=["A"])
    with pytest.raises(ABTestError, match=r"arm\(s\) \['Q'\]"):
        analyze(hand_store, arms=["A", "Q"])
    with pytest.raises(ABTestError, match="min_users_per_cell"):
        analyze(hand_store, control="A", min_users_per_cell=0)
    with pytest.raises(ABTestError, match="models\\['helpful'\\]"):
        analyze(hand_store, control="A", models={"helpful": str(tmp_path)})
    no_replies = [{"conversation_id": "x", "user_id": "u", "policy": "A",
                   "turns": [{"message_id": "x:0", "role": "user", "text": "hi", "time": iso(T0)}]}]
    with pytest.raises(ABTestError, match="no assistant messages"):
        analyze(write_store(tmp_path / "users_only", no_replies))


def test_a_user_in_two_arms_is_an_error(tmp_path):
    records = counted("A", "c", [(2, 1)] * 3) + counted("B", "t", [(2, 1)] * 3)
    records += [conv("x1", "cu0", "B", [(LONG, [])]), conv("x2", "cu1", "B", [(LONG, [])])]
    store = write_store(tmp_path, records)
    with pytest.raises(ABTestError, match=r"2 users appear in more than one arm \(cu0: A, B; cu1: A, B\)"):
        analyze(store, control="A")


# ====================================================================== a simulated A/B


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory) -> Path:
    from rluf.sim.config import PolicyConfig, ReactionConfig, StyleConfig, WorldConfig
    from rluf.sim.policy import BaselinePolicy
    from rluf.sim.world import World

    config = WorldConfig(reactions=ReactionConfig(calibration_samples=2000))
    world = World(config, seed=7)
    warm = BaselinePolicy(PolicyConfig(name="warm", styles={"warm": StyleConfig(1.0, 0.7, 0.3, 0.1, 0.1, 1.5)}),
                          {k: c.correct_rate for k, c in config.categories.items()})  # fmt: skip
    records = []
    for log in world.serve(None, users=range(120), days=10, policy_name="baseline"):  # users 0-119: baseline
        records += log.records
    for log in world.serve(warm, users=range(120, 240), days=10, policy_name="warm"):  # users 120-239: warm
        records += log.records
    return write_store(tmp_path_factory.mktemp("sim"), records)


def test_simulated_ab_the_warmer_arm_earns_more_love(sim_store, tmp_path, capsys):
    r = analyze(sim_store, n_boot=300)
    assert r["control"] == "baseline" and set(r["arms"]) == {"baseline", "warm"}
    love = r["metrics"]["love"]["vs_control"]["warm"]
    assert love["lift"] > 0.5 and love["ci95"][0] > 0 and love["p_value"] < 0.01
    assert love["bootstrap"]["ci95"][0] > 0
    assert r["metrics"]["flagged"]["vs_control"]["warm"]["lift"] > 0  # the warm style closes with love bait
    assert not r["srm"]["flagged"]
    assert r["metrics"]["love"]["vs_control"]["warm"]["mde_relative"] > 0
    out = tmp_path / "ab.json"
    assert main(["--store", str(sim_store), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["metrics"]["love"]["vs_control"]["warm"]["lift"] == pytest.approx(love["lift"])
    assert main(["--store", str(sim_store), "--control", "nope"]) == 2
    assert "control 'nope'" in capsys.readouterr().err
    assert main(["--store", str(sim_store), "--model", "helpful"]) == 2
