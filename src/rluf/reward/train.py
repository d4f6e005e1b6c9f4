"""Train, calibrate and evaluate one reward model; compare several on the same test rows.

    python -c "
    from rluf.reward.data import ExampleConfig, build_examples
    from rluf.reward.train import RewardTrainConfig, train_reward_model
    ex = build_examples('runs/demo/store', ExampleConfig(signal='love'))
    model, metrics = train_reward_model(ex, RewardTrainConfig(kind='ngram'), 'runs/rm/ngram')
    print(metrics['test']['auroc'], metrics['test']['auroc_ci'])"

`train_reward_model` runs the recipe of METHOD.md 5.1:

1. upsample the positives of the training split to `upsample_to` (RLUF: 10 %);
2. fit the model of `kind` on it; with `length_decorrelation` s > 0, remove the share s of the linear
   rise of its logit with log(1 + response words), the slope fitted by least squares on the
   training split as logged (base.py, step 0);
3. calibrate on the validation split: the prior shift from the upsampled share back to the true base
   rate (the training split's, before upsampling), then a temperature (calibration.py);
4. evaluate on the test split (chronologically last): AUROC with a bootstrap 95 % interval that
   resamples users (their rows are not independent), average precision, log loss, Brier, ECE, the
   reliability diagram, and the Pearson r of the score with the response length;
5. write OUT/model.safetensors + OUT/config.json (the model), OUT/metrics.json and OUT/reliability.png.

`compare` scores several trained models on one test table and bootstraps the AUROC differences on
shared resamples (paired), so "A beats B" comes with an interval.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .base import LengthRewardModel, RewardModel, RewardModelError, _json_default, word_counts
from .calibration import calibrate
from .data import ExampleSet, upsample
from .metrics import auroc, evaluate, paired_bootstrap, reliability_diagram
from .ngram import NGramRewardModel

KINDS = ("ngram", "length", "encoder")
COLUMNS = ("user_id", "context", "response", "response_words", "label")  # what training and evaluation read


@dataclass
class RewardTrainConfig:
    kind: str = "ngram"  # "ngram" (hashed n-grams + logistic regression), "length" (baseline) or "encoder"
    upsample_to: float | None = 0.10  # share of positives after upsampling the training split (RLUF: 0.10); None: as is
    seed: int = 0  # seed of the upsampling and of the bootstrap
    n_boot: int = 1000  # bootstrap resamples for the AUROC intervals
    settings: dict = field(default_factory=dict)  # the kind's own constructor arguments, e.g. {"c": 1.0} for ngram
    out_dir: str | None = None  # where the artifacts go when train_reward_model gets no out_dir
    length_decorrelation: float = 0.0  # share in [0, 1] of the logit's linear rise with log(1 + words) removed (0: none)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RewardModelError(f"reward model kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.upsample_to is not None and (isinstance(self.upsample_to, bool) or not 0.0 < self.upsample_to < 1.0):
            raise RewardModelError(f"upsample_to must lie strictly in (0, 1) or be None, got {self.upsample_to!r}")
        if self.n_boot < 1:
            raise RewardModelError(f"n_boot must be >= 1, got {self.n_boot}")
        d = self.length_decorrelation
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise RewardModelError(f"length_decorrelation must be a number in [0, 1] (the share of the score's linear "
                                   f"rise with length to remove), got {d!r}")  # fmt: skip
        if not isinstance(self.settings, dict):
            raise RewardModelError(f"settings must map {self.kind} arguments, got {type(self.settings).__name__}")

    @classmethod
    def from_dict(cls, d: dict) -> "RewardTrainConfig":
        """Build from a mapping (a YAML file, CLI options); unknown keys are rejected."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RewardModelError(f"unknown reward training key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def make_model(config: RewardTrainConfig, signal: str = "love", context_turns: int = 4) -> RewardModel:
    """An unfitted model of `config.kind` built from `config.settings`, for examples of `signal` rendered with
    `context_turns` turns of context."""
    if config.kind == "ngram":
        cls = NGramRewardModel
    elif config.kind == "length":
        cls = LengthRewardModel
    else:
        try:
            from .encoder import EncoderRewardModel
        except ModuleNotFoundError as exc:
            raise RewardModelError(f"kind 'encoder' needs rluf.reward.encoder, which cannot be imported here ({exc}); "
                                   f"use kind 'ngram' or 'length'") from None  # fmt: skip
        cls = EncoderRewardModel
    try:
        return cls(signal, context_turns, **config.settings)
    except TypeError as exc:  # an unknown keyword
        params = sorted(set(inspect.signature(cls.__init__).parameters) - {"self", "signal", "context_turns"})
        raise RewardModelError(f"bad {config.kind} settings {sorted(config.settings)}: {exc}; allowed: {params}"
                               ) from None  # fmt: skip


def _columns(table: pa.Table, split: str) -> dict:
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise RewardModelError(f"{split} split lacks column(s) {missing}; build it with reward.data.build_examples")
    if table.num_rows == 0:
        raise RewardModelError(f"{split} split is empty; a reward model needs rows in train, val and test")
    y = table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    if np.isnan(y).any() or ((y < 0) | (y > 1)).any():
        raise RewardModelError(f"{split} split: labels must lie in [0, 1] (no nulls)")
    return {"contexts": table.column("context").to_pylist(), "responses": table.column("response").to_pylist(),
            "labels": y, "words": table.column("response_words").to_numpy(zero_copy_only=False).astype(np.float64),
            "users": np.asarray(table.column("user_id").to_pylist(), dtype=object)}  # fmt: skip


def _summary(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "reliability"}


def _json(x):
    if isinstance(x, (Path, datetime.date)):
        return str(x)
    return _json_default(x)


def length_trend(logits, words) -> tuple[float, float]:
    """(slope, center): the least-squares slope of `logits` on log(1 + words), and the mean log length.
    z - share * slope * (log(1 + words) - center) removes that share of the linear trend."""
    z, x = np.asarray(logits, dtype=np.float64), np.log1p(np.asarray(words, dtype=np.float64))
    if x.std() == 0:
        raise RewardModelError("length_decorrelation: every response has the same length; there is no length "
                               "trend to remove (set length_decorrelation to 0)")  # fmt: skip
    return float(np.cov(x, z, bias=True)[0, 1] / x.var()), float(x.mean())


def decorrelate_length(model: RewardModel, contexts: list[str], responses: list[str], share: float) -> dict:
    """Store in `model.calibration` the length term that removes `share` of the least-squares slope of the
    model's raw logit on log(1 + response words) over these rows (the training split as logged), centred
    on their mean log length; returns {"slope", "center", "share"}. At share 1 the adjusted logit has no
    linear trend in log length on these rows; the ranking within a length is unchanged."""
    slope, center = length_trend(model.raw_logits(contexts, responses), word_counts(responses))
    model.calibration["length_slope"] = share * slope
    model.calibration["length_center"] = center
    return {"slope": slope, "center": center, "share": share}


def evaluate_on(model: RewardModel, table: pa.Table, n_boot: int = 1000, seed: int = 0,
                reliability_png: str | Path | None = None) -> dict:  # fmt: skip
    """Every metric of `model` on an example table (metrics.evaluate: AUROC with its user-clustered bootstrap
    95 % CI, AP, log loss, Brier, ECE, reliability table, length r); optionally the reliability PNG."""
    rows = _columns(table, "evaluation")
    p = model.predict_proba(rows["contexts"], rows["responses"])
    out = evaluate(rows["labels"], p, rows["words"], groups=rows["users"], n_boot=n_boot, seed=seed)
    if reliability_png is not None:
        reliability_diagram(rows["labels"], p, reliability_png, title=f"{model.kind} P[{model.signal}]")
    return out


def train_reward_model(examples: ExampleSet, config: RewardTrainConfig, out_dir: str | Path | None = None
                       ) -> tuple[RewardModel, dict]:  # fmt: skip
    """Fit, calibrate and evaluate a reward model on `examples` (a rluf.reward.data.ExampleSet); save it with
    metrics.json and reliability.png to `out_dir` (default: config.out_dir); return (model, metrics).

    metrics: {"kind", "signal", "context_turns", "config", "data" (rows, positives, true base rate, upsampled
    share), "calibration" (calibrate's report on val), "length_decorrelation" (decorrelate_length's dict, or
    None), "val", "test" (evaluate's dict), "fit_seconds", "seconds"}."""
    t_start = time.perf_counter()
    if out_dir is None and not config.out_dir:
        raise RewardModelError("train_reward_model needs an output directory (out_dir or config.out_dir)")
    out = Path(out_dir if out_dir is not None else config.out_dir)
    signal, k = examples.config.signal, examples.config.context_turns
    train, val = _columns(examples.train, "train"), _columns(examples.val, "val")
    _columns(examples.test, "test")
    true_rate = float(train["labels"].mean())
    if not 0.0 < true_rate < 1.0:
        raise RewardModelError(f"the train split has base rate {true_rate}; it needs both positives and negatives")
    if config.upsample_to is not None and config.upsample_to > true_rate:
        fit_table, share = upsample(examples.train, target_share=config.upsample_to, seed=config.seed)
        fit_rows = _columns(fit_table, "upsampled train")
        shift = (true_rate, float(share))
    else:  # no upsampling (or already above the target): the model learns the true rate, no shift
        fit_rows, share, shift = train, true_rate, (None, None)

    model = make_model(config, signal, k)
    t0 = time.perf_counter()
    if config.kind == "encoder":
        model.fit(fit_rows["contexts"], fit_rows["responses"], fit_rows["labels"],
                  val=(val["contexts"], val["responses"], val["labels"]))  # fmt: skip
    else:
        model.fit(fit_rows["contexts"], fit_rows["responses"], fit_rows["labels"])
    fit_s = time.perf_counter() - t0
    length_term = None
    if config.length_decorrelation > 0:
        length_term = decorrelate_length(model, train["contexts"], train["responses"], config.length_decorrelation)
    cal = calibrate(model, val["contexts"], val["responses"], val["labels"], *shift)

    out.mkdir(parents=True, exist_ok=True)
    val_m = evaluate_on(model, examples.val, n_boot=config.n_boot, seed=config.seed)
    test_m = evaluate_on(model, examples.test, n_boot=config.n_boot, seed=config.seed,
                         reliability_png=out / "reliability.png")  # fmt: skip
    data = {"train_rows": len(train["labels"]), "train_positives": int(train["labels"].sum()), "true_rate": true_rate,
            "fit_rows": len(fit_rows["labels"]), "train_share": float(share), "val_rows": examples.val.num_rows,
            "test_rows": examples.test.num_rows}  # fmt: skip
    model.metrics = {"test": _summary(test_m), "calibration": cal, "data": data}
    model.save(out)
    metrics = {"kind": config.kind, "signal": signal, "context_turns": k, "config": dataclasses.asdict(config),
               "data": data, "calibration": cal, "length_decorrelation": length_term, "val": _summary(val_m),
               "test": test_m,
               "fit_seconds": round(fit_s, 3), "seconds": round(time.perf_counter() - t_start, 3),
               "examples_report": examples.report}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json) + "\n")
    return model, metrics


def compare(models: dict[str, RewardModel], test_table: pa.Table, n_boot: int = 1000, seed: int = 0) -> dict:
    """Evaluate every model on the same test rows; bootstrap each pair's AUROC difference on shared resamples
    of users. Returns {"n", "positives", "clusters", "models": {name: metrics}, "auroc_diff": [{"a", "b",
    "estimate", "lo", "hi", "p_value", ...}]}; `format_comparison` prints it."""
    if not models:
        raise RewardModelError("compare needs at least one model")
    rows = _columns(test_table, "test")
    probs = {name: m.predict_proba(rows["contexts"], rows["responses"]) for name, m in models.items()}
    y, groups = rows["labels"], rows["users"]
    per_model = {name: _summary(evaluate(y, p, rows["words"], groups=groups, n_boot=n_boot, seed=seed))
                 for name, p in probs.items()}  # fmt: skip
    diffs = []
    for a, b in itertools.combinations(models, 2):
        d = paired_bootstrap(auroc, y, probs[a], probs[b], n_boot=n_boot, seed=seed, groups=groups)
        diffs.append({"a": a, "b": b, **d})
    first = next(iter(per_model.values()))
    return {"n": first["n"], "positives": first["positives"], "clusters": len(set(groups.tolist())),
            "models": per_model, "auroc_diff": diffs}  # fmt: skip


def format_comparison(result: dict) -> str:
    """The side-by-side table of `compare`, one model a line, then the paired AUROC differences."""

    def f(x: float, d: int = 3) -> str:
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    lines = [f"test rows n={result['n']}  positives={result['positives']}  users={result['clusters']}",
             f"{'model':<16} {'AUROC':>6} {'95% CI':>15} {'AP':>6} {'logloss':>8} {'Brier':>7} {'ECE':>7} "
             f"{'len r':>6} {'95% CI':>15}"]  # fmt: skip
    for name, m in result["models"].items():
        lo, hi = m["auroc_ci95"]
        rlo, rhi = m["length_r_ci95"]
        lines.append(f"{name:<16} {f(m['auroc']):>6} {f'[{f(lo)}, {f(hi)}]':>15} {f(m['pr_auc']):>6} "
                     f"{f(m['log_loss'], 4):>8} {f(m['brier'], 4):>7} {f(m['ece'], 4):>7} {f(m['length_r']):>6} "
                     f"{f'[{f(rlo)}, {f(rhi)}]':>15}")  # fmt: skip
    for d in result["auroc_diff"]:
        lines.append(f"AUROC {d['a']} - {d['b']}: {d['estimate']:+.3f}  95% CI [{d['lo']:+.3f}, {d['hi']:+.3f}]  "
                     f"bootstrap p={d['p_value']:.3g}  (paired, {d['n_valid']} resamples of "
                     f"{d['clusters']} users)")  # fmt: skip
    return "\n".join(lines)
