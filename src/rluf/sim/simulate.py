"""The `rluf simulate` job: production-like logs from the simulated world, and its truth apart.

    rluf simulate --users 2000 --days 42 --seed 0 --out runs/sim [--format jsonl|parquet] [--config world.yaml]

Writes
    OUT/logs/conversations.jsonl (or .parquet)  nested conversations in the data contract, with their
                                                reactions (late ones and removed ones included)
    OUT/truth/messages.parquet                  one row per assistant message (world.MESSAGE_TRUTH)
    OUT/truth/users.parquet                     one row per user in the logs (world.USER_TRUTH)
    OUT/truth/world.json                        the config, seed, calibrated intercepts and counts

`rluf ingest OUT/logs --store S` reads the logs unchanged; the truth is for evaluation only.

Users are simulated in shards of consecutive indices, in worker processes; every user draws from
their own seeded stream, each shard is written to its own part files, and the parts are concatenated
in shard order, so the output is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import time
from collections import deque
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .config import WorldConfig, config_from_dict, to_dict
from .world import MESSAGE_TRUTH, USER_TRUTH, World

FORMATS = ("jsonl", "parquet")
SHARD_USERS = 500

_REACTION = pa.struct([("name", pa.string()), ("time", pa.string()), ("action", pa.string())])
_TURN = pa.struct([("message_id", pa.string()), ("role", pa.string()), ("text", pa.string()), ("time", pa.string()),
                   ("reactions", pa.list_(_REACTION))])  # fmt: skip
LOG_SCHEMA = pa.schema([("conversation_id", pa.string()), ("user_id", pa.string()), ("started_at", pa.string()),
                        ("category", pa.string()), ("policy", pa.string()), ("turns", pa.list_(_TURN))])  # fmt: skip
_TS = pa.timestamp("s", tz="UTC")
MESSAGE_SCHEMA = pa.schema([
    ("message_id", pa.string()), ("conversation_id", pa.string()), ("user_id", pa.string()), ("time", _TS),
    ("category", pa.string()), ("segment", pa.string()), ("policy", pa.string()), ("p_love", pa.float64()),
    ("p_thumbs_up", pa.float64()), ("p_thumbs_down", pa.float64()), ("helpfulness", pa.float64()),
    ("warmth", pa.float64()), ("safety", pa.string()), ("love_bait", pa.bool_()), ("refusal", pa.bool_()),
    ("flattery", pa.bool_()), ("on_topic", pa.bool_()), ("correct", pa.bool_()), ("warm_sentences", pa.int8()),
    ("emojis", pa.int8()), ("words", pa.int32())])  # fmt: skip
USER_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("segment", pa.string()), ("propensity", pa.float64()), ("negativity", pa.float64()),
    ("bait_affinity", pa.float64()), ("sessions_per_day", pa.float64()), ("first_seen", _TS),
    ("p_retained", pa.float64()), ("retained", pa.bool_()), ("mean_helpfulness", pa.float64()),
    ("mean_warmth", pa.float64()), ("mean_valued_warmth", pa.float64()), ("n_conversations", pa.int32()), ("n_assistant_messages", pa.int32())])  # fmt: skip
assert tuple(MESSAGE_SCHEMA.names) == MESSAGE_TRUTH and tuple(USER_SCHEMA.names) == USER_TRUTH


class SimulateError(ValueError):
    """Bad arguments for a simulation (the message says which)."""


def simulate(out: str | os.PathLike, users: int, days: int | None = None, seed: int = 0, fmt: str = "jsonl",
             config: WorldConfig | None = None, workers: int | None = None, overwrite: bool = False,
             shard_users: int = SHARD_USERS) -> dict:  # fmt: skip
    """Simulate `users` users for `days` days (default: config.days); return the summary dict."""
    if fmt not in FORMATS:
        raise SimulateError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if users < 1:
        raise SimulateError(f"--users must be at least 1, got {users}")
    config = config or WorldConfig()
    days = config.days if days is None else days
    if days < 1:
        raise SimulateError(f"--days must be at least 1, got {days}")
    if seed < 0:
        raise SimulateError(f"--seed must be >= 0, got {seed}")
    out = Path(out)
    logs_dir, truth_dir = out / "logs", out / "truth"
    for d in (logs_dir, truth_dir):
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise SimulateError(f"{d} already holds files; pass --overwrite or pick another --out")
            shutil.rmtree(d)
    t0 = time.perf_counter()
    world = World(config, seed)
    tmp = out / "_parts"
    shutil.rmtree(tmp, ignore_errors=True)
    for d in (logs_dir, truth_dir, tmp):
        d.mkdir(parents=True, exist_ok=True)
    shards = [(k, lo, min(lo + shard_users, users)) for k, lo in enumerate(range(0, users, shard_users))]
    workers = max(1, min(workers or os.cpu_count() or 1, len(shards)))
    init = (to_dict(config), seed, world.intercepts)
    counts = {"users": 0, "conversations": 0, "messages": 0, "assistant_messages": 0, "reaction_events": 0}
    log_path = logs_dir / f"conversations.{fmt}"
    writers = _Writers(log_path, truth_dir, fmt)
    try:
        for result in _run_shards(shards, init, days, fmt, str(tmp), workers):
            for k in counts:
                counts[k] += result[k]
            writers.append(Path(result["dir"]))
    finally:
        writers.close()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    summary = {"out": str(out), "logs": str(log_path), "truth": str(truth_dir), "seed": seed, "days": days,
               "format": fmt, "workers": workers, "intercepts": list(world.intercepts), **counts,
               "seconds": round(seconds, 3),
               "conversations_per_s": round(counts["conversations"] / seconds, 1) if seconds else None}  # fmt: skip
    meta = {**{k: v for k, v in summary.items() if k not in ("seconds", "conversations_per_s", "workers", "out")},
            "config": to_dict(config)}  # fmt: skip
    meta["logs"] = log_path.name
    meta["truth"] = "truth"
    (truth_dir / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    return summary


def _run_shards(shards, init, days, fmt, tmp, workers):
    if workers == 1:
        _init_worker(*init)
        for shard in shards:
            yield _run_shard(shard, days, fmt, tmp)
        return
    ctx = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
        pending: deque = deque()
        for shard in shards:
            pending.append(pool.submit(_run_shard, shard, days, fmt, tmp))
            while len(pending) > 2 * workers:  # bounded: a few shards in flight, results in shard order
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_WORLD: World | None = None


def _init_worker(config: dict, seed: int, intercepts) -> None:
    global _WORLD
    _WORLD = World(config_from_dict(config), seed, intercepts=intercepts)


def _run_shard(shard, days: int, fmt: str, tmp: str) -> dict:
    k, lo, hi = shard
    world = _WORLD
    d = Path(tmp) / f"shard-{k:06d}"
    d.mkdir()
    counts = {"users": 0, "conversations": 0, "messages": 0, "assistant_messages": 0, "reaction_events": 0}
    records, messages, users = [], [], []
    for log in world.serve(None, users=range(lo, hi), days=days):
        counts["users"] += 1
        records.extend(log.records)
        messages.extend(log.messages)
        users.append(log.user)
    counts["conversations"] = len(records)
    counts["assistant_messages"] = len(messages)
    counts["messages"] = sum(len(r["turns"]) for r in records)
    counts["reaction_events"] = sum(len(t.get("reactions", ())) for r in records for t in r["turns"])
    if fmt == "jsonl":
        with open(d / "logs.jsonl", "wb") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records, schema=LOG_SCHEMA), d / "logs.parquet")
    pq.write_table(_table(messages, MESSAGE_SCHEMA), d / "messages.parquet")
    pq.write_table(_table(users, USER_SCHEMA), d / "users.parquet")
    return {**counts, "dir": str(d)}


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[] for _ in schema.names]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, schema)], schema=schema)


class _Writers:
    """Appends each shard's parts to the final files, in shard order."""

    def __init__(self, log_path: Path, truth_dir: Path, fmt: str):
        self.fmt = fmt
        self.log = open(log_path, "wb") if fmt == "jsonl" else pq.ParquetWriter(log_path, LOG_SCHEMA)
        self.messages = pq.ParquetWriter(truth_dir / "messages.parquet", MESSAGE_SCHEMA)
        self.users = pq.ParquetWriter(truth_dir / "users.parquet", USER_SCHEMA)

    def append(self, d: Path) -> None:
        if self.fmt == "jsonl":
            with open(d / "logs.jsonl", "rb") as f:
                shutil.copyfileobj(f, self.log, 1 << 20)
        else:
            self.log.write_table(pq.read_table(d / "logs.parquet", schema=LOG_SCHEMA))
        self.messages.write_table(pq.read_table(d / "messages.parquet", schema=MESSAGE_SCHEMA))
        self.users.write_table(pq.read_table(d / "users.parquet", schema=USER_SCHEMA))
        shutil.rmtree(d)

    def close(self) -> None:
        for w in (self.log, self.messages, self.users):
            w.close()
