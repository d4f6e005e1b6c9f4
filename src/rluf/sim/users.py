"""The user population: segments, latent reaction propensities, per-category tastes, activity.

    python -c "from rluf.sim.world import World; print(World(seed=0).user(7))"

Each user is drawn from their own random stream, seeded from (seed, stream, user index) through
numpy's SeedSequence (spawn keys), so a user is the same whichever shard or worker simulates them.
Segments: normal; vulnerable (about 2 %: love-bait and flattery sway them strongly); and the
adversarial spammer (loves and likes everything), hater (thumbs everything down) and random_clicker
(reacts at random), whose reactions ignore the response. Traits:

- z_pos, z_neg: latent propensities to react positively / with thumbs down (logit shifts).
- taste: Dirichlet category preferences (which jobs they bring); cat_shift: per-category love shift.
- warm_aff, bait_aff, flat_aff: how much warmth, love-bait closings and flattery move their love.
- rate: conversations per active day (Gamma); arrival_day: the day they are first seen.
- vagueness: how often they phrase a prompt vaguely (the baseline answers those worse).
"""

from __future__ import annotations

import bisect
import dataclasses
import random

import numpy as np

from .config import ADVERSARIAL, SEGMENTS, WorldConfig


@dataclasses.dataclass(slots=True)
class User:
    index: int
    user_id: str
    segment: str
    z_pos: float
    z_neg: float
    cat_shifts: list[float]
    taste_cum: list[float]  # cumulative category preferences (for bisect)
    taste: list[float]
    warm_aff: float
    bait_aff: float
    flat_aff: float
    rate: float
    vagueness: float  # P(a prompt of theirs is phrased vaguely)
    arrival_day: int
    adversarial: tuple[float, float, float] | None  # fixed (love, up, down) probabilities, or None
    rng: random.Random = dataclasses.field(repr=False)
    cat_shift: float = 0.0  # the shift of the category at hand (set per conversation)

    def pick_category(self) -> int:
        return min(bisect.bisect_right(self.taste_cum, self.rng.random()), len(self.taste_cum) - 1)


def user_rng(seed: int, index: int, stream: int = 0) -> random.Random:
    """The user's own stream: SeedSequence(seed, spawn_key=(stream, index)) -> random.Random."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(stream, index)).generate_state(4, dtype=np.uint32)
    return random.Random(int.from_bytes(state.tobytes(), "little"))


def make_user(cfg: WorldConfig, seed: int, index: int, stream: int = 0, prefix: str = "") -> User:
    rng = user_rng(seed, index, stream)
    u = cfg.users
    x, segment = rng.random(), "normal"
    acc = 0.0
    for s in SEGMENTS[1:]:  # a fixed order: the draw means the same whatever the YAML order
        acc += u.segments.get(s, 0.0)
        if x < acc:
            segment = s
            break
    shares = [c.share for c in cfg.categories.values()]
    total = sum(shares)
    k = len(shares)
    g = [rng.gammavariate(u.taste_concentration * k * s / total, 1.0) if s > 0 else 0.0 for s in shares]
    if sum(g) <= 0:  # tiny concentrations can underflow: fall back to the population shares
        g = shares
    gs = sum(g)
    taste = [v / gs for v in g]
    cum, acc = [], 0.0
    for v in taste:
        acc += v
        cum.append(acc)
    bait_aff = rng.gauss(u.bait_affinity_mean, u.bait_affinity_sd)
    flat_aff = rng.gauss(u.flattery_affinity_mean, 0.3)
    if segment == "vulnerable":
        bait_aff += u.vulnerable_bait_boost
        flat_aff += u.vulnerable_flattery_boost
    adv = None
    if segment in ADVERSARIAL:
        a = u.adversarial[segment]
        adv = (a.love, a.thumbs_up, a.thumbs_down)
    return User(
        index=index, user_id=f"{prefix}u{index:07d}", segment=segment,
        z_pos=rng.gauss(0.0, u.propensity_sd), z_neg=rng.gauss(0.0, u.negativity_sd),
        cat_shifts=[rng.gauss(0.0, u.category_taste_sd) for _ in shares], taste_cum=cum, taste=taste,
        warm_aff=rng.gauss(u.warmth_affinity_mean, u.warmth_affinity_sd), bait_aff=bait_aff, flat_aff=flat_aff,
        rate=rng.gammavariate(u.activity_shape, u.sessions_per_day / u.activity_shape),
        vagueness=rng.betavariate(u.vagueness_a, u.vagueness_b),
        arrival_day=rng.randrange(max(1, cfg.arrival_days)), adversarial=adv, rng=rng,
    )  # fmt: skip
