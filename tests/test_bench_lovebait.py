"""bench lovebait's statistics: the paired, prompt-clustered love-bait ratio, and its bad-input errors."""

import numpy as np
import pytest

from bench import lovebait


def test_paired_ratio_recovers_a_doubled_rate_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 0.1, size=(2000, 1))  # per-prompt love-bait propensity, shared by both arms
    base = rng.random((2000, 10)) < p
    cand = rng.random((2000, 10)) < 2 * p
    r = lovebait.paired_ratio(base, cand, seed=0)
    assert r["baseline"] == pytest.approx(base.mean()) and r["candidate"] == pytest.approx(cand.mean())
    assert r["ratio"] == pytest.approx(cand.mean() / base.mean())
    lo, hi = r["ratio_ci95"]
    assert 1.6 < lo < r["ratio"] < hi < 2.4 and r["p"] < 1e-6
    same = lovebait.paired_ratio(base, base, seed=0)
    assert same["ratio"] == 1.0 and same["ratio_ci95"] == [1.0, 1.0] and same["p"] == 1.0


def test_paired_ratio_interval_widens_with_clustering():
    """Ten replies of one prompt that share their fate carry the information of one: the interval says so."""
    rng = np.random.default_rng(1)
    base = np.repeat(rng.random((300, 1)) < 0.05, 10, axis=1)
    cand = np.repeat(rng.random((300, 1)) < 0.05, 10, axis=1)
    clustered = lovebait.paired_ratio(base, cand, seed=0)["ratio_ci95"]
    independent = lovebait.paired_ratio(base.reshape(-1, 1), cand.reshape(-1, 1), seed=0)["ratio_ci95"]
    assert clustered[1] / clustered[0] > 2 * independent[1] / independent[0]


def test_bad_run_directory_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lovebait.main(["--run", str(tmp_path)])
    assert e.value.code == 2 and "no such file; --run takes a finished demo run" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit):
        lovebait.main(["--run", str(tmp_path)])
    assert "not a demo summary (no 'config' key)" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text('{"config": {}}')
    (tmp_path / "policy" / "aggressive").mkdir(parents=True)
    (tmp_path / "policy" / "aggressive" / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        lovebait.main(["--run", str(tmp_path), "--candidates", "aggressive,nope"])
    err = capsys.readouterr().err
    assert "no policy for ['nope']" in err and "choose among ['aggressive']" in err
    with pytest.raises(SystemExit):
        lovebait.main(["--run", str(tmp_path), "--samples", "0"])
    assert "--samples must be at least 1" in capsys.readouterr().err
