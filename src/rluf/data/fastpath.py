"""Vectorized validation of nested-conversation JSONL blocks (the bulk of production logs).

pyarrow parses a block of lines against the contract's schema (types are enforced by the parser);
Arrow compute kernels and NumPy then check every remaining rule of `contract.normalize_conversation`
column by column and build the stored rows. The vectorized checks are conservative: any line they
do not fully clear (and every line of a range pyarrow cannot parse) goes through the reference
validator in contract.py, which alone decides the verdict and the reject reason. So both paths
accept exactly the same records and produce the same rows (tests/test_fastpath.py checks this).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .contract import ACTIONS, CONVERSATION, ROLES, Limits, _MAX_TIME_US, _MIN_TIME_US
from .parse import SCHEMAS, TIMESTAMP, Stager, Task, run_jsonl_lines

MIN_RANGE_LINES = 256  # below this a failing range goes line by line
MAX_LAGS = 16  # conversations up to this long are checked for repeated message ids turn by turn

_REACTION = pa.struct([("name", pa.string()), ("user_id", pa.string()), ("time", pa.string()), ("action", pa.string())])
_TURN = pa.struct([("message_id", pa.string()), ("parent_id", pa.string()), ("role", pa.string()),
                   ("text", pa.string()), ("time", pa.string()), ("reactions", pa.list_(_REACTION))])  # fmt: skip
SCHEMA = pa.schema([("conversation_id", pa.string()), ("user_id", pa.string()), ("started_at", pa.string()),
                    ("category", pa.string()), ("policy", pa.string()), ("turns", pa.list_(_TURN))])  # fmt: skip
_PARSE = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="infer", newlines_in_values=False)
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 26)

# The ISO-8601 subset that Arrow's cast and datetime.fromisoformat read identically (with a zone, or
# naive, meaning UTC); anything else is left to the reference validator.
_CLOCK = r"^\d{4}-\d{2}-\d{2}[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
_ZONED = _CLOCK + r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
_NAIVE = _CLOCK + "$"


def run_nested_jsonl(task: Task, stager: Stager, rejects: list[dict], limits: Limits) -> tuple[int, int]:
    if task.data is not None:
        return _run_range(task, task.data, task.first_line, stager, rejects, limits)
    with pa.memory_map(task.path) as source:  # the block is mapped, not copied
        source.seek(task.offset)
        return _run_range(task, source.read_buffer(task.length), task.first_line, stager, rejects, limits)


def _run_range(task: Task, buf: bytes | pa.Buffer, first_line: int, stager: Stager, rejects: list[dict],
               limits: Limits) -> tuple[int, int]:  # fmt: skip
    if not len(buf):
        return 0, 0
    view = np.frombuffer(buf, np.uint8)
    n_lines = int(np.count_nonzero(view == 10)) + int(view[-1] != 10)
    table = None
    # pyarrow 26 crashes (SIGSEGV) on a range whose first value is not an object, e.g. `null`.
    if view[0] == 123 or bytes(buf).lstrip()[:1] == b"{":
        try:
            if _is_utf8(buf):  # pyarrow does not validate UTF-8 inside nested strings
                table = pj.read_json(pa.BufferReader(buf), read_options=_READ, parse_options=_PARSE)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            table = None
    if table is None or table.num_rows != n_lines or table.schema.field("turns").type != SCHEMA.field("turns").type:
        # Unparseable, blank lines, or unknown fields inside turns: split, or go line by line.
        buf = bytes(buf)
        if n_lines <= MIN_RANGE_LINES:
            return run_jsonl_lines(task, buf.split(b"\n")[:n_lines], first_line, stager, rejects, limits)
        mid = buf.find(b"\n", len(buf) // 2)
        if mid < 0 or mid == len(buf) - 1:
            mid = buf.rfind(b"\n", 0, len(buf) - 1)
        left, right = buf[: mid + 1], buf[mid + 1 :]
        r1, b1 = _run_range(task, left, first_line, stager, rejects, limits)
        r2, b2 = _run_range(task, right, first_line + left.count(b"\n"), stager, rejects, limits)
        return r1 + r2, b1 + b2
    lines = functools.cache(lambda: bytes(buf).split(b"\n"))  # split at most once, when needed
    for r in _validate_table(task, table, lines, first_line, stager, limits):
        run_jsonl_lines(task, [lines()[r]], first_line + r, stager, rejects, limits)
    return n_lines, 0


def _is_utf8(buf: bytes | pa.Buffer) -> bool:
    """Whether `buf` is valid UTF-8, checked by Arrow (as strictly as Python's codec, without
    decoding a copy)."""
    data = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(buf)], np.int64)),
                                                         pa.py_buffer(buf)])  # fmt: skip
    try:
        data.cast(pa.large_string())
        return True
    except pa.ArrowInvalid:
        return False


def _validate_table(task: Task, table: pa.Table, lines: Callable[[], list[bytes]], first_line: int,
                    stager: Stager, limits: Limits) -> list[int]:  # fmt: skip
    """Stage every row the vectorized checks clear; return the row indices they do not."""
    n = table.num_rows
    idmax = limits.max_id_chars
    col = {name: _array(table.column(name)) for name in table.schema.names}
    cid, uid, turns = col["conversation_id"], col["user_id"], col["turns"]
    category, policy = (pc.dictionary_encode(_nullif_empty(col[name])) for name in ("category", "policy"))
    bad = _over(cid, idmax, required=True) | _over(uid, idmax, required=True)
    bad |= _over(col["category"], idmax) | _over(col["policy"], idmax)
    offsets = _numpy(turns.offsets).astype(np.int64)
    offsets -= offsets[0]  # a sliced list array's values start at its first offset
    n_turns = np.diff(offsets)
    bad |= _numpy(turns.is_null()) | (n_turns == 0) | (n_turns > limits.max_turns)
    bad |= _extra_fields(table, col, lines)

    # Turns: one row per message, `r` its conversation's row, `i` its index in the conversation.
    flat = turns.flatten()
    turn = dict(zip((f.name for f in flat.type), flat.flatten()))
    n_msgs = len(flat)
    r = _numpy(pc.list_parent_indices(turns))
    r_rows = _arrow(r)  # the same, as Arrow indices for take()
    i = np.arange(n_msgs) - offsets[r]
    mtime, time_ok = _times(turn["time"])
    texts = turn["text"]
    n_reactions = _numpy(pc.list_value_length(turn["reactions"]), null=0)
    bad_turn = _over(turn["message_id"], idmax, required=True, null_ok=True) | _over(turn["parent_id"], idmax)
    role = pc.index_in(turn["role"], value_set=_ROLES)  # null: not a role
    bad_turn |= ~_numpy(role.is_valid()) | ~time_ok | (n_reactions > limits.max_reactions)
    text_bytes = _numpy(pc.binary_length(texts), null=-1)
    bad_turn |= (text_bytes < 0) | (text_bytes > limits.max_text_chars)  # bytes >= characters: conservative
    bad[r[bad_turn]] = True

    started = col["started_at"]
    first_time = mtime[np.minimum(offsets[:-1], max(n_msgs - 1, 0))] if n_msgs else np.zeros(n, np.int64)
    if started.null_count == n:
        started_at = first_time
    else:
        given, given_ok = _times(started)
        has = _numpy(started.is_valid())
        bad |= has & (~given_ok | (given > first_time))
        started_at = np.where(has, given, first_time)

    # Reactions: one row per event, `tr` its turn.
    events = turn["reactions"].flatten()
    tr = _numpy(pc.list_parent_indices(turn["reactions"]))
    ev = dict(zip((f.name for f in events.type), events.flatten()))
    etime, etime_ok = _times(ev["time"])
    action = ev["action"]
    no_action = _numpy(pc.binary_length(action), null=0) == 0  # null or "": add
    action_ok = no_action | _numpy(pc.is_in(action, value_set=_ACTIONS))
    bad_event = _numpy(events.is_null()) | _over(ev["name"], idmax, required=True) | ~action_ok
    bad_event |= _over(ev["user_id"], idmax, required=True, null_ok=True) | ~etime_ok | (etime < mtime[tr])
    bad[r[tr[bad_event]]] = True

    # Message ids: given, or `conversation_id:index`; parents: given ("" for none) or the previous turn.
    cid_m = cid.take(r_rows)
    mid = turn["message_id"]
    if mid.null_count:
        default = pc.binary_join_element_wise(cid_m, pc.cast(_arrow(i), pa.string()), _COLON)
        mid = pc.coalesce(mid, default)
    bad[_repeated_in_row(r, i, mid, int(n_turns.max(initial=0)))] = True
    parent_raw = turn["parent_id"]
    previous = mid.take(_arrow(np.maximum(np.arange(n_msgs) - 1, 0)))
    previous = pc.if_else(_arrow(i > 0), previous, pa.nulls(n_msgs, pa.string()))
    parent = pc.if_else(parent_raw.is_null(), previous, _nullif_empty(parent_raw))

    # The stored rows of every conversation; those of flagged ones are dropped before staging.
    rows = _lineage(task, first_line, np.arange(n))
    uid_m, event_rows, tr_rows = uid.take(r_rows), r[tr], _arrow(tr)
    seq = np.arange(len(tr)) - np.searchsorted(event_rows, event_rows)  # events before it in its conversation
    action = pc.if_else(_arrow(no_action), _repeat(_ADD, len(tr)), action)
    tables = {
        "conversations": ([cid, uid, _timestamps(started_at), category, policy, _arrow(n_turns.astype(np.int32)),
                           pa.nulls(n, pa.string()), *rows], None),
        "messages": ([mid, cid_m, parent, _arrow(i.astype(np.int32)), uid_m, pa.DictionaryArray.from_arrays(role, _ROLES),
                      texts, _timestamps(mtime),
                      policy.take(r_rows), category.take(r_rows), pa.nulls(n_msgs, pa.string()),
                      *_lineage(task, first_line, r)], r),
        "reaction_events": ([mid.take(tr_rows), pc.coalesce(ev["user_id"], uid_m.take(tr_rows)), ev["name"],
                             action, _timestamps(etime), _arrow(seq.astype(np.int32)), *_lineage(task, first_line, event_rows)],
                            event_rows),
        "ledger": ([_label(CONVERSATION, n), cid, *rows], None),
    }  # fmt: skip
    keep = ~bad
    for name, (columns, row_of) in tables.items():
        table = pa.Table.from_arrays(columns, schema=SCHEMAS[name])
        if not keep.all():
            table = table.take(_arrow(np.flatnonzero(keep if row_of is None else keep[row_of])))
        stager.add_arrow(name, table)
    external = _external_parents(r, mid, parent_raw, keep)
    if len(external):
        stager.add_arrow("external_parents", pa.Table.from_arrays([
            _arrow(np.full(len(external), task.task_id, np.int32)), _arrow(first_line + r[external]),
            mid.take(_arrow(external)), parent_raw.take(_arrow(external)),
        ], schema=SCHEMAS["external_parents"]))  # fmt: skip
    return np.flatnonzero(bad).tolist()


# Arrow <-> NumPy without Python objects: pyarrow imports pandas (0.4 s per worker, when installed)
# at its first conversion of a Python value, scalars and `to_numpy()` included, and the clean path
# needs none of it.
_NUMPY_TYPES = {pa.uint8(): np.uint8, pa.int32(): np.int32, pa.int64(): np.int64, pa.uint64(): np.uint64}
_ARROW_TYPES = {np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64()}


def _numpy(a: pa.Array, null=None) -> np.ndarray:
    """A fixed-width Arrow array as NumPy; nulls become `null` (booleans: False)."""
    boolean = pa.types.is_boolean(a.type)
    if boolean:
        a, null = pc.cast(a, pa.uint8()), 0
    if len(a) == 0:  # an empty array may have no data buffer
        return np.zeros(0, bool if boolean else _NUMPY_TYPES[a.type])
    values = np.frombuffer(a.buffers()[1], _NUMPY_TYPES[a.type], count=a.offset + len(a))[a.offset :]
    if a.null_count:
        if null is None:
            raise ValueError(f"internal: unexpected nulls in a {a.type} array")
        values = np.where(_numpy(a.is_valid()), values, null)
    return values.astype(bool) if boolean else values


def _array(column: pa.ChunkedArray) -> pa.Array:
    """One array (a block parses to one chunk: taken as it is, where combine_chunks would copy it)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _arrow(values: np.ndarray, arrow_type: pa.DataType | None = None) -> pa.Array:
    """A NumPy array as Arrow, of `arrow_type` (by default the one of its dtype)."""
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type or _ARROW_TYPES[values.dtype], len(values), [None, pa.py_buffer(values)])


def _timestamps(us: np.ndarray) -> pa.Array:
    return _arrow(us.astype(np.int64, copy=False), TIMESTAMP)


def _strings(values: list[str]) -> pa.Array:
    data = [v.encode() for v in values]
    offsets = np.cumsum([0] + [len(d) for d in data], dtype=np.int64).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _repeat(value: pa.Array, n: int) -> pa.Array:
    """A one-element array repeated n times."""
    return value.take(_arrow(np.zeros(n, np.int64)))


def _label(value: str, n: int) -> pa.DictionaryArray:
    """`value` n times, as a dictionary array (no copy of the string)."""
    return pa.DictionaryArray.from_arrays(_arrow(np.zeros(n, np.int32)), _strings([value]))


_ROLES = _strings(sorted(ROLES))
_ACTIONS = _strings(sorted(ACTIONS))
_ADD = _strings(["add"])
_COLON = _strings([":"])[0]


def _over(a: pa.Array, max_bytes: int, required: bool = False, null_ok: bool = False) -> np.ndarray:
    """Strings longer than the limit (in bytes, which are never fewer than characters: conservative);
    with `required`, also empty ones and (unless `null_ok`) missing ones."""
    size = _numpy(pc.binary_length(a), null=-1)
    bad = size > max_bytes
    if required:
        bad |= size == 0 if null_ok else size <= 0
    return bad


def _nullif_empty(a: pa.Array) -> pa.Array:
    empty = _numpy(pc.binary_length(a), null=-1) == 0
    return pc.if_else(_arrow(empty), pa.nulls(len(a), a.type), a) if empty.any() else a


def _times(s: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds since the epoch and whether each string is a time both Arrow and the reference
    validator read, to the same value, inside the contract's range. Naive times mean UTC."""
    if len(s) == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    fixed = _fixed_width_times(s)
    if fixed is not None and fixed[1].all():  # the usual case: read in NumPy, no cast
        us, ok = fixed
    else:
        us, ok = _cast_or_reference(s, fixed[1] if fixed is not None else _numpy(pc.match_substring_regex(s, _ZONED)))
    return us, ok & (us >= _MIN_TIME_US) & (us < _MAX_TIME_US)


def _cast_or_reference(s: pa.Array, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds and validity of times read by Arrow's cast; `ok` marks the strings already known
    to match `_ZONED`. Naive times are read as UTC; where a date does not exist (2026-02-30), the
    reference parser decides which strings are times at all."""
    if not ok.all():
        naive = _numpy(pc.match_substring_regex(s, _NAIVE))
        if naive.any():
            s = pc.if_else(_arrow(naive), pc.utf8_replace_slice(s, 64, 64, "Z"), s)
            ok |= naive
    us = _cast_times(s, ok)
    if us is None:  # a date that does not exist: leave it to the reference validator
        ok &= _python_reads(s)
        us = _cast_times(s, ok)
        if us is None:
            return np.zeros(len(s), np.int64), np.zeros(len(s), bool)
    return us, ok


def _fixed_width_times(s: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """Where every string is 20 bytes long (the usual `2026-01-31T09:30:00Z`), read in NumPy, byte
    by byte: microseconds since the epoch, and whether each string matches `_ZONED` and names a day
    of the calendar (where not, the microseconds mean nothing). None for other strings."""
    offsets = np.frombuffer(s.buffers()[1], np.int32, count=s.offset + len(s) + 1)[s.offset :]
    if s.null_count or offsets[-1] - offsets[0] != 20 * len(s) or (np.diff(offsets) != 20).any():
        return None
    b = np.frombuffer(s.buffers()[2], np.uint8, count=offsets[-1] - offsets[0], offset=offsets[0]).reshape(-1, 20)
    digit = b[:, _DIGITS] - 48  # bytes below "0" wrap around: not digits
    ok = (digit <= 9).all(axis=1) & (b[:, _PUNCTUATION] == _EXPECTED).all(axis=1) & ((b[:, 10] == 84) | (b[:, 10] == 32))
    d = digit.astype(np.int64)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month, day, hour, minute, second = (d[:, k] * 10 + d[:, k + 1] for k in (4, 6, 8, 10, 12))
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour < 24) & (minute < 60) & (second < 60)
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146_097 + doe - 719_468
    return ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000, ok


_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]  # YYYY MM DD hh mm ss
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_PUNCTUATION, _EXPECTED = [4, 7, 13, 16, 19], np.frombuffer(b"--::Z", np.uint8)  # and "T" or " " at 10


def _cast_times(s: pa.Array, ok: np.ndarray) -> np.ndarray | None:
    try:
        valid = s if ok.all() else pc.if_else(_arrow(ok), s, pa.nulls(len(s), s.type))
        return _numpy(pc.cast(pc.cast(valid, TIMESTAMP), pa.int64()), null=-1)
    except pa.ArrowInvalid:
        return None


def _python_reads(s: pa.Array) -> np.ndarray:
    def reads(x):
        try:
            datetime.fromisoformat(x)
            return True
        except (TypeError, ValueError):
            return False

    return np.array([reads(x) for x in s.to_pylist()], bool)


def _extra_fields(table: pa.Table, col: dict, lines: Callable[[], list[bytes]]) -> np.ndarray:
    """Rows with a field the contract does not know: they take the reference path, which keeps it.

    pyarrow gives such a field a column, null where a row lacks it, and where a row has it null:
    a row whose line names the field is flagged too."""
    flagged = np.zeros(table.num_rows, bool)
    for name in (name for name in table.schema.names if name not in SCHEMA.names):
        valid = _numpy(col[name].is_valid())
        flagged |= valid
        if not valid.all():
            key = orjson.dumps(name)
            flagged |= np.array([key in line for line in lines()[: table.num_rows]], bool)
    return flagged


def _repeated_in_row(r: np.ndarray, i: np.ndarray, mid: pa.Array, longest: int) -> np.ndarray:
    """Rows where one message id is used twice.

    Where no conversation is longer than MAX_LAGS turns, each id is compared with the ids of the
    turns 1, 2, ... before it in its conversation (for 6 turns, a quarter of the time of hashing
    every id); otherwise the ids are hashed."""
    if longest <= MAX_LAGS:
        found = [r[d:][_numpy(pc.equal(mid[d:], mid[:-d])) & (i[d:] >= d)] for d in range(1, longest)]
        return np.concatenate(found) if found else np.zeros(0, np.int64)
    if len(pc.unique(mid)) == len(mid):
        return np.zeros(0, np.int64)
    counts = pa.Table.from_arrays([_arrow(r), mid], names=["r", "m"]).group_by(["r", "m"]).aggregate([("r", "count")])
    return _numpy(counts.column("r").combine_chunks())[_numpy(counts.column("r_count").combine_chunks()) > 1]


def _external_parents(r: np.ndarray, mid: pa.Array, parent_raw: pa.Array, keep: np.ndarray) -> np.ndarray:
    """Turns of kept rows whose given parent is not a message of the same conversation (the merge
    stage checks those against the batch and the store)."""
    given = np.flatnonzero((_numpy(pc.binary_length(parent_raw), null=0) > 0) & keep[r])
    if not len(given):
        return given
    asked = pa.Table.from_arrays([_arrow(given), _arrow(r[given]), parent_raw.take(_arrow(given))], names=["t", "r", "p"])
    own = pa.Table.from_arrays([_arrow(r), mid], names=["r", "p"])
    missing = asked.join(own, keys=["r", "p"], join_type="left anti")
    return np.sort(_numpy(missing.column("t").combine_chunks()))


def _lineage(task: Task, first_line: int, rows: np.ndarray) -> list[pa.Array]:
    n = len(rows)
    return [_arrow(np.full(n, task.batch_no, np.int32)), _label(task.path, n),
            _arrow(first_line + rows.astype(np.int64)), _arrow(np.full(n, task.task_id, np.int32))]  # fmt: skip
