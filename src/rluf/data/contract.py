"""The log data contract: what a valid record is, and what it becomes in the store.

docs/data-format.md is the operator-facing description of the same rules; this module is the
executable one. Each `normalize_*` function takes one decoded record (a dict, as read from a JSONL
line, a Parquet row or a CSV row) and either returns a `Unit` (the rows it contributes to the store)
or raises `RecordError` naming the field at fault and what to do about it.

Reaction names are free strings: the contract has no reaction vocabulary.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

ROLES = frozenset({"user", "assistant", "system"})
ACTIONS = frozenset({"add", "remove"})

# Kinds of record (one per file layout).
CONVERSATION = "conversation"  # nested: one conversation per record
MESSAGE = "message"  # flat: one message per record
REACTION = "reaction"  # flat: one reaction event per record
USER = "user"  # optional users table (retention override)
KINDS = (CONVERSATION, MESSAGE, REACTION, USER)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DIGITS = re.compile(r"[0-9]+")
_EPOCH_TEXT = re.compile(r"\d{1,16}(\.\d{1,6})?")
_MICROSECOND = timedelta(microseconds=1)
_MIN_TIME_US = 0  # 1970-01-01
_MAX_TIME_US = 4102444800 * 1_000_000  # 2100-01-01


@dataclasses.dataclass(frozen=True)
class Limits:
    """Size limits a record must respect. Defaults suit chat logs; raise them with care."""

    max_text_chars: int = 65_536  # one message's text
    max_id_chars: int = 256  # any id or name
    max_turns: int = 2_000  # turns in one nested conversation
    max_reactions: int = 1_000  # reaction events on one turn


class RecordError(ValueError):
    """A record breaks the contract. `field` is a path like `turns[3].reactions[0].time`."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass
class Unit:
    """The rows one valid source record contributes. Row tuples follow the *_COLUMNS orders below."""

    kind: str
    key: str  # identity used for de-duplication (conversation/message id, event tuple, user id)
    conversations: list[tuple] = dataclasses.field(default_factory=list)
    messages: list[tuple] = dataclasses.field(default_factory=list)
    reactions: list[tuple] = dataclasses.field(default_factory=list)
    users: list[tuple] = dataclasses.field(default_factory=list)


CONVERSATION_COLUMNS = ("conversation_id", "user_id", "started_at", "category", "policy", "n_turns", "extra")
MESSAGE_COLUMNS = (
    "message_id", "conversation_id", "parent_id", "turn_index", "user_id", "role", "text", "time",
    "policy", "category", "extra",
)  # fmt: skip
REACTION_COLUMNS = ("message_id", "user_id", "reaction", "action", "time", "seq")
USER_COLUMNS = ("user_id", "retained")


# ---------------------------------------------------------------- field checks


def _missing(field: str) -> RecordError:
    return RecordError(field, "required field is missing or null")


def _string(value: Any, field: str, max_chars: int, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise _missing(field)
        return None
    if type(value) is not str:
        if type(value) is int:
            return str(value)  # numeric ids are common in exports; they are kept as text
        raise RecordError(field, f"expected a string, got {_type_name(value)}")
    if not value:
        if required:
            raise RecordError(field, "must not be empty")
        return None
    if len(value) > max_chars:
        raise RecordError(field, f"is {len(value)} characters long; the limit is {max_chars}")
    return value


def _text(value: Any, field: str, limits: Limits) -> str:
    if value is None:
        raise _missing(field)
    if type(value) is not str:
        raise RecordError(field, f"expected a string, got {_type_name(value)}")
    if len(value) > limits.max_text_chars:
        raise RecordError(
            field,
            f"text is {len(value)} characters; the limit is {limits.max_text_chars} "
            "(raise it with --max-text-chars if such texts are expected)",
        )
    return value


def parse_time(value: Any, field: str) -> int:
    """Return microseconds since the Unix epoch (UTC).

    Accepts an ISO-8601 string (`2026-01-31T09:30:00Z`, an offset, or naive meaning UTC), epoch
    seconds as a number or as digits in a string, or a `datetime`.
    """
    if value is None:
        raise _missing(field)
    if type(value) is str:
        if _EPOCH_TEXT.fullmatch(value):  # CSV cells are text: "1767225600" means epoch seconds
            return parse_time(float(value) if "." in value else int(value), field)
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise RecordError(
                field, f"{value[:40]!r} is not an ISO-8601 time; write e.g. 2026-01-31T09:30:00Z"
            ) from None
        return _datetime_us(dt, field)
    if type(value) is int or type(value) is float:
        if value != value:
            raise RecordError(field, "time is NaN")
        if value in (float("inf"), float("-inf")):
            raise RecordError(field, "time is infinite")
        us = int(value * 1_000_000)
        if us > _MAX_TIME_US and value / 1000 * 1_000_000 <= _MAX_TIME_US:
            raise RecordError(field, f"{value} looks like epoch milliseconds; give epoch seconds")
        return _check_range(us, field)
    if isinstance(value, datetime):
        return _datetime_us(value, field)
    raise RecordError(field, f"expected a time (ISO-8601 string or epoch seconds), got {_type_name(value)}")


def _datetime_us(dt: datetime, field: str) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        us = (dt - _EPOCH) // _MICROSECOND
    except (OverflowError, OSError, ValueError):
        raise RecordError(field, f"time {dt.isoformat()} is out of range") from None
    return _check_range(us, field)


def _check_range(us: int, field: str) -> int:
    if not _MIN_TIME_US <= us < _MAX_TIME_US:
        raise RecordError(field, "time is outside 1970-01-01 .. 2100-01-01")
    return us


def _bool(value: Any, field: str) -> bool:
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if type(value) is str:
        low = value.strip().lower()
        if low in ("true", "1", "yes", "t"):
            return True
        if low in ("false", "0", "no", "f"):
            return False
    if value is None:
        raise _missing(field)
    raise RecordError(field, f"expected true or false, got {value!r:.40}")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)  # fmt: skip


def _extra(record: dict, known: frozenset) -> str | None:
    """Fields the contract does not know are kept, verbatim, as a JSON object string."""
    if len(record) <= len(known) and known.issuperset(record):
        return None
    extra = {k: v for k, v in record.items() if k not in known}
    if not extra:
        return None
    try:
        return orjson.dumps(extra, default=str).decode()
    except TypeError as exc:
        raise RecordError(next(iter(extra)), f"extra field cannot be stored as JSON: {exc}") from None


# ---------------------------------------------------------------- records

_CONV_KEYS = frozenset({"conversation_id", "user_id", "started_at", "category", "policy", "turns"})
_TURN_KEYS = frozenset({"message_id", "parent_id", "role", "text", "time", "reactions"})
_NESTED_REACTION_KEYS = frozenset({"name", "user_id", "time", "action"})
_MESSAGE_KEYS = frozenset(
    {"message_id", "conversation_id", "parent_id", "turn_index", "user_id", "role", "text", "time",
     "policy", "category"}
)  # fmt: skip
_REACTION_KEYS = frozenset({"message_id", "user_id", "reaction", "action", "time"})
_USER_KEYS = frozenset({"user_id", "retained"})


def _require_object(record: Any) -> dict:
    if type(record) is not dict:
        raise RecordError("<record>", f"expected a JSON object, got {_type_name(record)}")
    return record


def normalize_conversation(record: Any, limits: Limits = Limits()) -> Unit:
    """A nested conversation: ids, optional category/policy/start, and its turns with reactions."""
    rec = _require_object(record)
    idmax = limits.max_id_chars
    cid = _string(rec.get("conversation_id"), "conversation_id", idmax)
    uid = _string(rec.get("user_id"), "user_id", idmax)
    category = _string(rec.get("category"), "category", idmax, required=False)
    policy = _string(rec.get("policy"), "policy", idmax, required=False)
    turns = rec.get("turns")
    if turns is None:
        raise _missing("turns")
    if type(turns) is not list:
        raise RecordError("turns", f"expected a list of turns, got {_type_name(turns)}")
    if not turns:
        raise RecordError("turns", "a conversation needs at least one turn")
    if len(turns) > limits.max_turns:
        raise RecordError("turns", f"{len(turns)} turns; the limit is {limits.max_turns}")

    messages: list[tuple] = []
    reactions: list[tuple] = []
    previous_id = None
    seen_ids = set()
    for i, turn in enumerate(turns):
        where = f"turns[{i}]"
        if type(turn) is not dict:
            raise RecordError(where, f"expected an object, got {_type_name(turn)}")
        mid = turn.get("message_id")
        mid = f"{cid}:{i}" if mid is None else _string(mid, where + ".message_id", idmax)
        if mid in seen_ids:
            raise RecordError(where + ".message_id", f"{mid!r} appears twice in this conversation")
        seen_ids.add(mid)
        parent = turn.get("parent_id")  # null or absent: the previous turn; "": no parent
        parent = previous_id if parent is None else _string(parent, where + ".parent_id", idmax, required=False)
        role = turn.get("role")
        if type(role) is not str or role not in ROLES:
            raise _bad_role(role, where + ".role")
        text = _text(turn.get("text"), where + ".text", limits)
        t = parse_time(turn.get("time"), where + ".time")
        extra = _extra(turn, _TURN_KEYS)
        messages.append((mid, cid, parent, i, uid, role, text, t, policy, category, extra))
        raw_reactions = turn.get("reactions")
        if raw_reactions is not None:
            if type(raw_reactions) is not list:
                raise RecordError(where + ".reactions", f"expected a list, got {_type_name(raw_reactions)}")
            if len(raw_reactions) > limits.max_reactions:
                raise RecordError(where + ".reactions", f"{len(raw_reactions)} events; the limit is {limits.max_reactions}")
            for j, r in enumerate(raw_reactions):
                reactions.append(_nested_reaction(r, f"{where}.reactions[{j}]", mid, uid, t, len(reactions), idmax))
        previous_id = mid

    started = rec.get("started_at")
    started_at = messages[0][7] if started is None else parse_time(started, "started_at")
    if started_at > messages[0][7]:
        raise RecordError("started_at", "is later than the first turn's time")
    extra = _extra(rec, _CONV_KEYS)
    conversation = (cid, uid, started_at, category, policy, len(messages), extra)
    return Unit(CONVERSATION, cid, [conversation], messages, reactions)


def _nested_reaction(r: Any, where: str, mid: str, uid: str, message_time: int, seq: int, idmax: int) -> tuple:
    if type(r) is not dict:
        raise RecordError(where, f"expected an object, got {_type_name(r)}")
    name = _string(r.get("name"), where + ".name", idmax)
    ruid = r.get("user_id")
    ruid = uid if ruid is None else _string(ruid, where + ".user_id", idmax)
    action = r.get("action")
    if action is None or action == "":
        action = "add"
    if type(action) is not str or action not in ACTIONS:
        raise RecordError(where + ".action", f"expected 'add' or 'remove', got {action!r:.40}")
    t = parse_time(r.get("time"), where + ".time")
    if t < message_time:
        raise RecordError(where + ".time", "reaction is earlier than the message it reacts to")
    if not _NESTED_REACTION_KEYS.issuperset(r):
        unknown = sorted(set(r) - _NESTED_REACTION_KEYS)
        raise RecordError(f"{where}.{unknown[0]}", "unknown field in a reaction (allowed: name, user_id, time, action)")
    return (mid, ruid, name, action, t, seq)


def _bad_role(role: Any, field: str) -> RecordError:
    if role is None:
        return _missing(field)
    return RecordError(field, f"{role!r:.40} is not a role; use one of: assistant, system, user")


def normalize_message(record: Any, limits: Limits = Limits()) -> Unit:
    """A flat message row."""
    rec = _require_object(record)
    idmax = limits.max_id_chars
    mid = _string(rec.get("message_id"), "message_id", idmax)
    cid = _string(rec.get("conversation_id"), "conversation_id", idmax)
    parent = _string(rec.get("parent_id"), "parent_id", idmax, required=False)
    turn_index = rec.get("turn_index")
    if turn_index is not None:
        if type(turn_index) is str and _DIGITS.fullmatch(turn_index.strip()):
            turn_index = int(turn_index)
        if type(turn_index) is not int or not 0 <= turn_index < 2**31:
            raise RecordError("turn_index", f"expected an integer from 0 to 2147483647, got {turn_index!r:.40}")
    uid = _string(rec.get("user_id"), "user_id", idmax)
    role = rec.get("role")
    if type(role) is not str or role not in ROLES:
        raise _bad_role(role, "role")
    text = _text(rec.get("text"), "text", limits)
    t = parse_time(rec.get("time"), "time")
    policy = _string(rec.get("policy"), "policy", idmax, required=False)
    category = _string(rec.get("category"), "category", idmax, required=False)
    row = (mid, cid, parent, turn_index, uid, role, text, t, policy, category, _extra(rec, _MESSAGE_KEYS))
    return Unit(MESSAGE, mid, messages=[row])


def normalize_reaction(record: Any, limits: Limits = Limits()) -> Unit:
    """A flat reaction event: somebody added or removed a named reaction on a message."""
    rec = _require_object(record)
    idmax = limits.max_id_chars
    mid = _string(rec.get("message_id"), "message_id", idmax)
    uid = _string(rec.get("user_id"), "user_id", idmax)
    name = _string(rec.get("reaction"), "reaction", idmax)
    action = rec.get("action")
    action = "add" if action is None or action == "" else action
    if type(action) is not str or action not in ACTIONS:
        raise RecordError("action", f"expected 'add' or 'remove', got {action!r:.40}")
    t = parse_time(rec.get("time"), "time")
    if not _REACTION_KEYS.issuperset(rec):
        unknown = sorted(k for k in rec if k not in _REACTION_KEYS)
        raise RecordError(unknown[0], "unknown field in a reaction event (allowed: message_id, user_id, reaction, action, time)")
    row = (mid, uid, name, action, t, 0)
    key = orjson.dumps([mid, uid, name, action, t]).decode()  # the whole event, unambiguous
    return Unit(REACTION, key, reactions=[row])


def normalize_user(record: Any, limits: Limits = Limits()) -> Unit:
    """A users-table row: an operator's own retention flag, which overrides the derived one."""
    rec = _require_object(record)
    uid = _string(rec.get("user_id"), "user_id", limits.max_id_chars)
    retained = _bool(rec.get("retained"), "retained")
    if not _USER_KEYS.issuperset(rec):
        unknown = sorted(k for k in rec if k not in _USER_KEYS)
        raise RecordError(unknown[0], "unknown field in a users row (allowed: user_id, retained)")
    row = (uid, retained)
    return Unit(USER, uid, users=[row])


NORMALIZERS = {
    CONVERSATION: normalize_conversation,
    MESSAGE: normalize_message,
    REACTION: normalize_reaction,
    USER: normalize_user,
}


def detect_kind(record: Any) -> str | None:
    """Guess a record's layout from its fields; None when it matches none."""
    if type(record) is not dict:
        return None
    if "turns" in record:
        return CONVERSATION
    if "role" in record and "text" in record:
        return MESSAGE
    if "reaction" in record:
        return REACTION
    if "retained" in record:
        return USER
    return None
