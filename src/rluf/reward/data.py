"""Reward-model training data from the store: one example per assistant turn, labelled by a signal.

    python -m rluf.reward.data --store runs/demo/store --out runs/examples --signal love

    from rluf.reward.data import ExampleConfig, build_examples, upsample
    ex = build_examples("runs/demo/store", ExampleConfig(signal="love"))
    train, share = upsample(ex.train, target_share=0.10)     # train only; ex.report keeps the true base rate

Each assistant message becomes (context, response) -> label: `context` is the last `context_turns`
turns before it (its ancestors through `parent_id`), rendered by `rluf.reward.text.render_context`;
`label` is 1 when the signal happened. Signals: any reaction name in the store (it counts when it
stands in the resolved view and arrived within `label_window_hours` of the message), `continued` (the
same user wrote again in the conversation after the reply) or `returned_next_day` (the user wrote a
message on the next UTC calendar day). Examples whose label cannot be known yet are censored:
excluded and counted, never labelled 0.

Split (the full rules, the filter and every report key: docs/reward-data.md). Users are hashed (with
`seed`) into a training group and a holdout group (`holdout_user_share`); a cut time is chosen so that
holdout examples after it make up `val_share + test_share` of the kept examples. Train = training-group
examples before the cut; validation then test = holdout-group examples after it, validation first in
time. So every evaluation example is later than every training example and no user is in both. When
the times cannot support this (placeholder times, too few users) the split falls back to hashed groups
(users, else conversations) and the report says why.

Adversarial users (decided on training-period data only) are set aside from every split: (a) a
per-reaction share of received assistant messages far above the population, (b) reactions faster
than the response can be read, for most of a user's reactions.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rluf.config import from_mapping
from rluf.data.stats import wilson
from rluf.data.store import Store, StoreError
from rluf.reward.text import render_context

DERIVED = ("continued", "returned_next_day")
SPLITS = ("train", "val", "test")
REACTION_TIMES = ("auto", "observed", "placeholder")
US = 1_000_000  # microseconds per second
DAY_US = 86_400 * US
SCHEMA = pa.schema([
    ("message_id", pa.string()), ("conversation_id", pa.string()), ("user_id", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")), ("category", pa.string()), ("policy", pa.string()),
    ("context", pa.string()), ("response", pa.string()), ("response_words", pa.int32()), ("label", pa.int8())])  # fmt: skip
ROLE_CODES = {"user": 0, "assistant": 1, "system": 2}


class ExampleError(ValueError):
    pass


@dataclass
class ExampleConfig:
    signal: str = "love"  # a reaction name in the store, or "continued" / "returned_next_day"
    context_turns: int = 4  # turns before the response rendered into the context (0: none)
    label_window_hours: float = 168.0  # a reaction counts if it stands and arrived within this many hours
    reaction_times: str = "auto"  # "observed", "placeholder" (imported data: no window, no censoring), "auto": detect
    val_share: float = 0.1  # share of kept examples in validation (latest in time before test)
    test_share: float = 0.2  # share of kept examples in test (the latest)
    holdout_user_share: float = 0.4  # share of users hashed into the holdout group (val/test)
    min_split_users: int = 20  # fewer users than this: grouped split by conversation instead of by time
    max_examples_per_user: int | None = 200  # cap per user, a seeded random subset kept (None: no cap)
    adversarial_filter: bool = True  # set implausible reactors aside from all splits
    max_reaction_share: float = 0.15  # rule (a): per-reaction share of received messages at or above this...
    reaction_share_ratio: float = 5.0  # ...and at or above this multiple of the typical (median) user's share
    min_messages: int = 20  # rule (a) applies to users with at least this many received messages
    min_read_seconds: float = 1.0  # rule (b): a reaction faster than max(this, words x the next) is too fast
    read_seconds_per_word: float = 0.05  # 0.5 s per 10 words, i.e. 1,200 words a minute
    max_fast_share: float = 0.5  # rule (b): flagged when at least this share of a user's reactions is too fast
    min_reactions: int = 5  # rule (b) applies to users with at least this many reactions
    seed: int = 0  # user hashing, the per-user cap

    def __post_init__(self):
        def check(name, kinds, ok, must):
            v = getattr(self, name)
            if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
                raise ExampleError(f"ExampleConfig.{name}: expected {_kinds(kinds)}, got {v!r}")
            if not ok(v):
                raise ExampleError(f"ExampleConfig.{name}: must be {must}, got {v!r}")

        check("signal", (str,), lambda v: v.strip() != "", "a non-empty reaction name")
        check("context_turns", (int,), lambda v: v >= 0, ">= 0")
        check("label_window_hours", (int, float), lambda v: 0 < v < math.inf, "> 0 and finite")
        check("reaction_times", (str,), lambda v: v in REACTION_TIMES, f"one of {', '.join(REACTION_TIMES)}")
        for name in ("val_share", "test_share", "holdout_user_share"):
            check(name, (int, float), lambda v: 0 < v < 1, "strictly between 0 and 1")
        if self.val_share + self.test_share >= 1:
            raise ExampleError(f"ExampleConfig: val_share + test_share = {self.val_share + self.test_share:g} leaves "
                               "nothing for training; keep the sum below 1 (e.g. 0.1 + 0.2)")  # fmt: skip
        check("min_split_users", (int,), lambda v: v >= 2, ">= 2")
        if self.max_examples_per_user is not None:
            check("max_examples_per_user", (int,), lambda v: v >= 1, ">= 1 or None (no cap)")
        check("adversarial_filter", (bool,), lambda v: True, "true or false")
        check("max_reaction_share", (int, float), lambda v: 0 < v <= 1, "in (0, 1]")
        check("reaction_share_ratio", (int, float), lambda v: 1 <= v < math.inf, ">= 1 and finite")
        check("min_messages", (int,), lambda v: v >= 1, ">= 1")
        check("min_read_seconds", (int, float), lambda v: 0 <= v < math.inf, ">= 0 and finite")
        check("read_seconds_per_word", (int, float), lambda v: 0 <= v < math.inf, ">= 0 and finite")
        check("max_fast_share", (int, float), lambda v: 0 < v <= 1, "in (0, 1]")
        check("min_reactions", (int,), lambda v: v >= 1, ">= 1")
        check("seed", (int,), lambda v: v >= 0, ">= 0")

    @classmethod
    def from_dict(cls, data: dict) -> ExampleConfig:
        """A config from a mapping (e.g. read from YAML or report.json); unknown keys are rejected."""
        return from_mapping(cls, data, "example config", ExampleError)


def _kinds(kinds) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}[k.__name__]
                       for k in kinds)  # fmt: skip


@dataclass
class ExampleSet:
    """The three splits (pyarrow Tables with columns SCHEMA), the report (JSON-serialisable) and the config."""

    train: pa.Table
    val: pa.Table
    test: pa.Table
    report: dict
    config: ExampleConfig = field(default_factory=ExampleConfig)

    def save(self, out: str | Path) -> Path:
        """Write OUT/{train,val,test}.parquet and OUT/report.json (the config is inside the report)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            pq.write_table(getattr(self, name), out / f"{name}.parquet")
        (out / "report.json").write_text(json.dumps(self.report, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> ExampleSet:
        path = Path(path)
        missing = [f for f in [*(f"{s}.parquet" for s in SPLITS), "report.json"] if not (path / f).is_file()]
        if missing:
            raise ExampleError(f"{path} is not an example set: {', '.join(missing)} missing; write one with "
                               "build_examples(...).save(dir)")  # fmt: skip
        report = json.loads((path / "report.json").read_text())
        tables = {s: pq.read_table(path / f"{s}.parquet") for s in SPLITS}
        for s, t in tables.items():
            if not t.schema.equals(SCHEMA):
                raise ExampleError(f"{path / (s + '.parquet')}: columns {t.schema.names} do not match the example "
                                   f"schema {SCHEMA.names}; rebuild the example set")  # fmt: skip
        return cls(**tables, report=report, config=ExampleConfig.from_dict(report["config"]))

    def describe(self) -> str:
        """One line per split: examples, positives, base rate with its 95 % interval, users, time range."""
        lines = [f"signal {self.report['signal']['name']}  split {self.report['split']['scheme']}"
                 + (f" by {self.report['split']['group_by']}" if self.report["split"]["group_by"] else "")]
        for s in SPLITS:
            r = self.report["splits"][s]
            lo, hi = r["base_rate_ci95"]
            lines.append(f"{s:<5} n={r['examples']:>8,}  positives={r['positives']:>7,}  base rate {r['base_rate']:.4f} "
                         f"[{lo:.4f}, {hi:.4f}]  users={r['users']:>6,}  {r['first_time']} .. {r['last_time']}")  # fmt: skip
        return "\n".join(lines)


# ====================================================================== building


def build_examples(store: str | Path, config: ExampleConfig | None = None) -> ExampleSet:
    """Build the train/val/test example tables of `store` for `config.signal` (see the module docstring)."""
    config = config or ExampleConfig()
    t0 = time.perf_counter()
    con = _connect(store)
    names = [r[0] for r in con.sql("SELECT DISTINCT reaction FROM reaction_events ORDER BY 1").fetchall()]
    kind = _signal_kind(config.signal, names)
    msgs = _Messages.load(con)
    timing = _reaction_timing(con, config)
    data_end = con.sql("""SELECT greatest((SELECT max(epoch_us(time)) FROM messages),
                                         (SELECT max(epoch_us(time)) FROM reaction_events))""").fetchall()[0][0]
    ex = np.flatnonzero(msgs.role == ROLE_CODES["assistant"])
    t = msgs.time[ex]
    censored, censor_rule = _censored(kind, t, data_end, config, timing)
    if censored.all():
        raise ExampleError(f"all {len(ex):,} assistant messages are censored ({censor_rule}), so no label is known yet; "
                           "lower label_window_hours, add later data, or pick another signal")  # fmt: skip
    plan = _plan_split(msgs, ex, ~censored, config)
    flags, adv = _adversarial(con, msgs, ex, plan, config, timing)
    flagged_users = {f["user_id"] for f in flags}
    flagged = np.isin(msgs.user[ex], np.array([msgs.user_index[u] for u in flagged_users], np.int64))
    label = _labels(con, kind, config, msgs, ex, ~censored, flagged_users, timing)
    keep = ~censored & (plan.group >= 0) & ~flagged
    capped = _cap(msgs, ex, keep, config)
    keep &= ~capped
    split, vt_cut = _assign(plan, t, keep, config)
    tables = {}
    for code, name in enumerate(SPLITS):
        idx = np.flatnonzero(split == code)
        tables[name] = _table(msgs, ex[idx], label[idx], config.context_turns)
    report = _report(store, config, kind, names, msgs, ex, timing, data_end, censored, censor_rule, plan, vt_cut,
                     flags, adv, flagged & ~censored & (plan.group >= 0), capped, tables)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return ExampleSet(**tables, report=report, config=config)


def _connect(store):
    s = Store(store)
    try:
        if not s.exists():
            raise ExampleError(f"{s.root} is not a store (no manifest.json); create one with: "
                               f"rluf ingest LOGS --store {s.root}")
        con = s.connect()
    except StoreError as exc:
        raise ExampleError(str(exc)) from None
    con.sql("SET enable_progress_bar = false")
    if con.sql("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchall()[0][0] == 0:
        raise ExampleError(f"store {s.root} holds no assistant messages, so there is nothing to label; "
                           "ingest conversation logs first (rluf ingest LOGS --store DIR)")  # fmt: skip
    return con


def _signal_kind(signal: str, names: list[str]) -> str:
    if signal in DERIVED:
        return signal
    if signal in names:
        return "reaction"
    have = ", ".join(names) if names else "none"
    raise ExampleError(f"signal {signal!r} is not a reaction in this store (reactions in the store: {have}) nor a "
                       f"derived signal ({', '.join(DERIVED)}); pick one of these")  # fmt: skip


@dataclass
class _Messages:
    """Every message, ordered by conversation then turn; parent = the row of the previous turn (or -1)."""

    table: pa.Table  # message_id, conversation_id, user_id, time, category, policy, text
    role: np.ndarray  # ROLE_CODES
    words: np.ndarray  # int32 words of assistant messages (runs of non-whitespace), 0 for the others
    time: np.ndarray  # int64 microseconds since the epoch
    parent: np.ndarray  # int64 row of the parent in the same store, -1 for none
    conv: np.ndarray  # int64 conversation code
    user: np.ndarray  # int64 user code
    users: list  # user code -> user_id
    user_index: dict  # user_id -> code
    max_conv_len: int

    @classmethod
    def load(cls, con) -> _Messages:
        # Parent links: a conversation with any parent_id follows them (null = a root); one without any
        # (flat logs without parent_id) is a chain in (turn_index, time, message_id) order.
        t = con.sql("""
            WITH m AS (
                SELECT row_number() OVER (ORDER BY conversation_id, turn_index NULLS LAST, time, message_id) - 1 AS rn,
                       * FROM messages),
            linked AS (SELECT conversation_id, count(parent_id) > 0 AS linked FROM m GROUP BY 1)
            SELECT m.message_id, m.conversation_id, m.user_id, m.time, m.category, m.policy, m.text,
                   CASE m.role WHEN 'user' THEN 0 WHEN 'assistant' THEN 1 ELSE 2 END::TINYINT AS role,
                   epoch_us(m.time) AS time_us,
                   coalesce(CASE WHEN l.linked THEN p.rn
                                 ELSE lag(m.rn) OVER (PARTITION BY m.conversation_id ORDER BY m.rn) END, -1) AS parent,
                   dense_rank() OVER (ORDER BY m.conversation_id) - 1 AS conv,
                   dense_rank() OVER (ORDER BY m.user_id) - 1 AS user_code
            FROM m JOIN linked l USING (conversation_id) LEFT JOIN m p ON p.message_id = m.parent_id
            ORDER BY m.rn""").to_arrow_table()  # fmt: skip
        conv = t["conv"].to_numpy().astype(np.int64)
        user = t["user_code"].to_numpy().astype(np.int64)
        users = [None] * (int(user.max()) + 1 if len(user) else 0)
        for code, uid in zip(user.tolist(), t["user_id"].to_pylist()):
            users[code] = uid
        role = t["role"].to_numpy()
        words = np.zeros(len(role), np.int32)
        assistant = np.flatnonzero(role == ROLE_CODES["assistant"])
        text = pc.utf8_trim_whitespace(t["text"].take(pa.array(assistant)))
        n = pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False)
        words[assistant] = np.where(pc.equal(text, "").to_numpy(zero_copy_only=False), 0, n)
        return cls(table=t.select(["message_id", "conversation_id", "user_id", "time", "category", "policy", "text"]),
                   role=role, words=words, time=t["time_us"].to_numpy().astype(np.int64),
                   parent=t["parent"].to_numpy().astype(np.int64), conv=conv, user=user, users=users,
                   user_index={u: i for i, u in enumerate(users)},
                   max_conv_len=int(np.bincount(conv).max()) if len(conv) else 0)  # fmt: skip


def _reaction_timing(con, config: ExampleConfig) -> dict:
    """Whether reaction times are observed or placeholders (importers stamp reactions with the message's time)."""
    n, same = con.sql("""SELECT count(*), count(*) FILTER (WHERE e.time = m.time)
                         FROM reaction_events e JOIN messages m USING (message_id)
                         WHERE e.action = 'add'""").fetchall()[0]
    share = same / n if n else 0.0
    if config.reaction_times == "auto":
        mode = "placeholder" if n and share >= 0.5 else "observed"
        how = f"detected: {same:,} of {n:,} reaction adds carry their message's exact time"
    else:
        mode, how = config.reaction_times, "set by reaction_times"
    return {"mode": mode, "how": how, "add_events": n, "at_message_time": same}


def _censored(kind, t, data_end, config, timing):
    window = int(round(config.label_window_hours * 3600 * US))
    if kind == "reaction" and timing["mode"] == "observed":
        return t + window > data_end, f"message later than data end - {config.label_window_hours:g} h"
    if kind == "returned_next_day":
        day = np.floor_divide(t, DAY_US)
        return (day + 2) * DAY_US > data_end, "the next UTC day does not end before the data end"
    if kind == "continued":
        return np.zeros(len(t), bool), "none (continued is known at once)"
    return np.zeros(len(t), bool), "none (placeholder reaction times: a final snapshot)"


# ---------------------------------------------------------------------- split


@dataclass
class _Plan:
    scheme: str  # "time" or "grouped"
    group_by: str  # "user" (time, grouped) or "conversation"
    reason: str | None  # why the time scheme was not used
    group: np.ndarray  # per example: 0 train, 1 holdout (time) / 0 train 1 val 2 test (grouped); -1 dropped
    cut: int | None  # time scheme: train < cut <= holdout (microseconds)
    dropped_train_after_cut: int = 0
    dropped_holdout_before_cut: int = 0
    period: np.ndarray | None = None  # per example: in the training period (adversarial rules)


def _unit(keys: list[str], seed: int) -> np.ndarray:
    """A stable uniform number in [0, 1) per key (BLAKE2b of seed and key)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}\x1f{k}".encode(), digest_size=8).digest(), "big") / 2**64
                     for k in keys])  # fmt: skip


def _plan_split(msgs: _Messages, ex, ok, config: ExampleConfig) -> _Plan:
    t = msgs.time[ex]
    users = np.unique(msgs.user[ex[ok]])
    n_conv = int(msgs.conv.max()) + 1
    starts = np.full(n_conv, np.iinfo(np.int64).max)
    np.minimum.at(starts, msgs.conv, msgs.time)
    top = int(np.unique(starts, return_counts=True)[1].max())  # conversations sharing the commonest start time
    if len(users) < config.min_split_users:
        reason = (f"{len(users)} users with labelled examples (min_split_users = {config.min_split_users}): too few to "
                  "keep users apart in time")  # fmt: skip
        return _grouped(msgs, ex, ok, config, "conversation", reason)
    if top >= max(2, 0.1 * n_conv):
        reason = (f"conversation start times look like placeholders ({top:,} of {n_conv:,} conversations start at "
                  "the same instant), so a cut in time means nothing")  # fmt: skip
        return _grouped(msgs, ex, ok, config, "user", reason)
    hold_user = _unit(msgs.users, config.seed) < config.holdout_user_share
    hold = hold_user[msgs.user[ex]]
    cut, n_train, n_hold = _time_cut(t[ok], hold[ok], config.val_share + config.test_share)
    if n_train == 0 or n_hold == 0:
        reason = (f"no cut time leaves both groups examples ({n_train} training-group examples before it, {n_hold} "
                  "holdout-group examples after it)")  # fmt: skip
        return _grouped(msgs, ex, ok, config, "user", reason)
    group = np.full(len(ex), -1, np.int8)
    group[ok & ~hold & (t < cut)] = 0
    group[ok & hold & (t >= cut)] = 1
    return _Plan("time", "user", None, group, int(cut),
                 dropped_train_after_cut=int((ok & ~hold & (t >= cut)).sum()),
                 dropped_holdout_before_cut=int((ok & hold & (t < cut)).sum()), period=t < cut)  # fmt: skip


def _time_cut(t, hold, share):
    """The earliest cut time at which holdout examples at or after it are at most `share` of the kept ones."""
    order = np.argsort(t, kind="stable")
    ts, hs = t[order], hold[order]
    times, first = np.unique(ts, return_index=True)
    train_before = np.concatenate([[0], np.cumsum(~hs)])[first]
    hold_after = int(hs.sum()) - np.concatenate([[0], np.cumsum(hs)])[first]
    ratio = hold_after / np.maximum(train_before + hold_after, 1)
    j = np.flatnonzero(ratio <= share)
    j = int(j[0]) if len(j) else len(times) - 1
    return times[j], int(train_before[j]), int(hold_after[j])


def _grouped(msgs, ex, ok, config, by, reason) -> _Plan:
    if by == "user":
        u = _unit(msgs.users, config.seed)[msgs.user[ex]]
    else:
        cids = msgs.table["conversation_id"].take(pa.array(ex)).to_pylist()
        u = _unit(cids, config.seed)
    group = np.where(u < config.test_share, 2, np.where(u < config.test_share + config.val_share, 1, 0)).astype(np.int8)
    group[~ok] = -1
    return _Plan("grouped", by, reason, group, None, period=group == 0)


def _assign(plan: _Plan, t, keep, config: ExampleConfig):
    """Per example: 0 train, 1 val, 2 test, -1 not kept; and the val/test cut (time scheme)."""
    split = np.full(len(t), -1, np.int8)
    if plan.scheme == "grouped":
        split[keep] = plan.group[keep]
        return split, None
    split[keep & (plan.group == 0)] = 0
    ev = np.flatnonzero(keep & (plan.group == 1))
    if len(ev) == 0:
        raise ExampleError("no holdout-group example is left after the cut, the filter and the cap, so val and test "
                           "are empty; raise holdout_user_share or val_share/test_share, or add data")  # fmt: skip
    times, first = np.unique(np.sort(t[ev]), return_index=True)
    if len(times) < 2:
        raise ExampleError("every holdout example has the same time, so val cannot come before test; use more data")
    want = len(ev) * config.val_share / (config.val_share + config.test_share)
    j = 1 + int(np.argmin(np.abs(first[1:] - want)))
    vt = int(times[j])
    split[ev] = np.where(t[ev] < vt, 1, 2)
    return split, vt


# ---------------------------------------------------------------------- adversarial users


def _adversarial(con, msgs, ex, plan: _Plan, config: ExampleConfig, timing) -> tuple[list[dict], dict]:
    """Flag implausible reactors from training-period data: (a) reaction share, (b) reading speed."""
    period = "assistant messages and reaction events before the cut time" if plan.scheme == "time" else \
        "assistant messages of the training groups and their reaction events"
    info = {"enabled": config.adversarial_filter, "decided_on": period}
    if not config.adversarial_filter:
        return [], info
    rows = ex[plan.period]
    take = pa.array(rows, pa.int64())
    pm = pa.table({"message_id": msgs.table["message_id"].take(take), "user_id": msgs.table["user_id"].take(take),
                   "time_us": msgs.time[rows], "words": msgs.words[rows]})
    con.register("_period", pm)
    cut = plan.cut if plan.cut is not None else np.iinfo(np.int64).max
    # Reactions standing as of the cut: the store's resolution (last action wins) over events before it.
    con.sql(f"""CREATE OR REPLACE TEMP VIEW _asof AS
        SELECT message_id, user_id, reaction, time FROM (
            SELECT *, row_number() OVER (PARTITION BY message_id, user_id, reaction
                ORDER BY time DESC, batch_no DESC, block DESC, source_line DESC, seq DESC) AS rn
            FROM reaction_events WHERE epoch_us(time) < {int(cut)})
        WHERE rn = 1 AND action = 'add'""")  # fmt: skip
    received = dict(con.sql("SELECT user_id, count(*) FROM _period GROUP BY 1").fetchall())
    hits = con.sql("""SELECT p.user_id, r.reaction, count(DISTINCT p.message_id) FROM _period p
                          JOIN _asof r ON r.message_id = p.message_id AND r.user_id = p.user_id GROUP BY ALL""").fetchall()  # fmt: skip
    total = sum(received.values())
    pop: dict[str, int] = {}
    for _, name, k in hits:
        pop[name] = pop.get(name, 0) + k
    # The typical user's share (the median over users judged, zeros included) is robust to the very users
    # the rule looks for, who inflate the population share.
    eligible = [u for u, n in received.items() if n >= config.min_messages]
    per_user: dict[str, dict[str, int]] = {}
    for uid, name, k in hits:
        per_user.setdefault(name, {})[uid] = k
    typical = {name: float(np.median([per_user[name].get(u, 0) / received[u] for u in eligible])) if eligible else 0.0
               for name in pop}  # fmt: skip
    thresholds = {name: max(config.max_reaction_share, min(1.0, config.reaction_share_ratio * typical[name]))
                  for name in pop}  # fmt: skip
    info["typical_user_share"] = {name: round(v, 6) for name, v in sorted(typical.items())}
    info["population_share"] = {name: _rate(k, total) for name, k in sorted(pop.items())}
    info["share_thresholds"] = {name: round(v, 6) for name, v in sorted(thresholds.items())}
    flags = []
    for uid, name, k in sorted(hits):
        n = received[uid]
        if n >= config.min_messages and k / n >= thresholds[name]:
            flags.append({"user_id": uid, "rule": "reaction_share",
                          "statistic": f"share of received assistant messages with a standing {name}",
                          "value": round(k / n, 6), "threshold": round(thresholds[name], 6), "k": k, "n": n,
                          "ci95": [round(x, 6) for x in wilson(k, n)], "reaction": name})  # fmt: skip
    if timing["mode"] == "placeholder":
        info["fast_rule"] = "skipped: reaction times are placeholders, so reading speed cannot be measured"
    else:
        floor, per_word = float(config.min_read_seconds), float(config.read_seconds_per_word)
        info["fast_rule"] = (f"applied: a reaction is too fast when it arrives less than max({floor:g} s, "
                             f"{per_word:g} s x response words) after the message")
        fast = con.sql(f"""
            SELECT e.user_id, count(*) AS n,
                   count(*) FILTER (WHERE epoch_us(e.time) - p.time_us < {US} * greatest({floor}, {per_word} * p.words)) AS k
            FROM reaction_events e JOIN _period p USING (message_id)
            WHERE e.action = 'add' AND epoch_us(e.time) < {int(cut)} GROUP BY 1 ORDER BY 1""").fetchall()  # fmt: skip
        for uid, n, k in fast:
            if n >= config.min_reactions and k / n >= config.max_fast_share:
                flags.append({"user_id": uid, "rule": "fast_reactions",
                              "statistic": "share of the user's reactions faster than the response can be read",
                              "value": round(k / n, 6), "threshold": config.max_fast_share, "k": k, "n": n,
                              "ci95": [round(x, 6) for x in wilson(k, n)], "reaction": None})  # fmt: skip
    con.unregister("_period")
    return flags, info


# ---------------------------------------------------------------------- labels and text


def _labels(con, kind, config, msgs, ex, ok, flagged_users, timing) -> np.ndarray:
    label = np.zeros(len(ex), np.int8)
    if kind == "continued":
        label[:] = _continued(msgs)[ex]
    elif kind == "returned_next_day":
        users = msgs.role == ROLE_CODES["user"]
        day = np.floor_divide(msgs.time, DAY_US)
        day0 = int(day.min())
        active = np.unique(msgs.user[users] * (1 << 24) + (day[users] - day0))
        label[:] = np.isin(msgs.user[ex] * (1 << 24) + (day[ex] + 1 - day0), active)
    else:
        idx = np.flatnonzero(ok)
        rows = ex[idx]
        cand = pa.table({"i": idx, "message_id": msgs.table["message_id"].take(pa.array(rows)), "time_us": msgs.time[rows]})
        con.register("_cand", cand)
        con.register("_flagged", pa.table({"user_id": pa.array(sorted(flagged_users), pa.string())}))
        window = "TRUE" if timing["mode"] == "placeholder" else \
            f"epoch_us(r.time) - c.time_us <= {int(round(config.label_window_hours * 3600 * US))}"
        hit = con.sql(f"""SELECT DISTINCT c.i FROM _cand c JOIN reactions r ON r.message_id = c.message_id
                          WHERE r.reaction = ? AND r.user_id NOT IN (SELECT user_id FROM _flagged)
                            AND {window}""", params=[config.signal]).fetchnumpy()["i"]
        label[hit.astype(np.int64)] = 1
        con.unregister("_cand")
        con.unregister("_flagged")
    return label


def _continued(msgs: _Messages) -> np.ndarray:
    """Per message: an assistant message with a later message by the same user below it in its conversation."""
    out = np.zeros(len(msgs.role), bool)
    u = np.flatnonzero(msgs.role == ROLE_CODES["user"])
    owner, conv, cur = msgs.user[u], msgs.conv[u], msgs.parent[u]
    for _ in range(msgs.max_conv_len):  # the walk up the ancestors stays inside the conversation
        ok = cur >= 0
        cur, owner, conv = cur[ok], owner[ok], conv[ok]
        same = msgs.conv[cur] == conv
        cur, owner, conv = cur[same], owner[same], conv[same]
        if len(cur) == 0:
            break
        out[cur[(msgs.role[cur] == ROLE_CODES["assistant"]) & (msgs.user[cur] == owner)]] = True
        cur = msgs.parent[cur]
    return out


def _contexts(msgs: _Messages, rows: np.ndarray, k: int) -> list[str]:
    """render_context over the k ancestors of each row, oldest first."""
    if k == 0:
        return [""] * len(rows)
    anc = np.full((k, len(rows)), -1, np.int64)
    cur = msgs.parent[rows]
    for j in range(k):
        anc[j] = cur
        cur = np.where(cur >= 0, msgs.parent[np.maximum(cur, 0)], -1)
    need = np.unique(anc[anc >= 0])
    texts = dict(zip(need.tolist(), msgs.table["text"].take(pa.array(need)).to_pylist()))
    names = {code: name for name, code in ROLE_CODES.items()}
    roles = dict(zip(need.tolist(), (names[int(r)] for r in msgs.role[need])))
    return [render_context([{"role": roles[a], "text": texts[a]} for a in chain if a >= 0], k)
            for chain in anc[::-1].T.tolist()]  # fmt: skip


def _cap(msgs, ex, keep, config) -> np.ndarray:
    """Examples dropped by the per-user cap: each user over the cap keeps a seeded random subset."""
    capped = np.zeros(len(ex), bool)
    cap = config.max_examples_per_user
    if cap is None:
        return capped
    users = msgs.user[ex]
    counts = np.bincount(users[keep], minlength=len(msgs.users))
    over = np.flatnonzero(keep & (counts[users] > cap))
    if len(over) == 0:
        return capped
    ids = msgs.table["message_id"].take(pa.array(ex[over])).to_pylist()
    order = np.lexsort((_unit(ids, config.seed), users[over]))
    ranked = over[order]
    u_sorted = users[ranked]
    start = np.searchsorted(u_sorted, u_sorted, side="left")
    rank = np.arange(len(ranked)) - start
    capped[ranked[rank >= cap]] = True
    return capped


def _table(msgs: _Messages, rows: np.ndarray, label: np.ndarray, k: int) -> pa.Table:
    """The examples of `rows` (message rows), sorted by time then message id."""
    base = msgs.table.take(pa.array(rows, pa.int64()))
    return pa.table({
        "message_id": base["message_id"], "conversation_id": base["conversation_id"], "user_id": base["user_id"],
        "time": base["time"].cast(pa.timestamp("us", tz="UTC")), "category": base["category"], "policy": base["policy"],
        "context": pa.array(_contexts(msgs, rows, k), pa.string()), "response": base["text"],
        "response_words": pa.array(msgs.words[rows], pa.int32()), "label": pa.array(label, pa.int8())},
        schema=SCHEMA).sort_by([("time", "ascending"), ("message_id", "ascending")])  # fmt: skip


# ---------------------------------------------------------------------- report


def _iso(us) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(int(us) / US, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _rate(k: int, n: int) -> dict:
    return {"k": int(k), "n": int(n), "rate": round(k / n, 6) if n else None, "ci95": [round(x, 6) for x in wilson(k, n)]}


def _split_stats(t: pa.Table) -> dict:
    n = t.num_rows
    k = int(pc.sum(t["label"]).as_py() or 0) if n else 0
    times = t["time"]
    return {"examples": n, "positives": k, "base_rate": round(k / n, 6) if n else None,
            "base_rate_ci95": [round(x, 6) for x in wilson(k, n)],
            "users": len(pc.unique(t["user_id"])), "conversations": len(pc.unique(t["conversation_id"])),
            "first_time": _iso(pc.min(times).value) if n else None,
            "last_time": _iso(pc.max(times).value) if n else None}  # fmt: skip


def _report(store, config, kind, names, msgs, ex, timing, data_end, censored, censor_rule, plan, vt_cut, flags, adv,
            removed, capped, tables) -> dict:  # fmt: skip
    splits = {s: _split_stats(tables[s]) for s in SPLITS}
    for s in SPLITS:
        if splits[s]["examples"] == 0:
            hint = {"train": "lower val_share/test_share or holdout_user_share",
                    "val": "raise val_share or holdout_user_share", "test": "raise test_share or holdout_user_share"}[s]
            raise ExampleError(f"the {s} split is empty after censoring, the split, the adversarial filter and the cap "
                               f"({len(ex):,} assistant messages, {int(censored.sum()):,} censored); {hint}, or use more "
                               "data")  # fmt: skip
    users = {s: set(tables[s]["user_id"].to_pylist()) for s in SPLITS}
    kept = sum(splits[s]["examples"] for s in SPLITS)
    train_last = pc.max(tables["train"]["time"]).value
    eval_first = min(pc.min(tables[s]["time"]).value for s in ("val", "test"))
    warnings = [f"the {s} split has no positive examples" for s in SPLITS if splits[s]["positives"] == 0]
    if plan.reason:
        warnings.append(f"time split not used: {plan.reason}")
    return {
        "store": str(store),
        "config": dataclasses.asdict(config),
        "signal": {"name": config.signal, "kind": kind, "reactions_in_store": names},
        "data": {"assistant_messages": len(ex), "messages": len(msgs.role), "users": len(msgs.users),
                 "first_time": _iso(int(msgs.time.min())), "data_end": _iso(data_end), "reaction_times": timing},
        "censored": {"examples": int(censored.sum()), "rule": censor_rule},
        "split": {"scheme": plan.scheme, "group_by": plan.group_by, "reason": plan.reason,
                  "cut_time": _iso(plan.cut), "val_test_time": _iso(vt_cut),
                  "holdout_user_share": config.holdout_user_share if plan.scheme == "time" else None,
                  "shares": {s: round(splits[s]["examples"] / kept, 6) for s in SPLITS},
                  "dropped_training_group_after_cut": plan.dropped_train_after_cut,
                  "dropped_holdout_group_before_cut": plan.dropped_holdout_before_cut},
        "adversarial": {**adv, "flagged": flags, "users_flagged": len({f["user_id"] for f in flags}),
                        "examples_removed": int(removed.sum())},
        "cap": {"max_examples_per_user": config.max_examples_per_user, "examples_removed": int(capped.sum()),
                "users_capped": len(np.unique(msgs.user[ex[capped]]))},
        "splits": splits,
        "checks": {"train_before_eval": bool(train_last < eval_first),
                   "train_test_users_disjoint": not (users["train"] & users["test"]),
                   "train_val_users_disjoint": not (users["train"] & users["val"])},
        "warnings": warnings,
    }  # fmt: skip


# ====================================================================== imbalance


def upsample(table: pa.Table, target_share: float = 0.10, seed: int = 0) -> tuple[pa.Table, float]:
    """Duplicate positive rows until they are at least `target_share` of the table; (table, achieved share).

    For the training split only (METHOD.md 1.2: positives upsampled to 10 %). The original rows come first,
    unchanged, then the duplicates: every positive repeated the same number of times, plus a seeded random
    subset of the positives once more. A table already at or above the share is returned as is. Scores of a
    model trained on the result need the prior shift back to the true base rate (report["splits"]["train"]).
    """
    if not isinstance(table, pa.Table) or "label" not in table.column_names:
        raise ExampleError("upsample needs a pyarrow Table with a 'label' column (an ExampleSet split)")
    if isinstance(target_share, bool) or not isinstance(target_share, (int, float)) or not 0 < target_share < 1:
        raise ExampleError(f"upsample: target_share must be strictly between 0 and 1, got {target_share!r}")
    labels = table["label"].to_numpy(zero_copy_only=False)
    if np.isin(labels, [0, 1], invert=True).any():
        raise ExampleError("upsample: labels must be 0 or 1")
    pos = np.flatnonzero(labels == 1)
    n, k = len(labels), len(pos)
    if k == 0:
        raise ExampleError(f"upsample: the table has no positive rows out of {n:,}, so there is nothing to upsample")
    if k / n >= target_share:
        return table, k / n
    want = math.ceil(target_share * (n - k) / (1 - target_share))
    extra = want - k
    rng = np.random.default_rng(seed)
    dup = np.concatenate([np.tile(pos, extra // k), np.sort(rng.choice(pos, extra % k, replace=False))])
    out = pa.concat_tables([table, table.take(pa.array(dup, pa.int64()))])
    return out, want / (n + extra)


# ====================================================================== command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rluf.reward.data", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store directory (rluf ingest ... --store DIR)")
    p.add_argument("--out", required=True, help="directory for train/val/test.parquet and report.json")
    p.add_argument("--config", help="JSON file of ExampleConfig keys")
    p.add_argument("--signal", help="reaction name, continued or returned_next_day (overrides --config)")
    a = p.parse_args(argv)
    try:
        data = json.loads(Path(a.config).read_text()) if a.config else {}
        if a.signal:
            data["signal"] = a.signal
        ex = build_examples(a.store, ExampleConfig.from_dict(data))
    except (ExampleError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ex.save(a.out)
    print(ex.describe())
    print(f"censored {ex.report['censored']['examples']:,}  flagged users {ex.report['adversarial']['users_flagged']}  "
          f"in {ex.report['seconds']}s  -> {a.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
