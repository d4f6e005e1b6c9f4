"""Shared test builders, and a guard: benchmarks run by tests write their results under tmp_path."""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _bench_results_in_tmp(tmp_path, monkeypatch):
    """bench/results holds a person's measured runs; a test's smoke run must not overwrite them."""
    import bench.harness

    monkeypatch.setattr(bench.harness, "RESULTS", tmp_path / "bench-results")


def tiny_policy_world(root: Path) -> list:
    """A small simulated store (40 users) at ROOT/store, a random tiny Llama with its tokenizer at ROOT/policy,
    and stand-in n-gram reward models ROOT/rm/love and ROOT/rm/helpful; returns the store's prompt rows."""
    from rluf.data.ingest import ingest
    from rluf.policy.data import load_prompts
    from rluf.policy.tiny import build_tiny_lm
    from rluf.policy.tokenizer import train_tokenizer
    from rluf.reward.ngram import NGramRewardModel
    from rluf.sim.simulate import simulate

    simulate(root / "sim", users=40, seed=0, workers=1)
    ingest([root / "sim" / "logs"], root / "store", workers=1)
    rows = load_prompts(root / "store")
    texts = [m["content"] for r in rows for m in r.prompt] + [r.baseline for r in rows]
    tok = train_tokenizer(texts, vocab_size=512, out_dir=root / "policy")
    build_tiny_lm(tok, n_layer=1, n_embd=32, n_head=2, seed=0).save_pretrained(root / "policy")
    contexts = ["user: " + r.prompt[-1]["content"] for r in rows]
    replies = [r.baseline for r in rows]
    for name, word in (("love", "love"), ("helpful", "the")):  # stand-in labels: does the reply contain the word
        labels = [int(word in t.lower()) for t in replies]
        NGramRewardModel(signal=name, c=1.0).fit(contexts, replies, labels).save(root / "rm" / name)
    return rows
