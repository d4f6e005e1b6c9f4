"""The chat format of the embedded tiny policy: its special tokens and its jinja chat template.

    python -c "from rluf.policy.chat import render; print(render([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True))"

A conversation renders as "<|bos|>" followed, for each turn, by "<|ROLE|>" + text + "<|end|>";
the generation prompt appends "<|assistant|>", so a reply is the text the model writes up to its
"<|end|>" (the eos token). `CHAT_TEMPLATE` is the same rule in jinja: the tokenizer directory
carries it, and `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`
(what TRL's trainers call) returns exactly `render(messages, add_generation_prompt=True)`.

These token strings belong to the tiny model alone: code that serves or trains a policy goes through
`apply_chat_template` and `tokenizer.eos_token_id` / `pad_token_id`, so any Hugging Face causal LM
with its own chat template can take the tiny model's place.
"""

from __future__ import annotations

from typing import Any

from ..reward.text import as_turns

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
SPECIAL_TOKENS = (PAD, BOS, END, *ROLE_TOKENS.values())  # in id order: <|pad|> is id 0

CHAT_TEMPLATE = (
    "{{ '" + BOS + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('a chat role must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ROLE_TOKENS["assistant"] + "' }}{% endif %}"
)


def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template in plain Python: messages [{"role", "content"}] -> the model's input text.

    Raises ValueError for a role other than system/user/assistant, TypeError for non-string content."""
    parts = [BOS]
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLE_TOKENS:
            raise ValueError(f"message {i}: a chat role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise TypeError(f"message {i}: 'content' must be a string, got {type(content).__name__}; "
                             "convert {'role', 'text'} turns with chat_messages()")  # fmt: skip
        parts.append(ROLE_TOKENS[role] + content + END)
    if add_generation_prompt:
        parts.append(ROLE_TOKENS["assistant"])
    return "".join(parts)


def chat_messages(prompt: Any) -> list[dict]:
    """Any prompt shape (a string, {"role", "text"} turns as the logs and the simulator write them, or
    {"role", "content"} messages) -> HF-style messages [{"role", "content"}], other keys dropped."""
    return [{"role": t["role"], "content": t["text"]} for t in as_turns(prompt)]
