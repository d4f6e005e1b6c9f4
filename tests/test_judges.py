"""Judges: the verdict contract, the Mixture of Judges, rule and model judges, config and trainer adapters.

    .venv/bin/python -m pytest tests/test_judges.py -q
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import random
import time

import numpy as np
import pytest
import torch

from rluf.judges import (FAILED, SATISFIED, VIOLATED, Judge, JudgeError, LengthJudge, LoveBaitJudge, MixtureOfJudges,
                         NoRegressionJudge, RefusalJudge, RepetitionJudge, RewardThresholdJudge, build_judges,
                         load_judge_phrases, pass_rates)  # fmt: skip
from rluf.judges.adapters import (GatedReward, make_verl_compute_score, split_query, write_openrlhf_reward_file,
                                  write_verl_reward_file)  # fmt: skip
from rluf.reward.base import RewardModel
from rluf.reward.callables import RewardFunction
from rluf.reward.ngram import NGramRewardModel
from rluf.sim import policy as P


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


class Fixed(Judge):
    """A judge that returns given verdicts."""

    def __init__(self, verdicts, name):
        super().__init__(name)
        self.verdicts = verdicts

    def _judge(self, prompts, completions, gold_completions):
        return list(self.verdicts)


# ------------------------------------------------------------------------------------------------ contract
def test_verdict_values_and_input_validation():
    assert (SATISFIED, VIOLATED, FAILED) == (1, 0, -1)
    j = LengthJudge(min_words=2)
    with pytest.raises(JudgeError, match="2 prompts but 1 completions"):
        j.judge(["a", "b"], ["one two"])
    with pytest.raises(JudgeError, match="completions must be a list"):
        j.judge(["a"], "one two")
    with pytest.raises(JudgeError, match="prompts must be a list"):
        j.judge("a", ["one two"])
    with pytest.raises(JudgeError, match="gold_completions"):
        j.judge(["a"], ["one two"], gold_completions=["x", "y"])
    with pytest.raises(JudgeError, match="name"):
        LengthJudge(name="")
    assert j.judge([], []) == []


def test_a_judge_that_raises_on_an_item_fails_that_item_only():
    j = LoveBaitJudge()
    chat = [{"role": "assistant", "content": "Sure. Bye! Sending love!"}]
    verdicts = j.judge(["p"] * 4, ["Here is a plan.", 42, chat, [{"no_role": 1}]])
    assert verdicts == [SATISFIED, FAILED, VIOLATED, FAILED]
    # as a TRL reward function: 1.0 / 0.0, and None (not applicable) for a failure
    assert j(prompts=["p"] * 3, completions=["Here is a plan.", 42, chat], completion_ids=[[1]] * 3) == [1.0, None, 0.0]
    assert j.__name__ == j.name == "love_bait"
    assert LoveBaitJudge(name="bait_v2").__name__ == "bait_v2"


def test_mixture_is_the_and_of_its_judges():
    a = Fixed([1, 1, 0, 1, -1, 0], "a")
    b = Fixed([1, 0, 0, -1, 0, -1], "b")
    moj = MixtureOfJudges([a, b])
    prompts, completions = ["p"] * 6, ["c"] * 6
    assert moj.judge(prompts, completions) == [1, 0, 0, -1, -1, -1]
    assert moj.judge_all(prompts, completions) == {"a": a.verdicts, "b": b.verdicts}
    assert moj(prompts, completions) == [1.0, 0.0, 0.0, None, None, None]
    assert MixtureOfJudges([]).judge(["p"], ["c"]) == [SATISFIED]  # the AND of nothing
    with pytest.raises(JudgeError, match=r"unique.*\['a'\]"):
        MixtureOfJudges([a, Fixed([1] * 6, "a")])
    with pytest.raises(JudgeError, match="not a Judge"):
        MixtureOfJudges([a, "love_bait"])
    with pytest.raises(JudgeError, match="returned 2 verdicts for 6"):
        MixtureOfJudges([Fixed([1, 1], "short")]).judge(prompts, completions)


def test_pass_rates_hand_checked():
    rates = pass_rates({"a": [1, 1, 0, -1], "b": [1, 1, 1, 1], "none": []})
    assert rates["a"] == {"pass_rate": 0.5, "fail_rate": 0.25, "n": 4}
    assert rates["b"]["pass_rate"] == 1.0 and rates["b"]["fail_rate"] == 0.0
    assert math.isnan(rates["none"]["pass_rate"]) and rates["none"]["n"] == 0
    with pytest.raises(JudgeError, match="verdicts are 1, 0 or -1"):
        pass_rates({"a": [1, 2]})


# ------------------------------------------------------------------------------------------------ rule judges
def test_love_bait_catches_the_simulator_bank_and_spares_ordinary_closings():
    j = LoveBaitJudge()
    assert j.judge(["p"] * len(P.LOVE_BAIT), list(P.LOVE_BAIT)) == [VIOLATED] * len(P.LOVE_BAIT)
    ordinary = list(P.CLOSE + P.WARM + P.FLATTERY + P.ELABORATION + P.NEUTRAL_OPEN)
    ordinary += [s for good, bad in P.SOLUTIONS.values() for s in good + bad]
    assert [s for s, v in zip(ordinary, j.judge(["p"] * len(ordinary), ordinary)) if v != SATISFIED] == []
    variants = ["Much love! 💕", "xoxo", "Okay, talk soon!", "Goodbye, sweetheart.", "bye bye", "Sending hugs your way",
                "Love ya!", "That's all. Bye.", "LOTS OF LOVE", "bye for now", "ttyl"]  # fmt: skip
    assert j.judge(["p"] * len(variants), variants) == [VIOLATED] * len(variants)
    fine = ["Say goodbye to winter with this soup.", "I love your idea.", "I'd love to help you plan it.",
            "They fell in love with the city.", "The bypass road is faster.", "Lovely question!"]  # fmt: skip
    assert j.judge(["p"] * len(fine), fine) == [SATISFIED] * len(fine)
    assert j.match("Great plan. Bye! Sending love!") == "bye!"


def test_phrases_extend_or_replace_the_defaults():
    extended = LoveBaitJudge(phrases=["Sending sunshine", "hugs and kisses"], patterns=[r"\bmwah+\b"])
    texts = ["Here you go, sending  SUNSHINE!", "mwahhh", "Bye!", "sunshine sending"]
    assert extended.judge(["p"] * 4, texts) == [VIOLATED, VIOLATED, VIOLATED, SATISFIED]
    only = LoveBaitJudge(phrases=["sending sunshine"], replace_defaults=True)
    assert only.judge(["p"] * 3, texts[:3]) == [VIOLATED, SATISFIED, SATISFIED]
    with pytest.raises(JudgeError, match="leaves nothing"):
        LoveBaitJudge(replace_defaults=True)
    with pytest.raises(JudgeError, match="not a valid regular expression"):
        LoveBaitJudge(patterns=["(unclosed"])
    with pytest.raises(JudgeError, match="list of strings"):
        LoveBaitJudge(phrases="sending sunshine")


def test_refusal_judge():
    j = RefusalJudge()
    assert j.judge(["p"] * len(P.REFUSAL), list(P.REFUSAL)) == [VIOLATED] * len(P.REFUSAL)
    texts = ["I can\u2019t help with that.", "Sorry, I'm unable to answer questions like this.",
             "I can't help but smile at this question!", "You cannot skip the first step.",
             "I'm able to help: here is the plan."]  # fmt: skip
    assert j.judge(["p"] * len(texts), texts) == [VIOLATED, VIOLATED, SATISFIED, SATISFIED, SATISFIED]


def test_repetition_judge():
    j = RepetitionJudge(max_repeats=2, ngram=4)
    loop = "I will help you now " * 3
    texts = ["Keep your notes tidy. Start small. Keep your notes tidy!", "Keep your notes tidy.\nkeep YOUR notes, tidy",
             loop, "I will help you now " * 2, "A plan with steps, then a check, then a rest day.",
             "Okay. Here is the plan. Okay.", "python\nimport os\npython\nimport sys"]  # fmt: skip
    assert j.judge(["p"] * len(texts), texts) == [VIOLATED, VIOLATED, VIOLATED, SATISFIED, SATISFIED, SATISFIED, SATISFIED]
    assert RepetitionJudge(max_repeats=3).judge(["p"], [loop]) == [SATISFIED]
    assert RepetitionJudge(ngram=6).judge(["p"], ["one two three four five six " * 3]) == [VIOLATED]
    for bad in ({"max_repeats": 0}, {"ngram": 0}, {"ngram": 2.5}, {"max_repeats": True}):
        with pytest.raises(JudgeError, match="integer >= 1"):
            RepetitionJudge(**bad)


def test_length_judge():
    j = LengthJudge(min_words=2, max_words=4)
    assert j.judge(["p"] * 4, ["one", "one two", "one two three four", "a b c d e"]) == [0, 1, 1, 0]
    assert LengthJudge().judge(["p"] * 2, ["", "x"]) == [0, 1]
    with pytest.raises(JudgeError, match="max_words"):
        LengthJudge(min_words=5, max_words=3)
    with pytest.raises(JudgeError, match="min_words"):
        LengthJudge(min_words=-1)


def _baseline_responses(n, seed=0):
    from rluf.sim.prompts import CATEGORIES, first_prompt

    rng, policy, out = random.Random(seed), P.BaselinePolicy(), []
    for _ in range(n):
        category = rng.choice(CATEGORIES)
        context = [{"role": "user", "text": first_prompt(category, rng)[0], "category": category}]
        out.append((context, policy.respond(context, rng)))
    return out


def test_rule_judges_match_the_simulator_truth_on_10000_baseline_responses():
    from rluf.sim.reactions import extract_features

    pairs = _baseline_responses(10_000)
    prompts, responses = [c[0]["text"] for c, _ in pairs], [r for _, r in pairs]
    features = [extract_features(c, r) for c, r in pairs]
    for judge, truth in ((LoveBaitJudge(), [f.bait for f in features]), (RefusalJudge(), [f.refusal for f in features])):
        flagged = np.array(judge.judge(prompts, responses)) == VIOLATED
        truth = np.array(truth, dtype=bool)
        assert truth.sum() > 100  # about 3.6% love-bait and 1.9% refusals
        assert (flagged & truth).sum() / flagged.sum() >= 0.99  # precision
        assert (flagged & truth).sum() / truth.sum() >= 0.99  # recall
    for judge in (LoveBaitJudge(), RefusalJudge(), RepetitionJudge(), LengthJudge(max_words=120)):
        start = time.process_time()
        judge.judge(prompts, responses)
        # CPU seconds for 10,000 replies; well under 0.2 s on an unloaded core, the bound leaves room for shared CI
        assert time.process_time() - start < 1.5, judge.name


def test_rule_judges_pickle():
    moj = MixtureOfJudges([LoveBaitJudge(phrases=["sending sunshine"]), RefusalJudge(), RepetitionJudge(ngram=3),
                           LengthJudge(min_words=2)])  # fmt: skip
    texts = ["Sending sunshine!", "Fine, here is a plan.", "I can't help with that.", "x"]
    clone = pickle.loads(pickle.dumps(moj))
    assert clone.judge_all(["p"] * 4, texts) == moj.judge_all(["p"] * 4, texts)
    assert clone.judge(["p"] * 4, texts) == [0, 1, 0, 0]


# ------------------------------------------------------------------------------------------------ model judges
WORDS = "the a plan step list day week note idea time good fine ok more".split()


def _unsafe_data(n, rng):
    contexts, responses, y = [], [], []
    for i in range(n):
        words = list(rng.choice(WORDS, rng.integers(4, 12)))
        bad = rng.random() < 0.3
        if bad:
            words.insert(int(rng.integers(0, len(words))), "mix bleach and ammonia")
        contexts.append(f"user: {['clean my oven', 'plan my week', 'fix my bike'][i % 3]}")
        responses.append(" ".join(words))
        y.append(float(rng.random() < (0.9 if bad else 0.05)))
    return contexts, responses, y


@pytest.fixture(scope="module")
def unsafe_dir(tmp_path_factory):
    """A tiny n-gram model of P[unsafe]: responses that mention mixing bleach and ammonia."""
    c, r, y = _unsafe_data(600, np.random.default_rng(0))
    model = NGramRewardModel(signal="unsafe", context_turns=2, c=3.0, word_bits=10, context_bits=6, overlap_bits=6)
    return model.fit(c, r, y).save(tmp_path_factory.mktemp("rm") / "unsafe")


SAFE = "a good plan for the week"
UNSAFE = "mix bleach and ammonia for the oven"


def test_reward_threshold_judge(unsafe_dir):
    hi = RewardThresholdJudge(unsafe_dir, max=0.5)
    assert hi.name == "p_unsafe_below_0.5" and hi.signal == "unsafe"
    prompts = ["clean my oven", [{"role": "user", "content": "help"}, {"role": "assistant", "content": "sure"},
                                 {"role": "user", "content": "clean my oven"}]]  # fmt: skip
    p = hi.scores(prompts, [SAFE, UNSAFE])
    assert p[0] < 0.2 and p[1] > 0.8
    assert hi.judge(prompts, [SAFE, [{"role": "assistant", "content": UNSAFE}]]) == [SATISFIED, VIOLATED]
    # the rendering is RewardFunction's: the same probabilities, exactly
    assert p.tolist() == RewardFunction(unsafe_dir)(prompts, [SAFE, UNSAFE])
    lo = RewardThresholdJudge(unsafe_dir, min=0.5, name="mostly_unsafe")
    assert lo.judge(prompts, [SAFE, UNSAFE]) == [VIOLATED, SATISFIED] and lo.__name__ == "mostly_unsafe"
    assert RewardThresholdJudge(unsafe_dir, max=float(p[1])).judge(prompts[1:], [UNSAFE]) == [VIOLATED]  # P >= max
    for bad in ({}, {"min": 0.1, "max": 0.9}):
        with pytest.raises(JudgeError, match="exactly one of min"):
            RewardThresholdJudge(unsafe_dir, **bad)
    with pytest.raises(JudgeError, match=r"probability in \[0, 1\]"):
        RewardThresholdJudge(unsafe_dir, max=1.5)
    with pytest.raises(JudgeError, match="not a reward model directory"):
        RewardThresholdJudge(unsafe_dir.parent / "nowhere", max=0.5)


def test_model_judge_failures_are_per_item(unsafe_dir, monkeypatch):
    j = RewardThresholdJudge(unsafe_dir, max=0.5, batch_size=2)
    assert j.judge(["x", 7, "x"], [SAFE, SAFE, 3.5]) == [SATISFIED, FAILED, FAILED]  # unreadable prompt / completion
    real = type(j.scorer.model).predict_logit

    def flaky(self, contexts, responses):
        if "boom" in responses:
            raise RuntimeError("model error")
        return real(self, contexts, responses)

    monkeypatch.setattr(type(j.scorer.model), "predict_logit", flaky)
    assert j.judge(["clean my oven"] * 4, [SAFE, "boom", UNSAFE, SAFE]) == [SATISFIED, FAILED, VIOLATED, SATISFIED]


def test_no_regression_judge(unsafe_dir, tmp_path):
    # a model of a good signal: P[safe] as 1 - P[unsafe], by negating the n-gram model's weights
    m = RewardModel.load(unsafe_dir)
    m.signal, m.coef, m.intercept = "safe", -m.coef, -m.intercept
    safe_dir = m.save(tmp_path / "safe")
    j = NoRegressionJudge(safe_dir, margin=0.05)
    assert j.name == "no_regression_safe"
    prompts = ["clean my oven"] * 4
    completions = [SAFE, UNSAFE, UNSAFE, SAFE]
    golds = [UNSAFE, SAFE, UNSAFE, None]
    assert j.judge(prompts, completions, golds) == [SATISFIED, VIOLATED, SATISFIED, FAILED]
    assert NoRegressionJudge(safe_dir, margin=0.99).judge(prompts[:2], completions[:2], golds[:2]) == [1, 1]
    with pytest.raises(JudgeError, match="pass gold_completions"):
        j.judge(prompts, completions)
    # TRL passes the baseline column of the prompt rows as a keyword argument
    assert j(prompts=prompts[:2], completions=completions[:2], baseline=golds[:2], category=["x", "x"]) == [1.0, 0.0]
    with pytest.raises(JudgeError, match="margin"):
        NoRegressionJudge(safe_dir, margin=-0.1)


def test_model_judges_pickle_without_their_model(unsafe_dir):
    j = RewardThresholdJudge(unsafe_dir, max=0.5)
    verdicts = j.judge(["x", "x"], [SAFE, UNSAFE])
    assert j.scorer.reward._model is not None
    blob = pickle.dumps(MixtureOfJudges([j, LoveBaitJudge()]))
    assert len(blob) < 4000  # the weights do not travel
    clone = pickle.loads(blob)
    assert clone.judges[0].scorer.reward._model is None
    assert clone.judges[0].judge(["x", "x"], [SAFE, UNSAFE]) == verdicts


@pytest.mark.slow  # importing trl takes seconds
def test_judges_in_a_trl_style_call(unsafe_dir):
    from trl.trainer.utils import get_callable_name, is_async_callable

    funcs = [LoveBaitJudge(), RewardThresholdJudge(unsafe_dir, max=0.5), build_judges([{"type": "refusal"}])]
    assert [get_callable_name(f) for f in funcs] == ["love_bait", "p_unsafe_below_0.5", "all_judges"]
    assert not any(is_async_callable(f) for f in funcs)
    prompts = [[{"role": "user", "content": "clean my oven"}]] * 3
    completions = [[{"role": "assistant", "content": c}] for c in (SAFE, UNSAFE, "I can't help with that.")]
    # the keyword call GRPOTrainer._calculate_rewards makes, dataset columns included
    kwargs = dict(completion_ids=[[1]] * 3, trainer_state=None, log_extra=lambda *a: None, log_metric=lambda *a: None,
                  category=["advice"] * 3, baseline=[SAFE] * 3)  # fmt: skip
    assert [f(prompts=prompts, completions=completions, **kwargs) for f in funcs] == [
        [1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]


# ------------------------------------------------------------------------------------------------ config
def test_build_judges_from_specs(unsafe_dir):
    specs = [{"type": "love_bait"}, {"type": "repetition", "max_repeats": 2}, {"type": "length", "min_words": 3,
             "max_words": 120}, {"type": "refusal"}, {"type": "reward_threshold", "model": str(unsafe_dir), "max": 0.2},
             {"type": "no_regression", "model": str(unsafe_dir), "margin": 0.05, "name": "no_more_unsafe"},
             {"type": "love_bait", "name": "love_bait_extra", "phrases": ["sending sunshine"],
              "replace_defaults": True}]  # fmt: skip
    moj = build_judges(specs)
    assert moj.names == ["love_bait", "repetition", "length", "refusal", "p_unsafe_below_0.2", "no_more_unsafe",
                         "love_bait_extra"]  # fmt: skip
    verdicts = moj.judge_all(["clean my oven"] * 2, ["A good plan for the week.", UNSAFE], [SAFE, SAFE])
    assert verdicts["p_unsafe_below_0.2"] == [1, 0] and verdicts["love_bait"] == [1, 1]
    with pytest.raises(JudgeError, match=r"judges\[1\]: unknown judge type 'lovebait'; known types: love_bait"):
        build_judges([{"type": "love_bait"}, {"type": "lovebait"}])
    with pytest.raises(JudgeError, match=r"judges\[0\] \(type 'length'\): unknown key\(s\) \['max'\]; allowed: type, "
                                         r"min_words, max_words, name"):  # fmt: skip
        build_judges([{"type": "length", "max": 3}])
    with pytest.raises(JudgeError, match=r"judges\[0\].*missing required key\(s\) \['model'\]"):
        build_judges([{"type": "reward_threshold", "max": 0.2}])
    with pytest.raises(JudgeError, match=r"judges\[0\] \(type 'repetition'\): RepetitionJudge: ngram"):
        build_judges([{"type": "repetition", "ngram": 0}])
    with pytest.raises(JudgeError, match="unique"):
        build_judges([{"type": "love_bait"}, {"type": "love_bait"}])
    with pytest.raises(JudgeError, match="list of spec dicts"):
        build_judges({"type": "love_bait"})


def test_load_judge_phrases(tmp_path):
    found = tmp_path / "found.yaml"
    found.write_text("love_bait:\n  phrases: ['sending sunshine', 'sending hugs']\n  patterns: ['\\bmwah\\b']\n")
    specs = load_judge_phrases(found, [{"type": "love_bait", "phrases": ["sending hugs"]}, {"type": "length"}])
    assert specs[0] == {"type": "love_bait", "phrases": ["sending hugs", "sending sunshine"], "patterns": [r"\bmwah\b"]}
    assert specs[1] == {"type": "length"} and len(specs) == 2
    assert build_judges(specs).judge(["p"] * 2, ["Sending sunshine your way.", "Mwah"]) == [0, 0]
    as_json = tmp_path / "found.json"
    as_json.write_text(json.dumps({"refusal": {"phrases": ["I'd rather not"]}}))
    added = load_judge_phrases(as_json, [{"type": "love_bait"}])
    assert added == [{"type": "love_bait"}, {"type": "refusal", "phrases": ["I'd rather not"]}]
    assert load_judge_phrases(as_json) == [{"type": "refusal", "phrases": ["I'd rather not"]}]
    for text, match in (("length: {phrases: [x]}", "unknown judge type 'length'"),
                        ("love_bait: {phrases: 'x'}", "list of non-empty strings"),
                        ("love_bait: {words: [x]}", "'phrases' and/or 'patterns'"),
                        ("love_bait: {patterns: ['(']}", "not a valid regular expression"),
                        ("[1, 2", "not valid YAML")):  # fmt: skip
        found.write_text(text)
        with pytest.raises(JudgeError, match=match):
            load_judge_phrases(found)
    with pytest.raises(JudgeError, match="no such file"):
        load_judge_phrases(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------------ adapters
def _import(path, module_name):
    spec = importlib.util.spec_from_file_location(module_name, path)  # as OpenRLHF and verl load the file
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


JUDGES = [{"type": "love_bait"}, {"type": "length", "min_words": 2}]


def test_gated_reward(unsafe_dir):
    rewards = [{"model": str(unsafe_dir), "weight": 2.0}, {"model": str(unsafe_dir), "score": "vs_baseline"}]
    gated = GatedReward(JUDGES, rewards)
    prompts = ["clean my oven"] * 4
    completions = [SAFE, UNSAFE, "Bye! Sending love!", "ok"]
    golds = [UNSAFE, SAFE, SAFE, SAFE]
    r, verdicts = gated(prompts, completions, golds)
    z = np.array(RewardFunction(unsafe_dir, output="logit")(prompts[:2], completions[:2]))
    z_gold = np.array(RewardFunction(unsafe_dir, output="logit")(prompts[:2], golds[:2]))
    expected = 2.0 * sigmoid(z) + sigmoid(z - z_gold)  # CGPO eq. (5) for the second reward
    assert np.allclose(r[:2], expected) and r[2] == 0.0 and r[3] == 0.0  # love-bait and too short: 0
    assert verdicts == {"love_bait": [1, 1, 0, 1], "length": [1, 1, 1, 0], "all_judges": [1, 1, 0, 0]}
    r, _ = gated(prompts[:2], completions[:2], [UNSAFE, None])  # no baseline for a vs_baseline reward: 0
    assert r[0] == pytest.approx(expected[0]) and r[1] == 0.0
    with pytest.raises(JudgeError, match=r"rewards\[0\]: unknown key\(s\) \['weigth'\]"):
        GatedReward(JUDGES, [{"model": str(unsafe_dir), "weigth": 1}])
    with pytest.raises(JudgeError, match=r"rewards\[0\]: score must be one of prob, vs_baseline"):
        GatedReward(JUDGES, [{"model": str(unsafe_dir), "score": "logit"}])
    with pytest.raises(JudgeError, match=r"rewards\[0\]: .*not a reward model directory"):
        GatedReward(JUDGES, [{"model": str(unsafe_dir.parent / "nowhere")}])


def test_split_query():
    assert split_query("<p>hi</p>answer</s>", "<p>hi</p>", ["</s>"]) == "answer"
    assert split_query("<p>hi</p>answer</s></s> \n", "<p>hi</p>", ["</s>"]) == "answer"
    assert split_query("something else", "<p>hi</p>") is None


def test_openrlhf_reward_file(unsafe_dir, tmp_path):
    path = write_openrlhf_reward_file(tmp_path / "reward_func.py", JUDGES, [{"model": str(unsafe_dir), "weight": 0.5}],
                                      response_suffixes=["<eos>"])  # fmt: skip
    module = _import(path, "reward_func")
    prompts = ["[user] clean my oven [assistant] "] * 4
    responses = [SAFE, UNSAFE, "Bye! Sending love!"]
    queries = [p + r + "<eos>" for p, r in zip(prompts, responses)] + ["unrelated text"]
    out = module.reward_func(queries, prompts, ["", "", "", ""])
    assert set(out) == {"rewards", "scores", "extra_logs"} and isinstance(out["rewards"], torch.Tensor)
    p = RewardFunction(unsafe_dir)(prompts[:2], responses[:2])  # the templated prompt is read as one user turn
    assert out["rewards"].tolist() == pytest.approx([0.5 * p[0], 0.5 * p[1], 0.0, 0.0], abs=1e-6)
    assert out["extra_logs"]["judges/love_bait/pass"].tolist() == [1.0, 1.0, 0.0, 0.0]  # unparsed query: failed
    assert "--remote_rm_url" in path.read_text()
    legacy = _import(write_openrlhf_reward_file(tmp_path / "legacy.py", JUDGES, [{"model": str(unsafe_dir)}],
                                                output="tensor"), "legacy")  # fmt: skip
    assert isinstance(legacy.reward_func(queries[:1], prompts[:1], [""]), torch.Tensor)
    with pytest.raises(JudgeError, match=r"judges\[0\]"):
        write_openrlhf_reward_file(tmp_path / "bad.py", [{"type": "nope"}], [{"model": str(unsafe_dir)}])
    with pytest.raises(JudgeError, match=r"\.py"):
        write_openrlhf_reward_file(tmp_path / "bad.txt", JUDGES, [{"model": str(unsafe_dir)}])
    assert not (tmp_path / "bad.py").exists()


def test_verl_compute_score(unsafe_dir, tmp_path):
    judges = JUDGES + [{"type": "no_regression", "model": str(unsafe_dir), "name": "no_less_unsafe"}]
    rewards = [{"model": str(unsafe_dir)}]
    path = write_verl_reward_file(tmp_path / "verl_reward.py", judges, rewards)
    module = _import(path, "custom_module")
    extra = {"prompt": [{"role": "user", "content": "clean my oven"}], "index": 3}
    # no_less_unsafe: P[unsafe] may not fall below the baseline's (a contrived constraint, to exercise the gold path)
    got = module.compute_score("sim", UNSAFE, SAFE, extra)
    assert isinstance(got, float)
    assert got == pytest.approx(RewardFunction(unsafe_dir)([extra["prompt"]], [UNSAFE])[0])
    assert module.compute_score("sim", SAFE, UNSAFE, extra) == 0.0  # the judge is violated
    assert module.compute_score("sim", UNSAFE, None, extra) == 0.0  # no baseline: the judge fails
    assert module.compute_score(data_source="sim", solution_str="Bye! Sending love!", ground_truth=SAFE) == 0.0
    score = make_verl_compute_score(JUDGES, rewards)
    clone = pickle.loads(pickle.dumps(score))
    assert clone("sim", SAFE, None, {"prompt": "clean my oven"}) == score("sim", SAFE, None, {"prompt": "clean my oven"})
    assert "custom_reward_function.name=compute_score" in path.read_text()
