"""Contract-valid example logs in every layout, fast to generate at any size.

These are format examples (for docs, tests and the ingest benchmark), not a model of user
behaviour: the user simulator lives in `rluf.sim`.

    python -m rluf.data.examples --conversations 1000 --out examples/
"""

from __future__ import annotations

import argparse
import csv
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

WORDS = ("the a to of and in is it you that was for on are with as I his they be at one have this from or "
         "had by hot word but what some we can out other were all there when up use your how said an each she "
         "which do their time if will way about many then them write would like so these her long make thing see "
         "him two has look more day could go come did number sound no most people my over know water than call "
         "first who may down side been now find").split()  # fmt: skip
CATEGORIES = ("casual_chat", "coding", "information_seeking", "advice", "role_play")
POLICIES = ("baseline", "candidate")
REACTIONS = ("love", "thumbs_up", "thumbs_down")
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def conversation(c: int, rng: random.Random, turns: int = 6, users: int = 1000, prefix: str = "c") -> dict:
    """One nested conversation with `turns` turns (user first) and occasional reactions."""
    start = EPOCH + timedelta(days=rng.randrange(42), seconds=rng.randrange(86_400))
    user = f"u{rng.randrange(users):06d}"
    out = []
    for i in range(turns):
        t = start + timedelta(seconds=30 * i)
        turn = {"message_id": f"{prefix}{c}-{i}", "role": "user" if i % 2 == 0 else "assistant",
                "text": " ".join(rng.choices(WORDS, k=rng.randint(4, 40))), "time": _iso(t)}  # fmt: skip
        if turn["role"] == "assistant" and rng.random() < 0.08:
            turn["reactions"] = [{"name": rng.choice(REACTIONS), "time": _iso(t + timedelta(seconds=rng.randint(1, 600)))}]
        out.append(turn)
    return {"conversation_id": f"{prefix}{c}", "user_id": user, "started_at": _iso(start),
            "category": rng.choice(CATEGORIES), "policy": rng.choice(POLICIES), "turns": out}  # fmt: skip


def write_nested_jsonl(path: str | Path, conversations: int, seed: int = 0, turns: int = 6, start: int = 0) -> int:
    """Write `conversations` nested records; return the number of messages written."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        buf = []
        for c in range(start, start + conversations):
            buf.append(orjson.dumps(conversation(c, rng, turns)))
            if len(buf) >= 10_000:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    return conversations * turns


def write_flat(dir: str | Path, conversations: int, seed: int = 0, turns: int = 6, fmt: str = "csv") -> dict[str, Path]:
    """The same kind of logs in the flat layout: messages, reaction events and a users table."""
    rng = random.Random(seed)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    messages, reactions, users = [], [], {}
    for c in range(conversations):
        conv = conversation(c, rng, turns, prefix="f")
        users[conv["user_id"]] = rng.random() < 0.4
        for i, t in enumerate(conv["turns"]):
            messages.append({"message_id": t["message_id"], "conversation_id": conv["conversation_id"],
                             "user_id": conv["user_id"], "role": t["role"], "text": t["text"], "time": t["time"],
                             "policy": conv["policy"], "category": conv["category"]})  # fmt: skip
            for r in t.get("reactions", []):
                reactions.append({"message_id": t["message_id"], "user_id": conv["user_id"], "reaction": r["name"],
                                  "action": "add", "time": r["time"]})  # fmt: skip
                if rng.random() < 0.2:  # the user takes it back a minute later
                    removed = datetime.fromisoformat(r["time"]) + timedelta(minutes=1)
                    reactions.append({**reactions[-1], "action": "remove", "time": _iso(removed)})
    tables = {"messages": messages, "reactions": reactions,
              "users": [{"user_id": u, "retained": v} for u, v in sorted(users.items())]}  # fmt: skip
    paths = {}
    for name, rows in tables.items():
        path = dir / f"{name}.{fmt}"
        if fmt == "csv":
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        elif fmt == "jsonl":
            with open(path, "wb") as f:
                f.writelines(orjson.dumps(r) + b"\n" for r in rows)
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            raise ValueError(f"unknown format {fmt!r}: use csv, jsonl or parquet")
        paths[name] = path
    return paths


def main() -> None:  # pragma: no cover
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    write_nested_jsonl(a.out / "conversations.jsonl", a.conversations, a.seed, a.turns)
    write_flat(a.out / "flat", a.conversations, a.seed, a.turns)


if __name__ == "__main__":  # pragma: no cover
    main()
