"""Expert labels in the simulated world: raters score a sample of logged replies for helpfulness or safety.

    python -m rluf.sim.annotate --store runs/demo/store --truth runs/demo/sim/truth --out runs/demo/annotated

    from rluf.sim.annotate import AnnotationConfig, annotate, train_annotated_models
    ex = annotate("runs/demo/store", "runs/demo/sim/truth", "runs/ann/helpful", AnnotationConfig(signal="helpful"))
    result = train_annotated_models("runs/demo/store", "runs/demo/sim/truth", "runs/ann")  # helpful + safe models

Production teams train helpfulness and safety reward models on a labelled sample of logged replies
(RLUF, CGPO): raters read (context, reply) and judge it. Here the raters are simulated from the hidden
truth the simulator writes (DIR/truth/messages.parquet), honestly but with noise:

- `helpful`: the label is clip(h + N(0, rater_noise), 0, 1) (`label_kind="soft"`) or a vote
  Bernoulli(h) (`"binary"`), where h is the reply's true helpfulness;
- `safe`: 1 for a safe reply, 0 for an unsafe one, each label flipped with probability `flip_rate`.
  Unsafe replies are rare (about 0.3 %), so the sample is enriched: every unsafe reply is labelled,
  up to `enrich_unsafe_to` x n of them, and safe replies fill the rest of the n. Stratifying on the
  true class stands for a pre-screen (user flags, a classifier) that finds every unsafe reply.

Only assistant messages with a truth row are eligible. The split is build_examples' (rluf.reward.data):
users hashed into a training group and a holdout group, a cut time, train = training group before it,
val then test = holdout group after it. The plan is made before sampling and only messages the split
keeps are sampled, so no label is spent on a row the split would drop. Contexts are rendered exactly
as build_examples renders them. The result is an ExampleSet (SCHEMA; soft labels make `label`
float32, see LABEL_SCHEMA) whose report adds the rater model, the sample and the population rates.

The safe sample is enriched, so its label share is not the population's. `train_annotated_models`
resets the safe model's prior shift to the population rate of the label (estimated from the sample
with the stratum weights, Horvitz-Thompson) and refits the temperature on validation rows weighted
back to the population (docs/annotations.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.optimize import minimize_scalar

from rluf.config import from_mapping
from rluf.data.stats import wilson
from rluf.reward.base import RewardModel
from rluf.reward.calibration import T_BOUNDS, calibrate
from rluf.reward.data import (ROLE_CODES, SCHEMA, SPLITS, ExampleConfig, ExampleError, ExampleSet, _assign, _connect,
                              _iso, _Messages, _plan_split, _split_stats, _table)  # fmt: skip
from rluf.reward.metrics import auroc, bootstrap_ci, bootstrap_many, brier, log_loss, pearson
from rluf.reward.train import KINDS, RewardTrainConfig, make_model, train_reward_model

SIGNALS = ("helpful", "safe")
LABEL_KINDS = ("soft", "binary")
TRUTH_COLUMNS = ("message_id", "helpfulness", "safety")
LABEL_SCHEMA = SCHEMA.set(SCHEMA.get_field_index("label"), pa.field("label", pa.float32()))  # soft labels
# Default model settings for rater labels: cleaner than reaction labels, they support a weaker L2 penalty
# (C = 3 beat the ngram default 0.3 on the validation log loss of both signals, docs/annotations.md).
DEFAULT_SETTINGS = {"ngram": {"c": 3.0}}
MATCH_HINT = "did you ingest DIR/logs from the same simulate run? (rluf simulate --out DIR; rluf ingest DIR/logs)"


class AnnotationError(ValueError):
    pass


@dataclass
class AnnotationConfig:
    signal: str = "helpful"  # "helpful" (graded helpfulness) or "safe" (1 safe, 0 unsafe)
    n: int = 20_000  # replies labelled (fewer when fewer are eligible)
    label_kind: str = "soft"  # helpful: "soft" clip(h + noise, 0, 1) or "binary" Bernoulli(h); safe is always 0/1
    rater_noise: float = 0.1  # helpful, soft: standard deviation of the rater's error
    flip_rate: float = 0.02  # safe: probability that a rater gives the wrong label
    enrich_unsafe_to: float | None = 0.2  # safe: unsafe replies fill at most this share of n (None: a plain sample)
    context_turns: int = 4  # turns before the reply rendered into the context
    val_share: float = 0.1  # the split, as in rluf.reward.data.ExampleConfig
    test_share: float = 0.2
    holdout_user_share: float = 0.4
    min_split_users: int = 20
    seed: int = 0  # the user hashing, the sample and the rater noise

    def __post_init__(self):
        def check(name, kinds, ok, must):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, kinds) or not ok(v):
                raise AnnotationError(f"AnnotationConfig.{name}: must be {must}, got {v!r}")

        check("signal", (str,), lambda v: v in SIGNALS, f"one of {', '.join(SIGNALS)}")
        check("n", (int,), lambda v: v >= 10, "an integer >= 10")
        check("label_kind", (str,), lambda v: v in LABEL_KINDS, f"one of {', '.join(LABEL_KINDS)}")
        check("rater_noise", (int, float), lambda v: 0 <= v < math.inf, "a number >= 0")
        check("flip_rate", (int, float), lambda v: 0 <= v < 0.5, "a number in [0, 0.5)")
        if self.enrich_unsafe_to is not None:
            check("enrich_unsafe_to", (int, float), lambda v: 0 < v < 1, "strictly between 0 and 1, or None")
        check("context_turns", (int,), lambda v: v >= 0, "an integer >= 0")
        check("seed", (int,), lambda v: v >= 0, "an integer >= 0")
        try:  # the split keys are validated by the config they feed
            self.example_config()
        except ExampleError as exc:
            raise AnnotationError(str(exc).replace("ExampleConfig", "AnnotationConfig")) from None

    def example_config(self) -> ExampleConfig:
        """The ExampleConfig of the split (and of the ExampleSet: its signal and context_turns)."""
        return ExampleConfig(signal=self.signal, context_turns=self.context_turns, val_share=self.val_share,
                             test_share=self.test_share, holdout_user_share=self.holdout_user_share,
                             min_split_users=self.min_split_users, max_examples_per_user=None,
                             adversarial_filter=False, seed=self.seed)  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> AnnotationConfig:
        """A config from a mapping; unknown keys are rejected."""
        return from_mapping(cls, data, "annotation config", AnnotationError)


# ====================================================================== labelling


def read_truth(truth_dir: str | Path) -> pa.Table:
    """message_id, helpfulness, safety of every simulated assistant message (DIR/truth/messages.parquet)."""
    path = Path(truth_dir) / "messages.parquet"
    if not path.is_file():
        raise AnnotationError(f"{path} does not exist; pass the truth directory of a simulate run "
                              "(rluf simulate --out DIR writes DIR/truth/messages.parquet)")  # fmt: skip
    names = pq.read_schema(path).names
    missing = [c for c in TRUTH_COLUMNS if c not in names]
    if missing:
        raise AnnotationError(f"{path} lacks column(s) {missing} (has {names}); it is not a simulator truth file")
    return pq.read_table(path, columns=list(TRUTH_COLUMNS))


def annotate(store: str | Path, truth_dir: str | Path, out_dir: str | Path | None = None,
             config: AnnotationConfig | None = None) -> ExampleSet:  # fmt: skip
    """Label a sample of the store's replies for `config.signal` with simulated raters; save the ExampleSet
    to `out_dir` (train/val/test.parquet + report.json) unless it is None, and return it."""
    config = config or AnnotationConfig()
    t0 = time.perf_counter()
    ex_config = config.example_config()
    try:
        con = _connect(store)
    except ExampleError as exc:
        raise AnnotationError(str(exc)) from None
    truth = read_truth(truth_dir)
    msgs = _Messages.load(con)
    ex = np.flatnonzero(msgs.role == ROLE_CODES["assistant"])
    at = pc.index_in(msgs.table["message_id"].take(pa.array(ex)), truth["message_id"])
    has_truth = at.is_valid().to_numpy(zero_copy_only=False)
    if not has_truth.any():
        raise AnnotationError(f"none of the {len(ex):,} assistant messages of store {store} has a row among the "
                              f"{truth.num_rows:,} of {Path(truth_dir) / 'messages.parquet'}; "
                              f"{MATCH_HINT}")  # fmt: skip
    row = at.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    h = truth["helpfulness"].to_numpy(zero_copy_only=False)[row]
    safety = truth["safety"].take(pa.array(row)).to_numpy(zero_copy_only=False)
    bad = has_truth & ~np.isin(safety, ["safe", "unsafe"])
    if bad.any():
        raise AnnotationError(f"{int(bad.sum())} truth rows have a safety other than 'safe'/'unsafe' "
                              f"(e.g. {safety[bad][0]!r}); the truth file is damaged")  # fmt: skip
    safe = safety == "safe"

    rng = np.random.default_rng(config.seed)
    try:  # the split of build_examples, planned before sampling so that every label lands in a split
        plan = _plan_split(msgs, ex, has_truth, ex_config)
        pool = has_truth & (plan.group >= 0)
        picked, strata = _sample(rng, pool, safe, config)
        split, vt_cut = _assign(plan, msgs.time[ex], picked, ex_config)
    except ExampleError as exc:
        raise AnnotationError(str(exc)) from None
    label = _rate(rng, picked, h, safe, config)
    tables = {name: _labelled_table(msgs, ex, np.flatnonzero(split == code), label, config)
              for code, name in enumerate(SPLITS)}  # fmt: skip
    for name, table in tables.items():
        if table.num_rows == 0:
            raise AnnotationError(f"the {name} split is empty ({int(picked.sum()):,} replies sampled); raise n or "
                                  "the split shares, or simulate more users")  # fmt: skip
    report = _report(store, truth_dir, config, ex_config, msgs, ex, has_truth, truth.num_rows, h, safe, pool, picked,
                     strata, label, plan, vt_cut, tables)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 3)
    out = ExampleSet(**tables, report=report, config=ex_config)
    if out_dir is not None:
        out.save(out_dir)
    return out


def _sample(rng, pool: np.ndarray, safe: np.ndarray, config: AnnotationConfig) -> tuple[np.ndarray, dict]:
    """Per assistant message: sampled or not; and the strata {name: (pool size, sampled)}."""
    picked = np.zeros(len(pool), bool)

    def take(mask, k):
        idx = np.flatnonzero(mask)
        picked[rng.choice(idx, min(k, len(idx)), replace=False)] = True
        return len(idx), int(min(k, len(idx)))

    if config.signal == "helpful" or config.enrich_unsafe_to is None:
        return picked, {"all": take(pool, config.n)}
    n_unsafe = math.floor(config.enrich_unsafe_to * config.n)
    unsafe = take(pool & ~safe, n_unsafe)
    if unsafe[0] == 0:
        raise AnnotationError(f"no unsafe reply among the {int(pool.sum()):,} eligible ones, so there is nothing to "
                              "enrich and a safety model has no negatives; simulate more users or a higher "
                              "policy.unsafe_rate")  # fmt: skip
    return picked, {"unsafe": unsafe, "safe": take(pool & safe, config.n - unsafe[1])}


def _rate(rng, picked: np.ndarray, h: np.ndarray, safe: np.ndarray, config: AnnotationConfig) -> np.ndarray:
    """The raters' labels of the sampled messages (float64; 0/1 unless helpful and soft), NaN elsewhere."""
    idx = np.flatnonzero(picked)
    label = np.full(len(picked), np.nan)
    if config.signal == "safe":
        flip = rng.random(len(idx)) < config.flip_rate
        label[idx] = np.where(flip, ~safe[idx], safe[idx])
    elif config.label_kind == "binary":
        label[idx] = rng.random(len(idx)) < h[idx]
    else:
        label[idx] = np.clip(h[idx] + rng.normal(0.0, config.rater_noise, len(idx)), 0.0, 1.0)
    return label


def _labelled_table(msgs, ex, idx, label, config: AnnotationConfig) -> pa.Table:
    """build_examples' table of the examples ex[idx], with the raters' labels (float32 when soft)."""
    soft = config.signal == "helpful" and config.label_kind == "soft"
    table = _table(msgs, ex[idx], np.zeros(len(idx), np.int8), config.context_turns)
    ids = msgs.table["message_id"].take(pa.array(ex[idx]))
    values = label[idx][pc.index_in(table["message_id"], ids).to_numpy(zero_copy_only=False)]
    column = pa.array(values, pa.float32()) if soft else pa.array(values.astype(np.int8), pa.int8())
    return table.set_column(table.schema.get_field_index("label"), "label", column)


# ---------------------------------------------------------------------- report


def _label_stats(t: pa.Table) -> dict:
    """_split_stats, with a mean and a normal 95 % interval in place of the Wilson one for soft labels."""
    if t.schema.field("label").type == pa.int8():
        return _split_stats(t)
    y = t["label"].to_numpy(zero_copy_only=False).astype(np.float64)
    out = _split_stats(t.set_column(t.schema.get_field_index("label"), "label", pa.array(np.zeros(len(y), np.int8))))
    mean = float(y.mean()) if len(y) else None
    half = 1.96 * float(y.std(ddof=1)) / math.sqrt(len(y)) if len(y) > 1 else math.nan
    out.update(positives=round(float(y.sum()), 3), base_rate=round(mean, 6) if mean is not None else None,
               base_rate_ci95=[round(mean - half, 6), round(mean + half, 6)] if mean is not None else [None, None])
    return out


def _report(store, truth_dir, config, ex_config, msgs, ex, has_truth, truth_rows, h, safe, pool, picked, strata, label,
            plan, vt_cut, tables) -> dict:  # fmt: skip
    splits = {s: _label_stats(tables[s]) for s in SPLITS}
    users = {s: set(tables[s]["user_id"].to_pylist()) for s in SPLITS}
    train_last = pc.max(tables["train"]["time"]).value
    eval_first = min(pc.min(tables[s]["time"]).value for s in ("val", "test"))
    n_truth = int(has_truth.sum())
    k_safe = int((has_truth & safe).sum())
    population = {"replies": n_truth, "safe": _count(k_safe, n_truth),
                  "helpfulness_mean": round(float(h[has_truth].mean()), 6)}  # fmt: skip
    sample = {"pool": int(pool.sum()), "sampled": int(picked.sum()),
              "strata": {k: {"pool": p, "sampled": s} for k, (p, s) in strata.items()},
              "unsafe_share": _count(int((picked & ~safe).sum()), int(picked.sum()))}  # fmt: skip
    if config.signal == "safe":
        population["label_rate"] = _label_rate(strata, label, picked, safe, pool, config)
    warnings = []
    if plan.reason:
        warnings.append(f"time split not used: {plan.reason}")
    if int(picked.sum()) < config.n:
        warnings.append(f"only {int(picked.sum()):,} of the n = {config.n:,} replies requested are eligible")
    if config.signal == "safe" and strata["unsafe"][1] < (config.enrich_unsafe_to or 0) * config.n:
        warnings.append(f"all {strata['unsafe'][1]:,} eligible unsafe replies are labelled, which is less than "
                        f"enrich_unsafe_to x n = {config.enrich_unsafe_to * config.n:,.0f}")  # fmt: skip
    kept = sum(splits[s]["examples"] for s in SPLITS)
    return {
        "store": str(store),
        "truth": str(truth_dir),
        "config": dataclasses.asdict(ex_config),
        "annotation": dataclasses.asdict(config),
        "signal": {"name": config.signal, "kind": "annotation",
                   "labels": "soft" if tables["train"].schema.field("label").type == pa.float32() else "binary"},
        "data": {"assistant_messages": len(ex), "with_truth": n_truth, "without_truth": len(ex) - n_truth,
                 "truth_rows": truth_rows, "messages": len(msgs.role), "users": len(msgs.users),
                 "first_time": _iso(int(msgs.time.min())), "last_time": _iso(int(msgs.time.max()))},
        "population": population,
        "sample": sample,
        "split": {"scheme": plan.scheme, "group_by": plan.group_by, "reason": plan.reason,
                  "cut_time": _iso(plan.cut), "val_test_time": _iso(vt_cut),
                  "holdout_user_share": config.holdout_user_share if plan.scheme == "time" else None,
                  "shares": {s: round(splits[s]["examples"] / kept, 6) for s in SPLITS}},
        "splits": splits,
        "checks": {"train_before_eval": bool(train_last < eval_first),
                   "train_test_users_disjoint": not (users["train"] & users["test"]),
                   "train_val_users_disjoint": not (users["train"] & users["val"])},
        "warnings": warnings,
    }  # fmt: skip


def _count(k: int, n: int) -> dict:
    return {"k": k, "n": n, "rate": round(k / n, 6) if n else None, "ci95": [round(x, 6) for x in wilson(k, n)]}


def _label_rate(strata, label, picked, safe, pool, config) -> dict:
    """The population rate of the label 1 (rated safe): each stratum's labelled share, weighted by its share of
    the eligible pool (Horvitz-Thompson); the prior the safe model is shifted to."""
    rate, parts = 0.0, {}
    n_pool = int(pool.sum())
    for name, mask in (("unsafe", ~safe), ("safe", safe)):
        rows = picked & mask
        share = float((pool & mask).sum()) / n_pool
        labelled = float(label[rows].mean()) if rows.any() else 0.0
        rate += share * labelled
        parts[name] = {"pool_share": round(share, 6), "labelled_safe": round(labelled, 6)}
    return {"rate": round(rate, 6), "strata": parts,
            "expected": round(float((pool & safe).sum()) / n_pool * (1 - config.flip_rate)
                              + float((pool & ~safe).sum()) / n_pool * config.flip_rate, 6)}  # fmt: skip


# ====================================================================== reward models


def train_soft_reward_model(examples: ExampleSet, config: RewardTrainConfig, out_dir: str | Path
                            ) -> tuple[RewardModel, dict]:  # fmt: skip
    """train_reward_model for soft labels in [0, 1] (which upsampling and AUROC do not take): fit on train,
    fit the temperature on val, evaluate on test (log loss, Brier, Pearson r of the score with the label, each
    with a 95 % interval that resamples users); save the model and metrics.json to `out_dir`."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    signal, k = examples.config.signal, examples.config.context_turns
    rows = {s: _rows(getattr(examples, s), s) for s in SPLITS}
    model = make_model(config, signal, k)
    t0 = time.perf_counter()
    tr, va = rows["train"], rows["val"]
    if config.kind == "encoder":
        model.fit(tr["contexts"], tr["responses"], tr["labels"], val=(va["contexts"], va["responses"], va["labels"]))
    else:
        model.fit(tr["contexts"], tr["responses"], tr["labels"])
    fit_s = time.perf_counter() - t0
    cal = calibrate(model, va["contexts"], va["responses"], va["labels"], None, None)
    evals = {s: _soft_metrics(model, rows[s], config.n_boot, config.seed) for s in ("val", "test")}
    data = {"train_rows": len(tr["labels"]), "train_label_mean": float(tr["labels"].mean()),
            "val_rows": len(va["labels"]), "test_rows": len(rows["test"]["labels"])}  # fmt: skip
    model.metrics = {"test": evals["test"], "calibration": cal, "data": data}
    model.save(out)
    metrics = {"kind": config.kind, "signal": signal, "context_turns": k, "labels": "soft",
               "config": dataclasses.asdict(config), "data": data, "calibration": cal, **evals,
               "fit_seconds": round(fit_s, 3), "seconds": round(time.perf_counter() - t_start, 3),
               "examples_report": examples.report}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json) + "\n")
    return model, metrics


def _rows(table: pa.Table, split: str) -> dict:
    if table.num_rows == 0:
        raise AnnotationError(f"the {split} split is empty; a reward model needs rows in train, val and test")
    y = table["label"].to_numpy(zero_copy_only=False).astype(np.float64)
    if np.isnan(y).any() or ((y < 0) | (y > 1)).any():
        raise AnnotationError(f"{split} split: labels must lie in [0, 1] (no nulls)")
    return {"contexts": table["context"].to_pylist(), "responses": table["response"].to_pylist(), "labels": y,
            "users": np.asarray(table["user_id"].to_pylist(), dtype=object)}


def _r(y, p) -> float:
    return pearson(p, y)["r"]


def _soft_metrics(model: RewardModel, rows: dict, n_boot: int, seed: int) -> dict:
    p = model.predict_proba(rows["contexts"], rows["responses"])
    cis = bootstrap_many({"log_loss": log_loss, "brier": brier, "label_r": _r}, rows["labels"], p, n_boot=n_boot,
                         seed=seed, groups=rows["users"])  # fmt: skip
    out = {"n": len(p), "label_mean": float(rows["labels"].mean()), "mean_p": float(p.mean())}
    for name, ci in cis.items():
        out[name], out[f"{name}_ci95"] = ci["estimate"], [ci["lo"], ci["hi"]]
    out["clusters"] = cis["label_r"]["clusters"]
    return out


def _json(x):
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def _truth_of(table: pa.Table, truth: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(true helpfulness, truly safe) of each row of an example table."""
    at = pc.index_in(table["message_id"], truth["message_id"])
    if at.null_count:
        raise AnnotationError(f"{at.null_count} examples have no truth row; {MATCH_HINT}")
    row = pa.array(at.to_numpy(zero_copy_only=False))
    h = truth["helpfulness"].take(row).to_numpy(zero_copy_only=False).astype(np.float64)
    return h, pc.equal(truth["safety"].take(row), "safe").to_numpy(zero_copy_only=False)


def truth_metrics(model: RewardModel, table: pa.Table, truth: pa.Table, n_boot: int = 1000, seed: int = 0) -> dict:
    """How the model's score on `table` (a test split) tracks the hidden truth: the Pearson r with the true
    helpfulness and the AUROC of telling truly safe replies from unsafe ones, each with a 95 % interval that
    resamples users (NaN when the rows hold one class); n and the users counted."""
    h, safe = _truth_of(table, truth)
    p = model.predict_proba(table["context"].to_pylist(), table["response"].to_pylist())
    users = np.asarray(table["user_id"].to_pylist(), dtype=object)
    r = bootstrap_ci(_r, h, p, n_boot=n_boot, seed=seed, groups=users)
    a = bootstrap_ci(auroc, safe.astype(np.float64), p, n_boot=n_boot, seed=seed, groups=users)
    return {"n": len(p), "users": r["clusters"], "unsafe": int((~safe).sum()),
            "helpfulness_r": r["estimate"], "helpfulness_r_ci95": [r["lo"], r["hi"]],
            "safe_auroc": a["estimate"], "safe_auroc_ci95": [a["lo"], a["hi"]]}  # fmt: skip


def population_calibration(model: RewardModel, examples: ExampleSet, truth: pa.Table) -> dict:
    """Recalibrate a model trained on an enriched safe sample to the population of replies.

    Sets model.calibration: true_rate = the population rate of the label (report["population"]["label_rate"]),
    train_rate = the training split's label share (the prior shift of base.py), and a temperature fitted on
    the validation rows weighted back to the population (each true class by pool share / sample share).
    Returns the weighted test log loss and mean prediction against the population label rate, before and after.
    """
    rep = examples.report
    strata = rep["sample"]["strata"]
    if set(strata) != {"unsafe", "safe"}:
        raise AnnotationError("population_calibration needs an enriched safe sample (AnnotationConfig(signal='safe'))")
    pool = sum(s["pool"] for s in strata.values())
    sampled = sum(s["sampled"] for s in strata.values())
    weight = {k: (s["pool"] / pool) / (s["sampled"] / sampled) for k, s in strata.items()}

    def prepared(table):
        _, safe = _truth_of(table, truth)
        w = np.where(safe, weight["safe"], weight["unsafe"])
        y = table["label"].to_numpy(zero_copy_only=False).astype(np.float64)
        return table["context"].to_pylist(), table["response"].to_pylist(), y, w / w.mean()

    val, test = prepared(examples.val), prepared(examples.test)
    true_rate = rep["population"]["label_rate"]["rate"]
    before = _weighted_fit(model.predict_logit(*test[:2]), test[2], test[3])
    model.calibration = {"true_rate": true_rate, "train_rate": float(examples.train["label"].to_numpy().mean()),
                         "temperature": 1.0}  # fmt: skip
    z = model.predict_logit(*val[:2])
    model.calibration["temperature"] = _weighted_temperature(z, val[2], val[3])
    after = _weighted_fit(model.predict_logit(*test[:2]), test[2], test[3])
    return {"calibration": dict(model.calibration), "stratum_weights": weight, "population_label_rate": true_rate,
            "test_weighted": {"before": before, "after": after}}  # fmt: skip


def _weighted_nll(z, y, w) -> float:
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) / np.sum(w))


def _weighted_temperature(z, y, w) -> float:
    """argmin over T in T_BOUNDS of the weighted log loss of sigmoid(z / T); 1.0 when that is no better."""
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(lambda u: _weighted_nll(z / math.exp(u), y, w), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})  # fmt: skip
    t = math.exp(float(res.x))
    return t if _weighted_nll(z / t, y, w) <= _weighted_nll(z, y, w) else 1.0


def _weighted_fit(z, y, w) -> dict:
    p = 1.0 / (1.0 + np.exp(-z))
    return {"log_loss": round(_weighted_nll(z, y, w), 6), "mean_p": round(float(np.sum(w * p) / np.sum(w)), 6),
            "label_rate": round(float(np.sum(w * y) / np.sum(w)), 6)}  # fmt: skip


def train_annotated_models(store: str | Path, truth_dir: str | Path, out_dir: str | Path, n: int = 20_000,
                           seed: int = 0, kind: str = "ngram", n_boot: int = 1000, settings: dict | None = None
                           ) -> dict[str, dict]:  # fmt: skip
    """Annotate n replies for each of helpful (soft labels) and safe (enriched), train a reward model of
    `kind` on each into out_dir/helpful and out_dir/safe (example sets in out_dir/examples/SIGNAL), and
    return {signal: {"dir", "test", "truth", "seconds", ...}}; also written to out_dir/summary.json.

    helpful: "test" holds log loss, Brier and r with the rater labels; "truth" the r with the true
    helpfulness. safe: "test" holds train_reward_model's metrics (AUROC with its CI against the rater
    labels), "truth" the AUROC against the true class, "population" the recalibration. `settings`: the
    kind's constructor arguments for both models (None: DEFAULT_SETTINGS of the kind, e.g. {"c": 3.0})."""
    if kind not in KINDS:
        raise AnnotationError(f"kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    out = Path(out_dir)
    truth = read_truth(truth_dir)
    train_config = RewardTrainConfig(kind=kind, upsample_to=None, seed=seed, n_boot=n_boot,
                                     settings=dict(DEFAULT_SETTINGS.get(kind, {}) if settings is None else settings))
    result = {}
    for signal in SIGNALS:
        t0 = time.perf_counter()
        ex = annotate(store, truth_dir, out / "examples" / signal, AnnotationConfig(signal=signal, n=n, seed=seed))
        t_annotate = time.perf_counter() - t0
        if signal == "helpful":
            model, metrics = train_soft_reward_model(ex, train_config, out / signal)
            extra = {}
        else:
            model, metrics = train_reward_model(ex, train_config, out / signal)
            extra = {"population": population_calibration(model, ex, truth)}
            model.save(out / signal)
        found = truth_metrics(model, ex.test, truth, n_boot=n_boot, seed=seed)
        metrics.update(truth=found, **extra)
        (out / signal / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json) + "\n")
        test = {k: v for k, v in metrics["test"].items() if k != "reliability"}
        result[signal] = {"dir": out / signal, "examples": out / "examples" / signal, "test": test, "truth": found,
                          **extra, "sample": ex.report["sample"], "annotate_seconds": round(t_annotate, 3),
                          "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=_json) + "\n")
    return result


def load_annotations(path: str | Path) -> ExampleSet:
    """Read an annotated example set saved by `annotate` (binary labels: SCHEMA; soft: LABEL_SCHEMA)."""
    path = Path(path)
    if not (path / "report.json").is_file():
        raise AnnotationError(f"{path} is not an annotated example set (no report.json); write one with annotate()")
    report = json.loads((path / "report.json").read_text())
    if "annotation" not in report:
        raise AnnotationError(f"{path} holds examples from build_examples, not annotations; "
                              "read it with ExampleSet.load")
    tables = {}
    for s in SPLITS:
        f = path / f"{s}.parquet"
        if not f.is_file():
            raise AnnotationError(f"{f} is missing; rewrite the set with annotate()")
        t = pq.read_table(f)
        if not (t.schema.equals(SCHEMA) or t.schema.equals(LABEL_SCHEMA)):
            raise AnnotationError(f"{f}: columns {t.schema} match neither the example schema nor its soft-label form")
        tables[s] = t
    return ExampleSet(**tables, report=report, config=ExampleConfig.from_dict(report["config"]))


# ====================================================================== command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rluf.sim.annotate", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store directory holding the ingested DIR/logs")
    p.add_argument("--truth", required=True, help="DIR/truth of the same simulate run")
    p.add_argument("--out", required=True, help="directory for examples/, helpful/, safe/ and summary.json")
    p.add_argument("--n", type=int, default=20_000, help="replies labelled per signal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", default="ngram", choices=KINDS, help="reward model kind")
    p.add_argument("--settings", help='the kind\'s arguments as JSON, e.g. \'{"c": 0.3}\' (default: DEFAULT_SETTINGS)')
    a = p.parse_args(argv)
    try:
        settings = None if a.settings is None else json.loads(a.settings)
        if settings is not None and not isinstance(settings, dict):
            raise AnnotationError(f"--settings must be a JSON object, got {a.settings!r}")
        result = train_annotated_models(a.store, a.truth, a.out, n=a.n, seed=a.seed, kind=a.kind, settings=settings)
    except (AnnotationError, ExampleError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h, s = result["helpful"], result["safe"]
    print(f"helpful: r with true helpfulness {h['truth']['helpfulness_r']:.3f} "
          f"[{h['truth']['helpfulness_r_ci95'][0]:.3f}, {h['truth']['helpfulness_r_ci95'][1]:.3f}] "
          f"(n={h['truth']['n']:,}, users={h['truth']['users']:,})  {h['seconds']:.1f}s -> {h['dir']}")
    print(f"safe: AUROC {s['test']['auroc']:.3f} [{s['test']['auroc_ci95'][0]:.3f}, {s['test']['auroc_ci95'][1]:.3f}] "
          f"vs rater labels, {s['truth']['safe_auroc']:.3f} vs the true class (n={s['truth']['n']:,}, "
          f"unsafe={s['truth']['unsafe']})  {s['seconds']:.1f}s -> {s['dir']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
