"""Reward-model core: metrics, calibration, the n-gram model, training/evaluation and the TRL callables.

    .venv/bin/python -m pytest tests/test_reward_core.py -q
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from sklearn import metrics as skm

from rluf.reward import metrics as M
from rluf.reward.base import LengthRewardModel, RewardModel, RewardModelError
from rluf.reward.calibration import calibrate, fit_temperature, prior_shift
from rluf.reward.callables import RewardFunction
from rluf.reward.ngram import NGramRewardModel, last_user_turn
from rluf.reward.train import RewardTrainConfig, compare, format_comparison, make_model, train_reward_model


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------------------------------ metrics
def test_auroc_hand_checked_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 -> 1/2, 0.4>0.1) = 3.5 / 4
    assert M.auroc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)


def test_metrics_match_sklearn_on_tied_scores():
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.07).astype(int)
    p = np.round(np.clip(0.3 * rng.random(3000) + 0.25 * y * rng.random(3000), 0, 1), 2)  # many ties
    assert M.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-12)
    assert M.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)


def test_ece_and_reliability_hand_checked():
    # 15 bins: 0.05 and 0.06 share bin 0 (mean p 0.055, rate 0.5); 0.95 sits in bin 14 (rate 1)
    y, p = [0, 1, 1], [0.05, 0.06, 0.95]
    assert M.ece(y, p) == pytest.approx((2 * abs(0.055 - 0.5) + abs(0.95 - 1)) / 3)
    rows = M.reliability(y, p)
    assert [r["n"] for r in rows] == [2, 1] and rows[0]["rate"] == 0.5
    assert rows[0]["rate_lo"] < 0.5 < rows[0]["rate_hi"]
    assert M.ece([0, 1], [0.0, 1.0]) == 0.0


def test_pearson_and_its_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    y = x + rng.normal(size=500)
    r = M.pearson(x, y)
    assert r["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert r["lo"] < r["r"] < r["hi"] and r["n"] == 500
    assert math.isnan(M.pearson([1, 1, 1, 1], [1, 2, 3, 4])["r"])


def test_metric_inputs_validated():
    with pytest.raises(M.MetricError, match="only negatives"):
        M.auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(M.MetricError, match="NaN"):
        M.brier([0, 1], [0.1, float("nan")])
    with pytest.raises(M.MetricError, match="pair up"):
        M.log_loss([0, 1, 1], [0.1, 0.2])
    with pytest.raises(M.MetricError, match=r"\[0, 1\]"):
        M.ece([0, 1], [0.1, 1.2])
    with pytest.raises(M.MetricError, match="0/1"):
        M.auroc([0, 0.5], [0.1, 0.2])
    assert M.log_loss([0.5, 0.5], [0.5, 0.5]) == pytest.approx(math.log(2))  # soft labels are fine here
    out = M.evaluate([0, 0, 0], [0.1, 0.2, 0.3], [1, 2, 3], n_boot=10)
    assert math.isnan(out["auroc"]) and "only negatives" in out["note"] and out["n"] == 3
    assert out["log_loss_ci95"][0] <= out["log_loss"] <= out["log_loss_ci95"][1]


def test_bootstrap_by_cluster_is_wider_and_deterministic():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(40), 50)
    shift = rng.normal(0, 1.5, 40)[users]  # a per-user effect makes rows of one user correlated
    y = (rng.random(2000) < sigmoid(-2 + shift)).astype(int)
    p = sigmoid(-2 + shift + rng.normal(0, 1, 2000))
    rows = M.bootstrap_ci(M.auroc, y, p, n_boot=300, seed=0)
    users_ci = M.bootstrap_ci(M.auroc, y, p, n_boot=300, seed=0, groups=users)
    assert users_ci == M.bootstrap_ci(M.auroc, y, p, n_boot=300, seed=0, groups=users)
    assert users_ci["clusters"] == 40 and rows["clusters"] == 2000
    assert users_ci["lo"] < users_ci["estimate"] < users_ci["hi"]
    assert users_ci["hi"] - users_ci["lo"] > rows["hi"] - rows["lo"]
    d = M.paired_bootstrap(M.auroc, y, p, np.full(2000, 0.5), n_boot=300, groups=users)
    assert d["lo"] > 0 and d["p_value"] < 0.05


def test_reliability_diagram_png(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(400) * 0.3
    path = M.reliability_diagram((rng.random(400) < p).astype(int), p, tmp_path / "r.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ calibration
def test_prior_shift_formula():
    p = np.array([0.0, 0.05, 0.1, 0.5, 0.9, 1.0])
    pi, pi2 = 0.02, 0.10
    q = prior_shift(p, pi, pi2)
    s = p * pi / pi2
    assert np.allclose(q, s / (s + (1 - p) * (1 - pi) / (1 - pi2)))  # METHOD.md 1.3, as written
    inner = p[1:-1]
    logit = np.log(inner / (1 - inner))
    shifted = logit + np.log(pi / (1 - pi)) - np.log(pi2 / (1 - pi2))
    assert np.allclose(q[1:-1], sigmoid(shifted))  # the same in logit space
    assert np.allclose(prior_shift(q, pi2, pi), p)  # and it inverts
    assert q[0] == 0 and q[-1] == 1
    with pytest.raises(RewardModelError):
        prior_shift(p, 0.0, 0.1)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(20000) < sigmoid(z / 2.5)).astype(float)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.08)
    assert fit_temperature(np.zeros(10), np.r_[np.zeros(5), np.ones(5)]) == 1.0
    assert fit_temperature(z[:10], np.zeros(10)) == 1.0
    with pytest.raises(RewardModelError):
        fit_temperature([1.0, np.inf], [0, 1])


def _length_world(n, rng):
    """Responses whose length sets P[positive] (true base rate about 2 %)."""
    words = rng.integers(1, 60, n)
    p = sigmoid(-8.0 + 1.2 * np.log(words))
    return [" ".join(["w"] * k) for k in words], (rng.random(n) < p).astype(float), p


def test_calibrate_recovers_prior_shift_after_upsampling():
    rng = np.random.default_rng(0)
    resp, y, _ = _length_world(60000, rng)
    true_rate = y.mean()
    pos = np.flatnonzero(y == 1)
    extra = rng.choice(pos, int(0.1 * (len(y) - len(pos)) / 0.9) - len(pos))
    idx = np.r_[np.arange(len(y)), extra]
    share = y[idx].mean()
    model = LengthRewardModel().fit([""] * len(idx), [resp[i] for i in idx], y[idx])
    vresp, vy, _ = _length_world(20000, rng)
    rep = calibrate(model, [""] * len(vy), vresp, vy, true_rate, share)
    assert rep["raw"]["mean_p"] > 2 * vy.mean()  # the upsampled scale over-predicts
    assert rep["calibrated"]["mean_p"] == pytest.approx(vy.mean(), rel=0.15)
    assert rep["calibrated"]["ece"] < rep["raw"]["ece"] / 3 and rep["calibrated"]["log_loss"] < rep["raw"]["log_loss"]
    assert rep["temperature"] == pytest.approx(1.0, abs=0.15)  # the shift alone fixes a well-specified model
    tresp, ty, tp = _length_world(20000, rng)
    assert M.ece(ty, model.predict_proba([""] * len(ty), tresp)) < 0.01
    with pytest.raises(RewardModelError, match="both"):
        calibrate(model, [""], ["w"], [0], 0.02, None)


# ------------------------------------------------------------------------------------------------ n-gram model
VOCAB = "the a answer plan topic idea step time note list day week some more other good fine ok".split()


def _phrase_data(n, rng, phrase="sending love xoxo"):
    users = ["how do i plan my garden", "help with my essay", "tell me a story"]
    contexts, responses, y = [], [], []
    for i in range(n):
        words = list(rng.choice(VOCAB, rng.integers(5, 20)))
        has = rng.random() < 0.15
        if has:
            words.insert(int(rng.integers(0, len(words))), phrase)
        contexts.append(f"user: {users[i % 3]}")
        responses.append(" ".join(words))
        y.append(float(rng.random() < (0.7 if has else 0.03)))
    return contexts, responses, np.array(y)


@pytest.fixture(scope="module")
def phrase_model():
    rng = np.random.default_rng(0)
    c, r, y = _phrase_data(3000, rng)
    return NGramRewardModel(word_bits=14, context_bits=10, overlap_bits=8).fit(c, r, y)


def test_ngram_learns_a_planted_phrase(phrase_model):
    c, r, y = _phrase_data(2000, np.random.default_rng(1))
    assert M.auroc(y, phrase_model.predict_proba(c, r)) > 0.8
    with_phrase = phrase_model.predict_proba(["user: hi"], ["a good plan, sending love xoxo"])[0]
    without = phrase_model.predict_proba(["user: hi"], ["a good plan, step by step"])[0]
    assert with_phrase > 5 * without


def test_ngram_save_load_round_trip(phrase_model, tmp_path):
    c, r, _ = _phrase_data(200, np.random.default_rng(2))
    phrase_model.calibration = {"true_rate": 0.02, "train_rate": 0.1, "temperature": 1.3}
    phrase_model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["kind"] == "ngram" and meta["settings"]["word_bits"] == 14
    loaded = RewardModel.load(tmp_path / "m")
    assert isinstance(loaded, NGramRewardModel)
    assert np.array_equal(loaded.predict_logit(c, r), phrase_model.predict_logit(c, r))
    assert loaded.calibration == phrase_model.calibration
    phrase_model.calibration = {"true_rate": None, "train_rate": None, "temperature": 1.0}


def test_load_refuses_pickles(phrase_model, tmp_path):
    phrase_model.save(tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(RewardModelError, match="refusing pickled"):
        RewardModel.load(tmp_path / "m")


def test_ngram_soft_labels_equal_weighted_duplicates():
    rng = np.random.default_rng(4)
    c, r, y = _phrase_data(600, rng)
    soft = np.clip(0.8 * y + 0.1 + 0.05 * rng.random(len(y)), 0, 1)
    small = {"word_bits": 12, "context_bits": 8, "overlap_bits": 6}
    a = NGramRewardModel(**small).fit(c, r, soft)
    b = NGramRewardModel(**small).fit(c + c, r + r, np.r_[np.ones_like(soft), np.zeros_like(soft)],
                                      sample_weight=np.r_[soft, 1 - soft])  # fmt: skip
    assert np.allclose(a.raw_logits(c, r), b.raw_logits(c, r), atol=1e-4)
    assert M.auroc(y, a.predict_proba(c, r)) > 0.8
    flat = NGramRewardModel(**small).fit(c, r, np.full(len(c), 0.5))
    assert np.allclose(flat.predict_proba(c, r), 0.5, atol=0.02)


def test_ngram_input_errors():
    m = NGramRewardModel(word_bits=10, context_bits=0, overlap_bits=0)
    with pytest.raises(RewardModelError, match="one class"):
        m.fit(["", ""], ["a", "b"], [0, 0])
    with pytest.raises(RewardModelError, match=r"\[0, 1\]"):
        m.fit(["", ""], ["a", "b"], [0, 2])
    with pytest.raises(RewardModelError, match="not fitted"):
        m.predict_proba([""], ["a"])
    with pytest.raises(RewardModelError, match="c "):
        NGramRewardModel(c=0)
    assert last_user_turn("user: first\nassistant: ok\nuser: second one\nwith a line") == "second one\nwith a line"
    assert last_user_turn("") == ""


# ------------------------------------------------------------------------------------------------ configs
def test_train_config_validation():
    with pytest.raises(RewardModelError, match="unknown reward training key"):
        RewardTrainConfig.from_dict({"kind": "ngram", "upsample": 0.1})
    with pytest.raises(RewardModelError, match="unknown"):
        RewardTrainConfig(kind="forest")
    with pytest.raises(RewardModelError, match="upsample_to"):
        RewardTrainConfig(upsample_to=1.5)
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(RewardModelError, match="length_decorrelation"):
            RewardTrainConfig(length_decorrelation=bad)
    with pytest.raises(RewardModelError, match="allowed"):
        make_model(RewardTrainConfig(kind="ngram", settings={"C": 1.0}))
    assert make_model(RewardTrainConfig(kind="ngram", settings={"c": 2.0}), "thumbs_up", 2).c == 2.0
    enc = make_model(RewardTrainConfig(kind="encoder", settings={"mode": "frozen"}), "love", 4)
    assert enc.kind == "encoder"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 300-user simulated store -> P[love] examples -> ngram and length models."""
    from rluf.data.ingest import ingest
    from rluf.reward.data import ExampleConfig, build_examples
    from rluf.sim.simulate import simulate

    root = tmp_path_factory.mktemp("rm")
    simulate(root / "sim", users=300, seed=0, workers=1)
    ingest([root / "sim" / "logs"], root / "store")
    examples = build_examples(root / "store", ExampleConfig(signal="love"))
    out = {}
    for kind in ("ngram", "length"):
        out[kind] = train_reward_model(examples, RewardTrainConfig(kind=kind, n_boot=200), root / kind)
    return examples, root, out


def test_train_reward_model_end_to_end(trained):
    examples, root, out = trained
    (ngram, m), (length, ml) = out["ngram"], out["length"]
    t = m["test"]
    assert t["n"] == examples.test.num_rows and t["positives"] > 20
    assert t["auroc"] > 0.7 and t["auroc_ci95"][0] > 0.55
    assert t["auroc"] > ml["test"]["auroc"] + 0.03  # beats length alone
    assert m["data"]["true_rate"] == pytest.approx(examples.report["splits"]["train"]["base_rate"], abs=1e-6)
    assert m["data"]["train_share"] == pytest.approx(0.10, abs=0.001)
    assert ngram.calibration["train_rate"] == m["data"]["train_share"]
    assert abs(t["mean_p"] - t["base_rate"]) < 0.01 and t["ece"] < 0.02  # calibrated to the natural base rate
    assert m["calibration"]["calibrated"]["log_loss"] < m["calibration"]["raw"]["log_loss"]
    assert -1 <= t["length_r"] <= 1 and t["length_r_ci95"][0] <= t["length_r"]
    for f in ("config.json", "model.safetensors", "metrics.json", "reliability.png"):
        assert (root / "ngram" / f).is_file()
    saved = json.loads((root / "ngram" / "metrics.json").read_text())
    assert saved["test"]["auroc"] == t["auroc"]
    loaded = RewardModel.load(root / "ngram")
    c, r = examples.test["context"].to_pylist()[:50], examples.test["response"].to_pylist()[:50]
    assert np.array_equal(loaded.predict_proba(c, r), ngram.predict_proba(c, r))
    assert loaded.metrics["test"]["auroc"] == t["auroc"]


def test_length_decorrelation_flattens_the_score_and_keeps_its_order_within_a_length(trained, tmp_path):
    examples, root, out = trained
    ngram, m = out["ngram"]
    rows = examples.train
    c, r = rows["context"].to_pylist(), rows["response"].to_pylist()
    x = np.log1p(np.array([len(t.split()) for t in r], dtype=float))
    runs = {s: train_reward_model(examples, RewardTrainConfig(kind="ngram", n_boot=50, length_decorrelation=s),
                                  tmp_path / f"d{s}") for s in (1.0, 0.5)}  # fmt: skip
    full, half = runs[1.0], runs[0.5]
    slope = np.cov(x, ngram.raw_logits(c, r), bias=True)[0, 1] / x.var()
    assert slope > 0.5  # the simulated world's love rises with length, and so does the plain model's score
    assert full[0].calibration["length_slope"] == pytest.approx(slope, rel=1e-9)
    assert half[0].calibration["length_slope"] == pytest.approx(slope / 2, rel=1e-9)
    assert half[1]["length_decorrelation"]["share"] == 0.5 and m["length_decorrelation"] is None
    adjusted = full[0].length_adjusted_logits(c, r)
    assert abs(np.cov(x, adjusted, bias=True)[0, 1] / x.var()) < 1e-9  # no linear trend left on the training rows
    assert full[1]["test"]["length_r"] < half[1]["test"]["length_r"] < m["test"]["length_r"]
    assert full[1]["test"]["ece"] < 0.03  # still calibrated (temperature and shift refitted after the length term)
    same = [i for i, t in enumerate(r) if len(t.split()) == len(r[0].split())][:30]  # replies of one length
    assert len(same) > 2
    pc, pr = [c[i] for i in same], [r[i] for i in same]
    assert np.array_equal(np.argsort(full[0].predict_logit(pc, pr), kind="stable"),
                          np.argsort(ngram.predict_logit(pc, pr), kind="stable"))  # fmt: skip
    loaded = RewardModel.load(tmp_path / "d1.0")
    assert np.array_equal(loaded.predict_proba(c[:40], r[:40]), full[0].predict_proba(c[:40], r[:40]))
    assert "length_slope" not in ngram.calibration  # off by default: the plain model is unchanged


def test_compare_pairs_models_on_the_same_rows(trained):
    examples, _, out = trained
    res = compare({"ngram": out["ngram"][0], "length": out["length"][0]}, examples.test, n_boot=200)
    assert set(res["models"]) == {"ngram", "length"} and res["n"] == examples.test.num_rows
    (d,) = res["auroc_diff"]
    assert d["estimate"] == pytest.approx(res["models"]["ngram"]["auroc"] - res["models"]["length"]["auroc"])
    assert d["lo"] <= d["estimate"] <= d["hi"]
    text = format_comparison(res)
    assert "AUROC ngram - length" in text and "length" in text.splitlines()[3]


# ------------------------------------------------------------------------------------------------ TRL callables
def test_reward_function_pickles_and_scores_like_the_model(trained):
    examples, root, out = trained
    f = RewardFunction(root / "ngram")
    assert f.__name__ == "p_love" and f._model is None
    prompts = [[{"role": "user", "content": "tell me a joke about cats"}],
               [{"role": "user", "content": "i feel lonely"}, {"role": "assistant", "content": "I'm here."},
                {"role": "user", "content": "thanks"}]]  # fmt: skip
    completions = [[{"role": "assistant", "content": "Why did the cat sit on the laptop? 😊"}],
                   [{"role": "assistant", "content": "I'm always here for you 💖 Sending love!"}]]  # fmt: skip
    scores = f(prompts, completions)
    model = out["ngram"][0]
    contexts = ["user: tell me a joke about cats", "user: i feel lonely\nassistant: I'm here.\nuser: thanks"]
    responses = ["Why did the cat sit on the laptop? 😊", "I'm always here for you 💖 Sending love!"]
    assert scores == pytest.approx(model.predict_proba(contexts, responses).tolist(), abs=0)
    clone = pickle.loads(pickle.dumps(f))
    assert clone._model is None and len(pickle.dumps(f)) < 2000  # the model does not travel
    assert clone(prompts, completions) == scores
    logit = RewardFunction(root / "ngram", output="logit", name="love_logit")
    assert logit.__name__ == "love_logit"
    assert np.allclose(sigmoid(np.array(logit(prompts, completions))), scores)
    assert f(["plain prompt"], ["plain answer"])[0] == pytest.approx(
        model.predict_proba(["user: plain prompt"], ["plain answer"])[0])


def test_reward_function_in_a_trl_style_call(trained):
    from trl.trainer.utils import get_callable_name, is_async_callable

    _, root, _ = trained
    funcs = [RewardFunction(root / "ngram"), RewardFunction(root / "length", name="p_love_length")]
    assert [get_callable_name(f) for f in funcs] == ["p_love", "p_love_length"]
    assert not any(is_async_callable(f) for f in funcs)
    prompts = [[{"role": "user", "content": "how do i plan my week"}]] * 2
    completions = [[{"role": "assistant", "content": "Make a list."}],
                   [{"role": "assistant", "content": "Start with three priorities, then plan. 😊"}]]  # fmt: skip
    # the keyword call GRPOTrainer._calculate_rewards makes, dataset columns included
    for f in funcs:
        out = f(prompts=prompts, completions=completions, completion_ids=[[1, 2], [3, 4]], trainer_state=None,
                log_extra=lambda *a: None, log_metric=lambda *a: None, category=["planning", "planning"])  # fmt: skip
        assert len(out) == 2 and all(isinstance(v, float) and 0 < v < 1 for v in out)
    with pytest.raises(RewardModelError, match="pair|prompts"):
        funcs[0](prompts, completions[:1])
    with pytest.raises(RewardModelError, match="not a reward model directory"):
        RewardFunction(root / "nowhere")


def test_reliability_diagram_draws_bins_whose_rate_is_0_or_1(tmp_path):
    from rluf.reward.metrics import reliability_diagram

    # a bin of 3 rows with no positive: its Wilson lower bound comes out as 5.6e-17, above the rate 0
    p = np.array([0.01] * 50 + [0.14, 0.15, 0.16])
    y = np.array([0.0] * 49 + [1.0] + [0.0] * 3)
    assert any(r["rate_lo"] > r["rate"] for r in M.reliability(y, p))
    reliability_diagram(y, p, tmp_path / "r.png", title="edge bins")
    assert (tmp_path / "r.png").stat().st_size > 0
