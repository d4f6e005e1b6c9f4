"""Judges and reward models for OpenRLHF and verl: a reward gated by the Mixture of Judges, as a file.

    python -c "from rluf.judges.adapters import write_openrlhf_reward_file as w; print(w('/tmp/reward_func.py', [{'type': 'love_bait'}], [{'model': 'runs/demo/reward/ngram'}]))"

`GatedReward(judges_spec, reward_spec)` computes, per completion (CGPO eq. 8, METHOD.md 2.5):

    reward = sum_k weight_k * r_k    if every judge says SATISFIED
           = 0                       if any judge says VIOLATED or FAILED, or a reward cannot be computed

judges_spec is the list of judge specs of `rluf.judges.config.build_judges`; reward_spec a list of
{"model": DIR, "weight": 1.0, "score": "prob" | "vs_baseline"}:
- "prob" (default): r = the model's calibrated P[signal](completion);
- "vs_baseline": r = sigmoid(logit P(completion) - logit P(gold)), CGPO's calibrated reward (eq. 5),
  gold being the baseline response to the same prompt; needs a gold per item.

Two trainers load a reward function from a Python file; the writers below produce one, self-contained
but for `import rluf` (the specs are embedded, model paths made absolute):

- OpenRLHF: `--remote_rm_url FILE.py` loads `reward_func(queries, prompts, labels)`. queries are the
  chat-templated prompt + response strings, prompts the templated prompts, labels the dataset column
  named by `--label_key` (pass the baseline response there for "vs_baseline" and no_regression).
  The response is the query after its prompt, with `response_suffixes` (the tokenizer's eos text,
  e.g. "</s>") cut from its end; the model sees the templated prompt as one user turn. It returns
  {"rewards", "scores", "extra_logs"} tensors (current OpenRLHF) or, with output="tensor", the
  reward tensor alone (older OpenRLHF).
- verl: `custom_reward_function.path=FILE.py custom_reward_function.name=compute_score` loads
  `compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float`; solution_str is
  the response, ground_truth the baseline (the dataset's reward_model.ground_truth), and the prompt
  is read from extra_info["prompt"] (a string or chat messages) when the dataset puts it there.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import FAILED, SATISFIED, JudgeError, combine
from .config import build_judges
from .model import ModelScorer, gold_present, sigmoid

SCORES = ("prob", "vs_baseline")
REWARD_KEYS = ("model", "weight", "score", "batch_size")
OUTPUTS = ("dict", "tensor")

log = logging.getLogger(__name__)


def check_reward_spec(reward_spec: Sequence[dict]) -> list[dict]:
    """The reward spec with defaults filled in; raises JudgeError naming rewards[i] on a bad entry."""
    if isinstance(reward_spec, (str, dict)) or not isinstance(reward_spec, Sequence) or not reward_spec:
        raise JudgeError(f"rewards must be a non-empty list of {{'model': DIR, 'weight': w}} dicts, got {reward_spec!r:.80}")
    out = []
    for i, r in enumerate(reward_spec):
        where = f"rewards[{i}]"
        if not isinstance(r, dict) or "model" not in r:
            raise JudgeError(f"{where}: a reward spec is a mapping with a 'model' key, got {r!r:.80}")
        unknown = sorted(set(r) - set(REWARD_KEYS))
        if unknown:
            raise JudgeError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(REWARD_KEYS)}")
        w = r.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise JudgeError(f"{where}: weight must be a finite number, got {w!r}")
        score = r.get("score", "prob")
        if score not in SCORES:
            raise JudgeError(f"{where}: score must be one of {', '.join(SCORES)}, got {score!r}")
        out.append({"model": str(Path(r["model"]).resolve()), "weight": float(w), "score": score,
                    "batch_size": r.get("batch_size", 256)})  # fmt: skip
    return out


class GatedReward:
    """`GatedReward(judges_spec, reward_spec)`: the weighted sum of rewards where all judges pass, else 0."""

    def __init__(self, judges_spec: Sequence[dict], reward_spec: Sequence[dict]):
        self.judges = build_judges(judges_spec)
        self.reward_spec = check_reward_spec(reward_spec)
        self.scorers = []
        for i, r in enumerate(self.reward_spec):
            try:
                self.scorers.append(ModelScorer(r["model"], r["batch_size"]))
            except JudgeError as exc:
                raise JudgeError(f"rewards[{i}]: {exc}") from None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 gold_completions: Sequence[Any] | None = None) -> tuple[np.ndarray, dict[str, list[int]]]:  # fmt: skip
        """(rewards, verdicts): rewards shape (N,), verdicts {judge name: [1 | 0 | -1], ..., "all_judges": [...]}."""
        verdicts = self.judges.judge_all(prompts, completions, gold_completions)
        verdicts[self.judges.name] = combine(list(verdicts.values()), len(completions))
        n = len(completions)
        total = np.zeros(n)
        for r, scorer in zip(self.reward_spec, self.scorers):
            z = scorer.logits(prompts, completions, where=f"reward {r['model']}")
            if r["score"] == "vs_baseline":
                golds = gold_completions if gold_completions is not None else [None] * n
                have = [i for i, g in enumerate(golds) if gold_present(g)]
                z_gold = np.full(n, np.nan)
                z_gold[have] = scorer.logits([prompts[i] for i in have], [golds[i] for i in have],
                                             where=f"reward {r['model']} (baseline)")  # fmt: skip
                if len(have) < n:
                    log.warning("reward %s: %d of %d items have no baseline response; they get reward 0",
                                r["model"], n - len(have), n)  # fmt: skip
                z = z - z_gold  # CGPO eq. (5): sigmoid(r(s, a) - r(s, ā))
            total += r["weight"] * sigmoid(z)
        passed = np.array([v == SATISFIED for v in verdicts[self.judges.name]]) & np.isfinite(total)
        return np.where(passed, total, 0.0), verdicts


def split_query(query: str, prompt: str, response_suffixes: Sequence[str] = ()) -> str | None:
    """The response inside an OpenRLHF query (prompt + response), suffixes cut; None when the query
    does not start with its prompt."""
    if not isinstance(query, str) or not isinstance(prompt, str) or not query.startswith(prompt):
        return None
    response = query[len(prompt):].rstrip()
    cut = True
    while cut:
        cut = False
        for s in response_suffixes:
            if s and response.endswith(s):
                response, cut = response[: -len(s)].rstrip(), True
    return response


class OpenRLHFReward:
    """`OpenRLHFReward(judges_spec, reward_spec, response_suffixes=(), output="dict")`: the callable
    behind a written OpenRLHF reward file, `reward_func(queries, prompts, labels)`."""

    def __init__(self, judges_spec: Sequence[dict], reward_spec: Sequence[dict], response_suffixes: Sequence[str] = (),
                 output: str = "dict"):  # fmt: skip
        if output not in OUTPUTS:
            raise JudgeError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if isinstance(response_suffixes, str) or not all(isinstance(s, str) for s in response_suffixes):
            raise JudgeError(f"response_suffixes must be a list of strings, got {response_suffixes!r:.80}")
        self.gated = GatedReward(judges_spec, reward_spec)
        self.response_suffixes = list(response_suffixes)
        self.output = output

    def __call__(self, queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None):
        import torch

        if labels is None:
            labels = [None] * len(queries)
        if not (len(queries) == len(prompts) == len(labels)):
            raise JudgeError(f"reward_func: {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels; "
                             f"they must pair up")  # fmt: skip
        responses = [split_query(q, p, self.response_suffixes) for q, p in zip(queries, prompts)]
        ok = [i for i, r in enumerate(responses) if r is not None]
        if len(ok) < len(queries):
            log.warning("reward_func: %d of %d queries do not start with their prompt; they get reward 0",
                        len(queries) - len(ok), len(queries))  # fmt: skip
        rewards = np.zeros(len(queries))
        verdicts = {name: [FAILED] * len(queries) for name in self.gated.judges.names + [self.gated.judges.name]}
        if ok:
            r, v = self.gated([prompts[i] for i in ok], [responses[i] for i in ok], [labels[i] for i in ok])
            rewards[ok] = r
            for name, vs in v.items():
                for i, x in zip(ok, vs):
                    verdicts[name][i] = x
        reward = torch.tensor(rewards, dtype=torch.float32)
        if self.output == "tensor":
            return reward
        logs = {f"judges/{name}/pass": torch.tensor([float(x == SATISFIED) for x in vs]) for name, vs in verdicts.items()}
        return {"rewards": reward, "scores": reward, "extra_logs": logs}


class VerlComputeScore:
    """`VerlComputeScore(judges_spec, reward_spec)`: verl's `compute_score(data_source, solution_str,
    ground_truth, extra_info=None) -> float` (one sample per call, as verl's naive reward manager calls it)."""

    def __init__(self, judges_spec: Sequence[dict], reward_spec: Sequence[dict]):
        self.gated = GatedReward(judges_spec, reward_spec)

    def __call__(self, data_source: Any, solution_str: str, ground_truth: Any = None, extra_info: dict | None = None,
                 **kwargs) -> float:  # fmt: skip
        prompt = extra_info.get("prompt") if isinstance(extra_info, dict) else None
        if prompt is None:
            prompt = ""
        elif not isinstance(prompt, str):
            prompt = list(prompt)  # chat messages, also as a numpy array read from parquet
        gold = ground_truth if gold_present(ground_truth) else None
        rewards, _ = self.gated([prompt], [solution_str], [gold])
        return float(rewards[0])


def make_verl_compute_score(judges_spec: Sequence[dict], reward_spec: Sequence[dict]) -> VerlComputeScore:
    """A verl compute_score for these specs (models load on first call; the object pickles without them)."""
    return VerlComputeScore(judges_spec, reward_spec)


FILE = '''"""{title}, written by rluf.judges.adapters.{writer}.

{usage}
"""

import json

from rluf.judges.adapters import {cls}

JUDGES = json.loads({judges!r})
REWARDS = json.loads({rewards!r})
_reward = {cls}(JUDGES, REWARDS{extra})


{func}
'''
OPENRLHF_FUNC = '''def reward_func(queries, prompts, labels, **kwargs):
    return _reward(queries, prompts, labels)'''
VERL_FUNC = '''def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return _reward(data_source, solution_str, ground_truth, extra_info)'''


def _write(path: str | Path, text: str) -> Path:
    p = Path(path)
    if p.suffix != ".py":
        raise JudgeError(f"{p}: the reward file must end in .py (the trainers import it as a Python module)")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _resolved(judges_spec: Sequence[dict]) -> list[dict]:
    """Judge specs with model paths made absolute (the trainers run from another working directory)."""
    out = []
    for s in judges_spec:
        s = dict(s) if isinstance(s, dict) else s
        if isinstance(s, dict) and "model" in s:
            s["model"] = str(Path(s["model"]).resolve())
        out.append(s)
    return out


def write_openrlhf_reward_file(path: str | Path, judges_spec: Sequence[dict], reward_spec: Sequence[dict],
                               response_suffixes: Sequence[str] = (), output: str = "dict") -> Path:  # fmt: skip
    """Write a Python file defining OpenRLHF's `reward_func(queries, prompts, labels)`; returns its path.

    The specs are checked (and model directories found) before writing."""
    judges, rewards = _resolved(judges_spec), check_reward_spec(reward_spec)
    OpenRLHFReward(judges, rewards, response_suffixes, output)  # fail now, not inside a Ray worker
    usage = (f"    --remote_rm_url {Path(path).resolve()} --label_key <column holding the baseline response>\n\n"
             f"reward = weighted sum of the rewards when every judge is satisfied, else 0.")  # fmt: skip
    return _write(path, FILE.format(title="OpenRLHF reward function", writer="write_openrlhf_reward_file",
                                    usage=usage, cls="OpenRLHFReward", judges=json.dumps(judges),
                                    rewards=json.dumps(rewards), func=OPENRLHF_FUNC,
                                    extra=f", response_suffixes={list(response_suffixes)!r}, output={output!r}"))  # fmt: skip


def write_verl_reward_file(path: str | Path, judges_spec: Sequence[dict], reward_spec: Sequence[dict]) -> Path:
    """Write a Python file defining verl's `compute_score(data_source, solution_str, ground_truth, extra_info)`."""
    judges, rewards = _resolved(judges_spec), check_reward_spec(reward_spec)
    make_verl_compute_score(judges, rewards)  # fail now, not inside a Ray worker
    usage = (f"    custom_reward_function.path={Path(path).resolve()} custom_reward_function.name=compute_score\n\n"
             f"reward = weighted sum of the rewards when every judge is satisfied, else 0.")  # fmt: skip
    return _write(path, FILE.format(title="verl reward function", writer="write_verl_reward_file", usage=usage,
                                    cls="VerlComputeScore", judges=json.dumps(judges), rewards=json.dumps(rewards),
                                    func=VERL_FUNC, extra=""))  # fmt: skip
