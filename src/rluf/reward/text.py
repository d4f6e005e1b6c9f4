"""How a conversation becomes model input: the one rendering shared by training and scoring.

    python -c "from rluf.reward.text import render_context; print(render_context([{'role': 'user', 'text': 'hi'}], 4))"

A reward model scores (context, response): `context` is the last `k` turns before the response,
rendered by `render_context` as "role: text" lines, oldest first. Training examples (reward/data.py),
scoring (`rluf score`), the TRL-compatible reward callables and the server all render through here,
so a model sees at serving time exactly the text shape it was trained on.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


def as_turns(prompt: Any) -> list[dict]:
    """Normalise a prompt to a list of {"role", "text"} dicts.

    Accepts a plain string (one user turn), a list of {"role", "text"} dicts (our data contract) or a
    list of {"role", "content"} dicts (the chat format of transformers and TRL).
    """
    if isinstance(prompt, str):
        return [{"role": "user", "text": prompt}]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    turns = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or "role" not in m:
            raise TypeError(f"prompt message {i} must be a dict with 'role' and 'text' or 'content', got {m!r:.80}")
        text = m.get("text", m.get("content"))
        if isinstance(text, list):  # multimodal content parts: keep the text parts
            text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
        if not isinstance(text, str):
            raise TypeError(f"prompt message {i} has no text ('text' or 'content' must be a string)")
        turns.append({"role": str(m["role"]), "text": text})
    return turns


def render_context(turns: list[dict], k: int) -> str:
    """The last `k` turns as "role: text" lines (oldest first); "" when there are none or k == 0."""
    if k < 0:
        raise ValueError(f"context turns k must be >= 0, got {k}")
    if k == 0:
        return ""
    return "\n".join(f"{t['role']}: {t['text']}" for t in turns[-k:])


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or a list of chat messages (the last one's text)."""
    if isinstance(completion, str):
        return completion
    turns = as_turns(completion)
    return turns[-1]["text"] if turns else ""
