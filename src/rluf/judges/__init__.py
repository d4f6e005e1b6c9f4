"""Judges: binary constraints on completions (CGPO's Mixture of Judges), as verdicts and as TRL reward functions.

    python -c "from rluf.judges import build_judges; print(build_judges([{'type': 'love_bait'}, {'type': 'repetition'}]).judge_all(['hi'], ['Bye! Sending love!']))"
"""

from .base import FAILED, SATISFIED, VIOLATED, Judge, JudgeError, MixtureOfJudges, pass_rates
from .config import build_judges, load_judge_phrases
from .model import NoRegressionJudge, RewardThresholdJudge
from .rules import LengthJudge, LoveBaitJudge, RefusalJudge, RepetitionJudge

__all__ = ["SATISFIED", "VIOLATED", "FAILED", "Judge", "JudgeError", "MixtureOfJudges", "pass_rates", "build_judges",
           "load_judge_phrases", "LoveBaitJudge", "RefusalJudge", "RepetitionJudge", "LengthJudge",
           "RewardThresholdJudge", "NoRegressionJudge"]
