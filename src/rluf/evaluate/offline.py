"""Offline evaluation of a candidate policy: reward-model scores, judge pass rates and length on a fixed prompt set.

    python -m rluf.evaluate.offline --policy runs/demo/sft --store runs/demo/store --model love=runs/demo/reward/ngram --prompts 200 --out runs/eval/sft.json --replies runs/eval/sft.jsonl

The prompt set is a category-stratified sample of `config.prompts` rows (rluf.policy.data.stratified_sample
seeded by `config.seed`), so every candidate evaluated with the same rows and seed answers the same
prompts; replies are sampled with the same torch seed. Each prompt gets `samples_per_prompt` replies.
With `policy_dir=None` the logged baseline replies are evaluated instead, as the candidate "logged".

Per reward model NAME the result holds
    rewards/NAME/p           mean P[NAME] of the replies (the model's calibrated probability)
    rewards/NAME/calibrated  mean sigmoid(r(a) - r(ā)) against the logged reply ā of the same prompt
                             (CGPO eq. 5, as rluf.policy.rewards.CalibratedReward; 0.5 = as good as the log)
each with a 95 % interval from the normal approximation over prompts (a prompt's value is the mean of
its replies): mean +- 1.96 sd / sqrt(n), clipped to [0, 1]. Judges (rluf.judges) give pass rates with
Wilson 95 % intervals over replies, one per judge and "all" for their AND; `words` is the mean reply
length in words (interval as above); `categories` repeats the means per prompt category.

`replies=PATH` writes one JSONL row per reply (prompt, category, reply, baseline, user_id, message_id,
sample, and "scores": {NAME: P[NAME]} of every reward model) that `rluf.evaluate.hacking` reads
(`compare(prompts, baseline, candidate)` or its `--baseline/--candidate` files; the scores feed its
reward-quality divergence).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import name_dir_pairs
from ..judges import build_judges
from ..judges.base import FAILED, SATISFIED, JudgeError, combine
from ..judges.config import load_judge_phrases, read_config_file
from ..policy.data import (
    PromptDataError,
    PromptRow,
    load_prompts,
    split_prompts,
    stratified_sample,
)
from ..policy.rewards import CalibratedReward, sigmoid
from ..reward.base import RewardModel, RewardModelError
from .hacking import wilson

Z95 = 1.959963984540054  # two-sided 95 %: Phi^-1(0.975)
LOGGED = "logged"  # the candidate name of the logged baseline replies
NO_CATEGORY = "(none)"  # the key of rows without a category
DEFAULT_JUDGES = ({"type": "love_bait"}, {"type": "repetition"})


class OfflineEvalError(ValueError):
    pass


@dataclass
class OfflineConfig:
    prompts: int = field(default=500, metadata={"help": "prompts in the evaluation set (a category-stratified sample)"})
    seed: int = field(default=0, metadata={"help": "seeds the prompt sample and the reply sampling"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per sampled reply"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature; 0 is greedy"})
    samples_per_prompt: int = field(default=1, metadata={"help": "replies sampled per prompt (the logged candidate has one)"})
    judges: list[dict] = field(default_factory=lambda: [dict(s) for s in DEFAULT_JUDGES],
                               metadata={"help": "judge specs (rluf.judges.build_judges)"})  # fmt: skip
    batch_size: int = field(default=64, metadata={"help": "prompts per generation batch"})

    def __post_init__(self):
        checks = (("prompts", isinstance(self.prompts, int) and self.prompts >= 1),
                  ("seed", isinstance(self.seed, int) and self.seed >= 0),
                  ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1),
                  ("temperature", isinstance(self.temperature, (int, float)) and self.temperature >= 0),
                  ("samples_per_prompt", isinstance(self.samples_per_prompt, int) and self.samples_per_prompt >= 1),
                  ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1))  # fmt: skip
        for name, ok in checks:
            if not ok:
                help_ = next(f.metadata["help"] for f in dataclasses.fields(self) if f.name == name)
                raise OfflineEvalError(f"OfflineConfig.{name} = {getattr(self, name)!r} is out of range ({help_})")
        try:
            build_judges(self.judges)
        except JudgeError as exc:
            raise OfflineEvalError(f"OfflineConfig.judges: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> OfflineConfig:
        """Build from a mapping; unknown keys are refused with the list of known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise OfflineEvalError(f"unknown OfflineConfig keys {unknown}; known keys: {known}")
        return cls(**data)


# ====================================================================== statistics


def mean_ci(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> dict:
    """{"mean", "ci95", "std", "n"}: the normal-approximation 95 % interval of the mean, clipped to [lo, hi]."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "std": None, "n": n}
    sd = float(x.std(ddof=1))
    half = Z95 * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [max(lo, mean - half), min(hi, mean + half)], "std": sd, "n": n}


def pass_rate(verdicts: list[int]) -> dict:
    """{"pass_rate", "ci95" (Wilson), "fail_rate" (judge could not decide), "n"} of 1 / 0 / -1 verdicts."""
    n = len(verdicts)
    k = sum(v == SATISFIED for v in verdicts)
    low, high = wilson(k, n)
    rate = k / n
    ci95 = [min(float(low), rate), max(float(high), rate)]  # holds the rate also where rounding moves k = 0 or n
    return {"pass_rate": rate, "ci95": ci95, "fail_rate": sum(v == FAILED for v in verdicts) / n, "n": n}


# ====================================================================== evaluation


def select_prompts(rows: list[PromptRow], n: int, seed: int) -> list[PromptRow]:
    """At most `n` rows, a seeded sample stratified by category, in their original order."""
    if len(rows) <= n:
        return list(rows)
    return [rows[i] for i in stratified_sample([r.category for r in rows], n, seed)]


def sample_replies(policy_dir: str | Path, rows: list[PromptRow], config: OfflineConfig) -> list[list[str]]:
    """`config.samples_per_prompt` replies per row from the causal LM in `policy_dir`, under `config.seed`."""
    from ..policy.generate import PolicyResponder, generate

    try:
        policy = PolicyResponder(policy_dir)
    except ValueError as exc:
        raise OfflineEvalError(f"policy: {exc}") from None
    return generate(policy.model, policy.tokenizer, [r.prompt for r in rows],
                    num_return_sequences=config.samples_per_prompt, max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature, seed=config.seed, batch_size=config.batch_size)  # fmt: skip


def _check_inputs(policy_dir, prompt_rows, reward_models) -> dict[str, CalibratedReward]:
    if policy_dir is not None and not Path(policy_dir).is_dir():
        raise OfflineEvalError(f"policy {policy_dir}: no such directory; pass a Hugging Face causal-LM directory "
                               "(as rluf sft writes), or None to evaluate the logged replies")  # fmt: skip
    if isinstance(prompt_rows, (str, dict)) or not isinstance(prompt_rows, (list, tuple)):
        raise OfflineEvalError(f"prompt_rows must be a list of PromptRow, got {type(prompt_rows).__name__}")
    if not prompt_rows:
        raise OfflineEvalError("prompt_rows is empty; load some with rluf.policy.data.load_prompts(store)")
    for i, r in enumerate(prompt_rows):
        if not isinstance(r, PromptRow):
            raise OfflineEvalError(f"prompt_rows[{i}] is a {type(r).__name__}, not a rluf.policy.data.PromptRow")
    if not isinstance(reward_models, dict):
        raise OfflineEvalError(f"reward_models must be a dict {{name: model directory}}, got {type(reward_models).__name__}")
    rewards = {}
    for name, d in reward_models.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise OfflineEvalError(f"reward model name {name!r} must be a non-empty string without '/'")
        if isinstance(d, RewardModel):
            rewards[name] = CalibratedReward(d, name=name)
            continue
        if not Path(d).is_dir():
            raise OfflineEvalError(f"reward model {name}: {d} is not a directory; train one with `rluf train-rm`")
        try:
            rewards[name] = CalibratedReward(RewardModel.load(d), name=name)
        except RewardModelError as exc:
            raise OfflineEvalError(f"reward model {name}: {exc}") from None
    return rewards


def evaluate_offline(policy_dir: str | Path | None, prompt_rows: list[PromptRow], reward_models: dict[str, Any],
                     config: OfflineConfig | None = None, *, replies_out: str | Path | None = None,
                     name: str | None = None) -> dict:  # fmt: skip
    """Scores of one candidate on a fixed, stratified prompt set; a JSON-ready dict (keys: module docstring).

    policy_dir: a Hugging Face causal-LM directory with a chat template, or None for the logged replies.
    prompt_rows: PromptRows (rluf.policy.data.load_prompts); at most config.prompts of them are used.
    reward_models: {name: reward-model directory (or a loaded RewardModel)}; may be empty.
    replies_out: write every reply as a JSONL row here. name: the candidate's name (default: the
    directory's name, or "logged").
    """
    config = OfflineConfig() if config is None else config
    if not isinstance(config, OfflineConfig):
        raise OfflineEvalError(f"config must be an OfflineConfig, got {type(config).__name__}")
    rewards = _check_inputs(policy_dir, prompt_rows, reward_models)
    t0 = time.perf_counter()
    rows = select_prompts(list(prompt_rows), config.prompts, config.seed)
    if policy_dir is None:
        per_prompt = [[r.baseline] for r in rows]
    else:
        per_prompt = sample_replies(policy_dir, rows, config)
    owner = np.array([i for i, rs in enumerate(per_prompt) for _ in rs])
    prompts = [rows[i].prompt for i in owner]
    replies = [x for rs in per_prompt for x in rs]
    baselines = [rows[i].baseline for i in owner]

    def per_prompt_mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=len(rows)) / np.bincount(owner, minlength=len(rows))

    values: dict[str, np.ndarray] = {}  # per-prompt metric values
    scores: dict[str, np.ndarray] = {}  # per-reply P[key], written with the replies
    for key, reward in rewards.items():
        r = reward.logits(prompts, replies)
        rb = reward.logits([row.prompt for row in rows], [row.baseline for row in rows])[owner]  # once per prompt
        scores[key] = sigmoid(r)
        values[f"{key}/p"] = per_prompt_mean(scores[key])
        values[f"{key}/calibrated"] = per_prompt_mean(sigmoid(r - rb))
    words = np.array([len(x.split()) for x in replies], dtype=np.float64)
    values["words"] = per_prompt_mean(words)
    moj = build_judges(config.judges)
    verdicts = moj.judge_all(prompts, replies, gold_completions=baselines)
    verdicts["all"] = combine(list(verdicts.values()), len(replies))  # the AND of the judges (all 1 without any)
    for key, vs in verdicts.items():
        values[f"judges/{key}"] = per_prompt_mean((np.asarray(vs) == SATISFIED).astype(np.float64))

    categories = [r.category if r.category is not None else NO_CATEGORY for r in rows]
    by_category = defaultdict(list)
    for i, c in enumerate(categories):
        by_category[c].append(i)
    result = {
        "candidate": name or (LOGGED if policy_dir is None else Path(policy_dir).name),
        "policy": None if policy_dir is None else str(policy_dir),
        "n_prompts": len(rows),
        "n_replies": len(replies),
        "config": dataclasses.asdict(config),
        "rewards": {k: {"p": mean_ci(values[f"{k}/p"]), "calibrated": mean_ci(values[f"{k}/calibrated"])}
                    for k in rewards},
        "judges": {k: pass_rate(vs) for k, vs in verdicts.items()},
        "words": mean_ci(values["words"], 0.0, math.inf),
        "categories": {c: {"n_prompts": len(idx), **{k: float(v[idx].mean()) for k, v in values.items()}}
                       for c, idx in sorted(by_category.items())},
        "replies": None,
    }
    if replies_out is not None:
        result["replies"] = str(write_replies(replies_out, rows, per_prompt, scores))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def write_replies(path: str | Path, rows: list[PromptRow], per_prompt: list[list[str]],
                  scores: dict[str, np.ndarray] | None = None) -> Path:  # fmt: skip
    """One JSONL row per reply: prompt, category, reply, baseline, user_id, message_id, sample, and with
    `scores` ({reward name: P per reply, in reply order}) "scores": {name: P}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = scores or {}
    with open(path, "w", encoding="utf-8") as f:
        j = 0
        for row, replies in zip(rows, per_prompt):
            for k, reply in enumerate(replies):
                rec = {"prompt": row.prompt, "category": row.category, "reply": reply, "baseline": row.baseline,
                       "user_id": row.user_id, "message_id": row.message_id, "sample": k}  # fmt: skip
                if scores:
                    rec["scores"] = {name: round(float(v[j]), 6) for name, v in scores.items()}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                j += 1
    return path


def format_summary(result: dict) -> str:
    """A few lines: every mean with its interval."""

    def ci(d: dict, fmt: str = ".3f") -> str:
        return f"{d['mean']:{fmt}}" + (f" [{d['ci95'][0]:{fmt}}, {d['ci95'][1]:{fmt}}]" if d["ci95"] else "")

    lines = [f"candidate {result['candidate']}: {result['n_prompts']} prompts, {result['n_replies']} replies"]
    for k, r in result["rewards"].items():
        lines.append(f"  P[{k}] {ci(r['p'])}   calibrated vs logged {ci(r['calibrated'])}")
    for k, j in result["judges"].items():
        lines.append(f"  judge {k}: pass {j['pass_rate']:.3f} [{j['ci95'][0]:.3f}, {j['ci95'][1]:.3f}]")
    lines.append(f"  words {ci(result['words'], '.1f')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rluf evaluate offline", description=__doc__.splitlines()[0])
    p.add_argument("--policy", help="Hugging Face causal-LM directory; omit it to evaluate the logged replies")
    p.add_argument("--store", required=True, help="store directory the prompts come from (rluf ingest ... --store DIR)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a reward model (repeat)")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--replies", help="write every reply as JSONL here (input of rluf hacking)")
    p.add_argument("--prompts", type=int, default=500, help="prompts evaluated (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompt sample, the split and the sampling")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--judges", help="YAML or JSON file with a list of judge specs (default: love_bait, repetition)")
    p.add_argument("--judge-phrases", action="append", default=[], metavar="FILE",
                   help="a phrase file (rluf hacking --judge-config) extending the love_bait / refusal judges (repeat)")
    p.add_argument("--val-share", type=float, default=0.0,
                   help="evaluate only this seeded share of the users (rluf.policy.data.split_prompts); 0: all")
    p.add_argument("--name", help="the candidate's name in the result (default: the policy directory's name)")
    a = p.parse_args(argv)
    try:
        models = name_dir_pairs(a.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        judges = read_config_file(a.judges) if a.judges else [dict(s) for s in DEFAULT_JUDGES]
        for path in a.judge_phrases:
            judges = load_judge_phrases(path, judges)
        config = OfflineConfig(prompts=a.prompts, seed=a.seed, max_new_tokens=a.max_new_tokens,
                               temperature=a.temperature, samples_per_prompt=a.samples_per_prompt, judges=judges)  # fmt: skip
        rows = load_prompts(a.store)
        if a.val_share:
            rows = split_prompts(rows, a.val_share, a.seed)[1]
        result = evaluate_offline(a.policy, rows, models, config, replies_out=a.replies, name=a.name)
    except (OfflineEvalError, PromptDataError, JudgeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
