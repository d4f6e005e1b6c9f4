"""CGPO: constrained multi-objective policy optimization with a Mixture of Judges (CRPG, CRRAFT; multi-task).

    rluf optimize --config examples/optimize.yaml
    accelerate launch --multi_gpu --num_processes 2 -m rluf.policy.cgpo --config examples/optimize.yaml   # DDP (GPUs, or gloo on CPU)

One `CGPOConfig` beside one `CGPOTrainer` (METHOD.md section 2). Per step, for every task l (a set of
prompt categories with its own reward mix, judges, KL_max, K, batch and gradient weight rho_l):

1. sample B_l prompts, generate K replies each from the current policy;
2. score them: every reward model calibrated against the logged baseline reply of the same prompt
   (eq. 5, rewards.py) and mixed by the task's weights; judge them with the task's Mixture of Judges
   (AND; a judge failure counts as a violation and is reported);
3. recompute sequence log-probabilities with a clean forward pass at temperature 1 (policy with grad,
   reference without), KL(s, a) = log pi(a|s) - log pi_ref(a|s);
4. the task's optimizer gives a loss:
   - CRPG (eqs. 8-12): R_cr = R_calib * 1[satisfied]; R~ = max(1 - KL/KL_max, 0) * R_cr;
     advantage = R~ - mean(R~) over the task's batch (eq. 12; `group_baseline: true` uses the
     per-prompt mean instead: a lower-variance deviation from the paper; `scale_advantages: true` also
     divides by the std over the same rows, as GRPO does);
     loss = -sum_i logp_i * adv_i / sum_i |a_i| (per completion token, as TRL's CGPO port);
   - CRRAFT (eqs. 17-18): per prompt the best reply among those satisfied with KL <= KL_max, weighted by
     its R_calib; when none survives, the logged baseline if the judges accept it and its KL <= KL_max
     (weight sigmoid(0) = 0.5), else the prompt is skipped; loss = -sum R * logp / sum |a| of the chosen;
5. Algorithm 2: loss = sum_l rho_l * loss_l, one optimizer step.

`use_judges: false` is the no-judges ablation: judges are still computed and logged (they measure the
love-bait rate), but do not zero any reward. Every random draw derives from (seed, step, task), and
checkpoints (checkpoint.py) hold model, optimizer and step, so a killed run resumed from its last
checkpoint ends exactly where an uninterrupted one does. Under `accelerate launch` every process takes
its share of each task's prompts; CRPG's batch mean and the token count are reduced over all
processes, so the update equals the single-process one.

Logged per step (OUT/metrics.jsonl, and tensorboard/wandb/mlflow with `report_to`):
rewards/{name}/mean|std (the raw probability, before calibration and weighting),
rewards/{name}/calibrated_mean, reward/mean (the mix), judges/{name}/pass_rate|fail_rate,
judges/all/pass_rate, kl (mean sequence KL to the reference), loss, tokens_per_s, samples_per_s,
step_time, and per task task/{name}/kl, task/{name}/reward.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import from_mapping
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .generate import sample_completions
from .rewards import PRESETS, CalibratedReward, RewardMix, preset_weights

OPTIMIZERS = ("crpg", "crraft")
LOVE_WEIGHT = {"moderate": 0.1, "aggressive": 0.3}  # RLUF's two candidates (METHOD.md 1.5)
EMOTIONAL = ["role_play", "relationship_support", "casual_chat", "companionship", "humor", "creative_writing"]
TRACKERS = ("tensorboard", "wandb", "mlflow")
TRACKER_PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}  # what to install for each


def _tracker_available(name: str) -> bool:
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    check = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}[name]
    return bool(check())


class CGPOError(ValueError):
    pass


def _from_dict(cls, data: dict, where: str):
    return from_mapping(cls, data, where, CGPOError)


@dataclass
class TaskConfig:
    name: str  # a label for logs
    categories: list[str] | None = None  # prompt categories of this task; None: every category no other task names
    optimizer: str = "crpg"  # crpg or crraft
    weights: dict[str, float] | None = None  # reward mix; None: the run's preset / weights
    judges: list[dict] | None = None  # judge specs (rluf.judges.build_judges); None: the run's judges
    kl_max: float = 8.0  # KL_max: per-sample sequence log-ratio bound (nats)
    k: int = 4  # generations per prompt
    batch_prompts: int = 8  # B_l: prompts per step
    rho: float = 1.0  # gradient weight of this task (Algorithm 2)
    group_baseline: bool = False  # CRPG: subtract the per-prompt mean instead of the batch mean (eq. 12)
    scale_advantages: bool = False  # CRPG: also divide by the std over the same rows (per prompt or batch), as GRPO does

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise CGPOError(f"task {self.name!r}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for key, ok in (("kl_max", self.kl_max > 0), ("k", self.k >= 1), ("batch_prompts", self.batch_prompts >= 1),
                        ("rho", self.rho >= 0)):  # fmt: skip
            if not ok:
                raise CGPOError(f"task {self.name!r}: {key} = {getattr(self, key)} is out of range")
        if self.group_baseline and self.k < 2:
            raise CGPOError(f"task {self.name!r}: group_baseline needs k >= 2")


@dataclass
class CGPOConfig:
    policy: str = ""  # Hugging Face causal-LM directory: the starting policy and the reference pi_ref
    prompts: str = ""  # a store directory (prompt rows with logged baselines) or a JSONL of prompt records
    out: str = ""  # output directory: the optimized model (HF dir), metrics.jsonl, summary.json, checkpoints/
    reward_models: dict[str, str] = field(default_factory=dict)  # name -> reward model directory (love, helpful, safe)
    preset: str | None = "aggressive"  # moderate (love 0.1) or aggressive (love 0.3); ignored when `weights` is set
    weights: dict[str, float] | None = None  # explicit reward mix for every task without its own
    judges: list[dict] = field(default_factory=lambda: [{"type": "love_bait"}, {"type": "repetition"}])
    use_judges: bool = True  # False: the no-judges ablation (judges logged, not enforced)
    judge_phrases: list[str] = field(default_factory=list)  # phrase files (`rluf hacking --judge-config` writes one): they extend the love_bait / refusal judges of the run and of every task
    tasks: list[TaskConfig] | None = None  # None: the preset's two tasks (see preset_tasks), or one task "all" with `weights`
    engagement_categories: list[str] = field(default_factory=lambda: list(EMOTIONAL))  # the preset's engagement task
    no_regression_margin: float = 0.15  # the preset's engagement task: P[helpful] may drop this much below the logged reply's (docs/optimize.md: why 0.15)
    steps: int = 60  # optimizer steps
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_new_tokens: int = 96
    max_prompt_tokens: int = 256  # longer prompts keep their last tokens
    temperature: float = 1.0  # sampling temperature (log-probs are always recomputed at 1.0)
    top_p: float = 1.0
    seed: int = 0
    max_prompts: int | None = 20000  # prompt rows read from the store (seeded, stratified)
    eval_prompts: int = 200  # held-out prompts scored before and after training (users unseen in training)
    save_every: int = 20  # checkpoint every N steps (0: only at the end)
    snapshot_steps: list[int] = field(default_factory=list)  # also write the policy as a HF directory OUT/snapshots/step-NNNNNN after these steps (candidates to evaluate)
    log_every: int = 1
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb, mlflow (accelerate trackers)
    resume: bool = True  # continue from the newest checkpoint in OUT/checkpoints when there is one

    @classmethod
    def from_dict(cls, data: dict) -> CGPOConfig:
        data = dict(data)
        tasks = data.pop("tasks", None)
        cfg = _from_dict(cls, data, "optimize config")
        if tasks is not None:
            if not isinstance(tasks, list) or not tasks:
                raise CGPOError("optimize config: tasks must be a non-empty list of task mappings")
            cfg.tasks = [_from_dict(TaskConfig, t, f"tasks[{i}]") for i, t in enumerate(tasks)]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for key in ("policy", "prompts", "out"):
            if not getattr(self, key):
                raise CGPOError(f"optimize config: `{key}` is required")
        if not self.reward_models:
            raise CGPOError("optimize config: `reward_models` must name at least one reward model directory")
        if self.weights is None and self.preset not in PRESETS:
            raise CGPOError(f"optimize config: preset must be one of {sorted(PRESETS)} (or give `weights`)")
        for key, ok in (("steps", self.steps >= 1), ("learning_rate", self.learning_rate > 0),
                        ("max_new_tokens", self.max_new_tokens >= 1), ("temperature", self.temperature > 0),
                        ("top_p", 0 < self.top_p <= 1), ("save_every", self.save_every >= 0),
                        ("no_regression_margin", self.no_regression_margin >= 0)):  # fmt: skip
            if not ok:
                raise CGPOError(f"optimize config: {key} = {getattr(self, key)} is out of range")
        if not isinstance(self.snapshot_steps, list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and 1 <= k < self.steps for k in self.snapshot_steps):
            raise CGPOError(f"optimize config: snapshot_steps = {self.snapshot_steps!r} must be a list of steps in [1, "
                            f"steps - 1] (the final policy is written to `out` anyway)")  # fmt: skip
        bad = sorted(set(self.report_to) - set(TRACKERS))
        if bad:
            raise CGPOError(f"optimize config: report_to {bad} not supported; use any of {', '.join(TRACKERS)}")
        missing = [t for t in self.report_to if not _tracker_available(t)]
        if missing:  # accelerate would skip them without a word
            raise CGPOError(f"optimize config: report_to {missing} needs its package, which is not installed: "
                            f"pip install {' '.join(TRACKER_PACKAGES[t] for t in missing)}")  # fmt: skip
        self._merge_judge_phrases()
        if self.tasks is None:
            self.tasks = preset_tasks(self) if self.weights is None else [TaskConfig(name="all")]
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise CGPOError(f"optimize config: task names must be unique, got {names}")
        if sum(t.categories is None for t in self.tasks) > 1:
            raise CGPOError("optimize config: at most one task may leave `categories` unset (it takes the rest)")

    def _merge_judge_phrases(self) -> None:
        """Fold the phrase files into the judge specs (idempotent: repeated phrases are dropped)."""
        from ..judges import JudgeError, load_judge_phrases

        if isinstance(self.judge_phrases, str) or not isinstance(self.judge_phrases, list):
            raise CGPOError(f"optimize config: judge_phrases must be a list of files, got {self.judge_phrases!r:.80}")
        for path in self.judge_phrases:
            try:
                self.judges = load_judge_phrases(path, self.judges)
                for t in self.tasks or []:
                    if t.judges is not None:
                        t.judges = load_judge_phrases(path, t.judges)
            except (JudgeError, OSError, ValueError) as exc:
                raise CGPOError(f"optimize config: judge_phrases: {exc}") from None


def preset_tasks(cfg: CGPOConfig) -> list[TaskConfig]:
    """The presets as CGPO tasks (Algorithm 2), the way CGPO gave its engagement objective its own task and reward
    model: prompts of the engagement categories are optimized for P[Love] alone, inside the run's judges plus a
    no-regression judge on helpfulness against the logged reply; every other prompt for helpfulness (0.8) and
    safety (0.2). The love weight of the preset (moderate 0.1, aggressive 0.3) is the engagement task's gradient
    weight rho, the rest goes to the helpfulness task."""
    w = LOVE_WEIGHT[cfg.preset]
    for name in ("love", "helpful"):
        if name not in cfg.reward_models:
            raise CGPOError(f"optimize config: preset {cfg.preset!r} needs a reward model named {name!r} "
                            f"(have {sorted(cfg.reward_models)}); or give `tasks` explicitly")  # fmt: skip
    help_mix = {"helpful": 0.8, "safe": 0.2} if "safe" in cfg.reward_models else {"helpful": 1.0}
    guard = {"type": "no_regression", "model": cfg.reward_models["helpful"], "margin": cfg.no_regression_margin,
             "name": "helpful_no_regression"}  # fmt: skip
    return [TaskConfig(name="engagement", categories=list(cfg.engagement_categories), weights={"love": 1.0},
                       judges=[*cfg.judges, guard], rho=w),
            TaskConfig(name="helpfulness", categories=None, weights=help_mix, rho=1.0 - w)]  # fmt: skip


# ----------------------------------------------------------------------------- the losses (pure functions)
def crpg_loss(logp: torch.Tensor, n_tokens: torch.Tensor, reward: torch.Tensor, satisfied: torch.Tensor,
              kl: torch.Tensor, kl_max: float, group_size: int | None = None, reduce: Callable | None = None,
              scale: bool = False):  # fmt: skip
    """CRPG (eqs. 8-12). logp: (N,) sequence log-probs with grad; n_tokens: (N,) completion lengths;
    reward: (N,) calibrated mixed reward; satisfied: (N,) bool; kl: (N,) sequence log-ratios (no grad).
    group_size: subtract the per-group mean (consecutive groups of that size) instead of the batch mean.
    scale: divide the advantage by the (population) std over the same rows, + 1e-4 (GRPO's scaling; not
    in eq. 12). reduce(t) sums a tensor over processes (DDP); identity when None.
    Returns (loss, regularised reward)."""
    reduce = reduce or (lambda t: t)
    r_cr = reward * satisfied.to(reward.dtype)  # eq. 8
    r_reg = torch.clamp(1.0 - kl / kl_max, min=0.0) * r_cr  # eq. 11
    if group_size:
        groups = r_reg.view(-1, group_size)
        mean = groups.mean(dim=1, keepdim=True).expand(-1, group_size).reshape(-1)
        std = groups.std(dim=1, unbiased=False, keepdim=True).expand(-1, group_size).reshape(-1)
    else:
        total = reduce(torch.stack([r_reg.sum(), (r_reg * r_reg).sum(), torch.tensor(float(r_reg.numel()))]))
        mean = total[0] / total[2]
        std = (total[1] / total[2] - mean * mean).clamp(min=0.0).sqrt()
    adv = (r_reg - mean).detach()  # eq. 12
    if scale:
        adv = adv / (std.detach() + 1e-4)
    tokens = reduce(n_tokens.sum().to(logp.dtype).reshape(1))[0].clamp(min=1.0)
    return -(logp * adv).sum() / tokens, r_reg


def crraft_select(reward: torch.Tensor, satisfied: torch.Tensor, kl: torch.Tensor, kl_max: float, k: int,
                  baseline_ok: torch.Tensor) -> tuple[list[int | None], list[float]]:  # fmt: skip
    """CRRAFT's choice per prompt (eq. 17). reward/satisfied/kl: (B*K,) in prompt-major order;
    baseline_ok: (B,) bool, the baseline satisfies the judges and its KL <= kl_max.
    Returns for each prompt the index of the chosen sample (None: the baseline; -1: skipped) and its weight."""
    r = reward * satisfied.to(reward.dtype) * (kl <= kl_max).to(reward.dtype)
    chosen, weights = [], []
    for b, row in enumerate(r.view(-1, k)):
        best = int(torch.argmax(row))
        if row[best] > 0:
            chosen.append(b * k + best)
            weights.append(float(row[best]))
        elif bool(baseline_ok[b]):
            chosen.append(None)
            weights.append(0.5)  # sigmoid(r(ā) - r(ā)) = sigmoid(0)
        else:
            chosen.append(-1)
            weights.append(0.0)
    return chosen, weights


def crraft_loss(logp: torch.Tensor, n_tokens: torch.Tensor, weights: torch.Tensor, reduce: Callable | None = None):
    """eq. 18 on the chosen sequences: -sum w * logp / sum |a| (per token of the chosen replies)."""
    reduce = reduce or (lambda t: t)
    tokens = reduce(n_tokens.sum().to(logp.dtype).reshape(1))[0].clamp(min=1.0)
    return -(weights.to(logp.dtype) * logp).sum() / tokens


# ----------------------------------------------------------------------------- sequences
def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                      completion_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Sum of log pi(token) over the completion tokens (temperature 1). input_ids = [left-padded prompt |
    right-padded completion]; completion_mask marks the completion tokens that count (eos included)."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    keep = input_ids.shape[1] - prompt_len + 1  # only the positions that predict completion tokens need logits
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=keep).logits  # fmt: skip
    except TypeError:  # a model without `logits_to_keep`: compute them all
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, -keep:-1].float()
    targets = input_ids[:, prompt_len:]
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * completion_mask).sum(dim=1)


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


class CGPOTrainer:
    """`CGPOTrainer(config).train()` -> summary dict. See the module docstring for the algorithm."""

    def __init__(self, config: CGPOConfig, progress: Callable[[int, int, dict], None] | None = None):
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..judges import build_judges

        config.validate()
        self.cfg = config
        self.progress = progress
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), log_with=config.report_to or None,
                               project_dir=config.out)  # fmt: skip
        self.out = Path(config.out)
        torch.manual_seed(config.seed)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.policy)
            self.policy = AutoModelForCausalLM.from_pretrained(config.policy)
            self.ref = AutoModelForCausalLM.from_pretrained(config.policy)
        except (OSError, ValueError) as exc:
            raise CGPOError(f"policy {config.policy}: not a Hugging Face causal-LM directory ({exc})") from None
        if self.tokenizer.chat_template is None:
            raise CGPOError(f"policy {config.policy}: the tokenizer has no chat template; set one (rluf sft writes it)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        for m in (self.policy, self.ref):
            m.eval()  # no dropout: a clean, deterministic forward pass (CGPO's `disable_dropout`)
        self.ref.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)  # fmt: skip
        self.policy, self.optimizer = self.acc.prepare(self.policy, self.optimizer)
        self.ref.to(self.acc.device)

        self.rewards = {name: CalibratedReward(path, name=name) for name, path in config.reward_models.items()}
        base_weights = config.weights or (preset_weights(config.preset, list(self.rewards))
                                          if any(t.weights is None for t in config.tasks) else {})  # fmt: skip
        self.mixes, self.judges = {}, {}
        for t in config.tasks:
            self.mixes[t.name] = RewardMix(self.rewards, t.weights or base_weights, name=f"reward_{t.name}")
            self.judges[t.name] = build_judges(t.judges if t.judges is not None else config.judges)
        self.eval_judges = build_judges(config.judges)  # the run's judges measure every evaluation, ablation included
        self._load_prompts()

    # ------------------------------------------------------------------ data
    def _load_prompts(self) -> None:
        from .data import load_prompts, records_to_prompt_rows, split_prompts

        cfg, src = self.cfg, Path(self.cfg.prompts)
        if src.is_dir():
            rows = load_prompts(src, limit=cfg.max_prompts, seed=cfg.seed)
        elif src.is_file():
            rows = records_to_prompt_rows([json.loads(line) for line in src.read_text().splitlines() if line.strip()])
        else:
            raise CGPOError(f"prompts {src}: neither a store directory nor a JSONL file")
        if not rows:
            raise CGPOError(f"prompts {src}: no prompt rows")
        share = min(0.5, cfg.eval_prompts / len(rows)) if cfg.eval_prompts else 0.0
        train, held = split_prompts(rows, share, cfg.seed) if share else (rows, [])
        self.eval_rows = held[: cfg.eval_prompts]
        named = {c for t in cfg.tasks if t.categories for c in t.categories}
        self.task_rows = {}
        for t in cfg.tasks:
            mine = [r for r in train if (r.category in t.categories if t.categories else r.category not in named)]
            if not mine:
                raise CGPOError(f"task {t.name!r}: no training prompts of categories {t.categories or 'the rest'} in "
                                f"{src}; available: {sorted({r.category for r in train if r.category})}")  # fmt: skip
            if t.batch_prompts % self.acc.num_processes:
                raise CGPOError(f"task {t.name!r}: batch_prompts {t.batch_prompts} must be divisible by the "
                                f"{self.acc.num_processes} processes")  # fmt: skip
            self.task_rows[t.name] = mine

    # ------------------------------------------------------------------ generation
    def _encode_prompts(self, prompts: list[list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][-self.cfg.max_prompt_tokens:] for t in texts]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        return input_ids.to(self.acc.device), mask.to(self.acc.device)

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """K samples per prompt (prompt-major). Returns (prompt ids repeated, completion ids, texts)."""
        model = self.acc.unwrap_model(self.policy)
        p_ids, p_mask = self._encode_prompts(prompts)
        p_ids, p_mask = p_ids.repeat_interleave(k, 0), p_mask.repeat_interleave(k, 0)
        torch.manual_seed(seed)
        completion = sample_completions(model, p_ids, p_mask, max_new_tokens=self.cfg.max_new_tokens,
                                        eos_token_id=self.tokenizer.eos_token_id,
                                        pad_token_id=self.tokenizer.pad_token_id, temperature=self.cfg.temperature,
                                        top_p=self.cfg.top_p)  # fmt: skip
        return p_ids, p_mask, completion

    def _completion_mask(self, completion: torch.Tensor) -> torch.Tensor:
        """1 up to and including the first eos; a reply that never stops counts all its tokens."""
        is_eos = completion == self.tokenizer.eos_token_id
        after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        return (~after).float()

    def _texts(self, completion: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(c[: int(m.sum())], skip_special_tokens=True).strip()
                for c, m in zip(completion, mask)]  # fmt: skip

    def _encode_replies(self, replies: list[str], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded reply ids (eos appended) for logged baselines, truncated to `width` tokens."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        rows = [(self.tokenizer(r, add_special_tokens=False)["input_ids"] + [eos])[:width] for r in replies]
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in rows])
        mask = torch.tensor([[1.0] * len(x) + [0.0] * (width - len(x)) for x in rows])
        return ids.to(self.acc.device), mask.to(self.acc.device)

    def _logps(self, p_ids, p_mask, c_ids, c_mask) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([p_ids, c_ids], dim=1)
        attn = torch.cat([p_mask, c_mask.long()], dim=1)
        logp = sequence_logprobs(self.policy, ids, attn, p_ids.shape[1], c_mask)
        with torch.no_grad():
            ref = sequence_logprobs(self.ref, ids, attn, p_ids.shape[1], c_mask)
        return logp, ref

    # ------------------------------------------------------------------ one step
    def _task_batch(self, task: TaskConfig, step: int) -> list:
        rows = self.task_rows[task.name]
        rng = np.random.default_rng(_seed(self.cfg.seed, step, task.name, "prompts"))
        picked = [rows[i] for i in rng.choice(len(rows), size=task.batch_prompts, replace=len(rows) < task.batch_prompts)]
        share = task.batch_prompts // self.acc.num_processes
        return picked[self.acc.process_index * share:(self.acc.process_index + 1) * share]

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t, reduction="sum") if self.acc.num_processes > 1 else t

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        logs: dict[str, float] = {}
        total_loss = 0.0
        n_tokens = n_samples = 0
        self.optimizer.zero_grad(set_to_none=True)
        for task in self.cfg.tasks:
            rows = self._task_batch(task, step)
            prompts = [r.prompt for r in rows]
            p_ids, p_mask, comp = self.generate(prompts, task.k, _seed(self.cfg.seed, step, task.name, "generate",
                                                                        self.acc.process_index))  # fmt: skip
            c_mask = self._completion_mask(comp)
            texts = self._texts(comp, c_mask)
            rep_prompts = [p for p in prompts for _ in range(task.k)]
            rep_base = [r.baseline for r in rows for _ in range(task.k)]
            comps = self.mixes[task.name].components(rep_prompts, texts, rep_base)
            reward = torch.tensor(self.mixes[task.name].combine(comps), dtype=torch.float32, device=self.acc.device)
            verdicts = self.judges[task.name].judge_all(rep_prompts, texts, gold_completions=rep_base)
            all_ok = np.all([np.asarray(v) == 1 for v in verdicts.values()], axis=0) if verdicts else np.ones(len(texts), bool)
            satisfied = torch.tensor(all_ok if self.cfg.use_judges else np.ones(len(texts), bool), device=self.acc.device)
            if task.optimizer == "crpg":
                logp, ref = self._logps(p_ids, p_mask, comp, c_mask)
                kl = (logp - ref).detach()
                loss, _ = crpg_loss(logp, c_mask.sum(1), reward, satisfied, kl, task.kl_max,
                                    task.k if task.group_baseline else None, self._reduce,
                                    scale=task.scale_advantages)  # fmt: skip
            else:
                loss, kl = self._crraft(task, rows, prompts, p_ids, p_mask, comp, c_mask, reward, satisfied)
            # DDP averages gradients over processes; the losses are already normalised globally, so scale back to a sum
            (task.rho * loss * self.acc.num_processes).backward()
            total_loss += task.rho * float(loss.detach())
            n_tokens += int(c_mask.sum())
            n_samples += len(texts)
            self._log_task(logs, task, comps, reward, verdicts, all_ok, kl, texts)
        self.acc.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        dt = time.perf_counter() - t0
        logs.update({"step": step + 1, "loss": total_loss, "step_time": dt, "tokens_per_s": n_tokens / dt,
                     "samples_per_s": n_samples / dt})  # fmt: skip
        return self._gather_logs(logs)

    def _crraft(self, task, rows, prompts, p_ids, p_mask, comp, c_mask, reward, satisfied):
        """CRRAFT on one task's batch; returns (loss, KL of the generated samples). The logged baseline of each
        prompt rides in the same forward pass (one pass keeps DDP's gradient hooks to one per parameter)."""
        baselines = [r.baseline for r in rows]
        b_ids, b_mask = self._encode_replies(baselines, comp.shape[1])
        n = comp.shape[0]
        logp_all, ref_all = self._logps(torch.cat([p_ids, p_ids[:: task.k]]), torch.cat([p_mask, p_mask[:: task.k]]),
                                        torch.cat([comp, b_ids]), torch.cat([c_mask, b_mask]))  # fmt: skip
        logp = logp_all[:n]
        kl_all = (logp_all - ref_all).detach()
        kl, b_kl = kl_all[:n], kl_all[n:]
        b_verdict = self.judges[task.name].judge(prompts, baselines, gold_completions=baselines)
        b_ok = torch.tensor([v == 1 or not self.cfg.use_judges for v in b_verdict], device=logp.device)
        b_ok &= b_kl <= task.kl_max
        chosen, weights = crraft_select(reward, satisfied, kl, task.kl_max, task.k, b_ok)
        index = [n + b if c is None else c for b, c in enumerate(chosen) if c != -1]
        w = torch.tensor([w for c, w in zip(chosen, weights) if c != -1], device=logp.device)
        tokens = torch.cat([c_mask, b_mask]).sum(1)
        if not index:  # nothing to learn from on this process: a zero loss that still joins the reductions
            return crraft_loss(logp_all[:1] * 0.0, tokens[:1] * 0.0, torch.zeros(1, device=logp.device), self._reduce), kl
        index = torch.tensor(index, device=logp.device)
        return crraft_loss(logp_all[index], tokens[index], w, self._reduce), kl

    def _log_task(self, logs, task, comps, reward, verdicts, all_ok, kl, texts) -> None:
        n = len(texts)
        for name, c in comps.items():
            self._acc_stat(logs, f"rewards/{name}/mean", c["prob"].sum(), n)
            self._acc_stat(logs, f"rewards/{name}/sq", (c["prob"] ** 2).sum(), n)
            self._acc_stat(logs, f"rewards/{name}/calibrated_mean", c["calibrated"].sum(), n)
        for name, v in verdicts.items():
            v = np.asarray(v)
            self._acc_stat(logs, f"judges/{name}/pass_rate", (v == 1).sum(), n)
            self._acc_stat(logs, f"judges/{name}/fail_rate", (v == -1).sum(), n)
        self._acc_stat(logs, "judges/all/pass_rate", all_ok.sum(), n)
        self._acc_stat(logs, "reward/mean", float(reward.sum()), n)
        self._acc_stat(logs, "kl", float(kl.sum()), n)
        self._acc_stat(logs, "completion_words", sum(len(t.split()) for t in texts), n)
        self._acc_stat(logs, f"task/{task.name}/kl", float(kl.sum()), n)
        self._acc_stat(logs, f"task/{task.name}/reward", float(reward.sum()), n)

    @staticmethod
    def _acc_stat(logs, key, total, n) -> None:
        s, c = logs.get(key, (0.0, 0))
        logs[key] = (s + float(total), c + n)

    def _gather_logs(self, logs: dict) -> dict:
        keys = sorted(k for k, v in logs.items() if isinstance(v, tuple))
        sums = torch.tensor([[logs[k][0], logs[k][1]] for k in keys], dtype=torch.float64, device=self.acc.device)
        sums = self._reduce(sums)
        out = {k: v for k, v in logs.items() if not isinstance(v, tuple)}
        for k, (s, c) in zip(keys, sums.tolist()):
            out[k] = s / max(c, 1)
        for k in [k for k in out if k.endswith("/sq")]:
            mean = out[k[:-3] + "/mean"]
            out[k[:-3] + "/std"] = math.sqrt(max(out.pop(k) - mean * mean, 0.0))
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, tag: str) -> dict:
        """Mean reward probabilities and judge pass rates of one sampled reply per held-out prompt."""
        rows = self.eval_rows
        if not rows:
            return {}
        out: dict[str, float] = {}
        texts: list[str] = []
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            _, _, comp = self.generate([r.prompt for r in chunk], 1, _seed(self.cfg.seed, "eval", i))
            texts += self._texts(comp, self._completion_mask(comp))
        prompts, baselines = [r.prompt for r in rows], [r.baseline for r in rows]
        for name, reward in self.rewards.items():
            out[f"{tag}/p_{name}"] = float(np.mean(reward(prompts, texts)))
            out[f"{tag}/calibrated_{name}"] = float(np.mean(reward(prompts, texts, baseline=baselines)))
        for name, v in self.eval_judges.judge_all(prompts, texts, gold_completions=baselines).items():
            out[f"{tag}/judges/{name}/pass_rate"] = float(np.mean(np.asarray(v) == 1))
        out[f"{tag}/words"] = float(np.mean([len(t.split()) for t in texts]))
        return out

    def _save_policy(self, directory: Path) -> None:
        """The policy as a Hugging Face directory (safetensors weights, config, tokenizer, chat template)."""
        self.acc.unwrap_model(self.policy).save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg, acc = self.cfg, self.acc
        self.out.mkdir(parents=True, exist_ok=True)
        history: list[dict] = []
        start = 0
        ckpt = latest_checkpoint(self.out) if cfg.resume else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, acc.unwrap_model(self.policy), self.optimizer)
            start, history = int(state["step"]), state["history"]
        if cfg.report_to:
            acc.init_trackers("rluf-cgpo", config=_jsonable(dataclasses.asdict(cfg)))
        if acc.is_main_process:
            (self.out / "optimize_config.json").write_text(json.dumps(_jsonable(dataclasses.asdict(cfg)), indent=1))
        if history:  # history[0] is the evaluation before training, then one row per step
            before = history[0]
        else:
            before = self.evaluate("before")
            history = [before]
        log_file = self.out / "metrics.jsonl"
        if acc.is_main_process:  # rewritten from the history: a resumed run drops what the killed one logged past its checkpoint
            log_file.write_text("".join(json.dumps(row) + "\n" for row in history[1:]))
        for step in range(start, cfg.steps):
            logs = self.step(step)
            history.append(logs)
            if acc.is_main_process:
                with open(log_file, "a") as f:
                    f.write(json.dumps(logs) + "\n")
            if cfg.report_to:
                acc.log({k: v for k, v in logs.items() if k != "step"}, step=step + 1)
            if self.progress:
                self.progress(step + 1, cfg.steps, logs)
            if step + 1 in cfg.snapshot_steps and acc.is_main_process:
                self._save_policy(self.out / "snapshots" / f"step-{step + 1:06d}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(self.out, step + 1, acc.unwrap_model(self.policy), self.optimizer, history)
                acc.wait_for_everyone()
        after = self.evaluate("after")
        summary = {"steps": cfg.steps, **before, **after, "final": history[-1] if len(history) > 1 else {},
                   "use_judges": cfg.use_judges, "processes": acc.num_processes, "weights": {t.name: self.mixes[t.name].weights for t in cfg.tasks}}  # fmt: skip
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._save_policy(self.out)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        if cfg.report_to:
            acc.end_training()
        return summary


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def load_config(path: str | Path, overrides: dict | None = None) -> CGPOConfig:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CGPOError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise CGPOError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise CGPOError(f"{path}: an optimize config is a mapping of settings")
    data.update(overrides or {})
    return CGPOConfig.from_dict(data)


def main(argv: list[str] | None = None) -> None:
    """Entry point for `accelerate launch -m rluf.policy.cgpo --config FILE [--set key=value ...]`."""
    parser = argparse.ArgumentParser(description="CGPO policy optimization (CRPG / CRRAFT with a Mixture of Judges)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], help="override a top-level key: key=YAML value")
    args = parser.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    summary = CGPOTrainer(load_config(args.config, overrides)).train()
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))


if __name__ == "__main__":
    main()
