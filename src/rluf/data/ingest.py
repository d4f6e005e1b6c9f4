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
import importlib
import mmap
import os
import shutil
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import orjson
import pyarrow.parquet as pq

from . import contract, importers, merge
from . import workers as worker_processes
from .contract import CONVERSATION, MESSAGE, REACTION, USER, Limits
from .parse import Task, TaskResult, init_worker, open_input, run_task
from .store import Store

BLOCK_BYTES = 16 << 20  # JSONL bytes per worker task
CONTRACT_FORMATS = ("jsonl", "parquet", "csv")
ALL_FORMATS = ("auto",) + CONTRACT_FORMATS + importers.FORMATS
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class IngestError(RuntimeError):
    """The input cannot be ingested at all (a missing file, an unknown format...)."""


SNIFF_LINES = 1000  # how many leading lines may be unreadable before a file's layout is unknown


def _first_record(path: Path) -> object | None:
    """The first record among the leading lines whose layout or public format is recognisable."""
    with open_input(path, "rb") as f:
        for _, line in zip(range(SNIFF_LINES), f):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if contract.detect_kind(record) or importers.detect_format(record):
                return record
    return None


def _is_blank(path: Path) -> bool:
    with open_input(path, "rb") as f:
        return all(not line.strip() for line in f)


def _sniff_readable(path: Path, fmt: str, kind: str | None) -> tuple[str, str | None]:
    try:
        return _sniff(path, fmt, kind)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise IngestError(f"{path}: cannot be read ({exc}); is it a complete, uncorrupted file?") from None


def _sniff(path: Path, fmt: str, kind: str | None) -> tuple[str, str | None]:
    """Decide a file's format and (for contract formats) its record kind."""
    suffix = _suffix(path)
    if path.name.lower().endswith(".gz") and suffix not in (".jsonl", ".ndjson", ".json", ".csv"):
        raise IngestError(f"{path}: only JSONL, JSON and CSV files are read gzip-compressed; decompress it first")
    if fmt == "auto":
        fmt = SUFFIXES.get(suffix)
        if fmt is None:
            raise IngestError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format "
                              f"({', '.join(ALL_FORMATS[1:])})")  # fmt: skip
        if fmt == "json":
            with open_input(path, "rb") as f:
                head = f.read(1 << 16).lstrip()
            fmt = importers.CONVAI2 if head.startswith(b"[") else "jsonl"
        if fmt == "jsonl":
            fmt = importers.detect_format(_first_record(path)) or "jsonl"
    if fmt in importers.FORMATS:
        return fmt, None
    if kind is None:
        if fmt == "jsonl":
            kind = contract.detect_kind(_first_record(path))
            if kind is None and _is_blank(path):
                kind = CONVERSATION  # an empty file: no record to read, whatever the layout
        elif fmt == "parquet":
            kind = _kind_from_columns(pq.read_schema(path).names)
        elif fmt == "csv":
            with open_input(path, encoding="utf-8-sig", errors="replace", newline="") as f:
                kind = _kind_from_columns(next(csv.reader(f), []))
        if kind is None:
            raise IngestError(f"{path}: cannot tell which layout this file holds from its first record; "
                              "see docs/data-format.md, or pass --layout conversation|message|reaction|user")  # fmt: skip
    if fmt == "csv" and kind == CONVERSATION:
        raise IngestError(f"{path}: nested conversations cannot be CSV; use JSONL or Parquet, or the flat layout")
    return fmt, kind


def _suffix(path: Path) -> str:
    """The format suffix, looking through a final `.gz`."""
    name = path.name.lower()
    return Path(name[:-3]).suffix if name.endswith(".gz") else path.suffix.lower()


def _kind_from_columns(columns: list[str]) -> str | None:
    return contract.detect_kind({c.strip(): None for c in columns})


_KIND_ORDER = {CONVERSATION: 0, MESSAGE: 0, importers.OASST: 0, importers.OASST_TREE: 0, importers.CONVAI2: 0,
               REACTION: 1, USER: 1}  # fmt: skip


def plan_files(paths: Iterable[str | os.PathLike], fmt: str = "auto", kind: str | None = None,
               store_dir: str | os.PathLike | None = None) -> list[tuple[Path, str, str | None]]:  # fmt: skip
    """Expand directories, check every file exists, and decide format and layout of each.

    Files inside `store_dir` are never input: a directory that holds the store is read without it.
    """
    if fmt not in ALL_FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(ALL_FORMATS)}")
    if kind is not None and kind not in contract.KINDS:
        raise IngestError(f"unknown layout {kind!r}; choose one of {', '.join(contract.KINDS)}")
    store = Path(store_dir).resolve() if store_dir is not None else None
    files: list[Path] = []
    for p in map(Path, paths):
        if store is not None and p.resolve().is_relative_to(store):
            raise IngestError(f"{p} is inside the store {store_dir}; give the logs, not the store")
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _suffix(q) in SUFFIXES
                           and not (store is not None and q.resolve().is_relative_to(store)))  # fmt: skip
            if not found:
                raise IngestError(f"{p}: directory holds no .jsonl, .json, .parquet or .csv file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise IngestError(f"{p}: no such file or directory")
    planned = [(f, *_sniff_readable(f, fmt, kind)) for f in files]
    # Messages before the reactions and users that refer to them; otherwise keep the given order.
    return sorted(planned, key=lambda x: _KIND_ORDER.get(x[2] or x[1], 0))


def _read_gzip_block(f, path: Path) -> bytes:
    try:
        block = f.read(BLOCK_BYTES)
        return block + f.readline() if block else block
    except (OSError, EOFError) as exc:
        raise IngestError(f"{path}: decompression failed ({exc}); nothing of this batch was stored") from None


def iter_tasks(planned: list[tuple[Path, str, str | None]], batch_no: int = 0) -> Iterator[Task]:
    task_id = 0
    for path, fmt, kind in planned:
        if fmt in ("jsonl", importers.OASST, importers.OASST_TREE) and path.name.lower().endswith(".gz"):
            # No seeking in a compressed stream: blocks of whole lines travel to the workers.
            line = 1
            with open_input(path, "rb") as f:
                while block := _read_gzip_block(f, path):
                    yield Task(task_id, str(path), fmt, kind, batch_no, first_line=line, length=len(block), data=block)
                    task_id += 1
                    line += block.count(b"\n")
        elif fmt in ("jsonl", importers.OASST, importers.OASST_TREE):
            for offset, length, line in _line_blocks(path):
                yield Task(task_id, str(path), fmt, kind, batch_no, first_line=line, offset=offset, length=length)
                task_id += 1
        elif fmt == "parquet":
            meta = pq.ParquetFile(path).metadata
            first_row, group, rows = 1, [], 0
            for rg in range(meta.num_row_groups):
                group.append(rg)
                rows += meta.row_group(rg).num_rows
                if rows >= 200_000 or rg == meta.num_row_groups - 1:
                    yield Task(task_id, str(path), fmt, kind, batch_no, row_groups=tuple(group), first_row=first_row)
                    task_id += 1
                    first_row += rows
                    group, rows = [], 0
            if meta.num_row_groups == 0:
                yield Task(task_id, str(path), fmt, kind, batch_no, row_groups=(), first_row=1)
                task_id += 1
        else:
            yield Task(task_id, str(path), fmt, kind, batch_no)
            task_id += 1


def _line_blocks(path: Path) -> Iterator[tuple[int, int, int]]:
    """(offset, length, first line number) of blocks of whole lines of about BLOCK_BYTES.

    The file is mapped, not read: the workers read the blocks; here only their newlines are counted,
    and the counted pages are let go at once (the memory of this process stays that of one block).
    """
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        data = np.frombuffer(mm, np.uint8)
        try:
            pos, line, released = 0, 1, 0
            while pos < size:
                end = min(pos + BLOCK_BYTES, size)
                if end < size:  # extend to the end of the line the block cut
                    newline = mm.find(b"\n", end - 1)
                    end = size if newline < 0 else newline + 1
                yield pos, end - pos, line
                line += int(np.count_nonzero(data[pos:end] == 10))
                counted = end - end % mmap.PAGESIZE  # whole pages only: out of this process's memory
                mm.madvise(mmap.MADV_DONTNEED, released, counted - released)
                pos, released = end, counted
        finally:
            del data  # the map closes only once no array views it


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
    vectorized: int = 0  # records validated by the vectorized path (the rest by the reference one)
    messages: int = 0
    reaction_events: int = 0
    conversations: int = 0
    user_overrides: int = 0
    committed: bool = False
    reject_rate: float = 0.0
    max_reject_rate: float = 0.01
    seconds: float = 0.0
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per stage: parse, check, commit
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
    vectorized: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest files into the store at `store_dir`; return the reconciled summary.

    Raises IngestError for input that cannot be read at all (missing file, unknown format); a bad
    record never raises: it is rejected, written to DIR/rejects.jsonl and counted.
    vectorized=False sends every record through the reference validator (slower, same result).
    """
    if not 0.0 <= max_reject_rate <= 1.0:
        raise IngestError(f"--max-reject-rate must be between 0 and 1, got {max_reject_rate}")
    t0 = time.perf_counter()
    planned = plan_files(paths, fmt, kind, store_dir)
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
            t = time.perf_counter()
            results, tasks = _parse_all(planned, batch_no, str(staging), limits, workers, vectorized, progress)
            summary.timings["parse"] = round(time.perf_counter() - t, 3)
            _merge_and_commit(store, manifest, results, tasks, summary, staging, memory_limit, workers)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            try:
                (store.root / "_staging").rmdir()
            except OSError:
                pass
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _parse_all(planned, batch_no: int, staging: str, limits: Limits, workers: int | None, vectorized: bool,
               progress) -> tuple[list[TaskResult], dict[int, Task]]:  # fmt: skip
    workers = workers or min(os.cpu_count() or 1, 8)
    results: list[TaskResult] = []
    tasks: dict[int, Task] = {}
    total = sum(p.stat().st_size for p, _, _ in planned) or 1
    done = 0

    def finished(task: Task, result: TaskResult):
        nonlocal done
        results.append(result)
        done += task.length
        if progress:
            progress(min(done, total), total)

    if workers <= 1:
        for task in iter_tasks(planned, batch_no):
            tasks[task.task_id] = dataclasses.replace(task, data=None)  # the bytes go to the worker only
            finished(task, run_task(task, staging, limits, vectorized))
    else:
        ctx = worker_processes.context()
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker) as pool:
            pending: deque = deque()
            for task in iter_tasks(planned, batch_no):
                tasks[task.task_id] = dataclasses.replace(task, data=None)  # the bytes go to the worker only
                pending.append((task, pool.submit(run_task, task, staging, limits, vectorized)))
                if task.task_id == 0:  # the workers exist now, so a thread may start: it loads the
                    threading.Thread(target=importlib.import_module, args=("duckdb",)).start()  # merge's DuckDB
                while len(pending) > 2 * workers:  # bounded memory: at most 2 blocks per worker in flight
                    t, fut = pending.popleft()
                    finished(t, fut.result())
            while pending:
                t, fut = pending.popleft()
                finished(t, fut.result())
    if progress:
        progress(total, total)
    results.sort(key=lambda r: r.task_id)
    return results, tasks


def _merge_and_commit(store: Store, manifest: dict, results: list[TaskResult], tasks: dict[int, Task],
                      summary: IngestSummary, staging: Path, memory_limit: str, workers: int | None) -> None:  # fmt: skip
    summary.read = sum(r.read for r in results)
    summary.blank_lines = sum(r.blank for r in results)
    summary.vectorized = sum(r.vectorized for r in results)
    con = merge.connect(staging, memory_limit, workers)
    t = time.perf_counter()
    try:
        counts, stage2_rejects = merge.decide(con, store, results, tasks)
        summary.timings["check"] = round(time.perf_counter() - t, 3)
        rejects = [rej for r in results for rej in r.rejects] + stage2_rejects
        summary.duplicate = counts.get("duplicate", 0)
        summary.accepted = counts.get("accepted", 0)
        summary.rejected = len(rejects)
        if not summary.reconciles:  # an internal invariant, checked on every batch
            raise RuntimeError(f"ingest counts do not reconcile: {summary.as_dict()}")
        reasons: dict[str, int] = {}
        for rej in rejects:
            label = _reason_label(rej)
            reasons[label] = reasons.get(label, 0) + 1
        summary.reasons = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:20])
        summary.reject_rate = summary.rejected / summary.read if summary.read else 0.0
        try:
            if summary.reject_rate <= summary.max_reject_rate:
                t = time.perf_counter()
                files = merge.commit(con, store, results, summary.batch_no)
                summary.timings["commit"] = round(time.perf_counter() - t, 3)
                for table, n in merge.count_rows(store, files).items():
                    setattr(summary, table, n)
                manifest["batches"].append({
                    "batch_id": summary.batch_id, "batch_no": summary.batch_no,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "sources": sorted({t.path for t in tasks.values()}),
                    "files": files,
                    "counts": {k: getattr(summary, k) for k in ("read", "accepted", "rejected", "duplicate", "blank_lines",
                               "messages", "reaction_events", "conversations", "user_overrides")},
                })  # fmt: skip
                store.write_manifest(manifest)  # the commit point
                summary.committed = True
        finally:  # rejects are kept whatever happened, marked with whether their batch was committed
            _append_rejects(store, summary, rejects, summary.committed)
    finally:
        con.close()


def _reason_label(rej: dict) -> str:
    """Group rejects by field and reason, with ids, values and positions left out."""
    import re

    field = re.sub(r"\[\d+\]", "[]", rej["field"])
    reason = re.sub(r"'[^']*'|\b\d[\d:.TZ-]*\b|\b(message|parent_id|id) \S+", lambda m: m.group(1) or "…", rej["reason"])
    return f"{field}: {reason.split(';')[0]}"[:100]


def _append_rejects(store: Store, summary: IngestSummary, rejects: list[dict], committed: bool) -> None:
    if not rejects:
        return
    with open(store.rejects_path, "ab") as f:
        for rej in rejects:
            f.write(orjson.dumps({"batch_id": summary.batch_id, "committed": committed, **rej}) + b"\n")
