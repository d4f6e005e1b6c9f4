"""Ingest stage 1: parse and validate one block of input (runs in a worker process).

A task is a block of whole JSONL lines, a group of Parquet row groups, or a whole CSV / ConvAI2
file. Valid records are written as staged Parquet in their final stored form; bad records become
rejects naming file, line (row, record), field and reason. Nested-conversation JSONL takes the
vectorized path (fastpath.py) and falls back, line by line, to the reference validator in
contract.py for anything the vectorized checks do not clear.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
from typing import Callable

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from . import contract, importers
from .contract import CONVERSATION, Limits, RecordError, Unit

RAW_KEEP_CHARS = 65_536  # how much of a rejected record's raw text the rejects file keeps

# Columns of few distinct values are dictionary arrays: the vectorized path builds their indices
# without copying or hashing the strings, and the Parquet writer writes them as they are.
LABEL = pa.dictionary(pa.int32(), pa.string())
_LINEAGE = [("batch_no", pa.int32()), ("source_file", LABEL), ("source_line", pa.int64()), ("block", pa.int32())]
TIMESTAMP = pa.timestamp("us", "UTC")
SCHEMAS = {
    "conversations": pa.schema([
        ("conversation_id", pa.string()), ("user_id", pa.string()), ("started_at", TIMESTAMP), ("category", LABEL),
        ("policy", LABEL), ("n_turns", pa.int32()), ("extra", pa.string()),
        *_LINEAGE]),  # fmt: skip
    "messages": pa.schema([
        ("message_id", pa.string()), ("conversation_id", pa.string()), ("parent_id", pa.string()),
        ("turn_index", pa.int32()), ("user_id", pa.string()), ("role", LABEL), ("text", pa.string()),
        ("time", TIMESTAMP), ("policy", LABEL), ("category", LABEL), ("extra", pa.string()),
        *_LINEAGE]),  # fmt: skip
    "reaction_events": pa.schema([
        ("message_id", pa.string()), ("user_id", pa.string()), ("reaction", pa.string()), ("action", pa.string()),
        ("time", TIMESTAMP), ("seq", pa.int32()), *_LINEAGE]),  # fmt: skip
    "user_overrides": pa.schema([("user_id", pa.string()), ("retained", pa.bool_()), *_LINEAGE]),
    # Side tables for the merge stage, never stored:
    # One row per staged record, in the form of the store's ledger (identity and lineage).
    "ledger": pa.schema([("kind", LABEL), ("key", pa.string()), *_LINEAGE]),
    "external_parents": pa.schema([("block", pa.int32()), ("line", pa.int64()), ("message_id", pa.string()),
                                   ("parent_id", pa.string())]),  # fmt: skip
}
_DICTIONARY_COLUMNS = {"reaction", "action", "batch_no", "block"}  # and every LABEL column
_FREE_TEXT_COLUMNS = {"text", "extra"}
_DELTA_COLUMNS = {"started_at", "time", "source_line"}  # increasing or close together: stored as deltas
STORED_TABLES = ("conversations", "messages", "reaction_events", "user_overrides", "ledger")
DATA_TABLES = ("conversations", "messages", "reaction_events", "user_overrides")
_UNIT_ATTR = {"conversations": "conversations", "messages": "messages", "reaction_events": "reactions",
              "user_overrides": "users"}  # fmt: skip


@dataclasses.dataclass
class Task:
    task_id: int
    path: str
    fmt: str  # jsonl | parquet | csv | convai2 | oasst | oasst-tree
    kind: str | None  # contract kind of every record; None for the public formats
    batch_no: int = 0
    first_line: int = 1
    offset: int = 0  # JSONL: the block is `length` bytes of whole lines from `offset`...
    length: int = 0
    data: bytes | None = None  # ...or, for compressed input, those lines themselves
    row_groups: tuple[int, ...] = ()
    first_row: int = 1

    def read_block(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)

    @property
    def position(self) -> str:
        """What a reject's location counts: lines, Parquet rows, or records of a JSON array."""
        return "row" if self.fmt == "parquet" else "record" if self.fmt == importers.CONVAI2 else "line"


@dataclasses.dataclass
class TaskResult:
    task_id: int
    read: int
    blank: int
    vectorized: int
    rejects: list[dict]
    staged: dict[str, str]  # table -> staged parquet path


class Stager:
    """Collects one task's accepted rows (Python tuples or Arrow tables) into staged Parquet files."""

    FLUSH_ROWS = 50_000

    def __init__(self, staging: str, task: Task):
        self.task = task
        self.base = os.path.join(staging, f"task-{task.task_id:07d}")
        self.rows: dict[str, list[tuple]] = {t: [] for t in SCHEMAS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.vectorized = 0  # records cleared by the vectorized path

    def add(self, unit: Unit, line: int) -> None:
        t = self.task
        lineage = (t.batch_no, t.path, line, t.task_id)
        for table, attr in _UNIT_ATTR.items():
            self.rows[table].extend(r + lineage for r in getattr(unit, attr))
        self.rows["ledger"].append((unit.kind, unit.key) + lineage)
        own = {m[0] for m in unit.messages} if len(unit.messages) > 1 else ()
        for m in unit.messages:
            if m[2] is not None and m[2] not in own:
                self.rows["external_parents"].append((t.task_id, line, m[0], m[2]))
        if len(self.rows["messages"]) >= self.FLUSH_ROWS or len(self.rows["ledger"]) >= self.FLUSH_ROWS:
            self.flush()

    def add_arrow(self, table: str, data: pa.Table) -> None:
        """Rows already in final form (from the vectorized path)."""
        if data.num_rows:
            schema = SCHEMAS[table]
            self._writer(table).write_table(data if data.schema.equals(schema) else data.cast(schema))
            if table == "ledger":
                self.vectorized += data.num_rows

    def _writer(self, table: str) -> pq.ParquetWriter:
        if table not in self.writers:
            schema = SCHEMAS[table]
            self.writers[table] = pq.ParquetWriter(
                f"{self.base}-{table}.parquet", schema, compression="snappy",
                use_dictionary=[f.name for f in schema if f.name in _DICTIONARY_COLUMNS or f.type == LABEL],
                column_encoding={n: "DELTA_BINARY_PACKED" for n in schema.names if n in _DELTA_COLUMNS},
                write_statistics=[n for n in schema.names if n not in _FREE_TEXT_COLUMNS],
                store_schema=False,  # read back, a label column is a plain string, as in a rewritten file
            )  # fmt: skip
        return self.writers[table]

    def flush(self) -> None:
        for table, rows in self.rows.items():
            if rows:
                schema = SCHEMAS[table]
                arrays = [pa.array(col, type=f.type) for col, f in zip(zip(*rows), schema)]
                data = pa.Table.from_arrays(arrays, schema=schema)
                self._writer(table).write_table(data)
                rows.clear()

    def close(self) -> dict[str, str]:
        self.flush()
        for w in self.writers.values():
            w.close()
        return {t: f"{self.base}-{t}.parquet" for t in self.writers}


def init_worker() -> None:
    """Set up a worker process of the ingest pool.

    Arrow's default allocator (mimalloc) hands the memory of each block back and faults it in again
    for the next: the system allocator keeps it, and a block parses about 15 % faster
    (`python -m bench ingest`). ARROW_DEFAULT_MEMORY_POOL, when set, still decides. glibc's own
    thresholds return blocks of a few MB to the OS too: they are raised, which saves the first block
    of each worker 10-20 ms and the others 5 ms (no more memory at peak: a worker frees nothing
    it would not allocate again for the next block).
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
        _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Keep freed memory in the heap (glibc): no allocation is served by mmap, no heap top trimmed."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


def open_input(path, mode: str = "rt", **kw):
    """Open an input file, decompressing `.gz` on the fly."""
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, mode if "b" in mode else "rt", **kw)
    return open(path, mode if "b" in mode else "r", **kw)


def reject(task: Task, line: int, field: str, reason: str, raw: str | None) -> dict:
    rej = {"source": task.path, task.position: line, "field": field, "reason": reason}
    if raw is not None:
        if len(raw) > RAW_KEEP_CHARS:
            rej["raw"], rej["raw_truncated"] = raw[:RAW_KEEP_CHARS], True
        else:
            rej["raw"] = raw
    return rej


def _json_error_reason(exc: Exception, line: bytes) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as ude:
        return f"invalid UTF-8 at byte {ude.start} of the line; re-encode the file as UTF-8"
    return f"not valid JSON ({exc}); each line must be one JSON object"


def _normalizer(task: Task) -> Callable[[object, Limits], Unit]:
    if task.fmt in importers.IMPORTERS:
        return importers.IMPORTERS[task.fmt]
    return contract.NORMALIZERS[task.kind]


def validate(record: object, task: Task, limits: Limits) -> Unit:
    """The record's unit, or RecordError. An unexpected failure inside a validator rejects the record
    (with the error, so it can be reported) instead of stopping the batch."""
    return _guarded(_validate, record, task, limits)


def _guarded(validator, *args) -> Unit:
    try:
        return validator(*args)
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - one odd record must not lose the batch
        raise RecordError("<record>", f"could not be validated ({type(exc).__name__}: {exc}); please report it") from exc


def _validate(record: object, task: Task, limits: Limits) -> Unit:
    if task.kind is not None:
        seen = contract.detect_kind(record)
        if seen is not None and seen != task.kind:
            raise RecordError("<record>", f"looks like a {seen} record, but this file holds {task.kind} records "
                              "(decided from its first record); keep one layout per file")  # fmt: skip
    return _normalizer(task)(record, limits)


def run_task(task: Task, staging: str, limits: Limits, vectorized: bool = True) -> TaskResult:
    """Parse and validate one task's records."""
    stager = Stager(staging, task)
    rejects: list[dict] = []
    try:
        if task.fmt == "jsonl" and task.kind == CONVERSATION and vectorized:
            from .fastpath import run_nested_jsonl

            read, blank = run_nested_jsonl(task, stager, rejects, limits)
        elif task.fmt in ("jsonl", importers.OASST, importers.OASST_TREE):
            data = task.read_block()
            read, blank = run_jsonl_lines(task, data.split(b"\n"), task.first_line, stager, rejects, limits)
            if data.endswith(b"\n"):
                blank -= 1  # the empty string after the final newline is not a line
        elif task.fmt == "parquet":
            read, blank = _run_parquet(task, stager, rejects, limits), 0
        elif task.fmt == "csv":
            read, blank = _run_csv(task, stager, rejects, limits)
        elif task.fmt == importers.CONVAI2:
            read, blank = _run_convai2(task, stager, rejects, limits), 0
        else:
            raise ValueError(f"no reader for format {task.fmt!r}")
    finally:
        staged = stager.close()
    return TaskResult(task.task_id, read, blank, stager.vectorized, rejects, staged)


def run_jsonl_lines(task: Task, lines: list[bytes], first_line: int, stager: Stager, rejects: list[dict],
                    limits: Limits) -> tuple[int, int]:  # fmt: skip
    """The reference path: one line at a time through contract.py. Returns (read, blank)."""
    loads = orjson.loads
    read = blank = 0
    for line_no, line in enumerate(lines, start=first_line):
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line or line.isspace():
            blank += 1
            continue
        read += 1
        try:
            record = loads(line)
        except orjson.JSONDecodeError as exc:
            rejects.append(reject(task, line_no, "<record>", _json_error_reason(exc, line),
                                  line.decode("utf-8", "backslashreplace")))  # fmt: skip
            continue
        try:
            unit = validate(record, task, limits)
        except RecordError as exc:
            rejects.append(reject(task, line_no, exc.field, exc.reason, line.decode()))
            continue
        stager.add(unit, line_no)
    return read, blank


def _run_parquet(task: Task, stager: Stager, rejects: list[dict], limits: Limits) -> int:
    pf = pq.ParquetFile(task.path)
    row = task.first_row - 1
    for rg in task.row_groups:
        for batch in pf.iter_batches(row_groups=[rg], batch_size=8192):
            for record in batch.to_pylist():
                row += 1
                try:
                    unit = validate(_drop_nulls(record), task, limits)
                except RecordError as exc:
                    rejects.append(reject(task, row, exc.field, exc.reason, orjson.dumps(record, default=str).decode()))
                    continue
                stager.add(unit, row)
    return row - task.first_row + 1


def _drop_nulls(record):
    """Parquet has a column for every field; a null there means the field is absent."""
    if type(record) is not dict:
        return record
    return {k: ([_drop_nulls(x) for x in v] if type(v) is list else v) for k, v in record.items() if v is not None}


def _run_csv(task: Task, stager: Stager, rejects: list[dict], limits: Limits) -> tuple[int, int]:
    read = blank = 0
    with open_input(task.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                read += 1
                rejects.append(reject(task, reader.line_num, "<record>", f"malformed CSV: {exc}", None))
                continue
            line_no = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                blank += 1
                continue
            read += 1
            raw = ",".join(cells).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            if len(cells) != len(header):
                rejects.append(reject(task, line_no, "<record>", f"has {len(cells)} cells; the header has {len(header)}", raw))
                continue
            bad = next((h for h, c in zip(header, cells) if not _is_utf8(c)), None)
            if bad is not None:
                rejects.append(reject(task, line_no, bad, "invalid UTF-8; re-encode the file as UTF-8", raw))
                continue
            record = {h: c for h, c in zip(header, cells) if c != ""}
            try:
                unit = validate(record, task, limits)
            except RecordError as exc:
                rejects.append(reject(task, line_no, exc.field, exc.reason, raw))
                continue
            stager.add(unit, line_no)
    return read, blank


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _run_convai2(task: Task, stager: Stager, rejects: list[dict], limits: Limits) -> int:
    with open_input(task.path, "rb") as f:
        data = f.read()
    try:
        dialogs = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        rejects.append(reject(task, 1, "<file>", f"not valid JSON ({exc}); a ConvAI2 file is one JSON array", None))
        return 1
    if type(dialogs) is not list:
        rejects.append(reject(task, 1, "<file>", "a ConvAI2 file must be a JSON array of dialogs", None))
        return 1
    name = os.path.basename(task.path)
    for i, dialog in enumerate(dialogs, start=1):
        try:
            unit = _guarded(importers.convai2_dialog, dialog, name, limits)
        except RecordError as exc:
            rejects.append(reject(task, i, exc.field, exc.reason, orjson.dumps(dialog, default=str).decode()))
            continue
        stager.add(unit, i)
    return len(dialogs)
