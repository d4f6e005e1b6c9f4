"""The Bayes-optimal AUROC for a reaction on a held-out slice of a simulated run (the ceiling a
reward model is reported against).

    rluf simulate --users 2000 --out runs/sim && rluf ingest runs/sim/logs --store runs/sim/store
    python -m rluf.sim.ceiling runs/sim --from-day 35

The slice is every assistant message of the conversations that start on or after `--from-day`
(days counted from the first logged day); labels are the reactions that stand in the store; the
scores are the oracle's population probabilities from (context, response) alone.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

from ..data.store import Store
from .oracle import Oracle, bayes_optimal_auroc
from .world import World

REACTIONS = ("love", "thumbs_up", "thumbs_down")


def ceiling(run: Path, from_day: int = 35, reaction: str = "love", seed: int = 0, store: Path | None = None) -> dict:
    """AUROC of the oracle's P[reaction] on the held-out slice of `run` (a simulate --out directory
    whose logs were ingested into `store`, by default run/store)."""
    store = store or run / "store"
    if reaction not in REACTIONS:
        raise ValueError(f"reaction must be one of {REACTIONS}, got {reaction!r}")
    logs = sorted((run / "logs").glob("*.jsonl"))
    if not logs or not (store / "manifest.json").exists():
        raise FileNotFoundError(f"{run}: expected JSONL logs in {run / 'logs'} ingested into {store}")
    con = Store(store).connect()
    got = {r[0] for r in con.execute("SELECT message_id FROM reactions WHERE reaction = ?", [reaction]).fetchall()}
    first_day = con.execute("SELECT min(time)::DATE::VARCHAR FROM messages").fetchone()[0]
    cut = (datetime.fromisoformat(first_day) + timedelta(days=from_day)).isoformat()
    contexts, responses, categories, labels = [], [], [], []
    for path in logs:
        with open(path, "rb") as f:
            for line in f:
                conv = orjson.loads(line)
                if conv["started_at"] < cut:
                    continue
                context = []
                for turn in conv["turns"]:
                    if turn["role"] == "assistant":
                        contexts.append(list(context))
                        responses.append(turn["text"])
                        categories.append(conv["category"])
                        labels.append(turn["message_id"] in got)
                    context.append({"role": turn["role"], "text": turn["text"]})
    if not labels:
        raise ValueError(f"no conversation starts on or after day {from_day} ({cut})")
    p = Oracle(World(seed=seed)).probabilities(contexts, responses, categories)[:, REACTIONS.index(reaction)]
    y = np.array(labels)
    return {"reaction": reaction, "from_day": from_day, "messages": int(len(y)), "positives": int(y.sum()),
            "bayes_optimal_auroc": bayes_optimal_auroc(p, y), "expected_auroc": bayes_optimal_auroc(p)}  # fmt: skip


def main() -> None:  # pragma: no cover
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--from-day", type=int, default=35)
    ap.add_argument("--reaction", default="love", choices=REACTIONS)
    ap.add_argument("--seed", type=int, default=0, help="the seed the run was simulated with")
    ap.add_argument("--store", type=Path, default=None, help="where the logs were ingested (default: RUN/store)")
    a = ap.parse_args()
    try:
        print(json.dumps(ceiling(a.run, a.from_day, a.reaction, a.seed, a.store), indent=1))
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    main()
