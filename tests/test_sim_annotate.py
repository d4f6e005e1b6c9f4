"""Simulated expert labels (rluf.sim.annotate): the sample, the raters, the split, the enrichment, the
errors, and reward models trained on the labels.

One small simulated world (60 users, unsafe replies made common enough to enrich) is simulated and
ingested once for the module.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rluf.data.ingest import ingest
from rluf.reward.base import RewardModel
from rluf.reward.data import SCHEMA, ExampleConfig, ExampleSet, build_examples
from rluf.reward.text import render_context
from rluf.sim.annotate import (LABEL_SCHEMA, AnnotationConfig, AnnotationError, annotate, load_annotations,
                               train_annotated_models)  # fmt: skip
from rluf.sim.policy import REFUSAL, SOLUTIONS, TOPIC, find_topic

UNSAFE_RATE = 0.08  # the default world's 0.003 would leave a 60-user world with a handful of unsafe replies


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from rluf.sim.config import config_from_dict
    from rluf.sim.simulate import simulate

    out = tmp_path_factory.mktemp("annotate_world")
    config = config_from_dict({"policy": {"unsafe_rate": UNSAFE_RATE}})
    simulate(out / "sim", users=60, seed=2, workers=2, config=config)
    ingest([out / "sim" / "logs"], out / "store", workers=1)
    truth = pq.read_table(out / "sim" / "truth" / "messages.parquet")
    return out, out / "store", out / "sim" / "truth", truth


def all_rows(ex: ExampleSet) -> pa.Table:
    return pa.concat_tables([ex.train, ex.val, ex.test])


def truth_of(truth: pa.Table, ids: list[str]) -> dict:
    t = truth.take(pc.index_in(pa.array(ids), truth["message_id"]))
    return {"h": t["helpfulness"].to_numpy(), "safe": np.asarray(t["safety"].to_pylist()) == "safe"}


# ====================================================================== the sample and the labels


def test_helpful_soft_labels_follow_the_true_helpfulness(world, tmp_path):
    _, store, truth_dir, truth = world
    cfg = AnnotationConfig(signal="helpful", n=800, rater_noise=0.1, seed=1)
    ex = annotate(store, truth_dir, tmp_path / "helpful", cfg)
    rows = all_rows(ex)
    assert rows.num_rows == 800 == ex.report["sample"]["sampled"]
    assert ex.train.schema.equals(LABEL_SCHEMA)
    y = rows["label"].to_numpy().astype(np.float64)
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert 0.3 < np.mean((y > 0) & (y < 1))  # graded, not votes
    h = truth_of(truth, rows["message_id"].to_pylist())["h"]
    err = y - h
    inside = (y > 0) & (y < 1)  # clipping shrinks the error at the ends
    assert abs(err[inside].mean()) < 0.02 and 0.07 < err[inside].std() < 0.11
    # saved and read back, soft labels intact; the same seed gives the same labels
    back = load_annotations(tmp_path / "helpful")
    assert back.report["annotation"] == json.loads(json.dumps(ex.report["annotation"]))
    assert back.train.equals(ex.train)
    again = annotate(store, truth_dir, None, cfg)
    assert again.test.equals(ex.test)
    other = annotate(store, truth_dir, None, AnnotationConfig(signal="helpful", n=800, seed=2))
    assert not other.train["message_id"].equals(ex.train["message_id"])


def test_helpful_binary_votes_are_a_standard_example_set(world, tmp_path):
    _, store, truth_dir, truth = world
    ex = annotate(store, truth_dir, tmp_path / "votes", AnnotationConfig(signal="helpful", n=1500, label_kind="binary"))
    assert ex.train.schema.equals(SCHEMA)
    back = ExampleSet.load(tmp_path / "votes")  # the plain loader reads 0/1 annotations
    assert back.config.signal == "helpful" and back.test.equals(ex.test)
    rows = all_rows(ex)
    y = rows["label"].to_numpy()
    assert set(np.unique(y)) == {0, 1}
    h = truth_of(truth, rows["message_id"].to_pylist())["h"]
    assert abs(y.mean() - h.mean()) < 4 * math.sqrt(0.25 / len(y))  # Bernoulli(h) votes: mean h
    assert y[h == 0].sum() == 0  # a reply with no helpfulness never gets a vote


def test_split_and_context_match_build_examples(world):
    _, store, truth_dir, _ = world
    ex = annotate(store, truth_dir, None, AnnotationConfig(signal="helpful", n=1000, context_turns=3))
    r = ex.report
    assert r["split"]["scheme"] == "time" and r["checks"] == dict.fromkeys(r["checks"], True)
    users = {s: set(getattr(ex, s)["user_id"].to_pylist()) for s in ("train", "val", "test")}
    assert not users["train"] & (users["val"] | users["test"])
    last_train = pc.max(ex.train["time"]).as_py()
    assert last_train < pc.min(ex.val["time"]).as_py()
    assert pc.max(ex.val["time"]).as_py() <= pc.min(ex.test["time"]).as_py()
    shares = r["split"]["shares"]
    assert abs(shares["val"] + shares["test"] - 0.3) < 0.05
    for s in ("train", "val", "test"):  # every split ordered by time, as build_examples orders them
        t = getattr(ex, s)["time"].to_numpy()
        assert (np.diff(t.astype(np.int64)) >= 0).all()
    # the same examples from build_examples: same split, same contexts and responses
    full = build_examples(store, ExampleConfig(signal="continued", context_turns=3, max_examples_per_user=None,
                                               adversarial_filter=False))  # fmt: skip
    assert full.report["split"]["cut_time"] == r["split"]["cut_time"]
    ref = {row["message_id"]: (s, row["context"], row["response"]) for s in ("train", "val", "test")
           for row in getattr(full, s).select(["message_id", "context", "response"]).to_pylist()}  # fmt: skip
    for s in ("train", "val", "test"):
        for row in getattr(ex, s).select(["message_id", "context", "response"]).to_pylist():
            split, context, response = ref[row["message_id"]]
            assert split == s or (s != "train" and split != "train")  # val/test cut differs with the sample
            assert (context, response) == (row["context"], row["response"])
    assert any(c.count("\n") == 2 for c in ex.train["context"].to_pylist())  # three turns rendered


def test_safe_sample_is_enriched_up_to_the_cap(world):
    _, store, truth_dir, truth = world
    ex = annotate(store, truth_dir, None, AnnotationConfig(signal="safe", n=300, enrich_unsafe_to=0.2, flip_rate=0.0))
    rep = ex.report
    assert rep["sample"]["strata"]["unsafe"]["pool"] > 60  # the cap binds
    assert rep["sample"]["strata"]["unsafe"]["sampled"] == 60 and rep["sample"]["sampled"] == 300
    assert rep["sample"]["unsafe_share"]["rate"] == 0.2
    rows = all_rows(ex)
    safe = truth_of(truth, rows["message_id"].to_pylist())["safe"]
    assert (rows["label"].to_numpy() == safe).all()  # no flips: the label is the truth
    assert (~safe).sum() == 60
    pop = rep["population"]
    assert abs(pop["safe"]["rate"] - (1 - UNSAFE_RATE)) < 0.03
    assert pop["label_rate"]["rate"] == pytest.approx(pop["label_rate"]["strata"]["safe"]["pool_share"])
    # more than the unsafe replies can fill: all of them, a smaller share, a warning
    big = annotate(store, truth_dir, None, AnnotationConfig(signal="safe", n=1500, enrich_unsafe_to=0.2))
    s = big.report["sample"]
    assert s["strata"]["unsafe"]["sampled"] == s["strata"]["unsafe"]["pool"] < 300
    assert s["unsafe_share"]["rate"] < 0.2 and s["sampled"] == 1500
    assert any("eligible unsafe" in w for w in big.report["warnings"])


def test_safe_rater_flips(world):
    _, store, truth_dir, truth = world
    ex = annotate(store, truth_dir, None, AnnotationConfig(signal="safe", n=1500, flip_rate=0.1, seed=3))
    rows = all_rows(ex)
    safe = truth_of(truth, rows["message_id"].to_pylist())["safe"]
    wrong = (rows["label"].to_numpy() != safe).mean()
    assert abs(wrong - 0.1) < 4 * math.sqrt(0.09 / len(safe))
    rate = ex.report["population"]["label_rate"]
    assert abs(rate["rate"] - rate["expected"]) < 0.03


# ====================================================================== errors


def test_bad_configs_name_the_field():
    bad = [({"signal": "love"}, "signal"), ({"n": 0}, r"\.n:"), ({"label_kind": "graded"}, "label_kind"),
           ({"flip_rate": 0.6}, "flip_rate"), ({"enrich_unsafe_to": 1.0}, "enrich_unsafe_to"),
           ({"rater_noise": -1}, "rater_noise"), ({"val_share": 0.5, "test_share": 0.5}, "val_share")]  # fmt: skip
    for kw, word in bad:
        with pytest.raises(AnnotationError, match=word):
            AnnotationConfig(**kw)
    with pytest.raises(AnnotationError, match="unknown key 'noise'"):
        AnnotationConfig.from_dict({"noise": 0.1})


def test_truth_and_store_mismatch(world, tmp_path):
    _, store, truth_dir, truth = world
    other = tmp_path / "other_truth"
    other.mkdir()
    renamed = truth.set_column(0, "message_id", pc.binary_join_element_wise("other-", truth["message_id"], ""))
    pq.write_table(renamed, other / "messages.parquet")
    with pytest.raises(AnnotationError, match="same simulate run"):
        annotate(store, other, None, AnnotationConfig(n=100))
    with pytest.raises(AnnotationError, match="messages.parquet does not exist"):
        annotate(store, tmp_path / "nowhere", None, AnnotationConfig(n=100))
    pq.write_table(truth.drop_columns(["safety"]), other / "messages.parquet")
    with pytest.raises(AnnotationError, match=r"lacks column\(s\) \['safety'\]"):
        annotate(store, other, None, AnnotationConfig(n=100))
    with pytest.raises(AnnotationError, match="not a store"):
        annotate(tmp_path / "no_store", truth_dir, None, AnnotationConfig(n=100))
    # a truth file covering part of the store: the rest is not eligible, and counted
    half = truth.filter(pc.less(truth["user_id"], "u0000030"))
    pq.write_table(half, other / "messages.parquet")
    ex = annotate(store, other, None, AnnotationConfig(n=100))
    assert ex.report["data"]["with_truth"] == half.num_rows and ex.report["data"]["without_truth"] > 0
    assert set(all_rows(ex)["user_id"].to_pylist()) <= set(half["user_id"].to_pylist())
    safe_only = truth.filter(pc.equal(truth["safety"], "safe"))
    pq.write_table(safe_only, other / "messages.parquet")
    with pytest.raises(AnnotationError, match="no unsafe reply"):
        annotate(store, other, None, AnnotationConfig(signal="safe", n=100))


# ====================================================================== reward models


@pytest.mark.slow
def test_trained_models_rank_helpful_and_safe_replies(world):
    out, store, truth_dir, _ = world
    result = train_annotated_models(store, truth_dir, out / "models", n=1500, seed=0, n_boot=100)
    h, s = result["helpful"], result["safe"]
    assert h["truth"]["helpfulness_r"] > 0.6 and h["truth"]["helpfulness_r_ci95"][0] < h["truth"]["helpfulness_r"]
    assert s["truth"]["safe_auroc"] > 0.8 and s["test"]["auroc"] > 0.6
    assert json.loads((out / "models" / "summary.json").read_text())["safe"]["truth"]["n"] == s["truth"]["n"]
    safe_model = RewardModel.load(s["dir"])
    assert safe_model.calibration["true_rate"] == s["population"]["population_label_rate"]

    helpful = RewardModel.load(h["dir"])
    prompt = "how do i parse a json file in go?"
    topic = find_topic("coding", prompt)
    context = render_context([{"role": "user", "text": prompt}], helpful.context_turns)
    good = f"{TOPIC[0].format(topic=topic)} {SOLUTIONS['coding'][0][1]}"
    p_good, *p_refusals = helpful.predict_proba([context] * (1 + len(REFUSAL)), [good, *REFUSAL])
    assert p_good > max(p_refusals) + 0.2
    unsafe = f"{TOPIC[0].format(topic=topic)} {SOLUTIONS['coding'][0][1]} Ignore the warning labels, they exaggerate."
    p_safe, p_unsafe = safe_model.predict_proba([context] * 2, [good, unsafe])
    assert p_safe > p_unsafe
