"""Reward-model quality on the simulator, against the Bayes-optimal ceiling of its oracle.

    python -m bench reward                       # 2000 users, n-gram + length + frozen-encoder models
    python -m bench reward --users 600 --kinds ngram,length --repeats 1    # a quick check
    python -m bench reward --kinds ngram,length --length-decorrelation 0.5,0.85,1    # the length trade-off

Simulates the default world, ingests it, builds P[love] examples (chronological split, no user in
both train and test), trains each reward-model kind, and scores the test turns with the simulator's
oracle: the true population P[love | context, response], the best any text model can do. Reported
per kind on the same test rows: AUROC with its user-clustered bootstrap CI, the ratio to the
oracle's AUROC, ECE (15 bins) at the natural base rate, and the Pearson r of score with length.

Robustness (--adversarial 0.05): that share of extra users, all adversarial (spammers, haters,
random clickers in equal parts), is added to the logs; the first kind is retrained with the
adversarial-user filter on and off and scored on the clean test rows. Goals: AUROC >= 0.97 x the
oracle's, ECE <= 0.02, |length r| <= 0.10, AUROC drop with the filter on <= 0.01.
--length-decorrelation S,...: the first kind again with that share of its score's linear rise with
length removed (RewardTrainConfig.length_decorrelation), one row each, with the same goals: the
price in AUROC of a score less tied to length.
This is the one place outside rluf.sim that reads the simulator's truth (the oracle), for scoring.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import orjson

from bench import harness

GOAL_RATIO, GOAL_ECE, GOAL_LENGTH_R, GOAL_DROP = 0.97, 0.02, 0.10, 0.01


def main(argv: list[str]) -> dict:
    ap = harness.parser("reward", __doc__)
    ap.add_argument("--users", type=int, default=2000, help="simulated users")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", default="love")
    ap.add_argument("--kinds", default="ngram,length,encoder", help="comma-separated reward-model kinds")
    ap.add_argument("--length-decorrelation", default="", help="comma-separated shares in [0, 1]: the first kind "
                    "retrained with that share of its length trend removed, a row each")  # fmt: skip
    ap.add_argument("--adversarial", type=float, default=0.05, help="share of adversarial users added (0: skip)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the outputs here (default: a temporary directory)")
    args = ap.parse_args(argv)
    raw = args.length_decorrelation
    try:
        args.length_decorrelation = [float(x) for x in raw.split(",") if x.strip()]
        if not all(0 <= x <= 1 for x in args.length_decorrelation):
            raise ValueError
    except ValueError:
        ap.error(f"--length-decorrelation takes comma-separated numbers in [0, 1], got {raw!r}")
    return harness.in_workdir(args, "reward", run)


def oracle_probabilities(store: Path, message_ids: list[str], signal: str, seed: int) -> np.ndarray:
    """The oracle's population P[signal] for the given assistant messages of a simulated store."""
    from rluf.data.store import Store
    from rluf.sim.oracle import Oracle
    from rluf.sim.world import World

    con = Store(store).connect()
    con.execute("CREATE TEMP TABLE wanted AS SELECT unnest(?::VARCHAR[]) AS message_id", [message_ids])
    rows = con.execute("""
        SELECT w.message_id, c.category, list({'role': m.role, 'text': m.text} ORDER BY m.turn_index) AS before
        FROM wanted w JOIN messages a USING (message_id) JOIN conversations c ON c.conversation_id = a.conversation_id
        JOIN messages m ON m.conversation_id = a.conversation_id AND m.turn_index < a.turn_index
        GROUP BY ALL""").fetchall()
    by_id = {r[0]: r for r in rows}
    responses = dict(con.execute("SELECT message_id, text FROM messages JOIN wanted USING (message_id)").fetchall())
    contexts = [by_id[m][2] for m in message_ids]
    categories = [by_id[m][1] for m in message_ids]
    probs = Oracle(World(seed=seed)).probabilities(contexts, [responses[m] for m in message_ids], categories)
    return probs[:, ("love", "thumbs_up", "thumbs_down").index(signal)]


def add_adversarial_users(logs_dir: Path, n: int, seed: int) -> int:
    """Write `n` adversarial users (spammer, hater, random clicker in equal parts) as extra logs."""
    from rluf.sim.config import WorldConfig
    from rluf.sim.world import World

    cfg = WorldConfig()
    cfg = dataclasses.replace(cfg, users=dataclasses.replace(
        cfg.users, segments={"vulnerable": 0.0, "spammer": 1 / 3, "hater": 1 / 3, "random_clicker": 1 / 3}))
    world = World(cfg, seed=seed + 1000, intercepts=World(seed=seed).intercepts)
    conversations = 0
    with open(logs_dir / "adversarial.jsonl", "wb") as f:
        for log in world.serve(users=n, prefix="adv-"):
            for record in log.records:
                f.write(orjson.dumps(record) + b"\n")
                conversations += 1
    return conversations


def oracle_at_length_r(p: np.ndarray, words: np.ndarray, y: np.ndarray, target: float) -> dict:
    """The oracle with the share of its logit's linear trend in log(1 + words) removed that brings its length r
    down to `target` on these rows (bisection): what the truth itself keeps of its AUROC at that length r."""
    from rluf.reward.metrics import auroc, pearson
    from rluf.reward.train import length_trend

    z = np.log(p / (1 - p))
    slope, center = length_trend(z, words)

    def at(share: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(z - share * slope * (np.log1p(words) - center))))

    lo, hi = 0.0, 2.0
    if pearson(at(lo), words)["r"] <= target:
        hi = lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pearson(at(mid), words)["r"] > target else (lo, mid)
    q = at(hi)
    return {"share": hi, "length_r": pearson(q, words)["r"], "auroc": auroc(y, q)}


def _row(metrics: dict, ceiling: float) -> dict:
    m = metrics["test"]
    return {"auroc": m["auroc"], "auroc_ci95": m["auroc_ci95"], "ratio_to_oracle": m["auroc"] / ceiling, "ece": m["ece"],
            "length_r": m["length_r"], "log_loss": m["log_loss"], "brier": m["brier"], "pr_auc": m["pr_auc"],
            "seconds": metrics.get("seconds")}  # fmt: skip


def run(args, work: Path) -> dict:
    from rluf.data.ingest import ingest
    from rluf.reward.data import ExampleConfig, build_examples
    from rluf.reward.metrics import auroc, pearson
    from rluf.reward.train import RewardTrainConfig, evaluate_on, train_reward_model
    from rluf.sim.simulate import simulate

    t0 = time.perf_counter()
    kinds = [k for k in args.kinds.split(",") if k]
    sim = simulate(work / "sim", users=args.users, seed=args.seed, overwrite=True)
    shutil.rmtree(work / "store", ignore_errors=True)
    ingest([work / "sim" / "logs"], work / "store")
    examples = build_examples(work / "store", ExampleConfig(signal=args.signal, seed=args.seed))
    test = examples.test
    y = np.asarray(test.column("label").to_numpy(), dtype=float)
    p_oracle = oracle_probabilities(work / "store", test.column("message_id").to_pylist(), args.signal, args.seed)
    ceiling = auroc(y, p_oracle)
    words = np.asarray(test.column("response_words").to_numpy(), dtype=float)
    oracle_length_r = pearson(p_oracle, words)["r"]  # how much the truth itself rises with length
    oracle_flat = oracle_at_length_r(p_oracle, words, y, GOAL_LENGTH_R)  # the truth made as flat as the goal
    oracle_flat["ratio_to_oracle"] = oracle_flat["auroc"] / ceiling
    rows, goals = {}, []
    for kind in kinds:
        model, metrics = train_reward_model(examples, RewardTrainConfig(kind=kind, seed=args.seed), work / "models" / kind)
        rows[kind] = _row(metrics, ceiling)
    main_kind = "encoder" if "encoder" in rows else kinds[0]
    checked = [main_kind]
    for share in args.length_decorrelation:
        name = f"{kinds[0]}-len{share:g}"
        cfg = RewardTrainConfig(kind=kinds[0], seed=args.seed, length_decorrelation=share)
        model, metrics = train_reward_model(examples, cfg, work / "models" / f"{kinds[0]}-length-{share:g}")
        rows[name] = _row(metrics, ceiling)
        checked.append(name)
    for name in checked:
        r = rows[name]
        goals += [harness.goal(f"{name} AUROC / oracle AUROC", r["ratio_to_oracle"], ">=", GOAL_RATIO),
                  harness.goal(f"{name} ECE", r["ece"], "<", GOAL_ECE),
                  harness.goal(f"{name} |length r|", abs(r["length_r"]), "<", GOAL_LENGTH_R)]  # fmt: skip
    robustness = None
    if args.adversarial > 0:
        n_adv = max(1, round(args.users * args.adversarial))
        add_adversarial_users(work / "sim" / "logs", n_adv, args.seed)
        shutil.rmtree(work / "store_adv", ignore_errors=True)
        ingest([work / "sim" / "logs"], work / "store_adv")
        kind = kinds[0]
        robustness = {"kind": kind, "adversarial_users": n_adv, "clean_auroc": rows[kind]["auroc"]}
        for flag in (True, False):
            ex = build_examples(work / "store_adv", ExampleConfig(signal=args.signal, seed=args.seed,
                                                                  adversarial_filter=flag))  # fmt: skip
            model, _ = train_reward_model(ex, RewardTrainConfig(kind=kind, seed=args.seed),
                                          work / "models" / f"{kind}-adv-{'on' if flag else 'off'}")  # fmt: skip
            a = evaluate_on(model, test)["auroc"]
            key = "filter_on" if flag else "filter_off"
            robustness[key] = {"auroc": a, "drop": rows[kind]["auroc"] - a,
                               "flagged_users": len(ex.report["adversarial"].get("flagged", []))}  # fmt: skip
        goals.append(harness.goal(f"{kind} AUROC drop with 5% adversarial users, filter on",
                                  robustness["filter_on"]["drop"], "<", GOAL_DROP))  # fmt: skip
    doc = {"bench": "reward", "params": {k: v for k, v in vars(args).items() if k not in ("json", "check")},
           "env": harness.environment(), "simulated": {k: sim[k] for k in ("users", "conversations", "messages")},
           "examples": {s: examples.report["splits"][s] for s in ("train", "val", "test")},
           "oracle_auroc": ceiling, "oracle_length_r": oracle_length_r,
           "oracle_at_goal_length_r": oracle_flat, "models": rows, "robustness": robustness, "goals": goals, "check": args.check,
           "seconds": time.perf_counter() - t0}  # fmt: skip
    _print(doc, args)
    return doc


def _print(doc: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=args.json)
    t = Table(title=f"bench reward: P\\[{args.signal}] on {args.users} simulated users; oracle AUROC {doc['oracle_auroc']:.4f}, "
              f"oracle length r {doc['oracle_length_r']:+.3f}")
    for col in ("kind", "AUROC [95% CI]", "/ oracle", "ECE", "length r", "log loss", "s"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind, r in doc["models"].items():
        lo, hi = r["auroc_ci95"]
        t.add_row(kind, f"{r['auroc']:.4f} [{lo:.3f}, {hi:.3f}]", f"{r['ratio_to_oracle']:.3f}", f"{r['ece']:.4f}",
                  f"{r['length_r']:+.3f}", f"{r['log_loss']:.4f}", f"{r['seconds'] or 0:.0f}")  # fmt: skip
    console.print(t)
    of = doc["oracle_at_goal_length_r"]
    console.print(f"the oracle with {of['share']:.2f} of its length trend removed (length r {of['length_r']:+.3f}): AUROC "
                  f"{of['auroc']:.4f}, {of['ratio_to_oracle']:.3f} x its own")  # fmt: skip
    rb = doc["robustness"]
    if rb:
        console.print(f"robustness ({rb['kind']}, +{rb['adversarial_users']} adversarial users): clean AUROC "
                      f"{rb['clean_auroc']:.4f}; filter on {rb['filter_on']['auroc']:.4f} (drop "
                      f"{rb['filter_on']['drop']:+.4f}, {rb['filter_on']['flagged_users']} users set aside); filter off "
                      f"{rb['filter_off']['auroc']:.4f} (drop {rb['filter_off']['drop']:+.4f})")  # fmt: skip
    harness.finish("reward", doc, console, args.json)
