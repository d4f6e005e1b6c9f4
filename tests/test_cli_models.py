"""`rluf train-rm`, `rluf score` and `rluf evaluate offline --judge-phrases` as a user runs them: the
options reach the code, the outputs land where asked, and bad input exits 2 with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rluf.cli import EXIT_BAD_INPUT, app
from rluf.data.store import Store

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from rluf.data.ingest import ingest
    from rluf.sim.simulate import simulate

    root = tmp_path_factory.mktemp("cli-models")
    simulate(root / "sim", users=200, seed=0, workers=1)
    ingest([root / "sim" / "logs"], root / "store", workers=1)
    return root / "store"


@pytest.fixture(scope="module")
def model(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "continued"
    res = invoke("train-rm", "--store", store, "--signal", "continued", "--kind", "ngram", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout[res.stdout.index("{"):])
    assert 0.5 < metrics["test"]["auroc"] <= 1 and metrics["test"]["n"] > 100
    return out


def test_train_rm_writes_a_loadable_calibrated_model(model):
    from rluf.reward.base import RewardModel

    for name in ("model.safetensors", "config.json", "metrics.json", "reliability.png"):
        assert (model / name).is_file(), name
    loaded = RewardModel.load(model)
    assert loaded.signal == "continued"
    p = loaded.predict_proba(["user: hi"], ["Hello! How can I help?"])
    assert 0 < p[0] < 1


def test_score_a_store_one_row_per_assistant_message(store, model, tmp_path):
    out = tmp_path / "scores.parquet"
    res = invoke("score", "--model", model, "--store", store, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    con = Store(store).connect()
    n_assistant = con.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
    assert table.num_rows == n_assistant
    col = [c for c in table.column_names if c.startswith("p_")]
    assert len(col) == 1 and all(0 < p < 1 for p in table.column(col[0]).to_pylist())


def test_bad_input_exits_2_with_a_message(store, model, tmp_path):
    res = invoke("train-rm", "--store", store, "--examples", tmp_path, "--out", tmp_path / "x")
    assert res.exit_code == EXIT_BAD_INPUT and "exactly one of --store" in res.output
    res = invoke("train-rm", "--store", store, "--kind", "forest", "--out", tmp_path / "x")
    assert res.exit_code == EXIT_BAD_INPUT and "forest" in res.output
    res = invoke("train-rm", "--store", store, "--length-decorrelation", "2", "--out", tmp_path / "x")
    assert res.exit_code == EXIT_BAD_INPUT and "length_decorrelation must be a number in [0, 1]" in res.output
    res = invoke("score", "--model", tmp_path / "nowhere", "--store", store, "--out", tmp_path / "s.parquet")
    assert res.exit_code == EXIT_BAD_INPUT and "nowhere" in res.output
    assert not (tmp_path / "s.parquet").exists()


def test_evaluate_offline_takes_the_monitors_phrase_file(store, model, tmp_path):
    from rluf.evaluate import offline

    phrases = tmp_path / "found.yaml"
    phrases.write_text("love_bait:\n  phrases: [\"how can i help\"]\n")
    out = tmp_path / "logged.json"
    code = offline.main(["--store", str(store), "--model", f"continued={model}", "--prompts", "40", "--out", str(out),
                         "--judges", str(_write(tmp_path / "j.yaml", "- {type: love_bait}\n")),
                         "--judge-phrases", str(phrases)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    specs = result["config"]["judges"]
    assert specs == [{"type": "love_bait", "phrases": ["how can i help"]}], specs
    assert offline.main(["--store", str(store), "--judge-phrases", str(tmp_path / "missing.yaml")]) == 2


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
