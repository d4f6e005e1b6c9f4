"""Serving throughput on multi-turn conversations: rluf's decoding loop and length batches against
`model.generate` and against one padded batch per call.

    python -m bench serve                                    # fresh tiny Llama, 1,024 contexts, 128 per call
    python -m bench serve --policy runs/demo/sft --max-new-tokens 64

The contexts are the simulator's own conversations (the default world's baseline assistant, every
assistant turn's history: first prompts and long follow-ups mixed), shuffled and handed to
`PolicyResponder.respond_batch` `--per-call` at a time, as `World.serve(..., batch_users=N)` does in
an online A/B test. Every case samples with the same model, seed, thread count, sampler and token budget:
  rluf_length_batches  what rluf does: each call's prompts sorted by length and cut into batches of
                       similar length (length_batches), so a long history does not pad the short ones;
                       each batch decoded by rluf.policy.generate.sample_completions, where a reply
                       that reaches eos leaves the batch
  hf_generate          the same batches decoded by transformers' `model.generate`, which steps every
                       row until the batch's last reply stops
  one_batch            rluf's decoding, but each call's prompts generated as one left-padded batch
Goals: rluf_length_batches throughput >= 1.0 x hf_generate and >= 1.0 x one_batch.
"""

from __future__ import annotations

from bench import harness

GOAL_RATIO = 1.0


def _contexts(n: int, seed: int) -> list[list[dict]]:
    import random

    from rluf.sim.world import World

    world, out, users = World(seed=seed), [], 0
    while len(out) < 4 * n:
        for log in world.serve(users=range(users, users + 50), days=14):
            for rec in log.records:
                turns = [{"role": t["role"], "text": t["text"]} for t in rec["turns"]]
                out.extend(turns[:i] for i, t in enumerate(turns) if t["role"] == "assistant")
        users += 50
    random.Random(seed).shuffle(out)
    return out[:n]


def run(args, work) -> dict:
    import random

    import torch

    import rluf.policy.generate as G
    from bench.generate import _model

    torch.set_num_threads(args.threads)
    model, tok = _model(args, work)
    if not args.policy:
        model.save_pretrained(work / "policy")
        tok.save_pretrained(work / "policy")
    responder = G.PolicyResponder(args.policy or work / "policy", max_new_tokens=args.max_new_tokens,
                                  batch_size=args.per_call)  # fmt: skip
    contexts = _contexts(args.contexts, args.seed)
    length_batches = G.length_batches

    def one_batch(lengths, batch_size, **kw):
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]

    hf = G.PolicyResponder(args.policy or work / "policy", max_new_tokens=args.max_new_tokens,
                           batch_size=args.per_call, decoder="hf")  # fmt: skip

    def serve(batcher, policy=responder) -> None:
        G.length_batches = batcher
        try:
            for s in range(0, len(contexts), args.per_call):
                policy.respond_batch(contexts[s: s + args.per_call], random.Random(s))
        finally:
            G.length_batches = length_batches

    serve(length_batches)  # warm up
    cases = {"rluf_length_batches": harness.Case(lambda: serve(length_batches)),
             "hf_generate": harness.Case(lambda: serve(length_batches, hf)),
             "one_batch": harness.Case(lambda: serve(one_batch))}
    results = harness.measure(cases, items=len(contexts), repeats=args.repeats)
    ratio = harness.ratios(results, "rluf_length_batches")
    goals = [harness.goal("rluf_length_batches / hf_generate throughput", ratio["hf_generate"], ">=", GOAL_RATIO),
             harness.goal("rluf_length_batches / one_batch throughput", ratio["one_batch"], ">=", GOAL_RATIO)]
    return harness.report("serve", args, "replies", results, "rluf_length_batches", goals)


def main(argv: list[str]) -> dict:
    ap = harness.parser("serve", __doc__)
    ap.add_argument("--policy", help="a Hugging Face causal-LM directory (default: a fresh tiny Llama)")
    ap.add_argument("--contexts", type=int, default=1024, help="conversation histories to answer")
    ap.add_argument("--per-call", type=int, default=128, help="contexts per respond_batch call (batch_users)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo serves with 1 per worker)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=harness.Path, default=None, help="keep the tokenizer here (default: a temp dir)")
    args = ap.parse_args(argv)
    return harness.in_workdir(args, "serve", run)
