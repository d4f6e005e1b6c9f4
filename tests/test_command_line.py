"""The `rluf` command line, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from rluf.cli import app
from rluf.data import examples

runner = CliRunner()
RLUF = [str(Path(sys.executable).with_name("rluf"))]


def test_help_lists_every_command():
    out = subprocess.run(RLUF + ["--help"], capture_output=True, text=True, check=True).stdout
    for command in ("ingest", "stats", "demo"):
        assert command in out


def test_ingest_then_stats(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 300, seed=1)
    examples.write_flat(tmp_path / "flat", 100, seed=2)
    r = runner.invoke(app, ["ingest", str(tmp_path / "a.jsonl"), str(tmp_path / "flat"), "--store", str(tmp_path / "s"),
                            "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "rejected 0" in r.output and "reconciles: True" in r.output
    r = runner.invoke(app, ["stats", "--store", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["counts"]["conversations"] == 400 and s["counts"]["messages"] == 2400
    assert set(s["reaction_rates"]) == {"love", "thumbs_up", "thumbs_down"}
    love = s["reaction_rates"]["love"]
    assert love["n"] == 1200 and love["ci95"][0] <= love["rate"] <= love["ci95"][1]
    assert set(s["by_category"]) == set(examples.CATEGORIES) and set(s["by_policy"]) == set(examples.POLICIES)
    assert s["retention"]["users_with_override"] > 0 and 0 <= s["retention"]["retained"]["rate"] <= 1
    r = runner.invoke(app, ["stats", "--store", str(tmp_path / "s")])
    assert r.exit_code == 0 and "reaction rate per assistant message" in r.output


def test_too_many_rejects_exit_3_and_bad_input_exit_2(tmp_path):
    examples.write_nested_jsonl(tmp_path / "a.jsonl", 10, seed=1)
    with open(tmp_path / "a.jsonl", "ab") as f:
        f.write(b'{"conversation_id": 1\n')
    r = subprocess.run(RLUF + ["ingest", str(tmp_path / "a.jsonl"), "--store", str(tmp_path / "s"), "--workers", "1"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 3 and "not committed" in r.stderr and "rejected 1" in r.stdout
    r = runner.invoke(app, ["ingest", str(tmp_path / "missing.jsonl"), "--store", str(tmp_path / "s")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = runner.invoke(app, ["ingest", str(tmp_path / "a.jsonl"), "--store", str(tmp_path / "s"), "--format", "xml"])
    assert r.exit_code == 2 and "unknown format" in r.output
    r = runner.invoke(app, ["stats", "--store", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "rluf ingest" in r.output
