"""The main job behind `make demo`: `rluf demo --out runs/demo`.

Today the loop runs as far as it is built: example production logs (both layouts, with a few broken
records so the rejects path is visible) are ingested into a store, re-ingested to show idempotency,
and summarised; the public feedback samples in ../shared/data/real are imported when present.
Everything lands under OUT, with `summary.json` holding the headline numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from .data import examples
from .data.ingest import ingest
from .data.stats import render_stats, store_stats
from .data.store import Store

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
BROKEN_LINES = [
    b'{"conversation_id": "broken-1", "user_id": "u1", "turns": [{"role": "assistant", "text": "hi"}]}',  # no time
    b'{"conversation_id": "broken-2", "user_id": "u1", "turns": [{"role": "bot", "text": "hi", "time": "2026-01-02T00:00:00Z"}]}',
    b'{"conversation_id": "broken-3", "user_id": "u1", "turns": [',  # truncated line
]


def run_demo(out: Path, console: Console | None = None, conversations: int = 5000, real_data: Path = REAL_DATA) -> dict:
    console = console or Console()
    out = Path(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    store_dir = out / "store"
    if store_dir.exists():
        import shutil

        shutil.rmtree(store_dir)

    console.rule("[bold]1. logs in")
    n_messages = examples.write_nested_jsonl(logs / "conversations.jsonl", conversations, seed=0)
    with open(logs / "conversations.jsonl", "ab") as f:
        f.write(b"\n".join(BROKEN_LINES) + b"\n")
    flat = examples.write_flat(logs / "flat", conversations // 5, seed=1)
    console.print(f"wrote {conversations} nested conversations ({n_messages} messages) + 3 broken lines, "
                  f"and flat tables {', '.join(p.name for p in flat.values())}")  # fmt: skip
    first = ingest([logs], store_dir, max_reject_rate=0.01)
    _print(console, "first ingest", first.as_dict())
    again = ingest([logs], store_dir, max_reject_rate=0.01)
    _print(console, "same files again (idempotent)", again.as_dict())

    stats = store_stats(Store(store_dir))
    render_stats(stats, console)

    summary = {"ingest": first.as_dict(), "reingest": again.as_dict(), "stats": stats, "public_samples": {}}
    if real_data.is_dir():
        console.rule("[bold]public feedback samples")
        for name, paths, fmt in (
            ("convai2", sorted((real_data / "convai2").glob("*.json")), "convai2"),
            ("oasst", sorted((real_data / "oasst").glob("*.jsonl")), "oasst"),
            ("oasst_trees", sorted((real_data / "oasst_trees").glob("*.jsonl")), "oasst-tree"),
        ):
            if not paths:
                continue
            s = ingest(paths, out / f"store_{name}", fmt=fmt)
            _print(console, name, s.as_dict())
            summary["public_samples"][name] = s.as_dict()
    else:
        console.print(f"[dim]public samples not found at {real_data}; skipped[/]")

    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    console.print(f"[bold green]done[/]: {out / 'summary.json'}")
    return summary


def _print(console: Console, label: str, d: dict) -> None:
    console.print(
        f"[bold]{label}[/]: read {d['read']} = accepted {d['accepted']} + rejected {d['rejected']} + duplicate "
        f"{d['duplicate']} (reconciles: {d['reconciles']}); stored {d['messages']} messages, "
        f"{d['reaction_events']} reaction events; {d['seconds']:.1f}s"
    )
    for reason, n in list(d["reasons"].items())[:5]:
        console.print(f"    {n:>6}  {reason}")
