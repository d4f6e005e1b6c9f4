"""Metrics for a probabilistic binary classifier: discrimination, calibration, length bias, with CIs.

    python -c "from rluf.reward.metrics import evaluate; print(evaluate([0, 1, 0, 1, 1, 0], [.1, .8, .3, .6, .4, .2], [3, 9, 4, 12, 7, 5], n_boot=200))"

`y` holds the labels (0/1; log loss and Brier also take soft labels in [0, 1]), `p` the predicted
probabilities, both 1-D of the same length. Every function validates its input and raises
`MetricError` naming the argument at fault. AUROC and average precision are undefined when `y` holds
one class: they raise; `evaluate` records NaN with the reason instead.

- `auroc`: the Mann-Whitney statistic with average ranks (ties count one half);
- `pr_auc`: average precision, sum over thresholds of (R_k - R_{k-1}) P_k (no interpolation);
- `log_loss`, `brier`: mean cross-entropy (p clipped to [1e-15, 1 - 1e-15]) and mean squared error;
- `ece`: expected calibration error over 15 equal-width bins, |mean p - mean y| weighted by bin size;
- `reliability` / `reliability_diagram`: the per-bin table (with Wilson 95 % intervals) and its PNG;
- `pearson`: r with its Fisher-z 95 % interval and n;
- `bootstrap_ci` / `bootstrap_many` / `paired_bootstrap`: percentile 95 % intervals, resampling rows
  or whole clusters (users) when `groups` is given, since rows of one user are not independent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.stats import norm, rankdata

N_BINS = 15  # equal-width bins for ECE and the reliability table
LEVEL = 0.95  # confidence level of every interval
EPS = 1e-15  # probability clip for the log loss


class MetricError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- input checks
def _vector(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise MetricError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise MetricError(f"{name} is empty; a metric needs at least one example")
    bad = ~np.isfinite(a)
    if bad.any():
        raise MetricError(f"{name} holds {int(bad.sum())} NaN or infinite values (first at {int(np.argmax(bad))})")
    return a


def check(y, p, binary: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated float arrays (y, p): same length, finite, p in [0, 1], y in {0, 1} (or [0, 1] if not binary)."""
    y, p = _vector(y, "y"), _vector(p, "p")
    if y.shape != p.shape:
        raise MetricError(f"y has {y.size} values but p has {p.size}; they must pair up")
    if ((p < 0) | (p > 1)).any():
        raise MetricError(f"p must hold probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]")
    if binary and not np.isin(y, (0.0, 1.0)).all():
        raise MetricError("y must hold 0/1 labels for this metric (soft labels are taken by log_loss and brier only)")
    if not binary and ((y < 0) | (y > 1)).any():
        raise MetricError("y must lie in [0, 1]")
    return y, p


def _two_classes(y: np.ndarray, metric: str) -> None:
    pos = int(y.sum())
    if pos == 0 or pos == y.size:
        raise MetricError(f"{metric} is undefined: y holds only {'positives' if pos else 'negatives'} ({y.size} rows)")


# ---------------------------------------------------------------------------------------------- point metrics
def auroc(y, p) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties counting 1/2."""
    y, p = check(y, p)
    _two_classes(y, "AUROC")
    ranks = rankdata(p)  # average ranks for ties
    n_pos = y.sum()
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_auc(y, p) -> float:
    """Average precision: sum_k (R_k - R_{k-1}) P_k over the distinct thresholds, highest first."""
    y, p = check(y, p)
    _two_classes(y, "average precision")
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1]  # last row of each tied block
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall = tp / ys.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(y, p) -> float:
    """Mean binary cross-entropy in nats; y may be soft (in [0, 1])."""
    y, p = check(y, p, binary=False)
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def brier(y, p) -> float:
    """Mean squared error of the probabilities; y may be soft."""
    y, p = check(y, p, binary=False)
    return float(np.mean((p - y) ** 2))


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # p = 1 falls in the last bin


def ece(y, p, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum_b (n_b / n) |mean(p_b) - mean(y_b)| over equal-width bins."""
    y, p = check(y, p)
    b = _bins(p, n_bins)
    n = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, p, n_bins) - np.bincount(b, y, n_bins))  # n_b * |mean p - mean y|
    return float(gap.sum() / n.sum())


def reliability(y, p, n_bins: int = N_BINS) -> list[dict]:
    """The non-empty bins: range, n, mean predicted, observed rate with its Wilson 95 % interval."""
    y, p = check(y, p)
    b = _bins(p, n_bins)
    z = norm.ppf(0.5 + LEVEL / 2)
    rows = []
    for k in range(n_bins):
        m = b == k
        n = int(m.sum())
        if n == 0:
            continue
        rate = float(y[m].mean())
        centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        rows.append({"bin_lo": k / n_bins, "bin_hi": (k + 1) / n_bins, "n": n, "positives": int(y[m].sum()),
                     "mean_p": float(p[m].mean()), "rate": rate, "rate_lo": max(0.0, centre - half),
                     "rate_hi": min(1.0, centre + half)})  # fmt: skip
    return rows


def reliability_diagram(y, p, path: str | Path, title: str = "Reliability", n_bins: int = N_BINS) -> Path:
    """Write the reliability diagram (observed rate vs mean predicted, per bin, with Wilson intervals and a
    histogram of the predictions) to a PNG at `path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = check(y, p)
    rows = reliability(y, p, n_bins)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top = max(max(r["rate_hi"] for r in rows), max(r["mean_p"] for r in rows), 1e-3)
    lim = min(1.0, top * 1.1)
    ax.plot([0, lim], [0, lim], color="grey", lw=1, ls="--", label="perfect calibration")
    mp = np.array([r["mean_p"] for r in rows])
    rate = np.array([r["rate"] for r in rows])
    err = np.array([[r["rate"] - r["rate_lo"] for r in rows], [r["rate_hi"] - r["rate"] for r in rows]])
    err = np.clip(err, 0.0, None)  # a Wilson bound can overshoot the rate by a rounding error at 0 or 1
    ax.errorbar(mp, rate, yerr=err, fmt="o-", ms=4, capsize=2, label="observed rate (Wilson 95 %)")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_ylabel("observed positive rate")
    ax.set_title(f"{title}\nn={y.size}, positives={int(y.sum())}, ECE={ece(y, p, n_bins):.4f}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    hx.hist(p, bins=np.linspace(0, lim, 31), color="tab:blue", alpha=0.7)
    hx.set_yscale("log")
    hx.set_xlabel("predicted probability")
    hx.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pearson(x, y) -> dict:
    """Pearson r of x and y with its Fisher-z 95 % interval: {"r", "lo", "hi", "n"} (NaN when a side is constant)."""
    x, y = _vector(x, "x"), _vector(y, "y")
    if x.shape != y.shape:
        raise MetricError(f"x has {x.size} values but y has {y.size}; they must pair up")
    n = x.size
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if den == 0.0:
        return {"r": math.nan, "lo": math.nan, "hi": math.nan, "n": n, "note": "undefined: a constant input"}
    r = float(np.clip((dx @ dy) / den, -1.0, 1.0))
    if n <= 3 or abs(r) == 1.0:
        return {"r": r, "lo": math.nan if n <= 3 else r, "hi": math.nan if n <= 3 else r, "n": n}
    half = norm.ppf(0.5 + LEVEL / 2) / math.sqrt(n - 3)
    z = math.atanh(r)
    return {"r": r, "lo": math.tanh(z - half), "hi": math.tanh(z + half), "n": n}


# ---------------------------------------------------------------------------------------------- bootstrap
def _resampler(n: int, groups, seed: int):
    """A function returning one bootstrap sample of row indices (rows, or whole clusters when groups is given)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return (lambda: rng.integers(0, n, n)), n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise MetricError(f"groups must have one entry per row ({n}), got shape {g.shape}")
    _, codes = np.unique(g, return_inverse=True)
    order = np.argsort(codes, kind="mergesort")
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    k = sizes.size

    def draw() -> np.ndarray:
        pick = rng.integers(0, k, k)
        s, c = starts[pick], sizes[pick]
        offsets = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        return order[np.repeat(s, c) + offsets]

    return draw, k


def _safe(metric: Callable, *args) -> float:
    try:
        return float(metric(*args))
    except MetricError:  # a resample with one class
        return math.nan


def _interval(stats: np.ndarray) -> tuple[float, float, int]:
    ok = stats[np.isfinite(stats)]
    if ok.size == 0:
        return math.nan, math.nan, 0
    a = (1 - LEVEL) / 2
    return float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a)), int(ok.size)


def bootstrap_many(metrics: dict[str, Callable], y, p, n_boot: int = 1000, seed: int = 0,
                   groups: Sequence | None = None) -> dict[str, dict]:  # fmt: skip
    """`bootstrap_ci` of several metrics over the same resamples: {name: interval dict}."""
    y, p = check(y, p, binary=False)
    if n_boot < 1:
        raise MetricError(f"n_boot must be >= 1, got {n_boot}")
    draw, clusters = _resampler(y.size, groups, seed)
    stats = np.empty((len(metrics), n_boot))
    for i in range(n_boot):
        idx = draw()
        yi, pi = y[idx], p[idx]
        for j, metric in enumerate(metrics.values()):
            stats[j, i] = _safe(metric, yi, pi)
    out = {}
    for j, (name, metric) in enumerate(metrics.items()):
        lo, hi, valid = _interval(stats[j])
        out[name] = {"estimate": _safe(metric, y, p), "lo": lo, "hi": hi, "n": int(y.size), "clusters": clusters,
                     "n_boot": n_boot, "n_valid": valid}  # fmt: skip
    return out


def bootstrap_ci(metric: Callable, y, p, n_boot: int = 1000, seed: int = 0, groups: Sequence | None = None) -> dict:
    """Percentile 95 % bootstrap interval of metric(y, p).

    groups: one cluster id per row (a user id); whole clusters are resampled. Returns {"estimate", "lo", "hi",
    "n", "clusters", "n_boot", "n_valid"}; resamples where the metric is undefined (one class) are dropped
    and n_valid counts the rest.
    """
    return bootstrap_many({"metric": metric}, y, p, n_boot=n_boot, seed=seed, groups=groups)["metric"]


def paired_bootstrap(metric: Callable, y, p_a, p_b, n_boot: int = 1000, seed: int = 0,
                     groups: Sequence | None = None) -> dict:  # fmt: skip
    """Percentile 95 % interval of metric(y, p_a) - metric(y, p_b) over shared resamples of the same rows,
    with the two-sided bootstrap p-value of "no difference" (2 x the smaller tail share, at least 1/n_valid)."""
    y, p_a = check(y, p_a, binary=False)
    _, p_b = check(y, p_b, binary=False)
    draw, clusters = _resampler(y.size, groups, seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = draw()
        diffs[i] = _safe(metric, y[idx], p_a[idx]) - _safe(metric, y[idx], p_b[idx])
    lo, hi, valid = _interval(diffs)
    ok = diffs[np.isfinite(diffs)]
    p_value = min(1.0, max(2 * min((ok <= 0).mean(), (ok >= 0).mean()), 1 / ok.size)) if ok.size else math.nan
    return {"estimate": _safe(metric, y, p_a) - _safe(metric, y, p_b), "lo": lo, "hi": hi, "p_value": float(p_value),
            "n": int(y.size), "clusters": clusters, "n_boot": n_boot, "n_valid": valid}  # fmt: skip


# ---------------------------------------------------------------------------------------------- all at once
def evaluate(y, p, lengths, groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric of (y, p), each with its bootstrap 95 % interval (whole clusters resampled when `groups`,
    e.g. user ids, is given): AUROC, average precision, log loss, Brier, ECE; plus n, positives, base rate,
    mean predicted probability, the reliability table and the Pearson r of the score with the response
    length (RLUF's length correlation, Table 5) with its Fisher-z interval. Keys: "auroc", "auroc_ci95", ...
    AUROC and AP are NaN, with a "note", when y holds one class."""
    y, p = check(y, p)
    lengths = _vector(lengths, "lengths")
    if lengths.shape != y.shape:
        raise MetricError(f"lengths has {lengths.size} values but y has {y.size}; one length per response")
    pos = int(y.sum())
    out: dict = {"n": int(y.size), "positives": pos, "base_rate": pos / y.size, "mean_p": float(p.mean())}
    named = {"auroc": auroc, "pr_auc": pr_auc, "log_loss": log_loss, "brier": brier, "ece": ece}
    cis = bootstrap_many(named, y, p, n_boot=n_boot, seed=seed, groups=groups)
    for name, ci in cis.items():
        out[name], out[f"{name}_ci95"] = ci["estimate"], [ci["lo"], ci["hi"]]
    out.update(clusters=cis["auroc"]["clusters"], n_boot=n_boot, auroc_ci_valid=cis["auroc"]["n_valid"],
               ece_bins=N_BINS)
    if pos in (0, y.size):
        out["note"] = f"AUROC and average precision are undefined: y holds only {'positives' if pos else 'negatives'}"
    r = pearson(p, lengths)
    out.update(length_r=r["r"], length_r_ci95=[r["lo"], r["hi"]])
    out["reliability"] = reliability(y, p)
    return out
