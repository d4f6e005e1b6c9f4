"""The judge contract: binary verdicts on (prompt, completion) pairs, and their AND, the Mixture of Judges.

    python -c "from rluf.judges.base import MixtureOfJudges; from rluf.judges.rules import LoveBaitJudge, LengthJudge; moj = MixtureOfJudges([LoveBaitJudge(), LengthJudge(min_words=3)]); print(moj.judge_all(['hi', 'hi'], ['Here is a plan for you.', 'Bye! Sending love!']))"

A judge checks one constraint of CGPO (Xu et al. 2024, METHOD.md 2.9) and answers per completion
with an int verdict, as TRL's `BaseBinaryJudge` does:

    SATISFIED = 1   the completion meets the constraint
    VIOLATED  = 0   it does not
    FAILED    = -1  the judge could not decide (its model raised, the completion is not text, ...)

A failure is reported as -1 and never counted as a pass. `MixtureOfJudges` combines judges by AND,
as TRL's `AllTrueJudge`: 1 only if every judge says 1, -1 if any says -1, 0 otherwise. CGPO calls a
completion "satisfied" when it passes every judge (eq. 4, Algorithm 1); the policy optimizers give
violated completions a reward of 0 (eq. 8).

Prompts and completions come as TRL passes them: plain strings or lists of chat messages
({"role", "content"}); `rluf.reward.text` reads both. `gold_completions` are the baseline responses
(ā of CGPO eq. 5), one per prompt, for judges that compare against them.

Every judge is also a TRL reward function: `judge(prompts=..., completions=..., **columns)` returns
1.0 (satisfied), 0.0 (violated) or None (failed: TRL's "not applicable", which it turns into NaN and
leaves out of the weighted sum), and TRL logs it under `judge.__name__` (= `judge.name`). Judges are
picklable: model judges keep only their model directory and reload the model after unpickling.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

SATISFIED, VIOLATED, FAILED = 1, 0, -1
VERDICTS = (SATISFIED, VIOLATED, FAILED)

log = logging.getLogger(__name__)


class JudgeError(ValueError):
    pass


def check_inputs(prompts: Sequence[Any], completions: Sequence[Any], gold_completions: Sequence[Any] | None = None,
                 where: str = "judge") -> None:  # fmt: skip
    """Raise JudgeError unless prompts, completions (and gold_completions) are equally long lists."""
    named = [("prompts", prompts), ("completions", completions)]
    if gold_completions is not None:
        named.append(("gold_completions", gold_completions))
    for what, xs in named:
        if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
            raise JudgeError(f"{where}: {what} must be a list with one entry per completion, got "
                             f"{type(xs).__name__}; wrap a single item in a list")  # fmt: skip
    if len(prompts) != len(completions):
        raise JudgeError(f"{where}: {len(prompts)} prompts but {len(completions)} completions; pass one prompt per "
                         f"completion (repeat a prompt for each of its completions)")  # fmt: skip
    if gold_completions is not None and len(gold_completions) != len(completions):
        raise JudgeError(f"{where}: {len(gold_completions)} gold_completions but {len(completions)} completions; "
                         f"pass one gold (baseline) completion per completion")  # fmt: skip


class Judge:
    """Base class. A rule judge implements `satisfied(prompt, completion, gold) -> bool` for one item;
    a judge that decides a whole batch at once (a model judge) overrides `_judge` instead.

    `judge` validates the inputs and turns an exception raised on one item into FAILED for that item."""

    default_name = "judge"

    def __init__(self, name: str | None = None):
        name = self.default_name if name is None else name
        if not isinstance(name, str) or not name.strip():
            raise JudgeError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        self.name = name
        self.__name__ = name  # TRL logs a reward function under its __name__

    def satisfied(self, prompt: Any, completion: Any, gold: Any = None) -> bool:
        raise NotImplementedError

    def judge(self, prompts: Sequence[Any], completions: Sequence[Any],
              gold_completions: Sequence[Any] | None = None) -> list[int]:  # fmt: skip
        """One verdict per completion: 1 satisfied, 0 violated, -1 failed."""
        check_inputs(prompts, completions, gold_completions, where=self.name)
        return self._judge(prompts, completions, gold_completions)

    def _judge(self, prompts, completions, gold_completions) -> list[int]:
        golds = gold_completions if gold_completions is not None else [None] * len(completions)
        out, errors = [], []
        for p, c, g in zip(prompts, completions, golds):
            try:
                out.append(SATISFIED if self.satisfied(p, c, g) else VIOLATED)
            except Exception as exc:  # a judge that cannot decide reports it, it never passes the item
                out.append(FAILED)
                errors.append(exc)
        if errors:
            log.warning("judge %s failed on %d of %d items; first error: %r", self.name, len(errors), len(out),
                        errors[0])  # fmt: skip
        return out

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], gold_completions: Sequence[Any] | None = None,
                 **kwargs) -> list[float | None]:  # fmt: skip
        """TRL reward function: 1.0 satisfied, 0.0 violated, None failed.

        gold_completions defaults to a `baseline` dataset column when TRL passes one (the prompt rows of
        rluf.policy carry the logged baseline reply there); other keyword arguments are ignored."""
        if gold_completions is None:
            gold_completions = kwargs.get("baseline")
        return [None if v == FAILED else float(v) for v in self.judge(prompts, completions, gold_completions)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def combine(verdicts: Sequence[Sequence[int]], n: int) -> list[int]:
    """AND of per-judge verdict lists (each of length n): 1 if all 1, -1 if any -1, else 0; all 1 for no judges."""
    out = [SATISFIED] * n
    for vs in verdicts:
        for i, v in enumerate(vs):
            if v == FAILED:
                out[i] = FAILED
            elif v == VIOLATED and out[i] != FAILED:
                out[i] = VIOLATED
    return out


class MixtureOfJudges(Judge):
    """`MixtureOfJudges(judges, name="all_judges")`: the AND of judges (TRL's AllTrueJudge, CGPO's MoJ).

    Judge names must be unique (they key `judge_all` and the training logs). With no judges every
    completion is satisfied (the AND of nothing)."""

    default_name = "all_judges"

    def __init__(self, judges: Sequence[Judge], name: str | None = None):
        super().__init__(name)
        if isinstance(judges, Judge) or not isinstance(judges, Sequence):
            raise JudgeError(f"MixtureOfJudges: judges must be a list of Judge objects, got {type(judges).__name__}")
        for i, j in enumerate(judges):
            if not isinstance(j, Judge):
                raise JudgeError(f"MixtureOfJudges: judges[{i}] is a {type(j).__name__}, not a Judge")
        names = [j.name for j in judges]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise JudgeError(f"MixtureOfJudges: judge names must be unique, {dupes} repeat; give each judge its own "
                             f"name (the 'name' key of its spec)")  # fmt: skip
        self.judges = list(judges)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.judges]

    def judge_all(self, prompts: Sequence[Any], completions: Sequence[Any],
                  gold_completions: Sequence[Any] | None = None) -> dict[str, list[int]]:  # fmt: skip
        """Per-judge verdicts, {judge name: [1 | 0 | -1 per completion]}, in the judges' order."""
        check_inputs(prompts, completions, gold_completions, where=self.name)
        out = {}
        for j in self.judges:
            vs = j.judge(prompts, completions, gold_completions)
            if len(vs) != len(completions) or any(v not in VERDICTS for v in vs):
                raise JudgeError(f"judge {j.name} returned {len(vs)} verdicts for {len(completions)} completions "
                                 f"(each must be 1, 0 or -1)")  # fmt: skip
            out[j.name] = vs
        return out

    def _judge(self, prompts, completions, gold_completions) -> list[int]:
        return combine(list(self.judge_all(prompts, completions, gold_completions).values()), len(completions))

    def __repr__(self) -> str:
        return f"MixtureOfJudges({self.judges!r})"


def pass_rates(verdicts_by_judge: dict[str, Sequence[int]]) -> dict[str, dict]:
    """{name: {"pass_rate", "fail_rate", "n"}} from `judge_all` output: the share of 1 and of -1.

    Log them as judges/{name}/pass_rate and judges/{name}/fail_rate. Rates are NaN for n = 0."""
    out = {}
    for name, vs in verdicts_by_judge.items():
        n = len(vs)
        bad = [v for v in vs if v not in VERDICTS]
        if bad:
            raise JudgeError(f"pass_rates: judge {name} has verdicts {sorted(set(bad))[:5]}; verdicts are 1, 0 or -1")
        out[name] = {"pass_rate": sum(v == SATISFIED for v in vs) / n if n else float("nan"),
                     "fail_rate": sum(v == FAILED for v in vs) / n if n else float("nan"), "n": n}  # fmt: skip
    return out
