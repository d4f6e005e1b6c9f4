"""Prompt rows: every logged user turn with its context and the assistant's logged reply (the baseline).

    python -c "from rluf.policy.data import load_prompts; r = load_prompts('runs/demo/store', limit=3); print(r[0].prompt, '->', r[0].baseline)"

One `PromptRow` per logged assistant message: `prompt` is the conversation up to and including the
user turn it answers (its last `max_context_turns` turns, as [{"role", "content"}] messages),
`baseline` the logged reply (the baseline a-bar of CGPO, Xu et al. 2024, eq. 5; the target of SFT).

The reply answers its parent when `parent_id` names a user turn of the same conversation; in a
conversation without any `parent_id`, a reply answers the turn just before it by `turn_index`.
Context follows the same links back (as rluf.reward.data does: in a conversation with parent ids a
null parent is a root), so branching logs (one user turn, several replies, as in OpenAssistant
trees) give each reply the path that led to it. Rows come in (conversation_id,
turn_index, message_id) order; `limit` keeps a seeded sample stratified by category, in that order.

`split_prompts` splits by user (no user on both sides); `prompt_rows_to_records` and
`records_to_prompt_rows` convert to and from JSON-ready dicts (one per JSONL line).
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from ..data.store import Store, StoreError

ROLES = ("system", "user", "assistant")
NEEDED = ("message_id", "conversation_id", "parent_id", "turn_index", "user_id", "role", "text", "category")


class PromptDataError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class PromptRow:
    prompt: list[dict]  # [{"role", "content"}], oldest first, ends with the user turn
    category: str | None  # the conversation's job-to-be-done label as logged (None when not logged)
    baseline: str  # the logged assistant reply to that user turn
    user_id: str
    conversation_id: str
    message_id: str  # of the baseline reply


def load_prompts(store: str | Path | Store, *, max_context_turns: int = 4, limit: int | None = None, seed: int = 0,
                 first_turn_only: bool = False, categories: Iterable[str] | None = None) -> list[PromptRow]:  # fmt: skip
    """Every (context, logged reply) of the store's messages view as PromptRows.

    max_context_turns: turns kept in each prompt, the answered user turn included (>= 1).
    limit: keep at most this many rows, a sample stratified by category (seeded by `seed`).
    first_turn_only: only replies to the first user turn of a conversation.
    categories: only these categories (rows without a category are then dropped).
    """
    if not isinstance(max_context_turns, int) or max_context_turns < 1:
        raise PromptDataError(f"max_context_turns must be an int >= 1, got {max_context_turns!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise PromptDataError(f"limit must be a positive int or None, got {limit!r}")
    wanted = None if categories is None else {categories} if isinstance(categories, str) else set(categories)
    store = store if isinstance(store, Store) else Store(store)
    if not store.exists():
        raise PromptDataError(f"{store.root}: no store here (no manifest.json); create one with `rluf ingest LOGS --store {store.root}`")
    con = store.connect()
    try:
        columns = {r[0] for r in con.execute("DESCRIBE messages").fetchall()}
        missing = [c for c in NEEDED if c not in columns]
        if missing:
            raise PromptDataError(f"{store.root}: the messages view lacks the columns {missing}; re-ingest the logs with this rluf")
        messages = con.execute(f"SELECT {', '.join(NEEDED)} FROM messages "
                               "ORDER BY conversation_id, turn_index, message_id").fetchall()  # fmt: skip
    except StoreError as exc:
        raise PromptDataError(str(exc)) from None
    finally:
        con.close()
    if not messages:
        raise PromptDataError(f"{store.root}: the store holds no messages; ingest logs into it first")
    rows = []
    for conversation in _by_conversation(messages):
        rows.extend(_rows_of(conversation, max_context_turns, first_turn_only))
    if wanted is not None:
        rows = [r for r in rows if r.category in wanted]
    if limit is not None and len(rows) > limit:
        rows = [rows[i] for i in stratified_sample([r.category for r in rows], limit, seed)]
    return rows


def _by_conversation(messages: list[tuple]) -> Iterable[list[tuple]]:
    start = 0
    for i in range(1, len(messages) + 1):
        if i == len(messages) or messages[i][1] != messages[start][1]:
            yield messages[start:i]
            start = i


def _rows_of(conversation: list[tuple], max_turns: int, first_turn_only: bool) -> list[PromptRow]:
    """The rows of one conversation (its messages in turn_index order, NEEDED columns)."""
    index = {m[0]: i for i, m in enumerate(conversation)}
    linked = any(m[2] is not None for m in conversation)

    def parent(i: int) -> int | None:
        pid = conversation[i][2]
        if pid is not None:
            return index.get(pid)
        return None if linked or i == 0 else i - 1  # in a linked conversation a null parent is a root

    rows = []
    for i, (mid, cid, _, _, uid, role, text, category) in enumerate(conversation):
        if role != "assistant" or text is None:
            continue
        u = parent(i)
        if u is None or conversation[u][5] != "user":
            continue
        path, j = [], u
        while j is not None:
            path.append(j)
            j = parent(j)
        if first_turn_only and any(conversation[k][5] == "user" for k in path[1:]):
            continue
        path = path[:max_turns]
        prompt = [{"role": conversation[k][5], "content": conversation[k][6] or ""} for k in reversed(path)
                  if conversation[k][5] in ROLES]  # fmt: skip
        rows.append(PromptRow(prompt, conversation[u][7] or category, text, conversation[u][4] or uid, cid, mid))
    return rows


def stratified_sample(labels: list, n: int, seed: int = 0) -> list[int]:
    """Indices of `n` items drawn without replacement, each label keeping its share (largest remainder),
    in increasing order."""
    groups: dict = defaultdict(list)
    for i, label in enumerate(labels):
        groups[label].append(i)
    keys = sorted(groups, key=lambda k: (k is None, str(k)))
    exact = {k: n * len(groups[k]) / len(labels) for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: exact[k] - quota[k], reverse=True)[: n - sum(quota.values())]:
        quota[k] += 1
    rng = random.Random(seed)
    picked = []
    for k in keys:
        picked.extend(rng.sample(groups[k], quota[k]))
    return sorted(picked)


def split_prompts(rows: list[PromptRow], val_share: float, seed: int = 0) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, val) by user: a seeded `val_share` of the users (at least one, and never all) goes to val."""
    if not 0.0 <= val_share < 1.0:
        raise PromptDataError(f"val_share must be in [0, 1), got {val_share}")
    users = sorted({r.user_id for r in rows})
    if val_share == 0 or len(users) < 2:
        return list(rows), []
    random.Random(seed).shuffle(users)
    n_val = min(len(users) - 1, max(1, round(val_share * len(users))))
    val_users = set(users[:n_val])
    return [r for r in rows if r.user_id not in val_users], [r for r in rows if r.user_id in val_users]


def prompt_rows_to_records(rows: Iterable[PromptRow]) -> list[dict]:
    """PromptRows -> JSON-ready dicts (one JSONL line each)."""
    return [dataclasses.asdict(r) for r in rows]


FIELDS = tuple(f.name for f in dataclasses.fields(PromptRow))


def records_to_prompt_rows(records: Iterable[dict], source: str = "records") -> list[PromptRow]:
    """Dicts as prompt_rows_to_records writes them -> validated PromptRows; an error names the record
    (line `i + 1` of `source`) and the field."""
    rows = []
    for i, rec in enumerate(records):
        where = f"{source} line {i + 1}"
        if not isinstance(rec, dict):
            raise PromptDataError(f"{where}: a prompt record must be a JSON object, got {type(rec).__name__}")
        missing = [f for f in FIELDS if f not in rec]
        if missing:
            raise PromptDataError(f"{where}: missing fields {missing}; a prompt record has {list(FIELDS)}")
        prompt = rec["prompt"]
        if not isinstance(prompt, list) or not prompt:
            raise PromptDataError(f"{where}: 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
        for j, m in enumerate(prompt):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise PromptDataError(f"{where}: prompt message {j} must be {{'role': one of {ROLES}, 'content': str}}, "
                                      f"got {m!r:.80}")  # fmt: skip
        for f in ("baseline", "user_id", "conversation_id", "message_id"):
            if not isinstance(rec[f], str):
                raise PromptDataError(f"{where}: '{f}' must be a string, got {type(rec[f]).__name__}")
        if rec["category"] is not None and not isinstance(rec["category"], str):
            raise PromptDataError(f"{where}: 'category' must be a string or null, got {type(rec['category']).__name__}")
        rows.append(PromptRow([{"role": m["role"], "content": m["content"]} for m in prompt],
                              **{f: rec[f] for f in FIELDS if f != "prompt"}))  # fmt: skip
    return rows
