"""The main job behind `make demo`: `rluf demo --out runs/demo`.

Today the loop runs as far as it is built: the embedded default world (rluf.sim) produces
production-like logs, which are ingested into a store (a few broken records show the rejects
path), ingested again to show idempotency, and summarised; the signals are ranked by how they
relate to retention (OUT/signals); P[love] training examples are built from the store and reward
models are trained and compared side by side on the later, held-out turns (OUT/reward/<kind>:
model, metrics.json, reliability.png); the public feedback samples in ../shared/data/real are
imported when present. Everything lands under OUT, with `summary.json` holding the headline
numbers. The simulator's hidden truth stays in OUT/sim/truth and is not read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rich.console import Console

from .data.ingest import ingest
from .data.stats import render_stats, store_stats
from .data.store import Store
from .reward.data import ExampleConfig, build_examples
from .reward.train import RewardTrainConfig, compare, format_comparison, train_reward_model
from .signals.retention import render_signals, signal_retention
from .sim.simulate import simulate

REAL_DATA = Path(os.environ.get("RLUF_REAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data" / "real"))
BROKEN_LINES = [
    b'{"conversation_id": "broken-1", "user_id": "u1", "turns": [{"role": "assistant", "text": "hi"}]}',  # no time
    b'{"conversation_id": "broken-2", "user_id": "u1", "turns": [{"role": "bot", "text": "hi", "time": "2026-01-02T00:00:00Z"}]}',
    b'{"conversation_id": "broken-3", "user_id": "u1", "turns": [',  # truncated line
]


def run_demo(out: Path, console: Console | None = None, users: int = 2000, seed: int = 0,
             real_data: Path = REAL_DATA, reward_kinds: tuple[str, ...] = ("ngram", "length")) -> dict:  # fmt: skip
    console = console or Console()
    out = Path(out)
    for d in ("sim", "store", "extra_logs", "signals", "examples", "reward"):
        shutil.rmtree(out / d, ignore_errors=True)

    console.rule("[bold]1. production traffic (simulated)")
    sim = simulate(out / "sim", users=users, seed=seed)
    console.print(f"{sim['users']} users over {sim['days']} days: {sim['conversations']} conversations, "
                  f"{sim['messages']} messages, {sim['reaction_events']} reaction events in {sim['seconds']:.1f}s")  # fmt: skip
    extra = out / "extra_logs"
    extra.mkdir(parents=True)
    (extra / "late_export.jsonl").write_bytes(b"\n".join(BROKEN_LINES) + b"\n")

    console.rule("[bold]2. logs in")
    first = ingest([sim["logs"], extra], out / "store")
    _print(console, "first ingest", first.as_dict())
    again = ingest([sim["logs"], extra], out / "store")
    _print(console, "same files again (idempotent)", again.as_dict())
    stats = store_stats(Store(out / "store"))
    render_stats(stats, console)

    summary = {"simulate": sim, "ingest": first.as_dict(), "reingest": again.as_dict(), "stats": stats,
               "public_samples": {}}  # fmt: skip

    console.rule("[bold]3. signals: which reaction predicts retention")
    signals = signal_retention(out / "store", out / "signals", seed=seed)
    render_signals(signals, console)
    summary["signals"] = {name: {"correlation": e["correlation"], "logit_coef_per_sd": e["logit_coef_per_sd"],
                                 "n_users": e["n_users"]} for name, e in signals["signals"].items()}  # fmt: skip

    console.rule("[bold]4. reward models: P\\[love]")
    examples = build_examples(out / "store", ExampleConfig(signal="love", seed=seed))
    examples.save(out / "examples")
    console.print(examples.describe())
    models, trained = {}, {}
    for kind in reward_kinds:
        model, metrics = train_reward_model(examples, RewardTrainConfig(kind=kind, seed=seed), out / "reward" / kind)
        models[kind], trained[kind] = model, metrics
        t = metrics["test"]
        console.print(f"{kind}: test AUROC {t['auroc']:.3f} [{t['auroc_ci95'][0]:.3f}, {t['auroc_ci95'][1]:.3f}], "
                      f"ECE {t['ece']:.4f}, length r {t['length_r']:+.3f}; fit {metrics['fit_seconds']:.0f}s")  # fmt: skip
    side_by_side = compare(models, examples.test, seed=seed)
    console.print(format_comparison(side_by_side))
    summary["reward"] = {
        "examples": {k: examples.report["splits"][k] for k in ("train", "val", "test")},
        "adversarial_users_set_aside": len(examples.report["adversarial"].get("flagged", [])),
        "models": {k: {key: m["test"][key] for key in ("auroc", "auroc_ci95", "pr_auc", "log_loss", "brier", "ece",
                                                       "length_r")} | {"dir": str(out / "reward" / k)}
                   for k, m in trained.items()},
        "auroc_differences": side_by_side["auroc_diff"],
    }  # fmt: skip
    if real_data.is_dir():
        console.rule("[bold]public feedback samples")
        for name, pattern, fmt in (("convai2", "convai2/*.json", "convai2"), ("oasst", "oasst/*.jsonl", "oasst"),
                                   ("oasst_trees", "oasst_trees/*.jsonl", "oasst-tree")):  # fmt: skip
            paths = sorted(real_data.glob(pattern))
            if paths:
                shutil.rmtree(out / f"store_{name}", ignore_errors=True)
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
