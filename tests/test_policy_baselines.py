"""The TRL baselines (rluf.policy.baselines): weighted-sum GRPO and KTO on logged reactions, on a tiny
Llama (rluf.policy.tiny: 2 layers, width 64; rluf.policy.tokenizer with its chat template) on the CPU.

GRPO: two steps with two reward functions and weights, the weighted reward in the log equals the
weighted sum of the per-function means, the columns reach the reward functions, the saved directory
loads and its weights moved. KTO: labels match the store's reactions in a small simulated world,
the class weights sit in the KTO band, two steps train and save. Input errors are raised before any
model is loaded.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rluf.data.ingest import ingest
from rluf.data.store import Store
from rluf.policy.baselines import (KTO_BAND, BaselineError, GRPOBaselineConfig, KTOBaselineConfig, kto_dataset,
                                   kto_weights, run_grpo, run_kto)  # fmt: skip
from rluf.policy.chat import render
from rluf.policy.data import PromptRow
from rluf.policy.tiny import build_tiny_lm
from rluf.policy.tokenizer import train_tokenizer
from rluf.sim.simulate import simulate

WORDS = ("the cat sat on a mat and i love this reply thanks so much what do you think about cooking travel music "
         "my friend said something mean how can i fix it take one small step at a time").split()  # fmt: skip
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
WINDOW_HOURS = 48.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The embedded policy's tokenizer (byte-level BPE with its chat template) and a 2-layer, width-64 tiny
    Llama, saved as a Hugging Face directory."""
    out = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    tokenizer = train_tokenizer([" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(300)], vocab_size=400)
    build_tiny_lm(tokenizer, n_layer=2, n_embd=64, n_head=4).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A simulated store: 40 users over 21 days."""
    out = tmp_path_factory.mktemp("world")
    simulate(out, users=40, days=21, seed=0, workers=1)
    ingest([out / "logs"], out / "store", workers=1)
    return out / "store"


def assert_saved_model(out: Path, start: Path) -> None:
    """A loadable HF directory in safetensors with the tokenizer and chat template, weights moved from `start`."""
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not [p for p in out.rglob("*") if p.suffix in PICKLED]
    tok = AutoTokenizer.from_pretrained(out)
    hi = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(hi, add_generation_prompt=True, tokenize=False)
    assert text == render(hi, add_generation_prompt=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tok)


# ====================================================================== GRPO


SEEN: dict[str, list] = {}


def words(prompts, completions, **kw):
    return [float(len(c[-1]["content"].split())) for c in completions]


def baseline_overlap(prompts, completions, baseline, category, **kw):
    SEEN.setdefault("baseline", []).extend(baseline)
    SEEN.setdefault("category", []).extend(category)
    return [float(len(set(c[-1]["content"].split()) & set(b.split()))) for c, b in zip(completions, baseline)]


def prompts(n: int = 4) -> list:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"what do you think about {WORDS[i]}"}]
        if i % 2:
            rows.append(PromptRow(prompt, None, f"the {WORDS[i]} is fine", f"u{i}", f"c{i}", f"c{i}:1"))
        else:
            rows.append({"prompt": prompt, "category": "chat", "baseline": f"i love {WORDS[i]}"})
    return rows


@pytest.mark.slow
def test_grpo_two_steps_with_weighted_rewards(tiny_model, tmp_path):
    cfg = GRPOBaselineConfig(steps=2, learning_rate=1e-2, prompts_per_step=2, num_generations=2,
                             max_completion_length=8, beta=0.04, reward_weights=[1.0, 0.5], save_steps=1)  # fmt: skip
    out = tmp_path / "grpo"
    m = run_grpo(tiny_model, prompts(), [words, baseline_overlap], out, cfg)
    assert_saved_model(out, tiny_model)
    assert (out / "checkpoint-1" / "model.safetensors").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["reward_functions"] == ["words", "baseline_overlap"] and saved["reward_weights"] == [1.0, 0.5]
    assert saved["steps"] == 2 and len(saved["step_seconds"]) == 2 and saved == json.loads(json.dumps(m))
    assert GRPOBaselineConfig.from_dict(saved["config"]) == cfg
    steps = [h for h in saved["log_history"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        for name in ("words", "baseline_overlap"):
            assert f"rewards/{name}/mean" in h and f"rewards/{name}/std" in h
        weighted = h["rewards/words/mean"] + 0.5 * h["rewards/baseline_overlap/mean"]
        assert h["reward"] == pytest.approx(weighted, rel=1e-5, abs=1e-6)
        assert "kl" in h and "step_time" in h
    # the dataset columns reach the reward functions: 2 prompts x 2 generations per step
    assert len(SEEN["baseline"]) == 8 and set(SEEN["baseline"]) <= {r["baseline"] if isinstance(r, dict) else r.baseline
                                                                     for r in prompts()}  # fmt: skip
    assert set(SEEN["category"]) <= {"chat", None}


def test_grpo_input_errors(tiny_model, tmp_path):
    with pytest.raises(BaselineError, match="prompts is empty"):
        run_grpo(tiny_model, [], [words], tmp_path / "a")
    with pytest.raises(BaselineError, match="reward_weights has 1 weights but there are 2 reward functions"):
        run_grpo(tiny_model, prompts(), [words, baseline_overlap], tmp_path / "b",
                 GRPOBaselineConfig(reward_weights=[1.0]))
    with pytest.raises(BaselineError, match="last message must be a user turn"):
        bad = [{"prompt": [{"role": "assistant", "content": "x"}], "category": None, "baseline": "y"}]
        run_grpo(tiny_model, bad, [words], tmp_path / "c")
    with pytest.raises(BaselineError, match="missing key 'baseline'"):
        no_baseline = [{"prompt": [{"role": "user", "content": "x"}], "category": None}]
        run_grpo(tiny_model, no_baseline, [words], tmp_path / "d")
    with pytest.raises(BaselineError, match="two functions are named 'words'"):
        run_grpo(tiny_model, prompts(), [words, words], tmp_path / "e")
    with pytest.raises(BaselineError, match="reward_funcs is empty"):
        run_grpo(tiny_model, prompts(), [], tmp_path / "f")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(BaselineError, match="not an empty directory"):
        run_grpo(tiny_model, prompts(), [words], tmp_path / "full")
    with pytest.raises(BaselineError, match="not a model directory"):
        run_grpo(tmp_path / "nowhere", prompts(), [words], tmp_path / "g")
    assert not (tmp_path / "a").exists() and not (tmp_path / "g").exists()


def test_grpo_config_validation():
    with pytest.raises(BaselineError, match="num_generations: must be >= 2"):
        GRPOBaselineConfig(num_generations=1)
    with pytest.raises(BaselineError, match="every weight must be a finite number"):
        GRPOBaselineConfig(reward_weights=[1.0, float("nan")])
    with pytest.raises(BaselineError, match="expected int"):
        GRPOBaselineConfig(steps=2.5)
    with pytest.raises(BaselineError, match="unknown key 'lr'"):
        GRPOBaselineConfig.from_dict({"lr": 1e-3})


# ====================================================================== KTO


@pytest.mark.slow
def test_kto_labels_match_the_store_reactions(world):
    rows = kto_dataset(world, signal="love", window_hours=WINDOW_HOURS, split="all")
    assert rows and any(r["label"] for r in rows) and not all(r["label"] for r in rows)
    con = Store(world).connect()
    msgs = {m[0]: m[1:] for m in con.sql("SELECT message_id, parent_id, role, text, time FROM messages").fetchall()}
    loved = {}
    for mid, t in con.sql("SELECT message_id, time FROM reactions WHERE reaction = 'love'").fetchall():
        loved.setdefault(mid, []).append(t)
    for r in rows:
        parent, role, text, t = msgs[r["message_id"]]
        assert role == "assistant" and r["completion"] == [{"role": "assistant", "content": text}]
        within = any(x - t <= timedelta(hours=WINDOW_HOURS) for x in loved.get(r["message_id"], []))
        assert r["label"] == within, r["message_id"]
        assert r["prompt"][-1] == {"role": "user", "content": msgs[parent][2]}
        assert r["prompt"][0]["role"] != "assistant" and len(r["prompt"]) <= 4
    train = kto_dataset(world, window_hours=WINDOW_HOURS)
    assert {r["message_id"] for r in train} < {r["message_id"] for r in rows}
    sub = kto_dataset(world, window_hours=WINDOW_HOURS, split="all", max_rows=20, seed=3)
    assert len(sub) == 20 and sub == kto_dataset(world, window_hours=WINDOW_HOURS, split="all", max_rows=20, seed=3)
    with pytest.raises(BaselineError, match="split must be one of"):
        kto_dataset(world, split="holdout")
    owner = dict(con.sql("SELECT message_id, user_id FROM messages").fetchall())
    users = sorted({owner[r["message_id"]] for r in rows})
    kept = kto_dataset(world, window_hours=WINDOW_HOURS, split="all", exclude_users=users[: len(users) // 2])
    assert kept and {owner[r["message_id"]] for r in kept} == set(users[len(users) // 2:])
    assert kept == [r for r in rows if owner[r["message_id"]] in set(users[len(users) // 2:])]
    with pytest.raises(BaselineError, match="not one string"):
        kto_dataset(world, exclude_users="u1")


@pytest.mark.parametrize("n_d,n_u", [(1, 99), (5, 5), (30, 10), (7, 1000)])
@pytest.mark.parametrize("ratio", [1.0, 7 / 6, 4 / 3])
def test_kto_weights_in_the_band(n_d, n_u, ratio):
    w = kto_weights([True] * n_d + [False] * n_u, weight_ratio=ratio)
    assert (w["n_desirable"], w["n_undesirable"]) == (n_d, n_u)
    achieved = w["desirable_weight"] * n_d / (w["undesirable_weight"] * n_u)
    assert KTO_BAND[0] - 1e-12 <= achieved <= KTO_BAND[1] + 1e-12
    assert achieved == pytest.approx(ratio) == pytest.approx(w["ratio"])


def test_kto_weight_errors():
    with pytest.raises(BaselineError, match="no desirable examples among 3"):
        kto_weights([False, False, False])
    with pytest.raises(BaselineError, match="no undesirable examples"):
        kto_weights([True, True])
    with pytest.raises(BaselineError, match=r"weight_ratio must be in \[1, 4/3\]"):
        kto_weights([True, False], weight_ratio=1.5)
    with pytest.raises(BaselineError, match="weight_ratio: must be in"):
        KTOBaselineConfig(weight_ratio=0.9)
    with pytest.raises(BaselineError, match="per_device_batch_size: must be >= 2"):
        KTOBaselineConfig(per_device_batch_size=1)


def kto_rows(n: int = 12) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"how can i fix {WORDS[i]}"}],
             "completion": [{"role": "assistant", "content": "i love this reply thanks so much" if i % 4 == 0
                             else "take one small step"}],
             "label": i % 4 == 0} for i in range(n)]  # fmt: skip


def test_kto_input_errors(tiny_model, tmp_path):
    no_desirable = [{**r, "label": False} for r in kto_rows()]
    with pytest.raises(BaselineError, match="no desirable examples among 12"):
        run_kto(tiny_model, no_desirable, tmp_path / "a")
    with pytest.raises(BaselineError, match="dataset is empty"):
        run_kto(tiny_model, [], tmp_path / "b")
    with pytest.raises(BaselineError, match=r"dataset\[0\].label: expected True"):
        run_kto(tiny_model, [{**kto_rows()[0], "label": 1}], tmp_path / "c")
    with pytest.raises(BaselineError, match="fewer than per_device_batch_size"):
        run_kto(tiny_model, kto_rows(5), tmp_path / "d", KTOBaselineConfig(per_device_batch_size=8))
    assert not any((tmp_path / d).exists() for d in "abcd")


@pytest.mark.slow
def test_kto_two_steps_and_saves(tiny_model, tmp_path):
    rows = kto_rows(16)
    cfg = KTOBaselineConfig(steps=2, learning_rate=1e-2, per_device_batch_size=4, weight_ratio=4 / 3, max_length=64)
    out = tmp_path / "kto"
    m = run_kto(tiny_model, rows, out, cfg)
    assert_saved_model(out, tiny_model)
    saved = json.loads((out / "metrics.json").read_text())
    w = saved["weights"]
    assert (w["n_desirable"], w["n_undesirable"]) == (4, 12)
    assert w["desirable_weight"] == pytest.approx(4 / 3 * 12 / 4) and w["ratio"] == pytest.approx(4 / 3)
    assert saved["steps"] == 2 and len(saved["step_seconds"]) == 2 and m["weights"] == w
    steps = [h for h in saved["log_history"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2] and all("kl" in h for h in steps)
    assert KTOBaselineConfig.from_dict(saved["config"]) == cfg
