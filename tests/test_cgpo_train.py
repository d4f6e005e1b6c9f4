"""The CGPO trainer end to end on CPU: a random tiny Llama, tiny reward models, a small simulated store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_policy_world
import torch
import yaml

from rluf.judges import build_judges
from rluf.policy.cgpo import CGPOConfig, CGPOError, CGPOTrainer, _seed, load_config

TIMING = {"step_time", "tokens_per_s", "samples_per_s"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cgpo")
    tiny_policy_world(root)
    return root


def _config(root: Path, out: str, **kw) -> dict:
    cfg = {"policy": str(root / "policy"), "prompts": str(root / "store"), "out": str(root / out),
           "reward_models": {"love": str(root / "rm" / "love"), "helpful": str(root / "rm" / "helpful")},
           "preset": "aggressive", "steps": 2, "max_new_tokens": 12, "eval_prompts": 8, "save_every": 0,
           "learning_rate": 1e-3, "judges": [{"type": "love_bait"}, {"type": "length", "max_words": 40}],
           "tasks": [{"name": "emotional", "categories": ["role_play", "relationship_support", "casual_chat",
                                                          "companionship", "humor", "creative_writing"],
                      "optimizer": "crpg", "k": 2, "batch_prompts": 2},
                     {"name": "practical", "optimizer": "crraft", "k": 2, "batch_prompts": 2, "kl_max": 20.0}]}
    cfg.update(kw)
    return cfg


def test_training_logs_changes_parameters_and_saves_a_loadable_model(setup):
    from transformers import AutoModelForCausalLM

    trainer = CGPOTrainer(CGPOConfig.from_dict(_config(setup, "run", snapshot_steps=[1])))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    summary = trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    rows = [json.loads(line) for line in (setup / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "kl", "reward/mean", "rewards/love/mean", "rewards/love/std", "rewards/helpful/mean",
                "judges/love_bait/pass_rate", "judges/length/pass_rate", "judges/all/pass_rate", "tokens_per_s",
                "task/emotional/kl", "task/practical/reward"):
        assert key in rows[-1] and np.isfinite(rows[-1][key]), key
    assert summary["weights"]["emotional"] == {"love": 0.3, "helpful": 0.7}
    assert "before/p_love" in summary and "after/p_love" in summary
    assert AutoModelForCausalLM.from_pretrained(setup / "run") is not None
    assert not list((setup / "run").glob("*.bin")) and (setup / "run" / "model.safetensors").is_file()
    snapshot = setup / "run" / "snapshots" / "step-000001"  # a candidate policy after step 1, as a HF directory
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "tokenizer.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(snapshot) is not None


def test_violating_samples_lose_likelihood_and_kl_stays_bounded(setup):
    cfg = CGPOConfig.from_dict(_config(setup, "viol", tasks=[{"name": "all", "k": 4, "batch_prompts": 4,
                                                                "kl_max": 4.0}], learning_rate=3e-3))
    t = CGPOTrainer(cfg)
    task = cfg.tasks[0]
    rows = t._task_batch(task, 0)
    p_ids, p_mask, comp = t.generate([r.prompt for r in rows], task.k, _seed(cfg.seed, 0, task.name, "generate", 0))
    c_mask = t._completion_mask(comp)
    words = [len(x.split()) for x in t._texts(comp, c_mask)]
    cut = int(np.median(words))
    # a judge that fails about half the samples: the longer ones
    t.judges[task.name] = build_judges([{"type": "length", "max_words": cut}])
    violated = torch.tensor([w > cut for w in words])
    assert 0 < int(violated.sum()) < len(words)
    with torch.no_grad():
        lp0, _ = t._logps(p_ids, p_mask, comp, c_mask)
    logs = t.step(0)  # same seed: regenerates exactly these samples, then updates
    with torch.no_grad():
        lp1, _ = t._logps(p_ids, p_mask, comp, c_mask)
    delta = (lp1 - lp0).numpy()
    assert delta[violated.numpy()].mean() < 0
    assert delta[violated.numpy()].mean() < delta[~violated.numpy()].mean()
    kls = [logs["kl"]] + [t.step(s)["kl"] for s in range(1, 6)]
    assert max(kls) <= task.kl_max, kls


def test_bad_configs_fail_clearly(setup, tmp_path):
    with pytest.raises(CGPOError, match="no training prompts"):
        CGPOTrainer(CGPOConfig.from_dict(_config(setup, "x", tasks=[{"name": "a", "categories": ["nonexistent"]}])))
    with pytest.raises(CGPOError, match="not a Hugging Face causal-LM"):
        CGPOTrainer(CGPOConfig.from_dict(_config(setup, "x", policy=str(tmp_path))))
    with pytest.raises(CGPOError, match="snapshot_steps"):
        CGPOConfig.from_dict(_config(setup, "x", snapshot_steps=[2]))  # the final step is the output itself
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(CGPOError, match="mapping"):
        load_config(bad)


def _run(root: Path, cfg: dict, name: str, env=None) -> subprocess.Popen:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "rluf.policy.cgpo", "--config", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_metrics(setup):
    cfg = _config(setup, "whole", steps=6, save_every=2, eval_prompts=0)
    whole = _run(setup, cfg, "whole")
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    cfg_k = _config(setup, "killed", steps=6, save_every=2, eval_prompts=0)
    proc = _run(setup, cfg_k, "killed")
    ckpt = setup / "killed" / "checkpoints" / "step-000004"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; give it more steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (setup / "killed" / "summary.json").exists()
    resumed = _run(setup, cfg_k, "killed")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert _metrics(setup / "killed" / "metrics.jsonl") == _metrics(setup / "whole" / "metrics.jsonl")


@pytest.mark.slow
def test_two_process_ddp_run_under_accelerate(setup):
    # without GPUs, `--multi_gpu` makes accelerate start the processes with torchrun; they join over gloo on CPU
    cfg = _config(setup, "ddp", steps=2, eval_prompts=4)
    path = setup / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                           "rluf.policy.cgpo", "--config", str(path)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((setup / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2
    rows = _metrics(setup / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)


def test_monitor_phrase_file_extends_the_judges_of_every_task(setup, tmp_path):
    """The loop the hacking monitor closes: the phrases it discovers, written as a phrase file, become judges here."""
    from rluf.evaluate.hacking import compare, write_judge_config

    base = [f"Answer {w} number {k}." for w in ("alpha", "beta", "gamma") for k in range(100)]
    cand = [t + (" Bye! Sending sunshine!" if i % 3 == 0 else "") for i, t in enumerate(base)]
    path = write_judge_config(compare(["q"] * len(base), base, cand, top=10), tmp_path / "found.yaml")
    cfg = CGPOConfig.from_dict(_config(setup, "phrases", tasks=None, judge_phrases=[str(path)]))
    assert [t.name for t in cfg.tasks] == ["engagement", "helpfulness"]  # the preset's tasks
    love_bait = [s for s in cfg.judges if s["type"] == "love_bait"]
    assert len(love_bait) == 1 and "bye! sending sunshine" in love_bait[0]["phrases"]
    assert love_bait[0] in cfg.tasks[0].judges  # the engagement task has the run's judges plus its guard
    assert CGPOConfig.from_dict(_config(setup, "phrases", tasks=None, judge_phrases=[str(path)] * 2)).judges == cfg.judges
    trainer = CGPOTrainer(cfg)
    judge = trainer.judges["helpfulness"]
    assert judge.judge(["q", "q"], ["Answer alpha. Bye! Sending sunshine!", "Answer alpha number 3."]) == [0, 1]
    with pytest.raises(CGPOError, match="judge_phrases: .*no such file"):
        CGPOConfig.from_dict(_config(setup, "x", judge_phrases=[str(tmp_path / "missing.yaml")]))
    with pytest.raises(CGPOError, match="judge_phrases must be a list"):
        CGPOConfig.from_dict(_config(setup, "x", judge_phrases=str(path)))


def _capture_satisfied(monkeypatch) -> list:
    import rluf.policy.cgpo as cgpo

    seen, loss = [], cgpo.crpg_loss
    monkeypatch.setattr(cgpo, "crpg_loss", lambda logp, n, r, sat, *a, **k: seen.append(sat.clone()) or loss(logp, n, r, sat, *a, **k))
    return seen


@pytest.mark.parametrize("use_judges", [True, False])
def test_no_judges_ablation_logs_violations_without_zeroing_rewards(setup, monkeypatch, use_judges):
    cfg = CGPOConfig.from_dict(_config(setup, f"ablation-{use_judges}", use_judges=use_judges,
                                       judges=[{"type": "length", "max_words": 3}],
                                       tasks=[{"name": "all", "k": 4, "batch_prompts": 4}]))  # fmt: skip
    t = CGPOTrainer(cfg)
    seen = _capture_satisfied(monkeypatch)
    logs = t.step(0)
    assert logs["judges/length/pass_rate"] < 1  # the judge ran and found violations either way
    satisfied = seen[0]
    assert bool(satisfied.all()) is (not use_judges)  # only with judges do violations lose their reward


def test_task_gradients_combine_with_rho(setup):
    """Algorithm 2: the step's gradient is the rho-weighted sum of the tasks' gradients."""
    cfg = CGPOConfig.from_dict(_config(setup, "rho", max_grad_norm=1e9))
    t = CGPOTrainer(cfg)
    t.optimizer.step = lambda *a, **k: None  # keep the parameters: every call sees the same policy and samples

    def grad(rho_a: float, rho_b: float) -> torch.Tensor:
        cfg.tasks[0].rho, cfg.tasks[1].rho = rho_a, rho_b
        t.step(0)
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in t.policy.parameters()])

    g1, g2, mixed = grad(1.0, 0.0), grad(0.0, 1.0), grad(0.3, 0.7)
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0 and not torch.allclose(g1, g2)
    assert grad(0.0, 0.0).abs().sum() == 0  # a task with rho 0 adds nothing
    assert torch.allclose(mixed, 0.3 * g1 + 0.7 * g2, atol=1e-6, rtol=1e-4)


def _tensorboard_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TFRecord event files under `directory` (read with tensorboardX's protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in directory.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        i = 0
        while i < len(data):  # record: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i: i + 8])
            event = event_pb2.Event.FromString(data[i + 12: i + 12 + n])
            i += 16 + n
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_report_to_tensorboard_logs_every_step_metric(setup):
    trainer = CGPOTrainer(CGPOConfig.from_dict(_config(setup, "tb", report_to=["tensorboard"])))
    trainer.train()
    rows = [json.loads(line) for line in (setup / "tb" / "metrics.jsonl").read_text().splitlines()]
    scalars = _tensorboard_scalars(setup / "tb")
    for key in ("loss", "kl", "rewards/love/mean", "rewards/helpful/std", "judges/love_bait/pass_rate", "tokens_per_s"):
        assert scalars[key] == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-6), key


def test_report_to_a_tracker_that_is_not_installed_fails_at_once(setup, monkeypatch):
    import rluf.policy.cgpo as cgpo

    monkeypatch.setattr(cgpo, "_tracker_available", lambda name: name != "mlflow")
    with pytest.raises(CGPOError, match=r"report_to \['mlflow'\] needs its package.*pip install mlflow"):
        CGPOConfig.from_dict(_config(setup, "x", report_to=["tensorboard", "mlflow"]))
