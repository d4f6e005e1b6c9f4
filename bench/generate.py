"""Reply sampling throughput: rluf's Gumbel-max sampling against transformers' own multinomial sampling.

    python -m bench generate                                  # fresh tiny Llama, 256 prompts, batch 64, 32 tokens
    python -m bench generate --policy runs/demo/sft --prompts 1024 --max-new-tokens 64

Both cases call `model.generate` on the same left-padded prompt batches with the same model, thread
count and token budget, and sample at temperature 1 with no top-k or top-p cut:
  rluf_gumbel     rluf.policy.generate.sampling_kwargs: greedy decoding over the logits plus Gumbel
                  noise (an exact sample from the softmax)
  hf_multinomial  do_sample=True, top_k=0: softmax then torch.multinomial, transformers' sampler
Every reply runs the full `--max-new-tokens` (eos is masked in both cases), so the two do the same
number of decoding steps and only the sampler differs. Goal: rluf_gumbel throughput >= 1.0 x
hf_multinomial (the sampler is no slower than the one it replaces).
"""

from __future__ import annotations

from bench import harness

GOAL_RATIO = 1.0


def _model(args, work):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.policy:
        return AutoModelForCausalLM.from_pretrained(args.policy).eval(), AutoTokenizer.from_pretrained(args.policy)
    from rluf.policy.tiny import build_tiny_lm
    from rluf.policy.tokenizer import train_tokenizer
    from rluf.sim import prompts as sim_prompts

    import random

    rng = random.Random(args.seed)
    texts = [sim_prompts.first_prompt(c, rng, False)[0] for c in sim_prompts.CATEGORIES for _ in range(200)]
    tok = train_tokenizer(texts, vocab_size=4096, out_dir=work / "policy")
    return build_tiny_lm(tok, n_embd=128, seed=args.seed).eval(), tok


def run(args, work) -> dict:
    import random

    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from rluf.policy.generate import sampling_kwargs
    from rluf.sim import prompts as sim_prompts

    torch.set_num_threads(args.threads)
    model, tok = _model(args, work)
    rng = random.Random(args.seed)
    texts = [tok.apply_chat_template([{"role": "user", "content": sim_prompts.first_prompt(rng.choice(sim_prompts.CATEGORIES),
                                                                                            rng, False)[0]}],
                                     add_generation_prompt=True, tokenize=False) for _ in range(args.prompts)]  # fmt: skip
    encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad, eos = tok.pad_token_id, tok.eos_token_id

    class NoEos(LogitsProcessor):  # every reply runs the whole budget: equal work in both cases
        def __call__(self, input_ids, scores):
            scores[:, eos] = -float("inf")
            return scores

    def sample(kwargs: dict) -> None:
        with torch.no_grad():
            torch.manual_seed(args.seed)
            for s in range(0, len(encoded), args.batch_size):
                chunk = encoded[s: s + args.batch_size]
                width = max(len(x) for x in chunk)
                ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk])
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
                extra = dict(kwargs)
                extra["logits_processor"] = LogitsProcessorList([NoEos(), *extra.get("logits_processor", [])])
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                               min_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad, **extra)  # fmt: skip

    gumbel = sampling_kwargs(1.0, 1.0)
    multinomial = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    sample(gumbel)  # warm up
    cases = {"rluf_gumbel": harness.Case(lambda: sample(gumbel)),
             "hf_multinomial": harness.Case(lambda: sample(multinomial))}
    results = harness.measure(cases, items=len(encoded), repeats=args.repeats)
    ratio = harness.ratios(results, "rluf_gumbel")
    goals = [harness.goal("rluf_gumbel / hf_multinomial throughput", ratio["hf_multinomial"], ">=", GOAL_RATIO)]
    return harness.report("generate", args, "replies", results, "rluf_gumbel", goals)


def main(argv: list[str]) -> dict:
    ap = harness.parser("generate", __doc__)
    ap.add_argument("--policy", help="a Hugging Face causal-LM directory (default: a fresh tiny Llama)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=harness.Path, default=None, help="keep the tokenizer here (default: a temp dir)")
    args = ap.parse_args(argv)
    return harness.in_workdir(args, "generate", run)
