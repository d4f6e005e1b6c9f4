"""Importers for public feedback formats: each turns one source record into contract records.

- ConvAI2 "wild" evaluation JSON (a JSON array of dialogs): per bot reply `evaluation_score` 1/0
  becomes a `thumbs_up` / `thumbs_down` reaction by the human participant.
- OpenAssistant message JSONL (one message per line, trees via `parent_id`): `emojis` `+1`, `-1`,
  `red_flag` become reactions; `_skip_*` entries are task skips, not reactions, and are kept verbatim
  in the message's `extra` with every other field.
- OpenAssistant tree JSONL (one tree per line, `prompt.replies[...]`): one conversation per tree,
  turns in depth-first order with their `parent_id`.

Neither OpenAssistant trees nor ConvAI2 turns carry per-message times: the importers give ordered
placeholder times (documented in docs/data-format.md), so time-based analyses are meaningless there.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

from .contract import Limits, RecordError, Unit, normalize_conversation, normalize_message, parse_time

CONVAI2 = "convai2"
OASST = "oasst"
OASST_TREE = "oasst-tree"
FORMATS = (CONVAI2, OASST, OASST_TREE)

_OASST_EPOCH = datetime(2023, 1, 1, tzinfo=timezone.utc)
_OASST_SKIP_PREFIX = "_skip"


def _obj(value: Any, field: str) -> dict:
    if type(value) is not dict:
        raise RecordError(field, "expected an object")
    return value


def convai2_dialog(dialog: Any, source_name: str, limits: Limits = Limits()) -> Unit:
    """One ConvAI2 dialog -> one nested conversation (bot id as `policy`)."""
    d = _obj(dialog, "<record>")
    turns_in = d.get("dialog")
    if type(turns_in) is not list:
        raise RecordError("dialog", "expected the list of dialog turns")
    p1 = _obj(d.get("participant1_id"), "participant1_id")
    p2 = _obj(d.get("participant2_id"), "participant2_id")
    participants = {"participant1": p1, "participant2": p2}
    human = p1 if p1.get("class") != "Bot" else p2
    bot = p2 if human is p1 else p1
    user_id = human.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise RecordError(f"{'participant1' if human is p1 else 'participant2'}_id.user_id", "no human participant id")
    start = parse_time(d.get("start_time"), "start_time")
    end = parse_time(d.get("end_time"), "end_time") if d.get("end_time") is not None else start
    if end < start:
        raise RecordError("end_time", "is earlier than start_time")
    n = max(len(turns_in), 1)
    step = (end - start) // max(n - 1, 1)
    turns = []
    for i, t in enumerate(turns_in):
        where = f"dialog[{i}]"
        t = _obj(t, where)
        sender = t.get("sender")
        if type(sender) is not str or sender not in participants:
            raise RecordError(where + ".sender", f"{sender!r:.40} is neither participant1 nor participant2")
        sender_class = t.get("sender_class")
        if type(sender_class) is not str or sender_class not in ("Human", "Bot"):
            raise RecordError(where + ".sender_class", f"expected Human or Bot, got {sender_class!r:.40}")
        time_us = start + step * i
        iso = _iso(time_us)
        turn = {
            "role": "user" if sender_class == "Human" else "assistant",
            "text": t.get("text"),
            "time": iso,
            "convai2_turn_id": t.get("id"),
            "convai2_sender": sender,
        }
        score = t.get("evaluation_score")
        if score is not None:
            if type(score) is not int or score not in (0, 1):
                raise RecordError(where + ".evaluation_score", f"expected 1, 0 or null, got {score!r:.40}")
            turn["reactions"] = [{"name": "thumbs_up" if score == 1 else "thumbs_down", "time": iso}]
        turns.append(turn)
    ident = hashlib.blake2b(
        repr((d.get("start_time"), p1.get("user_id"), p2.get("user_id"), [t.get("text") for t in turns_in])).encode(),
        digest_size=8,
    ).hexdigest()
    record = {
        "conversation_id": f"convai2-{ident}",
        "user_id": user_id,
        "started_at": _iso(start),
        "policy": bot.get("user_id"),
        "turns": turns,
        "convai2_source": source_name,
        "eval_score": d.get("eval_score"),
        "profile_match": d.get("profile_match"),
        "bot_profile": d.get("bot_profile"),
        "user_profile": d.get("user_profile"),
    }
    return normalize_conversation(record, limits)


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)).isoformat()


def _emoji_counts(emojis: Any, field: str) -> dict[str, int]:
    """OASST emojis come as {"name": [...], "count": [...]} (HF export) or {"+1": 3} (trees)."""
    if emojis is None:
        return {}
    if type(emojis) is not dict:
        raise RecordError(field, "expected an object")
    if "name" in emojis and "count" in emojis:
        names, counts = emojis["name"], emojis["count"]
        if type(names) is not list or type(counts) is not list or len(names) != len(counts):
            raise RecordError(field, "name and count must be lists of equal length")
        pairs = zip(names, counts)
    else:
        pairs = emojis.items()
    out = {}
    for name, count in pairs:
        if type(name) is not str or type(count) is not int or count < 0:
            raise RecordError(field, f"bad emoji entry {name!r:.30}: {count!r:.20}")
        out[name] = out.get(name, 0) + count
    return out


def _reaction_rows(message_id: str, time_us: int, counts: dict[str, int]) -> list[tuple]:
    rows = []
    for name in sorted(counts):
        if name.startswith(_OASST_SKIP_PREFIX):
            continue
        for k in range(counts[name]):
            rows.append((message_id, f"oasst-anon:{message_id}:{name}:{k}", name, "add", time_us, len(rows)))
    return rows


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def oasst_message(record: Any, limits: Limits = Limits()) -> Unit:
    """One OpenAssistant message (HF JSONL export) -> one flat message plus its reactions."""
    rec = _obj(record, "<record>")
    role = rec.get("role")
    if type(role) is not str or role not in _OASST_ROLES:
        raise RecordError("role", f"expected 'prompter' or 'assistant', got {role!r:.40}")
    counts = _emoji_counts(rec.get("emojis"), "emojis")
    message = {k: v for k, v in rec.items() if k not in ("message_tree_id", "created_date", "role")}
    message.update(
        conversation_id=rec.get("message_tree_id"),
        time=rec.get("created_date"),
        role=_OASST_ROLES[role],
    )
    unit = normalize_message(message, limits)
    row = unit.messages[0]
    unit.reactions = _reaction_rows(row[0], row[7], counts)
    return unit


def oasst_tree(record: Any, limits: Limits = Limits()) -> Unit:
    """One OpenAssistant tree -> one conversation whose turns keep their `parent_id`."""
    rec = _obj(record, "<record>")
    tree_id = rec.get("message_tree_id")
    if not isinstance(tree_id, str) or not tree_id:
        raise RecordError("message_tree_id", "required field is missing or not a string")
    root = _obj(rec.get("prompt"), "prompt")
    turns: list[dict] = []
    reaction_counts: list[dict[str, int]] = []
    stack = [(root, None, "prompt")]
    while stack:
        msg, parent_id, where = stack.pop()
        role = msg.get("role")
        if type(role) is not str or role not in _OASST_ROLES:
            raise RecordError(where + ".role", f"expected 'prompter' or 'assistant', got {role!r:.40}")
        counts = _emoji_counts(msg.get("emojis"), where + ".emojis")
        time = _iso(int((_OASST_EPOCH - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * 1e6) + len(turns) * 1_000_000)
        extra = {k: v for k, v in msg.items() if k not in ("message_id", "parent_id", "role", "text", "replies")}
        turn = {"message_id": msg.get("message_id"), "parent_id": parent_id, "role": _OASST_ROLES[role],
                "text": msg.get("text"), "time": time, **extra}  # fmt: skip
        turns.append(turn)
        reaction_counts.append(counts)
        replies = msg.get("replies") or []
        if type(replies) is not list:
            raise RecordError(where + ".replies", "expected a list")
        for j in range(len(replies) - 1, -1, -1):
            stack.append((_obj(replies[j], f"{where}.replies[{j}]"), msg.get("message_id"), f"{where}.replies[{j}]"))
    record_out = {
        "conversation_id": tree_id,
        "user_id": f"oasst-tree:{tree_id}",
        "turns": turns,
        "tree_state": rec.get("tree_state"),
    }
    unit = normalize_conversation(record_out, limits)
    unit.reactions = [r for msg, counts in zip(unit.messages, reaction_counts) for r in _reaction_rows(msg[0], msg[7], counts)]
    unit.reactions = [r[:5] + (i,) for i, r in enumerate(unit.reactions)]
    return unit


def detect_format(first_record: Any) -> str | None:
    """Recognise a public format from its first record, or None."""
    if type(first_record) is not dict:
        return None
    if "dialog" in first_record and "participant1_id" in first_record:
        return CONVAI2
    if "message_tree_id" in first_record and "prompt" in first_record:
        return OASST_TREE
    if "message_tree_id" in first_record and first_record.get("role") in _OASST_ROLES:
        return OASST
    return None


IMPORTERS = {OASST: oasst_message, OASST_TREE: oasst_tree}
