"""`rluf.signals.retention`: reaction rates vs retention on hand-made logs whose answer is known.

Covers the per-user rates (own reactions on own assistant messages only), Pearson r and the Firth
logistic coefficient against independent computations, the bootstrap against a plain loop, arbitrary
reaction names, zero variance, censored users, the category table, the files written, the terminal
table, every error, and the signs on a small simulated world.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest
from rich.console import Console
from scipy.optimize import minimize
from scipy.special import expit

from rluf.data.ingest import ingest
from rluf.data.store import Store
from rluf.signals.retention import (SignalsConfig, SignalsError, analyse, bootstrap, firth_logit, render_signals,
                                    signal_retention)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N_USERS = 40


def iso(day: float, seconds: int = 0) -> str:
    return (T0 + timedelta(days=day, seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def conversation(cid: str, user: str, day: float, pairs: int, category: str, reactions: dict | None = None) -> dict:
    """`pairs` user/assistant turn pairs; reactions: {assistant pair index: [(name, reacting user or None)]}."""
    turns = []
    for p in range(pairs):
        turns.append({"role": "user", "text": f"q{p}", "time": iso(day, 10 * p)})
        turn = {"role": "assistant", "text": f"a{p}", "time": iso(day, 10 * p + 5)}
        for name, who in (reactions or {}).get(p, []):
            turn.setdefault("reactions", []).append({"name": name, "time": iso(day, 10 * p + 7), **({"user_id": who} if who else {})})
        turns.append(turn)
    return {"conversation_id": cid, "user_id": user, "category": category, "turns": turns}


def write_logs(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    return path


def known_world() -> tuple[list[dict], dict]:
    """40 users, 5 assistant messages each (3 on day 0, 2 on day 2 or on day 20 for retained users).

    lovers u00-u09 love 1-3 messages (all retained but u09), u00-u04 also `+1` one message; haters
    u10-u19 thumbs_down 1-2 messages (none retained but u10), u15-u19 also `red_flag` one; u20-u39
    react to nothing (even ones retained). Distractors: u99 loves a message of u20 (another user's
    reaction), u21 loves their own user message, and `late` (first seen on day 30, retention unknown)
    is the only one to use `confetti`.
    """
    records, truth = [], {"retained": {}, "counts": {}}
    for i in range(N_USERS):
        u = f"u{i:02d}"
        first: dict = {}
        counts = {"love": 0, "thumbs_down": 0, "+1": 0, "red_flag": 0}
        if i < 10:
            retained = i != 9
            for p in range(1 + i % 3):
                first.setdefault(p, []).append(("love", None))
            counts["love"] = 1 + i % 3
            if i < 5:
                first.setdefault(2, []).append(("+1", None))
                counts["+1"] = 1
        elif i < 20:
            retained = i == 10
            for p in range(1 + i % 2):
                first.setdefault(p, []).append(("thumbs_down", None))
            counts["thumbs_down"] = 1 + i % 2
            if i >= 15:
                first.setdefault(2, []).append(("red_flag", None))
                counts["red_flag"] = 1
        else:
            retained = i % 2 == 0
        if i == 20:
            first[0] = [("love", "u99")]
        records.append(conversation(f"{u}-a", u, 0, 3, "advice" if i % 2 == 0 else "coding", first))
        records.append(conversation(f"{u}-b", u, 20 if retained else 2, 2, "planning"))
        truth["retained"][u], truth["counts"][u] = retained, counts
    records[2 * 21]["turns"][0]["reactions"] = [{"name": "love", "time": iso(0, 3)}]
    records.append(conversation("late-a", "late", 30, 2, "advice", {0: [("confetti", None)]}))
    return records, truth


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    d = tmp_path_factory.mktemp("known")
    records, truth = known_world()
    ingest([write_logs(d / "logs" / "c.jsonl", records)], d / "store", workers=1)
    result = signal_retention(d / "store", d / "out", n_boot=400, seed=0)
    return d, result, truth


def expected_rates(truth: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    users = sorted(truth["retained"])
    x = np.array([truth["counts"][u][name] / 5 for u in users])
    y = np.array([float(truth["retained"][u]) for u in users])
    return x, y


def firth_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Slope per sd of x from a general-purpose optimiser on Firth's penalised log-likelihood."""
    z = (x - x.mean()) / x.std()
    X = np.column_stack([np.ones_like(z), z])

    def loss(beta):
        eta = X @ beta
        p = expit(eta)
        info = X.T @ (X * (p * (1 - p))[:, None])
        return -(y @ eta - np.logaddexp(0, eta).sum()) - 0.5 * np.linalg.slogdet(info)[1]

    return float(minimize(loss, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12,
                                                                          "maxiter": 20_000}).x[1])  # fmt: skip


# ---------------------------------------------------------------- the known world


def test_counts_users_and_base_retention(known):
    _, res, truth = known
    assert res["users"] == {"in_store": 41, "retention_known": 40, "window_not_elapsed": 1,
                            "below_min_assistant_messages": 0, "analysed": 40}  # fmt: skip
    assert res["assistant_messages"] == 5 * N_USERS
    assert res["base_retention"]["k"] == sum(truth["retained"].values()) == 20
    assert res["base_retention"]["n"] == 40 and res["base_retention"]["ci95"][0] < 0.5 < res["base_retention"]["ci95"][1]
    own = sum(sum(c.values()) for c in truth["counts"].values())
    assert res["reactions"] == {"standing": own + 3, "analysed": own, "on_non_assistant_messages": 1,
                                "by_other_users": 1, "of_users_not_analysed": 1}  # fmt: skip
    assert set(res["signals"]) == {"love", "thumbs_down", "+1", "red_flag", "confetti"}


def test_signs_intervals_and_exact_values(known):
    _, res, truth = known
    s = res["signals"]
    for name, users_with in (("love", 10), ("thumbs_down", 10), ("+1", 5), ("red_flag", 5)):
        e = s[name]
        x, y = expected_rates(truth, name)
        assert e["n_users"] == 40 and e["n_users_with_reaction"] == users_with
        assert e["reactions"] == int(round(x.sum() * 5))
        assert e["mean_rate"]["value"] == pytest.approx(x.mean())
        assert e["correlation"]["value"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
        assert e["logit_coef_per_sd"]["value"] == pytest.approx(firth_reference(x, y), abs=1e-5)
        for key in ("correlation", "logit_coef_per_sd", "mean_rate"):
            lo, hi = e[key]["ci95"]
            assert lo <= e[key]["value"] <= hi, (name, key)
        assert e["odds_ratio_per_sd"]["value"] == pytest.approx(np.exp(e["logit_coef_per_sd"]["value"]))
    assert s["love"]["correlation"]["ci95"][0] > 0 and s["love"]["logit_coef_per_sd"]["ci95"][0] > 0
    assert s["thumbs_down"]["correlation"]["ci95"][1] < 0 and s["thumbs_down"]["logit_coef_per_sd"]["ci95"][1] < 0
    assert s["+1"]["correlation"]["value"] > 0 > s["red_flag"]["correlation"]["value"]
    assert s["love"]["retention_with_reaction"]["k"] == 9 and s["love"]["retention_with_reaction"]["n"] == 10
    values = [e["correlation"]["value"] for e in s.values() if e["correlation"]["value"] is not None]
    assert values == sorted(values, reverse=True)


def test_a_reaction_no_analysed_user_made_has_no_statistics(known):
    _, res, _ = known
    e = res["signals"]["confetti"]
    assert list(res["signals"])[-1] == "confetti"
    assert e["n_users_with_reaction"] == 0 and e["correlation"]["value"] is None and e["correlation"]["ci95"] is None
    assert e["logit_coef_per_sd"]["value"] is None and "no analysed user" in e["note"]


def test_category_rates(known):
    _, res, truth = known
    cats = res["by_category"]
    assert set(cats) == {"advice", "coding", "planning"}
    assert cats["planning"]["assistant_messages"] == 80 and cats["planning"]["rates"]["love"]["k"] == 0
    even = [u for u in truth["counts"] if int(u[1:]) % 2 == 0]
    love = cats["advice"]["rates"]["love"]
    assert love["n"] == 3 * len(even) and love["k"] == sum(truth["counts"][u]["love"] for u in even)
    assert love["ci95"][0] <= love["rate"] <= love["ci95"][1]
    d, _, _ = known
    top = analyse(d / "store", SignalsConfig(n_boot=0, max_categories=2))["by_category"]
    assert list(top) == ["planning", "advice", "(other categories)"]
    assert top["(other categories)"]["rates"]["love"] == cats["coding"]["rates"]["love"]


def test_files_and_terminal_table(known):
    d, res, _ = known
    assert json.loads((d / "out" / "signals.json").read_text()) == json.loads(json.dumps(res))
    png = (d / "out" / "signals_vs_retention.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    console = Console(record=True, width=200)
    render_signals(res, console)
    text = console.export_text()
    for name in ("love", "thumbs_down", "+1", "red_flag", "confetti", "40 users"):
        assert name in text


def test_min_assistant_messages_and_window_option(tmp_path, known):
    d, _, _ = known
    res = signal_retention(d / "store", tmp_path / "o", n_boot=0, min_assistant_messages=5)
    assert res["users"]["analysed"] == 40 and res["signals"]["love"]["correlation"]["ci95"] is None
    with pytest.raises(SignalsError, match="lower it"):
        signal_retention(d / "store", tmp_path / "o", n_boot=0, min_assistant_messages=6)
    # Days 21-29: nobody is active then, so retention no longer varies.
    with pytest.raises(SignalsError, match="both outcomes"):
        signal_retention(d / "store", tmp_path / "o", retention_days=(21, 30), n_boot=0)


# ---------------------------------------------------------------- statistics against plain loops


def test_bootstrap_equals_a_plain_loop_and_does_not_depend_on_chunking():
    rng = np.random.default_rng(3)
    n = 60
    rates = np.column_stack([rng.binomial(6, 0.3, n) / 6, (rng.random(n) < 0.15) * 0.5])
    y = (rng.random(n) < expit(2 * rates[:, 0] - 0.5)).astype(float)
    a = bootstrap(rates, y, 50, seed=7, chunk_cells=n * 7)
    b = bootstrap(rates, y, 50, seed=7, chunk_cells=10**9)
    np.testing.assert_array_equal(np.isnan(a["r_boot"]), np.isnan(b["r_boot"]))
    np.testing.assert_allclose(a["r_boot"], b["r_boot"], atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(a["coef_boot"], b["coef_boot"], atol=1e-9, equal_nan=True)
    draws = np.random.default_rng(7).integers(0, n, size=(50, n))
    for k, idx in enumerate(draws):
        for j in range(2):
            xb, yb = rates[idx, j], y[idx]
            if xb.std() == 0:
                assert np.isnan(a["r_boot"][k, j]) and np.isnan(a["coef_boot"][k, j])
                continue
            assert a["r_boot"][k, j] == pytest.approx(np.corrcoef(xb, yb)[0, 1], abs=1e-10)
            assert a["mean_boot"][k, j] == pytest.approx(xb.mean())
            z = (xb - xb.mean()) / xb.std()
            _, c, ok = firth_logit(z, yb, np.ones((1, n)))
            assert ok[0] and a["coef_boot"][k, j] == pytest.approx(c[0], abs=1e-6)


def test_firth_is_finite_under_separation_and_matches_an_optimiser():
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    z = (x - x.mean()) / x.std()
    _, c, ok = firth_logit(z, y, np.ones((1, len(z))))
    assert ok[0] and 0 < c[0] < 20
    assert c[0] == pytest.approx(firth_reference(x, y), abs=1e-5)
    rng = np.random.default_rng(0)
    x = rng.random(200)
    y = (rng.random(200) < expit(3 * x - 1)).astype(float)
    z = (x - x.mean()) / x.std()
    _, c, ok = firth_logit(z, y, np.ones((1, 200)))
    assert ok[0] and c[0] == pytest.approx(firth_reference(x, y), abs=1e-5)


# ---------------------------------------------------------------- errors


def test_missing_file_and_empty_store(tmp_path):
    with pytest.raises(SignalsError, match="no store here"):
        signal_retention(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "f").write_text("x")
    with pytest.raises(SignalsError, match="is a file"):
        signal_retention(tmp_path / "f", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    Store(tmp_path / "empty").write_manifest({"version": 1, "batches": []})
    with pytest.raises(SignalsError, match="holds no messages"):
        signal_retention(tmp_path / "empty", tmp_path / "o")


def test_short_logs_say_so_and_the_suggested_window_works(tmp_path):
    records = []
    for i in range(12):
        u = f"s{i}"
        records.append(conversation(f"{u}-a", u, 0, 2, "chat", {0: [("love", None)]} if i < 5 else None))
        records.append(conversation(f"{u}-b", u, 2 if i % 3 else 0.5, 1, "chat"))
    records.append(conversation("end", "s99", 3.2, 1, "chat"))
    ingest([write_logs(tmp_path / "logs" / "c.jsonl", records)], tmp_path / "s", workers=1)
    with pytest.raises(SignalsError, match=r"no user's retention is known.*3\.2 days.*retention_days=\(1, 3\)"):
        signal_retention(tmp_path / "s", tmp_path / "o")
    res = signal_retention(tmp_path / "s", tmp_path / "o", retention_days=(1, 3), n_boot=50)
    assert res["users"]["analysed"] == 12 and res["signals"]["love"]["n_users_with_reaction"] == 5


def test_no_reactions_and_bad_arguments(tmp_path):
    records = [conversation(f"c{i}", f"u{i}", 0, 1, "chat") for i in range(4)]
    records += [conversation(f"d{i}", f"u{i}", 20, 1, "chat") for i in range(2)]
    records.append(conversation("end", "zz", 30, 1, "chat"))  # so that the day-28 window has elapsed
    ingest([write_logs(tmp_path / "logs" / "c.jsonl", records)], tmp_path / "s", workers=1)
    with pytest.raises(SignalsError, match="no reactions stand"):
        signal_retention(tmp_path / "s", tmp_path / "o")
    for kwargs, message in (({"n_boot": -1}, "n_boot"), ({"min_assistant_messages": 0}, "min_assistant_messages"),
                            ({"retention_days": (5, 5)}, "retention_days")):  # fmt: skip
        with pytest.raises(SignalsError, match=message):
            signal_retention(tmp_path / "s", tmp_path / "o", **kwargs)


def test_reactions_only_by_other_users_are_not_enough(tmp_path):
    records = [conversation(f"c{i}", f"u{i}", 0, 1, "chat", {0: [("love", "moderator")]}) for i in range(4)]
    records += [conversation(f"d{i}", f"u{i}", 20, 1, "chat") for i in range(2)]
    records.append(conversation("end", "zz", 30, 1, "chat"))  # so that the day-28 window has elapsed
    ingest([write_logs(tmp_path / "logs" / "c.jsonl", records)], tmp_path / "s", workers=1)
    with pytest.raises(SignalsError, match="none of the 4 analysed users reacted"):
        signal_retention(tmp_path / "s", tmp_path / "o")


# ---------------------------------------------------------------- a simulated world


@pytest.mark.slow
def test_simulated_world_thumbs_down_negative_love_positive(tmp_path):
    from rluf.sim.simulate import simulate

    simulate(tmp_path / "sim", users=300, seed=1, workers=2)
    ingest([tmp_path / "sim" / "logs"], tmp_path / "store", workers=1)
    res = signal_retention(tmp_path / "store", tmp_path / "out", n_boot=200)
    s = res["signals"]
    assert res["users"]["analysed"] > 250
    assert s["thumbs_down"]["correlation"]["value"] < 0 < s["love"]["correlation"]["value"]
    assert s["thumbs_down"]["logit_coef_per_sd"]["value"] < 0 < s["love"]["logit_coef_per_sd"]["value"]
