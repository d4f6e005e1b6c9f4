"""Calibration of a reward model: the prior-shift correction for upsampling, then temperature scaling.

    python -c "from rluf.reward.calibration import prior_shift; print(prior_shift([0.1, 0.5, 0.9], true_rate=0.02, train_rate=0.10))"

Training upsamples the positives from the true base rate pi to pi' (RLUF: pi' = 0.10), so raw scores
over-estimate P[signal]. The correction (METHOD.md 1.3) is

    p = (s pi / pi') / (s pi / pi' + (1 - s)(1 - pi) / (1 - pi'))

which in logit space is z + logit(pi) - logit(pi'). (z is the raw logit less the length term a model
trained with `length_decorrelation` removes; see base.py.) A temperature T, fitted on the validation split
after the shift by minimising the log loss of sigmoid(z / T), then corrects over- or under-confidence.
`calibrate` does both on a model and stores them in `model.calibration`, where `predict_proba`
applies them in that order (see base.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from .base import RewardModel, RewardModelError, logit
from .metrics import ece, log_loss

T_BOUNDS = (0.02, 50.0)  # the search range for the temperature


def prior_shift(p, true_rate: float, train_rate: float) -> np.ndarray:
    """Map probabilities learnt at base rate `train_rate` (pi') to base rate `true_rate` (pi); p of any shape."""
    a = np.asarray(p, dtype=np.float64)
    if not np.isfinite(a).all() or ((a < 0) | (a > 1)).any():
        raise RewardModelError("prior_shift: p must hold finite probabilities in [0, 1]")
    logit(true_rate), logit(train_rate)  # both must lie strictly in (0, 1)
    num = a * (true_rate / train_rate)
    return num / (num + (1 - a) * ((1 - true_rate) / (1 - train_rate)))


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    return float(np.mean(np.logaddexp(0.0, s) - y * s))  # -[y log sig(s) + (1 - y) log(1 - sig(s))]


def fit_temperature(logits, y) -> float:
    """The temperature T in T_BOUNDS minimising the mean log loss of sigmoid(logits / T) against y (0/1 or soft).

    A 1-D bounded search over log T. Returns 1.0 when the logits carry no information to scale (all zero)
    or y holds a single class (the optimum then lies at a bound, pushing every probability to 0 or 1)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if z.ndim != 1 or z.shape != y.shape or z.size == 0:
        raise RewardModelError(f"fit_temperature: logits {z.shape} and labels {y.shape} must be 1-D and pair up")
    if not np.isfinite(z).all() or not np.isfinite(y).all():
        raise RewardModelError("fit_temperature: logits and labels must be finite")
    if ((y < 0) | (y > 1)).any():
        raise RewardModelError("fit_temperature: labels must lie in [0, 1]")
    if not np.any(z) or y.min() == y.max():
        return 1.0
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(lambda u: _nll(z, y, math.exp(u)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})  # fmt: skip
    t = math.exp(float(res.x))
    return t if _nll(z, y, t) <= _nll(z, y, 1.0) else 1.0  # never worse than leaving the scores alone


def _report(y: np.ndarray, p: np.ndarray) -> dict:
    binary = np.isin(y, (0.0, 1.0)).all()
    return {"log_loss": log_loss(y, p), "ece": ece(y, p) if binary else math.nan, "mean_p": float(p.mean())}


def calibrate(model: RewardModel, val_contexts: Sequence[str], val_responses: Sequence[str], val_labels,
              true_rate: float | None, train_rate: float | None) -> dict:  # fmt: skip
    """Set `model.calibration` from the validation split and return the log loss and ECE at each step.

    true_rate: the base rate of the training data before upsampling (pi); train_rate: the share of
    positives the model was trained on (pi'). Pass None for both (or equal rates) when training did not
    upsample. Returns {"n", "positives", "true_rate", "train_rate", "temperature", "raw", "prior_shift",
    "calibrated"}, the last three each {"log_loss", "ece", "mean_p"} on the validation rows.
    """
    y = np.asarray(val_labels, dtype=np.float64)
    if y.ndim != 1 or y.size != len(val_responses) or y.size == 0:
        raise RewardModelError(f"calibrate: need one label per validation response, got {y.size} labels for "
                               f"{len(val_responses)} responses")  # fmt: skip
    if (true_rate is None) != (train_rate is None):
        raise RewardModelError("calibrate: give both true_rate and train_rate, or neither (no upsampling)")
    if true_rate is not None:
        logit(true_rate), logit(train_rate)
    raw = np.asarray(model.length_adjusted_logits(val_contexts, val_responses), dtype=np.float64)
    if raw.shape != y.shape or not np.isfinite(raw).all():
        raise RewardModelError(f"calibrate: the model returned {raw.shape} logits (finite: {np.isfinite(raw).all()}) "
                               f"for {y.size} validation rows")  # fmt: skip
    if not np.isfinite(y).all() or ((y < 0) | (y > 1)).any():
        raise RewardModelError("calibrate: validation labels must be finite and lie in [0, 1]")
    length = {k: model.calibration[k] for k in ("length_slope", "length_center") if k in model.calibration}
    model.calibration = {"true_rate": true_rate, "train_rate": train_rate, "temperature": 1.0, **length}
    shifted = raw + model.prior_shift()
    t = fit_temperature(shifted, y)
    model.calibration["temperature"] = t

    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))

    return {"n": int(y.size), "positives": float(y.sum()), "true_rate": true_rate, "train_rate": train_rate,
            "temperature": t, "raw": _report(y, sig(raw)), "prior_shift": _report(y, sig(shifted)),
            "calibrated": _report(y, sig(shifted / t))}  # fmt: skip
