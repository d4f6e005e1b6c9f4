"""Reward models on real feedback: the encoder against the n-gram and length baselines, held out.

    python -m bench reward_real                      # ConvAI2 thumbs up and OpenAssistant +1
    python -m bench reward_real --sets convai2       # one set
    python -m bench reward_real --encoder-modes frozen,full    # also fine-tune the encoder (minutes on a CPU)

For each public set in ../shared/data/real (see its README): import it into a store, build examples
for its signal (chronological split where the timestamps allow, else grouped; users kept apart),
train each kind (encoder = all-MiniLM-L6-v2 with a trained head, frozen and with --encoder-modes
also fine-tuned, `encoder_full`; ngram; length), and compare
them on the same held-out rows: AUROC with a user-clustered bootstrap 95 % CI each, and the paired
bootstrap CI of each AUROC difference. Goal: the encoder beats both baselines (its AUROC higher;
the difference's CI is reported, and with a few hundred held-out positives it can straddle 0).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import harness

REAL = Path(os.environ.get("RLUF_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
SETS = {  # name: (files under REAL, importer format, signal)
    "convai2": ("convai2/*.json", "convai2", "thumbs_up"),
    "oasst": ("oasst/*.jsonl", "oasst", "+1"),
}


def main(argv: list[str]) -> dict:
    ap = harness.parser("reward_real", __doc__)
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    ap.add_argument("--kinds", default="encoder,ngram,length")
    ap.add_argument("--encoder-modes", default="frozen", help="comma-separated encoder modes: frozen, full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    if not REAL.is_dir():
        raise SystemExit(f"error: {REAL} not found; set RLUF_REAL_DATA to the folder of the public samples")
    return harness.in_workdir(args, "reward-real", run)


def run(args, work: Path) -> dict:
    from rluf.data.ingest import ingest
    from rluf.reward.data import ExampleConfig, build_examples
    from rluf.reward.train import RewardTrainConfig, compare, format_comparison, train_reward_model

    t0 = time.perf_counter()
    kinds = [k for k in args.kinds.split(",") if k]
    modes = [m for m in args.encoder_modes.split(",") if m]
    if not modes or set(modes) - {"frozen", "full"}:
        raise SystemExit(f"error: --encoder-modes takes frozen and/or full, got {args.encoder_modes!r}")
    results, goals = {}, []
    for name in [s for s in args.sets.split(",") if s]:
        pattern, fmt, signal = SETS[name]
        store = work / f"store_{name}"
        shutil.rmtree(store, ignore_errors=True)
        s = ingest(sorted(REAL.glob(pattern)), store, fmt=fmt)
        ex = build_examples(store, ExampleConfig(signal=signal, seed=args.seed))
        models, fit_seconds = {}, {}
        variants = [(k, m) for k in kinds for m in (modes if k == "encoder" else [None])]
        for kind, mode in variants:
            label = kind if mode in (None, "frozen") else f"{kind}_{mode}"
            settings = {"cache_dir": str(work / "embeddings"), "mode": mode} if kind == "encoder" else {}
            model, metrics = train_reward_model(ex, RewardTrainConfig(kind=kind, seed=args.seed, settings=settings),
                                                work / "models" / f"{name}-{label}")  # fmt: skip
            models[label], fit_seconds[label] = model, metrics["seconds"]
        cmp = compare(models, ex.test, seed=args.seed)
        print(f"\n{name} ({signal}; {ex.report['split']['scheme'] if isinstance(ex.report.get('split'), dict) else ''}):",
              file=sys.stderr if args.json else sys.stdout)  # fmt: skip
        print(format_comparison(cmp), file=sys.stderr if args.json else sys.stdout)
        results[name] = {"signal": signal, "ingest": {k: s.as_dict()[k] for k in ("read", "accepted", "rejected")},
                         "splits": {k: ex.report["splits"][k] for k in ("train", "val", "test")},
                         "comparison": {**cmp, "models": {k: {m: v for m, v in d.items() if m != "reliability"}
                                                          for k, d in cmp["models"].items()}},
                         "seconds": fit_seconds}  # fmt: skip
        for enc in [m for m in models if m.startswith("encoder")]:
            for base in [k for k in kinds if k != "encoder"]:
                goals.append(harness.goal(f"{name}: {enc} AUROC - {base} AUROC",
                                          cmp["models"][enc]["auroc"] - cmp["models"][base]["auroc"], ">=", 0.0))
    doc = {"bench": "reward_real", "params": {k: v for k, v in vars(args).items() if k not in ("json", "check")},
           "env": harness.environment(), "results": results, "goals": goals, "check": args.check,
           "seconds": time.perf_counter() - t0}  # fmt: skip
    for g in goals:
        print(f"{'PASS' if g['passed'] else 'FAIL'}  {g['goal']}  (measured {g['value']:+.4f})",
              file=sys.stderr if args.json else sys.stdout)  # fmt: skip
    harness.RESULTS.mkdir(exist_ok=True)
    (harness.RESULTS / "reward_real.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if args.json:
        json.dump(doc, sys.stdout, indent=1, default=str)
        print()
    return doc
