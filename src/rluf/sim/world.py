"""The simulated world: a config, a user population, and `World.serve` to run any policy against it.

    python -c "from rluf.sim.world import World; w = World(seed=1); print(next(w.serve(users=range(1))).records[0])"

`World.serve(policy, users, days, start_day)` simulates each user's life: they arrive on some day,
hold conversations on the days they are active (a per-user rate), get their answers from `policy`,
and react to each answer according to the true reaction model (reactions.py). After
`retention.window_start` days (14 by default) each user decides whether to stay:
P(retained) = sigmoid(a + b * mean experienced helpfulness + c * mean valued warmth + noise), the
valued warmth being each answer's warmth times how much this user values warmth in its category.
Retained users stay active through the retention window (days 14-27 after first seen) and beyond;
the others stop, so the retention that `rluf stats` derives from activity equals the truth.

Each user comes back as a `UserLog`: nested conversation records in the data contract (what
production would log), and the hidden truth rows (per assistant message and per user), which go to
a separate place and must never reach training code.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from typing import Iterable, Iterator

import numpy as np

from . import prompts
from .config import REACTIONS, WorldConfig
from .policy import BaselinePolicy, as_respond
from .reactions import extract_features, helpfulness, logits, sigmoid, warmth
from .users import User, make_user

DAY = 86_400
SESSION_SLACK = 3_600  # sessions start at least an hour before a day boundary: a conversation never spans it

MESSAGE_TRUTH = ("message_id", "conversation_id", "user_id", "time", "category", "segment", "policy",
                 "p_love", "p_thumbs_up", "p_thumbs_down", "helpfulness", "warmth", "safety",
                 "love_bait", "refusal", "flattery", "on_topic", "correct", "warm_sentences", "emojis", "words")  # fmt: skip
USER_TRUTH = ("user_id", "segment", "propensity", "negativity", "bait_affinity", "sessions_per_day", "first_seen",
              "p_retained", "retained", "mean_helpfulness", "mean_warmth", "mean_valued_warmth", "n_conversations",
              "n_assistant_messages")  # fmt: skip


@dataclasses.dataclass
class UserLog:
    records: list[dict]  # nested conversations in the data contract
    messages: list[tuple]  # truth per assistant message, in MESSAGE_TRUTH order
    user: tuple | None  # truth per user, in USER_TRUTH order (None when the user was never active)


class World:
    """config + population + calibrated reaction intercepts.

    seed: draws the population and everything that happens (same seed and config, same output).
    intercepts: (love, thumbs_up, thumbs_down) logit intercepts; default: calibrated so that the
    baseline policy meets `reactions.targets` over the whole population (see `calibrate`).
    """

    def __init__(self, config: WorldConfig | None = None, seed: int = 0, intercepts: tuple | None = None):
        self.config = cfg = config or WorldConfig()
        self.seed = int(seed)
        self.categories = tuple(cfg.categories)
        self.cat_params = tuple((c.love_shift, c.warmth_weight) for c in cfg.categories.values())
        self.baseline = BaselinePolicy(cfg.policy, {k: c.correct_rate for k, c in cfg.categories.items()})
        self.start = int(datetime.fromisoformat(cfg.start_date.replace("Z", "+00:00")).timestamp())
        self._days: dict[int, str] = {}
        self.intercepts = tuple(intercepts) if intercepts is not None else self.calibrate()

    # ------------------------------------------------------------------ population

    def user(self, index: int, stream: int = 0, prefix: str = "") -> User:
        return make_user(self.config, self.seed, index, stream, prefix)

    def calibrate(self) -> tuple[float, float, float]:
        """Intercepts such that the baseline's standing reaction rates hit the targets.

        Uses `reactions.calibration_samples` (user, first turn) draws from a fixed stream (seed 0,
        stream 1), so the intercepts are a property of the config alone, not of the run's seed.
        """
        cfg, n = self.config, self.config.reactions.calibration_samples
        rest = np.zeros((n, 3))
        fixed = np.full((n, 3), np.nan)
        zero = (0.0, 0.0, 0.0)
        for i in range(n):
            u = make_user(cfg, 0, i, stream=1)
            if u.adversarial is not None:
                fixed[i] = u.adversarial
                continue
            ci = u.pick_category()
            u.cat_shift = u.cat_shifts[ci]
            text, _ = prompts.first_prompt(self.categories[ci], u.rng, u.rng.random() < u.vagueness)
            context = [{"role": "user", "text": text, "category": self.categories[ci]}]
            f = extract_features(context, self.baseline.respond(context, u.rng))
            rest[i] = logits(cfg.reactions, zero, u, self.cat_params[ci], f, helpfulness(f))
        adv = ~np.isnan(fixed[:, 0])
        out = []
        for r, name in enumerate(REACTIONS):
            target = cfg.reactions.targets[name]
            fixed_sum = fixed[adv, r].sum()
            lo, hi = -30.0, 30.0
            for _ in range(80):
                mid = (lo + hi) / 2
                mean = (fixed_sum + (1 / (1 + np.exp(-(rest[~adv, r] + mid)))).sum()) / n
                lo, hi = (mid, hi) if mean < target else (lo, mid)
            out.append(round((lo + hi) / 2, 6))
        return tuple(out)

    # ------------------------------------------------------------------ serving

    def serve(self, policy=None, users: Iterable[int] | int = 1000, days: int | None = None, start_day: int = 0,
              policy_name: str | None = None, prefix: str = "", batch_users: int = 1) -> Iterator[UserLog]:  # fmt: skip
        """Simulate `users` (a count or user indices) for `days` days answered by `policy`.

        policy: an object with respond(context, rng) -> str, or such a function; default: the baseline.
        start_day: day offset of day 0 from config.start_date (e.g. an A/B test after the logs).
        prefix: prepended to user and conversation ids (distinct ids for distinct runs in one store).
        batch_users: with a policy that has respond_batch(contexts, rngs) -> list[str] (a model served
        by rluf.policy.generate.PolicyResponder), up to this many users live at once and their pending
        turns are answered in one batch: the same users and the same draws, at a batch's cost per round.
        Yields one UserLog per user that was active, in user order.
        """
        name = policy_name or (self.config.policy.name if policy is None else getattr(policy, "name", None)
                               or getattr(policy, "__name__", "custom"))  # fmt: skip
        days = self.config.days if days is None else days
        indices = range(users) if isinstance(users, int) else users
        respond_batch = None if policy is None else getattr(policy, "respond_batch", None)
        if respond_batch is not None and batch_users > 1:
            yield from self._serve_batched(respond_batch, indices, name, days, start_day, prefix, batch_users)
            return
        respond = self.baseline.respond if policy is None else as_respond(policy)
        for index in indices:
            log = self.simulate_user(index, respond, name, days, start_day, prefix)
            if log.user is not None:
                yield log

    def _serve_batched(self, respond_batch, indices, name, days, start_day, prefix, width) -> Iterator[UserLog]:
        """Up to `width` users live at once; each round, every waiting user's context is answered in one
        `respond_batch(contexts, rngs)` call. Logs come out in user order, as from the one-at-a-time path."""
        pending = iter(indices)
        live: dict[int, tuple] = {}  # position -> (generator, its request)
        done: dict[int, UserLog] = {}
        position, emitted, exhausted = 0, 0, False
        while True:
            while not exhausted and len(live) < width:
                index = next(pending, None)
                if index is None:
                    exhausted = True
                    break
                gen = self._user_steps(index, name, days, start_day, prefix)
                self._advance(gen, None, position, live, done)
                position += 1
            while emitted in done:
                log = done.pop(emitted)
                emitted += 1
                if log.user is not None:
                    yield log
            if not live:
                if exhausted:
                    return
                continue
            order = sorted(live)
            requests = [live[k][1] for k in order]
            replies = respond_batch([c for c, _ in requests], [r for _, r in requests])
            if len(replies) != len(requests):
                raise TypeError(f"respond_batch returned {len(replies)} replies for {len(requests)} contexts")
            for k, reply in zip(order, replies):
                self._advance(live.pop(k)[0], reply, k, live, done)

    @staticmethod
    def _advance(gen, reply, position: int, live: dict, done: dict) -> None:
        try:
            live[position] = (gen, gen.send(reply))
        except StopIteration as stop:
            done[position] = stop.value

    def simulate_user(self, index: int, respond, policy_name: str, days: int, start_day: int = 0,
                      prefix: str = "") -> UserLog:  # fmt: skip
        """One user's whole life, each turn answered by `respond(context, rng)`."""
        gen = self._user_steps(index, policy_name, days, start_day, prefix)
        reply = None
        try:
            while True:
                context, rng = gen.send(reply)
                reply = respond(context, rng)
        except StopIteration as stop:
            return stop.value

    def _user_steps(self, index: int, policy_name: str, days: int, start_day: int = 0, prefix: str = ""):
        """A generator: yields (context, the user's rng) for every assistant turn, is sent the reply, and
        returns the UserLog."""
        cfg = self.config
        u = self.user(index, prefix=prefix)
        rng = u.rng
        t0_day = self.start + (start_day + min(u.arrival_day, days - 1)) * DAY
        horizon = self.start + (start_day + days) * DAY
        first = t0_day + rng.randrange(DAY - SESSION_SLACK)
        log = UserLog([], [], None)
        state = {"h": 0.0, "w": 0.0, "v": 0.0, "n": 0}
        # days 0 .. window_start-1 after first seen; then the retention decision
        rs, re_ = cfg.retention.window_start, cfg.retention.window_end
        sessions = [first] + self._sessions(u, first, 0, rs, horizon)
        for s in sessions:
            yield from self._conversation(u, s, policy_name, log, state, prefix)
        mh = state["h"] / max(state["n"], 1)
        mw = state["w"] / max(state["n"], 1)
        mv = state["v"] / max(state["n"], 1)
        r = cfg.retention
        p_ret = sigmoid(r.intercept + r.helpfulness * mh + r.warmth * mv + rng.gauss(0.0, r.noise_sd))
        retained = rng.random() < p_ret
        if retained:
            later = self._sessions(u, first, rs, 10**6, horizon)
            in_window = [s for s in later if s < first + re_ * DAY]
            if not in_window:  # a retained user comes back at least once in the window (if it is observed)
                d = rng.randrange(rs, re_)
                s = first + d * DAY + rng.randrange(DAY - SESSION_SLACK)
                if s + SESSION_SLACK < horizon:
                    later = sorted(later + [s])
            for s in later:
                yield from self._conversation(u, s, policy_name, log, state, prefix)
        if log.records:
            log.user = (u.user_id, u.segment, u.z_pos, u.z_neg, u.bait_aff, u.rate, first, p_ret, retained,
                        mh, mw, mv, len(log.records), state["n"])  # fmt: skip
        return log

    def _sessions(self, u: User, first: int, d0: int, d1: int, horizon: int) -> list[int]:
        """Session start times on days [d0, d1) after first seen, before the horizon."""
        rng, out = u.rng, []
        for d in range(d0, d1):
            day_start = first + d * DAY
            if day_start + SESSION_SLACK >= horizon:
                break
            for _ in range(_poisson(rng, u.rate)):
                if d == 0:  # after the first session, the same day
                    s = first + rng.randrange(DAY - SESSION_SLACK)
                else:
                    s = day_start + rng.randrange(DAY - SESSION_SLACK)
                if s + SESSION_SLACK < horizon:
                    out.append(s)
        out.sort()
        return out

    def _conversation(self, u: User, t: int, policy_name: str, log: UserLog, state: dict, prefix: str):
        cfg, rng = self.config, u.rng
        rc = cfg.reactions
        ci = u.pick_category()
        cat = self.categories[ci]
        u.cat_shift = u.cat_shifts[ci]
        cid = f"{u.user_id}-c{len(log.records):05d}"
        n = 1
        p_more = 1.0 - 1.0 / cfg.users.mean_exchanges
        while n < cfg.users.max_exchanges and rng.random() < p_more:
            n += 1
        context: list[dict] = []
        turns: list[dict] = []
        text, topic = prompts.first_prompt(cat, rng, rng.random() < u.vagueness)
        iso = self.iso
        started = t
        kind = None  # how the previous answer landed: the follow-up prompt depends on it
        for e in range(n):
            if e:
                text = prompts.follow_up(cat, topic, kind, rng, rng.random() < u.vagueness)
            context.append({"role": "user", "text": text, "category": cat})
            turns.append({"message_id": f"{cid}:{len(turns)}", "role": "user", "text": text, "time": iso(t)})
            response = yield context, rng
            if not isinstance(response, str):
                raise TypeError(f"a policy must return a str, got {type(response).__name__}")
            t += rng.randint(2, 12)
            f = extract_features(context, response)
            h, w = helpfulness(f), warmth(f)
            if u.adversarial is not None:
                probs = u.adversarial
            else:
                probs = tuple(sigmoid(x) for x in logits(rc, self.intercepts, u, self.cat_params[ci], f, h))
            mid = f"{cid}:{len(turns)}"
            turn = {"message_id": mid, "role": "assistant", "text": response, "time": iso(t)}
            events = self._reactions(rng, probs, t, rc)
            if events:
                turn["reactions"] = events
            turns.append(turn)
            context.append({"role": "assistant", "text": response})
            log.messages.append((mid, cid, u.user_id, t, cat, u.segment, policy_name, probs[0], probs[1], probs[2],
                                 h, w, "unsafe" if f.unsafe else "safe", bool(f.bait), bool(f.refusal),
                                 bool(f.flattery), bool(f.on_topic), bool(f.correct), f.warm, f.emoji, f.words))  # fmt: skip
            state["h"] += h
            state["w"] += w
            state["v"] += w * max(u.warm_aff, 0.0) * self.cat_params[ci][1]  # warmth as this user values it here
            state["n"] += 1
            kind = "refused" if f.refusal else "unhelpful" if h < 0.4 else "helpful"
            t += rng.randint(15, 120)
        log.records.append({"conversation_id": cid, "user_id": u.user_id, "started_at": iso(started), "category": cat,
                            "policy": policy_name, "turns": turns})  # fmt: skip

    def _reactions(self, rng, probs, t: int, rc) -> list[dict]:
        events = []
        ghost = rc.removal_share / (1.0 - rc.removal_share) if rc.removal_share < 1 else 0.0
        for name, p in zip(REACTIONS, probs):
            if rng.random() < p:  # a reaction that stands
                events.append({"name": name, "time": self.iso(t + self._delay(rng, rc))})
            elif rng.random() < p * ghost:  # added, then taken back
                at = t + self._delay(rng, rc)
                events.append({"name": name, "time": self.iso(at)})
                events.append({"name": name, "action": "remove", "time": self.iso(at + 1 + int(rng.expovariate(1 / 120)))})
        return events

    @staticmethod
    def _delay(rng, rc) -> int:
        if rng.random() < rc.late_share:
            return rng.randint(3_600, 7 * DAY)  # late: an hour to a week later
        return 1 + int(rng.expovariate(1 / 40))

    def iso(self, t: int) -> str:
        d, rem = divmod(t, DAY)
        day = self._days.get(d)
        if day is None:
            day = self._days[d] = datetime.fromtimestamp(d * DAY, tz=timezone.utc).strftime("%Y-%m-%d")
        h, rem = divmod(rem, 3600)
        m, s = divmod(rem, 60)
        return f"{day}T{h:02d}:{m:02d}:{s:02d}Z"


def _poisson(rng, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
