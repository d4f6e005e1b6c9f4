"""rluf.evaluate.correlate: Pearson r across candidates with its intervals, pairing with abtest arms, the CLI."""

import json
import math

import numpy as np
import pytest

from rluf.evaluate.correlate import CorrelateError, correlate, main, plot_correlation, points_from


def points(n=12, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.02, 0.05, n)
    y = 0.5 * x + 0.004 + noise * rng.standard_normal(n)
    return [{"candidate": f"c{i}", "offline": float(a), "offline_ci95": [float(a) - 0.002, float(a) + 0.002],
             "online": float(b), "online_ci95": [float(b) - 0.001, float(b) + 0.001]} for i, (a, b) in enumerate(zip(x, y))]


def test_r_matches_numpy_and_the_intervals_hold_it():
    pts = points(noise=0.002)
    r = correlate(pts, n_boot=500)
    x, y = [p["offline"] for p in pts], [p["online"] for p in pts]
    assert r["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    for key in ("ci95", "fisher_ci95", "measurement_ci95"):
        lo, hi = r[key]
        assert -1 <= lo <= hi <= 1, key
    assert r["ci95"][0] <= r["pearson_r"] <= r["ci95"][1]
    z, half = math.atanh(r["pearson_r"]), 1.959963984540054 / math.sqrt(len(pts) - 3)
    assert r["fisher_ci95"] == pytest.approx([math.tanh(z - half), math.tanh(z + half)])
    assert r["n_candidates"] == 12 and r["enough_candidates"]
    assert r["fit"]["slope"] == pytest.approx(np.polyfit(x, y, 1)[0])


def test_a_perfect_line_gives_r_one_and_measurement_error_widens_it():
    exact = correlate(points(noise=0.0), n_boot=300)
    assert exact["pearson_r"] == pytest.approx(1.0)
    assert exact["spearman_rho"] == pytest.approx(1.0)
    loose = [dict(p, online_ci95=[p["online"] - 0.02, p["online"] + 0.02]) for p in points()]
    assert correlate(loose, n_boot=300)["measurement_ci95"][0] < 0.9  # wide online errors could hide the relation


def test_fewer_than_ten_candidates_is_reported():
    r = correlate(points(n=5, noise=0.001), n_boot=300)
    assert r["n_candidates"] == 5 and not r["enough_candidates"]


def test_bad_points_are_refused_with_the_reason():
    with pytest.raises(CorrelateError, match="at least 3"):
        correlate(points(n=2))
    with pytest.raises(CorrelateError, match="appears twice"):
        correlate(points(n=3) + [points(n=3)[0]])
    bad = points(n=4)
    bad[1]["online"] = float("nan")
    with pytest.raises(CorrelateError, match=r"points\[1\] \(c1\): online"):
        correlate(bad)
    flat = [dict(p, online=0.01) for p in points(n=4)]
    with pytest.raises(CorrelateError, match="do not vary"):
        correlate(flat)
    with pytest.raises(CorrelateError, match="n_boot"):
        correlate(points(), n_boot=10)


def offline_result(name, p, lo, hi):
    return {"candidate": name, "rewards": {"love": {"p": {"mean": p, "ci95": [lo, hi]}, "calibrated": {"mean": 0.5, "ci95": None}}}}


def abtest_result(arms):
    return {"metrics": {"love": {"arms": {a: {"value": v, "se": 0.001, "users": 50, "messages": 500} for a, v in arms.items()}}}}


def test_points_pair_offline_results_with_the_arms_of_the_same_name():
    offline = [offline_result(f"c{i}", 0.02 + 0.01 * i, 0.01, 0.05) for i in range(4)]
    ab = abtest_result({f"c{i}": 0.01 + 0.004 * i for i in range(4)} | {"extra": 0.5})
    pts = points_from(offline, ab)
    assert [p["candidate"] for p in pts] == ["c0", "c1", "c2", "c3"]  # the extra arm is left out
    assert pts[2]["online"] == pytest.approx(0.018)
    assert pts[2]["online_ci95"] == pytest.approx([0.018 - 1.959963984540054 * 0.001, 0.018 + 1.959963984540054 * 0.001])
    with pytest.raises(CorrelateError, match=r"without an online arm: \['c3'\]"):
        points_from(offline, abtest_result({f"c{i}": 0.01 for i in range(3)}))
    with pytest.raises(CorrelateError, match="no metric 'love'"):
        points_from(offline, {"metrics": {"thumbs_up": {}}})
    with pytest.raises(CorrelateError, match="no rewards/love/p"):
        points_from([{"candidate": "x", "rewards": {"helpful": {}}}], ab)


def test_cli_writes_json_and_png(tmp_path, capsys):
    files = []
    for i in range(10):
        f = tmp_path / f"c{i}.json"
        f.write_text(json.dumps(offline_result(f"c{i}", 0.02 + 0.003 * i, 0.0, 0.1)))
        files.append(str(f))
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps(abtest_result({f"c{i}": 0.01 + 0.002 * i + 0.0005 * (i % 3) for i in range(10)})))
    assert main(["--offline", *files, "--abtest", str(ab), "--out", str(tmp_path / "out"), "--n-boot", "200"]) == 0
    saved = json.loads((tmp_path / "out" / "correlation.json").read_text())
    assert saved["n_candidates"] == 10 and saved["pearson_r"] > 0.9
    assert (tmp_path / "out" / "correlation.png").read_bytes()[:4] == b"\x89PNG"
    assert "Pearson r" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{nope")
    assert main(["--offline", str(tmp_path / "bad.json"), "--abtest", str(ab), "--out", str(tmp_path / "o2")]) == 2
    assert "bad.json: not JSON" in capsys.readouterr().err


def test_plot_draws_with_missing_intervals(tmp_path):
    pts = [dict(p, offline_ci95=None, online_ci95=None) for p in points(noise=0.001)]
    path = plot_correlation(correlate(pts, n_boot=200), tmp_path / "c.png")
    assert path.stat().st_size > 1000
