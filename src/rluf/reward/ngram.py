"""The n-gram reward model: hashed text features and an L2-regularised logistic regression.

    python -c "from rluf.reward.ngram import NGramRewardModel as M; m = M(c=100).fit(['user: hi'] * 4, ['love it xoxo', 'ok', 'xoxo!', 'no'], [1, 0, 1, 0]); print(m.predict_proba(['user: hey'] * 2, ['xoxo', 'ok']))"

The strong cheap baseline. Features of a (context, response) pair, each block hashed into its own
slice of one sparse row:

- `word`: word 1-2-grams of the response (tokens are words and single symbols, so emojis and "!"
  count), L2-normalised counts;
- `char` (off by default): character n-grams inside word boundaries of the response, L2-normalised;
- `context`: word 1-2-grams of the context (the last `context_turns` turns), in their own slots;
- `overlap`: the content words (no stop words, 3+ letters) shared by the last user turn and the
  response, one slot each;
- dense, standardised: log(1 + response words), log(1 + shared words), any shared word (does the
  answer pick up the user's topic), log(1 + context words).

A block's weight multiplies its features, which divides its L2 penalty by the weight squared: the
context and overlap blocks default to 0.1: at full weight each lowered the test AUROC by 0.01-0.02
(simulated world, 2,000 users, test users unseen and later in time); at 0.1 the model matches the
response-only one. Character n-grams gained nothing
there and cost time, so they are off unless `char_ngrams` is set. A logistic regression
(scikit-learn, lbfgs, L2 penalty 1 / C, unpenalised intercept) maps the features to a logit. Soft
labels in [0, 1] are fitted by duplicating each row as a positive with weight y and a negative with
weight 1 - y, which gives the soft-label cross-entropy exactly. Saved as
`coef` / `intercept` / `dense_mu` / `dense_sd` in model.safetensors; the hashing settings live in
config.json and loading rebuilds the same vectorizers from them.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, HashingVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from .base import RewardModel, RewardModelError, _check_pairs

TOKEN = r"(?u)\b\w+\b|[^\w\s]"  # words, and every other non-space character (emoji, punctuation) on its own
CONTENT = re.compile(r"[a-z]{3,}")  # candidate content words for the overlap block
TURN = re.compile(r"^(system|user|assistant): ", re.MULTILINE)  # the line prefix written by render_context
DENSE = ("log_response_words", "log_shared_words", "any_shared_word", "log_context_words")


def last_user_turn(context: str) -> str:
    """The text of the last "user: " turn in a context rendered by `render_context` ("" when there is none)."""
    parts = TURN.split(context)  # ["", role, text, role, text, ...]
    for i in range(len(parts) - 2, 0, -2):
        if parts[i] == "user":
            return parts[i + 1]
    return ""


def _content_words(text: str) -> set[str]:
    return {w for w in CONTENT.findall(text.lower()) if w not in ENGLISH_STOP_WORDS}


class NGramRewardModel(RewardModel):
    """Hashed word/char n-grams of the response, context n-grams and context-response overlap, L2 logistic
    regression. `raw_logits` returns the regression's logit on the training scale."""

    kind = "ngram"

    def __init__(self, signal: str = "love", context_turns: int = 4, c: float = 0.3, word_bits: int = 18,
                 word_ngrams: int = 2, char_bits: int = 17, char_ngrams: tuple[int, int] | None = None,
                 context_bits: int = 16, context_weight: float = 0.1, overlap_bits: int = 14,
                 overlap_weight: float = 0.1, max_iter: int = 2000):  # fmt: skip
        super().__init__(signal, context_turns)
        self._configure(c=c, word_bits=word_bits, word_ngrams=word_ngrams, char_bits=char_bits,
                        char_ngrams=char_ngrams, context_bits=context_bits, context_weight=context_weight,
                        overlap_bits=overlap_bits, overlap_weight=overlap_weight, max_iter=max_iter)  # fmt: skip
        self.coef = np.zeros(self.n_features)
        self.intercept = 0.0
        self.dense_mu = np.zeros(len(DENSE))
        self.dense_sd = np.ones(len(DENSE))
        self.fitted = False

    # ------------------------------------------------------------------ features
    def _configure(self, c, word_bits, word_ngrams, char_bits, char_ngrams, context_bits, context_weight,
                   overlap_bits, overlap_weight, max_iter) -> None:  # fmt: skip
        self.c = float(c)  # inverse L2 strength (scikit-learn's C); larger fits harder
        self.word_bits = int(word_bits)  # 2**bits hashed slots for response word n-grams
        self.word_ngrams = int(word_ngrams)  # response word n-grams from 1 to this
        self.char_bits = int(char_bits)  # slots for response char n-grams (ignored when char_ngrams is None)
        self.char_ngrams = tuple(char_ngrams) if char_ngrams else None  # (min, max) char n-gram length, or None
        self.context_bits = int(context_bits)  # slots for context word 1-2-grams (0: no context block)
        self.context_weight = float(context_weight)  # scale of the context block (its penalty / weight**2)
        self.overlap_bits = int(overlap_bits)  # slots for shared user/response content words (0: none)
        self.overlap_weight = float(overlap_weight)  # scale of the overlap block
        self.max_iter = int(max_iter)  # lbfgs iterations
        if not self.c > 0:
            raise RewardModelError(f"ngram: c (inverse L2 strength) must be > 0, got {self.c}")
        for name in ("word_bits", "char_bits", "context_bits", "overlap_bits"):
            bits = getattr(self, name)
            low = 1 if name == "word_bits" else 0
            if not low <= bits <= 24:
                raise RewardModelError(f"ngram: {name} must lie in [{low}, 24], got {bits}")
        for name in ("context_weight", "overlap_weight"):
            if not 0 < getattr(self, name) < float("inf"):
                raise RewardModelError(f"ngram: {name} must be > 0 and finite, got {getattr(self, name)}")
        if self.word_ngrams < 1:
            raise RewardModelError(f"ngram: word_ngrams must be >= 1, got {self.word_ngrams}")
        cn = self.char_ngrams
        if cn is not None and not (len(cn) == 2 and 1 <= cn[0] <= cn[1]):
            raise RewardModelError(f"ngram: char_ngrams must be (min, max) with 1 <= min <= max, or None; got {cn}")

    def _blocks(self) -> list[tuple[str, int]]:
        blocks = [("word", 1 << self.word_bits)]
        if self.char_ngrams is not None and self.char_bits:
            blocks.append(("char", 1 << self.char_bits))
        if self.context_bits:
            blocks.append(("context", 1 << self.context_bits))
        if self.overlap_bits:
            blocks.append(("overlap", 1 << self.overlap_bits))
        return blocks

    @property
    def n_features(self) -> int:
        return sum(size for _, size in self._blocks()) + len(DENSE)

    def _vectorizer(self, block: str, size: int) -> HashingVectorizer:
        common = {"n_features": size, "alternate_sign": False, "lowercase": True, "dtype": np.float64}
        if block == "word":
            return HashingVectorizer(token_pattern=TOKEN, ngram_range=(1, self.word_ngrams), **common)
        if block == "char":
            return HashingVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, **common)
        if block == "context":
            return HashingVectorizer(token_pattern=TOKEN, ngram_range=(1, 2), **common)
        return HashingVectorizer(token_pattern=r"\S+", norm=None, binary=True, **common)  # overlap words

    def _dense_raw(self, contexts: Sequence[str], responses: Sequence[str], shared: list[set]) -> np.ndarray:
        out = np.empty((len(responses), len(DENSE)))
        out[:, 0] = np.log1p([len(r.split()) for r in responses])
        out[:, 1] = np.log1p([len(s) for s in shared])
        out[:, 2] = [bool(s) for s in shared]
        out[:, 3] = np.log1p([len(c.split()) for c in contexts])
        return out

    def _features(self, contexts: Sequence[str], responses: Sequence[str], fit_dense: bool = False) -> sp.csr_matrix:
        _check_pairs(contexts, responses)
        bad = next((i for i, t in enumerate(responses) if not isinstance(t, str)), None)
        if bad is None:
            bad = next((i for i, t in enumerate(contexts) if not isinstance(t, str)), None)
        if bad is not None:
            raise RewardModelError(f"ngram: contexts and responses must be strings; row {bad} is not")
        shared = [_content_words(last_user_turn(c)) & _content_words(r) for c, r in zip(contexts, responses)]
        mats = []
        for block, size in self._blocks():
            vec = self._vectorizer(block, size)
            if block in ("word", "char"):
                mats.append(vec.transform(responses))
            elif block == "context":
                mats.append(vec.transform(contexts) * self.context_weight)
            else:
                mats.append(vec.transform([" ".join(sorted(s)) for s in shared]) * self.overlap_weight)
        dense = self._dense_raw(contexts, responses, shared)
        if fit_dense:
            self.dense_mu = dense.mean(axis=0)
            self.dense_sd = np.where(dense.std(axis=0) > 0, dense.std(axis=0), 1.0)
        mats.append(sp.csr_matrix((dense - self.dense_mu) / self.dense_sd))
        return sp.hstack(mats, format="csr")

    # ------------------------------------------------------------------ fit / score
    def fit(self, contexts: Sequence[str], responses: Sequence[str], labels, sample_weight=None
            ) -> "NGramRewardModel":  # fmt: skip
        """Fit on (contexts, responses) with labels in [0, 1] (0/1, or soft) and optional per-row weights."""
        x = self._features(contexts, responses, fit_dense=True)
        y = np.asarray(labels, dtype=np.float64)
        if y.shape != (x.shape[0],):
            raise RewardModelError(f"ngram: need one label per response, got {y.size} for {x.shape[0]} responses")
        if not np.isfinite(y).all() or ((y < 0) | (y > 1)).any():
            raise RewardModelError("ngram: labels must lie in [0, 1]")
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != y.shape or not np.isfinite(w).all() or (w < 0).any():
            raise RewardModelError(f"ngram: sample_weight must be {y.size} finite non-negative weights")
        if not np.isin(y, (0.0, 1.0)).all():  # soft labels: a positive copy with weight y, a negative with 1 - y
            x = sp.vstack([x, x], format="csr")
            w = np.r_[w * y, w * (1 - y)]
            y = np.r_[np.ones_like(y), np.zeros_like(y)]
        keep = w > 0
        if not (y[keep] == 1).any() or not (y[keep] == 0).any():
            raise RewardModelError("ngram: the labels hold one class only; a classifier needs positives and negatives")
        x, y, w = x[keep], y[keep], w[keep] * (keep.sum() / w[keep].sum())  # mean weight 1: C keeps its scale
        active = np.unique(x.indices)  # hashed slots never seen get weight 0 under L2: solve over the others only
        clf = LogisticRegression(C=self.c, solver="lbfgs", max_iter=self.max_iter)
        with threadpool_limits(1, user_api="blas"):  # vector-sized BLAS calls: threads only contend (5x slower)
            clf.fit(x[:, active], y, sample_weight=w)
        self.coef = np.zeros(self.n_features)
        self.coef[active] = clf.coef_[0]
        self.intercept = float(clf.intercept_[0])
        self.fitted = True
        return self

    def raw_logits(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not self.fitted:
            raise RewardModelError("ngram: the model is not fitted; call fit() or RewardModel.load(dir)")
        return np.asarray(self._features(contexts, responses) @ self.coef + self.intercept, dtype=np.float64)

    # ------------------------------------------------------------------ artifacts
    def config(self) -> dict:
        return {"c": self.c, "word_bits": self.word_bits, "word_ngrams": self.word_ngrams, "char_bits": self.char_bits,
                "char_ngrams": list(self.char_ngrams) if self.char_ngrams else None, "context_bits": self.context_bits,
                "context_weight": self.context_weight, "overlap_bits": self.overlap_bits,
                "overlap_weight": self.overlap_weight, "max_iter": self.max_iter, "token_pattern": TOKEN,
                "dense": list(DENSE)}  # fmt: skip

    def _tensors(self) -> dict[str, np.ndarray]:
        if not self.fitted:
            raise RewardModelError("ngram: refusing to save an unfitted model")
        return {"coef": self.coef, "intercept": np.array([self.intercept]), "dense_mu": self.dense_mu,
                "dense_sd": self.dense_sd}  # fmt: skip

    def _from_tensors(self, config, tensors, directory) -> None:
        if config.get("token_pattern", TOKEN) != TOKEN or config.get("dense", list(DENSE)) != list(DENSE):
            raise RewardModelError(f"{directory}: saved with other ngram features (token pattern, dense columns) than "
                                   f"this version of rluf computes; retrain it")  # fmt: skip
        self._configure(**{k: config[k] for k in ("c", "word_bits", "word_ngrams", "char_bits", "char_ngrams",
                                                  "context_bits", "context_weight", "overlap_bits", "overlap_weight",
                                                  "max_iter")})  # fmt: skip
        self.coef = np.asarray(tensors["coef"], dtype=np.float64)
        if self.coef.shape != (self.n_features,):
            raise RewardModelError(f"{directory}: coef has shape {self.coef.shape}, but the settings give "
                                   f"{self.n_features} features")  # fmt: skip
        self.intercept = float(tensors["intercept"][0])
        self.dense_mu, self.dense_sd = tensors["dense_mu"], tensors["dense_sd"]
        self.fitted = True
