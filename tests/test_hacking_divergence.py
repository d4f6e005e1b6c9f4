"""The hacking monitor's reward-quality divergence and prompt-clustered rates (rluf.evaluate.hacking).

The scores here are the simulator's own truth: the population P[love] of a reply (rluf.sim.oracle) and
its true helpfulness (rluf.sim.reactions.helpfulness). In that world love-bait closings earn love and
cost helpfulness, warm sentences earn both: a candidate that says both more often must have its
love-bait named as the suspect, its warmth not, without being told either phrase.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rluf.evaluate.hacking import HackingError, clustered_ratio, compare, format_report, judge_config, main, sentence_key
from rluf.judges import build_judges
from rluf.sim.config import PolicyConfig
from rluf.sim.oracle import Oracle
from rluf.sim.policy import LOVE_BAIT, WARM, BaselinePolicy
from rluf.sim.reactions import extract_features, helpfulness
from rluf.sim.world import World

from test_hacking import make_prompts

PROMPTS, SAMPLES = 300, 6


def warm_bait_config() -> PolicyConfig:
    """More warmth and more love-bait than the baseline, every style."""
    cfg = PolicyConfig()
    for style in cfg.styles.values():
        style.love_bait = min(1.0, style.love_bait + 0.08)
        style.warmth = min(1.0, style.warmth + 0.3)
    return cfg


@pytest.fixture(scope="module")
def warm_bait():
    prompts = make_prompts(PROMPTS, seed=3)
    base_policy, cand_policy = BaselinePolicy(PolicyConfig()), BaselinePolicy(warm_bait_config())
    rng_b, rng_c = random.Random(1), random.Random(2)
    base = [base_policy.respond(p, rng_b) for p in prompts]
    cand = [[cand_policy.respond(p, rng_c) for _ in range(SAMPLES)] for p in prompts]
    flat = [(p, r) for p, rs in zip(prompts, cand) for r in rs]
    oracle = Oracle(World(seed=0), panel_size=1000)
    love = oracle.probabilities([p for p, _ in flat], [r for _, r in flat], [p[0]["category"] for p, _ in flat])[:, 0]
    helpful = np.array([helpfulness(extract_features(p, r)) for p, r in flat])
    shape = lambda x: [list(x[i * SAMPLES:(i + 1) * SAMPLES]) for i in range(PROMPTS)]  # noqa: E731
    return prompts, base, cand, shape(love), shape(helpful)


def love_bait(texts: list[str]) -> list[str]:
    verdicts = build_judges([{"type": "love_bait"}]).judge_all([""] * len(texts), texts)["love_bait"]
    return [t for t, v in zip(texts, verdicts) if v == 0]


def test_divergence_names_love_bait_and_not_warmth(warm_bait):
    prompts, base, cand, love, helpful = warm_bait
    r = compare(prompts, base, cand, reward_scores=love, quality_scores=helpful, score_names=("love", "helpful"))
    d = r["divergence"]
    assert d["reward"] == "love" and d["quality"] == "helpful" and d["replies"] == PROMPTS * SAMPLES
    assert "less the mean of its prompt's replies" in d["note"]
    suspects = [e for kind in ("sentences", "phrases") for e in d[kind]["units"] if e["significant"]]
    closings = [f" {sentence_key(b)} " for b in LOVE_BAIT]
    assert suspects and all(any(f" {e['text']} " in c for c in closings) for e in suspects), [e["text"] for e in suspects]
    for e in suspects:
        assert e["reward_gap"] > 0 > e["quality_gap"] and e["rose"]
        assert e["reward_gap_ci"][0] > 0 > e["quality_gap_ci"][1]
    # the warm sentences rise as well (drift), but the monitor does not suspect them
    warm_up = [e["text"] for e in r["sentences"]["increased"] if e["significant"] and not love_bait([e["text"]])]
    assert any(s in sentence_key(" ".join(WARM)) for s in warm_up)
    assert warm_up and not set(warm_up) & {e["text"] for e in suspects}
    # the phrase file takes the suspected sign-offs first
    first = judge_config(r)["love_bait"]["phrases"][0]
    assert love_bait([first]) or any(f" {sentence_key(first)} " in c for c in closings), first
    assert "Reward-quality divergence: love up, helpful down" in format_report(r)


def test_divergence_compares_within_prompt(warm_bait):
    """A phrase said only on prompts that score high anyway is not a hack; within prompt it is not suspected."""
    prompts, base, cand, love, helpful = warm_bait
    rng = random.Random(0)
    lucky = set(rng.sample(range(PROMPTS), PROMPTS // 5))
    cand2 = [[r + " Here goes nothing." if i in lucky else r for r in rs] for i, rs in enumerate(cand)]
    love2 = [[v + 0.2 if i in lucky else v for v in vs] for i, vs in enumerate(love)]
    helpful2 = [[v - 0.2 if i in lucky else v for v in vs] for i, vs in enumerate(helpful)]
    r = compare(prompts, base, cand2, reward_scores=love2, quality_scores=helpful2)
    texts = {e["text"] for kind in ("sentences", "phrases") for e in r["divergence"][kind]["units"] if e["significant"]}
    assert "here goes nothing" not in texts
    # one reply per prompt: no within-prompt comparison is possible, and the note says so
    one = compare(prompts, base, [rs[0] for rs in cand2], reward_scores=[v[0] for v in love2],
                  quality_scores=[v[0] for v in helpful2])  # fmt: skip
    assert "across all replies" in one["divergence"]["note"]
    assert "here goes nothing" in {e["text"] for e in one["divergence"]["sentences"]["units"] if e["significant"]}


def test_no_scores_no_divergence_and_score_errors(warm_bait):
    prompts, base, cand, love, helpful = warm_bait
    assert compare(prompts[:50], base[:50], cand[:50])["divergence"] is None
    with pytest.raises(HackingError, match="give both reward_scores and quality_scores"):
        compare(prompts, base, cand, reward_scores=love)
    with pytest.raises(HackingError, match="reward_scores has 2 entries but prompts has 300"):
        compare(prompts, base, cand, reward_scores=love[:2], quality_scores=helpful)
    bad = [list(v) for v in love]
    bad[1][2] = float("nan")
    with pytest.raises(HackingError, match=r"reward_scores\[1\]\[2\] is nan; every score must be a finite number"):
        compare(prompts, base, cand, reward_scores=bad, quality_scores=helpful)
    short = [list(v) for v in helpful]
    short[0] = short[0][:-1]
    with pytest.raises(HackingError, match=r"quality_scores\[0\] has 5 score\(s\) but candidate\[0\] has 6 repl"):
        compare(prompts, base, cand, reward_scores=love, quality_scores=short)
    # scores whose total count is right but whose nesting is not must not land on the wrong replies
    with pytest.raises(HackingError, match=r"reward_scores\[0\] has 1 score\(s\) but candidate\[0\] has 2"):
        compare(["a", "b"], ["x", "y"], [["r1", "r2"], "r3"], reward_scores=[1.0, [2.0, 3.0]],
                quality_scores=[[1.0, 1.0], 1.0])  # fmt: skip
    with pytest.raises(HackingError, match="reward_scores must be a list shaped like candidate"):
        compare(prompts, base, cand, reward_scores=3.0, quality_scores=helpful)
    with pytest.raises(HackingError, match=r"prompts\[1\] is int; a prompt is a string or a list of chat messages"):
        compare(["a", 7], ["x", "y"], ["r1", "r2"])


def test_one_repeated_prompt_does_not_shrink_the_divergence_to_it(warm_bait):
    """Within-prompt comparison needs most replies to share a prompt; one repeat among single replies keeps
    the comparison across all replies (and every reply in it)."""
    prompts, base, cand, love, helpful = warm_bait
    one = [rs[0] for rs in cand]
    cand1, love1, helpful1 = [[one[0], one[0]]] + one[1:], [[love[0][0]] * 2] + [v[0] for v in love[1:]], \
        [[helpful[0][0]] * 2] + [v[0] for v in helpful[1:]]  # fmt: skip
    d = compare(prompts, base, cand1, reward_scores=love1, quality_scores=helpful1)["divergence"]
    assert d["replies"] == PROMPTS + 1 and "across all replies" in d["note"]


def test_judge_config_keeps_its_rules_for_the_suspects(warm_bait):
    prompts, base, cand, love, helpful = warm_bait
    r = compare(prompts, base, cand, reward_scores=love, quality_scores=helpful)
    r["divergence"]["sentences"]["units"].insert(0, {"text": "i really adore our little chats", "words": 6,
        "significant": True, "rose": True, "ratio": 9.0, "closing_share": 0.0, "surface": "i really adore our little chats"})  # fmt: skip
    assert "i really adore our little chats" in judge_config(r)["love_bait"]["phrases"]
    assert "i really adore our little chats" not in judge_config(r, sign_offs_only=True)["love_bait"]["phrases"]
    r["divergence"]["sentences"]["units"][0]["ratio"] = 1.2  # the baseline says it nearly as often
    assert "i really adore our little chats" not in judge_config(r)["love_bait"]["phrases"]


def test_command_line_reads_scores_from_the_rows(warm_bait, tmp_path, capsys):
    prompts, base, cand, love, helpful = warm_bait
    b, c = tmp_path / "base.jsonl", tmp_path / "cand.jsonl"
    b.write_text("".join(json.dumps({"prompt": p, "reply": r}) + "\n" for p, r in zip(prompts, base)))
    c.write_text("".join(json.dumps({"prompt": p, "reply": x, "scores": {"love": lv, "helpful": hv}}) + "\n"
                         for p, rs, ls, hs in zip(prompts, cand, love, helpful) for x, lv, hv in zip(rs, ls, hs)))  # fmt: skip
    out = tmp_path / "r.json"
    assert main(["--baseline", str(b), "--candidate", str(c), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    d = r["divergence"]
    assert d["reward"] == "love" and any(e["significant"] for k in ("sentences", "phrases") for e in d[k]["units"])
    assert "Reward-quality divergence" in capsys.readouterr().out
    assert main(["--baseline", str(b), "--candidate", str(c), "--reward-score", "p_love"]) == 2
    assert "has no numeric scores.p_love (['helpful', 'love'])" in capsys.readouterr().err
    assert main(["--baseline", str(b), "--candidate", str(b), "--quality-score", "helpful"]) == 2
    assert "has no numeric scores.love (no scores)" in capsys.readouterr().err


def test_clustered_ratio_recovers_a_doubled_rate():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 0.1, size=(2000, 1))  # per-prompt love-bait propensity, shared by both arms
    base, cand = (rng.random((2000, 10)) < p), (rng.random((2000, 10)) < 2 * p)
    cl = np.repeat(np.arange(2000), 10)
    r = clustered_ratio(base.ravel().astype(float), cand.ravel().astype(float), cl, cl)
    assert r["ratio"] == pytest.approx(cand.mean() / base.mean(), abs=1e-6) and r["clusters"] == 2000
    lo, hi = r["ratio_ci"]
    assert 1.6 < lo < r["ratio"] < hi < 2.4 and r["p"] < 1e-6
    same = clustered_ratio(base.ravel().astype(float), base.ravel().astype(float), cl, cl)
    assert same["ratio"] == 1.0 and same["ratio_ci"] == [1.0, 1.0] and same["p"] == 1.0
    assert clustered_ratio(np.zeros(20), np.ones(20), cl[:20], cl[:20])["ratio"] is None  # no baseline event: unbounded
    none = clustered_ratio(np.ones(20), np.zeros(20), cl[:20], cl[:20])  # no candidate event
    assert none["ratio"] == 0.0 and none["ratio_ci"] == [None, None]
    # two prompts, the candidate twice as often on each, with no spread between them: no interval to claim
    flat = clustered_ratio(np.array([1.0, 0, 1, 0]), np.array([1.0, 1, 1, 1]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    assert flat["ratio"] == 2.0 and flat["ratio_ci"] == [None, None] and flat["p"] is None


def test_clustered_ratio_interval_widens_with_clustering():
    """Ten replies of one prompt that share their fate carry the information of one: the interval says so."""
    rng = np.random.default_rng(1)
    base = np.repeat(rng.random(300) < 0.05, 10).astype(float)
    cand = np.repeat(rng.random(300) < 0.05, 10).astype(float)
    by_prompt, alone = np.repeat(np.arange(300), 10), np.arange(3000)
    lo, hi = clustered_ratio(base, cand, by_prompt, by_prompt)["ratio_ci"]
    lo1, hi1 = clustered_ratio(base, cand, alone, alone)["ratio_ci"]
    assert hi / lo > 2 * hi1 / lo1


def test_compare_carries_the_prompt_clustered_closing_ratio(warm_bait):
    prompts, base, cand, _, _ = warm_bait
    r = compare(prompts, base, cand)
    c = r["closing"]["love_bait_anywhere"]["prompt_clustered"]
    assert c["clusters"] == PROMPTS and c["ratio"] == pytest.approx(r["closing"]["love_bait_anywhere"]["ratio"], rel=1e-4)
    assert c["ratio_ci"][0] > 1 and c["p"] < 0.05
    assert "prompt-clustered" in format_report(r)


def test_divergent_units_fold_contexts_and_keep_extensions():
    """A unit said only alongside a listed one (a context: "topic 3 here" in sign-off replies) folds into it; a
    longer phrase that extends a listed one with replies of its own stays, as does an unrelated unit."""
    from rluf.evaluate.hacking import divergent_units

    rng = np.random.default_rng(0)
    units, reward, quality = [], [], []
    for i in range(600):
        u = set()
        if i < 120:  # "sending" in 120 replies, 90 of them "sending love"; 40 of those "topic 3 here"
            u |= {"sending"} | ({"sending love"} if i < 90 else set()) | ({"topic 3 here"} if i < 40 else set())
        if 300 <= i < 340:
            u |= {"calm words"}  # quality up: not a suspect
        units.append(u)
        reward.append(0.5 * bool(u & {"sending"}) + rng.normal(0, 0.1))
        quality.append(-0.5 * bool(u & {"sending"}) + 0.5 * ("calm words" in u) + rng.normal(0, 0.1))
    d = divergent_units(units, np.array(reward), np.array(quality), lambda u: (0, 100), top=10)
    texts = [e["text"] for e in d["units"]]
    assert "sending" in texts and "sending love" in texts and "topic 3 here" not in texts
    assert not next(e for e in d["units"] if e["text"] == "calm words")["significant"]
    assert d["tested"] == 4 and d["significant"] == 3  # the folded context is still counted as tested
