"""Reward models as TRL reward functions: picklable callables built from a model directory.

    from trl import GRPOConfig, GRPOTrainer
    from rluf.reward.callables import RewardFunction
    trainer = GRPOTrainer(model=..., args=GRPOConfig(...), train_dataset=...,
                          reward_funcs=[RewardFunction("runs/rm/love"), RewardFunction("runs/rm/love", output="logit")])

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`
and logs it under `f.__name__` (rewards/{name}/mean). Prompts and completions are plain strings or
lists of chat messages ({"role", "content"}); both are rendered exactly as the training examples were
(`rluf.reward.text`): the context is the last `context_turns` turns of the prompt, the response the
text of the completion (its last message). Extra keyword arguments are ignored.

A `RewardFunction` holds only the model directory until first called, then loads the model once;
pickling drops the loaded model (it is reloaded on the other side), so the object travels to worker
processes as a path and a few settings. Scores are the calibrated P[signal] ("prob") or its log-odds
("logit"), one float per completion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import RewardModel, RewardModelError
from .text import as_turns, completion_text, render_context

OUTPUTS = ("prob", "logit")


class RewardFunction:
    """`RewardFunction(model_dir, output="prob" | "logit", name=None, batch_size=256)`: a TRL reward function.

    name: what TRL logs it as (default "p_{signal}" for probabilities, "logit_{signal}" for log-odds);
    batch_size: completions scored per model call."""

    def __init__(self, model_dir: str | Path, output: str = "prob", name: str | None = None, batch_size: int = 256):
        self.model_dir = Path(model_dir)
        if output not in OUTPUTS:
            raise RewardModelError(f"RewardFunction: output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if batch_size < 1:
            raise RewardModelError(f"RewardFunction: batch_size must be >= 1, got {batch_size}")
        cfg = self.model_dir / "config.json"
        if not cfg.is_file():
            raise RewardModelError(f"{self.model_dir}: not a reward model directory (no config.json); train one with "
                                   f"rluf.reward.train.train_reward_model")  # fmt: skip
        try:
            self.signal = str(json.loads(cfg.read_text())["signal"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RewardModelError(f"{cfg}: unreadable reward model config ({exc})") from None
        self.output = output
        self.batch_size = batch_size
        self.__name__ = name or f"{'p' if output == 'prob' else 'logit'}_{self.signal}"
        self._model: RewardModel | None = None

    @property
    def model(self) -> RewardModel:
        """The reward model, loaded on first use."""
        if self._model is None:
            self._model = RewardModel.load(self.model_dir)
        return self._model

    def texts(self, prompts: Sequence[Any], completions: Sequence[Any]) -> tuple[list[str], list[str]]:
        """(contexts, responses) as the model sees them."""
        if isinstance(prompts, str) or isinstance(completions, str):
            raise RewardModelError("prompts and completions must be lists (one entry per completion), not a string")
        if len(prompts) != len(completions):
            raise RewardModelError(f"{len(prompts)} prompts but {len(completions)} completions; TRL passes one prompt "
                                   f"per completion")  # fmt: skip
        k = self.model.context_turns
        return [render_context(as_turns(p), k) for p in prompts], [completion_text(c) for c in completions]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        contexts, responses = self.texts(prompts, completions)
        score = self.model.predict_proba if self.output == "prob" else self.model.predict_logit
        out = [score(contexts[i:i + self.batch_size], responses[i:i + self.batch_size])
               for i in range(0, len(responses), self.batch_size)]  # fmt: skip
        return np.concatenate(out).astype(float).tolist() if out else []

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_model"] = None  # reloaded from model_dir after unpickling
        return state

    def __repr__(self) -> str:
        return f"RewardFunction({str(self.model_dir)!r}, output={self.output!r}, name={self.__name__!r})"
