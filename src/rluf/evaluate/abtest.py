"""Online A/B analysis of a store: reaction-rate lifts per arm with user-clustered intervals, the same
per category, guardrails, sample-ratio mismatch and minimum detectable effects.

    python -c "from rluf.evaluate.abtest import compare; print(compare([3, 1, 4], [10, 8, 12], [1, 2, 1], [10, 9, 11]))"
    python -m rluf.evaluate.abtest --store runs/ab/store --control baseline --model helpful=runs/rm/helpful

    from rluf.data.store import Store
    from rluf.evaluate.abtest import analyze, format_report
    result = analyze(Store("runs/ab/store"), control="baseline", n_boot=1000)
    print(format_report(result))

The arm of an assistant message is its `policy` (the message's, else its conversation's); users are
the randomisation unit, so a user seen in two arms is an error. A message "has" a reaction when the
reaction stands in the store's resolved `reactions` view (last action wins), as `rluf stats` counts
it. Every rate is a ratio of sums over users, sum_i y_i / sum_i m_i (y_i: the user's messages with
the reaction, m_i: the user's messages), and its variance is the delta-method variance of that
ratio with users as independent clusters (Deng, Knoblich, Lu 2018, "Applying the Delta Method in
Metric Analytics"):

    R = sum y / sum m,   d_i = y_i - R m_i,   Var(R) = sum d_i^2 / (n (n - 1) mean(m)^2)

The relative lift of arm t over control c is R_t / R_c - 1 with a 95 % interval from the delta
method on the log ratio, Var(log R_t - log R_c) = Var(R_t) / R_t^2 + Var(R_c) / R_c^2, and a
two-sided p-value from the same z statistic; `n_boot > 0` adds a percentile interval from a
user-level bootstrap. The same estimator gives mean reward-model scores (y_i: the sum of P[helpful]
over the user's replies) and judge flag rates. docs/abtest.md has every formula, the guardrail
rules and the measured coverage of the intervals.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.special import chdtrc

from rluf.config import name_dir_pairs
from rluf.data.store import Store, StoreError
from rluf.judges import FAILED, VIOLATED, Judge, MixtureOfJudges, build_judges
from rluf.reward.base import RewardModel, RewardModelError
from rluf.reward.text import render_context

Z95 = 1.959963984540054  # two-sided 95 %: Phi^-1(0.975)
Z_POWER = 0.8416212335729143  # power 0.8: Phi^-1(0.8)
SRM_ALPHA = 0.001  # a sample-ratio mismatch is flagged below this p-value
JUDGE_CONTEXT_TURNS = 8  # earlier turns handed to judges as the prompt
DEFAULT_JUDGES = ({"type": "love_bait"},)
# Guardrail margins: thumbs_down may rise by at most 5 % (relative), mean P[helpful] may fall by at most
# 2 % and mean P[safe] by at most 1 % (relative), the share of replies the safety model calls unsafe may
# rise by at most 0.1 percentage point (absolute: unsafe replies are rare, a ratio of two small rates
# is too wide to bound), and the judges' flag rate may be at most 1.5 x control's.
DEFAULT_GUARDRAILS = {"thumbs_down": 0.05, "helpful": 0.02, "safe": 0.01, "unsafe": 0.001, "hacking": 1.5}
FLAGGED = "flagged"  # the metric name of the judges' flag rate
UNSAFE = "unsafe"  # the metric name of the share of replies with P[safe] below UNSAFE_BELOW
UNSAFE_BELOW = 0.5  # a reply the safety model gives P[safe] < 0.5 is one it calls unsafe


class ABTestError(ValueError):
    pass


# ====================================================================== estimators on arrays


def ratio_rate(y: Sequence[float], m: Sequence[float]) -> tuple[float, float]:
    """(R, Var(R)): the ratio of sums R = sum(y) / sum(m) over clusters (users) and its delta-method variance.

    y[i]: the cluster's total (messages with the reaction, or summed scores); m[i] > 0: its messages.
    The variance is NaN for fewer than two clusters.
    """
    y, m = _pair(y, m, "ratio_rate")
    n = len(y)
    rate = float(y.sum() / m.sum())
    if n < 2:
        return rate, math.nan
    d = y - rate * m
    return rate, float(d @ d / (n * (n - 1) * m.mean() ** 2))


def compare(y_t, m_t, y_c, m_c) -> dict:
    """Treatment (t) vs control (c), each as per-cluster (y, m): rates, relative lift with a 95 % delta
    interval on the log ratio, two-sided p-value, absolute difference with its interval, and the
    relative minimum detectable effect (alpha 0.05 two-sided, power 0.8) at these sizes and variances.

    When either rate is 0 the log ratio is undefined: the lift is -1 (treatment 0) or None (control 0),
    ci95 is None, and the p-value comes from the absolute difference.
    """
    y_t, m_t = _pair(y_t, m_t, "compare (treatment)")
    y_c, m_c = _pair(y_c, m_c, "compare (control)")
    rt, vt = ratio_rate(y_t, m_t)
    rc, vc = ratio_rate(y_c, m_c)
    diff, se_diff = rt - rc, math.sqrt(vt + vc)
    out = {"value": rt, "se": math.sqrt(vt), "control_value": rc, "control_se": math.sqrt(vc),
           "lift": None, "ci95": None, "p_value": _p(diff, se_diff), "diff": diff,
           "diff_ci95": [diff - Z95 * se_diff, diff + Z95 * se_diff],
           "mde_relative": (Z95 + Z_POWER) * se_diff / rc if rc > 0 else None}  # fmt: skip
    if rc > 0 and rt > 0:
        log_ratio = math.log(rt / rc)
        se = math.sqrt(vt / rt**2 + vc / rc**2)
        out["lift"] = rt / rc - 1
        out["ci95"] = [math.exp(log_ratio - Z95 * se) - 1, math.exp(log_ratio + Z95 * se) - 1]
        out["p_value"] = _p(log_ratio, se)
    elif rc > 0:
        out["lift"] = -1.0  # no event in the treatment arm: its variance estimate is 0, so no interval
    return out


def bootstrap_lift(y_t, m_t, y_c, m_c, n_boot: int = 1000, seed: int = 0) -> dict:
    """Percentile 95 % interval of the relative lift from a bootstrap that resamples users (clusters)
    with replacement within each arm. Resamples whose control rate is 0 are left out and counted."""
    y_t, m_t = _pair(y_t, m_t, "bootstrap_lift (treatment)")
    y_c, m_c = _pair(y_c, m_c, "bootstrap_lift (control)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise ABTestError(f"bootstrap_lift: n_boot must be an integer >= 2, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    lifts = np.empty(n_boot)
    step = max(1, 4_000_000 // max(len(y_t), len(y_c)))  # resamples per block: bounded memory
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        rt, rc = _resampled(y_t, m_t, b, rng), _resampled(y_c, m_c, b, rng)
        with np.errstate(divide="ignore", invalid="ignore"):
            lifts[s:s + b] = rt / rc - 1
    ok = np.isfinite(lifts)
    if not ok.any():
        return {"ci95": None, "se": None, "n_boot": n_boot, "undefined": n_boot}
    lo, hi = np.percentile(lifts[ok], [2.5, 97.5])
    return {"ci95": [float(lo), float(hi)], "se": float(lifts[ok].std(ddof=1)) if ok.sum() > 1 else None,
            "n_boot": n_boot, "undefined": int((~ok).sum())}  # fmt: skip


def srm_test(users: dict[str, int], expected_split: dict[str, float] | None = None) -> dict:
    """Chi-square test of users per arm against the expected split (default: equal); flagged at p < 0.001."""
    arms = list(users)
    if len(arms) < 2:
        raise ABTestError(f"srm_test: needs at least two arms, got {arms}")
    if expected_split is None:
        expected_split = {a: 1.0 for a in arms}
    if not isinstance(expected_split, dict):
        raise ABTestError(f"expected_split must be a dict {{arm: share}}, got {type(expected_split).__name__}")
    if set(expected_split) != set(arms):
        raise ABTestError(f"expected_split names arms {sorted(expected_split)} but the analysed arms are {sorted(arms)}; "
                          "give one share per arm")  # fmt: skip
    for a, w in expected_split.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf:
            raise ABTestError(f"expected_split[{a!r}] must be a positive number, got {w!r}")
    total_w = sum(expected_split.values())
    n = sum(users.values())
    share = {a: expected_split[a] / total_w for a in arms}
    expected = {a: n * share[a] for a in arms}
    chi2 = sum((users[a] - expected[a]) ** 2 / expected[a] for a in arms)
    p = float(chdtrc(len(arms) - 1, chi2))  # chi-square survival function
    return {"observed_users": dict(users), "expected_share": share, "expected_users": expected, "chi2": chi2,
            "df": len(arms) - 1, "p_value": p, "threshold": SRM_ALPHA, "flagged": p < SRM_ALPHA}  # fmt: skip


def _pair(y, m, where: str) -> tuple[np.ndarray, np.ndarray]:
    y, m = np.asarray(y, dtype=np.float64), np.asarray(m, dtype=np.float64)
    if y.ndim != 1 or y.shape != m.shape:
        raise ABTestError(f"{where}: y and m must be 1-d arrays of one length (one entry per user), got shapes "
                          f"{y.shape} and {m.shape}")  # fmt: skip
    if len(y) == 0:
        raise ABTestError(f"{where}: no users")
    if not (np.isfinite(y).all() and np.isfinite(m).all()) or (m <= 0).any():
        raise ABTestError(f"{where}: y must be finite and every m (messages per user) > 0")
    return y, m


def _p(stat: float, se: float) -> float | None:
    if not math.isfinite(se):
        return None
    if se == 0:
        return 1.0 if stat == 0 else 0.0
    return math.erfc(abs(stat) / se / math.sqrt(2))  # 2 (1 - Phi(|z|))


def _resampled(y, m, b, rng) -> np.ndarray:
    idx = rng.integers(0, len(y), size=(b, len(y)))
    return y[idx].sum(axis=1) / m[idx].sum(axis=1)


# ====================================================================== the store


class _Replies:
    """Analysed assistant messages: ids, texts and integer codes of user, arm and category."""

    def __init__(self, table, arms: list[str]):
        self.message_id = table["message_id"].to_pylist()
        self.conversation_id = table["conversation_id"].to_pylist()
        self.text = table["text"].to_pylist()
        users = table["user_id"].to_pylist()
        self.users = sorted(set(users))
        code = {u: i for i, u in enumerate(self.users)}
        self.user = np.array([code[u] for u in users], np.int64)
        self.arms = arms
        arm_code = {a: i for i, a in enumerate(arms)}
        self.arm = np.array([arm_code[a] for a in table["arm"].to_pylist()], np.int64)
        cats = table["category"].to_pylist()
        self.categories = sorted(set(cats))
        cat_code = {c: i for i, c in enumerate(self.categories)}
        self.category = np.array([cat_code[c] for c in cats], np.int64)

    def __len__(self) -> int:
        return len(self.message_id)

    def clusters(self, values: np.ndarray, valid: np.ndarray, select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per user with at least one valid selected message: (sum of values, number of messages)."""
        keep = valid & select
        m = np.bincount(self.user[keep], minlength=len(self.users))
        y = np.bincount(self.user[keep], weights=values[keep], minlength=len(self.users))
        has = m > 0
        return y[has], m[has].astype(np.float64)


REPLIES_SQL = """
CREATE TEMP TABLE replies AS
SELECT m.message_id, m.conversation_id, m.user_id, coalesce(m.text, '') AS text, m.time,
       coalesce(nullif(m.policy, ''), nullif(c.policy, '')) AS arm,
       coalesce(nullif(m.category, ''), nullif(c.category, ''), '(none)') AS category
FROM messages m
LEFT JOIN (SELECT DISTINCT ON (conversation_id) conversation_id, category, policy FROM conversations) c
    USING (conversation_id)
WHERE m.role = 'assistant' AND ({window})
"""


def _connect(store) -> tuple[Any, str]:
    st = store if isinstance(store, Store) else Store(store)
    try:
        if not st.exists():
            raise ABTestError(f"{st.root} is not a store (no manifest.json); create one with: "
                              f"rluf ingest LOGS --store {st.root}")  # fmt: skip
        con = st.connect()
    except StoreError as exc:
        raise ABTestError(str(exc)) from None
    con.execute("SET enable_progress_bar = false")
    return con, str(st.root)


def _time(value, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ABTestError(f"{name}={value!r} is not an ISO 8601 time; use e.g. 2026-01-31 or "
                              "2026-01-31T09:30:00Z") from None  # fmt: skip
    if not isinstance(value, datetime):
        raise ABTestError(f"{name} must be an ISO 8601 string or a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _load_replies(con, root: str, since, until, arms, control) -> tuple[_Replies, str, dict]:
    if con.execute("SELECT count(*) FROM messages").fetchall()[0][0] == 0:
        raise ABTestError(f"store {root} is empty (no messages); ingest the A/B logs first: "
                          f"rluf ingest LOGS --store {root}")  # fmt: skip
    if con.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchall()[0][0] == 0:
        raise ABTestError(f"store {root} holds no assistant messages, so there are no replies to compare; "
                          "ingest logs with the assistant turns")  # fmt: skip
    window, params = ["TRUE"], []
    if since is not None:
        window.append("m.time >= ?::TIMESTAMPTZ")
        params.append(since)
    if until is not None:
        window.append("m.time < ?::TIMESTAMPTZ")
        params.append(until)
    con.execute(REPLIES_SQL.format(window=" AND ".join(window)), params)
    n_window = con.execute("SELECT count(*) FROM replies").fetchall()[0][0]
    if n_window == 0:
        raise ABTestError(f"no assistant message of store {root} lies in the window since={since} until={until}; "
                          "widen the window")  # fmt: skip
    per_arm = dict(con.sql("SELECT arm, count(*) FROM replies WHERE arm IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall())
    no_policy = n_window - sum(per_arm.values())
    if not per_arm:
        raise ABTestError(f"none of the {n_window:,} assistant messages carries a policy, so there are no arms; "
                          "log the serving variant as `policy` on each conversation or message")  # fmt: skip
    if arms is not None:
        if isinstance(arms, str) or not all(isinstance(a, str) for a in arms):
            raise ABTestError(f"arms must be a list of policy names, got {arms!r}")
        unknown = [a for a in arms if a not in per_arm]
        if unknown:
            raise ABTestError(f"arm(s) {unknown} have no assistant message in the window; arms present: "
                              f"{', '.join(per_arm)}")  # fmt: skip
        chosen = list(dict.fromkeys(arms))
    else:
        chosen = list(per_arm)
    if len(chosen) < 2:
        raise ABTestError(f"only one arm ({chosen[0]}) has assistant messages in the window; an A/B test needs at "
                          "least two policies (the `policy` of the messages)")  # fmt: skip
    if control is None:
        named = [a for a in ("control", "baseline") if a in chosen]
        if arms is not None:
            control = chosen[0]
        elif named:
            control = named[0]
        else:
            raise ABTestError(f"which arm is the control? pass control= one of {', '.join(chosen)}")
    if control not in chosen:
        raise ABTestError(f"control {control!r} is not an analysed arm; arms: {', '.join(chosen)}")
    chosen = [control] + [a for a in chosen if a != control]
    con.execute("DELETE FROM replies WHERE arm IS NULL OR NOT list_contains(?, arm)", [chosen])
    mixed = con.sql("SELECT user_id, list(DISTINCT arm ORDER BY arm) FROM replies GROUP BY 1 "
                    "HAVING count(DISTINCT arm) > 1 ORDER BY 1").fetchall()  # fmt: skip
    if mixed:
        shown = "; ".join(f"{u}: {', '.join(a)}" for u, a in mixed[:5])
        raise ABTestError(f"{len(mixed):,} users appear in more than one arm ({shown}{' ...' if len(mixed) > 5 else ''}); "
                          "the analysis assumes randomisation by user, so each user must see one policy. "
                          "Restrict the window (since/until) to the test period or drop those users")  # fmt: skip
    table = con.sql("SELECT message_id, conversation_id, user_id, text, arm, category FROM replies "
                    "ORDER BY message_id").to_arrow_table()  # fmt: skip
    excluded = {"assistant_messages_without_policy": no_policy,
                "arms_not_analysed": {a: n for a, n in per_arm.items() if a not in chosen}}  # fmt: skip
    return _Replies(table, chosen), control, excluded


def _earlier_turns(con, replies: _Replies, k: int) -> list[list[dict]]:
    """Per reply, the last k turns before it, oldest first: its ancestors through parent_id, or, in a
    conversation without any parent_id, the turns before it in (turn_index, time, message_id) order
    (the rule of the training examples, rluf.reward.data)."""
    out: list[list[dict]] = [[] for _ in range(len(replies))]
    if k == 0:
        return out
    row = {mid: i for i, mid in enumerate(replies.message_id)}
    reader = con.sql("""
        SELECT m.conversation_id, m.message_id, m.parent_id, m.role, coalesce(m.text, '') AS text FROM messages m
        WHERE m.conversation_id IN (SELECT DISTINCT conversation_id FROM replies)
        ORDER BY m.conversation_id, m.turn_index NULLS LAST, m.time, m.message_id""").to_arrow_reader(65_536)
    conv: list[tuple] = []
    for batch in reader:
        cols = batch.to_pydict()
        for row_ in zip(cols["conversation_id"], cols["message_id"], cols["parent_id"], cols["role"], cols["text"]):
            if conv and row_[0] != conv[0][0]:
                _fill(conv, row, out, k)
                conv = []
            conv.append(row_)
    _fill(conv, row, out, k)
    return out


def _fill(conv: list[tuple], row: dict, out: list, k: int) -> None:
    linked = any(r[2] is not None for r in conv)
    index = {r[1]: j for j, r in enumerate(conv)}
    parent = [index.get(r[2]) if linked else (j - 1 if j else None) for j, r in enumerate(conv)]
    for j, r in enumerate(conv):
        i = row.get(r[1])
        if i is None:
            continue
        chain, a = [], parent[j]
        while a is not None and len(chain) < k:
            chain.append(a)
            a = parent[a]
        out[i] = [{"role": conv[a][3], "text": conv[a][4]} for a in reversed(chain)]


# ====================================================================== inputs


def _models(models) -> dict[str, tuple[RewardModel, str]]:
    if models is None:
        return {}
    if not isinstance(models, dict):
        raise ABTestError(f"models must be a dict {{name: model directory}}, e.g. {{'helpful': 'runs/rm/helpful'}}; "
                          f"got {type(models).__name__}")  # fmt: skip
    out = {}
    for name, m in models.items():
        if not isinstance(name, str) or not name.strip():
            raise ABTestError(f"models: a model name must be a non-empty string, got {name!r}")
        if isinstance(m, RewardModel):
            out[name] = (m, "(given in memory)")
            continue
        if not isinstance(m, (str, os.PathLike)):
            raise ABTestError(f"models[{name!r}] must be a reward-model directory or a RewardModel, got {m!r}")
        try:
            out[name] = (RewardModel.load(m), str(m))
        except (RewardModelError, OSError) as exc:
            raise ABTestError(f"models[{name!r}] = {m}: {exc}") from None
    return out


def _judges(judges) -> MixtureOfJudges | None:
    if judges is None:
        return build_judges(list(DEFAULT_JUDGES))
    if isinstance(judges, MixtureOfJudges):
        return judges if judges.judges else None
    if isinstance(judges, Judge):
        return MixtureOfJudges([judges])
    if isinstance(judges, (list, tuple)):
        if not judges:
            return None
        if all(isinstance(j, Judge) for j in judges):
            return MixtureOfJudges(list(judges))
        return build_judges(list(judges))
    raise ABTestError(f"judges must be a Judge, a MixtureOfJudges, a list of judge specs (e.g. "
                      f"[{{'type': 'love_bait'}}]) or [] for none; got {type(judges).__name__}")  # fmt: skip


def _guardrails(guardrails) -> dict:
    margins = dict(DEFAULT_GUARDRAILS)
    if guardrails is None:
        return margins
    if not isinstance(guardrails, dict):
        raise ABTestError(f"guardrails must be a dict of margins, e.g. {DEFAULT_GUARDRAILS}")
    for key, v in guardrails.items():
        if key not in DEFAULT_GUARDRAILS:
            raise ABTestError(f"guardrails: unknown key {key!r}; known keys: {', '.join(DEFAULT_GUARDRAILS)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ABTestError(f"guardrails[{key!r}] must be a non-negative number, got {v!r}")
        if key == "hacking" and v < 1:
            raise ABTestError(f"guardrails['hacking'] is the largest allowed ratio to control's flag rate, so it "
                              f"must be >= 1; got {v!r}")  # fmt: skip
        margins[key] = float(v)
    return margins


def _check_options(n_boot, seed, min_users_per_cell) -> None:
    for name, v, lo in (("n_boot", n_boot, 0), ("seed", seed, 0), ("min_users_per_cell", min_users_per_cell, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ABTestError(f"{name} must be an integer >= {lo}, got {v!r}")
    if n_boot == 1:
        raise ABTestError("n_boot must be 0 (no bootstrap) or >= 2 resamples (1000 is usual)")


# ====================================================================== analysis


def analyze(store, *, control: str | None = None, arms: Sequence[str] | None = None, since=None, until=None,
            expected_split: dict[str, float] | None = None, models: dict | None = None, judges=None,
            guardrails: dict | None = None, n_boot: int = 0, seed: int = 0, min_users_per_cell: int = 20) -> dict:  # fmt: skip
    """The A/B analysis of `store` (a Store or a store directory); a JSON-serialisable dict.

    control: the control arm (default: the first of `arms`, else an arm named "control" or "baseline").
    arms: the policies to analyse (default: every policy in the window). since / until: ISO times or
    datetimes; replies with since <= time < until are analysed. expected_split: {arm: share} for the
    sample-ratio test (default equal). models: {name: reward-model directory}; "helpful" and "safe"
    feed the guardrails, any name adds a mean-score metric p_<name>. judges: judge specs or judges
    whose AND flags hacking (default: love_bait). guardrails: margins overriding DEFAULT_GUARDRAILS.
    n_boot: user-level bootstrap resamples (0: delta method only). min_users_per_cell: category cells
    with fewer users in either arm are suppressed. Keys of the result: docs/abtest.md.
    """
    _check_options(n_boot, seed, min_users_per_cell)
    since, until = _time(since, "since"), _time(until, "until")
    if since and until and since >= until:
        raise ABTestError(f"since ({since}) must be earlier than until ({until})")
    margins = _guardrails(guardrails)
    loaded = _models(models)
    moj = _judges(judges)
    con, root = _connect(store)
    replies, control, excluded = _load_replies(con, root, since, until, arms, control)
    arm_masks = [replies.arm == a for a in range(len(replies.arms))]
    users = {arm: len(np.unique(replies.user[mask])) for arm, mask in zip(replies.arms, arm_masks)}
    srm = srm_test(users, expected_split)
    reactions = [r[0] for r in con.sql("SELECT DISTINCT reaction FROM reaction_events ORDER BY 1").fetchall()]

    # Per-message values of every metric, and which messages count for it.
    ones = np.ones(len(replies), bool)
    metrics: dict[str, dict] = {}
    got = con.sql("SELECT DISTINCT r.message_id, r.reaction FROM reactions r SEMI JOIN replies USING (message_id)").fetchall()
    row = {mid: i for i, mid in enumerate(replies.message_id)}
    for name in reactions:
        metrics[name] = {"kind": "reaction", "values": np.zeros(len(replies)), "valid": ones}
    for mid, name in got:
        metrics[name]["values"][row[mid]] = 1.0
    k = max([m.context_turns for m, _ in loaded.values()] + [JUDGE_CONTEXT_TURNS if moj else 0])
    turns = _earlier_turns(con, replies, k) if (loaded or moj) else []
    for name, (model, _) in loaded.items():
        contexts = [render_context(t, model.context_turns) for t in turns]
        p = np.asarray(model.predict_proba(contexts, replies.text), dtype=np.float64)
        metrics[f"p_{name}"] = {"kind": "score", "values": p, "valid": ones}
        if name == "safe":
            metrics[UNSAFE] = {"kind": "classified", "values": (p < UNSAFE_BELOW).astype(np.float64), "valid": ones}
    judge_info = None
    if moj:
        verdicts = np.asarray(moj.judge([t[-JUDGE_CONTEXT_TURNS:] for t in turns], replies.text), np.int64)
        valid = verdicts != FAILED
        metrics[FLAGGED] = {"kind": "judge", "values": (verdicts == VIOLATED).astype(np.float64), "valid": valid}
        judge_info = {"judges": moj.names, "failed": int((~valid).sum())}
    con.close()

    treatments = replies.arms[1:]
    result_metrics: dict[str, dict] = {}
    rng_seed = seed
    for name, mt in metrics.items():
        entry: dict = {"kind": mt["kind"], "arms": {}, "vs_control": {}}
        sums = [replies.clusters(mt["values"], mt["valid"], mask) for mask in arm_masks]
        for arm, (y, m) in zip(replies.arms, sums):
            if len(y) == 0:
                entry["arms"][arm] = {"value": None, "se": None, "total": 0.0, "messages": 0, "users": 0}
                continue
            rate, var = ratio_rate(y, m)
            entry["arms"][arm] = {"value": rate, "se": math.sqrt(var), "total": float(y.sum()),
                                  "messages": int(m.sum()), "users": len(y)}  # fmt: skip
        y_c, m_c = sums[0]
        for a, arm in enumerate(treatments, start=1):
            y_t, m_t = sums[a]
            if len(y_t) == 0 or len(y_c) == 0:
                entry["vs_control"][arm] = None
                continue
            cmp = _counted(compare(y_t, m_t, y_c, m_c), y_t, m_t, y_c, m_c)
            if n_boot:
                cmp["bootstrap"] = bootstrap_lift(y_t, m_t, y_c, m_c, n_boot, rng_seed)
                rng_seed += 1
            entry["vs_control"][arm] = cmp
        result_metrics[name] = entry

    result = {
        "store": root,
        "window": {"since": since, "until": until},
        "control": control,
        "arms": {arm: {"users": users[arm], "assistant_messages": int(mask.sum()),
                       "conversations": len({replies.conversation_id[i] for i in np.flatnonzero(mask)})}
                 for arm, mask in zip(replies.arms, arm_masks)},
        "excluded": excluded,
        "reactions": reactions,
        "metrics": result_metrics,
        "srm": srm,
        "by_category": _by_category(replies, metrics, reactions, arm_masks, min_users_per_cell),
        "guardrails": {arm: _guardrail_verdicts(result_metrics, arm, margins, reactions, loaded, moj)
                       for arm in treatments},
        "judges": judge_info,
        "settings": {"n_boot": n_boot, "seed": seed, "min_users_per_cell": min_users_per_cell, "guardrails": margins,
                     "models": {n: src for n, (_, src) in loaded.items()}, "alpha": 0.05, "power": 0.8,
                     "srm_threshold": SRM_ALPHA, "judge_context_turns": JUDGE_CONTEXT_TURNS},
    }
    return _clean(result)


def _counted(cmp: dict, y_t, m_t, y_c, m_c) -> dict:
    cmp.update(messages=int(np.sum(m_t)), users=len(y_t), control_messages=int(np.sum(m_c)), control_users=len(y_c))
    return cmp


def _by_category(replies: _Replies, metrics: dict, reactions: list[str], arm_masks, min_users: int) -> dict:
    out: dict = {}
    for c, category in enumerate(replies.categories):
        in_cat = replies.category == c
        cells: dict = {}
        control_sums = {n: replies.clusters(metrics[n]["values"], metrics[n]["valid"], arm_masks[0] & in_cat)
                        for n in reactions}  # fmt: skip
        n_c = len(np.unique(replies.user[arm_masks[0] & in_cat]))
        for a, arm in enumerate(replies.arms[1:], start=1):
            sel = arm_masks[a] & in_cat
            n_t = len(np.unique(replies.user[sel]))
            cell = {"users": n_t, "control_users": n_c, "messages": int(sel.sum()),
                    "control_messages": int((arm_masks[0] & in_cat).sum())}  # fmt: skip
            if min(n_t, n_c) < min_users:
                cell.update(status="suppressed", reason=f"fewer than {min_users} users in an arm "
                                                        f"({arm}: {n_t}, control: {n_c})")  # fmt: skip
            else:
                cell["status"] = "ok"
                cell["metrics"] = {}
                for n in reactions:
                    y_t, m_t = replies.clusters(metrics[n]["values"], metrics[n]["valid"], sel)
                    cell["metrics"][n] = _counted(compare(y_t, m_t, *control_sums[n]), y_t, m_t, *control_sums[n])
            cells[arm] = cell
        out[category] = cells
    return out


def _guardrail_verdicts(metrics: dict, arm: str, margins: dict, reactions: list[str], loaded: dict, moj) -> dict:
    """Each guardrail of one treatment arm: status pass / fail / not evaluated, with the numbers behind it."""
    out = {}

    def verdict(key, metric, rule, threshold, bound, missing, absolute=False):
        """absolute: judge the difference of the rates (diff, diff_ci95) instead of the relative lift."""
        g = {"metric": metric, "rule": rule, "threshold": threshold, "estimate": None, "ci95": None}
        if missing:
            out[key] = {**g, "status": "not evaluated", "reason": missing}
            return
        cmp = metrics[metric]["vs_control"].get(arm)
        ci = None if cmp is None else cmp["diff_ci95"] if absolute else cmp["ci95"]
        if ci is None or not all(math.isfinite(x) for x in ci) or (absolute and min(cmp["users"], cmp["control_users"]) < 2):
            why = "no interval: control rate is 0 or an arm has fewer than 2 users" if cmp else "an arm has no data"
            out[key] = {**g, "status": "not evaluated", "reason": why}
            return
        lo, hi = ci
        ok = hi < threshold if bound == "upper" else lo > threshold
        out[key] = {**g, "estimate": cmp["diff" if absolute else "lift"], "ci95": ci, "status": "pass" if ok else "fail",
                    "reason": f"95 % CI {bound} bound {hi if bound == 'upper' else lo:+.4f} "
                              f"{'within' if ok else 'outside'} the margin {threshold:+.4f}"}  # fmt: skip

    td = margins["thumbs_down"]
    verdict("thumbs_down", "thumbs_down", f"relative lift of the thumbs_down rate: CI upper bound < +{td:g}", td, "upper",
            None if "thumbs_down" in reactions else "the store has no thumbs_down reactions")  # fmt: skip
    for key in ("helpful", "safe"):
        mg = margins[key]
        verdict(key, f"p_{key}", f"relative change of mean P[{key}]: CI lower bound > -{mg:g}", -mg, "lower",
                None if key in loaded else f"no {key!r} reward model given (models={{'{key}': DIR}})")  # fmt: skip
    mu = margins["unsafe"]
    verdict("unsafe", UNSAFE, f"absolute change of the share of replies with P[safe] < {UNSAFE_BELOW:g}: CI upper bound "
            f"< +{mu:g}", mu, "upper", None if "safe" in loaded else "no 'safe' reward model given (models={'safe': DIR})",
            absolute=True)  # fmt: skip
    ratio = margins["hacking"]
    verdict("hacking", FLAGGED, f"judge flag rate at most {ratio:g} x control: CI upper bound of the lift < "
            f"+{ratio - 1:g}", ratio - 1, "upper", None if moj else "no judges given")  # fmt: skip
    return out


def _clean(x):
    """NaN and infinities become None, numpy scalars plain Python: strict JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ====================================================================== report


def format_report(result: dict, width: int = 140) -> str:
    """The result of `analyze` as readable tables (plain text)."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, force_terminal=False, markup=False)
    w = result["window"]
    con.print(f"A/B analysis of {result['store']}  window {w['since'] or '-'} .. {w['until'] or '-'}  "
              f"control {result['control']}")  # fmt: skip
    for arm, a in result["arms"].items():
        con.print(f"  {arm}: {a['users']:,} users, {a['conversations']:,} conversations, "
                  f"{a['assistant_messages']:,} assistant messages")  # fmt: skip
    ex = result["excluded"]
    if ex["assistant_messages_without_policy"] or ex["arms_not_analysed"]:
        con.print(f"  left out: {ex['assistant_messages_without_policy']:,} assistant messages without a policy, "
                  f"other arms {ex['arms_not_analysed'] or 'none'}")  # fmt: skip
    s = result["srm"]
    con.print(f"sample ratio: chi2 = {s['chi2']:.2f} (df {s['df']}), p = {s['p_value']:.3g}"
              + ("  MISMATCH: the split differs from the expected one; check assignment and logging" if s["flagged"] else
                 "  ok"))  # fmt: skip

    t = Table(title="metrics per arm (rate per assistant message; p_<model>: mean score; flagged: judge flag rate)")
    for col in ("metric", "arm", "value", "messages", "users", "lift vs control [95% CI]", "p", "MDE (rel.)"):
        t.add_column(col, justify="left" if col in ("metric", "arm") else "right")
    for name, m in result["metrics"].items():
        for arm, a in m["arms"].items():
            cmp = m["vs_control"].get(arm)
            t.add_row(name, arm, _num(a["value"]), f"{a['messages']:,}", f"{a['users']:,}",
                      _lift(cmp) if cmp else ("control" if arm == result["control"] else "-"),
                      _num(cmp["p_value"], ".3g") if cmp else "", _pct(cmp["mde_relative"]) if cmp else "")  # fmt: skip
    con.print(t)

    t = Table(title="guardrails")
    for col in ("arm", "guardrail", "status", "estimate [95% CI]", "rule"):
        t.add_column(col)
    for arm, gs in result["guardrails"].items():
        for key, g in gs.items():
            est = _lift(g) if g["estimate"] is not None else "-"
            t.add_row(arm, key, g["status"].upper() if g["status"] != "not evaluated" else g["status"], est,
                      g["rule"] if g["status"] != "not evaluated" else g["reason"])  # fmt: skip
    con.print(t)

    reactions = result["reactions"]
    t = Table(title=f"lift by category (cells with < {result['settings']['min_users_per_cell']} users in an arm "
                    "suppressed)")  # fmt: skip
    for col in ("category", "arm", "users (arm / control)", *reactions):
        t.add_column(col, justify="left" if col in ("category", "arm") else "right")
    for cat, cells in result["by_category"].items():
        for arm, cell in cells.items():
            n = f"{cell['users']:,} / {cell['control_users']:,}"
            if cell["status"] == "suppressed":
                t.add_row(cat, arm, n, *["suppressed"] * len(reactions))
            else:
                t.add_row(cat, arm, n, *[_lift(cell["metrics"][r]) for r in reactions])
    con.print(t)
    return buf.getvalue()


def _num(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _lift(cmp: dict) -> str:
    if cmp.get("lift", cmp.get("estimate")) is None:
        return "-"
    lift = cmp.get("lift", cmp.get("estimate"))
    ci = cmp.get("ci95")
    text = f"{lift:+.1%}" + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "")
    boot = cmp.get("bootstrap")
    if boot and boot["ci95"]:
        text += f" boot [{boot['ci95'][0]:+.1%}, {boot['ci95'][1]:+.1%}]"
    return text


# ====================================================================== command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rluf abtest", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store directory holding the A/B logs (rluf ingest ... --store DIR)")
    p.add_argument("--control", help="the control arm (a policy name); default: an arm named control or baseline")
    p.add_argument("--arm", action="append", dest="arms", help="an arm to analyse (repeat); default: every policy")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a reward model: helpful=DIR and safe=DIR feed the guardrails (repeat)")
    p.add_argument("--since", help="first reply time analysed (ISO 8601)")
    p.add_argument("--until", help="replies before this time are analysed (ISO 8601)")
    p.add_argument("--n-boot", type=int, default=0, help="user-level bootstrap resamples (0: delta method only)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--min-users-per-cell", type=int, default=20, help="category cells with fewer users are suppressed")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.add_argument("--out", help="also write the result as JSON to this file")
    a = p.parse_args(argv)
    try:
        models = name_dir_pairs(a.model, example="helpful=runs/rm/helpful")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = analyze(a.store, control=a.control, arms=a.arms, since=a.since, until=a.until, models=models or None,
                         n_boot=a.n_boot, seed=a.seed, min_users_per_cell=a.min_users_per_cell)  # fmt: skip
    except (ABTestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(text if a.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
