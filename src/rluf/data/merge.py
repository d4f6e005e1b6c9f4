"""Ingest stage 2: cross-record checks over the staged units, then commit (runs in DuckDB).

Each staged unit ends as exactly one of: accepted, duplicate (same identity and same content as a
stored record or an earlier one in the batch) or rejected (a conflict on identity, a message id
used twice, an unknown parent, a reaction to an unknown message or earlier than it). Blocks whose
units are all accepted are moved into the store as they are; the others are rewritten filtered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from .parse import DATA_TABLES, SCHEMAS, STORED_TABLES, Task, TaskResult, reject
from .store import Store, _sql_list

if TYPE_CHECKING:
    import duckdb

CONFLICT_STORED = ("id already in the store with different content; a stored record is never changed: send late "
                   "reactions as flat reaction events, or give the new record its own id")  # fmt: skip
CONFLICT_BATCH = "id appears earlier in this batch with different content; ids must be unique"


def connect(staging: Path, memory_limit: str, threads: int | None) -> duckdb.DuckDBPyConnection:
    import duckdb  # imported here: the ingest forks its workers before it needs DuckDB

    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(staging / "duckdb.tmp"),
                                 "preserve_insertion_order": False})  # fmt: skip
    con.execute("SET TimeZone='UTC'")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    return con


def decide(con, store: Store, results: list[TaskResult], tasks: dict[int, Task]) -> tuple[dict[str, int], list[dict]]:
    """Classify every staged unit; return status counts and the rejects of this stage."""
    for table, cols, empty in (
        ("ledger", "kind, key, batch_no, block, source_line",
         "''::VARCHAR kind, ''::VARCHAR key, 0 batch_no, 0 block, 0::BIGINT source_line"),
        ("messages", "message_id, time", "''::VARCHAR message_id, TIMESTAMPTZ '2000-01-01' time"),
        ("reaction_events", "message_id, user_id, reaction, action, time",
         "''::VARCHAR message_id, ''::VARCHAR user_id, ''::VARCHAR reaction, ''::VARCHAR action, "
         "TIMESTAMPTZ '2000-01-01' time"),
    ):  # fmt: skip
        files = store.table_files(table)
        source = f"read_parquet({_sql_list(files)})" if files else f"(SELECT {empty}) WHERE false"
        con.execute(f"CREATE OR REPLACE VIEW stored_{table} AS SELECT {cols} FROM {source}")
    for table, schema in SCHEMAS.items():
        files = [r.staged[table] for r in results if table in r.staged]
        if files:
            con.execute(f"CREATE OR REPLACE VIEW s_{table} AS SELECT * FROM read_parquet({_sql_list(files)})")
        else:
            con.register(f"empty_{table}", _empty_table(schema))
            con.execute(f"CREATE OR REPLACE VIEW s_{table} AS SELECT * FROM empty_{table}")

    # Identity: (kind, key). A new identity is accepted; a known one is compared by content with
    # its reference (the stored record, else the first in this batch; for users rows, which are
    # upserts, the latest version). Content digests are computed only for those comparisons.
    con.execute("CREATE OR REPLACE VIEW s_units AS SELECT block, source_line AS line, kind, key FROM s_ledger")
    stored_join = "UNION SELECT kind, key FROM s_units SEMI JOIN stored_ledger USING (kind, key)" \
        if store.table_files("ledger") else ""  # fmt: skip
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE seen AS
        SELECT kind, key FROM s_units GROUP BY kind, key HAVING count(*) > 1 {stored_join}""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE decided AS
        SELECT block, line, kind, 'accepted' AS status, NULL::INTEGER AS ref_batch, NULL::INTEGER AS ref_block,
               NULL::BIGINT AS ref_line, NULL::VARCHAR AS field, NULL::VARCHAR AS reason
        FROM s_units ANTI JOIN seen USING (kind, key)
        UNION ALL
        SELECT block, line, kind,
            CASE WHEN sb IS NULL AND occurrence = 1 THEN 'accepted'
                 WHEN kind = 'reaction' THEN 'duplicate'  -- the key is the whole event
                 ELSE 'compare' END,
            -- the reference: in this batch (ref_batch NULL) or stored
            CASE WHEN kind = 'user' AND occurrence > 1 THEN NULL WHEN sb IS NOT NULL THEN sb END,
            CASE WHEN kind = 'user' AND occurrence > 1 THEN pb WHEN sb IS NOT NULL THEN sk ELSE fb END,
            CASE WHEN kind = 'user' AND occurrence > 1 THEN pl WHEN sb IS NOT NULL THEN sl ELSE fl END,
            NULL, NULL
        FROM (
            SELECT u.block, u.line, u.kind, u.key, s.loc.sb AS sb, s.loc.sk AS sk, s.loc.sl AS sl,
                   row_number() OVER w AS occurrence,
                   first_value(u.block) OVER w AS fb, first_value(u.line) OVER w AS fl,
                   lag(u.block) OVER w AS pb, lag(u.line) OVER w AS pl
            FROM (SELECT * FROM s_units SEMI JOIN seen USING (kind, key)) u
            LEFT JOIN (SELECT kind, key, max({'sb': batch_no, 'sk': block, 'sl': source_line}) AS loc  -- the latest
                       FROM stored_ledger SEMI JOIN seen USING (kind, key) GROUP BY kind, key) s
                ON s.kind = u.kind AND s.key = u.key
            WINDOW w AS (PARTITION BY u.kind, u.key ORDER BY u.block, u.line))
    """)
    if con.execute("SELECT count(*) FROM decided WHERE status = 'compare'").fetchone()[0]:
        _compare_contents(con, store)
    con.execute("UPDATE decided SET field = NULL, reason = NULL WHERE status <> 'rejected'")
    con.execute("CREATE OR REPLACE TEMP VIEW accepted AS SELECT block, line FROM decided WHERE status = 'accepted'")

    # A message id may belong to one record only (nested ids can collide with flat ones). Sort the
    # ids' hashes (at 10M messages twice as fast as grouping them); compare the strings only where
    # hashes repeat.
    con.execute("CREATE OR REPLACE TEMP VIEW s_message_keys AS SELECT block, source_line AS line, hash(message_id) AS h "
                "FROM s_messages")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE repeated_h AS
        SELECT DISTINCT h FROM (SELECT h, lag(h) OVER (ORDER BY h) AS previous FROM s_message_keys) WHERE h = previous""")
    n_repeated = con.execute("SELECT count(*) FROM repeated_h").fetchone()[0] and con.execute("""
        CREATE OR REPLACE TEMP TABLE repeated AS
        SELECT DISTINCT k.block, k.line FROM s_message_keys k SEMI JOIN repeated_h USING (h)
        SEMI JOIN accepted a ON a.block = k.block AND a.line = k.line
    """).fetchone()[0]
    if n_repeated:
        _reject_where(con, "message_id", """
            WITH am AS (SELECT m.message_id, m.block, m.source_line AS line FROM s_messages m
                        SEMI JOIN repeated a ON a.block = m.block AND a.line = m.source_line),
            twice AS (SELECT message_id, min(block * 4294967296 + line) AS first FROM am GROUP BY message_id HAVING count(*) > 1)
            SELECT am.block, am.line, 'message id ' || am.message_id || ' is used by an earlier record in this batch' AS reason
            FROM am JOIN twice t USING (message_id) WHERE am.block * 4294967296 + am.line > t.first
        """)
    if store.table_files("messages"):
        _reject_where(con, "message_id", """
            SELECT m.block, m.source_line AS line, 'message id ' || m.message_id || ' already exists in the store' AS reason
            FROM s_messages m SEMI JOIN accepted a ON a.block = m.block AND a.line = m.source_line
            SEMI JOIN stored_messages s ON s.message_id = m.message_id
        """)
    # Parents outside their own record must exist; repeat, as a rejected parent orphans its children.
    has_external = con.execute("SELECT count(*) FROM s_external_parents").fetchone()[0] > 0
    for _ in range(64 if has_external else 0):
        n = _reject_where(con, "parent_id", """
            SELECT p.block, p.line, 'parent_id ' || p.parent_id || ' is not a known message; ingest the parent first' AS reason
            FROM s_external_parents p SEMI JOIN accepted a ON a.block = p.block AND a.line = p.line
            WHERE p.parent_id NOT IN (SELECT message_id FROM stored_messages)
              AND p.parent_id NOT IN (SELECT m.message_id FROM s_messages m
                                      SEMI JOIN accepted a ON a.block = m.block AND a.line = m.source_line)
        """)
        if not n:
            break
    # Flat reaction events: their message must exist and be no later than the reaction.
    if con.execute("SELECT count(*) FROM decided WHERE kind = 'reaction'").fetchone()[0]:
        _reject_where(con, "CASE WHEN k.message_id IS NULL THEN 'message_id' ELSE 'time' END", """
        WITH rx AS (SELECT r.* FROM s_reaction_events r
                    JOIN decided d ON d.block = r.block AND d.line = r.source_line
                    WHERE d.status = 'accepted' AND d.kind = 'reaction'),
        known AS (SELECT message_id, min(time) AS time FROM (
                    SELECT message_id, time FROM stored_messages WHERE message_id IN (SELECT message_id FROM rx)
                    UNION ALL
                    SELECT m.message_id, m.time FROM s_messages m
                    SEMI JOIN accepted a ON a.block = m.block AND a.line = m.source_line
                    WHERE m.message_id IN (SELECT message_id FROM rx)) GROUP BY message_id)
        SELECT rx.block, rx.source_line AS line, k.message_id,
               CASE WHEN k.message_id IS NULL
                    THEN 'no message ' || rx.message_id || ' in the store or this batch; ingest the messages first, then this file again'
                    ELSE 'reaction at ' || strftime(rx.time, '%Y-%m-%dT%H:%M:%S') || 'Z is earlier than its message at '
                         || strftime(k.time, '%Y-%m-%dT%H:%M:%S') || 'Z' END AS reason
        FROM rx LEFT JOIN known k USING (message_id)
        WHERE k.message_id IS NULL OR rx.time < k.time
    """, field_from_query=True)

        # A flat event that repeats one already logged inside a conversation is a duplicate too.
        con.execute("""
            UPDATE decided d SET status = 'duplicate'
            FROM (
                SELECT r.block, r.source_line AS line FROM s_reaction_events r
                JOIN decided a ON a.block = r.block AND a.line = r.source_line AND a.kind = 'reaction' AND a.status = 'accepted'
                SEMI JOIN (SELECT message_id, user_id, reaction, action, time FROM stored_reaction_events
                           UNION ALL
                           SELECT o.message_id, o.user_id, o.reaction, o.action, o.time FROM s_reaction_events o
                           JOIN decided od ON od.block = o.block AND od.line = o.source_line
                           WHERE od.status = 'accepted' AND od.kind <> 'reaction') k
                    USING (message_id, user_id, reaction, action, time)) x
            WHERE d.block = x.block AND d.line = x.line
        """)
    counts = dict(con.execute("SELECT status, count(*) FROM decided GROUP BY status").fetchall())
    rows = con.execute("SELECT block, line, field, reason FROM decided WHERE status = 'rejected' ORDER BY block, line").fetchall()
    return counts, [reject(tasks[b], line, field, reason, None) for b, line, field, reason in rows]


def _empty_table(schema: pa.Schema) -> pa.Table:
    """A table with no rows. Not `schema.empty_table()`, which imports pandas (0.3 s) to build it."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def _digests(con, tables: dict[str, str], keys: str, key_cols: tuple[str, str, str]) -> str:
    """SQL for (k1, k2, k3, digest) of the units listed in `keys`, read from `tables` (staged or stored).

    A unit's digest covers every stored field of its rows, in order; lineage is left out.
    """
    b, k, l = key_cols
    nul = "chr(0)"
    canon = {
        "conversations": f"concat_ws(chr(31), conversation_id, user_id, epoch_us(started_at), coalesce(category, {nul}), "
                         f"coalesce(policy, {nul}), n_turns, coalesce(extra, {nul}))",
        "messages": f"concat_ws(chr(31), message_id, conversation_id, coalesce(parent_id, {nul}), "
                    f"coalesce(turn_index::VARCHAR, {nul}), user_id, role, text, epoch_us(time), coalesce(policy, {nul}), "
                    f"coalesce(category, {nul}), coalesce(extra, {nul}))",
        "reaction_events": "concat_ws(chr(31), message_id, user_id, reaction, action, epoch_us(time), seq)",
        "user_overrides": "concat_ws(chr(31), user_id, retained)",
    }  # fmt: skip
    order = {"conversations": "conversation_id", "messages": "turn_index, message_id", "reaction_events": "seq",
             "user_overrides": "user_id"}  # fmt: skip
    parts = []
    for table, expr in canon.items():
        parts.append(f"""
            SELECT t.{b} AS k1, t.{k} AS k2, t.{l} AS k3, '{table}' AS part,
                   md5(string_agg({expr}, chr(30) ORDER BY {order[table]})) AS d
            FROM {tables[table]} t SEMI JOIN {keys} q ON q.k1 IS NOT DISTINCT FROM t.{b} AND q.k2 = t.{k} AND q.k3 = t.{l}
            GROUP BY ALL""")  # fmt: skip
    return f"""
        SELECT k1, k2, k3, md5(string_agg(part || ':' || d, '|' ORDER BY part)) AS digest
        FROM ({' UNION ALL '.join(parts)}) GROUP BY k1, k2, k3"""


def _compare_contents(con, store: Store) -> None:
    """Settle 'compare' units: same content as the reference -> duplicate, else conflict (users: update)."""
    staged = {t: f"s_{t}" for t in DATA_TABLES}
    stored = {}
    for t in DATA_TABLES:
        files = store.table_files(t)
        stored[t] = f"read_parquet({_sql_list(files)})" if files else f"(SELECT * FROM s_{t} WHERE false)"
    con.execute("""
        CREATE OR REPLACE TEMP TABLE cmp_self AS
        SELECT DISTINCT NULL::INTEGER AS k1, block AS k2, line AS k3 FROM decided WHERE status = 'compare'
        UNION SELECT DISTINCT NULL::INTEGER, ref_block, ref_line FROM decided WHERE status = 'compare' AND ref_batch IS NULL""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE cmp_stored AS
        SELECT DISTINCT ref_batch AS k1, ref_block AS k2, ref_line AS k3 FROM decided
        WHERE status = 'compare' AND ref_batch IS NOT NULL""")
    staged_sql = _digests(con, {t: f"(SELECT NULL::INTEGER AS nb, * FROM {v})" for t, v in staged.items()},
                          "cmp_self", ("nb", "block", "source_line"))  # fmt: skip
    stored_sql = _digests(con, stored, "cmp_stored", ("batch_no", "block", "source_line"))
    con.execute(f"CREATE OR REPLACE TEMP TABLE dig AS {staged_sql} UNION ALL {stored_sql}")
    con.execute(f"""
        UPDATE decided d SET
            status = CASE WHEN mine.digest = ref.digest THEN 'duplicate' WHEN d.kind = 'user' THEN 'accepted'
                          ELSE 'rejected' END,
            field = CASE d.kind WHEN 'conversation' THEN 'conversation_id' WHEN 'message' THEN 'message_id'
                                ELSE 'user_id' END,
            reason = CASE WHEN d.ref_batch IS NOT NULL THEN '{CONFLICT_STORED}' ELSE '{CONFLICT_BATCH}' END
        FROM dig mine, dig ref
        WHERE d.status = 'compare' AND mine.k1 IS NULL AND mine.k2 = d.block AND mine.k3 = d.line
          AND ref.k1 IS NOT DISTINCT FROM d.ref_batch AND ref.k2 = d.ref_block AND ref.k3 = d.ref_line
    """)
    left = con.execute("SELECT count(*) FROM decided WHERE status = 'compare'").fetchone()[0]
    if left:  # every unit has rows, so every compared unit has a digest
        raise RuntimeError(f"{left} records could not be compared with their earlier version")


def _reject_where(con, field: str, query: str, field_from_query: bool = False) -> int:
    """Reject the accepted units (block, line) that `query` returns, with its reason."""
    field_sql = "x.field" if field_from_query else f"'{field}'"
    if field_from_query:
        query = f"SELECT block, line, {field} AS field, reason FROM ({query}) k"
    return con.execute(f"""
        UPDATE decided d SET status = 'rejected', field = {field_sql}, reason = x.reason
        FROM (SELECT block, line, {'min(field) AS field, ' if field_from_query else ''}min(reason) AS reason
              FROM ({query}) q GROUP BY block, line) x
        WHERE d.block = x.block AND d.line = x.line AND d.status = 'accepted'
    """).fetchone()[0]


def commit(con, store: Store, results: list[TaskResult], batch_no: int) -> dict[str, list[str]]:
    """Move or rewrite the accepted rows into the store; return the new files by table."""
    clean = {b for (b,) in con.execute(
        "SELECT block FROM decided GROUP BY block HAVING bool_and(status = 'accepted')").fetchall()}  # fmt: skip
    files: dict[str, list[str]] = {}
    for result in results:
        for table in STORED_TABLES:
            src = result.staged.get(table)
            if src is None:
                continue
            dest = store.root / "tables" / table / f"batch-{batch_no:06d}-block-{result.task_id:07d}.parquet"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if result.task_id in clean:
                os.replace(src, dest)
            else:
                n = con.execute(f"""
                    COPY (SELECT t.* FROM read_parquet('{src}') t
                          SEMI JOIN accepted a ON a.block = t.block AND a.line = t.source_line
                          ORDER BY t.source_line)
                    TO '{dest}' (FORMAT parquet, COMPRESSION snappy)""").fetchone()[0]  # fmt: skip
                if n == 0:
                    dest.unlink()
                    continue
            files.setdefault(table, []).append(str(dest.relative_to(store.root)))
    return files


def count_rows(store: Store, files: dict[str, list[str]]) -> dict[str, int]:
    import pyarrow.parquet as pq

    return {t: sum(pq.ParquetFile(store.root / f).metadata.num_rows for f in files.get(t, [])) for t in DATA_TABLES}
