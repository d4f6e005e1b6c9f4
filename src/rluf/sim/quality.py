"""Reply quality of a policy in the simulated world: how much of what it writes is the world's language.

    python -c "from rluf.policy.data import load_prompts; from rluf.sim.quality import reply_quality; print(reply_quality('runs/demo/sft', load_prompts('runs/demo/store', limit=300), n=100)['model'])"

An evaluation against the simulator (it reads the phrase banks and `extract_features`), never a
training signal: `rluf sft` passes it to `run_sft` as the `quality` callback. For n held-out prompts
it samples one reply each (temperature 1) and reports, beside the logged baseline replies of the same
prompts, the share of reply sentences that are sentences of the world's phrase banks or topic
sentences (well-formed), on-topic, correct and love-bait rates (Wilson 95 % intervals), and whether
the solution sentence belongs to the prompt's category.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..policy.data import PromptRow, stratified_sample


def reply_quality(model_dir: str | Path, rows: list[PromptRow], n: int = 300, seed: int = 0,
                  max_new_tokens: int = 96) -> dict:  # fmt: skip
    """Sample one reply (temperature 1) for `n` of `rows` (a seeded sample stratified by category) and
    measure it, side by side with the logged reply of the same prompts.

    Figures per side (n replies; rates with a 95 % Wilson interval): bank_sentence_share (share of the
    reply's sentences that are exact sentences of the simulator's phrase banks: fluency),
    topic_sentence_share (sentences of the topic templates naming a topic of the world, "About
    {topic}: ..."), well_formed_share (their sum: about 1 for the logged replies), on_topic, correct,
    wrong, love_bait, refusal rates, solution_in_category (among replies with a solution sentence,
    the share whose sentence is from the prompt's category bank), mean_words, mean_emojis, empty.

    This reads the simulated world's phrase banks and its feature reader (rluf.sim): an evaluation of
    the policy against the world's truth, never a training signal.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..policy.generate import generate

    if n < 1 or not rows:
        raise ValueError(f"reply_quality needs n >= 1 and some rows, got n={n} and {len(rows)} rows")
    picked = [rows[i] for i in stratified_sample([r.category for r in rows], min(n, len(rows)), seed)]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    replies = [r[0] for r in generate(model, tokenizer, [r.prompt for r in picked], max_new_tokens=max_new_tokens,
                                      temperature=1.0, seed=seed)]  # fmt: skip
    return {"n": len(picked), "model": _measure(picked, replies), "baseline": _measure(picked, [r.baseline for r in picked]),
            "examples": [{"prompt": r.prompt[-1]["content"], "category": r.category, "model": m, "baseline": r.baseline}
                         for r, m in zip(picked[:5], replies[:5])]}  # fmt: skip


def _measure(rows: list[PromptRow], replies: list[str]) -> dict:
    from . import policy as banks
    from .prompts import CATEGORIES, topics
    from .reactions import EMOJI_RE, SPLIT_RE, extract_features

    bank = {s.strip() for b in (banks.WARM, banks.FLATTERY, banks.NEUTRAL_OPEN, banks.ELABORATION, banks.CLOSE,
                                banks.LOVE_BAIT, banks.REFUSAL, banks.UNSAFE) for s in b}  # fmt: skip
    by_category = {}
    for cat, (good, bad) in banks.SOLUTIONS.items():
        by_category[cat] = set(good) | set(bad)
        bank |= by_category[cat]
    known = "(?:" + "|".join(re.escape(t) for c in CATEGORIES for t in topics(c)) + ")"
    topic_re = re.compile("|".join("^" + re.escape(t).replace(re.escape("{topic}"), known) + "$" for t in banks.TOPIC))
    sentences = in_bank = topical = 0
    counts = {k: 0 for k in ("on_topic", "correct", "wrong", "love_bait", "refusal", "empty")}
    words = emojis = with_solution = solution_in_category = 0
    for row, reply in zip(rows, replies):
        context = [{"role": m["role"], "text": m["content"]} for m in row.prompt]
        f = extract_features(context, reply)
        parts = [s.strip() for s in SPLIT_RE.split(EMOJI_RE.sub("", reply).strip()) if s.strip()]
        sentences += len(parts)
        in_bank += sum(s in bank for s in parts)
        topical += sum(s not in bank and bool(topic_re.match(s)) for s in parts)
        if f.correct or f.wrong:
            with_solution += 1
            solution_in_category += any(s in by_category.get(row.category, ()) for s in parts)
        counts["on_topic"] += f.on_topic
        counts["correct"] += f.correct
        counts["wrong"] += f.wrong
        counts["love_bait"] += f.bait
        counts["refusal"] += f.refusal
        counts["empty"] += not reply.strip()
        words += f.words
        emojis += f.emoji
    n = len(rows)
    out = {"bank_sentence_share": in_bank / max(1, sentences), "topic_sentence_share": topical / max(1, sentences),
           "well_formed_share": (in_bank + topical) / max(1, sentences), "sentences": sentences}  # fmt: skip
    for k, v in counts.items():
        out[k] = {"rate": v / n, "ci95": wilson(v, n)}
    out["solution_in_category"] = {"rate": solution_in_category / max(1, with_solution),
                                   "ci95": wilson(solution_in_category, with_solution), "n": with_solution}  # fmt: skip
    out["mean_words"] = words / n
    out["mean_emojis"] = emojis / n
    return out



def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a rate k / n ([0, 1] when n is 0)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


# ---------------------------------------------------------------------------------------------- entry point


