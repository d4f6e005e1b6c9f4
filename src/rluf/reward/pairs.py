"""Labelled preference pairs: Anthropic HH-RLHF transcripts, their pointwise view, and pairwise accuracy.

    python -m rluf.reward.pairs ../shared/data/real/hh_harmless/test.jsonl.gz --split 0.8 --cache-dir runs/emb

An HH-RLHF record is {"chosen": transcript, "rejected": transcript}, each transcript a run of
"\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns. The two share their context and differ from one
assistant turn on; everything from that turn to the end is the response (a few HH replies contain
text of their own shaped like further turns: it stays part of the response). The context is
rendered with `render_context` (roles user and assistant), as every reward model sees it.

`pairs_to_pointwise` turns pairs into labelled rows, chosen -> 1 and rejected -> 0: the way RLUF
made its helpfulness and safety reward models pointwise (METHOD.md 1.3). Run as a module, this file
trains a frozen-encoder Bradley-Terry model on a split of the records and prints its held-out
pairwise accuracy with a bootstrap 95 % interval.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .text import render_context

TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
ROLES = {"Human": "user", "Assistant": "assistant"}


class PairsError(ValueError):
    pass


def _turns(text: str, where: str) -> list[tuple[str, str, int]]:
    """(role, text, start offset of the text) per turn of an HH transcript."""
    marks = list(TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise PairsError(f"{where}: a transcript must start with 'Human:' turns "
                         f"(\\n\\nHuman: ... \\n\\nAssistant: ...), got {text[:60]!r}")  # fmt: skip
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(m.group(1), text[m.end() : e].strip(), m.end()) for m, e in zip(marks, ends)]


def split_hh_record(chosen: str, rejected: str, context_turns: int = 4,
                    where: str = "record") -> tuple[str, str, str]:  # fmt: skip
    """(rendered context, chosen response, rejected response) of one HH record."""
    tc, tr = _turns(chosen, f"{where}: chosen"), _turns(rejected, f"{where}: rejected")
    j = next((i for i, (a, b) in enumerate(zip(tc, tr)) if a[:2] != b[:2]), min(len(tc), len(tr)))
    if j == min(len(tc), len(tr)):  # no differing turn: a tie, or one transcript runs on past the other
        j -= 1
    if tc[j][0] != "Assistant" or tr[j][0] != "Assistant":
        raise PairsError(f"{where}: chosen and rejected must differ from an Assistant turn on, "
                         f"but turn {j + 1} is {tc[j][0]!r} / {tr[j][0]!r}")  # fmt: skip
    if j == 0:
        raise PairsError(f"{where}: no Human turn before the compared Assistant replies")
    context = render_context([{"role": ROLES[r], "text": t} for r, t, _ in tc[:j]], context_turns)
    return context, chosen[tc[j][2] :].strip(), rejected[tr[j][2] :].strip()


def load_hh_pairs(path: str | Path, context_turns: int = 4) -> tuple[list[str], list[str], list[str]]:
    """(contexts, chosen, rejected) from an HH-RLHF .jsonl or .jsonl.gz file, one entry per record.

    Raises PairsError naming the file and line of a malformed record."""
    p = Path(path)
    if not p.is_file():
        raise PairsError(f"{p}: no such file (expected HH-RLHF jsonl or jsonl.gz)")
    contexts, chosen, rejected = [], [], []
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PairsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise PairsError(f"{where}: a record must be a JSON object with 'chosen' and 'rejected'")
            for field in ("chosen", "rejected"):
                if not isinstance(rec.get(field), str):
                    raise PairsError(f"{where}: field {field!r} must be a transcript string, "
                                     f"got {rec.get(field)!r:.60}")  # fmt: skip
            c, a, b = split_hh_record(rec["chosen"], rec["rejected"], context_turns, where)
            contexts.append(c)
            chosen.append(a)
            rejected.append(b)
    if not contexts:
        raise PairsError(f"{p}: no records")
    return contexts, chosen, rejected


def pairs_to_pointwise(contexts: Sequence[str], chosen: Sequence[str],
                       rejected: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:  # fmt: skip
    """(contexts, responses, labels): rows 2i (chosen, label 1) and 2i + 1 (rejected, label 0) come from
    pair i, so split by i // 2 to keep a pair on one side of a split."""
    if not len(contexts) == len(chosen) == len(rejected):
        raise PairsError(f"{len(contexts)} contexts, {len(chosen)} chosen and {len(rejected)} rejected; "
                         f"they must pair up")  # fmt: skip
    ctx = [c for c in contexts for _ in (0, 1)]
    responses = [r for pair in zip(chosen, rejected) for r in pair]
    return ctx, responses, np.tile([1.0, 0.0], len(chosen))


def pairwise_accuracy(model, contexts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
                      n_boot: int = 2000, seed: int = 0) -> dict:  # fmt: skip
    """Share of pairs the model scores chosen above rejected (ties count one half), with n and a
    percentile-bootstrap 95 % interval over pairs."""
    d = model.raw_logits(contexts, chosen) - model.raw_logits(contexts, rejected)
    hit = (d > 0) + 0.5 * (d == 0)
    rng = np.random.default_rng(seed)
    boot = hit[rng.integers(0, len(hit), size=(n_boot, len(hit)))].mean(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"accuracy": float(hit.mean()), "ci95": [float(lo), float(hi)], "n": int(len(hit)),
            "ties": int((d == 0).sum())}  # fmt: skip


def train_pairwise(path: str | Path, out_dir: str | Path | None = None, signal: str = "harmless", split: float = 0.8,
                   seed: int = 0, context_turns: int = 4, **settings) -> tuple:
    """Train a Bradley-Terry encoder reward model on the HH-RLHF pairs in `path`, split by record (`split` of
    them to train, a tenth of those to validate, the rest held out); report held-out pairwise accuracy with
    its bootstrap CI; save the model and metrics.json to `out_dir` when given. Returns (model, metrics)."""
    from .encoder import EncoderRewardModel

    if not 0.0 < split < 1.0:
        raise ValueError(f"split must lie strictly between 0 and 1, got {split}")
    ctx, ch, rj = load_hh_pairs(path, context_turns)
    perm = np.random.default_rng(seed).permutation(len(ctx))  # split by record
    n_train = int(round(split * len(ctx)))
    n_fit = int(round(0.9 * n_train))
    if n_fit < 1 or n_train == n_fit or n_train == len(ctx):
        raise ValueError(f"{path}: {len(ctx)} pairs are too few to split into train, validation and test")
    side = np.empty(len(ctx), dtype=np.int64)
    side[perm[:n_fit]], side[perm[n_fit:n_train]], side[perm[n_train:]] = 0, 1, 2
    pick = lambda s: tuple([x[i] for i in np.flatnonzero(side == s)] for x in (ctx, ch, rj))  # noqa: E731
    train, val, test = pick(0), pick(1), pick(2)
    model = EncoderRewardModel(signal, context_turns, seed=seed, **settings)
    model.fit_pairwise(*train, val=val)
    metrics = {"source": str(path), "records": len(ctx), "train": len(train[0]), "val": len(val[0]),
               "test_pairs": len(test[0]), "settings": {k: v for k, v in model.config().items() if k != "history"},
               "best_epoch": model.history.get("best_epoch"), "test": pairwise_accuracy(model, *test),
               "train_accuracy": pairwise_accuracy(model, *train)}  # fmt: skip
    if out_dir is not None:
        model.metrics = {"pairwise": metrics["test"]}
        model.save(out_dir)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str) + "\n")
    return model, metrics


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m rluf.reward.pairs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("path", type=Path, help="HH-RLHF jsonl(.gz)")
    ap.add_argument("--split", type=float, default=0.8, help="share of records to train on (10 %% of them validate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context-turns", type=int, default=4)
    ap.add_argument("--mode", choices=("frozen", "full"), default="frozen")
    ap.add_argument("--features", default="pair+response", help="the head's input views, e.g. pair or pair+response")
    ap.add_argument("--head-hidden", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--cache-dir", default=None, help="embedding cache (frozen mode)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="save the model and metrics.json here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    _, out = train_pairwise(args.path, args.out, "harmless", args.split, args.seed, args.context_turns, mode=args.mode,
                            features=args.features, head_hidden=args.head_hidden, epochs=args.epochs,
                            cache_dir=args.cache_dir)  # fmt: skip
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
