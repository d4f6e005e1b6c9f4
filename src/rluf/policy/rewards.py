"""The reward suite of policy optimization: calibrated rewards against a baseline reply (CGPO eq. 5), mixed by weight.

    python -c "from rluf.policy.rewards import CalibratedReward; r = CalibratedReward('runs/demo/reward/ngram'); print(r(['i feel lonely tonight'], ['I am here for you.'], baseline=['Okay.']))"

CGPO calibrates a reward against a baseline reply ā of the same prompt (METHOD.md 2.4, eq. 5):

    R_calib(s, a) = sigmoid( r(s, a) - r(s, ā) )  ~  Prob(a beats ā | s)

where r is the reward model's score on the logit scale (here: the calibrated log-odds of P[signal],
`RewardModel.predict_logit`). Values are bounded in (0, 1) and comparable across prompts, so one prompt
with an extreme raw score cannot dominate a batch. The baseline ā is the logged production reply to the
same user turn (CGPO's option 1: the "gold" reply of the logs), so R_calib = 0.5 means "as good as what
users saw".

`RewardMix` combines several calibrated rewards with per-task weights: R = sum_m w_m R_calib_m. The
presets follow RLUF's two candidates (METHOD.md 1.5): `moderate` puts weight 0.1 on P[Love] and
`aggressive` 0.3; the rest goes to helpfulness (and a fixed 0.2 to safety when a safety model is in the
suite). How RLUF mixed its objectives is not published; this linear mix inside one task is our choice.

Both classes are TRL reward functions: `f(prompts, completions, **columns) -> list[float]`, with the
baseline reply taken from a dataset column `baseline` (TRL passes every dataset column as a keyword).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..reward.base import RewardModel
from ..reward.text import as_turns, completion_text, render_context

PRESETS = {
    # name -> weights by reward name; helpfulness gets the rest of what love and safety leave
    "moderate": {"love": 0.1, "helpful": 0.7, "safe": 0.2},
    "aggressive": {"love": 0.3, "helpful": 0.5, "safe": 0.2},
}


class RewardError(ValueError):
    pass


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


class CalibratedReward:
    """`CalibratedReward(model_dir_or_model, name=None, batch_size=512)`: eq. (5) for one reward model.

    `logits(prompts, completions)` -> the model's calibrated log-odds, shape (N,);
    `__call__(prompts, completions, baseline=[...])` -> sigmoid(r(a) - r(ā)) per completion (list of float).
    Without `baseline` the call returns the plain probability, sigmoid(r(a)), and says so in `last_mode`.
    """

    def __init__(self, model: str | Path | RewardModel, name: str | None = None, batch_size: int = 512):
        self.model_dir = None if isinstance(model, RewardModel) else Path(model)
        self._model = model if isinstance(model, RewardModel) else None
        if batch_size < 1:
            raise RewardError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.__name__ = name or f"calibrated_{self.model.signal}"
        self.last_mode = None

    @property
    def model(self) -> RewardModel:
        if self._model is None:
            self._model = RewardModel.load(self.model_dir)
        return self._model

    def logits(self, prompts: Sequence[Any], completions: Sequence[Any]) -> np.ndarray:
        if isinstance(prompts, str) or isinstance(completions, str):
            raise RewardError("prompts and completions must be lists (one entry per completion), not a string")
        if len(prompts) != len(completions):
            raise RewardError(f"{len(prompts)} prompts but {len(completions)} completions; pass one prompt per completion")
        k = self.model.context_turns
        contexts = [render_context(as_turns(p), k) for p in prompts]
        responses = [completion_text(c) for c in completions]
        out = [self.model.predict_logit(contexts[i:i + self.batch_size], responses[i:i + self.batch_size])
               for i in range(0, len(responses), self.batch_size)]  # fmt: skip
        return np.concatenate(out) if out else np.zeros(0)

    def __call__(self, prompts, completions, baseline: Sequence[Any] | None = None, **kwargs) -> list[float]:
        r = self.logits(prompts, completions)
        if baseline is None:
            self.last_mode = "probability"
            return sigmoid(r).tolist()
        if len(baseline) != len(completions):
            raise RewardError(f"{len(baseline)} baseline replies for {len(completions)} completions")
        self.last_mode = "calibrated"
        return sigmoid(r - self.logits(prompts, baseline)).tolist()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.model_dir is not None:
            state["_model"] = None  # reloaded from model_dir on the other side
        return state


class RewardMix:
    """`RewardMix(rewards={name: CalibratedReward}, weights={name: w})`: R = sum_m w_m R_calib_m.

    Weights must be >= 0 and name rewards that exist; they need not sum to 1 (they are used as given).
    `components(prompts, completions, baselines)` returns every reward's calibrated value and raw
    probability (for logging before weighting); `__call__` the weighted sum (a TRL reward function).
    """

    def __init__(self, rewards: dict[str, CalibratedReward], weights: dict[str, float], name: str = "reward_mix"):
        unknown = sorted(set(weights) - set(rewards))
        if unknown:
            raise RewardError(f"weights name rewards {unknown} that are not in the suite {sorted(rewards)}")
        bad = {k: w for k, w in weights.items() if not (isinstance(w, (int, float)) and w >= 0)}
        if bad:
            raise RewardError(f"reward weights must be numbers >= 0, got {bad}")
        if not any(w > 0 for w in weights.values()):
            raise RewardError("at least one reward weight must be > 0")
        self.rewards = rewards
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.__name__ = name

    def components(self, prompts, completions, baselines) -> dict[str, dict[str, np.ndarray]]:
        """{name: {"calibrated": sigmoid(r(a) - r(ā)), "prob": sigmoid(r(a))}} for every weighted reward."""
        out = {}
        for name in self.weights:
            reward = self.rewards[name]
            r, rb = reward.logits(prompts, completions), reward.logits(prompts, baselines)
            out[name] = {"calibrated": sigmoid(r - rb), "prob": sigmoid(r)}
        return out

    def combine(self, components: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
        return sum(w * components[name]["calibrated"] for name, w in self.weights.items())

    def __call__(self, prompts, completions, baseline: Sequence[Any] | None = None, **kwargs) -> list[float]:
        if baseline is None:
            raise RewardError("RewardMix needs the baseline reply of each prompt (a dataset column named 'baseline')")
        return self.combine(self.components(prompts, completions, baseline)).tolist()


def preset_weights(preset: str, available: Sequence[str]) -> dict[str, float]:
    """The weights of a preset, restricted to the rewards present (a missing one's weight goes to helpfulness)."""
    if preset not in PRESETS:
        raise RewardError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    weights = dict(PRESETS[preset])
    if "love" not in available:
        raise RewardError(f"preset {preset!r} needs a reward model named 'love' (have {sorted(available)})")
    if "safe" not in available:
        weights["helpful"] += weights.pop("safe")
    if "helpful" not in available:
        raise RewardError(f"preset {preset!r} needs a reward model named 'helpful' (have {sorted(available)})")
    return weights
