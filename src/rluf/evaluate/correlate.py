"""Does the offline score predict what users do online? Pearson r across candidate policies.

    python -m rluf.evaluate.correlate --offline runs/demo/evaluate/offline/*.json --abtest runs/demo/online/abtest.json --out runs/demo/correlate

RLUF's offline check (the paper's Figure 3): the mean P[Love] of each candidate on a fixed prompt set
(`rluf evaluate offline`) against the Love rate the same candidate earned from users (an arm of an
online test, `rluf abtest`). `correlate(points)` takes one point per candidate,

    {"candidate": name, "offline": mean score, "offline_ci95": [lo, hi] or None,
     "online": rate, "online_ci95": [lo, hi] or None, "online_users": n}

and returns the Pearson r of offline against online with three intervals: a percentile bootstrap that
resamples candidates (the spread across the candidates one happened to train), Fisher's z interval
(normal theory), and a measurement bootstrap that redraws every point inside its own error (each
offline and online value from a normal with its reported standard error, the CI half-width / 1.96):
how much of r the finite prompt set and the finite traffic could move. Also Spearman's rho, the
least-squares line online = a + b offline, and `min_candidates` (10 by default) against n.

`points_from(offline_results, abtest_result, ...)` pairs `rluf evaluate offline` results with the arms
of an `rluf abtest` result by name (the offline result's `candidate` and the arm's `policy` must be
the same string); unmatched names are an error that lists both sides. `plot_correlation(result,
path)` draws the scatter with both error bars and the fitted line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

Z95 = 1.959963984540054
MIN_CANDIDATES = 10


class CorrelateError(ValueError):
    pass


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (NaN where either side has no variance)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def _se(ci: Sequence[float] | None) -> float:
    return 0.0 if not ci else (float(ci[1]) - float(ci[0])) / (2 * Z95)


def _check_points(points: Any) -> list[dict]:
    if not isinstance(points, (list, tuple)):
        raise CorrelateError(f"points must be a list of dicts, got {type(points).__name__}")
    out, seen = [], set()
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise CorrelateError(f"points[{i}] is a {type(p).__name__}, not a dict")
        for key in ("candidate", "offline", "online"):
            if key not in p:
                raise CorrelateError(f"points[{i}] has no {key!r}; each point needs candidate, offline and online")
        name = str(p["candidate"])
        if name in seen:
            raise CorrelateError(f"points[{i}]: candidate {name!r} appears twice; each candidate is one point")
        seen.add(name)
        for key in ("offline", "online"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise CorrelateError(f"points[{i}] ({name}): {key} = {v!r} is not a finite number")
        for key in ("offline_ci95", "online_ci95"):
            ci = p.get(key)
            if ci is not None and (not isinstance(ci, (list, tuple)) or len(ci) != 2 or not ci[0] <= ci[1]):
                raise CorrelateError(f"points[{i}] ({name}): {key} = {ci!r} must be [low, high] with low <= high, or None")
        out.append(dict(p, candidate=name))
    if len(out) < 3:
        raise CorrelateError(f"{len(out)} candidates: a correlation needs at least 3 (RLUF's check uses >= {MIN_CANDIDATES})")
    return out


def correlate(points: Sequence[dict], n_boot: int = 2000, seed: int = 0, min_candidates: int = MIN_CANDIDATES) -> dict:
    """Pearson r of offline against online across candidates, with its intervals (module docstring)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise CorrelateError(f"n_boot must be an int >= 100, got {n_boot!r}")
    pts = _check_points(points)
    x = np.array([p["offline"] for p in pts], dtype=np.float64)
    y = np.array([p["online"] for p in pts], dtype=np.float64)
    n = len(pts)
    r = float(_pearson(x, y))
    if not math.isfinite(r):
        raise CorrelateError("the offline or the online values do not vary across candidates: r is undefined")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = _pearson(x[idx], y[idx])
    ok = np.isfinite(boot)
    boot_ci = [float(v) for v in np.percentile(boot[ok], [2.5, 97.5])] if ok.sum() >= 2 else None
    sx = np.array([_se(p.get("offline_ci95")) for p in pts])
    sy = np.array([_se(p.get("online_ci95")) for p in pts])
    noisy = _pearson(x + rng.standard_normal((n_boot, n)) * sx, y + rng.standard_normal((n_boot, n)) * sy)
    noisy = noisy[np.isfinite(noisy)]
    fisher = None
    if n > 3 and abs(r) < 1:
        z, half = math.atanh(r), Z95 / math.sqrt(n - 3)
        fisher = [math.tanh(z - half), math.tanh(z + half)]
    slope, intercept = np.polyfit(x, y, 1)
    rho = stats.spearmanr(x, y).statistic
    return {
        "n_candidates": n,
        "min_candidates": min_candidates,
        "enough_candidates": n >= min_candidates,
        "pearson_r": r,
        "ci95": boot_ci,
        "ci95_method": f"percentile bootstrap over candidates ({n_boot} resamples)",
        "fisher_ci95": fisher,
        "measurement_ci95": [float(v) for v in np.percentile(noisy, [2.5, 97.5])] if len(noisy) >= 2 else None,
        "spearman_rho": float(rho) if math.isfinite(rho) else None,
        "fit": {"slope": float(slope), "intercept": float(intercept)},
        "points": pts,
        "settings": {"n_boot": n_boot, "seed": seed},
    }


def points_from(offline_results: Sequence[dict], abtest_result: dict, offline_metric: str = "love",
                online_metric: str = "love", offline_kind: str = "p") -> list[dict]:  # fmt: skip
    """One point per candidate: `rewards/<offline_metric>/<offline_kind>` of each offline result beside
    the `<online_metric>` rate of the abtest arm of the same name (control arm included)."""
    if not isinstance(abtest_result, dict) or "metrics" not in abtest_result:
        raise CorrelateError("abtest_result must be an `rluf abtest` result (a dict with 'metrics')")
    metrics = abtest_result["metrics"]
    if online_metric not in metrics:
        raise CorrelateError(f"the abtest result has no metric {online_metric!r}; it has {sorted(metrics)}")
    arms = metrics[online_metric]["arms"]
    offline: dict[str, dict] = {}
    for i, res in enumerate(offline_results):
        name = res.get("candidate") if isinstance(res, dict) else None
        if not name:
            raise CorrelateError(f"offline result {i} has no 'candidate' name; is it an `rluf evaluate offline` result?")
        entry = (res.get("rewards") or {}).get(offline_metric)
        if entry is None or offline_kind not in entry:
            raise CorrelateError(f"offline result {name!r} has no rewards/{offline_metric}/{offline_kind}; "
                                 f"it scored {sorted(res.get('rewards') or {})}: evaluate it with --model {offline_metric}=DIR")  # fmt: skip
        if name in offline:
            raise CorrelateError(f"two offline results are named {name!r}; name each candidate once (--name)")
        offline[name] = entry[offline_kind]
    missing = sorted(set(offline) - set(arms))  # arms without an offline result are left out
    if missing:
        raise CorrelateError(f"offline candidates without an online arm: {missing}; online arms: {sorted(arms)}; "
                             "serve each candidate as an arm of the same name (rluf evaluate online --arm NAME=DIR)")  # fmt: skip
    points = []
    for name, off in offline.items():
        arm = arms[name]
        if arm.get("value") is None:
            raise CorrelateError(f"arm {name!r} has no {online_metric} rate (no assistant messages in the window)")
        se = arm.get("se")
        ci = None if se is None or not math.isfinite(se) else [arm["value"] - Z95 * se, arm["value"] + Z95 * se]
        points.append({"candidate": name, "offline": off["mean"], "offline_ci95": off.get("ci95"),
                       "online": arm["value"], "online_ci95": ci, "online_users": arm.get("users"),
                       "online_messages": arm.get("messages")})  # fmt: skip
    return points


def plot_correlation(result: dict, path: str | Path, xlabel: str = "offline mean P[love] (fixed prompt set)",
                     ylabel: str = "online love rate (reactions per reply)") -> Path:  # fmt: skip
    """The scatter (one point per candidate, both 95 % error bars) and the least-squares line (Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = result["points"]
    x = np.array([p["offline"] for p in pts])
    y = np.array([p["online"] for p in pts])

    def err(values, key):
        lo = [v - p[key][0] if p.get(key) else 0.0 for v, p in zip(values, pts)]
        hi = [p[key][1] - v if p.get(key) else 0.0 for v, p in zip(values, pts)]
        return [np.maximum(lo, 0), np.maximum(hi, 0)]

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.errorbar(x, y, xerr=err(x, "offline_ci95"), yerr=err(y, "online_ci95"), fmt="o", color="#1c7ed6",
                ecolor="#a5d8ff", capsize=2, markersize=5)  # fmt: skip
    for p in pts:
        ax.annotate(p["candidate"], (p["offline"], p["online"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    xs = np.linspace(x.min(), x.max(), 2)
    ax.plot(xs, result["fit"]["intercept"] + result["fit"]["slope"] * xs, color="#495057", linewidth=1, linestyle="--")
    ci = result["ci95"]
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    ax.set_title(f"offline vs online across {result['n_candidates']} candidates: Pearson r = {result['pearson_r']:.3f}{ci_text}",
                 fontsize=10)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def format_result(result: dict) -> str:
    ci = result["ci95"]
    lines = [f"Pearson r {result['pearson_r']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
             + f" over {result['n_candidates']} candidates (bootstrap over candidates)"]  # fmt: skip
    if result["fisher_ci95"]:
        lines.append(f"  Fisher z interval [{result['fisher_ci95'][0]:+.3f}, {result['fisher_ci95'][1]:+.3f}]; "
                     f"Spearman rho {result['spearman_rho']:+.3f}")  # fmt: skip
    if result["measurement_ci95"]:
        lines.append(f"  within measurement error: [{result['measurement_ci95'][0]:+.3f}, {result['measurement_ci95'][1]:+.3f}]")
    if not result["enough_candidates"]:
        lines.append(f"  note: fewer than {result['min_candidates']} candidates; the interval is wide by construction")
    for p in sorted(result["points"], key=lambda p: p["offline"]):
        lines.append(f"  {p['candidate']:<28} offline {p['offline']:.4f}   online {p['online']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rluf evaluate correlate", description=__doc__.splitlines()[0])
    p.add_argument("--offline", nargs="+", required=True, metavar="FILE",
                   help="`rluf evaluate offline --out` results, one per candidate")
    p.add_argument("--abtest", required=True, metavar="FILE",
                   help="`rluf abtest --json` result whose arms are the candidates (same names)")
    p.add_argument("--out", required=True, help="directory for correlation.json and correlation.png")
    p.add_argument("--offline-metric", default="love", help="reward model name in the offline results (default love)")
    p.add_argument("--online-metric", default="love", help="metric of the abtest result (default the love reaction)")
    p.add_argument("--calibrated", action="store_true", help="use the calibrated score (vs the logged reply), not P")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        offline = [_read_json(f, "offline result") for f in a.offline]
        abtest = _read_json(a.abtest, "abtest result")
        points = points_from(offline, abtest, a.offline_metric, a.online_metric, "calibrated" if a.calibrated else "p")
        result = correlate(points, n_boot=a.n_boot, seed=a.seed)
    except CorrelateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "correlation.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_correlation(result, out / "correlation.png")
    print(format_result(result))
    print(f"wrote {out / 'correlation.json'} and {out / 'correlation.png'}")
    return 0


def _read_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise CorrelateError(f"{what} {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CorrelateError(f"{what} {path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


if __name__ == "__main__":
    sys.exit(main())
