"""`make demo` runs the whole loop: a tiny run of the same code path, every stage, every output file."""

import json

import pytest
from rich.console import Console

from rluf.data.store import Store
from rluf.demo import DemoConfig, DemoError, _ground_truth_check, headline, run_demo
from rluf.policy.baselines import kto_dataset

TINY = {"users": 150, "annotations": 500, "sft": {"max_rows": 400, "epochs": 1, "quality_prompts": 20, "max_val_rows": 50},
        "optimize_steps": 3, "snapshot_steps": [1, 2], "grpo_steps": 2, "grpo": {"prompts_per_step": 2, "num_generations": 2},
        "kto_steps": 2, "offline_prompts": 20, "final_samples": 4, "online_users": 40, "online_days": 2, "max_new_tokens": 12, "public_samples": False}  # fmt: skip


@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, console=Console(file=open("/dev/null", "w")), config=DemoConfig.from_dict(TINY))
    first, again = summary["ingest"], summary["reingest"]
    assert first["committed"] and first["rejected"] == 3 and first["reconciles"]
    assert first["accepted"] == summary["simulate"]["conversations"]
    assert again["accepted"] == 0 and again["duplicate"] == first["accepted"] and again["rejected"] == 3
    saved = json.loads((out / "summary.json").read_text())
    assert saved["stats"]["counts"]["messages"] == first["messages"] == summary["simulate"]["messages"]
    assert set(saved["signals"]) >= {"love", "thumbs_up", "thumbs_down"}
    models = saved["reward"]["models"]
    assert set(models) == {"ngram", "length"}
    for kind, m in models.items():
        assert 0.5 < m["auroc"] <= 1 and m["auroc_ci95"][0] <= m["auroc"] <= m["auroc_ci95"][1], (kind, m)
        assert (out / "reward" / kind / "model.safetensors").is_file()
    # candidates: the SFT control, three CGPO runs with two snapshots each, GRPO and KTO
    names = {"sft", "grpo", "kto"} | {f"{r}{s}" for r in ("aggressive", "no_judges", "moderate") for s in ("", "@1", "@2")}
    assert set(saved["offline"]) == names
    for name in names:
        slug = name.replace("@", "_step")
        assert (out / "evaluate" / "offline" / f"{slug}.json").is_file()
    trained = {json.loads(line)["user_id"] for line in (out / "policy" / "train_prompts.jsonl").read_text().splitlines()}
    evaluated = {json.loads(line)["user_id"] for line in (out / "evaluate" / "offline" / "sft.replies.jsonl").read_text().splitlines()}
    assert trained and evaluated and not trained & evaluated  # the offline set holds users no candidate trained on
    held_out = json.loads((out / "policy" / "held_out_users.json").read_text())
    owner = dict(Store(out / "store").connect().sql("SELECT message_id, user_id FROM messages").fetchall())
    kto_users = {owner[r["message_id"]] for r in kto_dataset(out / "store", exclude_users=held_out)}
    assert evaluated <= set(held_out) and kto_users and not kto_users & evaluated  # KTO did not train on them either
    served = saved["online"]["served"]
    assert set(served["arms"]) == names and sum(a["assigned_users"] for a in served["arms"].values()) == 40
    assert saved["online"]["ingest"]["rejected"] == 0 and saved["online"]["ingest"]["reconciles"]
    abtest = json.loads((out / "online" / "abtest.json").read_text())
    assert abtest["control"] == "sft" and set(abtest["arms"]) == names
    # SFT and the final candidates answer each offline prompt final_samples times, the snapshots offline_samples
    for name in names:
        rows = (out / "evaluate" / "offline" / f"{name.replace('@', '_step')}.replies.jsonl").read_text().splitlines()
        assert len(rows) == TINY["offline_prompts"] * (3 if "@" in name else TINY["final_samples"]), name
        assert set(json.loads(rows[0])["scores"]) == {"love", "helpful", "safe"}
    assert {"no_judges", "aggressive", "moderate", "grpo", "kto"} <= set(saved["hacking"])
    no_judges = json.loads((out / "hacking" / "no_judges.json").read_text())
    assert no_judges["divergence"]["reward"] == "love" and no_judges["divergence"]["quality"] == "helpful"
    assert no_judges["closing"]["love_bait_anywhere"]["prompt_clustered"]["clusters"] == TINY["offline_prompts"]
    assert (out / "hacking" / "no_judges.judges.yaml").is_file()
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "data:image/png;base64," in html
    h = saved["headline"]
    assert h["n_candidates"] == len(names)
    # the tiny run has too few love reactions online for a correlation: check the truth on points of our own
    points = [{"candidate": n, "offline": saved["offline"][n]["love"]["mean"], "online": 0.01 * k}
              for k, n in enumerate(sorted(names))]  # fmt: skip
    truth = _ground_truth_check(out, {"points": points}, TINY.get("seed", 0))  # the oracle on the offline replies
    assert set(truth["offline_true_love"]) == set(truth["expected_love_rate"]) == names
    assert all(0 < v < 1 for v in truth["offline_true_love"].values())
    for key in ("offline_vs_offline_truth_r", "offline_truth_vs_expected_r", "offline_truth_vs_observed_r"):
        assert -1 <= truth[key] <= 1, key
    assert h["offline_truth_vs_observed_online_r"] == (saved["correlate"].get("ground_truth") or {}).get(
        "offline_truth_vs_observed_r")  # fmt: skip
    assert 0 <= h["sft/unsafe_rate"] <= 1 and 0 <= h["sft/true_unsafe_rate"] <= 1
    for arm in ("aggressive", "no_judges"):
        lo, hi = h[f"{arm}/unsafe_rate_change_ci95"]
        assert lo <= h[f"{arm}/unsafe_rate_change"] <= hi and 0 <= h[f"{arm}/true_unsafe_rate"] <= 1
        assert set(h[f"{arm}/guardrails"]) == {"thumbs_down", "helpful", "safe", "unsafe", "hacking"}
    for arm in ("aggressive", "moderate", "no_judges", "grpo", "kto"):
        assert {f"{arm}/love_bait_offline_ratio", f"{arm}/love_bait_offline_ratio_ci95", f"{arm}/love_bait_offline_ratio_p",
                f"{arm}/hacking_suspects", f"{arm}/hacking_suspects_love_bait"} <= set(h), arm  # fmt: skip
        assert set(h[f"{arm}/hacking_suspects_love_bait"]) <= set(saved["hacking"][arm]["suspects"])
    assert set(saved["seconds"]) >= {"simulate", "sft", "optimize", "offline", "online", "report", "total"}
    # python -m bench lovebait: more replies per offline prompt, on the run's own prompt set
    from bench import lovebait

    doc = lovebait.main(["--run", str(out), "--samples", "2", "--candidates", "aggressive,no_judges",
                         "--workdir", str(tmp_path / "lovebait")])  # fmt: skip
    assert set(doc["arms"]) == {"aggressive", "no_judges"} and doc["n_prompts"] == TINY["offline_prompts"]
    sft_replies = [json.loads(x) for x in (tmp_path / "lovebait" / "sft.replies.jsonl").read_text().splitlines()]
    assert len(sft_replies) == 2 * TINY["offline_prompts"]
    assert {r["user_id"] for r in sft_replies} == evaluated  # the demo's offline users, none trained on
    assert [g["goal"].split(" ")[0] for g in doc["goals"]] == ["aggressive", "no_judges", "no_judges"]


def test_demo_config_errors():
    with pytest.raises(DemoError, match="unknown key 'user'"):
        DemoConfig.from_dict({"user": 10})
    with pytest.raises(DemoError, match="snapshot_steps"):
        DemoConfig(optimize_steps=10, snapshot_steps=[10])
    with pytest.raises(DemoError, match="online_days"):
        DemoConfig(online_days=0)
    with pytest.raises(DemoError, match="reward_kinds"):
        DemoConfig(reward_kinds=["bogus"])
    with pytest.raises(DemoError, match="DemoConfig.kto: .*unknown key 'lr'"):
        DemoConfig.from_dict({"kto": {"lr": 1e-5}})
    assert DemoConfig.from_dict({"kto_steps": 0, "kto": {"lr": 1e-5}}).kto_steps == 0  # skipped: not checked


def test_headline_love_bait_ratio_carries_the_ab_interval():
    flagged = {"arms": {"sft": {"value": 0.02}, "no_judges": {"value": 0.025}},
               "vs_control": {"no_judges": {"lift": 0.25, "ci95": [0.03, 0.5], "p_value": 0.02}}}
    abtest = {"arms": ["sft", "no_judges"], "metrics": {"flagged": flagged}, "guardrails": {}}
    summary = {"correlate": {"pearson_r": 0.9, "ci95": [0.8, 0.95], "n_candidates": 10}}
    h = headline(summary, abtest)
    assert h["no_judges/love_bait_ratio"] == pytest.approx(1.25)
    assert h["no_judges/love_bait_ratio_ci95"] == pytest.approx([1.03, 1.5]) and h["no_judges/love_bait_ratio_p"] == 0.02
    del flagged["vs_control"]["no_judges"]["ci95"]  # too few flags for an interval: no key rather than a made-up one
    assert "no_judges/love_bait_ratio_ci95" not in headline(summary, abtest)
