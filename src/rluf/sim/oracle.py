"""The oracle: the true population probability of a reaction for any (context, response) text.

    python -c "from rluf.sim.oracle import Oracle; print(Oracle().probabilities([[{'role': 'user', 'text': 'i feel lonely tonight'}]], ['I am here for you. Bye! Sending love!'], ['companionship']))"

For a conversation of category c, the population probability of a reaction is the expectation of
P(reaction | user, features(response)) over the users who bring category-c conversations: users
weighted by their taste for c times their activity rate. The expectation is taken over a fixed
panel of `panel_size` users drawn from the world's population (a Monte Carlo approximation, seed 0,
stream 2), so it depends on the config alone. Retention, which lengthens some users' histories, is
not in the weights: a second-order approximation.

A reward model sees the context and the response, not the user, and the simulator's prompts do not
depend on the user beyond the category, so this probability is the best any such model can score
with; `bayes_optimal_auroc` turns it into the AUROC ceiling we report against.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .config import REACTIONS
from .reactions import Features, extract_features, helpfulness, logits
from .users import make_user

CHUNK = 512


class Oracle:
    def __init__(self, world=None, panel_size: int = 4000):
        from .world import World

        self.world = world or World()
        cfg = self.world.config
        panel = [make_user(cfg, 0, i, stream=2) for i in range(panel_size)]
        col = lambda name: np.array([getattr(u, name) for u in panel], dtype=float)[None, :]  # noqa: E731
        self.users = SimpleNamespace(z_pos=col("z_pos"), z_neg=col("z_neg"), warm_aff=col("warm_aff"),
                                     bait_aff=col("bait_aff"), flat_aff=col("flat_aff"), cat_shift=0.0)  # fmt: skip
        self.cat_shifts = np.array([u.cat_shifts for u in panel])  # (M, K)
        rate = np.array([u.rate for u in panel])
        self.weights = np.array([u.taste for u in panel]) * rate[:, None]  # (M, K): who brings category k
        self.adv_mask = np.array([u.adversarial is not None for u in panel])
        self.adv = np.array([u.adversarial or (0.0, 0.0, 0.0) for u in panel])  # (M, 3)
        self.segments = np.array([u.segment for u in panel])

    def probabilities(self, contexts: list[list[dict]], responses: list[str], categories: list[str]) -> np.ndarray:
        """(N, 3) population probabilities of (love, thumbs_up, thumbs_down) for N (context, response) pairs.

        contexts[i]: the conversation before responses[i], a list of {"role", "text"} dicts.
        categories[i]: the conversation's category (one of the world's categories).
        """
        if not len(contexts) == len(responses) == len(categories):
            raise ValueError("contexts, responses and categories must have the same length")
        feats = [extract_features(c, r) for c, r in zip(contexts, responses)]
        return self.probabilities_from_features(feats, categories)

    def probabilities_from_features(self, feats: list[Features], categories: list[str]) -> np.ndarray:
        index = {c: k for k, c in enumerate(self.world.categories)}
        unknown = sorted({c for c in categories if c not in index})
        if unknown:
            raise ValueError(f"unknown categories {unknown}; the world has {', '.join(self.world.categories)}")
        out = np.zeros((len(feats), 3))
        cats = np.array([index[c] for c in categories], dtype=int)
        F = np.array(feats, dtype=float).reshape(-1, len(Features._fields))
        for k in np.unique(cats):
            rows = np.flatnonzero(cats == k)
            w = self.weights[:, k]
            w = w / w.sum()
            self.users.cat_shift = self.cat_shifts[:, k][None, :]
            for s in range(0, len(rows), CHUNK):
                r = rows[s : s + CHUNK]
                f = SimpleNamespace(**{name: F[r, j][:, None] for j, name in enumerate(Features._fields)})
                h = helpfulness(f)
                lg = logits(self.world.config.reactions, self.world.intercepts, self.users, self.world.cat_params[k], f, h)
                for j in range(3):
                    p = 1.0 / (1.0 + np.exp(-lg[j]))
                    p = np.where(self.adv_mask[None, :], self.adv[None, :, j], p)
                    out[r, j] = p @ w
        return out


def bayes_optimal_auroc(probabilities, labels=None) -> float:
    """The AUROC ceiling for a set scored by its true probabilities.

    With `labels` (0/1 realised outcomes): the AUROC of the true probabilities against them, what a
    perfect model of the population would score on this set. Without: the expected AUROC when each
    label is drawn as Bernoulli(p_i): sum over pairs p_i (1 - p_j) [p_i > p_j] (ties 1/2) over the
    sum of p_i (1 - p_j), i != j.
    """
    p = np.asarray(probabilities, dtype=float)
    if labels is not None:
        y = np.asarray(labels).astype(bool)
        if y.shape != p.shape:
            raise ValueError("probabilities and labels must have the same length")
        n1, n0 = y.sum(), (~y).sum()
        if n1 == 0 or n0 == 0:
            raise ValueError("AUROC needs both positive and negative labels")
        ranks = _average_ranks(p)
        return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    order = np.argsort(p, kind="stable")
    ps = p[order]
    # for each i: sum over j with p_j < p_i of (1 - p_j), plus half the ties (excluding i itself)
    neg = 1.0 - ps
    uniq, start = np.unique(ps, return_index=True)
    cum = np.concatenate([[0.0], np.cumsum(neg)])
    counts = np.diff(np.append(start, len(ps)))
    below = np.repeat(cum[start], counts)
    tie_neg = np.repeat(cum[start + counts] - cum[start], counts) - neg  # same value, j != i
    num = (ps * (below + 0.5 * tie_neg)).sum()
    den = ps.sum() * neg.sum() - (ps * neg).sum()
    return float(num / den)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    xs = x[order]
    _, start, counts = np.unique(xs, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return ranks


__all__ = ["Oracle", "bayes_optimal_auroc", "REACTIONS"]
