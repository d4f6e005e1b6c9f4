"""Which reaction to optimise: how a user's rate of each reaction relates to their retention.

    from rluf.signals.retention import signal_retention, render_signals
    result = signal_retention("runs/demo/store", "runs/signals")   # writes signals.json, signals_vs_retention.png

For every reaction name the store holds, per user whose retention is known: the rate of that
reaction (reactions the user left on the assistant messages of their own conversations, divided by
the assistant messages they received), then across users the Pearson correlation of the rate with
retained (0/1) and a logistic-regression coefficient of retained on the standardised rate, each with
a user-level bootstrap 95 % interval; and the reaction rates by conversation category with Wilson
intervals. docs/signals.md describes every output key and how to read the chart.

The per-user aggregation runs in DuckDB; the bootstrap resamples users in numpy, vectorised over
resamples (the correlation from weighted moments, the logistic fit by Newton steps on all resamples
at once over the distinct (rate, retained) pairs).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from ..data.stats import wilson
from ..data.store import Store, StoreError


class SignalsError(ValueError):
    """Input the signals analysis cannot use (the message says what, where, and how to fix it)."""


@dataclass
class SignalsConfig:
    retention_days: tuple[int, int] = (14, 28)  # retained = active on days [start, end) after first seen
    n_boot: int = 1000  # user-level bootstrap resamples; 0 skips the intervals (they are then null)
    seed: int = 0  # seed of the bootstrap resampling
    min_assistant_messages: int = 1  # users who received fewer assistant messages are left out
    chunk_cells: int = 4_000_000  # users x resamples drawn at once (bounds memory: ~8 bytes x 3 per cell)
    max_newton_iter: int = 50  # Newton iterations of the logistic fit before a resample counts as failed
    max_categories: int = 50  # categories listed (the largest first)
    memory_limit: str = "1GB"  # DuckDB memory limit

    def __post_init__(self):
        start, end = self.retention_days
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
            raise SignalsError(f"retention_days={self.retention_days!r}: give (start, end) whole days with 0 <= start < end")
        if not isinstance(self.n_boot, int) or self.n_boot < 0:
            raise SignalsError(f"n_boot={self.n_boot!r}: give a whole number >= 0 (1000 is usual; 0 skips the intervals)")
        if not isinstance(self.min_assistant_messages, int) or self.min_assistant_messages < 1:
            raise SignalsError(f"min_assistant_messages={self.min_assistant_messages!r}: give a whole number >= 1 "
                               "(a rate needs at least one assistant message)")  # fmt: skip
        if self.chunk_cells < 1 or self.max_newton_iter < 1 or self.max_categories < 1:
            raise SignalsError("chunk_cells, max_newton_iter and max_categories must be >= 1")


# ---------------------------------------------------------------- entry point


def signal_retention(store: str | Path, out: str | Path, retention_days: tuple[int, int] = (14, 28), n_boot: int = 1000,
                     seed: int = 0, min_assistant_messages: int = 1) -> dict:  # fmt: skip
    """Analyse `store`, write OUT/signals.json and OUT/signals_vs_retention.png; return the JSON dict.

    Raises SignalsError for a missing or empty store, no user with known retention, no reactions,
    retention that does not vary, or bad arguments.
    """
    config = SignalsConfig(retention_days=tuple(retention_days), n_boot=n_boot, seed=seed,
                           min_assistant_messages=min_assistant_messages)  # fmt: skip
    result = analyse(store, config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SignalsError(f"{out} is a file; give an output directory")
    out.mkdir(parents=True, exist_ok=True)
    result["files"] = {"json": str(out / "signals.json"), "chart": str(out / "signals_vs_retention.png")}
    plot_signals(result, out / "signals_vs_retention.png")
    (out / "signals.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def analyse(store: str | Path, config: SignalsConfig | None = None) -> dict:
    """The analysis without writing files: the dict that signals.json holds (less `files`)."""
    config = config or SignalsConfig()
    t0 = time.perf_counter()
    data = load_user_rates(store, config)
    rates, y = data["rates"], data["retained"]
    names = data["names"]
    n = len(y)
    boot = bootstrap(rates, y, config.n_boot, config.seed, config.chunk_cells, config.max_newton_iter)
    signals = {}
    for j, name in enumerate(names):
        signals[name] = _signal_entry(name, j, data, boot)
    order = sorted(signals, key=lambda s: (signals[s]["correlation"]["value"] is None,
                                           -(signals[s]["correlation"]["value"] or 0.0), s))  # fmt: skip
    k_ret = int(y.sum())
    return {
        "store": str(store),
        "config": {**asdict(config), "retention_days": list(config.retention_days)},
        "users": data["users"],
        "assistant_messages": int(data["n_assistant"].sum()),
        "reactions": data["reaction_counts"],
        "base_retention": _rate(k_ret, n),
        "signals": {name: signals[name] for name in order},
        "by_category": data["by_category"],
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ---------------------------------------------------------------- per-user aggregation (DuckDB)


def load_user_rates(store: str | Path, config: SignalsConfig | None = None) -> dict:
    """Per analysed user: retained (0/1), assistant messages received and a rate per reaction name.

    Returns a dict with `user_ids` (n,), `retained` (n,) float, `n_assistant` (n,), `names` (R,),
    `counts` and `rates` (n, R), plus the `users`, `reaction_counts` and `by_category` summaries.
    """
    config = config or SignalsConfig()
    con = _connect(store, config)
    try:
        return _aggregate(con, store, config)
    finally:
        con.close()


def _connect(store: str | Path, config: SignalsConfig):
    s = Store(store)
    if s.root.exists() and not s.root.is_dir():
        raise SignalsError(f"{s.root} is a file, not a store directory; give the directory `rluf ingest --store` wrote")
    if not s.exists():
        raise SignalsError(f"{s.root}: no store here (no manifest.json); create one with `rluf ingest LOGS --store {s.root}`")
    try:
        con = s.connect(retention_days=config.retention_days, memory_limit=config.memory_limit)
    except StoreError as exc:
        raise SignalsError(str(exc)) from None
    con.execute("SET enable_progress_bar = false")
    return con


def _aggregate(con, store, config: SignalsConfig) -> dict:
    one = lambda q, *a: con.execute(q, list(a)).fetchone()  # noqa: E731
    n_messages, t_first, t_last = one("SELECT count(*), min(time), max(time) FROM messages")
    if n_messages == 0:
        raise SignalsError(f"{store}: the store holds no messages; ingest logs first (`rluf ingest LOGS --store {store}`)")
    con.execute("""
        CREATE TEMP TABLE am AS
        SELECT m.message_id, m.user_id, coalesce(m.category, c.category, '(none)') AS category
        FROM messages m LEFT JOIN conversations c USING (conversation_id)
        WHERE m.role = 'assistant'""")
    con.execute("CREATE TEMP TABLE uk AS SELECT user_id, retained FROM users")
    con.execute("""
        CREATE TEMP TABLE pu AS
        WITH k AS (SELECT uk.user_id, uk.retained, count(am.message_id) AS n_assistant
                   FROM uk LEFT JOIN am USING (user_id) WHERE uk.retained IS NOT NULL GROUP BY ALL)
        SELECT row_number() OVER (ORDER BY user_id) - 1 AS idx, user_id, retained, n_assistant
        FROM k WHERE n_assistant >= ?""", [config.min_assistant_messages])
    in_store, known = one("SELECT count(*), count(retained) FROM uk")
    analysed = one("SELECT count(*) FROM pu")[0]
    users = {"in_store": in_store, "retention_known": known, "window_not_elapsed": in_store - known,
             "below_min_assistant_messages": known - analysed, "analysed": analysed}  # fmt: skip
    start, end = config.retention_days
    if known == 0:
        span = (t_last - t_first).total_seconds() / 86_400
        raise SignalsError(_no_retention_message(store, span, t_first, t_last, start, end))
    if analysed == 0:
        raise SignalsError(f"{store}: none of the {known} users with known retention received "
                           f"min_assistant_messages={config.min_assistant_messages} assistant messages; lower it")  # fmt: skip

    con.execute("CREATE TEMP TABLE rx AS SELECT message_id, user_id, reaction FROM reactions")
    con.execute("CREATE TEMP TABLE rn AS SELECT reaction, row_number() OVER (ORDER BY reaction) - 1 AS j "
                "FROM (SELECT DISTINCT reaction FROM rx)")  # fmt: skip
    names = [r[0] for r in con.execute("SELECT reaction FROM rn ORDER BY j").fetchall()]
    if not names:
        events = one("SELECT count(*) FROM reaction_events")[0]
        raise SignalsError(f"{store}: no reactions stand in the store ({events} reaction events, every one removed or none "
                           "logged); the analysis needs reactions on assistant messages")  # fmt: skip
    # Reactions the user left on assistant messages of their own conversations, analysed users only.
    con.execute("""
        CREATE TEMP TABLE own AS
        SELECT pu.idx, am.category, r.reaction, rn.j
        FROM rx r JOIN am ON r.message_id = am.message_id AND r.user_id = am.user_id
        JOIN pu ON pu.user_id = am.user_id JOIN rn USING (reaction)""")
    total, on_other, by_other = one("""
        SELECT count(*), count(*) FILTER (WHERE am.message_id IS NULL),
               count(*) FILTER (WHERE am.message_id IS NOT NULL AND r.user_id <> am.user_id)
        FROM rx r LEFT JOIN am USING (message_id)""")
    used = one("SELECT count(*) FROM own")[0]
    reaction_counts = {"standing": total, "analysed": used, "on_non_assistant_messages": on_other,
                       "by_other_users": by_other, "of_users_not_analysed": total - on_other - by_other - used}  # fmt: skip
    if used == 0:
        raise SignalsError(f"{store}: none of the {analysed} analysed users reacted to an assistant message of their own "
                           f"conversations ({json.dumps(reaction_counts)}); the analysis needs such reactions")  # fmt: skip

    base = con.execute("SELECT user_id, retained::DOUBLE AS y, n_assistant FROM pu ORDER BY idx").fetchnumpy()
    y = np.asarray(base["y"], dtype=float)
    n_assistant = np.asarray(base["n_assistant"], dtype=float)
    counts = np.zeros((analysed, len(names)))
    long = con.execute("SELECT idx, j, count(*) AS k FROM own GROUP BY 1, 2").fetchnumpy()
    counts[np.asarray(long["idx"], dtype=np.int64), np.asarray(long["j"], dtype=np.int64)] = long["k"]
    if not np.any(y != y[0]):
        raise SignalsError(f"{store}: all {analysed} analysed users have retained={bool(y[0])} (active on days "
                           f"{start}-{end - 1} after first seen); a correlation with retention needs both outcomes "
                           "(try another retention_days window, or more users)")  # fmt: skip
    return {
        "user_ids": list(base["user_id"]), "retained": y, "n_assistant": n_assistant, "names": names,
        "counts": counts, "rates": counts / n_assistant[:, None], "users": users,
        "reaction_counts": reaction_counts, "by_category": _by_category(con, names, config.max_categories),
    }  # fmt: skip


def _no_retention_message(store, span_days: float, t_first, t_last, start: int, end: int) -> str:
    msg = (f"{store}: no user's retention is known. The logs span {span_days:.1f} days ({t_first:%Y-%m-%d} .. "
           f"{t_last:%Y-%m-%d}), and retention (active on days {start}-{end - 1} after first seen) is known only for "
           f"users first seen at least {end} days before the last message.")  # fmt: skip
    usable = int(span_days)
    if usable >= 2:
        s, e = usable // 2, usable
        msg += f" Use a window that fits, e.g. retention_days=({s}, {e}) (--retention-start {s} --retention-end {e}),"
    else:
        msg += " The logs are too short for any window;"
    return msg + " or ingest a users table with `retained` for each user."


def _by_category(con, names: list[str], max_categories: int) -> dict:
    rows = con.execute("""
        WITH n AS (SELECT am.category AS g, count(*) AS n FROM am SEMI JOIN pu USING (user_id) GROUP BY 1),
             k AS (SELECT category AS g, reaction, count(*) AS k FROM own GROUP BY 1, 2)
        SELECT n.g, n.n, k.reaction, coalesce(k.k, 0) FROM n LEFT JOIN k USING (g) ORDER BY n.n DESC, n.g""").fetchall()
    result: dict = {}
    for g, n, name, k in rows:
        entry = result.setdefault(g, {"assistant_messages": n, "rates": {}})
        if name is not None:
            entry["rates"][name] = _rate(k, n)
    for entry in result.values():
        entry["rates"] = {name: entry["rates"].get(name) or _rate(0, entry["assistant_messages"]) for name in names}
    if len(result) > max_categories:
        rest = list(result.values())[max_categories:]
        n_rest = sum(e["assistant_messages"] for e in rest)
        result = dict(list(result.items())[:max_categories])
        result["(other categories)"] = {"assistant_messages": n_rest, "rates": {
            name: _rate(sum(e["rates"][name]["k"] for e in rest), n_rest) for name in names}}  # fmt: skip
    return result


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(int(k), int(n))
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "ci95": [lo, hi]}


# ---------------------------------------------------------------- statistics (numpy)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r of x and y, or None when either has zero variance."""
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    if sxx <= _tiny(x) * len(x) or syy <= _tiny(y) * len(y):
        return None
    return float(xc @ yc / math.sqrt(sxx * syy))


def _tiny(x: np.ndarray) -> float:
    """Variance below which a column counts as constant (relative to its scale)."""
    scale = float(np.max(np.abs(x))) if len(x) else 0.0
    return (1e-12 * scale) ** 2 + 1e-300


def firth_logit(z: np.ndarray, y: np.ndarray, w: np.ndarray, a0: np.ndarray | float = 0.0, c0: np.ndarray | float = 0.0,
                max_iter: int = 50, tol: float = 1e-8, max_step: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Logistic regression of y on (1, z) with Firth's penalty, for many weightings at once.

    z, y: (U,) distinct covariate values and 0/1 outcomes; w: (B, U) frequency weights (one row per
    fit). Maximises sum w [y eta - log(1 + e^eta)] + 1/2 log det I (Firth 1993, Biometrika 80:27; the
    modified score U* = sum w (y - p + h (1/2 - p)) x with leverages h, Heinze & Schemper 2002), by
    Fisher-scoring steps capped at `max_step`. Unlike the plain maximum-likelihood fit it stays finite
    when the covariate separates the outcomes; for large n the two agree to O(1/n).
    Returns intercepts (B,), slopes (B,) and whether each fit converged (B,).
    """
    w = np.atleast_2d(np.asarray(w, dtype=float))
    b = w.shape[0]
    a = np.broadcast_to(np.asarray(a0, dtype=float), (b,)).copy()
    c = np.broadcast_to(np.asarray(c0, dtype=float), (b,)).copy()
    done = np.zeros(b, dtype=bool)
    z2 = z * z
    for _ in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        wa = w[act]
        p = expit(a[act, None] + c[act, None] * z)
        v = wa * p * (1 - p)
        i00, i01, i11 = v.sum(1), v @ z, v @ z2
        det = i00 * i11 - i01 * i01
        bad = ~(det > 0)
        det = np.where(bad, 1.0, det)
        lev = p * (1 - p) * (i11[:, None] - 2 * i01[:, None] * z + i00[:, None] * z2) / det[:, None]
        r = wa * (y - p + lev * (0.5 - p))
        u0, u1 = r.sum(1), r @ z
        da = (i11 * u0 - i01 * u1) / det
        dc = (i00 * u1 - i01 * u0) / det
        big = np.maximum(np.abs(da), np.abs(dc))
        scale = np.minimum(1.0, max_step / np.maximum(big, 1e-300))
        da, dc = np.where(bad, 0.0, da * scale), np.where(bad, 0.0, dc * scale)
        a[act] += da
        c[act] += dc
        done[act] = (big < tol * (1 + np.abs(c[act]))) & ~bad
        if np.any(bad):
            a[act[bad]] = np.nan
            c[act[bad]] = np.nan
            done[act[bad]] = True
    converged = done & np.isfinite(c)
    return a, c, converged


def bootstrap(rates: np.ndarray, y: np.ndarray, n_boot: int, seed: int = 0, chunk_cells: int = 4_000_000,
              max_newton_iter: int = 50) -> dict:  # fmt: skip
    """Point estimates and user-level bootstrap replicates for every column of `rates` (n, R) against y (n,).

    Each resample draws n users with replacement (the draws for resample b are
    rng.integers(0, n, n) in order, so the result does not depend on `chunk_cells`).
    Returns arrays keyed `r`, `coef`, `mean` (R,) for the full sample and `r_boot`, `coef_boot`,
    `mean_boot` (n_boot, R), NaN where a resample leaves the rate or retention constant or the fit
    does not converge; `sd` (R,) is the rate's standard deviation (population form).
    """
    n, n_r = rates.shape
    mean = rates.mean(0)
    sd = rates.std(0)
    xc, yc = rates - mean, y - y.mean()
    r = np.array([np.nan if (v := pearson(rates[:, j], y)) is None else v for j in range(n_r)])
    # Logistic fits run on the distinct (standardised rate, retained) pairs of each reaction:
    # fits[j] = (pair of each user (n,), z of each pair, retained of each pair, full-sample a, c).
    coef, fits = np.full(n_r, np.nan), {}
    for j in np.flatnonzero(~np.isnan(r)):
        x_vals, x_inv = np.unique(rates[:, j], return_inverse=True)
        pair_ids, pair = np.unique(x_inv.ravel() * 2 + (y > 0.5), return_inverse=True)
        pair = pair.ravel()
        z, yv = (x_vals[pair_ids // 2] - mean[j]) / sd[j], (pair_ids % 2).astype(float)
        a, c, ok = firth_logit(z, yv, np.bincount(pair, minlength=len(z))[None, :], max_iter=max_newton_iter)
        if ok[0]:
            coef[j], fits[j] = c[0], (pair, z, yv, a[0], c[0])
    out = {"r": r, "coef": coef, "mean": mean, "sd": sd,
           "r_boot": np.full((n_boot, n_r), np.nan), "coef_boot": np.full((n_boot, n_r), np.nan),
           "mean_boot": np.full((n_boot, n_r), np.nan)}  # fmt: skip
    if n_boot == 0:
        return out
    if fits:  # (pairs of all reactions) x users indicator: resample weights per pair in one product
        sizes = [len(f[1]) for f in fits.values()]
        offsets = dict(zip(fits, np.cumsum([0] + sizes)))
        pair_of = np.concatenate([f[0] + offsets[j] for j, f in fits.items()])
        gt = sp.csr_matrix((np.ones(len(pair_of)), (pair_of, np.tile(np.arange(n), len(fits)))), shape=(sum(sizes), n))
    moments = np.column_stack([xc, xc * xc, xc * yc[:, None], yc, yc * yc])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, chunk_cells // max(n, 1)))
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        idx = rng.integers(0, n, size=(b, n))
        w = np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)
        del idx
        m = (w @ moments) / n
        mx, mxx, mxy = m[:, :n_r], m[:, n_r:2 * n_r], m[:, 2 * n_r:3 * n_r]
        my, myy = m[:, 3 * n_r], m[:, 3 * n_r + 1]
        vx = np.maximum(mxx - mx * mx, 0.0)
        vy = np.maximum(myy - my * my, 0.0)
        valid = (vx > 1e-12 * np.maximum(sd * sd, 1e-300)) & (vy > 1e-12)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            rb = (mxy - mx * my[:, None]) / np.sqrt(vx * vy[:, None])
        out["r_boot"][s:s + b] = np.where(valid, rb, np.nan)
        out["mean_boot"][s:s + b] = mean + mx
        if fits:
            wg_all = np.asarray((gt @ w.T).T)
            for j, (_, z, yv, a0, c0) in fits.items():
                wg = wg_all[:, offsets[j]:offsets[j] + len(z)]
                _, c, ok = firth_logit(z, yv, wg, a0, c0, max_iter=max_newton_iter)
                # z is standardised by the full-sample sd; per 1 sd of the resample's own rate:
                coef_b = c * np.sqrt(vx[:, j]) / sd[j]
                out["coef_boot"][s:s + b, j] = np.where(ok & valid[:, j], coef_b, np.nan)
    return out


def _interval(values: np.ndarray) -> tuple[list[float] | None, int]:
    ok = values[np.isfinite(values)]
    if len(ok) < 2:
        return None, int(len(ok))
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return [float(lo), float(hi)], int(len(ok))


def _signal_entry(name: str, j: int, data: dict, boot: dict) -> dict:
    y, counts = data["retained"], data["counts"][:, j]
    n = len(y)
    has = counts > 0
    r, coef = boot["r"][j], boot["coef"][j]
    r_ci, r_valid = _interval(boot["r_boot"][:, j])
    c_ci, c_valid = _interval(boot["coef_boot"][:, j])
    m_ci, _ = _interval(boot["mean_boot"][:, j])
    note = None
    if np.isnan(r):
        note = (f"no analysed user left a {name!r} reaction" if not has.any() else
                f"every analysed user has the same {name!r} rate") + ": correlation and coefficient are undefined"  # fmt: skip
    elif np.isnan(coef):
        note = "the logistic fit did not converge"
    n_boot = boot["r_boot"].shape[0]
    if note is None and n_boot and min(r_valid, c_valid) < 0.95 * n_boot:
        note = (f"only {min(r_valid, c_valid)} of {n_boot} resamples had a varying rate and a converged fit; "
                "the interval rests on those (the reaction is rare)")  # fmt: skip
    fin = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
    return {
        "reaction": name,
        "n_users": n,
        "n_users_with_reaction": int(has.sum()),
        "reactions": int(counts.sum()),
        "mean_rate": {"value": float(boot["mean"][j]), "ci95": m_ci},
        "rate_sd": float(boot["sd"][j]),
        "correlation": {"value": fin(r), "ci95": r_ci if fin(r) is not None else None, "n_boot_valid": r_valid},
        "logit_coef_per_sd": {"value": fin(coef), "ci95": c_ci if fin(coef) is not None else None,
                              "n_boot_valid": c_valid},  # fmt: skip
        "odds_ratio_per_sd": {"value": None if fin(coef) is None else math.exp(coef),
                              "ci95": None if c_ci is None or fin(coef) is None else [math.exp(c_ci[0]), math.exp(c_ci[1])]},  # fmt: skip
        "retention_with_reaction": _rate(int(y[has].sum()), int(has.sum())),
        "retention_without_reaction": _rate(int(y[~has].sum()), int((~has).sum())),
        "note": note,
    }


# ---------------------------------------------------------------- outputs


def plot_signals(result: dict, path: str | Path) -> None:
    """Horizontal bars, one per reaction: Pearson r with retention and its 95 % interval (Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries = list(result["signals"].values())[::-1]  # largest r on top
    fig = Figure(figsize=(7.5, 1.6 + 0.45 * len(entries)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = np.arange(len(entries))
    vals = [e["correlation"]["value"] for e in entries]
    heights = [v if v is not None else 0.0 for v in vals]
    colours = ["#2f9e44" if (v or 0) > 0 else "#e03131" for v in vals]
    lo = [v - e["correlation"]["ci95"][0] if e["correlation"]["ci95"] and v is not None else 0 for v, e in zip(vals, entries)]
    hi = [e["correlation"]["ci95"][1] - v if e["correlation"]["ci95"] and v is not None else 0 for v, e in zip(vals, entries)]
    ax.barh(ys, heights, color=colours, xerr=[lo, hi], capsize=3, error_kw={"elinewidth": 1})
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [f"{e['reaction']}  ({e['n_users_with_reaction']}/{e['n_users']} users)" for e in entries])
    for yy, v in zip(ys, vals):
        if v is None:
            ax.text(0, yy, "  no variance", va="center", fontsize=8, color="grey")
    start, end = result["config"]["retention_days"]
    base = result["base_retention"]
    ax.set_xlabel("Pearson r of the user's reaction rate with retained (0/1), 95 % bootstrap CI")
    ax.set_title(f"Reaction rate vs retention (active on days {start}-{end - 1} after first seen)\n"
                 f"{base['n']} users, base retention {base['rate']:.1%}", fontsize=10)  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def render_signals(result: dict, console) -> None:
    """A short table for the terminal (rich): one row per reaction, sorted by correlation."""
    from rich.table import Table

    ci = lambda d, f: "-" if d["value"] is None else (  # noqa: E731
        f"{d['value']:{f}}" + (f" [{d['ci95'][0]:{f}}, {d['ci95'][1]:{f}}]" if d.get("ci95") else ""))
    u, base = result["users"], result["base_retention"]
    start, end = result["config"]["retention_days"]
    t = Table(title=f"reaction rate vs retention (days {start}-{end - 1}); {u['analysed']} users, "
                    f"base retention {base['rate']:.1%} [{base['ci95'][0]:.1%}, {base['ci95'][1]:.1%}]")  # fmt: skip
    for col in ("reaction", "users with it", "mean rate [95% CI]", "r [95% CI]", "logit coef / sd [95% CI]", "odds ratio / sd"):
        t.add_column(col, justify="left" if col == "reaction" else "right")
    for name, e in result["signals"].items():
        t.add_row(name, f"{e['n_users_with_reaction']}/{e['n_users']}", ci(e["mean_rate"], ".2%"), ci(e["correlation"], "+.3f"),
                  ci(e["logit_coef_per_sd"], "+.3f"), ci(e["odds_ratio_per_sd"], ".2f"))  # fmt: skip
    console.print(t)
    notes = [f"{name}: {e['note']}" for name, e in result["signals"].items() if e["note"]]
    for line in notes:
        console.print(f"[yellow]note[/] {line}")
    console.print(f"{u['window_not_elapsed']} users left out while their window has not elapsed, "
                  f"{u['below_min_assistant_messages']} below min_assistant_messages; correlation is not causation "
                  "(docs/signals.md)")  # fmt: skip
