"""Judges from config: a list of spec dicts becomes a MixtureOfJudges; phrase files extend the specs.

    python -c "from rluf.judges.config import build_judges; moj = build_judges([{'type': 'love_bait'}, {'type': 'length', 'min_words': 3, 'max_words': 120}]); print(moj.names)"

A spec is a dict with a "type" and the judge's arguments (YAML or JSON alike):

    {"type": "love_bait"}                                 LoveBaitJudge (phrases, patterns, replace_defaults)
    {"type": "refusal"}                                   RefusalJudge (phrases, patterns, replace_defaults)
    {"type": "repetition", "max_repeats": 2, "ngram": 4}  RepetitionJudge
    {"type": "length", "min_words": 3, "max_words": 120}  LengthJudge
    {"type": "reward_threshold", "model": DIR, "max": 0.2}   RewardThresholdJudge (min or max, batch_size)
    {"type": "no_regression", "model": DIR, "margin": 0.05}  NoRegressionJudge (batch_size)

Every type also takes "name" (the key of its verdicts and training logs; two judges of one type
need different names). An unknown type or argument raises an error naming the spec's index and
the allowed keys.

A phrase file, as a reward-hacking monitor writes it (YAML or JSON), adds phrases or patterns to
the phrase judges (love_bait, refusal):

    love_bait:
      phrases: ["sending sunshine your way", "hugs and kisses"]
      patterns: ['\\bmwah\\b']

`load_judge_phrases(path, specs)` merges them into every spec of that type, or appends a spec of
that type when there is none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import yaml

from .base import Judge, JudgeError, MixtureOfJudges
from .model import NoRegressionJudge, RewardThresholdJudge
from .rules import LengthJudge, LoveBaitJudge, RefusalJudge, RepetitionJudge

PHRASE_KEYS = ("phrases", "patterns", "replace_defaults", "name")
# type -> (judge class, the keys a spec may carry besides "type")
JUDGE_TYPES: dict[str, tuple[type[Judge], tuple[str, ...]]] = {
    "love_bait": (LoveBaitJudge, PHRASE_KEYS),
    "refusal": (RefusalJudge, PHRASE_KEYS),
    "repetition": (RepetitionJudge, ("max_repeats", "ngram", "name")),
    "length": (LengthJudge, ("min_words", "max_words", "name")),
    "reward_threshold": (RewardThresholdJudge, ("model", "min", "max", "name", "batch_size")),
    "no_regression": (NoRegressionJudge, ("model", "margin", "name", "batch_size")),
}
REQUIRED = {"reward_threshold": ("model",), "no_regression": ("model",)}
PHRASE_TYPES = ("love_bait", "refusal")


def build_judge(spec: dict, index: int = 0) -> Judge:
    """One judge from one spec dict; errors name the spec as judges[index]."""
    where = f"judges[{index}]"
    if not isinstance(spec, dict):
        raise JudgeError(f"{where}: a judge spec is a mapping with a 'type' key, got {spec!r:.80}")
    kind = spec.get("type")
    if kind not in JUDGE_TYPES:
        raise JudgeError(f"{where}: unknown judge type {kind!r}; known types: {', '.join(JUDGE_TYPES)}")
    cls, allowed = JUDGE_TYPES[kind]
    args = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise JudgeError(f"{where} (type {kind!r}): unknown key(s) {unknown}; allowed: type, {', '.join(allowed)}")
    missing = [k for k in REQUIRED.get(kind, ()) if k not in args]
    if missing:
        raise JudgeError(f"{where} (type {kind!r}): missing required key(s) {missing}")
    if "model" in args:
        args["model_dir"] = args.pop("model")
    try:
        return cls(**args)
    except JudgeError as exc:
        raise JudgeError(f"{where} (type {kind!r}): {exc}") from None


def build_judges(specs: Sequence[dict]) -> MixtureOfJudges:
    """The MixtureOfJudges (AND) of the judges the specs describe, in order."""
    if isinstance(specs, (str, dict)) or not isinstance(specs, Sequence):
        raise JudgeError(f"judges must be a list of spec dicts, got {type(specs).__name__}")
    return MixtureOfJudges([build_judge(s, i) for i, s in enumerate(specs)])


def read_config_file(path: str | Path) -> Any:
    """A YAML or JSON file's content (JSON is read as JSON when the suffix is .json, otherwise as YAML)."""
    p = Path(path)
    if not p.is_file():
        raise JudgeError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
        return json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise JudgeError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'} ({exc})") from None


def _phrase_lists(found: Any, where: str) -> dict[str, dict[str, list[str]]]:
    if not isinstance(found, dict):
        raise JudgeError(f"{where}: expected a mapping like {{'love_bait': {{'phrases': [...]}}}}, got {found!r:.80}")
    out = {}
    for kind, entry in found.items():
        if kind not in PHRASE_TYPES:
            raise JudgeError(f"{where}: unknown judge type {kind!r}; phrases extend: {', '.join(PHRASE_TYPES)}")
        if not isinstance(entry, dict) or set(entry) - {"phrases", "patterns"}:
            raise JudgeError(f"{where}: {kind} must be a mapping with 'phrases' and/or 'patterns', got {entry!r:.80}")
        lists = {}
        for key in ("phrases", "patterns"):
            xs = entry.get(key) or []
            if isinstance(xs, str) or not isinstance(xs, list) or not all(isinstance(x, str) and x.strip() for x in xs):
                raise JudgeError(f"{where}: {kind}.{key} must be a list of non-empty strings, got {xs!r:.80}")
            lists[key] = xs
        out[kind] = lists
    return out


def load_judge_phrases(path: str | Path, specs: Sequence[dict] = ()) -> list[dict]:
    """`specs` with the phrases and patterns of the file at `path` merged in (new dicts; duplicates dropped).

    Each type in the file extends every spec of that type; when `specs` has none, a spec of that type
    is appended (so `load_judge_phrases(path)` alone gives the specs of the file's judges)."""
    found = _phrase_lists(read_config_file(path), str(path))
    for i, s in enumerate(specs):
        if not isinstance(s, dict):
            raise JudgeError(f"judges[{i}]: a judge spec is a mapping with a 'type' key, got {s!r:.80}")
    out = [dict(s) for s in specs]
    for kind, lists in found.items():
        targets = [s for s in out if s.get("type") == kind]
        if not targets:
            targets = [{"type": kind}]
            out.append(targets[0])
        for s in targets:
            for key, xs in lists.items():
                if xs:
                    s[key] = list(dict.fromkeys(list(s.get(key) or []) + xs))
    for i, s in enumerate(out):  # a bad pattern fails here, not at training time
        if s.get("type") in found:
            build_judge(s, i)
    return out
