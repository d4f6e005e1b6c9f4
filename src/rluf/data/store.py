"""The embedded store: partitioned Parquet under one directory, queried through DuckDB (no server).

Layout of a store directory DIR:

    DIR/manifest.json                 committed batches and their files (the source of truth)
    DIR/tables/<table>/batch-NNNNNN[-block-NNNNNNN].parquet
    DIR/rejects.jsonl                 every rejected record of every batch, appended
    DIR/.lock                         held while an ingest writes

Stored tables: `conversations`, `messages`, `reaction_events` (every add/remove as logged),
`user_overrides` (the optional users table) and `ledger` (one row per accepted record: the identity
used to make re-ingest idempotent). Views computed on read: `reactions` (resolved, last action wins)
and `users` (first/last seen, derived and overridden retention).

    from rluf.data.store import Store
    con = Store("runs/demo/store").connect()
    con.sql("select reaction, count(*) from reactions group by 1").show()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

STORED_TABLES = ("conversations", "messages", "reaction_events", "user_overrides", "ledger")
MANIFEST_VERSION = 1


class StoreError(RuntimeError):
    pass


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ----------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def rejects_path(self) -> Path:
        return self.root / "rejects.jsonl"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a store directory; give --store a directory")
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "batches": []}
        try:
            with open(self.manifest_path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.manifest_path} cannot be read ({exc}); restore it from a backup, "
                             "it is the list of committed batches") from None
        if manifest.get("version") != MANIFEST_VERSION:
            raise StoreError(
                f"{self.manifest_path}: store format version {manifest.get('version')} is not supported "
                f"(this rluf reads version {MANIFEST_VERSION})"
            )
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)

    def table_files(self, table: str) -> list[str]:
        files = []
        for batch in self.manifest()["batches"]:
            files.extend(str(self.root / p) for p in batch["files"].get(table, []))
        return files

    @contextlib.contextmanager
    def lock(self):
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a store directory; give --store a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root} is being written by another rluf process; wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ----------------------------------------------------------- reading
    def connect(self, retention_days: tuple[int, int] = (14, 28), memory_limit: str = "1GB",
                threads: int | None = None) -> duckdb.DuckDBPyConnection:  # fmt: skip
        """An in-memory DuckDB connection with every table and view of the store.

        retention_days: (start, end) of the activity window that counts as retained, in days after a
        user is first seen; the default (14, 28) means active in days 14-27.
        """
        start, end = retention_days
        if not 0 <= start < end:
            raise ValueError(f"retention window {retention_days} must satisfy 0 <= start < end")
        import duckdb

        con = duckdb.connect(config={"memory_limit": memory_limit})
        con.execute("SET TimeZone='UTC'")
        if threads:
            con.execute(f"SET threads={int(threads)}")
        for table in STORED_TABLES:
            files = self.table_files(table)
            if files:
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_sql_list(files)}, union_by_name=true)")
            else:
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM ({EMPTY[table]}) WHERE false")
        con.execute(RESOLVED_REACTIONS_SQL)
        con.execute(USERS_SQL.format(start=start, end=end))
        return con


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


_LINEAGE = "0::INTEGER AS batch_no, ''::VARCHAR AS source_file, 0::BIGINT AS source_line, 0::INTEGER AS block"
EMPTY = {
    "conversations": "SELECT ''::VARCHAR conversation_id, ''::VARCHAR user_id, TIMESTAMPTZ '2000-01-01' started_at, "
    "''::VARCHAR category, ''::VARCHAR policy, 0::INTEGER n_turns, ''::VARCHAR extra, " + _LINEAGE,
    "messages": "SELECT ''::VARCHAR message_id, ''::VARCHAR conversation_id, ''::VARCHAR parent_id, 0::INTEGER turn_index, "
    "''::VARCHAR user_id, ''::VARCHAR role, ''::VARCHAR text, TIMESTAMPTZ '2000-01-01' time, ''::VARCHAR policy, "
    "''::VARCHAR category, ''::VARCHAR extra, " + _LINEAGE,
    "reaction_events": "SELECT ''::VARCHAR message_id, ''::VARCHAR user_id, ''::VARCHAR reaction, ''::VARCHAR action, "
    "TIMESTAMPTZ '2000-01-01' time, 0::INTEGER seq, " + _LINEAGE,
    "user_overrides": "SELECT ''::VARCHAR user_id, false retained, " + _LINEAGE,
    "ledger": "SELECT ''::VARCHAR kind, ''::VARCHAR key, 0::INTEGER AS batch_no, 0::INTEGER AS block, "
    "''::VARCHAR AS source_file, 0::BIGINT AS source_line",
}

# Last action wins per (message, user, reaction); equal times resolve in ingest order.
RESOLVED_REACTIONS_SQL = """
CREATE VIEW reactions AS
SELECT message_id, user_id, reaction, time
FROM (
    SELECT *, row_number() OVER (
        PARTITION BY message_id, user_id, reaction
        ORDER BY time DESC, batch_no DESC, block DESC, source_line DESC, seq DESC) AS rn
    FROM reaction_events)
WHERE rn = 1 AND action = 'add'
"""

# Activity = a message written by the user. Retained = active in [start, end) days after first seen.
# retention_known is false while the window has not fully elapsed in the data (censored users).
USERS_SQL = """
CREATE VIEW users AS
WITH activity AS (
    SELECT user_id, time FROM messages WHERE role = 'user'),
data_end AS (SELECT max(time) AS t FROM messages),
firsts AS (
    SELECT m.user_id, min(m.time) AS first_seen, max(m.time) AS last_seen,
           count(*) AS n_messages, count(DISTINCT m.conversation_id) AS n_conversations
    FROM messages m GROUP BY m.user_id),
returned AS (
    SELECT f.user_id, bool_or(a.time >= f.first_seen + INTERVAL {start} DAY
                              AND a.time < f.first_seen + INTERVAL {end} DAY) AS active_in_window
    FROM firsts f JOIN activity a USING (user_id) GROUP BY f.user_id),
latest_override AS (
    SELECT user_id, retained FROM (
        SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY batch_no DESC, block DESC, source_line DESC) rn
        FROM user_overrides) WHERE rn = 1)
SELECT f.user_id, f.first_seen, f.last_seen, f.n_messages, f.n_conversations,
       coalesce(r.active_in_window, false) AS retained_derived,
       (SELECT t FROM data_end) >= f.first_seen + INTERVAL {end} DAY AS window_elapsed,
       o.retained AS retained_override,
       CASE WHEN o.retained IS NOT NULL THEN o.retained
            WHEN (SELECT t FROM data_end) >= f.first_seen + INTERVAL {end} DAY THEN coalesce(r.active_in_window, false)
            ELSE NULL END AS retained
FROM firsts f LEFT JOIN returned r USING (user_id) LEFT JOIN latest_override o USING (user_id)
"""
