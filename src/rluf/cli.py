"""The `rluf` command line. `rluf --help` lists every command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="rluf: Reinforcement Learning from User Feedback: from production reactions to an aligned chat model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_BAD_INPUT = 2
EXIT_TOO_MANY_REJECTS = 3


def _fail(message: str, code: int = EXIT_BAD_INPUT):
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def ingest(
    paths: List[Path] = typer.Argument(..., help="JSONL, Parquet or CSV files (or directories of them)."),
    store: Path = typer.Option(..., "--store", help="Store directory (created if missing)."),
    fmt: str = typer.Option("auto", "--format", help="auto, jsonl, parquet, csv, convai2, oasst, oasst-tree."),
    layout: Optional[str] = typer.Option(None, "--layout", help="conversation, message, reaction or user; default: from the first record."),
    max_reject_rate: float = typer.Option(0.01, help="Above this share of rejected records the batch is not committed and the exit code is 3."),
    max_text_chars: int = typer.Option(65_536, help="Longest message text accepted."),
    workers: Optional[int] = typer.Option(None, help="Parsing processes (default: CPU count, at most 8)."),
    memory_limit: str = typer.Option("1GB", help="DuckDB memory limit for the merge stage."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Validate logs into the store; bad records go to STORE/rejects.jsonl, counts always reconcile."""
    from .data.contract import Limits
    from .data.ingest import IngestError, ingest as run_ingest
    from .data.store import StoreError

    try:
        with _progress("ingest", lazy=True) as progress:
            summary = run_ingest(
                paths, store, fmt=fmt, kind=layout, max_reject_rate=max_reject_rate,
                limits=Limits(max_text_chars=max_text_chars), workers=workers, memory_limit=memory_limit,
                progress=progress,
            )  # fmt: skip
    except (IngestError, StoreError) as exc:
        _fail(str(exc))
    d = summary.as_dict()
    if as_json:
        print(json.dumps(d, indent=1))
    else:
        _print_ingest(d)
    if not summary.committed:
        err.print(
            f"[bold red]batch not committed:[/] {summary.rejected} of {summary.read} records rejected "
            f"({summary.reject_rate:.2%} > --max-reject-rate {summary.max_reject_rate:.2%}). "
            f"Fix them (see {summary.rejects_file}) or raise --max-reject-rate, then run again."
        )
        raise typer.Exit(EXIT_TOO_MANY_REJECTS)


def _print_ingest(d: dict) -> None:
    out.print(
        f"read {d['read']}  accepted {d['accepted']}  rejected {d['rejected']}  duplicate {d['duplicate']}"
        f"  (blank lines {d['blank_lines']})  reconciles: {d['reconciles']}"
    )
    out.print(
        f"stored: {d['conversations']} conversations, {d['messages']} messages, {d['reaction_events']} reaction events,"
        f" {d['user_overrides']} user rows  in {d['seconds']:.1f}s  batch {d['batch_id']}"
        + ("" if d["committed"] else "  [NOT COMMITTED]")
    )
    if d["rejected"]:
        out.print(f"rejects ({d['reject_rate']:.2%}) written to {d['rejects_file']}; top reasons:")
        for reason, n in list(d["reasons"].items())[:8]:
            out.print(f"  {n:>8}  {reason}")


class _progress:
    """A progress bar on a terminal. With `lazy` it is shown from its first update: the ingest
    starts its worker processes first, which it forks only while this process has no other thread
    (the bar's refresh thread is one)."""

    def __init__(self, label: str, lazy: bool = False):
        self.p = None
        if err.is_terminal:  # elsewhere nothing is shown, and rich.progress is not even imported
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                              console=err, transient=True)  # fmt: skip
            self.task = self.p.add_task(label, total=None)
        self.lazy, self.started = lazy, False

    def __enter__(self):
        if not self.lazy:
            self._start()
        return self.update

    def _start(self) -> None:
        if self.p is not None:
            self.p.start()
        self.started = True

    def update(self, done: int, total: int) -> None:
        if not self.started:
            self._start()
        if self.p is not None:
            self.p.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.started and self.p is not None:
            self.p.stop()


@app.command()
def stats(
    store: Path = typer.Option(..., "--store", help="Store directory written by `rluf ingest`."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    retention_start: int = typer.Option(14, help="Retained = active from this day after first seen..."),
    retention_end: int = typer.Option(28, help="...until (not including) this day."),
):
    """What an operator looks at first: counts, reaction rates by type, category and policy, retention."""
    from .data.stats import store_stats
    from .data.store import Store, StoreError

    s = Store(store)
    if not s.exists():
        _fail(f"{store}: no store here (no manifest.json); create one with `rluf ingest FILES --store {store}`")
    try:
        result = store_stats(s, retention_days=(retention_start, retention_end))
    except (StoreError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=1, default=str))
    else:
        from .data.stats import render_stats

        render_stats(result, out)


@app.command()
def signals(
    store: Path = typer.Option(..., "--store", help="Store directory written by `rluf ingest`."),
    out_dir: Path = typer.Option(..., "--out", help="Writes OUT/signals.json and OUT/signals_vs_retention.png."),
    retention_start: int = typer.Option(14, help="Retained = active from this day after first seen..."),
    retention_end: int = typer.Option(28, help="...until (not including) this day."),
    n_boot: int = typer.Option(1000, "--n-boot", help="User-level bootstrap resamples for the 95 % intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    min_assistant_messages: int = typer.Option(1, help="Users who received fewer assistant messages are left out."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Which reaction predicts retention: per-reaction correlation and logistic coefficient with 95 % CIs."""
    from .signals.retention import SignalsError, render_signals, signal_retention

    try:
        result = signal_retention(store, out_dir, retention_days=(retention_start, retention_end), n_boot=n_boot,
                                  seed=seed, min_assistant_messages=min_assistant_messages)  # fmt: skip
    except SignalsError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=1, default=str))
    else:
        render_signals(result, out)
        out.print(f"written {Path(out_dir) / 'signals.json'} and {Path(out_dir) / 'signals_vs_retention.png'}")


def _apply_sets(settings: dict, overrides: List[str], example: str) -> dict:
    """settings updated with --set KEY=YAML_VALUE items; a malformed item exits 2 with an example."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--set {item!r}: expected KEY=VALUE, e.g. --set {example}")
        try:
            settings[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            _fail(f"--set {item!r}: the value is not valid YAML ({exc})")
    return settings


def _read_config(path: Optional[Path]) -> dict:
    """A YAML or JSON mapping of settings (empty when no file is given)."""
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        _fail(f"{path}: config file not found")
    except yaml.YAMLError as exc:
        _fail(f"{path}: not valid YAML/JSON ({exc})")
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(f"{path}: a config must be a mapping of settings, got {type(data).__name__}")
    return data


@app.command()
def examples(
    store: Path = typer.Option(..., "--store", help="Store directory written by `rluf ingest`."),
    out_dir: Path = typer.Option(..., "--out", help="Writes train/val/test Parquet and report.json here."),
    signal: Optional[str] = typer.Option(None, "--signal", help="Reaction name (love, thumbs_up, +1, ...), continued or returned_next_day."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with ExampleConfig settings (docs/reward-data.md)."),
):
    """Reward-model training data: one example per assistant turn, chronological split, adversarial filter."""
    from .reward.data import ExampleConfig, ExampleError, build_examples

    settings = _read_config(config)
    if signal:
        settings["signal"] = signal
    try:
        ex = build_examples(store, ExampleConfig.from_dict(settings))
    except (ExampleError, TypeError) as exc:
        _fail(str(exc))
    ex.save(out_dir)
    out.print(ex.describe())
    out.print(f"written {out_dir}")


@app.command("train-rm")
def train_rm(
    out_dir: Path = typer.Option(..., "--out", help="Model directory: model.safetensors, config.json, metrics.json, reliability.png."),
    store: Optional[Path] = typer.Option(None, "--store", help="Build the examples from this store..."),
    examples_dir: Optional[Path] = typer.Option(None, "--examples", help="...or load those `rluf examples` wrote."),
    signal: Optional[str] = typer.Option(None, "--signal", help="With --store: reaction name, continued or returned_next_day (default love)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="encoder (MiniLM + head), ngram (hashed n-grams + LR) or length (baseline)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="encoder only: frozen (cached embeddings, head only) or full (fine-tune)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="encoder only: a Hugging Face model directory (default: all-MiniLM-L6-v2)."),
    length_decorrelation: Optional[float] = typer.Option(None, "--length-decorrelation", help="Share in [0, 1] of the score's linear rise with response length to remove (default 0)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with `examples:` (ExampleConfig) and `train:` (RewardTrainConfig) sections."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
):
    """Train a calibrated reward model P[signal | context, response] and evaluate it on held-out later turns."""
    from .reward.base import RewardModelError
    from .reward.data import ExampleConfig, ExampleError, ExampleSet, build_examples
    from .reward.metrics import MetricError
    from .reward.train import RewardTrainConfig, train_reward_model

    if (store is None) == (examples_dir is None):
        _fail("give exactly one of --store DIR or --examples DIR")
    settings = _read_config(config)
    unknown = sorted(set(settings) - {"examples", "train"})
    if unknown:
        _fail(f"{config}: unknown section(s) {unknown}; use `examples:` and `train:`")
    ex_settings, train_settings = dict(settings.get("examples") or {}), dict(settings.get("train") or {})
    if kind:
        train_settings["kind"] = kind
    if length_decorrelation is not None:
        train_settings["length_decorrelation"] = length_decorrelation
    kind_settings = dict(train_settings.get("settings") or {})
    if mode:
        kind_settings["mode"] = mode
    if backbone:
        kind_settings["backbone"] = backbone
    if kind_settings:
        train_settings["settings"] = kind_settings
    try:
        if store is not None:
            if signal:
                ex_settings["signal"] = signal
            ex = build_examples(store, ExampleConfig.from_dict(ex_settings))
        else:
            if signal or ex_settings:
                _fail("--signal and `examples:` settings apply to --store; the examples in --examples are already built")
            ex = ExampleSet.load(examples_dir)
        train_config = RewardTrainConfig.from_dict(train_settings)
        with _progress(f"train {train_config.kind}"):
            _, metrics = train_reward_model(ex, train_config, out_dir)
    except (ExampleError, RewardModelError, MetricError, TypeError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(metrics, indent=1, default=str))
        return
    t = metrics["test"]
    out.print(f"{metrics['kind']} P\\[{metrics['signal']}]: trained on {metrics['data']['train_rows']} examples "
              f"({metrics['data']['train_positives']} positive, base rate {metrics['data']['true_rate']:.4f}) "
              f"in {metrics['fit_seconds']:.1f}s")  # fmt: skip
    out.print(f"test n={t['n']} positives={t['positives']}: AUROC {t['auroc']:.4f} [{t['auroc_ci95'][0]:.4f}, "
              f"{t['auroc_ci95'][1]:.4f}]  PR-AUC {t['pr_auc']:.4f}  log loss {t['log_loss']:.4f}  Brier {t['brier']:.4f}"
              f"  ECE {t['ece']:.4f}  length r {t['length_r']:+.3f}")  # fmt: skip
    out.print(f"written {out_dir} (model.safetensors, config.json, metrics.json, reliability.png)")


@app.command("train-pairwise")
def train_pairwise(
    pairs: Path = typer.Argument(..., help="Preference pairs: HH-RLHF jsonl(.gz) of {chosen, rejected} transcripts."),
    out_dir: Path = typer.Option(..., "--out", help="Model directory: model.safetensors, config.json, metrics.json."),
    signal: str = typer.Option("harmless", "--signal", help="What the model scores (e.g. harmless, helpful)."),
    mode: str = typer.Option("frozen", "--mode", help="frozen (cached embeddings, head only) or full (fine-tune)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="A Hugging Face encoder directory (default: all-MiniLM-L6-v2)."),
    split: float = typer.Option(0.8, help="Share of pairs to train on (a tenth of them validate); the rest is held out."),
    seed: int = typer.Option(0, "--seed"),
    context_turns: int = typer.Option(4, help="Turns of context before the reply."),
    cache_dir: Optional[Path] = typer.Option(None, help="Embedding cache (frozen mode)."),
):
    """Train a Bradley-Terry (pairwise) encoder reward model, e.g. safety from HH harmless pairs."""
    from .reward.base import RewardModelError
    from .reward.pairs import train_pairwise as run_train

    if not pairs.is_file():
        _fail(f"{pairs}: file not found")
    settings = {"mode": mode, "cache_dir": str(cache_dir) if cache_dir else None}
    if backbone:
        settings["backbone"] = backbone
    try:
        with _progress(f"train {signal} (pairwise)"):
            _, m = run_train(pairs, out_dir, signal, split, seed, context_turns, **settings)
    except (RewardModelError, ValueError) as exc:
        _fail(str(exc))
    t = m["test"]
    out.print(f"{signal}: trained on {m['train']} pairs; held-out pairwise accuracy {t['accuracy']:.3f} "
              f"[{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] over {t['n']} pairs; written {out_dir}")  # fmt: skip


@app.command()
def score(
    model: List[Path] = typer.Option(..., "--model", help="A reward-model directory (repeat for several)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Score every assistant message of this store..."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="...or the records of this JSONL/Parquet file ({context, response})."),
    out_file: Path = typer.Option(..., "--out", help="Parquet file of scores, one column p_<model> per model."),
    batch_size: int = typer.Option(256, help="Rows scored per batch."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Score through Ray Data: 'local' or a cluster address."),
    concurrency: int = typer.Option(1, help="Ray actors (with --ray)."),
    rejects: Optional[Path] = typer.Option(None, "--rejects", help="With --input: bad records go here instead of stopping the run."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Score a store or a file with one or more reward models (locally or on a Ray cluster)."""
    from .reward.base import RewardModelError
    from .reward.score import ScoreError, score_file, score_store

    if (store is None) == (input_file is None):
        _fail("give exactly one of --store DIR or --input FILE")
    try:
        if store is not None:
            result = score_store(list(model), store, out_file, batch_size=batch_size, ray_address=ray,
                                 concurrency=concurrency)  # fmt: skip
        else:
            result = score_file(list(model), input_file, out_file, batch_size=batch_size, ray_address=ray,
                                concurrency=concurrency, rejects=rejects)  # fmt: skip
    except (ScoreError, RewardModelError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=1, default=str))
    else:
        out.print(f"scored {result['rows']} rows with {len(result['models'])} model(s) in {result['seconds']:.1f}s "
                  f"({result['backend']}) -> {result['out']}")  # fmt: skip
        for name, s in (result.get("summary") or {}).items():
            out.print(f"  {name}: {s}")


@app.command()
def serve(
    model: List[str] = typer.Option(..., "--model", help="NAME=DIR of a reward model (repeat for several)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (keep loopback unless behind a proxy)."),
    port: int = typer.Option(8000, help="Port."),
    workers: int = typer.Option(1, help="Server processes."),
    max_batch: int = typer.Option(256, help="Most items per /score request (413 above)."),
    max_text_chars: int = typer.Option(20_000, help="Longest context or response accepted (413 above)."),
    max_reward_batch: int = typer.Option(8192, help="Most queries per OpenRLHF /get_reward request."),
):
    """Serve reward models over HTTP: /score, OpenRLHF-compatible /get_reward, /health, /ready."""
    from .reward.base import RewardModelError
    from .reward.serve import parse_models, serve as run_server

    try:
        models = parse_models(list(model))
        run_server(models, host=host, port=port, workers=workers, max_batch=max_batch,
                   max_text_chars=max_text_chars, max_reward_batch=max_reward_batch)  # fmt: skip
    except (RewardModelError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def simulate(
    users: int = typer.Option(2000, "--users", help="Simulated users (each lives --days days)."),
    days: Optional[int] = typer.Option(None, "--days", help="Days simulated (default: the config's, 42)."),
    seed: int = typer.Option(0, "--seed", help="Same seed and config, byte-identical output."),
    out_dir: Path = typer.Option(..., "--out", help="Writes OUT/logs (the data contract) and OUT/truth (hidden truth)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or parquet (the logs; the truth is always Parquet)."),
    config: Optional[Path] = typer.Option(None, "--config", help="World config YAML (default: the embedded world)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: CPU count); the output does not depend on it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT/logs and OUT/truth if they hold files."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Simulated users with ground truth: production-like logs for `rluf ingest OUT/logs`, truth apart."""
    from .sim.config import ConfigError, load_config
    from .sim.simulate import SimulateError, simulate as run_simulate

    if workers is not None and workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    try:
        world = load_config(config)
        summary = run_simulate(out_dir, users, days, seed, fmt, world, workers, overwrite)
    except (ConfigError, SimulateError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        out.print(
            f"simulated {summary['users']} users over {summary['days']} days: {summary['conversations']} conversations, "
            f"{summary['messages']} messages, {summary['reaction_events']} reaction events "
            f"in {summary['seconds']:.1f}s ({summary['conversations_per_s']:,.0f} conversations/s)"
        )
        out.print(f"logs: {summary['logs']}   truth: {summary['truth']}   next: rluf ingest {summary['logs']} --store STORE")


@app.command()
def annotate(
    store: Path = typer.Option(..., "--store", help="Store holding the ingested logs of a simulate run."),
    truth: Path = typer.Option(..., "--truth", help="DIR/truth of the same simulate run (the raters' ground truth)."),
    out_dir: Path = typer.Option(..., "--out", help="Writes OUT/examples, OUT/helpful, OUT/safe and OUT/summary.json."),
    n: int = typer.Option(20_000, "--n", help="Replies labelled per signal."),
    seed: int = typer.Option(0, "--seed"),
    kind: str = typer.Option("ngram", "--kind", help="Reward model kind for both models."),
):
    """Simulated raters label a sample of logged replies for helpfulness and safety; train both reward models."""
    from .reward.base import RewardModelError
    from .reward.data import ExampleError
    from .sim.annotate import AnnotationError, train_annotated_models

    try:
        with _progress("annotate + train helpful, safe"):
            result = train_annotated_models(store, truth, out_dir, n=n, seed=seed, kind=kind)
    except (AnnotationError, ExampleError, RewardModelError) as exc:
        _fail(str(exc))
    h, s = result["helpful"], result["safe"]
    out.print(f"helpful: r with true helpfulness {h['truth']['helpfulness_r']:.3f} (n={h['truth']['n']:,}) -> {h['dir']}")
    out.print(f"safe: AUROC {s['truth']['safe_auroc']:.3f} vs the true class (unsafe={s['truth']['unsafe']}) -> {s['dir']}")


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def abtest(ctx: typer.Context):
    """A/B analysis of logged traffic: lift with user-clustered CIs, per category, guardrails, SRM, MDE (--help)."""
    from .evaluate.abtest import main as abtest_main

    raise typer.Exit(abtest_main(list(ctx.args)))


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def hacking(ctx: typer.Context):
    """Reward-hacking monitor: what a candidate says more than the baseline, closings, drift, segments (--help)."""
    from .evaluate.hacking import main as hacking_main

    raise typer.Exit(hacking_main(list(ctx.args)))


@app.command()
def sft(
    store: Path = typer.Option(..., "--store", help="Store whose logged replies the policy learns."),
    out_dir: Path = typer.Option(..., "--out", help="Output Hugging Face model directory (safetensors, tokenizer, chat template)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of SFTConfig settings (docs/policy.md)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a setting, KEY=YAML_VALUE (repeatable), e.g. --set max_rows=5000."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
):
    """Supervised fine-tuning: the tiny policy (or --set init_model=DIR) learns the logged replies."""
    from .policy.data import PromptDataError
    from .policy.sft import SFTConfig, SFTError, run_sft
    from .sim.quality import reply_quality

    settings = _apply_sets(_read_config(config), overrides, "max_rows=5000")
    try:
        cfg = SFTConfig.from_dict(settings)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        p = Progress(TextColumn("[bold]sft"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True,
                     disable=not err.is_terminal)  # fmt: skip
        with p:
            bar = p.add_task("sft", total=None, info="")

            def progress(step, total, logs):
                p.update(bar, completed=step, total=total, info=f"loss {logs.get('loss', float('nan')):.3f}")

            metrics = run_sft(store, out_dir, cfg, progress=progress, quality=reply_quality)
    except (SFTError, PromptDataError, TypeError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(metrics, indent=1, default=str))
        return
    q = metrics.get("quality", {}).get("model", {})
    out.print(f"sft: {metrics['steps']} steps, val loss {metrics['val_loss'][0]:.3f} -> {metrics['val_loss'][-1]:.3f} "
              f"in {metrics['train_s']:.0f}s -> {out_dir}")  # fmt: skip
    if q:
        out.print(f"  sampled replies: well-formed {q.get('well_formed_share', float('nan')):.2f}, on topic "
                  f"{q['on_topic']['rate']:.2f}, correct {q['correct']['rate']:.2f}, love-bait {q['love_bait']['rate']:.3f}")  # fmt: skip


evaluate_app = typer.Typer(help="Evaluate candidate policies: offline on a fixed prompt set, online as a simulated A/B test.",
                           no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("offline", context_settings=_PASSTHROUGH, add_help_option=False)
def evaluate_offline(ctx: typer.Context):
    """Mean reward-model scores and judge pass rates of a policy on a fixed, category-stratified prompt set (--help)."""
    from .evaluate.offline import main as offline_main

    raise typer.Exit(offline_main(list(ctx.args)))


@evaluate_app.command("online", context_settings=_PASSTHROUGH, add_help_option=False)
def evaluate_online(ctx: typer.Context):
    """Serve two or more arms to simulated users, randomised by user; writes logs in the data contract (--help)."""
    from .evaluate.online import main as online_main

    raise typer.Exit(online_main(list(ctx.args)))


@evaluate_app.command("correlate", context_settings=_PASSTHROUGH, add_help_option=False)
def evaluate_correlate(ctx: typer.Context):
    """Offline-online correlation across candidates: Pearson r with bootstrap CIs and the scatter plot (--help)."""
    from .evaluate.correlate import main as correlate_main

    raise typer.Exit(correlate_main(list(ctx.args)))


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def report(ctx: typer.Context):
    """One self-contained HTML report of a run: signals, calibration, offline-online, lifts, hacking, trade-off (--help)."""
    from .report.html import main as report_main

    raise typer.Exit(report_main(list(ctx.args)))


@app.command()
def optimize(
    config: Path = typer.Option(..., "--config", help="YAML optimize config (docs/optimize.md): policy, prompts, out, reward_models, tasks..."),
    overrides: List[str] = typer.Option([], "--set", help="Override a top-level key, KEY=YAML_VALUE (repeatable), e.g. --set steps=10."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Optimize a policy with CGPO (CRPG or CRRAFT per task) against calibrated rewards inside a Mixture of Judges."""
    from .judges import JudgeError
    from .policy.cgpo import CGPOError, CGPOTrainer, load_config
    from .policy.rewards import RewardError
    from .reward.base import RewardModelError

    values = _apply_sets({}, overrides, "steps=10")
    try:
        cfg = load_config(config, values)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        p = Progress(TextColumn("[bold]optimize"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True,
                     disable=not err.is_terminal)  # fmt: skip
        with p:
            bar = p.add_task("optimize", total=cfg.steps, info="")

            def progress(step, total, logs):
                p.update(bar, completed=step, info=f"reward {logs.get('reward/mean', 0):.3f} kl {logs.get('kl', 0):.2f} "
                                                   f"judges {logs.get('judges/all/pass_rate', 0):.2f}")  # fmt: skip

            summary = CGPOTrainer(cfg, progress=progress).train()
    except (CGPOError, RewardError, RewardModelError, JudgeError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=1, default=str))
        return
    keys = sorted({k.split("/", 1)[1] for k in summary if k.startswith("before/")})
    out.print(f"optimized {cfg.steps} steps -> {cfg.out}  (judges {'enforced' if cfg.use_judges else 'logged only'})")
    for k in keys:
        if f"after/{k}" in summary:
            out.print(f"  {k:<40} {summary[f'before/{k}']:.4f} -> {summary[f'after/{k}']:.4f}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo writes everything."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of DemoConfig settings (docs/demo.md)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a setting, KEY=YAML_VALUE (repeatable), e.g. --set users=500."),
):
    """Run the whole loop on the embedded default world (the main job behind `make demo`)."""
    from .demo import DemoConfig, DemoError, run_demo

    settings = _apply_sets(_read_config(config), overrides, "users=500")
    try:
        cfg = DemoConfig.from_dict(settings)
    except DemoError as exc:
        _fail(str(exc))
    try:
        run_demo(out_dir, console=out, config=cfg)
    except Exception as exc:  # the demo is the front door: say what failed, where, and exit non-zero
        _fail(f"demo failed: {type(exc).__name__}: {exc}", code=1)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
