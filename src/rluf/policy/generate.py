"""Sampling replies from any Hugging Face causal LM, and serving one to the simulated users.

    python -c "from rluf.policy.generate import PolicyResponder; import random; p = PolicyResponder('runs/demo/sft'); print(p.respond([{'role': 'user', 'text': 'how do i parse a json file in go?', 'category': 'coding'}], random.Random(0)))"

`generate(model, tokenizer, prompts)` renders each prompt with the tokenizer's own chat template
(generation prompt appended), left-pads the batch, samples, stops each reply at the tokenizer's eos
and returns the decoded texts without special tokens. Sampling is plain: `temperature` and `top_p`
as given and no top-k cut, whatever the model's generation_config holds; temperature 0 is greedy.
A draw is the Gumbel-max trick (`sampling_kwargs`): argmax of the warped logits plus Gumbel noise is
an exact sample from their softmax, and on CPU it costs a fraction of torch.multinomial over the
vocabulary, which took a third of the generation time of the tiny policy.
Prompts are generated in batches of similar length (`length_batches`): a batch is left-padded to
its longest prompt, so a long conversation history among short first prompts would multiply the
prefill of the whole batch (`python -m bench serve`: 2.5x the replies/s of one padded batch per call
on the demo's multi-turn traffic). Replies come back in prompt order.
Decoding is rluf's own loop (`sample_completions`): a prefill, then one token a step through the
model's KV cache, and a reply that reaches eos leaves the batch (its rows of the cache are dropped),
so the remaining steps cost what the unfinished replies need; `model.generate` runs every row until
the last one stops (`python -m bench serve`: the loop's replies/s against `model.generate` on the same
batches). Models whose cache cannot drop rows, or whose forward takes no position ids, fall back to
`model.generate` with the same sampler. The model's generation_config is not read either way.
With `seed` the draw is reproducible for the same prompts and batch size, and the caller's torch
RNG is left as it was.

`PolicyResponder(dir)` is a policy for `rluf.sim.world.World.serve`: `respond(context, rng)` takes
the simulator's {"role", "text"} turns and draws its torch seed from `rng`, so a served run is
reproducible like the simulator's own baseline.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import random
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from .chat import chat_messages


class GumbelNoise(LogitsProcessor):
    """Adds standard Gumbel noise to the scores: the argmax that greedy decoding then takes is a sample
    from softmax(scores) (the Gumbel-max trick). Masked (-inf) scores stay masked."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        u = torch.rand_like(scores, dtype=torch.float32).clamp_(min=1e-20, max=1.0 - 1e-7)
        return scores - torch.log(-torch.log(u)).to(scores.dtype)


def sampling_kwargs(temperature: float, top_p: float = 1.0) -> dict:
    """`model.generate` keyword arguments that sample at `temperature` (0: greedy) with nucleus `top_p`
    and no top-k cut, whatever the model's generation_config holds."""
    if temperature == 0:
        return {"do_sample": False}
    warpers = [TemperatureLogitsWarper(float(temperature))]
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(top_p)))
    return {"do_sample": False, "logits_processor": LogitsProcessorList([*warpers, GumbelNoise()])}


DECODERS = ("loop", "hf")  # rluf's decoding loop (`sample_completions`), or `model.generate` itself


def generate(model, tokenizer, prompts: list[Any], *, num_return_sequences: int = 1, max_new_tokens: int = 96,
             temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None, batch_size: int = 64,
             max_prompt_tokens: int | None = None, decoder: str = "loop") -> list[list[str]]:  # fmt: skip
    """Sample `num_return_sequences` replies per prompt -> one list of texts per prompt.

    prompts: each a string (one user turn) or a list of chat messages ({"role", "content"} or
    {"role", "text"}). max_prompt_tokens: keep the last this many prompt tokens (default: the
    model's context length minus max_new_tokens). decoder: "loop" (rluf's, see `sample_completions`)
    or "hf" (`model.generate` with the same sampler; the baseline of `python -m bench serve`).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if num_return_sequences < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("num_return_sequences, max_new_tokens and batch_size must be >= 1, got "
                         f"{num_return_sequences}, {max_new_tokens}, {batch_size}")  # fmt: skip
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature} and {top_p}")
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; a policy directory must carry one (rluf sft writes it)")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: replies would never stop")
    pad = eos if pad is None else pad
    if max_prompt_tokens is None:
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        max_prompt_tokens = max(1, context - max_new_tokens)
    encoded = []
    for p in prompts:
        text = tokenizer.apply_chat_template(chat_messages(p), add_generation_prompt=True, tokenize=False)
        encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_tokens:])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    replies: list[list[str]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // num_return_sequences)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        for rows in length_batches([len(x) for x in encoded], per_batch):
            chunk = [encoded[i] for i in rows]
            width = max(len(x) for x in chunk)
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=device)
            ids, mask = ids.repeat_interleave(num_return_sequences, 0), mask.repeat_interleave(num_return_sequences, 0)
            out = sample_completions(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                     pad_token_id=pad, temperature=temperature, top_p=top_p, decoder=decoder)  # fmt: skip
            for k, row in enumerate(out.tolist()):
                if eos in row:
                    row = row[: row.index(eos)]
                replies[rows[k // num_return_sequences]].append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return replies


def _forward_keywords(model) -> tuple[str | None, bool]:
    """(the forward's keyword for the KV cache, whether it takes `logits_to_keep`); the cache keyword is
    "cache" in recent transformers, "past_key_values" before, and None when the loop cannot drive this
    model (encoder-decoder, no position ids). Read from the signature once per forward function."""
    if getattr(model.config, "is_encoder_decoder", False):
        return None, False
    forward = model.forward
    return _signature_keywords(getattr(forward, "__func__", forward))


@functools.lru_cache(maxsize=64)
def _signature_keywords(forward) -> tuple[str | None, bool]:
    params = inspect.signature(forward).parameters
    if "position_ids" not in params:
        return None, False
    cache = next((name for name in ("cache", "past_key_values") if name in params), None)
    return cache, "logits_to_keep" in params


def sample_completions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                       eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                       top_p: float = 1.0, decoder: str = "loop") -> torch.Tensor:  # fmt: skip
    """Completion ids (B, T), T <= max_new_tokens, after left-padded prompts: each row stops at its first eos
    (kept) and is padded with `pad_token_id` after it, as `model.generate(...)[:, width:]` returns them.
    Draws from torch's global RNG; call under torch.no_grad() with the model in eval mode.

    A finished row leaves the batch (its KV-cache rows are dropped), so later steps run on the live rows
    only. Falls back to `model.generate` with the same sampler when the model cannot be driven that way
    (see `_forward_keywords`, or a cache without `batch_select_indices`), and with `decoder="hf"`."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    sample = sampling_kwargs(temperature, top_p)
    cache_arg, keeps_logits = _forward_keywords(model) if decoder == "loop" else (None, False)

    def fallback() -> torch.Tensor:
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_token_id, pad_token_id=pad_token_id, **sample)  # fmt: skip
        return out[:, input_ids.shape[1]:]

    if cache_arg is None:
        return fallback()
    processors = sample.get("logits_processor")
    mask = attention_mask
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if keeps_logits else {}
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return fallback()
    rows = input_ids.shape[0]
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=input_ids.device)
    live = torch.arange(rows, device=input_ids.device)  # batch row of each row still decoding
    position = positions[:, -1] + 1
    steps = 0
    for t in range(max_new_tokens):
        scores = out.logits[:, -1, :].float()
        nxt = scores.argmax(-1) if processors is None else processors(None, scores).argmax(-1)
        tokens[live, t] = nxt
        steps = t + 1
        finished = nxt == eos_token_id
        if t == max_new_tokens - 1 or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, mask, nxt, position = live[keep], mask[keep], nxt[keep], position[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position[:, None], use_cache=True,
                    **{cache_arg: cache})  # fmt: skip
        position = position + 1
    return tokens[:, :steps]


def length_batches(lengths: list[int], batch_size: int, min_rows: int = 16, spread: float = 1.5) -> list[list[int]]:
    """Indices of prompts grouped into batches of similar length (shortest first), each at most
    `batch_size` long. A batch is left-padded to its longest prompt, so one long prompt among short
    ones multiplies the work of the whole prefill; a batch closes when the next prompt is more than
    `spread` times (and 16 tokens) longer than its first, once it holds `min_rows` prompts (fewer,
    larger batches keep the decoding steps cheap)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        b = batches[-1] if batches else None
        if (b is None or len(b) >= batch_size
                or (len(b) >= min_rows and lengths[i] > max(spread * lengths[b[0]], lengths[b[0]] + 16))):  # fmt: skip
            batches.append([i])
        else:
            b.append(i)
    return batches


class PolicyResponder:
    """A Hugging Face causal-LM directory as a simulator policy: `respond(context, rng) -> str`, and
    `respond_batch(contexts, rngs)` for `World.serve(..., batch_users=N)`."""

    def __init__(self, model_dir: str | Path, max_new_tokens: int = 96, temperature: float = 1.0, top_p: float = 1.0,
                 name: str | None = None, batch_size: int = 128, decoder: str = "loop"):  # fmt: skip
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{model_dir}: not a Hugging Face causal-LM directory ({exc})") from None
        self.model.eval()
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.decoder = batch_size, decoder
        self.name = name or Path(model_dir).name

    def respond(self, context: list[dict], rng: random.Random) -> str:
        """One reply to the conversation so far ({"role", "text"} turns; other keys ignored)."""
        return self.respond_batch([context], [rng])[0]

    def respond_batch(self, contexts: list[list[dict]], rngs: random.Random | list[random.Random]) -> list[str]:
        """One reply per conversation, sampled in batches of similar length.

        rngs: one random.Random per conversation (each gives up one 63-bit draw, as `respond` takes from
        its rng, so a user's own stream does not depend on how the replies were batched), or a single
        one for the whole call. The torch seed is a hash of the draws: the same contexts and draws
        give the same replies.
        """
        if isinstance(rngs, random.Random):
            seed = rngs.getrandbits(63)
        else:
            if len(rngs) != len(contexts):
                raise ValueError(f"{len(contexts)} contexts but {len(rngs)} rngs; pass one rng per context")
            draws = [r.getrandbits(63) for r in rngs]
            seed = draws[0] if len(draws) == 1 else int.from_bytes(
                hashlib.sha256(b"".join(d.to_bytes(8, "little") for d in draws)).digest()[:8], "little") >> 1
        order = sorted(range(len(contexts)), key=lambda i: sum(len(t.get("text") or t.get("content") or "")
                                                               for t in contexts[i]))  # fmt: skip
        out = generate(self.model, self.tokenizer, [contexts[i] for i in order], max_new_tokens=self.max_new_tokens,
                       temperature=self.temperature, top_p=self.top_p, seed=seed, batch_size=self.batch_size,
                       decoder=self.decoder)  # fmt: skip
        replies = [""] * len(contexts)
        for i, r in zip(order, out):
            replies[i] = r[0]
        return replies
