"""The reward-model contract every kind follows, its artifact format, and the length-only baseline.

    python -c "from rluf.reward.base import LengthRewardModel; m = LengthRewardModel().fit(['hi'] * 4, ['a', 'a b c d e f', 'b', 'c d e f g h i'], [0, 1, 0, 1]); print(m.predict_proba(['hi'], ['x y z w v']))"

A reward model maps (context, response) texts to the probability that the response gets a signal
(love, thumbs_up, helpful, ...). Every kind implements `raw_logits`: its score on the scale it was
trained on (positives upsampled to some share). `predict_logit` / `predict_proba` apply the
calibration stored with the model, in this order:

0. length decorrelation, when trained with it (RewardTrainConfig.length_decorrelation):
   z - b (log(1 + words) - c), the share of the logit's linear rise with the response's length that
   training chose to remove (b, c in the calibration; b = 0 leaves the score alone);
1. prior shift (METHOD.md 1.3): training upsampled positives from the true base rate pi to pi';
   in logit space the correction is z + logit(pi) - logit(pi');
2. temperature scaling: z / T, with T fitted on the validation split after step 1.

Artifacts (a directory): `config.json` (kind, signal, context_turns, calibration, the kind's own
settings, metrics when evaluated) and `model.safetensors` (every tensor; never a pickle). `load(dir)`
reads any kind; it refuses a directory holding pickled weights (.bin, .pt, .pth, .pkl, .ckpt) instead
of safetensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
WEIGHTS = "model.safetensors"


class RewardModelError(ValueError):
    pass


def logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise RewardModelError(f"a base rate must be strictly between 0 and 1, got {p}")
    return math.log(p / (1.0 - p))


class RewardModel:
    """Base class. Subclasses set `kind`, implement `raw_logits`, `fit`, `_tensors` and `_from_tensors`."""

    kind = "base"

    def __init__(self, signal: str = "love", context_turns: int = 4):
        self.signal = signal
        self.context_turns = context_turns
        # true_rate / train_rate: base rates for the prior shift (equal: no shift); temperature: T
        self.calibration = {"true_rate": None, "train_rate": None, "temperature": 1.0}
        self.metrics: dict = {}

    # ------------------------------------------------------------------ scoring
    def raw_logits(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def prior_shift(self) -> float:
        c = self.calibration
        if c["true_rate"] is None or c["train_rate"] is None:
            return 0.0
        return logit(c["true_rate"]) - logit(c["train_rate"])

    def length_adjusted_logits(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """raw_logits less the removed length term b (log(1 + words) - c) (step 0 above; b = 0: raw_logits)."""
        z = np.asarray(self.raw_logits(contexts, responses), dtype=np.float64)
        slope = float(self.calibration.get("length_slope") or 0.0)
        if slope:
            z = z - slope * (np.log1p(word_counts(responses)) - float(self.calibration["length_center"]))
        return z

    def predict_logit(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Calibrated log-odds, shape (N,)."""
        _check_pairs(contexts, responses)
        z = self.length_adjusted_logits(contexts, responses)
        return (z + self.prior_shift()) / float(self.calibration["temperature"])

    def predict_proba(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Calibrated P[signal | context, response], shape (N,), in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.predict_logit(contexts, responses)))

    # ------------------------------------------------------------------ artifacts
    def config(self) -> dict:
        """The kind's own settings (JSON-serialisable); subclasses extend."""
        return {}

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _from_tensors(self, config: dict, tensors: dict[str, np.ndarray], directory: Path) -> None:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "signal": self.signal, "context_turns": self.context_turns,
                "calibration": self.calibration, "settings": self.config(), "metrics": self.metrics}  # fmt: skip
        save_file({k: np.ascontiguousarray(v) for k, v in self._tensors().items()}, str(d / WEIGHTS))
        (d / "config.json").write_text(json.dumps(meta, indent=1, default=_json_default))
        return d

    @staticmethod
    def load(directory: str | Path) -> "RewardModel":
        """Load a saved reward model of any kind."""
        d = Path(directory)
        if not (d / "config.json").is_file():
            raise RewardModelError(f"{d}: not a reward model directory (no config.json); train one with `rluf train-rm`")
        pickled = sorted(p.name for p in d.iterdir() if p.suffix in PICKLED)
        if pickled:
            raise RewardModelError(f"{d}: refusing pickled weights {pickled}; rluf loads safetensors only "
                                   f"(convert them with safetensors.torch.save_file)")  # fmt: skip
        if not (d / WEIGHTS).is_file():
            raise RewardModelError(f"{d}: {WEIGHTS} is missing")
        try:
            meta = json.loads((d / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise RewardModelError(f"{d / 'config.json'}: not valid JSON ({exc})") from None
        cls = _kinds().get(meta.get("kind"))
        if cls is None:
            raise RewardModelError(f"{d}: unknown reward model kind {meta.get('kind')!r}; known: {sorted(_kinds())}")
        model = cls.__new__(cls)
        RewardModel.__init__(model, meta["signal"], int(meta["context_turns"]))
        model.calibration = meta["calibration"]
        model.metrics = meta.get("metrics", {})
        model._from_tensors(meta.get("settings", {}), load_file(str(d / WEIGHTS)), d)
        return model


def _kinds() -> dict[str, type]:
    """Every RewardModel subclass, by kind (subclasses register by being imported)."""
    from . import models  # noqa: F401  (imports every kind)

    out, todo = {}, [RewardModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            out[sub.kind] = sub
            todo.append(sub)
    return out


def _check_pairs(contexts, responses) -> None:
    if isinstance(contexts, str) or isinstance(responses, str):
        raise RewardModelError("contexts and responses must be sequences of strings, not a single string")
    if len(contexts) != len(responses):
        raise RewardModelError(f"{len(contexts)} contexts but {len(responses)} responses; they must pair up")


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def word_counts(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


class LengthRewardModel(RewardModel):
    """Baseline: logistic regression of the label on log(1 + words of the response). It scores length
    alone, so a reward model that does not beat it has learnt nothing but length."""

    kind = "length"

    def __init__(self, signal: str = "love", context_turns: int = 4, l2: float = 1e-4):
        super().__init__(signal, context_turns)
        self.l2 = l2  # ridge penalty on the slope
        self.w = np.zeros(2)  # (intercept, slope on standardised log length)
        self.mu, self.sd = 0.0, 1.0

    def _x(self, responses) -> np.ndarray:
        return (np.log1p(word_counts(responses)) - self.mu) / self.sd

    def fit(self, contexts: Sequence[str], responses: Sequence[str], labels, sample_weight=None) -> "LengthRewardModel":
        _check_pairs(contexts, responses)
        y = np.asarray(labels, dtype=np.float64)
        if len(y) != len(responses) or len(y) == 0:
            raise RewardModelError(f"need one label per response, got {len(y)} labels for {len(responses)} responses")
        if not ((y >= 0) & (y <= 1)).all():
            raise RewardModelError("labels must lie in [0, 1]")
        sw = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        raw = np.log1p(word_counts(responses))
        self.mu, self.sd = float(raw.mean()), float(raw.std() or 1.0)
        x = np.stack([np.ones_like(raw), (raw - self.mu) / self.sd], axis=1)
        w = np.zeros(2)
        for _ in range(50):  # Newton / IRLS
            p = 1.0 / (1.0 + np.exp(-(x @ w)))
            g = x.T @ (sw * (p - y)) + self.l2 * np.array([0.0, w[1]])
            h = (x * (sw * p * (1 - p))[:, None]).T @ x + np.diag([1e-9, self.l2])
            step = np.linalg.solve(h, g)
            w -= step
            if np.abs(step).max() < 1e-10:
                break
        self.w = w
        return self

    def raw_logits(self, contexts, responses) -> np.ndarray:
        return self.w[0] + self.w[1] * self._x(responses)

    def config(self) -> dict:
        return {"l2": self.l2, "mu": self.mu, "sd": self.sd}

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"w": self.w.astype(np.float64)}

    def _from_tensors(self, config, tensors, directory) -> None:
        self.l2, self.mu, self.sd = config["l2"], config["mu"], config["sd"]
        self.w = tensors["w"]
