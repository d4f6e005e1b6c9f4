"""`make demo` runs what exists: a small run of the same code path."""

import json

from rich.console import Console

from rluf.demo import run_demo


def test_demo_end_to_end(tmp_path):
    summary = run_demo(tmp_path / "demo", console=Console(file=open("/dev/null", "w")), users=150,
                       real_data=tmp_path / "absent", reward_kinds=("ngram", "length"))  # fmt: skip
    first, again = summary["ingest"], summary["reingest"]
    assert first["committed"] and first["rejected"] == 3 and first["reconciles"]
    assert first["accepted"] == summary["simulate"]["conversations"]
    assert again["accepted"] == 0 and again["duplicate"] == first["accepted"] and again["rejected"] == 3
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["stats"]["counts"]["messages"] == first["messages"] == summary["simulate"]["messages"]
    assert set(saved["signals"]) >= {"love", "thumbs_up", "thumbs_down"}
    models = saved["reward"]["models"]
    assert set(models) == {"ngram", "length"}
    for kind, m in models.items():
        assert 0.5 < m["auroc"] <= 1 and m["auroc_ci95"][0] <= m["auroc"] <= m["auroc_ci95"][1], (kind, m)
        assert (tmp_path / "demo" / "reward" / kind / "model.safetensors").is_file()
