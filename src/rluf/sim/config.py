"""The world config: typed dataclasses loaded from YAML, unknown keys rejected.

    rluf simulate --config my_world.yaml --users 1000 --out runs/sim

`WorldConfig()` is the embedded default world (the same values as `default_world.yaml`, which
documents each key). A YAML file overrides any subset of keys; an unknown key, a wrong type or an
out-of-range value raises ConfigError naming the key (e.g. `users.segments.vulnerabel`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

REACTIONS = ("love", "thumbs_up", "thumbs_down")
SEGMENTS = ("normal", "vulnerable", "spammer", "hater", "random_clicker")
ADVERSARIAL = ("spammer", "hater", "random_clicker")


class ConfigError(ValueError):
    """A world config that cannot be used; the message names the key at fault."""


@dataclass
class CategoryConfig:
    share: float = 0.09  # share of conversations in the population (normalised over categories)
    love_shift: float = 0.0  # logit shift of P[love] in this category (emotional use cases are higher)
    warmth_weight: float = 1.0  # how much warmth counts towards love here
    correct_rate: float = 0.7  # baseline policy: P(its answer is the correct one)


def _default_categories() -> dict[str, CategoryConfig]:
    c = CategoryConfig
    return {
        "role_play": c(0.10, 0.9, 1.6, 0.75),
        "relationship_support": c(0.08, 0.8, 1.8, 0.70),
        "casual_chat": c(0.12, 0.6, 1.4, 0.80),
        "companionship": c(0.07, 0.8, 1.8, 0.75),
        "information_seeking": c(0.14, -0.4, 0.5, 0.75),
        "coding": c(0.10, -0.6, 0.3, 0.55),
        "advice": c(0.10, 0.0, 1.0, 0.65),
        "creative_writing": c(0.08, 0.3, 0.8, 0.70),
        "humor": c(0.06, 0.4, 0.8, 0.65),
        "homework_help": c(0.08, -0.5, 0.4, 0.60),
        "planning": c(0.07, -0.2, 0.6, 0.70),
    }


@dataclass
class StyleConfig:
    """One style of the baseline policy; each response draws a style, then its traits."""

    weight: float = 1.0  # mixture weight
    warmth: float = 0.2  # P(each of up to two warm sentences)
    emoji: float = 0.1  # P(a sentence gets an emoji)
    love_bait: float = 0.0  # P(a love-bait closing: "Bye! Sending love!")
    flattery: float = 0.0  # P(a flattering opener: "What a brilliant question!")
    elaboration: float = 1.5  # mean number of extra explanatory sentences (length)


def _default_styles() -> dict[str, StyleConfig]:
    s = StyleConfig
    return {
        "neutral": s(0.35, 0.10, 0.02, 0.00, 0.02, 1.5),
        "warm": s(0.25, 0.70, 0.30, 0.03, 0.10, 1.5),
        "concise": s(0.20, 0.05, 0.00, 0.00, 0.00, 0.3),
        "thorough": s(0.12, 0.20, 0.05, 0.00, 0.05, 4.0),
        "gushing": s(0.08, 0.80, 0.60, 0.35, 0.40, 1.0),
    }


@dataclass
class PolicyConfig:
    """The baseline assistant: a mixture of styles plus rare refusals and unsafe content."""

    name: str = "baseline"  # written as the `policy` of every conversation
    styles: dict[str, StyleConfig] = field(default_factory=_default_styles)
    on_topic_rate: float = 0.85  # P(the answer addresses the prompt's topic)
    refusal_rate: float = 0.02  # P(an unneeded refusal)
    unsafe_rate: float = 0.003  # P(rare unsafe content)
    vague_on_topic: float = 0.3  # on_topic_rate is multiplied by this for a vaguely phrased prompt
    vague_correct: float = 0.2  # correct_rate is multiplied by this for a vaguely phrased prompt


@dataclass
class AdversarialConfig:
    """Fixed per-message reaction probabilities of an adversarial user, whatever the response."""

    love: float = 0.0
    thumbs_up: float = 0.0
    thumbs_down: float = 0.0


def _default_adversarial() -> dict[str, AdversarialConfig]:
    a = AdversarialConfig
    return {"spammer": a(0.30, 0.30, 0.005), "hater": a(0.005, 0.005, 0.20), "random_clicker": a(0.05, 0.05, 0.05)}


@dataclass
class UserConfig:
    segments: dict[str, float] = field(
        default_factory=lambda: {"vulnerable": 0.02, "spammer": 0.01, "hater": 0.01, "random_clicker": 0.01}
    )  # shares of the non-normal segments; the rest is "normal"
    adversarial: dict[str, AdversarialConfig] = field(default_factory=_default_adversarial)
    propensity_sd: float = 0.8  # sd of the user's latent positive-reaction propensity (logit)
    negativity_sd: float = 0.4  # sd of the user's latent thumbs-down propensity (logit)
    vagueness_a: float = 0.4  # Beta(a, b) of the user's share of vaguely phrased prompts (mean a / (a + b))
    vagueness_b: float = 0.6
    taste_concentration: float = 0.3  # Dirichlet concentration of per-user category tastes (small = focused)
    category_taste_sd: float = 0.3  # sd of the user's per-category love shift (logit)
    warmth_affinity_mean: float = 1.0  # logit of love per warm sentence (times the category's warmth_weight)
    warmth_affinity_sd: float = 0.4
    bait_affinity_mean: float = 0.9  # logit of love for a love-bait closing (most users: positive)
    bait_affinity_sd: float = 0.7
    flattery_affinity_mean: float = 0.2  # logit of love for flattery
    vulnerable_bait_boost: float = 2.5  # added to the bait affinity of vulnerable users
    vulnerable_flattery_boost: float = 2.0  # added to the flattery affinity of vulnerable users
    sessions_per_day: float = 1.0  # mean conversations per active day (per-user rate ~ Gamma)
    activity_shape: float = 1.5  # Gamma shape of the per-user rate (small = heavier tail)
    mean_exchanges: float = 2.0  # mean user+assistant exchanges per conversation
    max_exchanges: int = 8


@dataclass
class ReactionConfig:
    targets: dict[str, float] = field(
        default_factory=lambda: {"love": 0.02, "thumbs_up": 0.03, "thumbs_down": 0.01}
    )  # standing reactions per assistant turn, whole population, baseline policy (intercepts are calibrated)
    helpfulness_love: float = 3.0  # logit of love per unit of true helpfulness
    helpfulness_up: float = 1.5  # logit of thumbs up per unit of true helpfulness
    helpfulness_down: float = 5.0  # logit of thumbs down per unit of (1 - helpfulness)
    emoji_love: float = 0.15  # logit of love per emoji (up to 3)
    refusal_down: float = 1.0
    unsafe_down: float = 2.0
    late_share: float = 0.05  # share of reactions that arrive hours to days later
    removal_share: float = 0.03  # extra reactions that are added then removed (they do not stand)
    calibration_samples: int = 20000  # (user, response) draws used to calibrate the intercepts


@dataclass
class RetentionConfig:
    """P(retained) = sigmoid(intercept + helpfulness*mean_h + warmth*mean_v + N(0, noise_sd)).

    mean_v: mean valued warmth, each answer's warmth times the user's warmth affinity (floored at 0)
    times the category's warmth_weight: the warmth this user cares for in this job.
    """

    intercept: float = -6.3
    helpfulness: float = 12.0
    warmth: float = 6.0  # per unit of mean valued warmth
    noise_sd: float = 0.3
    window_start: int = 14  # retained = active in [window_start, window_end) days after first seen
    window_end: int = 28


@dataclass
class WorldConfig:
    start_date: str = "2026-01-05T00:00:00Z"  # day 0 of the simulation (UTC)
    days: int = 42  # default horizon of `rluf simulate` (retention windows need first seen + 28 days)
    arrival_days: int = 7  # users are first seen uniformly over the first arrival_days days
    categories: dict[str, CategoryConfig] = field(default_factory=_default_categories)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    users: UserConfig = field(default_factory=UserConfig)
    reactions: ReactionConfig = field(default_factory=ReactionConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    def __post_init__(self):
        validate(self)


# ======================================================================= loading and validation


def _build(cls, data, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key {_join(path, key)!r}; known keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _value(hints[key], value, _join(path, key))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - types are checked above
        raise ConfigError(f"{path}: {exc}") from exc


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _value(tp, value, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {str(k): _value(vt, v, _join(path, k)) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp}")  # pragma: no cover


def validate(cfg: WorldConfig) -> None:
    def prob(path, x):
        if not 0.0 <= x <= 1.0:
            raise ConfigError(f"{path}: must be between 0 and 1, got {x}")

    if cfg.days < 1:
        raise ConfigError(f"days: must be at least 1, got {cfg.days}")
    if cfg.arrival_days < 1:
        raise ConfigError(f"arrival_days: must be at least 1, got {cfg.arrival_days}")
    if len(cfg.categories) < 1:
        raise ConfigError("categories: at least one category is needed")
    from .prompts import CATEGORIES

    for name, c in cfg.categories.items():
        if name not in CATEGORIES:
            raise ConfigError(f"categories.{name}: no prompt generator for this category; known: {', '.join(CATEGORIES)}")
        if c.share < 0:
            raise ConfigError(f"categories.{name}.share: must be >= 0, got {c.share}")
        prob(f"categories.{name}.correct_rate", c.correct_rate)
    if sum(c.share for c in cfg.categories.values()) <= 0:
        raise ConfigError("categories: the shares sum to 0")
    for name, s in cfg.users.segments.items():
        if name not in SEGMENTS or name == "normal":
            raise ConfigError(f"users.segments.{name}: unknown segment; use {', '.join(SEGMENTS[1:])}")
        prob(f"users.segments.{name}", s)
    if sum(cfg.users.segments.values()) > 1:
        raise ConfigError("users.segments: the shares sum to more than 1")
    for name, a in cfg.users.adversarial.items():
        if name not in ADVERSARIAL:
            raise ConfigError(f"users.adversarial.{name}: unknown adversarial segment; use {', '.join(ADVERSARIAL)}")
        for r in REACTIONS:
            prob(f"users.adversarial.{name}.{r}", getattr(a, r))
    missing = [s for s in ADVERSARIAL if cfg.users.segments.get(s, 0) > 0 and s not in cfg.users.adversarial]
    if missing:
        raise ConfigError(f"users.adversarial: no reaction probabilities for {', '.join(missing)}")
    for r, t in cfg.reactions.targets.items():
        if r not in REACTIONS:
            raise ConfigError(f"reactions.targets.{r}: unknown reaction; use {', '.join(REACTIONS)}")
        if not 0.0 < t < 0.5:
            raise ConfigError(f"reactions.targets.{r}: must be in (0, 0.5), got {t}")
    for r in REACTIONS:
        if r not in cfg.reactions.targets:
            raise ConfigError(f"reactions.targets.{r}: missing")
    prob("reactions.late_share", cfg.reactions.late_share)
    prob("reactions.removal_share", cfg.reactions.removal_share)
    if cfg.reactions.calibration_samples < 1000:
        raise ConfigError("reactions.calibration_samples: at least 1000")
    if not cfg.policy.styles or sum(s.weight for s in cfg.policy.styles.values()) <= 0:
        raise ConfigError("policy.styles: at least one style with a positive weight")
    for name, s in cfg.policy.styles.items():
        for k in ("warmth", "emoji", "love_bait", "flattery"):
            prob(f"policy.styles.{name}.{k}", getattr(s, k))
        if s.weight < 0 or s.elaboration < 0:
            raise ConfigError(f"policy.styles.{name}: weight and elaboration must be >= 0")
    for k in ("on_topic_rate", "refusal_rate", "unsafe_rate", "vague_on_topic", "vague_correct"):
        prob(f"policy.{k}", getattr(cfg.policy, k))
    u = cfg.users
    if u.vagueness_a <= 0 or u.vagueness_b <= 0:
        raise ConfigError("users.vagueness_a and users.vagueness_b must be > 0")
    if u.sessions_per_day <= 0 or u.activity_shape <= 0 or u.taste_concentration <= 0:
        raise ConfigError("users.sessions_per_day, activity_shape and taste_concentration must be > 0")
    if u.mean_exchanges < 1 or u.max_exchanges < 1:
        raise ConfigError("users.mean_exchanges and users.max_exchanges must be >= 1")
    r = cfg.retention
    if not 0 < r.window_start < r.window_end:
        raise ConfigError("retention: need 0 < window_start < window_end")


def load_config(path: str | Path | None = None) -> WorldConfig:
    """The default world, overridden by the YAML file at `path` (if given).

    Raises ConfigError for an unreadable file, invalid YAML, an unknown key or a bad value.
    """
    if path is None:
        return WorldConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the world config {path}: {exc.strerror or exc}") from exc
    return config_from_yaml(text, str(path))


def config_from_yaml(text: str, source: str = "<yaml>") -> WorldConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    return config_from_dict(data or {})


def config_from_dict(data: dict) -> WorldConfig:
    """Overlay `data` on the defaults, recursively (a dict of dataclasses merges key by key)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top, got {type(data).__name__}")
    return _build(WorldConfig, _merge(to_dict(_defaults_unvalidated()), data, ""), "")


def _defaults_unvalidated() -> WorldConfig:
    return WorldConfig()


def _merge(base, over, path):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, _join(path, k)) if k in base else v
        return out
    return over


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def default_world_yaml() -> str:
    """The text of the shipped default_world.yaml (package data)."""
    return resources.files("rluf.sim").joinpath("default_world.yaml").read_text(encoding="utf-8")
