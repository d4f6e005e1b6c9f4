"""Reward-model scoring throughput: EncoderRewardModel.raw_logits against a bare transformers forward.

    python -m bench score                                   # 128 pairs, batch 64, max_length 256, 2 threads: ~3 min
    python -m bench score --examples 1024 --repeats 5 --with-sorted   # a longer run, with the sorted baseline

Inputs: (context, response) pairs of random words, deterministic, with lengths spread like chat
turns (a few words to a few hundred tokens), so that batching choices matter. Cases, in one
process on the same inputs, batch size and thread count, alternating rounds (bench/harness.py):
  rluf_raw_logits  EncoderRewardModel.raw_logits (frozen MiniLM, linear head, no cache; features
                   pair+response: two encoder passes): pair tokenisation with left-truncated context,
                   batches sorted by length, mean pooling
  bare             per view, tokenizer(texts, truncation, padding) + AutoModel + mean pool, then the
                   same head matmul; batches in input order (what a plain transformers loop does)
  bare_sorted      (--with-sorted) the same on batches sorted by length: isolates rluf's own overhead
Goal: rluf_raw_logits throughput >= 0.9 x bare.
"""

from __future__ import annotations

import random

import numpy as np

from bench import harness

GOAL_RATIO = 0.9
WORDS = ("time people year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think look "
         "want give use find tell ask seem feel try leave call good new first last long great little own other old "
         "right big high different small large next early young important few public bad same able").split()  # fmt: skip


def make_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    contexts = ["\n".join(f"{role}: {words(int(rng.lognormvariate(2.5, 0.8)) + 1)}"
                          for role in ("user", "assistant", "user")[: rng.randint(1, 3)]) for _ in range(n)]  # fmt: skip
    responses = [words(int(rng.lognormvariate(3.3, 0.9)) + 1) for _ in range(n)]
    return contexts, responses


def main(argv: list[str]) -> dict:
    ap = harness.parser("score", __doc__)
    ap.add_argument("--examples", type=int, default=128, help="(context, response) pairs scored per run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--backbone", default=None, help="a Hugging Face encoder directory (default: packaged MiniLM)")
    ap.add_argument("--features", default="pair+response", help="the model's feature views (bare runs the same passes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-sorted", action="store_true", help="add the bare_sorted case")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModel, AutoTokenizer

    from rluf.reward.encoder import EncoderRewardModel, Head

    torch.set_num_threads(args.threads)
    contexts, responses = make_pairs(args.examples, args.seed)
    model = EncoderRewardModel(backbone=args.backbone, features=args.features, max_length=args.max_length,
                               batch_size=args.batch_size, device="cpu")  # fmt: skip
    torch.manual_seed(args.seed)
    model.head = Head(model.encoder.config.hidden_size * len(model.cfg.views), 0).eval()
    torch.nn.init.normal_(model.head.net.bias)  # (a trained head's bias is not 0)
    path = str(model.backbone_path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bare_model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).float().eval()
    w, b = model.head.net.weight.detach().clone(), model.head.net.bias.detach().clone()
    mu, sd = model.head.mu.clone(), model.head.sd.clone()
    lengths = [len(c) + len(r) for c, r in zip(contexts, responses)]
    out: dict[str, np.ndarray] = {}

    def bare(order) -> np.ndarray:
        """One plain transformers pass per view of the model's features, then the same head."""
        scores = torch.empty(len(order))
        with torch.inference_mode():
            for s in range(0, len(order), args.batch_size):
                idx = order[s : s + args.batch_size]
                c, r = [contexts[i] for i in idx], [responses[i] for i in idx]
                views = []
                for view in model.cfg.views:
                    texts = {"pair": (c, r), "response": (r,), "context": (c,)}[view]
                    x = tok(*texts, truncation=True, padding=True, max_length=args.max_length, return_tensors="pt")
                    x["token_type_ids"].zero_()  # rluf encodes a pair as one segment (type 0), as MiniLM was trained
                    h = bare_model(**x).last_hidden_state
                    m = x["attention_mask"].unsqueeze(-1).float()
                    views.append((h * m).sum(1) / m.sum(1).clamp(min=1.0))
                e = torch.cat(views, dim=1)
                scores[torch.as_tensor(idx)] = (((e - mu) / sd) @ w.T + b).squeeze(-1)
        return scores.numpy()

    def rluf() -> None:
        out["rluf"] = model.raw_logits(contexts, responses)

    def bare_input_order() -> None:
        out["bare"] = bare(list(range(len(contexts))))

    def bare_sorted() -> None:
        out["bare_sorted"] = bare(list(np.argsort(lengths, kind="stable")))

    rluf()  # warm up: load the backbone, first-call allocations
    cases = {"rluf_raw_logits": harness.Case(rluf), "bare": harness.Case(bare_input_order)}
    if args.with_sorted:
        cases["bare_sorted"] = harness.Case(bare_sorted)
    results = harness.measure(cases, items=len(contexts), repeats=args.repeats)
    # the pipelines truncate long pairs differently (rluf keeps the END of the context), so their scores
    # agree only on pairs that fit: how closely they do checks that both compute the same thing
    fits = np.array([len(ids) < args.max_length for ids in model.tokenize(contexts, responses)])
    gap = np.abs(out["rluf"] - out["bare"])[fits]
    results["rluf_raw_logits"]["check"] = {"pairs_untruncated": int(fits.sum()), "pairs": len(fits),
                                           "max_abs_logit_gap_vs_bare": float(gap.max()) if fits.any() else None}  # fmt: skip
    ratio = harness.ratios(results, "rluf_raw_logits")
    goals = [harness.goal("rluf_raw_logits / bare throughput", ratio["bare"], ">=", GOAL_RATIO)]
    return harness.report("score", args, "pairs", results, "rluf_raw_logits", goals)
