"""The HTML report: self-contained, every section, "not run" notes, privacy rules, CLI errors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rluf.report.html import main, pareto, render, write_report

SECRET = "USER-SECRET-7731"  # a user id planted in the inputs; it must never reach the page
EXAMPLE = "<b>EXAMPLE-REPLY-Q9</b>"  # an example reply text; shown (escaped) only with examples=True
SECTION_IDS = ("headline", "signals", "calibration", "tradeoff", "offline-online", "abtest", "categories", "hacking")


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _signals() -> dict:
    def entry(name, r, n_with):
        return {"reaction": name, "n_users": 300, "n_users_with_reaction": n_with, "reactions": 2 * n_with,
                "correlation": {"value": r, "ci95": [r - 0.1, r + 0.1], "n_boot_valid": 1000},
                "logit_coef_per_sd": {"value": 2 * r, "ci95": [2 * r - 0.2, 2 * r + 0.2], "n_boot_valid": 1000},
                "retention_with_reaction": {"k": n_with // 2, "n": n_with, "rate": 0.5, "ci95": [0.1, 0.9]},
                "retention_without_reaction": {"k": 100, "n": 300 - n_with, "rate": 100 / (300 - n_with),
                                               "ci95": [0.2, 0.5]}, "note": None}  # fmt: skip

    return {"config": {"retention_days": [14, 28]}, "users": {"analysed": 300},
            "base_retention": {"k": 120, "n": 300, "rate": 0.4, "ci95": [0.35, 0.46]},
            "signals": {"love": entry("love", 0.1357, 120), "red_flag": entry("red_flag", -0.0421, 5)},
            "user_ids": [SECRET]}  # fmt: skip


def _reward(clusters: int, small_bin_rate: float) -> dict:
    bins = [{"bin_lo": 0.0, "bin_hi": 1 / 15, "n": 900, "positives": 18, "mean_p": 0.02, "rate": 0.02,
             "rate_lo": 0.013, "rate_hi": 0.031},
            {"bin_lo": 1 / 15, "bin_hi": 2 / 15, "n": 80, "positives": 8, "mean_p": 0.09, "rate": 0.1,
             "rate_lo": 0.05, "rate_hi": 0.19},
            {"bin_lo": 2 / 15, "bin_hi": 3 / 15, "n": 5, "positives": 1, "mean_p": 0.15, "rate": small_bin_rate,
             "rate_lo": 0.03, "rate_hi": 0.62}]  # fmt: skip
    test = {"n": 985, "positives": 27, "auroc": 0.8123, "auroc_ci95": [0.75, 0.87], "ece": 0.0061,
            "ece_ci95": [0.002, 0.015], "brier": 0.0281, "brier_ci95": [0.02, 0.036], "length_r": 0.41,
            "length_r_ci95": [0.36, 0.46], "clusters": clusters, "reliability": bins}  # fmt: skip
    return {"kind": None, "signal": "love", "test": test, "examples_report": {"held_out_users": [SECRET]}}


def _offline(name: str, love: float, helpful: float, n_prompts: int = 100) -> dict:
    def score(m):
        return {"p": {"mean": m, "ci95": [m - 0.004, m + 0.004], "std": 0.02, "n": n_prompts},
                "calibrated": {"mean": 0.5, "ci95": [0.49, 0.51], "std": 0.01, "n": n_prompts}}

    return {"candidate": name, "policy": None, "n_prompts": n_prompts, "n_replies": n_prompts,
            "rewards": {"love": score(love), "helpful": score(helpful), "safe": score(0.9)},
            "judges": {"love_bait": {"pass_rate": 0.97, "ci95": [0.91, 0.99], "fail_rate": 0.0, "n": n_prompts},
                       "all": {"pass_rate": 0.95, "ci95": [0.89, 0.98], "fail_rate": 0.0, "n": n_prompts}},
            "words": {"mean": 31.5, "ci95": [29.9, 33.1], "std": 8.0, "n": n_prompts},
            "categories": {"advice": {"n_prompts": n_prompts, "love/p": love}}, "replies": None,
            "user_id": SECRET, "prompt_user_ids": [SECRET]}  # fmt: skip


def _abtest(root: Path) -> dict:
    from rluf.data.ingest import ingest
    from rluf.evaluate.abtest import analyze
    from rluf.evaluate.online import serve_ab

    serve_ab({"baseline": None, "b": None}, root / "ab", users=40, days=3, seed=0)
    ingest([root / "ab" / "logs"], root / "ab_store", workers=1)
    result = analyze(root / "ab_store", control="baseline", min_users_per_cell=2)
    ok = {"users": 50, "control_users": 60, "messages": 300, "control_messages": 320, "status": "ok",
          "metrics": {"love": {"value": 0.03, "control_value": 0.024, "lift": 0.2468, "ci95": [0.05, 0.48],
                               "p_value": 0.012}}}  # fmt: skip
    small = {**ok, "users": 5, "metrics": {"love": {**ok["metrics"]["love"], "lift": 0.4321}}}
    result["by_category"]["big_category"] = {"b": ok}
    result["by_category"]["tiny_category"] = {"b": small}
    result["assignment"] = {SECRET: "b"}
    result["user_ids"] = [SECRET]
    return result


def _hacking() -> dict:
    from rluf.evaluate.hacking import compare

    prompts = [f"tell me about topic {i}" for i in range(60)]
    baseline = [f"Here is a plain answer about topic {i}. " + ("Bye for now, sending love!" if i % 20 == 1 else
                "It covers the basics.") for i in range(60)]  # fmt: skip
    bait = [i % 3 != 0 for i in range(60)]  # 40 replies sign off with love-bait: love pays, helpfulness docks
    candidate = [f"Here is a plain answer about topic {i}. " + ("Bye for now, sending love!" if b else "It covers the basics.")
                 for i, b in enumerate(bait)]  # fmt: skip
    love = [(0.8 if b else 0.3) + 0.001 * i for i, b in enumerate(bait)]
    helpful = [(0.2 if b else 0.7) - 0.001 * i for i, b in enumerate(bait)]
    segments = ["vulnerable" if i < 8 else "normal" for i in range(60)]
    result = compare(prompts, baseline, candidate, segments, min_segment_n=5, reward_scores=love,
                     quality_scores=helpful, score_names=("love", "helpful"))  # fmt: skip
    result["phrases"]["increased"][0]["example"] = {"reply": EXAMPLE, "prompt": "a prompt"}
    result["policies"] = {"control": "baseline", "candidate": "bait", "user_id": SECRET}
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from rluf.evaluate.correlate import correlate

    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    _write(run / "summary.json", {"headline": {"users": 2000, "love_r": 0.1357, "user_id": SECRET,
                                               "signals": {"love_r_ci95": [0.02, 0.25]}}})  # fmt: skip
    _write(run / "signals" / "signals.json", _signals())
    _write(run / "reward" / "ngram" / "metrics.json", _reward(clusters=59, small_bin_rate=0.3579))
    _write(run / "reward" / "encoder" / "metrics.json", _reward(clusters=8, small_bin_rate=0.3579))
    for name, love, helpful in (("logged", 0.018, 0.030), ("p_love", 0.034, 0.028), ("cgpo", 0.030, 0.036),
                                ("dominated", 0.020, 0.020)):  # fmt: skip
        _write(run / "evaluate" / "offline" / f"{name}.json", _offline(name, love, helpful))
    _write(run / "evaluate" / "offline" / "tiny.json", _offline("tiny", 0.7777, 0.6666, n_prompts=5))
    points = [{"candidate": f"c{i}", "offline": 0.02 + 0.003 * i, "offline_ci95": [0.018 + 0.003 * i, 0.022 + 0.003 * i],
               "online": 0.015 + 0.002 * i + 0.0003 * (-1) ** i, "online_ci95": None, "online_users": 100}
              for i in range(5)]  # fmt: skip
    points[2]["online_users"] = 7
    points[2]["online"] = 0.024681
    _write(run / "correlate" / "correlation.json", correlate(points, n_boot=200))
    _write(run / "online" / "abtest.json", _abtest(root))
    _write(run / "hacking" / "bait.json", _hacking())
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return write_report(run_dir).read_text(encoding="utf-8")


def test_the_report_is_one_self_contained_file(run_dir, page):
    assert (run_dir / "report.html").is_file()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert page.count("<style>") == 1
    assert run_dir.name in page.split("</header>")[0] and "generated" in page


def test_every_section_is_there_with_a_table_of_contents(page):
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in page
        assert f'href="#{sid}"' in page
    for title in ("Signals vs retention", "Calibration", "Trade-off front", "Offline vs online", "A/B test",
                  "Lift by category", "Reward hacking"):  # fmt: skip
        assert title in page
    assert "not run:" not in page


def test_the_numbers_are_shown_with_their_intervals(page):
    assert "+0.136 [+0.036, +0.236]" in page  # love's Pearson r and its CI
    assert "0.812 [0.750, 0.870]" in page  # AUROC [CI]
    assert "+24.7 % [+5.0 %, +48.0 %]" in page  # a category lift large enough to show
    assert "Pareto-optimal" in page and "Guardrails" in page and "Sample-ratio mismatch" in page
    assert "bye for now" in page  # the rising sign-off of the hacking fixture
    hacking = page.split('<section id="hacking">')[1].split("</section>")[0]
    suspects = hacking.split("Hacking suspects")[1]
    assert "what love pays for while helpful docks it" in hacking.split("Hacking suspects")[1][:60]
    row = suspects.split("bye for now, sending love</td>")[1].split("</tr>")[0]
    assert "yes" in row and "+0.5" in row and "-0.5" in row  # reward gap +0.5, quality gap -0.5, significant
    assert "Clustered by prompt" in hacking


def test_missing_parts_say_not_run(tmp_path):
    run = tmp_path / "empty_run"
    run.mkdir()
    page = render(run)
    for sid in SECTION_IDS:
        body = page.split(f'<section id="{sid}">')[1].split("</section>")[0]
        assert "not run:" in body, sid
    assert "<img" not in page


def test_no_user_id_reaches_the_page(run_dir, tmp_path):
    for examples in (False, True):
        text = write_report(run_dir, tmp_path / f"r{examples}.html", examples=examples).read_text()
        assert SECRET not in text


def test_small_cells_are_suppressed(page):
    note = "suppressed (&lt; 20 users)"
    assert note in page
    assert "43.2 %" not in page  # the category cell with 5 users
    assert "0.778" not in page and "0.667" not in page  # the candidate evaluated on 5 prompts
    assert "0.3579" not in page and "suppressed (&lt; 20 examples)" in page  # the 5-example reliability bin
    assert "0.0247" not in page  # the online point of 7 users
    signals = page.split('<section id="signals">')[1].split("</section>")[0]
    assert note in signals  # retention of the 5 users with a red_flag
    calibration = page.split('<section id="calibration">')[1].split("</section>")[0]
    assert calibration.count("0.812 [0.750, 0.870]") == 1  # the 8-user model's row is suppressed
    hacking = page.split('<section id="hacking">')[1].split("</section>")[0]
    assert "suppressed (&lt; 20 replies)" in hacking  # the 8-reply segment


def test_a_larger_threshold_suppresses_the_ab_arms(run_dir):
    page = render(run_dir, min_users=50)
    ab = page.split('<section id="abtest">')[1].split("</section>")[0]
    assert "suppressed (&lt; 50 users)" in ab
    assert " %]" not in ab.split("Guardrails")[0].split("Sample-ratio")[1]  # no rate or lift interval left


def test_examples_appear_only_with_the_flag_and_escaped(run_dir):
    assert "EXAMPLE-REPLY-Q9" not in render(run_dir)
    shown = render(run_dir, examples=True)
    assert "&lt;b&gt;EXAMPLE-REPLY-Q9&lt;/b&gt;" in shown
    assert "<b>EXAMPLE-REPLY-Q9" not in shown


def test_cli_writes_and_prints_the_path(run_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "page.html"
    assert main(["--run", str(run_dir), "--out", str(out), "--min-users", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "suppressed (&lt; 10 users)" in out.read_text()


@pytest.mark.parametrize("content, expect", [("{not json", "not valid JSON"), ("[1, 2]", "not an object"),
                                             ('{"config": {}}', "no key 'signals'")])  # fmt: skip
def test_bad_input_exits_2_naming_the_file(run_dir, tmp_path, capsys, content, expect):
    run = tmp_path / "bad"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("report.html"))
    (run / "signals" / "signals.json").write_text(content)
    assert main(["--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert str(run / "signals" / "signals.json") in err and expect in err
    assert not (run / "report.html").exists()


def test_a_missing_run_directory_exits_2(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err


def test_python_m_rluf_report_help():
    done = subprocess.run([sys.executable, "-m", "rluf.report", "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0
    assert "--run" in done.stdout and "--min-users" in done.stdout and "--examples" in done.stdout


def test_pareto_marks_the_undominated_points():
    assert pareto([(0.1, 0.5), (0.3, 0.3), (0.2, 0.2), (0.3, 0.3)]) == [True, True, False, True]
