"""Vectorized validation of nested-conversation JSONL blocks (the bulk of production logs).

pyarrow parses a block of lines against the contract's schema (types are enforced by the parser);
DuckDB then checks every remaining rule of `contract.normalize_conversation` column-wise and builds
the stored rows. The vectorized checks are conservative: any line they do not
fully clear (and every line of a range pyarrow cannot parse) goes through the reference validator
in contract.py, which alone decides the verdict and the reject reason. So both paths accept
exactly the same records and produce the same rows (tests/test_fastpath.py checks this).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .contract import CONVERSATION, ROLES, Limits, _MAX_TIME_US, _MIN_TIME_US
from .parse import Stager, Task, run_jsonl_lines, worker_connection

MIN_RANGE_LINES = 256  # below this a failing range goes line by line

_REACTION = pa.struct([("name", pa.string()), ("user_id", pa.string()), ("time", pa.string()), ("action", pa.string())])
_TURN = pa.struct([("message_id", pa.string()), ("parent_id", pa.string()), ("role", pa.string()),
                   ("text", pa.string()), ("time", pa.string()), ("reactions", pa.list_(_REACTION))])  # fmt: skip
SCHEMA = pa.schema([("conversation_id", pa.string()), ("user_id", pa.string()), ("started_at", pa.string()),
                    ("category", pa.string()), ("policy", pa.string()), ("turns", pa.list_(_TURN))])  # fmt: skip
_PARSE = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="infer", newlines_in_values=False)
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 26)

# The ISO-8601 subset both DuckDB and datetime.fromisoformat read identically; anything else is
# left to the reference validator.
TIME_RE = r"\d{4}-\d{2}-\d{2}[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?"


def _ts(col: str) -> str:
    return f"CASE WHEN regexp_full_match({col}, '{TIME_RE}') THEN TRY_CAST({col} AS TIMESTAMPTZ) END"


def _bad_time(col: str) -> str:
    return f"({col} IS NULL OR epoch_us({col}) < {_MIN_TIME_US} OR epoch_us({col}) >= {_MAX_TIME_US})"


def _any(*conditions: str) -> str:
    """OR of conditions where NULL counts as false."""
    return "(" + " OR ".join(f"coalesce({c}, false)" for c in conditions) + ")"


def run_nested_jsonl(task: Task, stager: Stager, rejects: list[dict], limits: Limits) -> tuple[int, int]:
    return _run_range(worker_connection(), task, task.read_block(), task.first_line, stager, rejects, limits)


def _run_range(con, task: Task, buf: bytes, first_line: int, stager: Stager, rejects: list[dict],
               limits: Limits) -> tuple[int, int]:  # fmt: skip
    n_lines = buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)
    if not buf:
        return 0, 0
    table = None
    # pyarrow 26 crashes (SIGSEGV) on a range whose first value is not an object, e.g. `null`.
    if buf.lstrip()[:1] == b"{":
        try:
            buf.decode("utf-8")  # pyarrow does not validate UTF-8 inside nested strings
            table = pj.read_json(io.BytesIO(buf), read_options=_READ, parse_options=_PARSE)
        except (pa.ArrowInvalid, UnicodeDecodeError, pa.ArrowNotImplementedError):
            table = None
    if table is None or table.num_rows != n_lines or table.schema.field("turns").type != SCHEMA.field("turns").type:
        # Unparseable, blank lines, or unknown fields inside turns: split, or go line by line.
        if n_lines <= MIN_RANGE_LINES:
            return run_jsonl_lines(task, buf.split(b"\n")[:n_lines], first_line, stager, rejects, limits)
        mid = buf.find(b"\n", len(buf) // 2)
        if mid < 0 or mid == len(buf) - 1:
            mid = buf.rfind(b"\n", 0, len(buf) - 1)
        left, right = buf[: mid + 1], buf[mid + 1 :]
        r1, b1 = _run_range(con, task, left, first_line, stager, rejects, limits)
        r2, b2 = _run_range(con, task, right, first_line + left.count(b"\n"), stager, rejects, limits)
        return r1 + r2, b1 + b2
    flagged = _validate_table(con, task, table, first_line, stager, limits)
    if flagged:
        lines = buf.split(b"\n")
        for r in flagged:
            run_jsonl_lines(task, [lines[r]], first_line + r, stager, rejects, limits)
    return n_lines, 0


def _validate_table(con, task: Task, table: pa.Table, first_line: int, stager: Stager, limits: Limits) -> list[int]:
    """Stage every row the vectorized checks clear; return the row indices they do not."""
    n = table.num_rows
    extras = [name for name in table.schema.names if name not in SCHEMA.names]
    # DuckDB sees the turns without their texts (only their byte lengths): the texts, the bulk of
    # the data, go from the parsed Arrow column to the staged file untouched.
    turns = table.column("turns").combine_chunks()
    flat = turns.flatten()
    texts = flat.field("text")
    slim = pa.StructArray.from_arrays(
        [flat.field(f) for f in ("message_id", "parent_id", "role", "time", "reactions")] + [pc.binary_length(texts)],
        names=["message_id", "parent_id", "role", "time", "reactions", "text_bytes"])
    slim_turns = pa.ListArray.from_arrays(turns.offsets, slim, mask=turns.is_null())
    blk = table.select(["conversation_id", "user_id", "started_at", "category", "policy"]).append_column(
        "turns", slim_turns).append_column("r", _row_numbers(n))  # fmt: skip
    if extras:
        has_extra = con.from_arrow(table.select(extras)).project(
            " OR ".join(f'"{e}" IS NOT NULL' for e in extras) + " AS h").to_arrow_table().column(0)  # fmt: skip
    else:
        has_extra = pa.nulls(n, pa.bool_())
    con.register("blk", blk.append_column("has_extra", has_extra))
    idmax, roles = limits.max_id_chars, ", ".join(f"'{r}'" for r in sorted(ROLES))
    # One pass over the turns: defaults, parsed time and the row's flag.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE m AS
        SELECT r, turn_index, message_id, cid AS conversation_id, parent_id, uid AS user_id, role, time,
               policy, category, reactions, parent_raw,
               {_any("mid_raw = ''", f"strlen(mid_raw) > {idmax}", f"strlen(parent_raw) > {idmax}",
                     f"role IS NULL OR role NOT IN ({roles})", "text_bytes IS NULL", f"text_bytes > {limits.max_text_chars}",
                     _bad_time("time"), f"len(reactions) > {limits.max_reactions}")} AS bad
        FROM (
            SELECT r, i - 1 AS turn_index, cid, uid, category, policy, t.message_id AS mid_raw,
                   coalesce(t.message_id, cid || ':' || (i - 1)) AS message_id, t.parent_id AS parent_raw,
                   CASE WHEN t.parent_id = '' THEN NULL
                        WHEN t.parent_id IS NOT NULL THEN t.parent_id
                        WHEN i > 1 THEN coalesce(prev_mid, cid || ':' || (i - 2)) END AS parent_id,
                   t.role AS role, t.text_bytes AS text_bytes, {_ts('t.time')} AS time, t.reactions AS reactions
            FROM (SELECT r, conversation_id AS cid, user_id AS uid, nullif(category, '') AS category,
                         nullif(policy, '') AS policy, unnest(turns) AS t, unnest(CASE WHEN len(turns) > 0 THEN list_prepend(
                             NULL, list_transform(turns, lambda t: t.message_id)[1:len(turns) - 1]) END) AS prev_mid,
                         generate_subscripts(turns, 1) AS i
                  FROM blk))
    """)  # fmt: skip
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE x AS
        SELECT r, message_id, user_id, name AS reaction, action, time, bad,
               row_number() OVER (PARTITION BY r ORDER BY turn_index, j) - 1 AS seq
        FROM (SELECT r, turn_index, j, message_id, coalesce(u.user_id, uid) AS user_id, u.name AS name,
                     coalesce(nullif(u.action, ''), 'add') AS action, {_ts('u.time')} AS time,
                     {_any("u IS NULL", "u.name IS NULL OR u.name = ''", f"strlen(u.name) > {idmax}", "u.user_id = ''",
                           f"strlen(u.user_id) > {idmax}", "coalesce(nullif(u.action, ''), 'add') NOT IN ('add', 'remove')",
                           _bad_time(_ts('u.time')), f"{_ts('u.time')} < mtime")} AS bad
              FROM (SELECT r, turn_index, message_id, time AS mtime, user_id AS uid, unnest(reactions) AS u,
                           generate_subscripts(reactions, 1) AS j
                    FROM m WHERE len(reactions) > 0))
    """)  # fmt: skip
    started = _ts("b.started_at")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE c AS
        SELECT b.r, b.conversation_id, b.user_id, coalesce({started}, m.time) AS started_at,
               nullif(b.category, '') AS category, nullif(b.policy, '') AS policy, len(b.turns) AS n_turns,
               {_any("b.has_extra", "b.conversation_id IS NULL OR b.conversation_id = ''",
                     f"strlen(b.conversation_id) > {idmax}", "b.user_id IS NULL OR b.user_id = ''",
                     f"strlen(b.user_id) > {idmax}", f"strlen(b.category) > {idmax}", f"strlen(b.policy) > {idmax}",
                     f"b.turns IS NULL OR len(b.turns) = 0 OR len(b.turns) > {limits.max_turns}",
                     f"b.started_at IS NOT NULL AND ({_bad_time(started)} OR {started} > m.time)")} AS bad
        FROM blk b LEFT JOIN m ON m.r = b.r AND m.turn_index = 0
    """)  # fmt: skip
    flagged = sorted(r for (r,) in con.execute("""
        SELECT r FROM c WHERE bad
        UNION SELECT r FROM m WHERE bad
        UNION SELECT r FROM x WHERE bad
        UNION SELECT r FROM m GROUP BY r, message_id HAVING count(*) > 1
    """).fetchall())  # fmt: skip
    keep = ""
    if flagged:
        con.register("flagged", pa.table({"r": pa.array(flagged, pa.int64())}))
        keep = "WHERE r NOT IN (SELECT r FROM flagged)"
    lineage = (f"{task.batch_no} AS batch_no, '{_sql_str(task.path)}' AS source_file, {first_line} + r AS source_line, "
               f"{task.task_id} AS block")  # fmt: skip
    conv = con.sql(f"""
        SELECT conversation_id, user_id, started_at, category, policy, n_turns, NULL AS extra, {lineage}
        FROM c {keep} ORDER BY r""").to_arrow_table()  # fmt: skip
    # m has one row per element of the flattened turns, in order (checked): add the texts back.
    msgs = con.sql(f"""
        SELECT r, message_id, conversation_id, parent_id, turn_index, user_id, role, time, policy, category,
               NULL AS extra, {lineage}
        FROM m""").to_arrow_table()  # fmt: skip
    if not msgs.column("r").equals(pa.chunked_array([pc.list_parent_indices(turns)])):
        raise RuntimeError("internal: message rows are out of step with the parsed turns")
    msgs = msgs.add_column(7, "text", pa.chunked_array([texts]))
    if flagged:
        msgs = msgs.filter(pc.invert(pc.is_in(msgs.column("r"), pa.array(flagged, pa.int64()))))
    msgs = msgs.drop_columns(["r"])
    reacts = con.sql(f"""
        SELECT message_id, user_id, reaction, action, time, seq, {lineage}
        FROM x {keep} ORDER BY r, seq""").to_arrow_table()  # fmt: skip
    stager.add_arrow("conversations", conv)
    stager.add_arrow("messages", msgs)
    stager.add_arrow("reaction_events", reacts)
    stager.add_arrow("ledger", con.sql(f"""
        SELECT '{CONVERSATION}' AS kind, conversation_id AS key, {lineage} FROM c {keep} ORDER BY r""").to_arrow_table())
    stager.add_arrow("message_keys", con.sql(f"""
        SELECT {task.task_id} AS block, {first_line} + r AS line, hash(message_id) AS h FROM m {keep}""").to_arrow_table())
    stager.add_arrow("external_parents", con.sql(f"""
        SELECT {task.task_id} AS block, {first_line} + m.r AS line, m.message_id, m.parent_id
        FROM m WHERE parent_raw IS NOT NULL AND parent_raw <> '' {keep.replace('WHERE', 'AND')}
          AND NOT EXISTS (SELECT 1 FROM m o WHERE o.r = m.r AND o.message_id = m.parent_raw)""").to_arrow_table())  # fmt: skip
    con.unregister("blk")
    if flagged:
        con.unregister("flagged")
    return flagged


def _row_numbers(n: int) -> pa.Array:
    """0..n-1 as int64, built from a NumPy buffer: `pa.array` on Python objects imports pandas
    (0.4 s per worker) when it is installed, and the clean path needs none of it."""
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])


def _sql_str(s: str) -> str:
    return s.replace("'", "''")
