"""One self-contained HTML page of a run: signals, calibration, trade-off, offline vs online, A/B test, hacking.

    rluf report --run runs/demo [--out runs/demo/report.html] [--min-users 20] [--examples]

`write_report(run_dir)` reads what the other commands wrote under the run directory (every part is
optional; docs/report.md lists the files and the keys read) and writes one HTML file. The figures are
drawn here with matplotlib (Agg) and embedded as PNG data URIs; there is no external stylesheet,
script or image, so the file can be mailed or archived on its own. A missing input gives its section
a "not run: ..." note naming the command that produces it; a malformed one stops the report with an
error naming the file.

Privacy. The page shows aggregates only: each section reads named aggregate keys and never a user id,
an assignment or any other per-user list. A cell whose numbers rest on fewer than `min_users` users
shows "suppressed (< N users)"; where an input counts replies, prompts or examples instead of users,
the same threshold applies to that count and the note names the unit. Example reply texts appear only
with `examples=True`. Every string taken from an input is HTML-escaped.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import math
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %: Phi^-1(0.975)
TOP_PHRASES = 15  # rising phrases listed per hacking result
CHART_PHRASES = 10  # of which the chart draws the first
EXAMPLE_CHARS = 400  # longest example text shown (with --examples)
BLUE, GREY, RED, GREEN = "#1c7ed6", "#adb5bd", "#e03131", "#2f9e44"

# What writes each input (the "not run" notes and the error messages name it).
SIGNALS_CMD = "rluf signals --store STORE --out RUN/signals"
REWARD_CMD = "rluf train-rm --store STORE --signal love --kind KIND --out RUN/reward/KIND"
OFFLINE_CMD = ("rluf evaluate offline --store STORE --model love=DIR --model helpful=DIR "
               "--out RUN/evaluate/offline/NAME.json")
CORRELATE_CMD = "rluf evaluate correlate --offline FILES --abtest RUN/online/abtest.json --out RUN/correlate"
ABTEST_CMD = "rluf abtest --store AB_STORE --out RUN/online/abtest.json"
HACKING_CMD = "rluf hacking --baseline FILE --candidate FILE --out RUN/hacking/NAME.json"
SUMMARY_CMD = "rluf demo --out RUN"


class ReportError(ValueError):
    """Input the report cannot use (the message names the file and says how to fix it)."""


@dataclass
class Options:
    min_users: int = 20  # cells resting on fewer users (or replies, prompts, examples) are suppressed
    examples: bool = False  # show example reply texts carried by the inputs


# ====================================================================== HTML pieces


class Html(str):
    """Text that is already HTML (built here from escaped parts); any other str is escaped when placed."""


def esc(x: Any) -> str:
    return x if isinstance(x, Html) else html.escape(str(x), quote=True)


def table(head: list[str], rows: list[list[Any]]) -> Html:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return Html(f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>")


def para(text: Any, cls: str | None = None) -> Html:
    return Html(f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>")


def not_run(what: str, command: str) -> Html:
    return Html(f'<p class="notrun">not run: <code>{esc(command)}</code> writes {esc(what)}</p>')


def hidden(n_min: int, unit: str = "users") -> Html:
    return Html(f'<span class="suppressed">suppressed (&lt; {n_min} {esc(unit)})</span>')


def status(s: str) -> Html:
    cls = {"pass": "pass", "fail": "fail"}.get(s, "neutral")
    return Html(f'<span class="{cls}">{esc(s)}</span>')


def join(*parts: Any) -> Html:
    return Html("".join(esc(p) for p in parts))


# ====================================================================== numbers


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, d: int = 3) -> str:
    return f"{x:.{d}f}" if finite(x) else "n/a"


def signed(x: Any, d: int = 3) -> str:
    return f"{x:+.{d}f}" if finite(x) else "n/a"


def pct(x: Any, d: int = 1) -> str:
    return f"{100 * x:.{d}f} %" if finite(x) else "n/a"


def spct(x: Any, d: int = 1) -> str:
    return f"{100 * x:+.{d}f} %" if finite(x) else "n/a"


def count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else "n/a"


D1, D2, D4 = (partial(num, d=k) for k in (1, 2, 4))
S2, S4 = partial(signed, d=2), partial(signed, d=4)
PCT2 = partial(pct, d=2)


def interval(ci: Any, f: Callable[[Any], str] = num) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(finite(v) for v in ci):
        return ""
    return f" [{f(ci[0])}, {f(ci[1])}]"


def with_ci(x: Any, ci: Any, f: Callable[[Any], str] = num) -> str:
    return f(x) + (interval(ci, f) if finite(x) else "")


def se_ci(value: Any, se: Any) -> list[float] | None:
    """value +- 1.96 se, clipped at 0 (rates and mean probabilities are not negative)."""
    if not (finite(value) and finite(se)):
        return None
    return [max(0.0, value - Z95 * se), value + Z95 * se]


def too_few(n: Any, opt: Options) -> bool:
    """A count below the threshold (a missing count is not treated as small)."""
    return isinstance(n, (int, float)) and not isinstance(n, bool) and n < opt.min_users


# ====================================================================== figures


def new_figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def png(fig, alt: str) -> Html:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs the font lacks (emojis in phrase labels) draw as boxes
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return Html(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}"></figure>')


def errors(values: list[float], cis: list[Any]) -> np.ndarray:
    """Matplotlib's (2, n) error-bar array from [lo, hi] intervals (0 where an interval is missing)."""
    lo = [v - ci[0] if interval(ci) else 0.0 for v, ci in zip(values, cis)]
    hi = [ci[1] - v if interval(ci) else 0.0 for v, ci in zip(values, cis)]
    return np.clip(np.array([lo, hi], dtype=float), 0.0, None)


# ====================================================================== reading the run directory


class Run:
    """The run directory: reads its JSON inputs (each once) and records which were read."""

    def __init__(self, root: Path):
        self.root = root
        self.seen: dict[str, str] = {}  # relative path -> "read" | "not found"
        self._cache: dict[str, dict] = {}

    def json(self, rel: str) -> dict | None:
        """The JSON object at ROOT/rel, or None when the file does not exist."""
        if rel in self._cache:
            return self._cache[rel]
        path = self.root / rel
        if not path.exists():
            self.seen.setdefault(rel, "not found")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ReportError(f"{path}: not UTF-8 text; it should be the JSON file the pipeline wrote") from None
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                              "rerun the command that writes it, or remove the file") from None  # fmt: skip
        if not isinstance(data, dict):
            raise ReportError(f"{path}: holds a JSON {type(data).__name__}, not an object; "
                              "rerun the command that writes it, or remove the file")  # fmt: skip
        self.seen[rel] = "read"
        self._cache[rel] = data
        return data

    def each(self, rel_dir: str, pattern: str) -> list[tuple[str, dict]]:
        """(relative path, JSON object) of every file matching ROOT/rel_dir/pattern, sorted by path."""
        base = self.root / rel_dir
        if not base.is_dir():
            self.seen.setdefault(f"{rel_dir}/{pattern}", "not found")
            return []
        rels = sorted(p.relative_to(self.root).as_posix() for p in base.glob(pattern) if p.is_file())
        if not rels:
            self.seen.setdefault(f"{rel_dir}/{pattern}", "not found")
        return [(rel, self.json(rel)) for rel in rels]


@contextmanager
def reading(root: Path, rel: str, producer: str):
    """Turn a missing key or a wrong type inside an input into a ReportError naming the file."""
    try:
        yield
    except ReportError:
        raise
    except KeyError as exc:
        raise ReportError(f"{root / rel}: no key {exc.args[0]!r} where the report expects it; is it the output of "
                          f"`{producer}`? Rerun that, or remove the file") from None  # fmt: skip
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ReportError(f"{root / rel}: unexpected content ({type(exc).__name__}: {exc}); is it the output of "
                          f"`{producer}`? Rerun that, or remove the file") from None  # fmt: skip


# ====================================================================== sections


def headline_section(run: Run, opt: Options) -> Html:
    """summary.json: its `headline` mapping as a table of key -> value (nested keys joined with '.')."""
    d = run.json("summary.json")
    if d is None:
        return not_run("summary.json", SUMMARY_CMD)
    head = d.get("headline")
    if not isinstance(head, dict):
        return para("summary.json holds no `headline` mapping; its other keys are not shown here.", "note")
    rows, left_out = [], []
    for key, value in _flatten(head):
        if value is None:
            left_out.append(key)
        else:
            rows.append([key, value])
    out = [table(["quantity", "value"], rows) if rows else para("the headline is empty", "note")]
    if left_out:
        out.append(para(f"left out here (lists of text, or keys that name user ids): {', '.join(left_out)}; the "
                        "sections below show what they summarise, with the small cells suppressed", "note"))  # fmt: skip
    return join(*out)


def _id_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return "user_id" in k or "userid" in k or "assignment" in k


def _scalar(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flatten(d: dict, prefix: str = ""):
    """(dotted key, shown value) for every leaf; the value is None for a leaf the headline leaves out: an
    id-like key, or a list that is not a few numbers (an interval)."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if _id_key(str(k)):
            yield key, None
        elif isinstance(v, dict):
            yield from _flatten(v, key + ".")
        elif isinstance(v, list):
            few_numbers = len(v) <= 4 and all(finite(x) or x is None for x in v)
            yield key, ("[" + ", ".join(_scalar(x) for x in v) + "]") if few_numbers else None
        else:
            yield key, _scalar(v)


# ---------------------------------------------------------------------- signals vs retention


def one_file(run: Run, opt: Options, rel: str, command: str, producer: str, render) -> Html:
    """A section drawn from one JSON file of the run: `render(data, opt)`, or the "not run" note when it is
    missing; a key or type the section cannot read is an error naming the file and its producer."""
    d = run.json(rel)
    if d is None:
        return not_run(rel, command)
    with reading(run.root, rel, producer):
        return render(d, opt)


def signals_section(run: Run, opt: Options) -> Html:
    return one_file(run, opt, "signals/signals.json", SIGNALS_CMD, "rluf signals", _signals)


def _signals(d: dict, opt: Options) -> Html:
    start, end = d.get("config", {}).get("retention_days", [14, 28])
    base = d.get("base_retention") or {}
    intro = (f"Per reaction: Pearson r of a user's reaction rate with retention (active on days {start}-"
             f"{end - 1} after first seen) and the logistic coefficient per sd of the rate, each with a user-bootstrap "
             f"95 % CI. Base retention {with_ci(base.get('rate'), base.get('ci95'), pct)} "
             f"({count(base.get('k'))} of {count(base.get('n'))} users). Correlation is not causation.")  # fmt: skip
    rows, bars = [], []
    for name, e in d["signals"].items():
        n = e["n_users"]
        if too_few(n, opt):
            rows.append([name, count(n), *[hidden(opt.min_users)] * 5, ""])
            continue
        r, c = e["correlation"], e["logit_coef_per_sd"]
        rows.append([name, count(n), count(e.get("n_users_with_reaction")), with_ci(r["value"], r["ci95"], signed),
                     with_ci(c["value"], c["ci95"], signed), _retention(e.get("retention_with_reaction"), opt),
                     _retention(e.get("retention_without_reaction"), opt), e.get("note") or ""])  # fmt: skip
        if finite(r["value"]):
            bars.append((name, r["value"], r["ci95"]))
    out = [para(intro)]
    if bars:
        out.append(_signals_chart(bars, d["signals"]))
    out.append(table(["reaction", "n users", "users with it", "Pearson r [95 % CI]", "logit coef / sd [95 % CI]",
                      "retention with it", "retention without it", "note"], rows))  # fmt: skip
    return join(*out)


def _retention(r: dict | None, opt: Options) -> Any:
    if not r:
        return "n/a"
    if too_few(r.get("n"), opt):
        return hidden(opt.min_users)
    return f"{with_ci(r.get('rate'), r.get('ci95'), pct)} (n={count(r.get('n'))})"


def _signals_chart(bars: list, signals: dict) -> Html:
    names = [b[0] for b in bars]
    values = [b[1] for b in bars]
    fig = new_figure(max(4.0, 1.1 * len(bars) + 2), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(bars))
    ax.bar(x, values, color=[BLUE if v >= 0 else RED for v in values], width=0.6)
    ax.errorbar(x, values, yerr=errors(values, [b[2] for b in bars]), fmt="none", ecolor="#212529", capsize=4)
    ax.axhline(0, color="#495057", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_ylabel("Pearson r with retention")
    n = next(iter(signals.values()))["n_users"]
    ax.set_title(f"reaction rate vs retention, n = {n:,} users (95 % bootstrap CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return png(fig, "bar chart of the Pearson r of each reaction rate with retention")


# ---------------------------------------------------------------------- calibration


def calibration_section(run: Run, opt: Options) -> Html:
    files = run.each("reward", "*/metrics.json")
    if not files:
        return not_run("reward/<kind>/metrics.json", REWARD_CMD)
    rows, figures, details = [], [], []
    for rel, d in files:
        with reading(run.root, rel, "rluf train-rm"):
            kind = str(d.get("kind") or Path(rel).parent.name)
            signal = str(d.get("signal") or "?")
            t = d["test"]
            users = t.get("clusters")
            if too_few(users, opt):
                rows.append([kind, f"P[{signal}]", count(t["n"]), count(users), *[hidden(opt.min_users)] * 5])
                continue
            rows.append([kind, f"P[{signal}]", count(t["n"]), count(users), count(t.get("positives")),
                         with_ci(t["auroc"], t.get("auroc_ci95")), with_ci(t["ece"], t.get("ece_ci95"), D4),
                         with_ci(t["brier"], t.get("brier_ci95"), D4),
                         with_ci(t["length_r"], t.get("length_r_ci95"), signed)])  # fmt: skip
            bins = t["reliability"]
            kept = [b for b in bins if b["n"] >= opt.min_users]
            if kept:
                figures.append(_reliability_chart(kind, signal, t, kept, len(bins) - len(kept), opt))
            details.append(_bins_table(kind, signal, bins, opt))
    head = ["model", "predicts", "test examples", "test users", "positives", "AUROC [95 % CI]", "ECE [95 % CI]",
            "Brier [95 % CI]", "length r [95 % CI]"]  # fmt: skip
    intro = para("Each reward model on its test split (held-out later turns; no test user is in training). "
                 "Intervals: bootstrap over users for AUROC, ECE and Brier, Fisher z for the length correlation. "
                 "Reliability bins are "
                 f"message-level; bins with fewer than {opt.min_users} examples are suppressed.")  # fmt: skip
    return join(intro, Html('<div class="figures">'), *figures, Html("</div>"), table(head, rows), *details)


def _reliability_chart(kind: str, signal: str, t: dict, kept: list[dict], n_suppressed: int, opt: Options) -> Html:
    fig = new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    mp = [b["mean_p"] for b in kept]
    rate = [b["rate"] for b in kept]
    top = max(max(b["rate_hi"] for b in kept), max(mp), 1e-3)
    lim = min(1.0, top * 1.1)
    ax.plot([0, lim], [0, lim], color="grey", lw=1, ls="--", label="perfect calibration")
    ax.errorbar(mp, rate, yerr=errors(rate, [[b["rate_lo"], b["rate_hi"]] for b in kept]), fmt="o-", ms=4,
                capsize=2, color=BLUE, label="observed rate (Wilson 95 %)")  # fmt: skip
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed positive rate")
    extra = f"; {n_suppressed} bin(s) < {opt.min_users} examples not drawn" if n_suppressed else ""
    ax.set_title(f"{kind} P[{signal}]: test n={t['n']:,}, ECE={num(t['ece'], 4)}{extra}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig, f"reliability diagram of the {kind} model")


def _bins_table(kind: str, signal: str, bins: list[dict], opt: Options) -> Html:
    rows = []
    for b in bins:
        label = f"{b['bin_lo']:.3f}-{b['bin_hi']:.3f}"
        if b["n"] < opt.min_users:
            rows.append([label, hidden(opt.min_users, "examples"), hidden(opt.min_users, "examples"),
                         hidden(opt.min_users, "examples")])  # fmt: skip
        else:
            rows.append([label, count(b["n"]), num(b["mean_p"], 4),
                         with_ci(b["rate"], [b["rate_lo"], b["rate_hi"]], D4)])  # fmt: skip
    body = table(["predicted bin", "examples", "mean predicted", "observed rate [Wilson 95 %]"], rows)
    return Html(f"<details><summary>reliability bins of {esc(kind)} P[{esc(signal)}]</summary>{body}</details>")


# ---------------------------------------------------------------------- trade-off front (offline)


def tradeoff_section(run: Run, opt: Options) -> Html:
    files = run.each("evaluate/offline", "*.json")
    if not files:
        return not_run("evaluate/offline/<candidate>.json", OFFLINE_CMD)
    cands = []
    for rel, d in files:
        with reading(run.root, rel, "rluf evaluate offline"):
            cands.append(_candidate(rel, d))
    shown = [c for c in cands if not too_few(c["n_prompts"], opt)]
    plotted = [c for c in shown if "love" in c["rewards"] and "helpful" in c["rewards"]]
    front = pareto([(c["rewards"]["love"]["mean"], c["rewards"]["helpful"]["mean"]) for c in plotted])
    on_front = {c["name"] for c, f in zip(plotted, front) if f}
    rewards = _ordered({k for c in cands for k in c["rewards"]}, ("love", "helpful", "safe"))
    judges = _ordered({k for c in cands for k in c["judges"]}, ())
    judges = [j for j in judges if j != "all"] + (["all"] if any("all" in c["judges"] for c in cands) else [])
    rows = []
    for c in cands:
        if c not in shown:
            blank = [hidden(opt.min_users, "prompts")] * (len(rewards) + len(judges) + 2)
            rows.append([c["name"], count(c["n_prompts"]), *blank])
            continue
        cells = [with_ci(c["rewards"][k]["mean"], c["rewards"][k].get("ci95")) if k in c["rewards"] else "n/a"
                 for k in rewards]  # fmt: skip
        cells += [with_ci(c["judges"][j]["pass_rate"], c["judges"][j].get("ci95"), pct) if j in c["judges"] else "n/a"
                  for j in judges]  # fmt: skip
        words = c["words"]
        on = "yes" if c["name"] in on_front else ("no" if c in plotted else "n/a")
        rows.append([c["name"], count(c["n_prompts"]), *cells, with_ci(words.get("mean"), words.get("ci95"), D1), on])
    head = ["candidate", "prompts", *[f"P[{k}] [95 % CI]" for k in rewards],
            *[f"judge {j} pass [95 % CI]" for j in judges], "words / reply [95 % CI]", "Pareto-optimal"]  # fmt: skip
    intro = para("Mean reward-model probabilities of each candidate's replies on the same fixed prompt set "
                 "(95 % CI over prompts), judge pass rates (Wilson 95 % CI over replies) and reply length. A candidate "
                 "is Pareto-optimal when no other has a higher P[love] and P[helpful] at once. Candidates evaluated on "
                 f"fewer than {opt.min_users} prompts are suppressed.")  # fmt: skip
    out = [intro]
    if plotted:
        out.append(_tradeoff_chart(plotted, on_front))
    else:
        out.append(para("no shown candidate has both rewards/love and rewards/helpful; the front is not drawn "
                        "(evaluate with --model love=DIR --model helpful=DIR)", "note"))  # fmt: skip
    out.append(table(head, rows))
    return join(*out)


def _ordered(names: set[str], first: tuple[str, ...]) -> list[str]:
    return [n for n in first if n in names] + sorted(names - set(first))


def _candidate(rel: str, d: dict) -> dict:
    rewards = {k: {"mean": v["p"]["mean"], "ci95": v["p"].get("ci95")} for k, v in d["rewards"].items()}
    return {"name": str(d.get("candidate") or Path(rel).stem), "n_prompts": d["n_prompts"], "rewards": rewards,
            "judges": dict(d.get("judges") or {}), "words": dict(d.get("words") or {})}  # fmt: skip


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y): True when no other point is at least as large on both and larger on one."""
    return [not any(a >= x and b >= y and (a > x or b > y) for a, b in points) for x, y in points]


def _tradeoff_chart(cands: list[dict], on_front: set[str]) -> Html:
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    for front in (False, True):
        sel = [c for c in cands if (c["name"] in on_front) == front]
        if not sel:
            continue
        x = [c["rewards"]["love"]["mean"] for c in sel]
        y = [c["rewards"]["helpful"]["mean"] for c in sel]
        ax.errorbar(x, y, xerr=errors(x, [c["rewards"]["love"]["ci95"] for c in sel]),
                    yerr=errors(y, [c["rewards"]["helpful"]["ci95"] for c in sel]), fmt="o",
                    color=RED if front else GREY, ecolor="#ced4da", capsize=2, ms=6,
                    label="Pareto-optimal" if front else "dominated")  # fmt: skip
    front_pts = sorted((c["rewards"]["love"]["mean"], c["rewards"]["helpful"]["mean"]) for c in cands
                       if c["name"] in on_front)  # fmt: skip
    if len(front_pts) > 1:
        ax.plot(*zip(*front_pts), color=RED, lw=1, alpha=0.6)
    for c in cands:
        ax.annotate(c["name"], (c["rewards"]["love"]["mean"], c["rewards"]["helpful"]["mean"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("mean P[love] (95 % CI over prompts)")
    ax.set_ylabel("mean P[helpful] (95 % CI over prompts)")
    ax.set_title(f"trade-off front across {len(cands)} candidates", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig, "scatter of mean P[love] against mean P[helpful] per candidate, Pareto front marked")


# ---------------------------------------------------------------------- offline vs online


def correlate_section(run: Run, opt: Options) -> Html:
    return one_file(run, opt, "correlate/correlation.json", CORRELATE_CMD, "rluf evaluate correlate", _correlate)


def _correlate(d: dict, opt: Options) -> Html:
    n = d["n_candidates"]
    lines = [(f"Pearson r = {signed(d['pearson_r'])}{interval(d.get('ci95'), signed)} over n = {n} candidates "
              "(95 % percentile bootstrap over candidates)")]  # fmt: skip
    if interval(d.get("fisher_ci95")):
        lines.append(f"Fisher z 95 % CI{interval(d['fisher_ci95'], signed)}")
    if interval(d.get("measurement_ci95")):
        lines.append(f"within the points' own measurement error{interval(d['measurement_ci95'], signed)}")
    if finite(d.get("spearman_rho")):
        lines.append(f"Spearman rho {signed(d['spearman_rho'])}")
    out = [para("; ".join(lines) + ".")]
    if d.get("enough_candidates") is False:
        out.append(para(f"fewer than {d.get('min_candidates')} candidates: the interval is wide by construction", "note"))
    rows, drawn, small = [], [], 0
    for p in d["points"]:
        users = p.get("online_users")
        offline = with_ci(p["offline"], p.get("offline_ci95"), D4)
        if too_few(users, opt):
            small += 1
            rows.append([p["candidate"], offline, hidden(opt.min_users), count(users), hidden(opt.min_users)])
            continue
        drawn.append(p)
        rows.append([p["candidate"], offline, with_ci(p["online"], p.get("online_ci95"), D4), count(users),
                     count(p.get("online_messages"))])  # fmt: skip
    if drawn:
        out.append(_correlate_chart(d, drawn))
    if small:
        out.append(para(f"{small} candidate(s) with fewer than {opt.min_users} online users are not drawn; r and the "
                        "line use all points.", "note"))  # fmt: skip
    out.append(table(["candidate", "offline score [95 % CI]", "online rate [95 % CI]", "online users", "online replies"],
                     rows))  # fmt: skip
    return join(*out)


def _correlate_chart(d: dict, pts: list[dict]) -> Html:
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    x = [p["offline"] for p in pts]
    y = [p["online"] for p in pts]
    ax.errorbar(x, y, xerr=errors(x, [p.get("offline_ci95") for p in pts]),
                yerr=errors(y, [p.get("online_ci95") for p in pts]), fmt="o", color=BLUE, ecolor="#a5d8ff",
                capsize=2, ms=5)  # fmt: skip
    for p in pts:
        ax.annotate(p["candidate"], (p["offline"], p["online"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    fit = d.get("fit") or {}
    if finite(fit.get("slope")) and finite(fit.get("intercept")):
        xs = np.array([min(p["offline"] for p in d["points"]), max(p["offline"] for p in d["points"])])
        ax.plot(xs, fit["intercept"] + fit["slope"] * xs, color="#495057", lw=1, ls="--", label="least-squares line")
        ax.legend(fontsize=8)
    ax.set_xlabel("offline score (mean over the prompt set, 95 % CI)")
    ax.set_ylabel("online rate (per reply, 95 % CI)")
    ax.set_title(f"offline vs online: r = {signed(d['pearson_r'])}{interval(d.get('ci95'), signed)}, "
                 f"n = {d['n_candidates']} candidates", fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    return png(fig, "scatter of the offline score against the online rate per candidate, with the fitted line")


# ---------------------------------------------------------------------- A/B test


def abtest_section(run: Run, opt: Options) -> Html:
    return one_file(run, opt, "online/abtest.json", ABTEST_CMD, "rluf abtest", _abtest)


def _metric_format(kind: str) -> tuple[Callable[[Any], str], Callable[[Any], str]]:
    """(value, difference) formats: mean probabilities as numbers, rates as % and their differences as points."""
    return (D4, S4) if kind == "score" else (PCT2, _pts)


def _abtest(d: dict, opt: Options) -> Html:
    control, arms = d["control"], d["arms"]
    out = [para(f"Users are randomised by arm; control: {control}. Lifts are relative (treatment / control - 1) "
                "with user-clustered delta-method 95 % CIs and two-sided p-values; MDE is the relative lift "
                "detectable with power 0.8 at alpha 0.05.")]  # fmt: skip
    arm_rows = []
    for arm, a in arms.items():
        small = too_few(a["users"], opt)
        arm_rows.append([arm + (" (control)" if arm == control else ""), count(a["users"]),
                         hidden(opt.min_users) if small else count(a.get("assistant_messages")),
                         hidden(opt.min_users) if small else count(a.get("conversations"))])  # fmt: skip
    out.append(table(["arm", "users", "replies", "conversations"], arm_rows))
    out.append(_srm(d.get("srm")))
    rows, lifts = [], []
    for name, m in d["metrics"].items():
        f, fd = _metric_format(m.get("kind", "reaction"))
        for arm, a in m["arms"].items():
            if too_few(a.get("users"), opt):
                rows.append([name, arm, count(a.get("users")), *[hidden(opt.min_users)] * 6])
                continue
            rate = with_ci(a.get("value"), se_ci(a.get("value"), a.get("se")), f)
            cmp = m["vs_control"].get(arm) if arm != control else None
            if arm == control or cmp is None:
                rows.append([name, arm, count(a.get("users")), count(a.get("messages")), rate, "", "", "", ""])
                continue
            if too_few(cmp.get("control_users"), opt):
                rows.append([name, arm, count(a.get("users")), count(a.get("messages")), rate,
                             *[hidden(opt.min_users)] * 4])  # fmt: skip
                continue
            lift = with_ci(cmp.get("lift"), cmp.get("ci95"), spct)
            boot = (cmp.get("bootstrap") or {}).get("ci95")
            if interval(boot):
                lift += f" (bootstrap{interval(boot, spct)})"
            rows.append([name, arm, count(a.get("users")), count(a.get("messages")), rate, lift,
                         num(cmp.get("p_value"), 4), with_ci(cmp.get("diff"), cmp.get("diff_ci95"), fd),
                         pct(cmp.get("mde_relative"))])  # fmt: skip
            if m.get("kind") == "reaction" and finite(cmp.get("lift")):
                lifts.append((name, arm, cmp["lift"], cmp.get("ci95")))
    if lifts:
        out.append(_lift_chart(lifts))
    out.append(table(["metric", "arm", "users", "replies", "rate or mean [95 % CI]", "relative lift [95 % CI]", "p",
                      "difference [95 % CI]", "MDE (relative)"], rows))  # fmt: skip
    out.append(Html("<h3>Guardrails</h3>"))
    out.append(_guardrails(d, opt))
    return join(*out)


def _srm(srm: dict | None) -> Html:
    if not srm:
        return para("no sample-ratio test in the input", "note")
    obs = ", ".join(f"{arm} {count(n)} (expected {num(srm['expected_users'].get(arm), 1)})"
                    for arm, n in srm["observed_users"].items())  # fmt: skip
    verdict = "FLAGGED: assignment or logging lost users unevenly; do not trust the lifts until the cause is found" \
        if srm.get("flagged") else "not flagged"  # fmt: skip
    return para(f"Sample-ratio mismatch: users per arm {obs}; chi2 = {num(srm.get('chi2'), 2)}, df = {srm.get('df')}, "
                f"p = {num(srm.get('p_value'), 4)} (flagged below {srm.get('threshold')}): {verdict}.")  # fmt: skip


def _guardrails(d: dict, opt: Options) -> Html:
    rows = []
    control_small = too_few(d["arms"][d["control"]]["users"], opt)
    for arm, gs in (d.get("guardrails") or {}).items():
        small = control_small or too_few(d["arms"].get(arm, {}).get("users"), opt)
        for key, g in gs.items():
            if small:
                rows.append([arm, key, g.get("rule", ""), hidden(opt.min_users), hidden(opt.min_users), ""])
                continue
            rows.append([arm, key, g.get("rule", ""), with_ci(g.get("estimate"), g.get("ci95"), spct),
                         status(str(g.get("status"))), g.get("reason") or ""])  # fmt: skip
    if not rows:
        return para("no guardrails in the input", "note")
    return table(["arm", "guardrail", "rule", "estimate [95 % CI]", "status", "reason"], rows)


def _lift_chart(lifts: list[tuple]) -> Html:
    fig = new_figure(6.4, 0.45 * len(lifts) + 1.2)
    ax = fig.add_subplot()
    labels = [f"{name} ({arm})" for name, arm, _, _ in lifts]
    values = [100 * v for _, _, v, _ in lifts]
    cis = [[100 * c[0], 100 * c[1]] if interval(c) else None for *_, c in lifts]
    y = np.arange(len(lifts))[::-1]
    ax.barh(y, values, color=[BLUE if v >= 0 else RED for v in values], height=0.6)
    ax.errorbar(values, y, xerr=errors(values, cis), fmt="none", ecolor="#212529", capsize=3)
    ax.axvline(0, color="#495057", lw=0.8)
    ax.set_yticks(y, labels)
    ax.set_xlabel("relative lift vs control, % (95 % CI)")
    ax.set_title("reaction-rate lifts per treatment arm", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return png(fig, "horizontal bar chart of the relative lift of each reaction rate per treatment arm")


# ---------------------------------------------------------------------- lift by category


def category_section(run: Run, opt: Options) -> Html:
    return one_file(run, opt, "online/abtest.json", ABTEST_CMD, "rluf abtest", _categories)


def _categories(d: dict, opt: Options) -> Html:
    reactions = d.get("reactions") or []
    metric = "love" if "love" in reactions else (reactions[0] if reactions else None)
    cats = d["by_category"]
    if metric is None or not cats:
        return para("the A/B result has no reactions or no categories", "note")
    rows, cells = [], []  # cells: (category, arm, lift or None, ci, shown)
    for cat, by_arm in cats.items():
        for arm, c in by_arm.items():
            users = f"{count(c.get('users'))} / {count(c.get('control_users'))}"
            if c.get("status") != "ok" or too_few(c.get("users"), opt) or too_few(c.get("control_users"), opt):
                rows.append([cat, arm, users, *[hidden(opt.min_users)] * 4])
                cells.append((cat, arm, None, None, False))
                continue
            m = c["metrics"][metric]
            rates = f"{pct(m.get('value'), 2)} vs {pct(m.get('control_value'), 2)}"
            rows.append([cat, arm, users, f"{count(c.get('messages'))} / {count(c.get('control_messages'))}", rates,
                         with_ci(m.get("lift"), m.get("ci95"), spct), num(m.get("p_value"), 4)])  # fmt: skip
            cells.append((cat, arm, m.get("lift"), m.get("ci95"), True))
    intro = para(f"The {metric} lift of each treatment arm against the control on the replies of each conversation "
                 f"category (user-clustered 95 % CI). A cell with fewer than {opt.min_users} users in either arm is "
                 "suppressed. The chart shows up to five final arms (checkpoints NAME@STEP are in the table), its axis "
                 "fitted to the estimates, so long intervals run off it. The p-values are not corrected for the many "
                 "cells.")  # fmt: skip
    head = ["category", "arm", "users (arm / control)", "replies (arm / control)", f"{metric} rate (arm vs control)",
            f"{metric} lift [95 % CI]", "p"]  # fmt: skip
    return join(intro, _category_chart(cells, metric, opt), table(head, rows))


def _category_chart(cells: list[tuple], metric: str, opt: Options) -> Html:
    cats = list(dict.fromkeys(c[0] for c in cells))
    arms = list(dict.fromkeys(c[1] for c in cells))
    finals = [a for a in arms if "@" not in a]  # checkpoints (NAME@STEP) stay in the table, not the chart
    arms = (finals or arms)[:5]
    cells = [c for c in cells if c[1] in arms]
    lifts = [100 * c[2] for c in cells if c[4] and finite(c[2])]
    fig = new_figure(7.0, 0.38 * len(cats) * max(1, len(arms)) + 1.4)
    ax = fig.add_subplot()
    h = 0.8 / len(arms)
    colors = [BLUE, "#f08c00", "#7048e8", GREEN, RED]
    for k, arm in enumerate(arms):
        for cat, a, lift, ci, shown in cells:
            if a != arm:
                continue
            y = len(cats) - 1 - cats.index(cat) + 0.4 - h * (k + 0.5)
            if not shown:
                ax.text(0, y, f" suppressed (< {opt.min_users} users)", va="center", fontsize=7, color="#868e96",
                        style="italic")  # fmt: skip
            elif not finite(lift):
                ax.text(0, y, " n/a (control rate 0)", va="center", fontsize=7, color="#868e96")
            else:
                v = 100 * lift
                ax.barh(y, v, height=h * 0.9, color=colors[k % len(colors)], label=arm)
                if interval(ci):
                    ax.errorbar([v], [y], xerr=errors([v], [[100 * ci[0], 100 * ci[1]]]), fmt="none",
                                ecolor="#212529", capsize=2)  # fmt: skip
    ax.axvline(0, color="#495057", lw=0.8)
    if lifts:  # intervals of small cells run far; the axis follows the estimates
        ax.set_xlim(max(-100.0, min(lifts) * 1.6 - 20), max(lifts) * 1.6 + 20)
    ax.set_yticks(np.arange(len(cats))[::-1], cats)
    ax.set_ylim(-0.6, len(cats) - 0.4)
    ax.set_xlabel(f"{metric} lift vs control, % (95 % CI)")
    ax.set_title(f"{metric} lift by category", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return png(fig, f"horizontal bar chart of the {metric} lift per category and treatment arm")


# ---------------------------------------------------------------------- reward hacking

CLOSING_NAMES = {"closing_judge": "closing statement (love-bait judge, last sentence)",
                 "closing_rule": "closing statement (generic sign-off rule)",
                 "love_bait_anywhere": "love bait anywhere in the reply"}  # fmt: skip
STYLE_NAMES = {"words": "words per reply", "emojis": "emojis per reply", "exclamations": "'!' per reply"}


def hacking_section(run: Run, opt: Options) -> Html:
    files = run.each("hacking", "*.json")
    if not files:
        return not_run("hacking/<candidate>.json", HACKING_CMD)
    intro = para("What each candidate says more than the baseline, found without a list of bad phrases. Rates carry "
                 "Wilson 95 % CIs, differences Newcombe CIs, ratios Katz CIs; q is the Benjamini-Hochberg q-value. "
                 f"Everything here counts replies: rows resting on fewer than {opt.min_users} replies are suppressed. "
                 + ("Example replies are shown (--examples)." if opt.examples else
                    "Example replies are not shown (rerun with --examples to include them)."))  # fmt: skip
    parts = [intro]
    for rel, d in files:
        with reading(run.root, rel, "rluf hacking"):
            parts.append(_hacking(rel, d, opt))
    return join(*parts)


def _hacking(rel: str, d: dict, opt: Options) -> Html:
    pol = d.get("policies") or {}
    name = str(pol.get("candidate") or Path(rel).stem)
    base = str(pol.get("control") or "baseline")
    n_b, n_c = d["n"]["baseline"], d["n"]["candidate"]
    out = [Html(f"<h3>{esc(name)} vs {esc(base)}</h3>"),
           para(f"{count(n_b)} baseline and {count(n_c)} candidate replies; {d.get('note') or ''}")]
    if too_few(n_b, opt) or too_few(n_c, opt):
        out.append(para(join("all numbers ", hidden(opt.min_users, "replies")), "note"))
        return join(*out)
    rows = []
    for key, label in CLOSING_NAMES.items():
        e = d["closing"].get(key)
        if e:
            rows.append([label, *_rate_cells(e)])
    out.append(table(["closing statements", "baseline rate [95 % CI]", "candidate rate [95 % CI]",
                      "difference [95 % CI]", "ratio [95 % CI]", "p (Holm)"], rows))  # fmt: skip
    rows = []
    for key, label in STYLE_NAMES.items():
        e = d["style"].get(key)
        if e:
            rows.append([label, with_ci(e["baseline"]["mean"], e["baseline"].get("ci"), D2),
                         with_ci(e["candidate"]["mean"], e["candidate"].get("ci"), D2),
                         with_ci(e.get("diff"), e.get("diff_ci"), S2), with_ci(e.get("ratio"), e.get("ratio_ci"), D2),
                         num(e.get("p_holm"), 4)])  # fmt: skip
    if d["style"].get("flattering_opener"):
        rows.append(["flattering opener (share)", *_rate_cells(d["style"]["flattering_opener"])])
    out.append(table(["length and style drift", "baseline [95 % CI]", "candidate [95 % CI]", "difference [95 % CI]",
                      "ratio [95 % CI]", "p (Holm)"], rows))  # fmt: skip
    clustered = [f"{CLOSING_NAMES[k]}: ratio {with_ci(c.get('ratio'), c.get('ratio_ci'), D2)}, p {num(c.get('p'), 4)}"
                 for k in CLOSING_NAMES if (c := (d["closing"].get(k) or {}).get("prompt_clustered")) and c.get("ratio")]
    if clustered:
        out.append(para("Clustered by prompt (replies to one prompt are not independent): " + "; ".join(clustered) + "."))
    out.append(_phrases(d["phrases"], opt))
    out.append(_divergence(d.get("divergence"), opt))
    out.append(_segments(d.get("segments"), d.get("flags") or [], opt))
    return join(*out)


def _divergence(dv: dict | None, opt: Options) -> Html:
    """The units the optimised reward pays for while the quality score docks them (the hacking suspects)."""
    if not dv:
        return para("no reward-quality divergence: the candidate's replies carried no scores", "note")
    r, q = str(dv["reward"]), str(dv["quality"])  # plain text: para and table escape it
    rows = []
    for kind in ("sentences", "phrases"):
        for e in dv[kind]["units"][:TOP_PHRASES // 3]:
            b, c = e["baseline"], e["candidate"]
            if c["k"] < opt.min_users:
                rows.append([kind[:-1], hidden(opt.min_users, "replies"), *[""] * 5])
                continue
            rows.append([kind[:-1], e.get("surface") or e["text"], f"{pct(b['share'], 2)} -> {pct(c['share'], 2)}",
                         with_ci(e["reward_gap"], e["reward_gap_ci"], S4), with_ci(e["quality_gap"], e["quality_gap_ci"], S4),
                         num(e["q"], 4), "yes" if e["significant"] else "no"])  # fmt: skip
    sig = {k: dv[k]["significant"] for k in ("sentences", "phrases")}
    intro = para(f"Hacking suspects: what {r} pays for while {q} docks it. {count(sig['sentences'])} sentence(s) and "
                 f"{count(sig['phrases'])} phrase(s) diverge significantly (q < 0.05). {dv['note']}")  # fmt: skip
    head = ["unit", "text", "baseline -> candidate rate", f"{r} gap [95 % CI]", f"{q} gap [95 % CI]", "q", "significant"]
    return join(intro, table(head, rows) if rows else para("no unit tested", "note"))


def _pts(x: Any) -> str:
    return f"{100 * x:+.2f} pts" if finite(x) else "n/a"


def _rate_cells(e: dict) -> list[str]:
    b, c = e["baseline"], e["candidate"]
    return [f"{with_ci(b['rate'], b.get('ci'), PCT2)} ({count(b['k'])}/{count(b['n'])})",
            f"{with_ci(c['rate'], c.get('ci'), PCT2)} ({count(c['k'])}/{count(c['n'])})",
            with_ci(e.get("diff"), e.get("diff_ci"), _pts), with_ci(e.get("ratio"), e.get("ratio_ci"), D2),
            num(e.get("p_holm", e.get("p")), 4)]  # fmt: skip


def _example(e: dict) -> Html:
    """The example texts a phrase entry carries (`example` {reply, prompt} or an `examples` list), escaped."""
    texts = []
    one = e.get("example")
    if isinstance(one, dict):
        if one.get("prompt"):
            texts.append(f"prompt: {one['prompt']}")
        if one.get("reply"):
            texts.append(f"reply: {one['reply']}")
    for x in e.get("examples") or []:
        texts.append(str(x.get("reply", "")) if isinstance(x, dict) else str(x))
    return Html("".join(f'<div class="example">{esc(t[:EXAMPLE_CHARS])}</div>' for t in texts if t))


def _phrases(p: dict, opt: Options) -> Html:
    entries = p.get("increased") or []
    sig = (p.get("significant") or {}).get("increased")
    intro = para(f"Top rising phrases: {count(sig)} of {count(p.get('tested'))} tested n-grams rose significantly "
                 f"(q < 0.05); the first {min(TOP_PHRASES, len(entries))} risers. A phrase held by fewer than "
                 f"{opt.min_users} replies (both sides) is suppressed.")  # fmt: skip
    rows, drawn = [], []
    for e in entries[:TOP_PHRASES]:
        b, c = e["baseline"], e["candidate"]
        if b["k"] + c["k"] < opt.min_users:
            rows.append([hidden(opt.min_users, "replies"), *[""] * 6] + ([""] if opt.examples else []))
            continue
        text = e.get("surface") or e["text"]
        row = [text, f"{pct(b['share'], 2)} ({count(b['k'])})", f"{pct(c['share'], 2)} ({count(c['k'])})",
               with_ci(e.get("ratio"), e.get("ratio_ci"), D2), num(e.get("q"), 4),
               "yes" if e.get("significant") else "no", pct(e.get("closing_share"), 0)]  # fmt: skip
        if opt.examples:
            row.append(_example(e))
        rows.append(row)
        if len(drawn) < CHART_PHRASES:
            drawn.append((text, b["share"], c["share"]))
    head = ["phrase", "baseline rate (replies)", "candidate rate (replies)", "ratio [95 % CI]", "q", "significant",
            "closes the reply"] + (["example"] if opt.examples else [])  # fmt: skip
    out = [intro]
    if drawn:
        out.append(_phrase_chart(drawn))
    out.append(table(head, rows) if rows else para("no phrase rose", "note"))
    return join(*out)


def _phrase_chart(drawn: list[tuple[str, float, float]]) -> Html:
    fig = new_figure(6.4, 0.42 * len(drawn) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(drawn))[::-1]
    ax.barh(y + 0.2, [100 * b for _, b, _ in drawn], height=0.4, color=GREY, label="baseline")
    ax.barh(y - 0.2, [100 * c for *_, c in drawn], height=0.4, color=RED, label="candidate")
    ax.set_yticks(y, [t if len(t) <= 40 else t[:39] + "..." for t, _, _ in drawn])
    ax.set_xlabel("replies holding the phrase, %")
    ax.set_title("top rising phrases", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return png(fig, "bar chart of the top rising phrases' rates, baseline and candidate")


def _segments(segments: dict | None, flags: list[dict], opt: Options) -> Html:
    if not segments:
        return para("no segments in this comparison", "note")
    flagged: dict[str, list[str]] = {}
    for f in flags:
        flagged.setdefault(str(f.get("segment")), []).append(str(f.get("metric")))
    rows = []
    for name, s in segments.items():
        n = s.get("n") or {}
        size = f"{count(n.get('baseline'))} / {count(n.get('candidate'))}"
        if "suppressed" in s or too_few(n.get("baseline"), opt) or too_few(n.get("candidate"), opt):
            rows.append([name, size, *[hidden(opt.min_users, "replies")] * 3, ""])
            continue
        e = s["metrics"]["closing_judge"]
        rows.append([name, size, f"{pct(e['baseline']['rate'], 2)} -> {pct(e['candidate']['rate'], 2)}",
                     with_ci(e.get("diff"), e.get("diff_ci"), _pts), num(e.get("p_holm_segments"), 4),
                     ", ".join(flagged.get(name, [])) or "none"])  # fmt: skip
    head = ["segment", "replies (baseline / candidate)", "closing (judge)", "difference [95 % CI]",
            "p (Holm, all segments)", "flagged metrics"]  # fmt: skip
    return join(para(f"By segment: {len(flags)} flag(s) (an increase significant after Holm over every segment and "
                     "metric, and more than twice the overall one)."), table(head, rows))  # fmt: skip


# ====================================================================== the page

SECTIONS: tuple[tuple[str, str, Callable[[Run, Options], Html]], ...] = (
    ("headline", "Headline", headline_section),
    ("signals", "Signals vs retention", signals_section),
    ("calibration", "Calibration", calibration_section),
    ("tradeoff", "Trade-off front", tradeoff_section),
    ("offline-online", "Offline vs online", correlate_section),
    ("abtest", "A/B test", abtest_section),
    ("categories", "Lift by category", category_section),
    ("hacking", "Reward hacking", hacking_section),
)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
 padding:0 1em;color:#212529;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{border-bottom:1px solid #dee2e6;padding-bottom:.2em;margin-top:2.2em}
h3{margin-top:1.6em}
header p{margin:.2em 0;color:#495057}
table{border-collapse:collapse;margin:.8em 0 1.2em;font-size:.88em}
th,td{border:1px solid #dee2e6;padding:.25em .6em;vertical-align:top;text-align:left}
th{background:#f1f3f5}
td{font-variant-numeric:tabular-nums}
figure{margin:1em 0;display:inline-block;vertical-align:top}
img{max-width:100%}
details{margin:.4em 0}
code{background:#f1f3f5;padding:0 .25em}
.note{color:#495057;font-style:italic}
.notrun{color:#868e96;font-style:italic}
.suppressed{color:#868e96;font-style:italic}
.pass{color:#2b8a3e;font-weight:600}
.fail{color:#c92a2a;font-weight:600}
.neutral{color:#868e96}
.example{max-width:30em;white-space:pre-wrap;font-size:.92em;color:#343a40;margin-bottom:.3em}
"""


def render(run_dir: str | Path, *, min_users: int = 20, examples: bool = False) -> str:
    """The report page of `run_dir` as a string (write_report writes it)."""
    if isinstance(min_users, bool) or not isinstance(min_users, int) or min_users < 1:
        raise ReportError(f"min_users must be a whole number >= 1, got {min_users!r}")
    root = Path(run_dir)
    if not root.exists():
        raise ReportError(f"run directory {root} does not exist; give the directory the pipeline wrote its outputs to "
                          "(e.g. runs/demo)")  # fmt: skip
    if not root.is_dir():
        raise ReportError(f"{root} is a file; give the run directory (e.g. runs/demo)")
    run, opt = Run(root), Options(min_users=min_users, examples=bool(examples))
    bodies = [(sid, title, fn(run, opt)) for sid, title, fn in SECTIONS]
    name = root.resolve().name or str(root)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    toc = "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>' for sid, title, _ in bodies)
    toc += '<li><a href="#inputs">Inputs</a></li>'
    sections = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>' for sid, title, body in bodies)
    inputs = table(["file (under the run directory)", "status"], [[rel, s] for rel, s in run.seen.items()])
    privacy = (f"Aggregates only; cells resting on fewer than {min_users} users (or replies, prompts, examples where "
               "that is what the input counts) are suppressed; example texts "
               + ("are shown." if opt.examples else "are not shown."))  # fmt: skip
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>rluf report: {esc(name)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>rluf report: {esc(name)}</h1><p>generated {esc(now)} from the run directory "
            f"<code>{esc(name)}</code></p><p>{esc(privacy)}</p></header>"
            f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>{sections}"
            f'<section id="inputs"><h2>Inputs</h2>{inputs}</section></body></html>\n')  # fmt: skip


def write_report(run_dir: str | Path, out: str | Path | None = None, *, min_users: int = 20,
                 examples: bool = False) -> Path:  # fmt: skip
    """Write the report of `run_dir` to `out` (default RUN_DIR/report.html); return the path written.

    min_users: cells resting on fewer users (or replies, prompts, examples) are suppressed.
    examples: include the example reply texts the hacking results carry. Raises ReportError for a
    missing run directory, an unreadable or malformed input (named), or an output path that cannot be written.
    """
    page = render(run_dir, min_users=min_users, examples=examples)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    if path.is_dir():
        raise ReportError(f"--out {path} is a directory; give a file name such as {path / 'report.html'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rluf report", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (e.g. runs/demo)")
    p.add_argument("--out", metavar="FILE", help="the HTML file to write (default DIR/report.html)")
    p.add_argument("--min-users", type=int, default=20,
                   help="suppress every cell resting on fewer users (or replies, prompts, examples); default 20")
    p.add_argument("--examples", action="store_true", help="include example reply texts (off by default)")
    a = p.parse_args(argv)
    try:
        path = write_report(a.run, a.out, min_users=a.min_users, examples=a.examples)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
