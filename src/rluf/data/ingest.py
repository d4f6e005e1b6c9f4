"""Lossless ingest of production logs into the store: `rluf ingest PATH... --store DIR`.

Two stages:

1. Parse and validate, in parallel worker processes. JSONL files are cut into blocks of whole lines
   (line numbers stay exact); Parquet files are split by row group; CSV and the public formats go to
   one worker per file. Each valid record becomes a `Unit` (contract.py) staged to Parquet; each bad
   one becomes a reject naming file, line, field and reason.
2. Cross-record checks in DuckDB over the staged units: duplicates by id against the store and the
   batch (same content: counted as duplicate; different content: rejected as a conflict), message ids
   used twice, reactions to unknown messages or earlier than their message, unknown parents. Then the
   accepted rows are written as this batch's Parquet parts and the manifest is updated atomically.

Counts always reconcile: read == accepted + rejected + duplicate (records; blank lines are counted
apart). A batch whose reject rate exceeds `max_reject_rate` is not committed.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import io
import multiprocessing
import os
import shutil
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from . import contract, importers
from .contract import CONVERSATION, MESSAGE, REACTION, USER, Limits, RecordError, Unit
from .store import Store, StoreError, _sql_list

BLOCK_BYTES = 16 << 20  # JSONL bytes per worker task
RAW_KEEP_CHARS = 65_536  # how much of a rejected record's raw text the rejects file keeps
CONTRACT_FORMATS = ("jsonl", "parquet", "csv")
ALL_FORMATS = ("auto",) + CONTRACT_FORMATS + importers.FORMATS
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class IngestError(RuntimeError):
    """The input cannot be ingested at all (a missing file, an unknown format...)."""


@dataclasses.dataclass
class Task:
    task_id: int
    path: str
    fmt: str  # jsonl | parquet | csv | convai2 | oasst | oasst-tree
    kind: str | None  # contract kind of every record, None for the public formats
    first_line: int = 1
    data: bytes | None = None
    row_groups: tuple[int, ...] = ()
    first_row: int = 1


@dataclasses.dataclass
class TaskResult:
    task_id: int
    read: int
    blank: int
    units: int
    rejects: list[dict]
    staged: dict[str, str]  # table -> staged parquet path


# ======================================================================= stage 1: parse


_STAGE_SCHEMAS = {
    "units": pa.schema([("task_id", pa.int32()), ("line", pa.int64()), ("kind", pa.string()),
                        ("key", pa.string()), ("digest", pa.string())]),  # fmt: skip
    "conversations": pa.schema([
        ("conversation_id", pa.string()), ("user_id", pa.string()), ("started_at", pa.timestamp("us", "UTC")),
        ("category", pa.string()), ("policy", pa.string()), ("n_turns", pa.int32()), ("extra", pa.string()),
        ("task_id", pa.int32()), ("line", pa.int64())]),  # fmt: skip
    "messages": pa.schema([
        ("message_id", pa.string()), ("conversation_id", pa.string()), ("parent_id", pa.string()),
        ("turn_index", pa.int32()), ("user_id", pa.string()), ("role", pa.string()), ("text", pa.string()),
        ("time", pa.timestamp("us", "UTC")), ("policy", pa.string()), ("category", pa.string()),
        ("extra", pa.string()), ("task_id", pa.int32()), ("line", pa.int64())]),  # fmt: skip
    "reaction_events": pa.schema([
        ("message_id", pa.string()), ("user_id", pa.string()), ("reaction", pa.string()), ("action", pa.string()),
        ("time", pa.timestamp("us", "UTC")), ("seq", pa.int32()), ("task_id", pa.int32()), ("line", pa.int64())]),  # fmt: skip
    "user_overrides": pa.schema([("user_id", pa.string()), ("retained", pa.bool_()),
                                 ("task_id", pa.int32()), ("line", pa.int64())]),  # fmt: skip
}
_UNIT_FIELDS = {"conversations": "conversations", "messages": "messages",
                "reaction_events": "reactions", "user_overrides": "users"}  # fmt: skip


class _Stager:
    """Collects rows of units for one task and writes them as staged Parquet files."""

    FLUSH_ROWS = 100_000

    def __init__(self, staging: str, task_id: int):
        self.task_id = task_id
        self.base = os.path.join(staging, f"task-{task_id:07d}")
        self.rows: dict[str, list[tuple]] = {t: [] for t in _STAGE_SCHEMAS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.count = 0

    def add(self, unit: Unit, line: int) -> None:
        tid = self.task_id
        self.rows["units"].append((tid, line, unit.kind, unit.key, unit.digest))
        for table, attr in _UNIT_FIELDS.items():
            rows = getattr(unit, attr)
            if rows:
                self.rows[table].extend(r + (tid, line) for r in rows)
        self.count += 1
        if len(self.rows["units"]) >= self.FLUSH_ROWS or len(self.rows["messages"]) >= self.FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for table, rows in self.rows.items():
            if not rows:
                continue
            schema = _STAGE_SCHEMAS[table]
            columns = list(zip(*rows))
            batch = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)
            if table not in self.writers:
                self.writers[table] = pq.ParquetWriter(f"{self.base}-{table}.parquet", schema, compression="zstd",
                                                       compression_level=1)  # fmt: skip
            self.writers[table].write_table(batch)
            rows.clear()

    def close(self) -> dict[str, str]:
        self.flush()
        for w in self.writers.values():
            w.close()
        return {t: f"{self.base}-{t}.parquet" for t in self.writers}


def _reject(task: Task, line: int, field: str, reason: str, raw: str | None, unit: str = "line") -> dict:
    rej = {"source": task.path, unit: line, "field": field, "reason": reason}
    if raw is not None:
        if len(raw) > RAW_KEEP_CHARS:
            rej["raw"] = raw[:RAW_KEEP_CHARS]
            rej["raw_truncated"] = True
        else:
            rej["raw"] = raw
    return rej


def _json_error_reason(exc: Exception, line: bytes) -> tuple[str, str]:
    msg = str(exc)
    if "UTF-8" in msg or "surrogate" in msg:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as ude:
            return "<record>", f"invalid UTF-8 at byte {ude.start} of the line; re-encode the file as UTF-8"
        return "<record>", f"invalid Unicode: {msg}"
    return "<record>", f"not valid JSON ({msg}); each line must be one JSON object"


def _normalizer(task: Task) -> Callable[[object, Limits], Unit]:
    if task.fmt in importers.IMPORTERS:
        return importers.IMPORTERS[task.fmt]
    return contract.NORMALIZERS[task.kind]


def _validate(record: object, task: Task, normalize, limits: Limits) -> Unit:
    if task.kind is not None:
        seen = contract.detect_kind(record)
        if seen is not None and seen != task.kind:
            raise RecordError("<record>", f"looks like a {seen} record, but this file holds {task.kind} records "
                              "(decided from its first record); keep one layout per file")  # fmt: skip
    return normalize(record, limits)


def run_task(task: Task, staging: str, limits: Limits) -> TaskResult:
    """Parse and validate one task's records (runs in a worker process)."""
    stager = _Stager(staging, task.task_id)
    rejects: list[dict] = []
    read = blank = 0
    try:
        if task.fmt in ("jsonl", importers.OASST, importers.OASST_TREE):
            read, blank = _run_jsonl(task, stager, rejects, limits)
        elif task.fmt == "parquet":
            read = _run_parquet(task, stager, rejects, limits)
        elif task.fmt == "csv":
            read, blank = _run_csv(task, stager, rejects, limits)
        elif task.fmt == importers.CONVAI2:
            read = _run_convai2(task, stager, rejects, limits)
        else:  # planning never creates other tasks
            raise IngestError(f"unknown format {task.fmt}")
    finally:
        staged = stager.close()
    return TaskResult(task.task_id, read, blank, stager.count, rejects, staged)


def _run_jsonl(task: Task, stager: _Stager, rejects: list[dict], limits: Limits) -> tuple[int, int]:
    normalize = _normalizer(task)
    loads = orjson.loads
    read = blank = 0
    line_no = task.first_line - 1
    for line in task.data.split(b"\n"):
        line_no += 1
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line or line.isspace():
            blank += 1
            continue
        read += 1
        try:
            record = loads(line)
        except orjson.JSONDecodeError as exc:
            field, reason = _json_error_reason(exc, line)
            rejects.append(_reject(task, line_no, field, reason, line.decode("utf-8", "backslashreplace")))
            continue
        try:
            unit = _validate(record, task, normalize, limits)
        except RecordError as exc:
            rejects.append(_reject(task, line_no, exc.field, exc.reason, line.decode()))
            continue
        stager.add(unit, line_no)
    # The last element after the final newline is not a line.
    if task.data.endswith(b"\n"):
        blank -= 1
    return read, blank


def _run_parquet(task: Task, stager: _Stager, rejects: list[dict], limits: Limits) -> int:
    normalize = _normalizer(task)
    pf = pq.ParquetFile(task.path)
    row = task.first_row - 1
    read = 0
    for rg in task.row_groups:
        for batch in pf.iter_batches(row_groups=[rg], batch_size=8192):
            for record in batch.to_pylist():
                row += 1
                read += 1
                try:
                    unit = _validate(_drop_nulls(record), task, normalize, limits)
                except RecordError as exc:
                    raw = orjson.dumps(record, default=str).decode()
                    rejects.append(_reject(task, row, exc.field, exc.reason, raw, unit="row"))
                    continue
                stager.add(unit, row)
    return read


def _drop_nulls(record: dict) -> dict:
    """Parquet has a column for every field; a null there means the field is absent."""
    if type(record) is not dict:
        return record
    out = {}
    for k, v in record.items():
        if v is None:
            continue
        if type(v) is list:
            v = [_drop_nulls(x) for x in v]
        out[k] = v
    return out


def _run_csv(task: Task, stager: _Stager, rejects: list[dict], limits: Limits) -> tuple[int, int]:
    normalize = _normalizer(task)
    read = blank = 0
    with open(task.path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return 0, 0
        header = [h.strip() for h in header]
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                read += 1
                rejects.append(_reject(task, reader.line_num, "<record>", f"malformed CSV: {exc}", None))
                continue
            line_no = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                blank += 1
                continue
            read += 1
            raw = ",".join(cells).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            if len(cells) != len(header):
                rejects.append(_reject(task, line_no, "<record>",
                                       f"has {len(cells)} cells; the header has {len(header)}", raw))  # fmt: skip
                continue
            bad = next((h for h, c in zip(header, cells) if _has_surrogates(c)), None)
            if bad is not None:
                rejects.append(_reject(task, line_no, bad, "invalid UTF-8; re-encode the file as UTF-8", raw))
                continue
            record = {h: c for h, c in zip(header, cells) if c != ""}
            try:
                unit = _validate(record, task, normalize, limits)
            except RecordError as exc:
                rejects.append(_reject(task, line_no, exc.field, exc.reason, raw))
                continue
            stager.add(unit, line_no)
    return read, blank


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _run_convai2(task: Task, stager: _Stager, rejects: list[dict], limits: Limits) -> int:
    with open(task.path, "rb") as f:
        data = f.read()
    try:
        dialogs = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        rejects.append(_reject(task, 1, "<file>", f"not valid JSON ({exc}); a ConvAI2 file is one JSON array", None,
                               unit="record"))  # fmt: skip
        return 1
    if type(dialogs) is not list:
        rejects.append(_reject(task, 1, "<file>", "a ConvAI2 file must be a JSON array of dialogs", None, unit="record"))
        return 1
    name = os.path.basename(task.path)
    for i, dialog in enumerate(dialogs, start=1):
        try:
            unit = importers.convai2_dialog(dialog, name, limits)
        except RecordError as exc:
            rejects.append(_reject(task, i, exc.field, exc.reason, orjson.dumps(dialog, default=str).decode(),
                                   unit="record"))  # fmt: skip
            continue
        stager.add(unit, i)
    return len(dialogs)


# ======================================================================= planning


def _first_record(path: Path) -> object | None:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                try:
                    return orjson.loads(line)
                except orjson.JSONDecodeError:
                    return None
    return None


def _sniff(path: Path, fmt: str, kind: str | None) -> tuple[str, str | None]:
    """Decide a file's format and (for contract formats) its record kind."""
    suffix = path.suffix.lower()
    if path.name.endswith(".gz"):
        raise IngestError(f"{path}: compressed input is not read directly; decompress it first (gunzip -k)")
    if fmt == "auto":
        fmt = SUFFIXES.get(suffix)
        if fmt is None:
            raise IngestError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format "
                              f"({', '.join(ALL_FORMATS[1:])})")  # fmt: skip
        if fmt == "json":
            with open(path, "rb") as f:
                head = f.read(1 << 16).lstrip()
            fmt = importers.CONVAI2 if head.startswith(b"[") else "jsonl"
        if fmt == "jsonl":
            fmt = importers.detect_format(_first_record(path)) or "jsonl"
    if fmt in importers.FORMATS:
        return fmt, None
    if kind is None:
        if fmt == "jsonl":
            kind = contract.detect_kind(_first_record(path))
        elif fmt == "parquet":
            kind = _kind_from_columns(pq.read_schema(path).names)
        elif fmt == "csv":
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                kind = _kind_from_columns(next(csv.reader(f), []))
        if kind is None:
            raise IngestError(f"{path}: cannot tell which layout this file holds from its first record; "
                              "see docs/data-format.md, or pass --layout conversation|message|reaction|user")  # fmt: skip
    if fmt == "csv" and kind == CONVERSATION:
        raise IngestError(f"{path}: nested conversations cannot be CSV; use JSONL or Parquet, or the flat layout")
    return fmt, kind


def _kind_from_columns(columns: list[str]) -> str | None:
    return contract.detect_kind({c.strip(): None for c in columns})


_KIND_ORDER = {CONVERSATION: 0, MESSAGE: 0, importers.OASST: 0, importers.OASST_TREE: 0, importers.CONVAI2: 0,
               REACTION: 1, USER: 1}  # fmt: skip


def plan_files(paths: Iterable[str | os.PathLike], fmt: str = "auto", kind: str | None = None) -> list[tuple[Path, str, str | None]]:
    """Expand directories, check every file exists, and decide format and layout of each."""
    if fmt not in ALL_FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(ALL_FORMATS)}")
    if kind is not None and kind not in contract.KINDS:
        raise IngestError(f"unknown layout {kind!r}; choose one of {', '.join(contract.KINDS)}")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in SUFFIXES)
            if not found:
                raise IngestError(f"{p}: directory holds no .jsonl, .json, .parquet or .csv file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise IngestError(f"{p}: no such file or directory")
    planned = [(f, *_sniff(f, fmt, kind)) for f in files]
    # Messages before the reactions and users that refer to them; otherwise keep the given order.
    return sorted(planned, key=lambda x: _KIND_ORDER.get(x[2] or x[1], 0))


def iter_tasks(planned: list[tuple[Path, str, str | None]]) -> Iterator[Task]:
    task_id = 0
    for path, fmt, kind in planned:
        if fmt in ("jsonl", importers.OASST, importers.OASST_TREE):
            line = 1
            with open(path, "rb") as f:
                tail = b""
                while True:
                    chunk = f.read(BLOCK_BYTES)
                    if not chunk:
                        if tail:
                            yield Task(task_id, str(path), fmt, kind, first_line=line, data=tail)
                            task_id += 1
                        break
                    chunk = tail + chunk
                    cut = chunk.rfind(b"\n")
                    if cut < 0:
                        tail = chunk
                        continue
                    block, tail = chunk[: cut + 1], chunk[cut + 1 :]
                    yield Task(task_id, str(path), fmt, kind, first_line=line, data=block)
                    task_id += 1
                    line += block.count(b"\n")
        elif fmt == "parquet":
            meta = pq.ParquetFile(path).metadata
            first_row, group, rows = 1, [], 0
            for rg in range(meta.num_row_groups):
                group.append(rg)
                rows += meta.row_group(rg).num_rows
                if rows >= 200_000 or rg == meta.num_row_groups - 1:
                    yield Task(task_id, str(path), fmt, kind, row_groups=tuple(group), first_row=first_row)
                    task_id += 1
                    first_row += rows
                    group, rows = [], 0
            if meta.num_row_groups == 0:
                yield Task(task_id, str(path), fmt, kind, row_groups=(), first_row=1)
                task_id += 1
        else:
            yield Task(task_id, str(path), fmt, kind)
            task_id += 1


# ======================================================================= stage 2: merge


@dataclasses.dataclass
class IngestSummary:
    batch_id: str
    batch_no: int
    files: int
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    blank_lines: int = 0
    messages: int = 0
    reaction_events: int = 0
    conversations: int = 0
    user_overrides: int = 0
    committed: bool = False
    reject_rate: float = 0.0
    max_reject_rate: float = 0.01
    seconds: float = 0.0
    rejects_file: str = ""
    reasons: dict = dataclasses.field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        return self.read == self.accepted + self.rejected + self.duplicate

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["reconciles"] = self.reconciles
        return d


def ingest(
    paths: Iterable[str | os.PathLike],
    store_dir: str | os.PathLike,
    *,
    fmt: str = "auto",
    kind: str | None = None,
    max_reject_rate: float = 0.01,
    limits: Limits = Limits(),
    workers: int | None = None,
    memory_limit: str = "1GB",
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest files into the store at `store_dir`; return the reconciled summary.

    Raises IngestError for input that cannot be read at all (missing file, unknown format); a bad
    record never raises: it is rejected, written to DIR/rejects.jsonl and counted.
    """
    if not 0.0 <= max_reject_rate <= 1.0:
        raise IngestError(f"--max-reject-rate must be between 0 and 1, got {max_reject_rate}")
    t0 = time.perf_counter()
    planned = plan_files(paths, fmt, kind)
    store = Store(store_dir)
    with store.lock():
        manifest = store.manifest()
        batch_no = len(manifest["batches"]) + 1
        batch_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        staging = store.root / "_staging" / batch_id
        staging.mkdir(parents=True)
        summary = IngestSummary(batch_id, batch_no, len(planned), max_reject_rate=max_reject_rate,
                                rejects_file=str(store.rejects_path))  # fmt: skip
        try:
            results, tasks = _parse_all(planned, str(staging), limits, workers, progress)
            _merge(store, manifest, results, tasks, summary, staging, memory_limit, workers)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            try:
                (store.root / "_staging").rmdir()
            except OSError:
                pass
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _parse_all(planned, staging: str, limits: Limits, workers: int | None, progress) -> tuple[list[TaskResult], dict[int, Task]]:
    workers = workers or min(os.cpu_count() or 1, 8)
    results: list[TaskResult] = []
    tasks: dict[int, Task] = {}
    total_bytes = sum(p.stat().st_size for p, _, _ in planned) or 1
    done_bytes = 0

    def record(task: Task, result: TaskResult):
        nonlocal done_bytes
        results.append(result)
        done_bytes += len(task.data) if task.data is not None else os.path.getsize(task.path) // max(1, _tasks_per_file[task.path])
        if progress:
            progress(min(done_bytes, total_bytes), total_bytes)

    _tasks_per_file: dict[str, int] = {}
    if workers <= 1:
        for task in iter_tasks(planned):
            _tasks_per_file[task.path] = _tasks_per_file.get(task.path, 0) + 1
            tasks[task.task_id] = dataclasses.replace(task, data=None)
            record(task, run_task(task, staging, limits))
        return results, tasks
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque = deque()
        for task in iter_tasks(planned):
            _tasks_per_file[task.path] = _tasks_per_file.get(task.path, 0) + 1
            tasks[task.task_id] = dataclasses.replace(task, data=None)
            pending.append((task, pool.submit(run_task, task, staging, limits)))
            while len(pending) > 2 * workers:  # bounded memory: at most 2 blocks per worker in flight
                t, fut = pending.popleft()
                record(t, fut.result())
        while pending:
            t, fut = pending.popleft()
            record(t, fut.result())
    return results, tasks


def _merge(store: Store, manifest: dict, results: list[TaskResult], tasks: dict[int, Task], summary: IngestSummary,
           staging: Path, memory_limit: str, workers: int | None) -> None:  # fmt: skip
    import duckdb

    results.sort(key=lambda r: r.task_id)
    summary.read = sum(r.read for r in results)
    summary.blank_lines = sum(r.blank for r in results)
    stage1_rejects = [rej for r in results for rej in r.rejects]

    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(staging / "duckdb.tmp"),
                                 "preserve_insertion_order": False})  # fmt: skip
    con.execute("SET TimeZone='UTC'")
    if workers:
        con.execute(f"SET threads={int(workers)}")
    stored = store.connect(memory_limit=memory_limit)
    # Stored tables, visible to the merge connection.
    for table in ("ledger", "messages"):
        files = store.table_files(table)
        if files:
            cols = "kind, key, digest, batch_no" if table == "ledger" else "message_id, time"
            con.execute(f"CREATE VIEW stored_{table} AS SELECT {cols} FROM read_parquet({_sql_list(files)})")
        else:
            empty = ("SELECT ''::VARCHAR kind, ''::VARCHAR key, ''::VARCHAR digest, 0::INTEGER batch_no" if table == "ledger"
                     else "SELECT ''::VARCHAR message_id, TIMESTAMPTZ '2000-01-01' time")  # fmt: skip
            con.execute(f"CREATE VIEW stored_{table} AS SELECT * FROM ({empty}) WHERE false")
    stored.close()
    for table, schema in _STAGE_SCHEMAS.items():
        files = [r.staged[table] for r in results if table in r.staged]
        if files:
            con.execute(f"CREATE VIEW s_{table} AS SELECT * FROM read_parquet({_sql_list(files)})")
        else:
            con.register(f"arrow_empty_{table}", schema.empty_table())
            con.execute(f"CREATE VIEW s_{table} AS SELECT * FROM arrow_empty_{table}")

    # --- duplicates and conflicts by identity (kind, key)
    con.execute("""
        CREATE TEMP TABLE decided AS
        WITH last_stored AS (
            SELECT kind, key, arg_max(digest, batch_no) AS digest FROM stored_ledger GROUP BY kind, key),
        ranked AS (
            SELECT u.task_id, u.line, u.kind, u.key, u.digest, s.digest AS stored_digest,
                   row_number() OVER w AS occurrence,
                   first_value(u.digest) OVER w AS first_digest,
                   lag(u.digest) OVER w AS previous_digest
            FROM s_units u LEFT JOIN last_stored s ON s.kind = u.kind AND s.key = u.key
            WINDOW w AS (PARTITION BY u.kind, u.key ORDER BY u.task_id, u.line))
        SELECT task_id, line, kind, key, digest,
            CASE
              WHEN kind = 'user' THEN
                CASE WHEN coalesce(previous_digest, stored_digest) = digest THEN 'duplicate' ELSE 'accepted' END
              WHEN stored_digest IS NOT NULL AND stored_digest = digest THEN 'duplicate'
              WHEN stored_digest IS NOT NULL THEN 'conflict_stored'
              WHEN occurrence > 1 AND first_digest = digest THEN 'duplicate'
              WHEN occurrence > 1 THEN 'conflict_batch'
              ELSE 'accepted' END AS status,
            CAST(NULL AS VARCHAR) AS field, CAST(NULL AS VARCHAR) AS reason
        FROM ranked
    """)
    con.execute("""
        UPDATE decided SET field = CASE kind WHEN 'conversation' THEN 'conversation_id' WHEN 'message' THEN 'message_id'
                                             ELSE 'message_id' END,
            reason = CASE status
              WHEN 'conflict_stored' THEN 'id already in the store with different content; give the new record its own id, or fix the old one at its source'
              ELSE 'id appears earlier in this batch with different content; ids must be unique' END,
            status = 'rejected'
        WHERE status LIKE 'conflict%'
    """)
    # --- message ids used by two records (a nested conversation's ids may collide with other messages)
    con.execute("""
        UPDATE decided d SET status = 'rejected', field = 'message_id', reason = x.reason
        FROM (
            WITH am AS (
                SELECT m.message_id, m.task_id, m.line FROM s_messages m
                JOIN decided a ON a.task_id = m.task_id AND a.line = m.line AND a.status = 'accepted'),
            clash AS (
                SELECT task_id, line, message_id, 'message id ' || message_id || ' is used by an earlier record in this batch' AS reason
                FROM (SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY task_id, line) rn FROM am) WHERE rn > 1
                UNION ALL
                SELECT am.task_id, am.line, am.message_id, 'message id ' || am.message_id || ' already exists in the store'
                FROM am SEMI JOIN stored_messages s ON s.message_id = am.message_id)
            SELECT task_id, line, min(reason) AS reason FROM clash GROUP BY task_id, line) x
        WHERE d.task_id = x.task_id AND d.line = x.line
    """)
    # --- parents must exist (repeat: rejecting a parent can orphan its children)
    for _ in range(32):
        n = con.execute("""
            UPDATE decided d SET status = 'rejected', field = 'parent_id', reason = x.reason
            FROM (
                SELECT m.task_id, m.line, min('parent_id ' || m.parent_id || ' is not a known message; ingest the parent first') AS reason
                FROM s_messages m
                JOIN decided a ON a.task_id = m.task_id AND a.line = m.line AND a.status = 'accepted'
                WHERE m.parent_id IS NOT NULL
                  AND m.parent_id NOT IN (SELECT message_id FROM stored_messages)
                  AND m.parent_id NOT IN (SELECT m2.message_id FROM s_messages m2 JOIN decided a2
                                          ON a2.task_id = m2.task_id AND a2.line = m2.line AND a2.status = 'accepted')
                GROUP BY m.task_id, m.line) x
            WHERE d.task_id = x.task_id AND d.line = x.line
        """).fetchone()[0]
        if not n:
            break
    # --- flat reaction events: the message must exist, and be no later than the reaction
    con.execute("""
        UPDATE decided d SET status = 'rejected', field = x.field, reason = x.reason
        FROM (
            WITH known AS (
                SELECT message_id, time FROM stored_messages
                UNION ALL
                SELECT m.message_id, m.time FROM s_messages m JOIN decided a
                    ON a.task_id = m.task_id AND a.line = m.line AND a.status = 'accepted')
            SELECT r.task_id, r.line,
                   CASE WHEN k.message_id IS NULL THEN 'message_id' ELSE 'time' END AS field,
                   CASE WHEN k.message_id IS NULL
                        THEN 'no message ' || r.message_id || ' in the store or this batch; ingest the messages first, then this file again'
                        ELSE 'reaction at ' || strftime(r.time, '%Y-%m-%dT%H:%M:%S') || 'Z is earlier than its message at '
                             || strftime(k.time, '%Y-%m-%dT%H:%M:%S') || 'Z' END AS reason
            FROM s_reaction_events r
            JOIN decided a ON a.task_id = r.task_id AND a.line = r.line AND a.status = 'accepted' AND a.kind = 'reaction'
            LEFT JOIN (SELECT message_id, min(time) AS time FROM known GROUP BY message_id) k USING (message_id)
            WHERE k.message_id IS NULL OR r.time < k.time) x
        WHERE d.task_id = x.task_id AND d.line = x.line
    """)

    counts = dict(con.execute("SELECT status, count(*) FROM decided GROUP BY status").fetchall())
    stage2_rejects = con.execute(
        "SELECT task_id, line, field, reason FROM decided WHERE status = 'rejected' ORDER BY task_id, line").fetchall()
    summary.duplicate = counts.get("duplicate", 0)
    summary.accepted = counts.get("accepted", 0)
    summary.rejected = len(stage1_rejects) + len(stage2_rejects)
    if not summary.reconciles:  # an internal invariant; never expected
        raise RuntimeError(f"ingest counts do not reconcile: {summary.as_dict()}")

    all_rejects = stage1_rejects + [_stage2_reject(tasks[t], line, field, reason) for t, line, field, reason in stage2_rejects]
    reasons: dict[str, int] = {}
    for rej in all_rejects:
        label = _reason_label(rej)
        reasons[label] = reasons.get(label, 0) + 1
    summary.reasons = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:20])
    summary.reject_rate = summary.rejected / summary.read if summary.read else 0.0
    commit = summary.reject_rate <= summary.max_reject_rate
    _append_rejects(store, summary, all_rejects, commit)
    if not commit:
        con.close()
        return

    # --- write the accepted rows as this batch's parts
    files: dict[str, list[str]] = {}
    lineage = f"{summary.batch_no}::INTEGER AS batch_no, ts.source AS source_file, t.line AS source_line"
    out_dir = store.root / "tables"
    con.register("task_source_arrow", pa.table({"task_id": pa.array(list(tasks), pa.int32()),
                                                "source": pa.array([t.path for t in tasks.values()], pa.string())}))  # fmt: skip
    con.execute("CREATE OR REPLACE TEMP TABLE task_source AS SELECT * FROM task_source_arrow")
    for table in ("conversations", "messages", "reaction_events", "user_overrides"):
        cols = [f.name for f in _STAGE_SCHEMAS[table] if f.name not in ("task_id", "line")]
        n = _copy(con, out_dir, table, summary.batch_no, f"""
            SELECT {', '.join('t.' + c for c in cols)}, {lineage}
            FROM s_{table} t JOIN decided a ON a.task_id = t.task_id AND a.line = t.line AND a.status = 'accepted'
            JOIN task_source ts ON ts.task_id = t.task_id
            ORDER BY t.task_id, t.line""", files)  # fmt: skip
        setattr(summary, table, n)
    _copy(con, out_dir, "ledger", summary.batch_no, f"""
        SELECT t.kind, t.key, t.digest, {lineage}
        FROM decided t JOIN task_source ts ON ts.task_id = t.task_id
        WHERE t.status = 'accepted' ORDER BY t.task_id, t.line""", files)  # fmt: skip
    con.close()
    manifest["batches"].append({
        "batch_id": summary.batch_id, "batch_no": summary.batch_no,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": sorted({t.path for t in tasks.values()}),
        "files": {k: [str(Path(p).relative_to(store.root)) for p in v] for k, v in files.items()},
        "counts": {k: getattr(summary, k) for k in ("read", "accepted", "rejected", "duplicate", "messages",
                                                     "reaction_events", "conversations", "user_overrides")},
    })  # fmt: skip
    store.write_manifest(manifest)
    summary.committed = True


def _copy(con, out_dir: Path, table: str, batch_no: int, query: str, files: dict[str, list[str]]) -> int:
    (out_dir / table).mkdir(parents=True, exist_ok=True)
    path = out_dir / table / f"batch-{batch_no:06d}.parquet"
    n = con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)").fetchone()[0]
    if n == 0:
        path.unlink()
        return 0
    files.setdefault(table, []).append(str(path))
    return n


def _reason_label(rej: dict) -> str:
    """Group rejects by field and reason, with ids, values and positions left out."""
    import re

    field = re.sub(r"\[\d+\]", "[]", rej["field"])
    reason = re.sub(r"'[^']*'|\b\d[\d:.TZ-]*\b|(message|parent_id|id) \S+", lambda m: m.group(1) or "…", rej["reason"])
    return f"{field}: {reason.split(';')[0]}"[:100]


def _stage2_reject(task: Task, line: int, field: str, reason: str) -> dict:
    unit = "row" if task.fmt == "parquet" else "record" if task.fmt == importers.CONVAI2 else "line"
    return _reject(task, line, field, reason, None, unit=unit)


def _append_rejects(store: Store, summary: IngestSummary, rejects: list[dict], committed: bool) -> None:
    if not rejects:
        return
    with open(store.rejects_path, "ab") as f:
        for rej in rejects:
            rej = {"batch_id": summary.batch_id, "committed": committed, **rej}
            f.write(orjson.dumps(rej) + b"\n")
