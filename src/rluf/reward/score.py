"""Score every assistant message of a store, or every record of a file, with one or more reward models.

    python -c "from pathlib import Path; from rluf.reward.score import score_store; print(score_store([Path('runs/rm/love')], Path('runs/demo/store'), Path('runs/scores.parquet')))"

`score_store` reads the store's `messages` view through DuckDB, sorted by conversation and turn
(turn_index, then time, then message_id), and makes one input row per assistant message: its
context is the turns before it, the last `context_turns` of them rendered with `render_context` for
each model. "Before it" is what the training examples use (reward/data.py): its ancestors through
parent_id, or, in a conversation without any parent_id, the turns before it in that order.
`score_file` does the same for a JSONL (optionally gzipped) or Parquet file of records
{"context": str | [turns], "response": str, "id": optional}; a string context is one user turn.

Both stream: inputs are read, scored and written `batch_size` rows at a time, so memory stays
bounded whatever the row count: DuckDB spills its sort to a temporary directory beside the output,
and one conversation at a time is held in memory.
The output is one Parquet file with one float64 column `p_<name>` per model, `name` being the model
directory's name; it is written to `<out>.tmp` and renamed when complete, so a failed run leaves no
partial file.

With `ray_address` the scoring runs on Ray Data instead: the inputs are first written to a Parquet
file in `work_dir` (default: the output's directory; on a remote cluster it must be storage every
node can read, and so must the model directories), read back with `ray.data.read_parquet`, and
scored by `map_batches` with a callable class that loads the models once per actor (`concurrency`
actors). Order is preserved and the code that scores a batch is the same as locally, so the output
file is identical to the local one for models whose scores do not depend on the batch they are in.
`ray_address="local"` starts a local Ray with `num_cpus=2` (shut down afterwards); any other value
is passed to `ray.init(address=...)`; an already initialised Ray is used as it is.

Bad records in a file: by default the first one stops the run with a ScoreError naming the file,
the line (the row for Parquet, 1-based) and the field. With `rejects=PATH` they are written there
instead, one JSON object per line (source, line, field, reason, raw), and counted: read = scored +
rejected always holds, so nothing is dropped silently. Blank JSONL lines are counted, not records.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from rluf.data.store import Store

from .base import RewardModel, RewardModelError
from .text import as_turns, render_context

Z95 = 1.959963984540054
STORE_KEYS = (("message_id", pa.string()), ("conversation_id", pa.string()), ("user_id", pa.string()),
              ("category", pa.string()), ("policy", pa.string()))  # fmt: skip
FILE_KEYS = (("line", pa.int64()), ("id", pa.string()))
RAW_CHARS = 2000  # characters of a rejected record kept in the rejects file
ROW_GROUP = 65_536  # rows per Parquet row group of the output


class ScoreError(ValueError):
    pass


# ------------------------------------------------------------------ models


def model_names(model_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """The column name of each model: its directory's name. Two models may not share one."""
    if not model_dirs:
        raise ScoreError("no reward model given; pass at least one model directory (--model DIR)")
    names = [Path(d).resolve().name for d in model_dirs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScoreError(f"model directories share the name(s) {dup}; each becomes the column p_<name>, "
                         "so give every model a directory of its own name")  # fmt: skip
    return names


def load_models(model_dirs: Sequence[str | os.PathLike]) -> dict[str, RewardModel]:
    """name -> loaded model; a directory that is not a reward model raises ScoreError."""
    out = {}
    for name, d in zip(model_names(model_dirs), model_dirs):
        try:
            out[name] = RewardModel.load(d)
        except RewardModelError as exc:
            raise ScoreError(str(exc)) from None
    return out


def context_lengths(models: dict[str, RewardModel]) -> list[int]:
    """The distinct context_turns of the models: the inputs carry one rendered context per length."""
    return sorted({m.context_turns for m in models.values()})


class Scorer:
    """Scores input batches: loads the models once, then maps a batch of (keys..., ctx_<k>..., response)
    to (keys..., p_<name>...), where ctx_<k> is the context rendered with k turns. The same class runs
    locally and as a Ray Data actor."""

    def __init__(self, model_dirs: Sequence[str], keys: Sequence[str], models: dict[str, RewardModel] | None = None):
        self.models = load_models(model_dirs) if models is None else models
        self.keys = list(keys)

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        responses = batch.column("response").to_pylist()
        contexts = {k: batch.column(f"ctx_{k}").to_pylist() for k in context_lengths(self.models)}
        cols = {k: batch.column(k) for k in self.keys}
        for name, model in self.models.items():
            cols[f"p_{name}"] = pa.array(model.predict_proba(contexts[model.context_turns], responses), pa.float64())
        return pa.table(cols)


def output_schema(keys: Sequence[tuple[str, pa.DataType]], names: Sequence[str]) -> pa.Schema:
    return pa.schema([pa.field(k, t) for k, t in keys] + [pa.field(f"p_{n}", pa.float64()) for n in names])


def input_schema(keys: Sequence[tuple[str, pa.DataType]], lengths: Sequence[int]) -> pa.Schema:
    return pa.schema([pa.field(k, t) for k, t in keys] + [pa.field(f"ctx_{k}", pa.string()) for k in lengths]
                     + [pa.field("response", pa.string())])  # fmt: skip


# ------------------------------------------------------------------ public API


def score_store(model_dirs: list[Path], store: Path, out: Path, batch_size: int = 256, ray_address: str | None = None,
                concurrency: int = 1, work_dir: Path | None = None, memory_limit: str = "1GB") -> dict:  # fmt: skip
    """Score every assistant message of the store at `store` with each model; write Parquet to `out`.

    Output columns: message_id, conversation_id, user_id, category, policy, p_<name> per model (float64,
    calibrated P[signal]). Returns {"rows", "models", "out", "backend", "seconds", "summary"}, where
    summary[name] is the mean score with its n and 95 % interval.
    """
    _check_options(batch_size, concurrency)
    models = load_models(model_dirs)
    st = Store(store)
    if not st.exists():
        raise ScoreError(f"{store}: not a store (no manifest.json); create one with `rluf ingest LOGS --store {store}`")
    t0 = time.perf_counter()
    with _spill_dir(work_dir or Path(out).parent) as tmp:
        con = st.connect(memory_limit=memory_limit)
        try:
            con.execute(f"SET temp_directory='{_sql_str(str(tmp / 'duckdb'))}'")
            con.execute("SET enable_progress_bar=false")
            batches = _store_batches(con.sql(STORE_SQL).to_arrow_reader(READ_ROWS), context_lengths(models),
                                     batch_size)  # fmt: skip
            n, summary = _run(model_dirs, models, batches, STORE_KEYS, Path(out), batch_size, ray_address,
                              concurrency, tmp)  # fmt: skip
        finally:
            con.close()
    return {"rows": n, "models": list(models), "out": str(out), "backend": "ray" if ray_address else "local",
            "seconds": round(time.perf_counter() - t0, 3), "summary": summary}  # fmt: skip


def score_file(model_dirs: list[Path], path: Path, out: Path, batch_size: int = 256, ray_address: str | None = None,
               concurrency: int = 1, work_dir: Path | None = None, rejects: Path | None = None) -> dict:  # fmt: skip
    """Score every record of a JSONL (.jsonl, .json, .gz) or Parquet file with each model; write Parquet to `out`.

    A record is {"context": str | [{"role", "text" | "content"}], "response": str, "id": optional str or
    int}; other keys are ignored. Output columns: line (1-based line, or row for Parquet), id (null when
    absent), p_<name> per model. Without `rejects` the first bad record raises ScoreError; with it, bad
    records go there. Returns {"read", "scored", "rejected", "blank_lines", "rows", "models", "out",
    "rejects", "backend", "seconds", "summary"}.
    """
    _check_options(batch_size, concurrency)
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: no such file; give a JSONL or Parquet file of {{context, response}} records")
    models = load_models(model_dirs)
    counts = {"read": 0, "scored": 0, "rejected": 0, "blank_lines": 0}
    t0 = time.perf_counter()
    rej = None
    if rejects is not None:
        Path(rejects).parent.mkdir(parents=True, exist_ok=True)
        rej = open(rejects, "wb")
    try:
        with _spill_dir(work_dir or Path(out).parent) as tmp:
            batches = _file_batches(path, context_lengths(models), batch_size, counts, rej)
            n, summary = _run(model_dirs, models, batches, FILE_KEYS, Path(out), batch_size, ray_address,
                              concurrency, tmp)  # fmt: skip
    finally:
        if rej is not None:
            rej.close()
    counts["scored"] = n
    if counts["read"] != counts["scored"] + counts["rejected"]:  # an internal invariant, never expected to fail
        raise ScoreError(f"counts do not reconcile: read {counts['read']} != scored {n} + rejected {counts['rejected']}")
    return {**counts, "rows": n, "models": list(models), "out": str(out), "rejects": str(rejects) if rejects else None,
            "backend": "ray" if ray_address else "local", "seconds": round(time.perf_counter() - t0, 3),
            "summary": summary}  # fmt: skip


# ------------------------------------------------------------------ inputs


# Every message, grouped by conversation and in turn order; category and policy from the message, else
# from its conversation. A plain sort, which DuckDB spills to disk when it outgrows memory_limit.
STORE_SQL = """
SELECT m.message_id, m.conversation_id, m.parent_id, m.user_id, m.role, coalesce(m.text, '') AS text,
       coalesce(m.category, c.category) AS category, coalesce(m.policy, c.policy) AS policy
FROM messages m
LEFT JOIN (SELECT DISTINCT ON (conversation_id) conversation_id, category, policy FROM conversations) c
    USING (conversation_id)
ORDER BY m.conversation_id, m.turn_index NULLS LAST, m.time, m.message_id
"""
READ_ROWS = 65_536  # messages per batch read from DuckDB


def _store_batches(reader, lengths: list[int], batch_size: int) -> Iterator[pa.Table]:
    """Input batches of `batch_size` assistant messages, each with its nearest ancestors rendered for
    every context length in `lengths`.

    The ancestors are those of the training examples (reward/data.py): a conversation with any
    parent_id follows the links (a null parent_id is a root), one without any is a chain in turn order.
    One conversation is held in memory at a time, so a parent in another conversation is not followed.
    """
    out: list[tuple] = []
    conv: list[tuple] = []  # (message_id, parent_id, user_id, role, text, category, policy) of one conversation
    current = None
    names = ("message_id", "parent_id", "user_id", "role", "text", "category", "policy")
    schema = input_schema(STORE_KEYS, lengths)
    for batch in reader:
        cols = [batch.column(n).to_pylist() for n in names]
        for cid, row in zip(batch.column("conversation_id").to_pylist(), zip(*cols)):
            if cid != current:
                out.extend(_with_ancestors(current, conv, lengths))
                conv, current = [], cid
                full = len(out) - len(out) % batch_size
                for s in range(0, full, batch_size):
                    yield _table(out[s:s + batch_size], schema)
                out = out[full:]
            conv.append(row)
    out.extend(_with_ancestors(current, conv, lengths))
    for s in range(0, len(out), batch_size):
        yield _table(out[s:s + batch_size], schema)


def _with_ancestors(cid: str | None, conv: list[tuple], lengths: list[int]) -> list[tuple]:
    """(message_id, conversation_id, user_id, category, policy, ctx_<k>..., response) per assistant message."""
    if not conv:
        return []
    k = max(lengths)
    linked = any(r[1] is not None for r in conv)
    index = {r[0]: j for j, r in enumerate(conv)}
    parent = [index.get(r[1]) if linked else (j - 1 if j else None) for j, r in enumerate(conv)]
    rows = []
    for j, (mid, _, uid, role, text, category, policy) in enumerate(conv):
        if role != "assistant":
            continue
        chain, a = [], parent[j]
        while a is not None and len(chain) < k:
            chain.append(a)
            a = parent[a]
        turns = [{"role": conv[a][3], "text": conv[a][4]} for a in reversed(chain)]
        rows.append((mid, cid, uid, category, policy, *(render_context(turns, n) for n in lengths), text))
    return rows


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    """Rows (tuples in schema order) as a table."""
    cols = list(zip(*rows))
    return pa.table([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)


def _file_batches(path: Path, lengths: list[int], batch_size: int, counts: dict, rej) -> Iterator[pa.Table]:
    schema = input_schema(FILE_KEYS, lengths)
    rows: list[tuple] = []
    for line, record, raw in _records(path, counts):
        counts["read"] += 1
        try:
            rid, turns, response = _parse_record(record)
            rows.append((line, rid, *(render_context(turns, k) for k in lengths), response))
        except _BadRecord as bad:
            if rej is None:
                raise ScoreError(f"{path}, line {line}: {bad.field}: {bad.reason}; fix the record, or pass a "
                                 "rejects file (--rejects FILE) to set bad records aside") from None  # fmt: skip
            counts["rejected"] += 1
            rej.write(orjson.dumps({"source": str(path), "line": line, "field": bad.field, "reason": bad.reason,
                                    "raw": raw[:RAW_CHARS]}) + b"\n")  # fmt: skip
            continue
        if len(rows) == batch_size:
            yield _table(rows, schema)
            rows = []
    if rows:
        yield _table(rows, schema)


def _records(path: Path, counts: dict) -> Iterator[tuple[int, object, str]]:
    """(line or row number, record or _Unreadable, raw text) for every record of the file."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScoreError(f"{path}: not a readable Parquet file ({exc})") from None
        cols = [c for c in ("context", "response", "id") if c in pf.schema_arrow.names]
        row = 0
        for batch in pf.iter_batches(batch_size=4096, columns=cols):
            for rec in batch.to_pylist():
                row += 1
                yield row, rec, orjson.dumps(rec, default=str).decode()
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                counts["blank_lines"] += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line, _Unreadable(f"not valid UTF-8 ({exc.reason} at byte {exc.start})"), raw.decode(
                    "utf-8", "replace")
                continue
            try:
                yield line, orjson.loads(text), text.rstrip("\r\n")
            except orjson.JSONDecodeError as exc:
                yield line, _Unreadable(f"not valid JSON ({exc})"), text.rstrip("\r\n")


class _Unreadable:
    def __init__(self, reason: str):
        self.reason = reason


class _BadRecord(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _parse_record(rec: object) -> tuple[str | None, list[dict], str]:
    """(id, context turns, response) of one record, or _BadRecord naming the field at fault."""
    if isinstance(rec, _Unreadable):
        raise _BadRecord("(line)", rec.reason)
    if not isinstance(rec, dict):
        raise _BadRecord("(record)", f"expected a JSON object with 'context' and 'response', got {type(rec).__name__}")
    if "response" not in rec or rec["response"] is None:
        raise _BadRecord("response", "missing; every record needs the response text to score")
    if not isinstance(rec["response"], str):
        raise _BadRecord("response", f"expected a string, got {type(rec['response']).__name__}")
    if "context" not in rec or rec["context"] is None:
        raise _BadRecord("context", "missing; give the conversation before the response ([] for none)")
    try:
        turns = as_turns(rec["context"])
    except TypeError as exc:
        raise _BadRecord("context", str(exc)) from None
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise _BadRecord("id", f"expected a string or an integer, got {type(rid).__name__}")
    return (None if rid is None else str(rid)), turns, rec["response"]


# ------------------------------------------------------------------ execution


def _run(model_dirs, models: dict[str, RewardModel], batches: Iterator[pa.Table], key_fields, out: Path,
         batch_size: int, ray_address: str | None, concurrency: int, tmp: Path) -> tuple[int, dict]:  # fmt: skip
    """Score the input batches (locally or on Ray) into `out`; return (rows, summary)."""
    keys = [k for k, _ in key_fields]
    schema = output_schema(key_fields, list(models))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    summary = {name: _Mean() for name in models}
    n = 0
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            if ray_address:
                inputs = input_schema(key_fields, context_lengths(models))
                scored = _ray_scored([str(d) for d in model_dirs], batches, inputs, batch_size, ray_address,
                                     concurrency, tmp)  # fmt: skip
            else:
                scorer = Scorer(model_dirs, keys, models)
                scored = (scorer(b) for b in batches)
            pending: list[pa.Table] = []  # scored batches not yet written: one row group per ROW_GROUP rows
            for table in scored:
                table = table.select(schema.names).cast(schema)
                pending.append(table)
                n += table.num_rows
                for name in models:
                    summary[name].add(table.column(f"p_{name}").to_numpy())
                if sum(t.num_rows for t in pending) >= ROW_GROUP:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
            if pending:
                writer.write_table(pa.concat_tables(pending))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return n, {name: m.result() for name, m in summary.items()}


def _ray_scored(model_dirs: list[str], batches: Iterator[pa.Table], schema: pa.Schema, batch_size: int, address: str,
                concurrency: int, tmp: Path) -> Iterator[pa.Table]:  # fmt: skip
    """Spill the inputs to Parquet, score them with Ray Data actors, yield the scored batches in order."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ScoreError("scoring on Ray needs Ray Data: pip install 'rluf[ray]' (or drop --ray)") from None

    inputs = tmp / "inputs.parquet"
    keys = [f.name for f in schema if f.name != "response" and not f.name.startswith("ctx_")]
    with pq.ParquetWriter(inputs, schema) as w:
        empty = True
        for b in batches:
            w.write_table(b, row_group_size=batch_size)
            empty = False
    if empty:
        return
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    try:
        ctx.execution_options.preserve_order = True  # the output rows in input order, as locally
        ds = ray.data.read_parquet(str(inputs)).map_batches(
            Scorer, fn_constructor_kwargs={"model_dirs": model_dirs, "keys": keys},
            batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=1)  # fmt: skip
        for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            yield b
    finally:
        ctx.execution_options.preserve_order = keep_order
        if started:
            ray.shutdown()


class _Mean:
    """Running mean and variance of the scores (Welford in batches): mean, n and a normal 95 % interval."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x) -> None:
        if len(x) == 0:
            return
        nb, mb = len(x), float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def result(self) -> dict:
        if self.n == 0:
            return {"n": 0, "mean": None, "ci95": None}
        se = math.sqrt(self.m2 / (self.n - 1) / self.n) if self.n > 1 else float("nan")
        return {"n": self.n, "mean": self.mean, "ci95": [self.mean - Z95 * se, self.mean + Z95 * se]}


class _spill_dir:
    """A temporary directory under `parent` (created if needed), removed on exit."""

    def __init__(self, parent: Path):
        self.parent = Path(parent)

    def __enter__(self) -> Path:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".rluf-score-", dir=self.parent))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _check_options(batch_size: int, concurrency: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ScoreError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ScoreError(f"concurrency (Ray actors) must be a positive integer, got {concurrency!r}")


def _sql_str(s: str) -> str:
    return s.replace("'", "''")
