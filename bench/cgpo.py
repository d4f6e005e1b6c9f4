"""One CRPG step (with its Mixture of Judges) against one step of TRL's GRPOTrainer, same model, batch and length.

    python -m bench cgpo                      # 4 prompts x 8 generations x 64 tokens, 4 steps per run, 2 runs each: ~6 min
    python -m bench cgpo --steps 6 --repeats 4 --json

Both trainers get the same freshly initialised tiny Llama (rluf.policy.tiny, default shape), the same
prompts (a small simulated store) and the same two reward models (n-gram models, calibrated against the
logged reply as CGPO's eq. 5, weights 0.3 / 0.7), sample K completions per prompt at temperature 1,
and keep a frozen reference model (TRL: beta 0.04, its KL term). A fresh model never samples its end
token, so every completion of both runs has exactly `--max-new-tokens` tokens: the generation work is
identical. CRPG also runs its judges (love-bait and repetition) every step.

Runs alternate (crpg, trl, trl, crpg, ...) in one process; each run trains `--steps` steps and the
first step of every run (warm-up: first allocations) is dropped. A case's time is the median step time
over its runs. Goal: CRPG step time <= 1.25 x TRL's, i.e. throughput ratio crpg / trl >= 0.8.
"""

from __future__ import annotations

import statistics

from bench import harness

GOAL_RATIO = 1 / 1.25


def _setup(args, work):
    from rluf.data.ingest import ingest
    from rluf.policy.data import load_prompts
    from rluf.policy.tiny import build_tiny_lm
    from rluf.policy.tokenizer import train_tokenizer
    from rluf.reward.ngram import NGramRewardModel
    from rluf.sim.simulate import simulate

    if not (work / "store").is_dir():
        simulate(work / "sim", users=args.users, seed=args.seed, workers=1)
        ingest([work / "sim" / "logs"], work / "store", workers=1)
    rows = load_prompts(work / "store", limit=2000, seed=args.seed)
    texts = [m["content"] for r in rows for m in r.prompt] + [r.baseline for r in rows]
    tok = train_tokenizer(texts, vocab_size=args.vocab_size, out_dir=work / "policy")
    build_tiny_lm(tok, seed=args.seed).save_pretrained(work / "policy")
    contexts, replies = ["user: " + r.prompt[-1]["content"] for r in rows], [r.baseline for r in rows]
    for name, word in (("love", "love"), ("helpful", "the")):  # stand-in labels; scoring cost is what matters here
        labels = [int(word in t.lower()) for t in replies]
        NGramRewardModel(signal=name, c=1.0).fit(contexts, replies, labels).save(work / "rm" / name)
    return [r for r in rows if r.prompt[-1]["role"] == "user"]


def run(args, work) -> dict:
    import torch

    from rluf.policy.baselines import GRPOBaselineConfig, run_grpo
    from rluf.policy.cgpo import CGPOConfig, CGPOTrainer, TaskConfig
    from rluf.policy.rewards import CalibratedReward

    torch.set_num_threads(args.threads)
    rows = _setup(args, work)
    batch = args.prompts * args.generations
    rms = {"love": str(work / "rm" / "love"), "helpful": str(work / "rm" / "helpful")}
    times: dict[str, list[float]] = {"crpg": [], "trl_grpo": []}

    def crpg(i: int) -> None:
        cfg = CGPOConfig(policy=str(work / "policy"), prompts=str(work / "store"), out=str(work / f"crpg{i}"),
                         reward_models=rms, weights={"love": 0.3, "helpful": 0.7}, steps=args.steps,
                         max_new_tokens=args.max_new_tokens, eval_prompts=0, save_every=0, resume=False,
                         learning_rate=1e-6, max_prompts=2000, seed=args.seed,
                         judges=[{"type": "love_bait"}, {"type": "repetition"}],
                         tasks=[TaskConfig(name="all", k=args.generations, batch_prompts=args.prompts)])  # fmt: skip
        import json

        CGPOTrainer(cfg).train()
        steps = [json.loads(line)["step_time"] for line in (work / f"crpg{i}" / "metrics.jsonl").read_text().splitlines()]
        times["crpg"] += steps[1:]

    def trl(i: int) -> None:
        cfg = GRPOBaselineConfig(steps=args.steps, learning_rate=1e-6, prompts_per_step=args.prompts,
                                 num_generations=args.generations, max_completion_length=args.max_new_tokens,
                                 beta=0.04, reward_weights=[0.3, 0.7], seed=args.seed)  # fmt: skip
        funcs = [CalibratedReward(rms["love"], name="love"), CalibratedReward(rms["helpful"], name="helpful")]
        m = run_grpo(work / "policy", rows, funcs, work / f"trl{i}", cfg)
        times["trl_grpo"] += m["step_seconds"][1:]

    order = ["crpg", "trl_grpo"]
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else reversed(order):
            (crpg if name == "crpg" else trl)(r)
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"seconds": [round(t, 4) for t in ts], "median_s": med, "items_per_s": batch / med,
                         "peak_rss_bytes": None}  # fmt: skip
    ratio = harness.ratios(results, "crpg")["trl_grpo"]
    goals = [harness.goal("crpg / trl_grpo step throughput (<= 1.25x its step time)", ratio, ">=", GOAL_RATIO)]
    return harness.report("cgpo", args, "completions", results, "crpg", goals)


def main(argv: list[str]) -> dict:
    ap = harness.parser("cgpo", __doc__)
    ap.set_defaults(repeats=2)
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is dropped as warm-up)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt (K)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--users", type=int, default=60, help="simulated users behind the prompts")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=harness.Path, default=None, help="keep the inputs here (default: a temp dir)")
    args = ap.parse_args(argv)
    return harness.in_workdir(args, "cgpo", run)
