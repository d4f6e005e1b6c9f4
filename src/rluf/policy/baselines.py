"""The two baselines the CGPO optimizer is compared against, on TRL: weighted-sum GRPO and KTO on reactions.

    python -c "from rluf.policy.baselines import kto_dataset, kto_weights; rows = kto_dataset('runs/demo/store'); print(len(rows), kto_weights([r['label'] for r in rows]))"

1. Weighted-sum GRPO (`run_grpo`): TRL's GRPOTrainer with several reward functions folded into one
   scalar, r = sum_i w_i r_i (GRPOConfig.reward_weights, "sum_then_normalize"), group-normalised
   advantages over `num_generations` samples per prompt and a KL penalty `beta` to the starting model.
   No judges, no constraints, no KL threshold: the plain RLHF recipe that CGPO's constrained
   optimizers improve on (the reward functions may still be CGPO's calibrated rewards).
2. KTO on logged reactions (`kto_dataset` + `run_kto`): no reward model at all. Every logged reply is
   an unpaired example, desirable when it received the signal (e.g. a love reaction), undesirable
   otherwise, and TRL's KTOTrainer aligns the model on those labels directly (METHOD.md 3.1).

Labels come from `rluf.reward.data.build_examples`, so KTO sees exactly the labels a reward model
would be trained on: the same reaction window, censoring of replies too recent to know, adversarial
users set aside, the per-user cap and the chronological split (`split="train"` by default, keeping the
later validation and test periods unseen). The chat context of each reply follows the store's parent
links the way `build_examples` resolves them (its `_Messages` loader).

Both runs write OUT as a Hugging Face model directory (config.json, model.safetensors, the tokenizer
with its chat template) plus `metrics.json`: the config, TRL's log history (per-reward mean and std,
kl, loss, step_time, ...), the wall time of every optimizer step and, for KTO, the class weights.
Intermediate snapshots (`save_steps`) are weights only, in OUT/checkpoint-STEP: TRL's own checkpoints
pickle the optimizer state and the training arguments, which this project does not store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from rluf.config import from_mapping
from rluf.data.store import Store, StoreError
from rluf.reward.data import ROLE_CODES, ExampleConfig, _Messages, build_examples

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("prompt", "category", "baseline")
KTO_FIELDS = ("prompt", "completion", "label")
KTO_SPLITS = ("train", "val", "test", "all")
KTO_BAND = (1.0, 4 / 3)  # KTO paper eq. (8): desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}
METRICS = "metrics.json"


class BaselineError(ValueError):
    pass


# ====================================================================== configs


def _check(config, name: str, kinds: tuple, ok: Callable[[Any], bool], must: str, optional: bool = False):
    v = getattr(config, name)
    if optional and v is None:
        return
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        kind = " or ".join(k.__name__ for k in kinds) + (" or None" if optional else "")
        raise BaselineError(f"{type(config).__name__}.{name}: expected {kind}, got {v!r}")
    if not ok(v):
        raise BaselineError(f"{type(config).__name__}.{name}: must be {must}, got {v!r}")


def _from_dict(cls, data: dict):
    return from_mapping(cls, data, cls.__name__, BaselineError)


def _check_common(c) -> None:
    """The fields both configs share."""
    _check(c, "steps", (int,), lambda v: v >= 1, ">= 1")
    _check(c, "learning_rate", (int, float), lambda v: 0 < v < math.inf, "> 0 and finite")
    _check(c, "beta", (int, float), lambda v: 0 <= v < math.inf, ">= 0 and finite")
    _check(c, "seed", (int,), lambda v: v >= 0, ">= 0")
    _check(c, "logging_steps", (int,), lambda v: v >= 1, ">= 1")
    _check(c, "save_steps", (int,), lambda v: v >= 1, ">= 1 or None (final model only)", optional=True)
    _check(c, "report_to", (str,), lambda v: v.strip() != "", 'a logger name such as "none" or "tensorboard"')
    for name in ("use_cpu", "bf16", "activation_checkpointing"):
        _check(c, name, (bool,), lambda v: True, "true or false")


def _trainer_kwargs(c, out_dir: Path) -> dict:
    """TrainingArguments both trainers get from the shared fields."""
    return {"output_dir": str(out_dir), "max_steps": c.steps, "learning_rate": c.learning_rate, "beta": c.beta,
            "seed": c.seed, "data_seed": c.seed, "logging_steps": c.logging_steps, "save_strategy": "no",
            "report_to": c.report_to, "use_cpu": c.use_cpu, "bf16": c.bf16,
            "activation_checkpointing": c.activation_checkpointing, "disable_tqdm": True}  # fmt: skip


@dataclass
class GRPOBaselineConfig:
    """Weighted-sum GRPO. Fields not listed keep TRL's GRPOConfig defaults (loss "dapo", group reward scaling,
    clip epsilon 0.2, one iteration per batch, top_p 1). Changed from TRL, and why: beta 0.0 -> 0.04 (a KL anchor
    to the starting model, as CGPO has), max_completion_length 512 -> 64 (chat replies), logging every step
    (10), activation checkpointing off (on; small models do not need it), bf16 off and CPU (the defaults pick
    bf16 and any accelerator), no TRL checkpoints (they pickle)."""

    steps: int = 100  # optimizer steps (TRL max_steps)
    learning_rate: float = 1e-6  # AdamW, linear decay to 0 (TRL default)
    prompts_per_step: int = 2  # distinct prompts per step; TRL batch = prompts_per_step * num_generations completions
    num_generations: int = 8  # K samples per prompt; advantages are normalised within these groups
    max_completion_length: int = 64  # tokens per sampled reply
    temperature: float = 1.0  # sampling temperature (TRL default)
    beta: float = 0.04  # KL coefficient to the starting model (TRL default 0.0: no reference model)
    reward_weights: list[float] | None = None  # one weight per reward function; None: all 1.0
    seed: int = 0  # model init of heads, sampling, data order
    logging_steps: int = 1  # a log_history row every this many steps
    save_steps: int | None = None  # weights-only snapshot every this many steps (None: final model only)
    report_to: str = "none"  # TRL/transformers logging integrations ("none", "tensorboard", "wandb", ...)
    use_cpu: bool = True  # train on the CPU even if an accelerator is visible
    bf16: bool = False  # bf16 mixed precision (needs an accelerator that supports it)
    activation_checkpointing: bool = False  # recompute activations in the backward pass to save memory

    def __post_init__(self):
        _check_common(self)
        _check(self, "prompts_per_step", (int,), lambda v: v >= 1, ">= 1")
        _check(self, "num_generations", (int,), lambda v: v >= 2, ">= 2 (GRPO compares samples of one prompt)")
        _check(self, "max_completion_length", (int,), lambda v: v >= 1, ">= 1")
        _check(self, "temperature", (int, float), lambda v: 0 < v < math.inf, "> 0 and finite")
        if self.reward_weights is not None:
            w = self.reward_weights
            if isinstance(w, (str, bytes)) or not isinstance(w, (list, tuple)) or not w:
                raise BaselineError(f"GRPOBaselineConfig.reward_weights: expected a non-empty list of numbers or None, "
                                    f"got {w!r}")  # fmt: skip
            bad = [x for x in w if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)]
            if bad:
                raise BaselineError("GRPOBaselineConfig.reward_weights: every weight must be a finite number, "
                                    f"got {bad[0]!r}")
            self.reward_weights = [float(x) for x in w]

    @classmethod
    def from_dict(cls, data: dict) -> GRPOBaselineConfig:
        """A config from a mapping (e.g. read from YAML or metrics.json); unknown keys are rejected."""
        return _from_dict(cls, data)


@dataclass
class KTOBaselineConfig:
    """KTO on logged reactions. Fields not listed keep TRL's KTOConfig defaults (loss "kto", sequential batches so
    that each example's KL completion comes from its own batch, dropout off). The desirable weight is computed from
    the data (`kto_weights`). Changed from TRL, and why: logging every step (10), activation checkpointing off (on),
    bf16 off and CPU, no TRL checkpoints (they pickle)."""

    steps: int = 100  # optimizer steps (TRL max_steps); the data repeats when it is shorter
    learning_rate: float = 1e-6  # TRL default; the KTO tip is 5e-7 to 5e-6 at an effective batch of 8 to 32
    per_device_batch_size: int = 8  # examples per step; >= 2 because the KL estimate pairs prompts within a batch
    beta: float = 0.1  # KTO beta: higher keeps the model closer to the reference (TRL default)
    weight_ratio: float = 1.0  # target desirable_weight*n_desirable / (undesirable_weight*n_undesirable), in [1, 4/3]
    undesirable_weight: float = 1.0  # fixed; the desirable weight is solved for from weight_ratio
    max_length: int | None = 1024  # prompt + completion tokens, truncated beyond (TRL default); <= model positions
    seed: int = 0  # data order (rows are shuffled once, then read in sequence), model init of heads
    logging_steps: int = 1
    save_steps: int | None = None
    report_to: str = "none"
    use_cpu: bool = True
    bf16: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self):
        _check_common(self)
        _check(self, "per_device_batch_size", (int,), lambda v: v >= 2,
               ">= 2 (KTO estimates its KL term from mismatched prompts in the same batch)")  # fmt: skip
        lo, hi = KTO_BAND
        _check(self, "weight_ratio", (int, float), lambda v: lo <= v <= hi, "in [1, 4/3] (KTO paper eq. 8)")
        _check(self, "undesirable_weight", (int, float), lambda v: 0 < v < math.inf, "> 0 and finite")
        _check(self, "max_length", (int,), lambda v: v >= 2, ">= 2 or None (no truncation)", optional=True)

    @classmethod
    def from_dict(cls, data: dict) -> KTOBaselineConfig:
        """A config from a mapping (e.g. read from YAML or metrics.json); unknown keys are rejected."""
        return _from_dict(cls, data)


# ====================================================================== model and output


def _load_policy(model_dir: str | Path):
    """(model in float32, tokenizer) from a Hugging Face causal-LM directory with a chat template."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise BaselineError(f"{d} is not a model directory (no config.json); pass a Hugging Face causal-LM directory")
    if not any(d.glob("*.safetensors")):
        raise BaselineError(f"{d} holds no .safetensors weights; convert the checkpoint to safetensors "
                            "(model.save_pretrained(dir)) before training from it")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(d)
    if not tokenizer.chat_template:
        raise BaselineError(f"{d}: the tokenizer has no chat_template; the baselines render prompts with "
                            "apply_chat_template, so save a tokenizer that carries one")  # fmt: skip
    if tokenizer.eos_token_id is None:
        raise BaselineError(f"{d}: the tokenizer has no eos_token; generation and KTO completions need one")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    return model, tokenizer


def _fresh_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BaselineError(f"{out} already exists and is not an empty directory; pick another out_dir or remove it")
    return out


class _StepClock(TrainerCallback):
    """Wall time of every optimizer step, and weights-only snapshots every `save_steps` steps."""

    def __init__(self, out_dir: Path, save_steps: int | None, tokenizer):
        self.out_dir, self.save_steps, self.tokenizer = out_dir, save_steps, tokenizer
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seconds.append(time.perf_counter() - self._t0)
        if self.save_steps and state.global_step % self.save_steps == 0 and state.global_step < state.max_steps:
            _save_model(model, self.tokenizer, self.out_dir / f"checkpoint-{state.global_step}")


def _save_model(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors: the only format transformers 5 writes
    tokenizer.save_pretrained(out)


def _finite(x):
    """JSON-safe copy of a log entry: NaN and infinities become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _write_metrics(out: Path, payload: dict) -> Path:
    path = out / METRICS
    path.write_text(json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n")
    return path


def _summary(trainer, clock: _StepClock, seconds: float) -> dict:
    steps = clock.seconds
    return {"steps": trainer.state.global_step, "train_seconds": round(seconds, 3),
            "step_seconds": [round(s, 4) for s in steps],
            "median_step_seconds": round(float(np.median(steps)), 4) if steps else None,
            "log_history": trainer.state.log_history}  # fmt: skip


# ====================================================================== weighted-sum GRPO


def _prompt_records(prompts: Sequence) -> list[dict]:
    """{"prompt", "category", "baseline"} dicts from dicts or PromptRow-like objects, validated."""
    if isinstance(prompts, (str, bytes, dict)) or not isinstance(prompts, Sequence):
        raise BaselineError(f"prompts: expected a list of prompt rows, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise BaselineError("prompts is empty: GRPO needs at least one prompt row; build them with "
                            "rluf.policy.data.load_prompts(store)")  # fmt: skip
    records = []
    for i, row in enumerate(prompts):
        if isinstance(row, dict):
            missing = [f for f in PROMPT_FIELDS if f not in row]
            if missing:
                raise BaselineError(f"prompts[{i}]: missing key {missing[0]!r}; each row needs "
                                    f"{', '.join(PROMPT_FIELDS)}")
            rec = {f: row[f] for f in PROMPT_FIELDS}
        else:
            try:
                rec = {f: getattr(row, f) for f in PROMPT_FIELDS}
            except AttributeError as exc:
                raise BaselineError(f"prompts[{i}]: a {type(row).__name__} without the fields "
                                    f"{', '.join(PROMPT_FIELDS)} ({exc})") from None  # fmt: skip
        _check_messages(rec["prompt"], f"prompts[{i}].prompt")
        if rec["prompt"][-1]["role"] != "user":
            raise BaselineError(f"prompts[{i}].prompt: the last message must be a user turn (the reply is generated "
                                f"after it), got role {rec['prompt'][-1]['role']!r}")  # fmt: skip
        if rec["category"] is not None and not isinstance(rec["category"], str):
            raise BaselineError(f"prompts[{i}].category: expected a string or None, got {rec['category']!r:.60}")
        if not isinstance(rec["baseline"], str):
            raise BaselineError(f"prompts[{i}].baseline: expected the logged reply as a string, "
                                f"got {rec['baseline']!r:.60}")
        rec["prompt"] = [{"role": m["role"], "content": m["content"]} for m in rec["prompt"]]
        records.append(rec)
    return records


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise BaselineError(f"{where}: expected a non-empty list of chat messages "
                            f'[{{"role": ..., "content": ...}}], got {messages!r:.80}')  # fmt: skip
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BaselineError(f'{where}[{j}]: expected {{"role": str, "content": str}}, got {m!r:.80}')


def _reward_names(reward_funcs, weights) -> list[str]:
    if callable(reward_funcs) or isinstance(reward_funcs, (str, bytes)) or not isinstance(reward_funcs, Sequence):
        raise BaselineError("reward_funcs: expected a list of callables "
                            "f(prompts, completions, **columns) -> list[float]")
    if len(reward_funcs) == 0:
        raise BaselineError("reward_funcs is empty: pass at least one reward function")
    names = []
    for i, f in enumerate(reward_funcs):
        if not callable(f):
            raise BaselineError(f"reward_funcs[{i}]: expected a callable, got {type(f).__name__}")
        name = getattr(f, "__name__", None)
        if not isinstance(name, str) or not name:
            raise BaselineError(f"reward_funcs[{i}]: a {type(f).__name__} without a __name__; TRL logs each reward "
                                "under rewards/{__name__}/mean, so give it one")  # fmt: skip
        names.append(name)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BaselineError(f"reward_funcs: two functions are named {dup[0]!r}; their logged metrics would mix, "
                            "so give them distinct __name__s")  # fmt: skip
    if weights is not None and len(weights) != len(names):
        raise BaselineError(f"reward_weights has {len(weights)} weights but there are {len(names)} reward functions "
                            f"({', '.join(names)}); give one weight per function, in the same order")  # fmt: skip
    return names


def _check_lengths(tokenizer, model, records: list[dict], max_new: int) -> None:
    """Prompt + reply must fit the model's positions (GRPO does not truncate prompts)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return
    for i, rec in enumerate(records):
        n = len(tokenizer.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"])
        if n + max_new > limit:
            raise BaselineError(f"prompts[{i}]: {n} prompt tokens + max_completion_length {max_new} exceed the "
                                f"model's {limit} positions; keep fewer context turns or lower "
                                "max_completion_length")  # fmt: skip


def run_grpo(model_dir: str | Path, prompts: Sequence, reward_funcs: Sequence[Callable], out_dir: str | Path,
             config: GRPOBaselineConfig | None = None) -> dict:  # fmt: skip
    """Train `model_dir` with weighted-sum GRPO; write the model and metrics.json to `out_dir`; the metrics dict.

    prompts: rows with `prompt` (chat messages ending with a user turn), `category` (str or None) and `baseline`
    (the logged reply), as dicts or PromptRow objects; both extra columns reach the reward functions as keyword
    lists. reward_funcs: callables f(prompts, completions, **columns) -> list[float | None] (TRL's contract; None
    means "not applicable"), each with a distinct __name__, combined as sum_i reward_weights[i] * f_i.
    """
    config = config or GRPOBaselineConfig()
    if not isinstance(config, GRPOBaselineConfig):
        raise BaselineError(f"config: expected a GRPOBaselineConfig, got {type(config).__name__}")
    from trl import GRPOConfig, GRPOTrainer

    records = _prompt_records(prompts)
    names = _reward_names(reward_funcs, config.reward_weights)
    out = _fresh_out_dir(out_dir)
    model, tokenizer = _load_policy(model_dir)
    tokenizer.padding_side = tokenizer.truncation_side = "left"  # generation continues the prompt's right end
    _check_lengths(tokenizer, model, records, config.max_completion_length)
    args = GRPOConfig(**_trainer_kwargs(config, out), per_device_train_batch_size=config.prompts_per_step *
                      config.num_generations, gradient_accumulation_steps=1, num_generations=config.num_generations,
                      max_completion_length=config.max_completion_length, temperature=config.temperature,
                      reward_weights=config.reward_weights)  # fmt: skip
    clock = _StepClock(out, config.save_steps, tokenizer)
    trainer = GRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=args,
                          train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                          callbacks=[clock])  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    metrics = {"method": "weighted_sum_grpo", "model_dir": str(model_dir), "prompts": len(records),
               "config": dataclasses.asdict(config), "reward_functions": names,
               "reward_weights": config.reward_weights or [1.0] * len(names),
               **_summary(trainer, clock, time.perf_counter() - t0)}  # fmt: skip
    _save_model(trainer.model, tokenizer, out)
    _write_metrics(out, metrics)
    return metrics


# ====================================================================== KTO on logged reactions


def kto_dataset(store: str | Path, signal: str = "love", window_hours: float = 168.0, max_rows: int | None = None,
                seed: int = 0, max_context_turns: int = 4, split: str = "train",
                exclude_users: Iterable[str] | None = None) -> list[dict]:  # fmt: skip
    """Unpaired KTO rows from the logged replies of `store`, in time order.

    Each row: {"prompt": chat messages up to the user turn answered, "completion": [{"role": "assistant",
    "content": reply}], "label": True when the reply received `signal` (a reaction name, or "continued" /
    "returned_next_day") within `window_hours`, "message_id": the reply}. Labels, censoring, the adversarial
    filter, the per-user cap and the split are those of `build_examples` (ExampleConfig with this signal,
    window and seed); `split` picks train, val, test or all three. The prompt holds at most
    `max_context_turns` turns, the answered user turn included (as rluf.policy.data.load_prompts), and starts
    at a user or system turn (a leading assistant turn is dropped); replies that do not follow a user turn
    are left out. `max_rows` keeps a seeded random subset (time order kept). `exclude_users` leaves out the
    replies to these users (e.g. the users of an evaluation prompt set, so that no candidate trained on them).
    """
    _check_arg("max_context_turns", max_context_turns,
               lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")
    _check_arg("split", split, lambda v: v in KTO_SPLITS, f"one of {', '.join(KTO_SPLITS)}")
    _check_arg("max_rows", max_rows, lambda v: v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               "an integer >= 1 or None")  # fmt: skip
    cfg = ExampleConfig(signal=signal, label_window_hours=window_hours, context_turns=0, seed=seed)
    ex = build_examples(store, cfg)
    tables = [ex.train, ex.val, ex.test] if split == "all" else [getattr(ex, split)]
    picked = pa.concat_tables(tables).sort_by([("time", "ascending"), ("message_id", "ascending")])
    if exclude_users is not None:
        if isinstance(exclude_users, str):
            raise BaselineError("kto_dataset: exclude_users must be a collection of user ids, not one string")
        held_out = pa.array(sorted({str(u) for u in exclude_users}), pa.string())
        picked = picked.filter(pc.invert(pc.is_in(picked["user_id"], value_set=held_out)))
    try:
        con = Store(store).connect()
    except StoreError as exc:
        raise BaselineError(str(exc)) from None
    con.sql("SET enable_progress_bar = false")
    msgs = _Messages.load(con)
    con.close()
    rows = pc.index_in(picked["message_id"], value_set=msgs.table["message_id"]).to_numpy(zero_copy_only=False)
    chains, kept, skipped = [], [], 0
    for i, r in enumerate(rows.astype(np.int64).tolist()):
        chain, cur = [], int(msgs.parent[r])
        while cur >= 0 and len(chain) < max_context_turns:
            chain.append(cur)
            cur = int(msgs.parent[cur])
        chain.reverse()
        if not chain or msgs.role[chain[-1]] != ROLE_CODES["user"]:
            skipped += 1
            continue
        while msgs.role[chain[0]] == ROLE_CODES["assistant"]:  # chat templates expect a user or system turn first
            chain.pop(0)
        chains.append(chain)
        kept.append(i)
    need = np.unique(np.array([a for c in chains for a in c] + [int(rows[i]) for i in kept], np.int64))
    text = dict(zip(need.tolist(), msgs.table["text"].take(pa.array(need)).to_pylist()))
    ids, labels = picked["message_id"].to_pylist(), picked["label"].to_pylist()
    out = [{"prompt": [{"role": ROLE_NAMES[int(msgs.role[a])], "content": text[a] or ""} for a in chain],
            "completion": [{"role": "assistant", "content": text[int(rows[i])] or ""}],
            "label": bool(labels[i]), "message_id": ids[i]} for i, chain in zip(kept, chains)]  # fmt: skip
    if max_rows is not None and len(out) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(out), max_rows, replace=False))
        out = [out[i] for i in keep.tolist()]
    log.info("kto_dataset: %d rows (%d desirable) from the %s split of %s; %d replies skipped (no user turn before)",
             len(out), sum(r["label"] for r in out), split, store, skipped)
    return out


def _check_arg(name, value, ok, must):
    if not ok(value):
        raise BaselineError(f"kto_dataset: {name} must be {must}, got {value!r}")


def kto_weights(labels: Sequence[bool], weight_ratio: float = 1.0, undesirable_weight: float = 1.0) -> dict:
    """Class weights for KTO (paper eq. 8): desirable_weight = weight_ratio * undesirable_weight * n_u / n_d.

    Then desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = weight_ratio, which must lie
    in [1, 4/3]: the rare class (here the loved replies) carries as much total weight as the other, or a
    third more. Returns the weights, the counts and the achieved ratio.
    """
    lo, hi = KTO_BAND
    if isinstance(weight_ratio, bool) or not isinstance(weight_ratio, (int, float)) or not lo <= weight_ratio <= hi:
        raise BaselineError(f"kto_weights: weight_ratio must be in [1, 4/3] (KTO paper eq. 8), got {weight_ratio!r}")
    uw = undesirable_weight
    if isinstance(uw, bool) or not isinstance(uw, (int, float)) or not 0 < uw < math.inf:
        raise BaselineError(f"kto_weights: undesirable_weight must be > 0 and finite, got {undesirable_weight!r}")
    labels = list(labels)
    if any(not isinstance(x, (bool, np.bool_)) for x in labels):
        raise BaselineError("kto_weights: labels must be booleans (True: desirable)")
    n_d = sum(bool(x) for x in labels)
    n_u = len(labels) - n_d
    if n_d == 0:
        raise BaselineError(f"no desirable examples among {len(labels):,}: KTO needs some replies that received the "
                            "signal; use more data (a longer period or split='all'), a longer window, or a more "
                            "frequent signal")  # fmt: skip
    if n_u == 0:
        raise BaselineError(f"no undesirable examples among {len(labels):,}: every reply received the signal, so KTO "
                            "has nothing to push away from; check the signal and the data")  # fmt: skip
    dw = weight_ratio * undesirable_weight * n_u / n_d
    return {"desirable_weight": dw, "undesirable_weight": float(undesirable_weight), "n_desirable": n_d,
            "n_undesirable": n_u, "ratio": dw * n_d / (undesirable_weight * n_u)}  # fmt: skip


def _kto_records(dataset) -> list[dict]:
    if isinstance(dataset, Dataset):
        dataset = dataset.to_list()
    if isinstance(dataset, (str, bytes, dict)) or not isinstance(dataset, Sequence):
        raise BaselineError(f"dataset: expected a list of KTO rows (kto_dataset(store)) or a datasets.Dataset, "
                            f"got {type(dataset).__name__}")  # fmt: skip
    if len(dataset) == 0:
        raise BaselineError("dataset is empty: build KTO rows with kto_dataset(store)")
    records = []
    for i, row in enumerate(dataset):
        if not isinstance(row, dict) or any(f not in row for f in KTO_FIELDS):
            raise BaselineError(f"dataset[{i}]: expected a dict with keys {', '.join(KTO_FIELDS)}, got {row!r:.80}")
        _check_messages(row["prompt"], f"dataset[{i}].prompt")
        _check_messages(row["completion"], f"dataset[{i}].completion")
        if not isinstance(row["label"], (bool, np.bool_)):
            raise BaselineError(f"dataset[{i}].label: expected True (desirable) or False, got {row['label']!r}")
        records.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
                        "completion": [{"role": m["role"], "content": m["content"]} for m in row["completion"]],
                        "label": bool(row["label"])})  # fmt: skip
    return records


def run_kto(model_dir: str | Path, dataset, out_dir: str | Path, config: KTOBaselineConfig | None = None) -> dict:
    """Train `model_dir` with KTO on `dataset` (kto_dataset rows); write the model and metrics.json; the metrics.

    The reference model is a second, frozen copy of the starting model. Class weights come from `kto_weights`
    and are logged and stored in metrics["weights"]. Rows are shuffled once with `config.seed` and then read
    in order: KTO pairs each prompt with another row's completion of the same batch for its KL estimate.
    """
    config = config or KTOBaselineConfig()
    if not isinstance(config, KTOBaselineConfig):
        raise BaselineError(f"config: expected a KTOBaselineConfig, got {type(config).__name__}")
    from trl import KTOConfig, KTOTrainer

    records = _kto_records(dataset)
    weights = kto_weights([r["label"] for r in records], config.weight_ratio, config.undesirable_weight)
    if len(records) < config.per_device_batch_size:
        raise BaselineError(f"dataset has {len(records)} rows, fewer than per_device_batch_size "
                            f"{config.per_device_batch_size}; use more rows or a smaller batch")  # fmt: skip
    log.info("KTO weights: desirable %.4f x %d, undesirable %.4f x %d (ratio %.3f)", weights["desirable_weight"],
             weights["n_desirable"], weights["undesirable_weight"], weights["n_undesirable"], weights["ratio"])
    out = _fresh_out_dir(out_dir)
    model, tokenizer = _load_policy(model_dir)
    ref_model, _ = _load_policy(model_dir)
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = config.max_length if limit is None else min(config.max_length or limit, limit)
    args = KTOConfig(**_trainer_kwargs(config, out), per_device_train_batch_size=config.per_device_batch_size,
                     gradient_accumulation_steps=1, max_length=max_length, loss_type="kto",
                     desirable_weight=weights["desirable_weight"],
                     undesirable_weight=weights["undesirable_weight"])  # fmt: skip
    clock = _StepClock(out, config.save_steps, tokenizer)
    train = Dataset.from_list(records).shuffle(seed=config.seed).flatten_indices()
    trainer = KTOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train, processing_class=tokenizer,
                         callbacks=[clock])  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    metrics = {"method": "kto", "model_dir": str(model_dir), "examples": len(records),
               "config": dataclasses.asdict(config), "weights": weights, "max_length_used": max_length,
               **_summary(trainer, clock, time.perf_counter() - t0)}  # fmt: skip
    _save_model(trainer.model, tokenizer, out)
    _write_metrics(out, metrics)
    return metrics
