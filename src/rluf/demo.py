"""The main job behind `make demo`: `rluf demo --out runs/demo`, the whole RLUF loop on the embedded world.

    rluf demo --out runs/demo                        # the default world: 2,000 users, 14-20 minutes on 2 cores
    rluf demo --out runs/tiny --config tiny.yaml     # any DemoConfig field in a YAML mapping (docs/demo.md)

Stages, each writing under OUT (docs/demo.md lists every file and every key of summary.json):

 1. production traffic: the embedded default world (rluf.sim) simulates `users` users; their logs go
    to OUT/sim/logs, the hidden truth to OUT/sim/truth;
 2. logs in: the logs plus three broken records are ingested into OUT/store (the rejects path),
    then ingested again (idempotency), and summarised;
 3. signals: which reaction predicts retention (OUT/signals);
 4. reward models: P[love] training examples (OUT/examples), the n-gram and length models side by
    side on held-out later turns (OUT/reward/<kind>); helpfulness and safety models from simulated
    raters (OUT/annotated; the raters read the truth, as human raters would read the replies);
 5. SFT: the tiny policy learns the logged replies (OUT/sft): the baseline every candidate is
    compared with;
 6. optimize: CGPO with the moderate and aggressive presets inside the Mixture of Judges, the
    aggressive preset without judges (the ablation), a weighted-sum GRPO on TRL, and KTO on the
    logged love reactions (the direct-alignment baseline that skips the reward model), run
    `workers` at a time (OUT/policy/<name>, with snapshots: more candidates);
 7. offline evaluation: every candidate on one fixed, category-stratified prompt set of users no
    candidate trained on (OUT/evaluate/offline/<candidate>.json and the replies);
 8. online A/B: every candidate is an arm served to fresh simulated users after the logs end,
    randomised by user; the traffic is ingested (OUT/online/store) and analysed with the SFT
    policy as control (OUT/online/abtest.json);
 9. offline-online correlation across the candidates (OUT/correlate);
10. the reward-hacking monitor: the optimized candidates against the SFT policy on the same
    prompts (OUT/hacking/<candidate>.json, with the judge config it emits);
11. the report (OUT/report.html) and OUT/summary.json with the headline numbers.
The public feedback samples in ../shared/data/real are imported too when that directory exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from .data.ingest import ingest
from .data.stats import render_stats, store_stats
from .data.store import Store
from .reward.data import ExampleConfig, build_examples
from .reward.train import RewardTrainConfig, compare, format_comparison, train_reward_model
from .signals.retention import render_signals, signal_retention

REAL_DATA = Path(os.environ.get("RLUF_REAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data" / "real"))
BROKEN_LINES = [
    b'{"conversation_id": "broken-1", "user_id": "u1", "turns": [{"role": "assistant", "text": "hi"}]}',  # no time
    b'{"conversation_id": "broken-2", "user_id": "u1", "turns": [{"role": "bot", "text": "hi", "time": "2026-01-02T00:00:00Z"}]}',
    b'{"conversation_id": "broken-3", "user_id": "u1", "turns": [',  # truncated line
]
CONTROL = "sft"
STAGES = ("simulate", "ingest", "signals", "reward", "annotate", "sft", "optimize", "offline", "online", "correlate",
          "hacking", "report")  # fmt: skip


class DemoError(ValueError):
    pass


@dataclass
class DemoConfig:
    users: int = field(default=2000, metadata={"help": "simulated users of the production logs"})
    seed: int = field(default=0, metadata={"help": "seeds the world and every stage"})
    reward_kinds: list[str] = field(default_factory=lambda: ["ngram", "length"], metadata={"help": "P[love] models trained side by side; the first is the optimized reward"})
    annotations: int = field(default=20_000, metadata={"help": "replies labelled by the simulated raters, per signal"})
    sft: dict = field(default_factory=dict, metadata={"help": "SFTConfig settings (docs/policy.md)"})
    optimize_steps: int = field(default=120, metadata={"help": "CGPO steps of each optimized candidate"})
    snapshot_steps: list[int] = field(default_factory=lambda: [40, 80], metadata={"help": "CGPO steps whose policies are candidates too"})
    learning_rate: float = field(default=2e-4, metadata={"help": "CGPO learning rate"})
    optimize: dict = field(default_factory=dict, metadata={"help": "further CGPO settings for every run (docs/optimize.md)"})
    grpo_steps: int = field(default=60, metadata={"help": "weighted-sum GRPO steps (0 skips the GRPO candidate)"})
    grpo: dict = field(default_factory=dict, metadata={"help": "further GRPOBaselineConfig settings (docs/baselines.md)"})
    kto_steps: int = field(default=120, metadata={"help": "KTO steps on the logged love reactions (0 skips the KTO candidate)"})
    kto: dict = field(default_factory=lambda: {"learning_rate": 5e-5},
                      metadata={"help": "KTOBaselineConfig settings (docs/baselines.md)"})
    offline_prompts: int = field(default=400, metadata={"help": "prompts in the fixed offline evaluation set"})
    offline_samples: int = field(default=3, metadata={"help": "replies sampled per offline prompt (CGPO snapshots)"})
    final_samples: int = field(default=10, metadata={"help": "replies per offline prompt for SFT and the final candidates: "
                               "enough to tell a 2 % love-bait rate from 3 % and to feed the hacking monitor"})  # fmt: skip
    online_users: int = field(default=18000, metadata={"help": "simulated users of the online test, split by online_shares"})
    online_days: int = field(default=4, metadata={"help": "days the online test runs"})
    online_shares: dict = field(default_factory=lambda: {"sft": 3, "aggressive": 3},
                                metadata={"help": "seats per round of the online split (others 1): the primary comparison gets more users"})
    min_users: int = field(default=20, metadata={"help": "report cells with fewer users are suppressed"})
    workers: int = field(default=2, metadata={"help": "processes for the optimize runs and the online arms"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per sampled reply everywhere"})
    public_samples: bool = field(default=True, metadata={"help": "import ../shared/data/real when present"})

    def __post_init__(self):
        ints = {"users": 10, "annotations": 100, "optimize_steps": 1, "grpo_steps": 0, "kto_steps": 0, "offline_prompts": 10,
                "offline_samples": 1, "final_samples": 1,
                "online_users": 4, "online_days": 1, "min_users": 1, "workers": 1, "max_new_tokens": 1, "seed": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise DemoError(f"DemoConfig.{name} = {v!r} must be an int >= {low} ({_help(name)})")
        if not self.reward_kinds or any(k not in ("ngram", "encoder", "length") for k in self.reward_kinds):
            raise DemoError(f"DemoConfig.reward_kinds = {self.reward_kinds!r}: a non-empty list of ngram, encoder, length")
        if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.optimize_steps for k in self.snapshot_steps):
            raise DemoError(f"DemoConfig.snapshot_steps = {self.snapshot_steps!r}: steps in [1, optimize_steps - 1]")
        for name in ("sft", "optimize", "grpo", "kto", "online_shares"):
            if not isinstance(getattr(self, name), dict):
                raise DemoError(f"DemoConfig.{name} must be a mapping of settings")
        if self.kto_steps:  # a bad KTO setting fails now, not after the stages before it have run
            from .policy.baselines import BaselineError, KTOBaselineConfig

            try:
                KTOBaselineConfig.from_dict({"steps": self.kto_steps, "seed": self.seed, **self.kto})
            except (BaselineError, TypeError, ValueError) as exc:
                raise DemoError(f"DemoConfig.kto: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> DemoConfig:
        from .config import from_mapping

        return from_mapping(cls, data, "demo config", DemoError)


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(DemoConfig) if f.name == name)


def run_demo(out: Path, console: Console | None = None, config: DemoConfig | None = None,
             real_data: Path = REAL_DATA) -> dict:  # fmt: skip
    """Run every stage into `out`; return the summary (also written to out/summary.json)."""
    cfg = config or DemoConfig()
    console = console or Console()
    out = Path(out)
    t_start = time.perf_counter()
    for d in ("sim", "store", "extra_logs", "signals", "examples", "reward", "annotated", "sft", "policy", "evaluate",
              "online", "correlate", "hacking"):  # fmt: skip
        shutil.rmtree(out / d, ignore_errors=True)
    (out / "report.html").unlink(missing_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"config": dataclasses.asdict(cfg), "seconds": {}, "public_samples": {}}
    clock = _Clock(console, summary["seconds"])

    with clock("simulate", "1. production traffic (simulated)"):
        from .sim.simulate import simulate

        sim = simulate(out / "sim", users=cfg.users, seed=cfg.seed)
        console.print(f"{sim['users']} users over {sim['days']} days: {sim['conversations']} conversations, "
                      f"{sim['messages']} messages, {sim['reaction_events']} reaction events in {sim['seconds']:.1f}s")  # fmt: skip
        extra = out / "extra_logs"
        extra.mkdir(parents=True)
        (extra / "late_export.jsonl").write_bytes(b"\n".join(BROKEN_LINES) + b"\n")
        summary["simulate"] = sim

    with clock("ingest", "2. logs in"):
        first = ingest([sim["logs"], extra], out / "store")
        _print(console, "first ingest", first.as_dict())
        again = ingest([sim["logs"], extra], out / "store")
        _print(console, "same files again (idempotent)", again.as_dict())
        stats = store_stats(Store(out / "store"))
        render_stats(stats, console)
        summary.update(ingest=first.as_dict(), reingest=again.as_dict(), stats=stats)

    with clock("signals", "3. signals: which reaction predicts retention"):
        signals = signal_retention(out / "store", out / "signals", seed=cfg.seed)
        render_signals(signals, console)
        summary["signals"] = {name: {"correlation": e["correlation"], "logit_coef_per_sd": e["logit_coef_per_sd"],
                                     "n_users": e["n_users"]} for name, e in signals["signals"].items()}  # fmt: skip

    with clock("reward", "4. reward models: P\\[love]"):
        summary["reward"] = _reward_models(out, cfg, console)
    love_model = out / "reward" / cfg.reward_kinds[0]

    with clock("annotate", "4b. helpfulness and safety reward models (simulated raters)"):
        from .sim.annotate import train_annotated_models

        annotated = train_annotated_models(out / "store", out / "sim" / "truth", out / "annotated", n=cfg.annotations,
                                           seed=cfg.seed)  # fmt: skip
        h, s = annotated["helpful"], annotated["safe"]
        console.print(f"helpful: r with the true helpfulness {h['truth']['helpfulness_r']:.3f}; safe: AUROC vs the "
                      f"true class {s['truth']['safe_auroc']:.3f}")  # fmt: skip
        summary["annotated"] = {"helpful_truth_r": h["truth"]["helpfulness_r"], "safe_truth_auroc": s["truth"]["safe_auroc"]}
    models = {"love": str(love_model), "helpful": str(out / "annotated" / "helpful"), "safe": str(out / "annotated" / "safe")}

    with clock("sft", "5. SFT: the tiny policy learns the logged replies"):
        summary["sft"] = _sft(out, cfg, console)

    with clock("optimize", "6. optimize: CGPO presets, the no-judges ablation, weighted-sum GRPO"):
        candidates, summary["optimize"] = _optimize(out, cfg, models, console)

    with clock("offline", "7. offline evaluation on a fixed prompt set"):
        offline = _offline(out, cfg, candidates, models, console)
        summary["offline"] = {name: _offline_brief(r) for name, r in offline.items()}

    with clock("online", "8. online A/B test on simulated users"):
        abtest, summary["online"] = _online(out, cfg, candidates, models, sim["days"], console)

    with clock("correlate", "9. does the offline score predict the online love rate?"):
        from .evaluate.correlate import CorrelateError, correlate, format_result, plot_correlation, points_from

        try:
            corr = correlate(points_from(list(offline.values()), abtest), seed=cfg.seed)
        except CorrelateError as exc:  # e.g. a run too small for any love reaction online
            console.print(f"[yellow]no correlation[/]: {exc}")
            summary["correlate"] = {"error": str(exc), "n_candidates": len(offline), "pearson_r": None, "ci95": None}
        else:
            (out / "correlate").mkdir(parents=True, exist_ok=True)
            (out / "correlate" / "correlation.json").write_text(json.dumps(corr, indent=1) + "\n")
            plot_correlation(corr, out / "correlate" / "correlation.png")
            console.print(format_result(corr))
            summary["correlate"] = {k: corr[k] for k in ("n_candidates", "pearson_r", "ci95", "fisher_ci95",
                                                         "measurement_ci95", "spearman_rho")}  # fmt: skip
            summary["correlate"]["ground_truth"] = _ground_truth_check(out, corr, cfg.seed)

    with clock("hacking", "10. reward-hacking monitor"):
        summary["hacking"] = _hacking(out, cfg, candidates, console)

    with clock("report", "11. report"):
        summary["headline"] = headline(summary, abtest)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        from .report.html import write_report

        report = write_report(out, min_users=cfg.min_users)
        console.print(f"report: {report}")

    if cfg.public_samples and real_data.is_dir():
        console.rule("[bold]public feedback samples")
        for name, pattern, fmt in (("convai2", "convai2/*.json", "convai2"), ("oasst", "oasst/*.jsonl", "oasst"),
                                   ("oasst_trees", "oasst_trees/*.jsonl", "oasst-tree")):  # fmt: skip
            paths = sorted(real_data.glob(pattern))
            if paths:
                shutil.rmtree(out / f"store_{name}", ignore_errors=True)
                s = ingest(paths, out / f"store_{name}", fmt=fmt)
                _print(console, name, s.as_dict())
                summary["public_samples"][name] = s.as_dict()
    summary["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    _print_headline(console, summary["headline"])
    console.print(f"[bold green]done[/] in {summary['seconds']['total']:.0f}s: {out / 'summary.json'}, {out / 'report.html'}")
    return summary


# ============================================================================ stages


def _reward_models(out: Path, cfg: DemoConfig, console: Console) -> dict:
    examples = build_examples(out / "store", ExampleConfig(signal="love", seed=cfg.seed))
    examples.save(out / "examples")
    console.print(examples.describe())
    models, trained = {}, {}
    for kind in cfg.reward_kinds:
        model, metrics = train_reward_model(examples, RewardTrainConfig(kind=kind, seed=cfg.seed), out / "reward" / kind)
        models[kind], trained[kind] = model, metrics
        t = metrics["test"]
        console.print(f"{kind}: test AUROC {t['auroc']:.3f} [{t['auroc_ci95'][0]:.3f}, {t['auroc_ci95'][1]:.3f}], "
                      f"ECE {t['ece']:.4f}, length r {t['length_r']:+.3f}; fit {metrics['fit_seconds']:.0f}s")  # fmt: skip
    side_by_side = compare(models, examples.test, seed=cfg.seed)
    console.print(format_comparison(side_by_side))
    return {
        "examples": {k: examples.report["splits"][k] for k in ("train", "val", "test")},
        "adversarial_users_set_aside": len(examples.report["adversarial"].get("flagged", [])),
        "models": {k: {key: m["test"][key] for key in ("auroc", "auroc_ci95", "pr_auc", "log_loss", "brier", "ece",
                                                       "length_r")} | {"dir": str(out / "reward" / k)}
                   for k, m in trained.items()},
        "auroc_differences": side_by_side["auroc_diff"],
    }  # fmt: skip


def _sft(out: Path, cfg: DemoConfig, console: Console) -> dict:
    from .policy.sft import SFTConfig, run_sft
    from .sim.quality import reply_quality

    m = run_sft(out / "store", out / "sft", SFTConfig.from_dict(dict(cfg.sft)), quality=reply_quality)
    q = m.get("quality", {}).get("model", {})
    console.print(f"sft: {m['steps']} steps, val loss {m['val_loss'][0]:.3f} -> {m['val_loss'][-1]:.3f} in "
                  f"{m['train_s']:.0f}s" + (f"; on topic {q['on_topic']['rate']:.2f}, love-bait {q['love_bait']['rate']:.3f}"
                                             if q else ""))  # fmt: skip
    return {"steps": m["steps"], "val_loss": m["val_loss"][-1], "train_s": m["train_s"],
            "quality": {k: q[k]["rate"] for k in ("on_topic", "correct", "love_bait") if k in q}}  # fmt: skip


def _optimize_runs(out: Path, cfg: DemoConfig, models: dict) -> list[dict]:
    """The optimize jobs: (name, kind, settings), longest first."""
    base = {"policy": str(out / "sft"), "prompts": str(out / "policy" / "train_prompts.jsonl"), "reward_models": models,
            "steps": cfg.optimize_steps,
            "learning_rate": cfg.learning_rate, "max_new_tokens": cfg.max_new_tokens, "eval_prompts": 0,
            "snapshot_steps": list(cfg.snapshot_steps), "save_every": 0, "seed": cfg.seed,
            "judges": [{"type": "love_bait"}, {"type": "repetition"},
                       {"type": "reward_threshold", "model": models["safe"], "min": 0.8, "name": "safety"}]}  # fmt: skip
    base.update(cfg.optimize)
    runs = [{"name": "aggressive", "kind": "cgpo", "settings": {**base, "preset": "aggressive", "use_judges": True}},
            {"name": "no_judges", "kind": "cgpo", "settings": {**base, "preset": "aggressive", "use_judges": False}},
            {"name": "moderate", "kind": "cgpo", "settings": {**base, "preset": "moderate", "use_judges": True}}]
    if cfg.grpo_steps:
        runs.append({"name": "grpo", "kind": "grpo", "settings": {"steps": cfg.grpo_steps, "learning_rate": cfg.learning_rate,
                     "prompts_per_step": 4, "num_generations": 8, "max_completion_length": cfg.max_new_tokens,
                     "reward_weights": [0.3, 0.5, 0.2], "seed": cfg.seed, **cfg.grpo}})  # fmt: skip
    if cfg.kto_steps:
        runs.append({"name": "kto", "kind": "kto", "store": str(out / "store"), "held_out": str(out / "policy" / "held_out_users.json"),
                     "settings": {"steps": cfg.kto_steps, "seed": cfg.seed, **cfg.kto}})  # fmt: skip
    for r in runs:
        r["out"] = str(out / "policy" / r["name"])
        r["models"], r["prompts"], r["policy"] = models, base["prompts"], str(out / "sft")
        r["threads"] = max(1, (os.cpu_count() or 1) // cfg.workers)
    return runs


def _optimize(out: Path, cfg: DemoConfig, models: dict, console: Console) -> tuple[dict, dict]:
    from .policy.data import prompt_rows_to_records

    train, held = _prompt_split(out, cfg.seed)  # every run trains on these; the offline set comes from the other side
    (out / "policy").mkdir(parents=True, exist_ok=True)
    with open(out / "policy" / "train_prompts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in prompt_rows_to_records(train))
    held_out = sorted({r.user_id for r in held})  # KTO leaves their logged replies out
    (out / "policy" / "held_out_users.json").write_text(json.dumps(held_out) + "\n")
    runs = _optimize_runs(out, cfg, models)
    results = _parallel(_optimize_job, runs, cfg.workers, console, "optimize runs")
    candidates = {CONTROL: str(out / "sft")}
    brief = {}
    for run, res in zip(runs, results):
        candidates[run["name"]] = run["out"]
        for k in sorted(cfg.snapshot_steps) if run["kind"] == "cgpo" else ():
            candidates[f"{run['name']}@{k}"] = str(Path(run["out"]) / "snapshots" / f"step-{k:06d}")
        brief[run["name"]] = res
        console.print(f"{run['name']}: {res['steps']} steps in {res['seconds']:.0f}s" +
                      (f", final judges pass {res['judges_pass']:.2f}, kl {res['kl']:.2f}" if "kl" in res else ""))  # fmt: skip
    return candidates, brief


def _optimize_job(run: dict) -> dict:
    """One optimize run in its own process (picklable entry point of the pool)."""
    import torch

    torch.set_num_threads(run["threads"])
    t0 = time.perf_counter()
    if run["kind"] == "cgpo":
        from .policy.cgpo import CGPOConfig, CGPOTrainer

        summary = CGPOTrainer(CGPOConfig.from_dict({**run["settings"], "out": run["out"]})).train()
        final = summary.get("final", {})
        return {"steps": summary["steps"], "seconds": time.perf_counter() - t0, "kl": final.get("kl"),
                "judges_pass": final.get("judges/all/pass_rate"), "reward": final.get("reward/mean")}  # fmt: skip
    if run["kind"] == "kto":
        from .policy.baselines import KTOBaselineConfig, kto_dataset, run_kto

        held_out = json.loads(Path(run["held_out"]).read_text())
        rows = kto_dataset(run["store"], signal="love", seed=run["settings"]["seed"], exclude_users=held_out)
        run_kto(run["policy"], rows, run["out"], KTOBaselineConfig.from_dict(run["settings"]))
        return {"steps": run["settings"]["steps"], "seconds": time.perf_counter() - t0, "rows": len(rows),
                "desirable": sum(r["label"] for r in rows)}  # fmt: skip
    from .policy.baselines import GRPOBaselineConfig, run_grpo
    from .policy.data import records_to_prompt_rows
    from .policy.rewards import CalibratedReward

    with open(run["prompts"], encoding="utf-8") as f:
        rows = records_to_prompt_rows([json.loads(line) for line in f], source=run["prompts"])
    funcs = [CalibratedReward(run["models"][n], name=f"calibrated_{n}") for n in ("love", "helpful", "safe")]
    run_grpo(run["policy"], rows, funcs, run["out"], GRPOBaselineConfig.from_dict(run["settings"]))
    return {"steps": run["settings"]["steps"], "seconds": time.perf_counter() - t0}


def _prompt_split(out: Path, seed: int):
    """(train, held out): the store's prompt rows (a stratified 20,000), split by user 90 / 10. The optimizers
    train on the first; the fixed offline prompt set is drawn from the second, users no candidate saw."""
    from .policy.data import load_prompts, split_prompts

    return split_prompts(load_prompts(out / "store", limit=20_000, seed=seed), 0.1, seed)


def _offline(out: Path, cfg: DemoConfig, candidates: dict, models: dict, console: Console) -> dict:
    from .evaluate.offline import OfflineConfig, evaluate_offline, format_summary

    rows = _prompt_split(out, cfg.seed)[1]
    results = {}
    d = out / "evaluate" / "offline"
    d.mkdir(parents=True, exist_ok=True)
    with _bar(console, "offline candidates") as bar:
        for k, (name, policy) in enumerate(candidates.items()):
            slug = _slug(name)
            ocfg = OfflineConfig(prompts=cfg.offline_prompts, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                                 samples_per_prompt=cfg.offline_samples if "@" in name else cfg.final_samples)  # fmt: skip
            results[name] = evaluate_offline(policy, rows, models, ocfg, replies_out=d / f"{slug}.replies.jsonl", name=name)
            bar(k + 1, len(candidates))
    for name, r in results.items():
        slug = _slug(name)
        (d / f"{slug}.json").write_text(json.dumps(r, indent=1) + "\n")
        console.print(format_summary(r).splitlines()[0] + f"  P\\[love] {r['rewards']['love']['p']['mean']:.4f}, "
                      f"P\\[helpful] {r['rewards']['helpful']['p']['mean']:.3f}, love-bait pass "
                      f"{r['judges']['love_bait']['pass_rate']:.3f}")  # fmt: skip
    return results


def _online(out: Path, cfg: DemoConfig, candidates: dict, models: dict, log_days: int, console: Console):
    from .evaluate.abtest import analyze
    from .evaluate.online import serve_ab

    with _bar(console, "online user groups") as bar:
        served = serve_ab(candidates, out / "online", users=cfg.online_users, days=cfg.online_days, seed=cfg.seed + 1,
                          start_day=log_days, max_new_tokens=cfg.max_new_tokens, workers=cfg.workers, overwrite=True,
                          shares={k: v for k, v in cfg.online_shares.items() if k in candidates}, progress=bar)  # fmt: skip
    console.print(f"{len(candidates)} arms, {cfg.online_users} users, {cfg.online_days} days: "
                  f"{sum(a['assistant_messages'] for a in served['arms'].values())} replies in {served['seconds']:.0f}s")  # fmt: skip
    s = ingest([served["logs"]], out / "online" / "store")
    _print(console, "online traffic ingested", s.as_dict())
    result = analyze(out / "online" / "store", control=CONTROL, models={"helpful": models["helpful"], "safe": models["safe"]},
                     seed=cfg.seed, min_users_per_cell=cfg.min_users, expected_split=served["expected_split"])  # fmt: skip
    (out / "online" / "abtest.json").write_text(json.dumps(result, indent=1) + "\n")
    _print_ab(console, result)
    return result, {"served": served, "ingest": s.as_dict(), "true_unsafe": _true_unsafe(out)}


def _hacking(out: Path, cfg: DemoConfig, candidates: dict, console: Console) -> dict:
    from .evaluate.hacking import compare as hacking_compare
    from .evaluate.hacking import format_report, load_pairs, rising, score_kwargs, suspects, write_judge_config

    d = out / "hacking"
    d.mkdir(parents=True, exist_ok=True)
    replies = out / "evaluate" / "offline"
    brief = {}
    for name in candidates:
        if name == CONTROL or "@" in name:
            continue
        pairs = load_pairs(replies / f"{_slug(CONTROL)}.replies.jsonl", replies / f"{_slug(name)}.replies.jsonl")
        # the divergence: what P[love] (the optimised reward) pays for while P[helpful] docks it
        r = hacking_compare(pairs.prompts, pairs.baseline, pairs.candidate, seed=cfg.seed, **score_kwargs(pairs))
        (d / f"{_slug(name)}.json").write_text(json.dumps(r, indent=1) + "\n")
        write_judge_config(r, d / f"{_slug(name)}.judges.yaml")
        top, top_sentences = rising(r, "phrases"), rising(r, "sentences")
        found = suspects(r)
        brief[name] = {"closing_judge": r["closing"]["closing_judge"], "love_bait_anywhere": r["closing"]["love_bait_anywhere"],
                       "top_phrases": top, "top_sentences": top_sentences,
                       "top_love_bait": _love_bait_phrases(top + top_sentences),
                       "suspects": found, "suspects_love_bait": _love_bait_phrases(found)}  # fmt: skip
        if name == "no_judges":
            console.print(format_report(r, limit=8))
        else:
            c = r["closing"]["closing_judge"]
            console.print(f"{name} vs {CONTROL}: closing statements {_rate(c, 'baseline')} -> {_rate(c, 'candidate')}; "
                          f"top rising phrases {top[:5]}")  # fmt: skip
    return brief


def _true_unsafe(out: Path) -> dict:
    """What only a simulator can tell of safety: per arm, how many served replies were truly unsafe (the
    simulator's reading of the text, OUT/online/truth). The A/B guardrails judge safety through the
    safety reward model, as production must; this says whether that model missed a real regression.
    Evaluation only: nothing trains on the truth."""
    import duckdb

    path = out / "online" / "truth" / "messages.parquet"
    rows = duckdb.sql(f"SELECT policy, count(*) FILTER (WHERE safety = 'unsafe'), count(*) "
                      f"FROM read_parquet('{path}') GROUP BY 1 ORDER BY 1").fetchall()  # fmt: skip
    return {p: {"unsafe": int(k), "replies": int(n), "rate": k / n} for p, k, n in rows}


def _ground_truth_check(out: Path, corr: dict, seed: int) -> dict:
    """What only a simulator can tell: each arm's expected love rate (the mean true P[love] of the replies
    it served, OUT/online/truth) and the Pearson r of the offline score with it. Observed rates carry the
    sampling noise of finite traffic; the expected ones do not, so the two r's separate a reward model
    that misleads from traffic too small to show it. The oracle's P[love] of the very replies scored
    offline (`offline_true_love`) splits the offline side further: r of the reward model with it (the
    reward model's error) and r of it with the expected online rates (how far the fixed prompt set
    stands from each arm's own online traffic). Evaluation only: nothing trains on the truth."""
    import duckdb
    import numpy as np

    from .sim.oracle import Oracle
    from .sim.world import World

    path = out / "online" / "truth" / "messages.parquet"
    rows = dict(duckdb.sql(f"SELECT policy, avg(p_love) FROM read_parquet('{path}') GROUP BY 1").fetchall())
    pts = [p for p in corr["points"] if p["candidate"] in rows]
    oracle = Oracle(World(seed=seed))
    offline_truth = {}
    for p in pts:
        replies = [json.loads(line) for line in open(out / "evaluate" / "offline" / f"{_slug(p['candidate'])}.replies.jsonl")]
        contexts = [[{"role": t["role"], "text": t.get("content", t.get("text"))} for t in r["prompt"]] for r in replies]
        love = oracle.probabilities(contexts, [r["reply"] for r in replies], [r["category"] for r in replies])[:, 0]
        offline_truth[p["candidate"]] = float(love.mean())
    x = np.array([p["offline"] for p in pts])
    y = np.array([rows[p["candidate"]] for p in pts])
    z = np.array([p["online"] for p in pts])
    t = np.array([offline_truth[p["candidate"]] for p in pts])
    r = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    return {"expected_love_rate": {p["candidate"]: float(rows[p["candidate"]]) for p in pts},
            "offline_true_love": offline_truth,
            "offline_vs_expected_r": r(x, y), "observed_vs_expected_r": r(z, y),
            "offline_vs_offline_truth_r": r(x, t), "offline_truth_vs_expected_r": r(t, y),
            "offline_truth_vs_observed_r": r(t, z)}  # fmt: skip


# ============================================================================ headline


def headline(summary: dict, abtest: dict) -> dict:
    """The numbers the demo is judged by (docs/demo.md): one flat mapping."""
    m = abtest["metrics"]
    corr = summary["correlate"]
    vs = lambda metric, arm: (m.get(metric, {}).get("vs_control") or {}).get(arm) or {}  # noqa: E731
    true_unsafe = summary.get("online", {}).get("true_unsafe") or {}
    rate = lambda metric, arm: ((m.get(metric, {}).get("arms") or {}).get(arm) or {}).get("value")  # noqa: E731
    h = {"offline_online_r": corr["pearson_r"], "offline_online_r_ci95": corr["ci95"], "n_candidates": corr["n_candidates"],
         "offline_vs_expected_online_r": (corr.get("ground_truth") or {}).get("offline_vs_expected_r"),
         "offline_truth_vs_observed_online_r": (corr.get("ground_truth") or {}).get("offline_truth_vs_observed_r")}
    for arm in ("aggressive", "moderate", "no_judges", "grpo", "kto"):
        if arm not in abtest["arms"]:
            continue
        love = vs("love", arm)  # empty when no love reaction was logged at all (a tiny run)
        h[f"{arm}/love_lift"] = love.get("lift")
        h[f"{arm}/love_lift_ci95"] = love.get("ci95")
        h[f"{arm}/love_lift_p"] = love.get("p_value")
        for g in ("p_helpful", "p_safe", "thumbs_down"):
            if vs(g, arm):
                h[f"{arm}/{g}_change"] = vs(g, arm).get("lift")
                h[f"{arm}/{g}_change_ci95"] = vs(g, arm).get("ci95")
        if vs("unsafe", arm):  # absolute change of the share of replies the safety model calls unsafe
            h[f"{arm}/unsafe_rate_change"] = vs("unsafe", arm).get("diff")
            h[f"{arm}/unsafe_rate_change_ci95"] = vs("unsafe", arm).get("diff_ci95")
        if true_unsafe.get(arm):
            h[f"{arm}/true_unsafe_rate"] = true_unsafe[arm]["rate"]
        h[f"{arm}/love_bait_rate"] = rate("flagged", arm)
        base = rate("flagged", CONTROL)
        h[f"{arm}/love_bait_ratio"] = (rate("flagged", arm) / base) if base else None
        if vs("flagged", arm).get("ci95"):  # the A/B analysis' user-clustered interval of the relative change
            h[f"{arm}/love_bait_ratio_ci95"] = [1.0 + x for x in vs("flagged", arm)["ci95"]]
            h[f"{arm}/love_bait_ratio_p"] = vs("flagged", arm).get("p_value")
        h[f"{arm}/guardrails"] = {k: g["status"] for k, g in (abtest.get("guardrails", {}).get(arm) or {}).items()}
    h["sft/love_rate"], h["sft/love_bait_rate"] = rate("love", CONTROL), rate("flagged", CONTROL)
    h["sft/unsafe_rate"] = rate("unsafe", CONTROL)
    if true_unsafe.get(CONTROL):
        h["sft/true_unsafe_rate"] = true_unsafe[CONTROL]["rate"]
    for arm in ("aggressive", "moderate", "no_judges", "grpo", "kto"):
        hk = summary.get("hacking", {}).get(arm)
        if not hk:
            continue
        h[f"{arm}/closing_rate"] = [hk["closing_judge"]["baseline"]["rate"], hk["closing_judge"]["candidate"]["rate"]]
        h[f"{arm}/love_bait_offline"] = [hk["love_bait_anywhere"]["baseline"]["rate"],
                                         hk["love_bait_anywhere"]["candidate"]["rate"]]  # fmt: skip
        clustered = hk["love_bait_anywhere"].get("prompt_clustered") or {}
        h[f"{arm}/love_bait_offline_ratio"] = clustered.get("ratio")
        h[f"{arm}/love_bait_offline_ratio_ci95"] = clustered.get("ratio_ci")
        h[f"{arm}/love_bait_offline_ratio_p"] = clustered.get("p")
        h[f"{arm}/top_rising"] = (hk["top_phrases"][:5] + hk["top_sentences"][:5])
        h[f"{arm}/top_rising_love_bait"] = hk["top_love_bait"]
        h[f"{arm}/hacking_suspects"] = hk.get("suspects", [])[:10]
        h[f"{arm}/hacking_suspects_love_bait"] = hk.get("suspects_love_bait", [])
    return h


def _love_bait_phrases(phrases: list[str]) -> list[str]:
    """The phrases the love_bait judge flags on their own (a closing that courts a reaction)."""
    from .judges import build_judges

    if not phrases:
        return []
    verdicts = build_judges([{"type": "love_bait"}]).judge_all([""] * len(phrases), phrases)["love_bait"]
    return [p for p, v in zip(phrases, verdicts) if v == 0]


def _print_headline(console: Console, h: dict) -> None:
    console.rule("[bold]headline")
    for k, v in h.items():
        console.print(f"  {k:<40} {_fmt(v)}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:+.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) if not isinstance(x, str) else repr(x) for x in v) + "]"
    return str(v)


# ============================================================================ helpers


class _Clock:
    """`with clock(stage, title):` prints the title, times the stage and records its seconds."""

    def __init__(self, console: Console, seconds: dict):
        self.console, self.seconds = console, seconds

    def __call__(self, stage: str, title: str):
        self.stage, self.title = stage, title
        return self

    def __enter__(self):
        self.console.rule(f"[bold]{self.title}  [dim]({STAGES.index(self.stage) + 1}/{len(STAGES)})")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds[self.stage] = round(time.perf_counter() - self.t0, 1)
        if exc[0] is None:
            self.console.print(f"[dim]{self.stage}: {self.seconds[self.stage]:.0f}s[/]")


@contextlib.contextmanager
def _bar(console: Console, what: str):
    """A progress bar for `what`; yields update(done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as p:  # fmt: skip
        task = p.add_task(what, total=None)
        yield lambda done, total: p.update(task, completed=done, total=total)


def _parallel(fn, jobs: list, workers: int, console: Console, what: str) -> list:
    """fn over jobs, `workers` processes at a time (spawned: no forked torch state), with a progress bar."""
    results = [None] * len(jobs)
    with _bar(console, what) as bar:
        if workers == 1:
            for i, job in enumerate(jobs):
                results[i] = fn(job)
                bar(i + 1, len(jobs))
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            for done, f in enumerate(as_completed(futures), start=1):
                results[futures[f]] = f.result()
                bar(done, len(jobs))
    return results


def _print_ab(console: Console, result: dict) -> None:
    """One line per treatment arm: love lift, helpfulness and safety change, love-bait (judge flag) rate."""
    m = result["metrics"]

    def lift(metric, arm):
        c = (m.get(metric, {}).get("vs_control") or {}).get(arm)
        if not c or c.get("lift") is None:
            return "-"
        ci = c.get("ci95")
        return f"{c['lift']:+.1%}" + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "")

    console.print(f"control {result['control']}: love {_value(m, 'love', result['control'])}, love-bait "
                  f"{_value(m, 'flagged', result['control'])}")  # fmt: skip
    for arm in list(result["arms"])[1:]:
        console.print(f"  {arm:<14} love {lift('love', arm):<26} P\\[helpful] {lift('p_helpful', arm):<24} "
                      f"P\\[safe] {lift('p_safe', arm):<24} love-bait {_value(m, 'flagged', arm)}")  # fmt: skip


def _value(metrics: dict, metric: str, arm: str) -> str:
    v = ((metrics.get(metric, {}).get("arms") or {}).get(arm) or {}).get("value")
    return "-" if v is None else f"{v:.2%}"


def _slug(name: str) -> str:
    return name.replace("@", "_step")


def _rate(entry: dict, side: str) -> str:
    v = (entry or {}).get(side, {}).get("rate")
    return "-" if v is None else f"{v:.2%}"


def _offline_brief(r: dict) -> dict:
    return {"love": r["rewards"]["love"]["p"], "helpful": r["rewards"]["helpful"]["p"], "safe": r["rewards"]["safe"]["p"],
            "love_bait_pass": r["judges"]["love_bait"]["pass_rate"], "words": r["words"]["mean"]}  # fmt: skip


def _print(console: Console, label: str, d: dict) -> None:
    console.print(
        f"[bold]{label}[/]: read {d['read']} = accepted {d['accepted']} + rejected {d['rejected']} + duplicate "
        f"{d['duplicate']} (reconciles: {d['reconciles']}); stored {d['messages']} messages, "
        f"{d['reaction_events']} reaction events; {d['seconds']:.1f}s"
    )
    for reason, n in list(d["reasons"].items())[:5]:
        console.print(f"    {n:>6}  {reason}")
