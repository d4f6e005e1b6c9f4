"""Model judges: a constraint on a reward model's P[signal], absolute or relative to the baseline response.

    python -c "from rluf.judges.model import RewardThresholdJudge as J; j = J('runs/demo/reward/ngram', min=0.002); print(j.name, j.judge(['i feel lonely'] * 2, ['Try not to think about it.', 'I hear you, and your feelings make sense. 🥰']))"

Both judges score with a reward model directory (`rluf.reward.base.RewardModel.load`, any kind) and
render (prompt, completion) exactly as `rluf.reward.callables.RewardFunction` does (the context is
the last `context_turns` turns of the prompt, the response the completion's text), so a judge sees
what the model was trained on. The score is the calibrated probability P[signal].

- `RewardThresholdJudge(model_dir, max=0.2)`: violated when P >= max (a model of P[unsafe]);
  `RewardThresholdJudge(model_dir, min=0.5)`: violated when P < min (a model of P[safe], P[helpful]).
- `NoRegressionJudge(model_dir, margin=0.05)`: violated when P(completion) < P(gold) - margin, where
  gold is the baseline response to the same prompt (ā of CGPO eq. 5): the policy may not fall below
  the baseline on this signal by more than the margin.

Completions are scored in batches of `batch_size`. When a batch raises, its items are scored one
by one, and an item that still raises (a prompt or completion that cannot be rendered, a model
error) gets FAILED (-1). The model is loaded on first use and dropped when the judge is pickled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..reward.base import RewardModel, RewardModelError
from ..reward.callables import RewardFunction
from ..reward.text import as_turns, completion_text, render_context
from .base import FAILED, SATISFIED, VIOLATED, Judge, JudgeError, log


class ModelScorer:
    """`ModelScorer(model_dir, batch_size=256)`: calibrated log-odds of a reward model per (prompt,
    completion), NaN where an item cannot be scored. Loads the model on first use; pickling drops it."""

    def __init__(self, model_dir: str | Path, batch_size: int = 256):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise JudgeError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        try:  # checks the directory and reads its signal, without loading the weights
            self.reward = RewardFunction(model_dir, output="logit", batch_size=batch_size)
        except RewardModelError as exc:
            raise JudgeError(str(exc)) from None
        self.model_dir = self.reward.model_dir
        self.signal = self.reward.signal
        self.batch_size = batch_size

    @property
    def model(self) -> RewardModel:
        """The reward model, loaded on first use (the RewardFunction holds it and drops it when pickled)."""
        return self.reward.model

    def _pair(self, prompt: Any, completion: Any) -> tuple[str, str]:
        response = completion_text(completion)
        if not isinstance(response, str):
            raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")
        return render_context(as_turns(prompt), self.model.context_turns), response

    def _score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        z = np.asarray(self.model.predict_logit([c for c, _ in pairs], [r for _, r in pairs]), dtype=np.float64)
        if z.shape != (len(pairs),):
            raise RewardModelError(f"{self.model_dir}: predict_logit returned shape {z.shape} for {len(pairs)} pairs")
        return z

    def logits(self, prompts: Sequence[Any], completions: Sequence[Any], where: str = "") -> np.ndarray:
        """Calibrated logit(P[signal]) per completion, NaN where it could not be computed (reasons are logged
        under `where`)."""
        out = np.full(len(completions), np.nan)
        where = where or str(self.model_dir)
        try:
            self.model  # noqa: B018  (a model that cannot load fails every item)
        except Exception as exc:
            log.warning("%s: cannot load %s (%r); every item FAILED", where, self.model_dir, exc)
            return out
        pairs, index, errors = [], [], []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            try:
                pairs.append(self._pair(p, c))
                index.append(i)
            except Exception as exc:
                errors.append(exc)
        for s in range(0, len(pairs), self.batch_size):
            chunk, idx = pairs[s:s + self.batch_size], index[s:s + self.batch_size]
            try:
                out[idx] = self._score(chunk)
            except Exception:
                for pair, i in zip(chunk, idx):  # find the items that fail
                    try:
                        out[i] = self._score([pair])[0]
                    except Exception as exc:
                        errors.append(exc)
        if errors:
            log.warning("%s: failed on %d of %d items; first error: %r", where, len(errors), len(out), errors[0])
        return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function; NaN stays NaN."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


class ModelJudge(Judge):
    """Base of the model judges: a ModelScorer and a name that defaults to one built from the signal."""

    def __init__(self, model_dir: str | Path, name: str | None, default_name: str, batch_size: int = 256):
        try:
            self.scorer = ModelScorer(model_dir, batch_size)
        except JudgeError as exc:
            raise JudgeError(f"{type(self).__name__}: {exc}") from None
        self.model_dir = self.scorer.model_dir
        self.signal = self.scorer.signal
        super().__init__(default_name.format(signal=self.signal) if name is None else name)

    def scores(self, prompts: Sequence[Any], completions: Sequence[Any]) -> np.ndarray:
        """P[signal] per completion, NaN where it could not be computed."""
        return sigmoid(self.scorer.logits(prompts, completions, where=f"judge {self.name}"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.model_dir)!r}, name={self.name!r})"


def _threshold(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise JudgeError(f"RewardThresholdJudge: {what} must be a probability in [0, 1], got {value!r}")
    return float(value)


class RewardThresholdJudge(ModelJudge):
    """`RewardThresholdJudge(model_dir, min=None, max=None, name=None, batch_size=256)`, exactly one of
    min / max: violated when P[signal] >= max, or when P[signal] < min.

    Default name: "p_{signal}_below_{max}" or "p_{signal}_at_least_{min}"."""

    def __init__(self, model_dir: str | Path, min: float | None = None, max: float | None = None,
                 name: str | None = None, batch_size: int = 256):  # fmt: skip
        lo, hi = _threshold(min, "min"), _threshold(max, "max")
        if (lo is None) == (hi is None):
            raise JudgeError("RewardThresholdJudge: give exactly one of min (violated when P < min, for a model of a "
                             "good signal) or max (violated when P >= max, for a model of a bad signal)")  # fmt: skip
        self.min, self.max = lo, hi
        default = f"p_{{signal}}_below_{hi:g}" if hi is not None else f"p_{{signal}}_at_least_{lo:g}"
        super().__init__(model_dir, name, default, batch_size)

    def _judge(self, prompts, completions, gold_completions) -> list[int]:
        out = []
        for p in self.scores(prompts, completions):
            if math.isnan(p):
                out.append(FAILED)
            elif self.max is not None:
                out.append(VIOLATED if p >= self.max else SATISFIED)
            else:
                out.append(VIOLATED if p < self.min else SATISFIED)
        return out


def gold_present(gold: Any) -> bool:
    """A gold completion is present when it is non-blank text or a non-empty list of chat messages."""
    return (isinstance(gold, str) and bool(gold.strip())) or (isinstance(gold, (list, tuple)) and len(gold) > 0)


class NoRegressionJudge(ModelJudge):
    """`NoRegressionJudge(model_dir, margin=0.0, name=None, batch_size=256)`: violated when
    P[signal](completion) < P[signal](gold) - margin, gold being the baseline response to the same prompt.

    `judge` needs gold_completions (raises JudgeError when it is None). An item whose gold is missing
    (None, "" or not text) gets FAILED (-1): without the baseline there is nothing to compare with.
    Default name: "no_regression_{signal}"."""

    def __init__(self, model_dir: str | Path, margin: float = 0.0, name: str | None = None, batch_size: int = 256):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
            raise JudgeError(f"NoRegressionJudge: margin must be a number in [0, 1), got {margin!r}")
        self.margin = float(margin)
        super().__init__(model_dir, name, "no_regression_{signal}", batch_size)

    def _judge(self, prompts, completions, gold_completions) -> list[int]:
        if gold_completions is None:
            raise JudgeError(f"{self.name}: NoRegressionJudge compares each completion with the baseline response "
                             f"to its prompt; pass gold_completions (one per completion)")  # fmt: skip
        n = len(completions)
        have = [i for i, g in enumerate(gold_completions) if gold_present(g)]
        both = self.scores(list(prompts) + [prompts[i] for i in have],
                           list(completions) + [gold_completions[i] for i in have])  # fmt: skip
        gold = np.full(n, np.nan)
        gold[have] = both[n:]
        out = []
        for p, g in zip(both[:n], gold):
            if math.isnan(p) or math.isnan(g):
                out.append(FAILED)
            else:
                out.append(VIOLATED if p < g - self.margin else SATISFIED)
        return out
