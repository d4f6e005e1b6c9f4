"""Supervised fine-tuning of the policy on the logs: prompt -> the logged reply (the baseline).

    python -m rluf.policy.sft --store runs/demo/store --out runs/demo/sft
    accelerate launch --multi_gpu --num_processes 2 -m rluf.policy.sft --store runs/demo/store --out runs/demo/sft   # DDP

`run_sft(store_or_rows, out_dir, SFTConfig())`:

1. prompt rows from the store (data.py), split by user into train / val, and put back together as
   whole conversations (each branch of a tree its own); the train side keeps a seeded sample of
   conversations stratified by category holding about `max_rows` replies;
2. the tokenizer: byte-level BPE trained on the train rows' prompts and replies (tokenizer.py), and a
   fresh tiny Llama (tiny.py); or, with `init_model`, any Hugging Face causal-LM directory with its
   own tokenizer and chat template;
3. a plain PyTorch loop under accelerate's `Accelerator` (so `accelerate launch` runs it in DDP):
   AdamW, linear warmup then cosine decay, batches of similar length. Each conversation is one
   sequence and the loss is the mean cross-entropy of every reply's tokens, each reply's closing eos
   included (user turns are context only): each reply sees its whole history, as when served, and
   the history is computed once per conversation rather than once per reply;
4. OUT/ as a Hugging Face directory (config.json, model.safetensors, generation_config.json, the
   tokenizer files with the chat template) plus OUT/sft_metrics.json: the config, train and val loss
   per epoch (val before training too), tokens/s, and the `quality` callback's figures (rluf.sim.quality.reply_quality in the CLI) beside
   the logged replies of the same held-out prompts.

A plain loop rather than TRL's SFTTrainer: the same masked loss in a few lines, no dataset
conversion, and no Trainer overhead per step, which matters when a step of the tiny model takes
tens of milliseconds on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import PromptRow, load_prompts, split_prompts, stratified_sample


class SFTError(ValueError):
    pass


@dataclass
class SFTConfig:
    # data
    max_rows: int | None = field(default=20_000, metadata={"help": "training replies kept, as whole conversations sampled by category; None: all"})
    val_share: float = field(default=0.05, metadata={"help": "share of users held out for validation and quality"})
    max_val_rows: int = field(default=1_000, metadata={"help": "validation replies used for the val loss"})
    eval_context_turns: int = field(default=4, metadata={"help": "turns of context in the quality prompts (as load_prompts serves them)"})
    max_length: int = field(default=256, metadata={"help": "tokens per conversation; later turns are cut"})
    # tokenizer and model (ignored with init_model)
    init_model: str | None = field(default=None, metadata={"help": "start from this HF causal-LM directory instead of a fresh tiny model"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size, special tokens and bytes included"})
    superwords: bool = field(default=True, metadata={"help": "BPE merges may cross spaces inside a sentence (tokenizer.py)"})
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_embd: int = field(default=128, metadata={"help": "model width (128 trains 1.5x faster per token than 192 on CPU)"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    max_positions: int = field(default=512, metadata={"help": "context length of the model"})
    # optimisation
    epochs: int = field(default=3, metadata={"help": "passes over the training rows (docs/policy.md: on-topic replies 0.18, 0.46, 0.63 after 1, 2, 3)"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "the cosine decays to learning_rate * this"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=30, metadata={"help": "linear warmup steps"})
    prompt_loss_weight: float = field(default=0.0, metadata={"help": "weight of the prompt tokens in the loss (0: reply tokens only)"})
    batch_size: int = field(default=16, metadata={"help": "conversations per optimizer step (per process), about 2 replies each"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 disables clipping"})
    seed: int = field(default=0, metadata={"help": "seeds the split, the sample, the init and the batch order"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads; None: every core"})
    # reporting
    log_every: int = field(default=50, metadata={"help": "log the train loss every this many steps"})
    quality_prompts: int = field(default=300, metadata={"help": "held-out prompts given to the quality callback; 0 skips it"})

    def __post_init__(self):
        checks = (("max_rows", self.max_rows is None or self.max_rows >= 1), ("val_share", 0 <= self.val_share < 1),
                  ("max_val_rows", self.max_val_rows >= 1), ("eval_context_turns", self.eval_context_turns >= 1),
                  ("max_length", self.max_length >= 16), ("vocab_size", self.vocab_size >= 300),
                  ("epochs", self.epochs >= 1), ("learning_rate", self.learning_rate > 0),
                  ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1), ("weight_decay", self.weight_decay >= 0),
                  ("warmup_steps", self.warmup_steps >= 0),
                  ("prompt_loss_weight", 0 <= self.prompt_loss_weight <= 1), ("batch_size", self.batch_size >= 1),
                  ("grad_clip", self.grad_clip >= 0), ("threads", self.threads is None or self.threads >= 1),
                  ("log_every", self.log_every >= 1), ("quality_prompts", self.quality_prompts >= 0))  # fmt: skip
        for name, ok in checks:
            if not ok:
                raise SFTError(f"SFTConfig.{name} = {getattr(self, name)!r} is out of range ({_help(name)})")

    @classmethod
    def from_dict(cls, data: dict) -> SFTConfig:
        """Build from a mapping (a YAML file's); unknown keys are refused with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SFTError(f"unknown SFT settings {unknown}; known: {sorted(known)}")
        return cls(**data)


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(SFTConfig) if f.name == name)


# ---------------------------------------------------------------------------------------------- data


def dialogues(rows: list[PromptRow]) -> list[tuple[str | None, list[dict]]]:
    """Whole conversations from prompt rows, as (category, messages): each row's prompt plus its reply,
    without the rows whose messages begin a longer row of the same conversation (an earlier reply is
    context there, and a labelled reply too)."""
    by_conversation: dict[str, list[tuple[str | None, list[dict]]]] = {}
    for r in rows:
        messages = r.prompt + [{"role": "assistant", "content": r.baseline}]
        by_conversation.setdefault(r.conversation_id, []).append((r.category, messages))
    out = []
    for paths in by_conversation.values():
        kept: list[tuple[str | None, list[dict]]] = []
        for category, m in sorted(paths, key=lambda p: len(p[1]), reverse=True):
            if not any(k[: len(m)] == m for _, k in kept):
                kept.append((category, m))
        out.extend(reversed(kept))
    return out


def encode_dialogue(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation rendered by the tokenizer's chat template: labels are
    the tokens of every assistant reply that answers a user turn, its closing eos included, and -100
    elsewhere. Tokens past `max_length` are cut (a first prompt longer than half of it loses its
    oldest tokens)."""
    ids: list[int] = []
    labels: list[int] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant" or k == 0 or messages[k - 1]["role"] != "user":
            continue
        text = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=False)
        prefix = tokenizer(text, add_special_tokens=False)["input_ids"]
        if prefix[: len(ids)] != ids:  # this template renders earlier turns differently once more follow
            break
        if not ids:
            prefix = prefix[-(max_length // 2):]
        labels += [-100] * (len(prefix) - len(ids))
        reply = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prefix + reply
        labels += reply
        if len(ids) >= max_length:
            break
    return ids[:max_length], labels[:max_length]


def make_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int,
                 shuffle: bool = True) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """Right-padded batches of similar length: shuffle, sort within windows of 50 batches, then shuffle
    the batches (padding costs compute on a CPU)."""
    order = list(range(len(examples)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    window = 50 * batch_size
    order = [i for s in range(0, len(order), window)
             for i in sorted(order[s: s + window], key=lambda i: len(examples[i][0]))]  # fmt: skip
    batches = []
    for s in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[s: s + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        batches.append({
            "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in chunk]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])})  # fmt: skip
    if shuffle:
        rng.shuffle(batches)
    return batches


def lr_at(step: int, total: int, cfg: SFTConfig) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr_ratio * peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---------------------------------------------------------------------------------------------- training


def run_sft(store_or_rows: str | Path | list[PromptRow], out_dir: str | Path, config: SFTConfig | None = None,
            progress: Callable[[int, int, dict], None] | None = None,
            quality: Callable[..., dict] | None = None) -> dict:  # fmt: skip
    """Fine-tune on prompt -> logged reply; write the model directory; return the metrics dict.

    quality(model_dir, held_out_rows, n=, seed=) -> dict, when given, measures sampled replies of the trained
    model (e.g. rluf.sim.quality.reply_quality against the simulated world) into metrics["quality"].

    progress(step, total_steps, logs) is called every `log_every` steps and at the end. Torch runs on
    `config.threads` threads meanwhile (every core by default) and gets its thread count back after.
    """
    cfg = config or SFTConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        return _run_sft(store_or_rows, Path(out_dir), cfg, progress, quality)
    finally:
        torch.set_num_threads(threads)


def _run_sft(store_or_rows, out: Path, cfg: SFTConfig, progress, quality) -> dict:
    from accelerate import Accelerator

    t_start, cpu_start = time.perf_counter(), time.process_time()
    acc = Accelerator(cpu=not torch.cuda.is_available())
    train_dialogues, val_dialogues, val_rows = _data(store_or_rows, cfg)
    train_dialogues = [d for _, d in train_dialogues]
    tokenizer, model = _tokenizer_and_model(train_dialogues, cfg)
    train = [encode_dialogue(tokenizer, d, cfg.max_length) for d in train_dialogues]
    val = [encode_dialogue(tokenizer, d, cfg.max_length) for d in val_dialogues]
    t_prep = time.perf_counter()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    val_batches = make_batches(val, cfg.batch_size, pad, cfg.seed, shuffle=False)[acc.process_index:: acc.num_processes]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95))  # fmt: skip
    model, optimizer = acc.prepare(model, optimizer)
    per_epoch = len(train) // (cfg.batch_size * acc.num_processes) or 1
    total = per_epoch * cfg.epochs
    history = {"val_loss": [evaluate_loss(model, val_batches, acc)], "train_loss": []}
    step, tokens, t_train = 0, 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        batches = make_batches(train, cfg.batch_size, pad, cfg.seed + epoch)
        mine = batches[acc.process_index:: acc.num_processes][:per_epoch]
        model.train()
        epoch_loss, window = 0.0, []
        for batch in mine:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            loss = sft_loss(model, batch, cfg.prompt_loss_weight)
            acc.backward(loss)
            if cfg.grad_clip:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(batch["attention_mask"].sum()) * acc.num_processes
            window.append(loss.item())
            epoch_loss += window[-1]
            if step % cfg.log_every == 0 or step == total:
                elapsed = time.perf_counter() - t_train
                logs = {"epoch": epoch, "loss": sum(window) / len(window), "lr": lr_at(step - 1, total, cfg),
                        "tokens_per_s": tokens / elapsed}  # fmt: skip
                window = []
                if progress is not None and acc.is_main_process:
                    progress(step, total, logs)
        history["train_loss"].append(epoch_loss / max(1, len(mine)))
        history["val_loss"].append(evaluate_loss(model, val_batches, acc))
    train_s = time.perf_counter() - t_train
    acc.wait_for_everyone()
    n_replies = sum(m["role"] == "assistant" for d in train_dialogues for m in d)
    metrics = {"config": dataclasses.asdict(cfg), "conversations": {"train": len(train), "val": len(val)},
               "replies": {"train": n_replies, "val": sum(m["role"] == "assistant" for d in val_dialogues for m in d)},
               "train_loss": history["train_loss"], "val_loss": history["val_loss"], "steps": total,
               "tokens": tokens, "tokens_per_s": tokens / train_s, "train_s": train_s, "prepare_s": t_prep - t_start,
               "mean_tokens_per_reply": sum(len(ids) for ids, _ in train) / max(1, n_replies),
               "mean_reply_tokens": sum(sum(t != -100 for t in lab) for _, lab in train) / max(1, n_replies),
               "processes": acc.num_processes, "threads": torch.get_num_threads()}  # fmt: skip
    if acc.is_main_process:
        _save(acc.unwrap_model(model), tokenizer, out)
        if quality is not None and cfg.quality_prompts and val_rows:
            t_q = time.perf_counter()
            metrics["quality"] = quality(out, val_rows, n=cfg.quality_prompts, seed=cfg.seed)
            metrics["quality_s"] = time.perf_counter() - t_q
        metrics["wall_s"] = time.perf_counter() - t_start
        metrics["cpu_s"] = time.process_time() - cpu_start  # all threads of this process: wall_s on idle cores
        (out / "sft_metrics.json").write_text(json.dumps(metrics, indent=1))
        if progress is not None:
            progress(total, total, {"done": True, "val_loss": history["val_loss"][-1], "wall_s": metrics["wall_s"]})
    acc.wait_for_everyone()
    return metrics


def _data(store_or_rows, cfg: SFTConfig) -> tuple[list[tuple[str | None, list[dict]]], list[list[dict]], list[PromptRow]]:
    """(train conversations, val conversations, val rows with eval_context_turns of context)."""
    if isinstance(store_or_rows, (str, Path)):
        rows = load_prompts(store_or_rows, max_context_turns=10**6)
    elif isinstance(store_or_rows, list) and all(isinstance(r, PromptRow) for r in store_or_rows):
        rows = store_or_rows
    else:
        raise SFTError("run_sft takes a store directory or a list of PromptRow (rluf.policy.data.load_prompts)")
    if not rows:
        raise SFTError("no prompt rows to train on: the store has no (user turn, assistant reply) pairs")
    train_rows, val_rows = split_prompts(rows, cfg.val_share, cfg.seed)
    train = dialogues(train_rows)
    if cfg.max_rows is not None and len(train_rows) > cfg.max_rows:
        keep = max(1, round(len(train) * cfg.max_rows / len(train_rows)))
        train = [train[i] for i in stratified_sample([c for c, _ in train], keep, cfg.seed)]
    val, budget = [], cfg.max_val_rows
    for _, d in dialogues(val_rows):
        if budget <= 0:
            break
        val.append(d)
        budget -= sum(m["role"] == "assistant" for m in d)
    turns = cfg.eval_context_turns
    val_rows = [r if len(r.prompt) <= turns else dataclasses.replace(r, prompt=r.prompt[-turns:]) for r in val_rows]
    return train, val, val_rows


def _tokenizer_and_model(conversations: list[list[dict]], cfg: SFTConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tiny import build_tiny_lm
    from .tokenizer import train_tokenizer

    if cfg.init_model is None:
        texts = {m["content"] for d in conversations for m in d}
        tokenizer = train_tokenizer(sorted(texts), vocab_size=cfg.vocab_size, superwords=cfg.superwords)
        model = build_tiny_lm(tokenizer, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                              max_positions=cfg.max_positions, seed=cfg.seed)  # fmt: skip
        return tokenizer, model
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.init_model)
        model = AutoModelForCausalLM.from_pretrained(cfg.init_model)
    except (OSError, ValueError) as exc:
        raise SFTError(f"init_model {cfg.init_model}: not a Hugging Face causal-LM directory ({exc})") from None
    if tokenizer.chat_template is None:
        raise SFTError(f"init_model {cfg.init_model}: its tokenizer has no chat template; SFT renders prompts with it")
    if tokenizer.eos_token_id is None:
        raise SFTError(f"init_model {cfg.init_model}: its tokenizer has no eos token, so replies could not end")
    torch.manual_seed(cfg.seed)
    return tokenizer, model


def sft_loss(model, batch: dict, prompt_loss_weight: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over the reply tokens; prompt tokens count with weight
    `prompt_loss_weight` (0: reply tokens only), padding not at all."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, labels = batch["input_ids"][:, 1:], batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    reply = (labels != -100).flatten().float()
    weight = reply + prompt_loss_weight * batch["attention_mask"][:, 1:].flatten().float() * (1 - reply)
    return (ce * weight).sum() / weight.sum().clamp(min=1)


@torch.no_grad()
def evaluate_loss(model, batches: list[dict], acc) -> float:
    """Mean cross-entropy per reply token over `batches` (all processes together)."""
    model.eval()
    total = torch.zeros(2, device=acc.device)
    for batch in batches:
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        total[0] += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
        total[1] += (labels != -100).sum()
    total = acc.reduce(total, reduction="sum")
    model.train()
    return float(total[0] / total[1].clamp(min=1))


def _save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


# ---------------------------------------------------------------------------------------------- quality


def main(argv: list[str] | None = None) -> None:
    """`python -m rluf.policy.sft --store DIR --out DIR [--config FILE.yaml] [--set key=value ...]`."""
    import yaml

    parser = argparse.ArgumentParser(description="Supervised fine-tuning of the policy on the logged replies")
    parser.add_argument("--store", required=True, help="store directory (rluf ingest)")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--config", help="YAML mapping of SFTConfig settings")
    parser.add_argument("--set", action="append", default=[], help="override one setting: key=YAML value")
    args = parser.parse_args(argv)
    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    if not isinstance(data, dict):
        raise SFTError(f"{args.config}: an SFT config is a mapping of settings")
    for item in args.set:
        key, _, value = item.partition("=")
        data[key] = yaml.safe_load(value)
    metrics = run_sft(args.store, args.out, SFTConfig.from_dict(data),
                      progress=lambda step, total, logs: print(f"step {step}/{total} {json.dumps(logs)}", flush=True))  # fmt: skip
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("config",)}, indent=1))


if __name__ == "__main__":
    main()
