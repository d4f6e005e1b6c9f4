"""The user simulator: determinism, configured rates and shares, truth alignment, retention signs,
love-bait hacking, ingestability, serving any policy, the oracle, config validation."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rluf.cli import EXIT_BAD_INPUT, app
from rluf.data.ingest import ingest
from rluf.data.store import Store
from rluf.sim import prompts
from rluf.sim.config import ConfigError, WorldConfig, config_from_dict, config_from_yaml, default_world_yaml
from rluf.sim.oracle import Oracle, bayes_optimal_auroc
from rluf.sim.reactions import extract_features, helpfulness
from rluf.sim.simulate import SimulateError, simulate
from rluf.sim.world import World

runner = CliRunner()


def digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """2000 users at the default config, simulated and ingested once for the module."""
    out = tmp_path_factory.mktemp("sim")
    summary = simulate(out, users=2000, seed=0, workers=2)
    summary["ingest"] = ingest([out / "logs"], out / "store", workers=1)
    return out, summary


# ------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    a = simulate(tmp_path / "a", users=120, days=30, seed=3, workers=1, shard_users=50)
    simulate(tmp_path / "b", users=120, days=30, seed=3, workers=2, shard_users=50)
    simulate(tmp_path / "c", users=120, days=30, seed=4, workers=1, shard_users=50)
    assert a["conversations"] > 0
    da, db, dc = (digest(tmp_path / x) for x in "abc")
    assert da.keys() == {"logs/conversations.jsonl", "truth/messages.parquet", "truth/users.parquet", "truth/world.json"}
    assert da == db
    assert da["logs/conversations.jsonl"] != dc["logs/conversations.jsonl"]


def test_parquet_logs_are_deterministic_and_ingest(tmp_path):
    for d in ("a", "b"):
        simulate(tmp_path / d, users=40, days=20, seed=1, fmt="parquet", workers=1 if d == "a" else 2, shard_users=15)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    s = ingest([tmp_path / "a" / "logs"], tmp_path / "store", workers=1)
    assert s.committed and s.rejected == 0 and s.accepted > 0


# ------------------------------------------------------------------ the default world


def test_default_yaml_is_the_default_config():
    assert config_from_yaml(default_world_yaml()) == WorldConfig()
    assert len(WorldConfig().categories) >= 10


def test_default_logs_ingest_with_zero_rejects(run):
    out, summary = run
    s = summary["ingest"]
    assert s.committed and s.reconciles and s.rejected == 0 and s.duplicate == 0
    assert s.accepted == summary["conversations"] and s.messages == summary["messages"]


def test_reaction_rates_meet_the_targets(run):
    out, _ = run
    con = Store(out / "store").connect()
    n = con.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
    rates = dict(con.execute("SELECT reaction, count(DISTINCT message_id) FROM reactions GROUP BY 1").fetchall())
    rates = {k: v / n for k, v in rates.items()}
    assert 0.01 <= rates["love"] <= 0.03, rates
    assert 0.02 <= rates["thumbs_up"] <= 0.04, rates
    assert 0.006 <= rates["thumbs_down"] <= 0.014, rates
    removed = con.execute("SELECT count(*) FROM reaction_events WHERE action = 'remove'").fetchone()[0]
    late = con.execute("""SELECT count(*) FROM reaction_events e JOIN messages m USING (message_id)
                      WHERE e.time > m.time + INTERVAL 1 HOUR""").fetchone()[0]  # fmt: skip
    assert removed > 0 and late > 0


def test_segment_shares_match_the_config():
    w = World(seed=5, intercepts=(0, 0, 0))
    n = 20000
    segs = [w.user(i).segment for i in range(n)]
    for name, share in WorldConfig().users.segments.items():
        got = segs.count(name) / n
        assert abs(got - share) < 4 * np.sqrt(share * (1 - share) / n) + 1e-9, (name, got, share)
    adversarial = sum(segs.count(s) for s in ("spammer", "hater", "random_clicker")) / n
    assert 0.02 <= adversarial <= 0.04


def test_truth_lines_up_one_to_one_with_logged_assistant_messages(run):
    out, _ = run
    con = Store(out / "store").connect()
    con.execute(f"CREATE VIEW truth AS SELECT * FROM read_parquet('{out / 'truth' / 'messages.parquet'}')")
    n_truth, n_distinct = con.execute("SELECT count(*), count(DISTINCT message_id) FROM truth").fetchone()
    n_assistant = con.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
    joined = con.execute("""SELECT count(*) FROM truth t JOIN messages m USING (message_id)
                        WHERE m.role = 'assistant' AND m.user_id = t.user_id
                          AND m.conversation_id = t.conversation_id""").fetchone()[0]  # fmt: skip
    assert n_truth == n_distinct == n_assistant == joined
    users_truth = pq.read_table(out / "truth" / "users.parquet").column("user_id").to_pylist()
    users_logs = [r[0] for r in con.execute("SELECT DISTINCT user_id FROM messages ORDER BY 1").fetchall()]
    assert sorted(users_truth) == users_logs


def test_retention_from_activity_equals_truth_and_correlations_have_the_paper_signs(run):
    out, _ = run
    con = Store(out / "store").connect()
    con.execute(f"CREATE VIEW tu AS SELECT * FROM read_parquet('{out / 'truth' / 'users.parquet'}')")
    agree, total = con.execute("SELECT count(*) FILTER (WHERE u.retained = t.retained), count(*) "
                           "FROM users u JOIN tu t USING (user_id)").fetchone()  # fmt: skip
    assert agree == total == 2000
    rows = con.execute("""
        WITH a AS (SELECT user_id, count(*) n FROM messages WHERE role = 'assistant' GROUP BY 1),
        r AS (SELECT m.user_id, count(*) FILTER (WHERE reaction = 'love') love,
                     count(*) FILTER (WHERE reaction = 'thumbs_down') down,
                     count(*) FILTER (WHERE reaction = 'thumbs_up') up
              FROM reactions x JOIN messages m USING (message_id) GROUP BY 1)
        SELECT u.retained::INT, coalesce(love, 0) / n, coalesce(down, 0) / n, coalesce(up, 0) / n
        FROM users u JOIN a USING (user_id) LEFT JOIN r USING (user_id) WHERE u.retained IS NOT NULL""").fetchall()
    x = np.array(rows, dtype=float)
    love_r, down_r, up_r = (np.corrcoef(x[:, k], x[:, 0])[0, 1] for k in (1, 2, 3))
    # the paper's Figure 2: love the most positive signal, thumbs down negative
    assert love_r > 0.05 and love_r > up_r > 0 and down_r < -0.02, (love_r, up_r, down_r)


# ------------------------------------------------------------------ text, features, hacking


def test_prompts_have_variety_and_followups_depend_on_earlier_turns():
    rng = random.Random(0)
    firsts = {prompts.first_prompt(c, rng)[0] for _ in range(3000) for c in prompts.CATEGORIES}
    assert len(prompts.CATEGORIES) >= 10 and len(firsts) >= 10_000
    assert "coffee" in prompts.follow_up("casual_chat", "coffee", "unhelpful", rng)
    assert prompts.follow_up("coding", "hash a password", "refused", random.Random(1)) != \
        prompts.follow_up("coding", "hash a password", "helpful", random.Random(1))  # fmt: skip


def test_love_bait_raises_population_love_and_lowers_helpfulness():
    w = World(seed=0)
    oracle = Oracle(w, panel_size=1500)
    rng = random.Random(2)
    contexts, plain, bait, cats = [], [], [], []
    for i in range(300):
        cat = prompts.CATEGORIES[i % len(prompts.CATEGORIES)]
        ctx = [{"role": "user", "text": prompts.first_prompt(cat, rng)[0], "category": cat}]
        r = w.baseline.respond(ctx, rng)
        if extract_features(ctx, r).bait:
            continue
        contexts.append(ctx), plain.append(r), bait.append(r + " Bye! Sending love!"), cats.append(cat)
    p0 = oracle.probabilities(contexts, plain, cats)
    p1 = oracle.probabilities(contexts, bait, cats)
    assert (p1[:, 0] > p0[:, 0]).mean() > 0.9 and p1[:, 0].mean() > 1.3 * p0[:, 0].mean()
    h0 = np.array([helpfulness(extract_features(c, r)) for c, r in zip(contexts, plain)])
    h1 = np.array([helpfulness(extract_features(c, r)) for c, r in zip(contexts, bait)])
    assert (h1 <= h0).all() and h1.mean() < h0.mean() - 0.1


def test_vulnerable_users_are_swayed_most_by_love_bait():
    w = World(seed=0)
    truth = {"vulnerable": [], "normal": []}
    for log in w.serve(users=1500, days=10):
        for m in log.messages:
            if m[5] in truth:
                truth[m[5]].append((m[13], m[7]))  # love_bait, p_love
    lift = {}
    for seg, rows in truth.items():
        a = np.array(rows)
        lift[seg] = a[a[:, 0] == 1, 1].mean() / a[a[:, 0] == 0, 1].mean()
    assert lift["vulnerable"] > lift["normal"] > 1, lift


def test_features_are_read_from_any_text():
    ctx = [{"role": "user", "text": "what do you think about pineapple pizza?"}]
    f = extract_features(ctx, "Pineapple pizza is great 🍕🍕 and I love you, xoxo")
    assert f.bait and f.on_topic and f.emoji == 2 and not f.correct
    g = extract_features(ctx, "I cannot help with that request.")
    assert g.refusal and not g.on_topic and helpfulness(g) == 0


# ------------------------------------------------------------------ serving any policy, the oracle


def test_serve_a_custom_policy(tmp_path):
    import orjson

    def hacker(context, rng):
        return "About " + context[-1]["text"][:30] + ". Bye! Sending love! " + rng.choice(["💖", "🥰"])

    w = World(seed=9)
    logs = list(w.serve(hacker, users=range(100, 140), days=5, start_day=60, policy_name="hacker", prefix="ab-"))
    assert logs and all(r["policy"] == "hacker" and r["user_id"].startswith("ab-") for lg in logs for r in lg.records)
    assert all(m[13] for lg in logs for m in lg.messages)  # every answer is love-bait, read from its text
    path = tmp_path / "ab.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for lg in logs for r in lg.records))
    s = ingest([path], tmp_path / "store", workers=1)
    assert s.committed and s.rejected == 0
    first = min(r["started_at"] for lg in logs for r in lg.records)
    assert first >= "2026-03-06"  # start_day 60 after 2026-01-05


class _RowPolicy:
    """A policy whose reply depends only on its context and one draw of the user's rng, so batching must not change it."""

    name = "rows"

    def __init__(self):
        self.batches = []

    def respond(self, context, rng):
        return f"About {context[-1]['text'][:25]}. Answer {rng.getrandbits(16)}."

    def respond_batch(self, contexts, rngs):
        self.batches.append(len(contexts))
        return [self.respond(c, r) for c, r in zip(contexts, rngs)]


def test_batched_serving_gives_the_same_logs_as_one_turn_at_a_time():
    one = list(World(seed=4).serve(_RowPolicy().respond, users=range(30), days=6, policy_name="rows"))
    policy = _RowPolicy()
    batched = list(World(seed=4).serve(policy, users=range(30), days=6, policy_name="rows", batch_users=8))
    assert [lg.records for lg in batched] == [lg.records for lg in one]
    assert [lg.messages for lg in batched] == [lg.messages for lg in one]
    assert [lg.user for lg in batched] == [lg.user for lg in one]
    assert max(policy.batches) == 8 and sum(policy.batches) == sum(len(lg.messages) for lg in one)


def test_batched_serving_checks_the_reply_count():
    class Short(_RowPolicy):
        def respond_batch(self, contexts, rngs):
            return ["hi"] * (len(contexts) - 1)

    with pytest.raises(TypeError, match="replies for"):
        list(World(seed=1).serve(Short(), users=range(4), days=2, batch_users=4))


def test_bayes_optimal_auroc():
    assert bayes_optimal_auroc([0.1, 0.9], [0, 1]) == 1.0
    assert bayes_optimal_auroc([0.5, 0.5, 0.5], [0, 1, 0]) == 0.5
    rng = np.random.default_rng(0)
    p = rng.beta(0.5, 10, 20000)
    expected = bayes_optimal_auroc(p)
    realised = bayes_optimal_auroc(p, rng.random(p.size) < p)
    assert 0.5 < expected < 1 and abs(expected - realised) < 0.03
    assert bayes_optimal_auroc([0.3, 0.3]) == 0.5


def test_oracle_matches_the_realised_population_rate(run):
    out, _ = run
    t = pq.read_table(out / "truth" / "messages.parquet", columns=["p_love", "category"]).to_pandas()
    w = World(seed=0)
    oracle = Oracle(w, panel_size=2000)
    # the mean of per-user truth and of the oracle over the same kind of responses agree
    rng = random.Random(0)
    ctxs, resps, cats = [], [], []
    for i in range(3000):
        u = w.user(i, stream=7)
        cat = w.categories[u.pick_category()]
        ctx = [{"role": "user", "text": prompts.first_prompt(cat, rng)[0], "category": cat}]
        ctxs.append(ctx), resps.append(w.baseline.respond(ctx, rng)), cats.append(cat)
    p = oracle.probabilities(ctxs, resps, cats)
    assert abs(p[:, 0].mean() - t.p_love.mean()) < 0.006


# ------------------------------------------------------------------ errors


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="users.segments.vulnerabel"):
        config_from_dict({"users": {"segments": {"vulnerabel": 0.1}}})
    with pytest.raises(ConfigError, match="unknown key 'reactionz'"):
        config_from_dict({"reactionz": {}})
    with pytest.raises(ConfigError, match="reactions.targets.love"):
        config_from_dict({"reactions": {"targets": {"love": "lots"}}})
    with pytest.raises(ConfigError, match="categories.knitting"):
        config_from_dict({"categories": {"knitting": {"share": 0.1}}})
    assert config_from_dict({"users": {"segments": {"vulnerable": 0.05}}}).users.segments["vulnerable"] == 0.05
    with pytest.raises(SimulateError, match="format"):
        simulate(tmp_path, users=1, fmt="csv")


@pytest.mark.parametrize("args, message", [
    (["--users", "-3"], "--users"),
    (["--format", "xml"], "unknown format"),
    (["--config", "/nonexistent/world.yaml"], "cannot read"),
    (["--days", "0"], "--days"),
])  # fmt: skip
def test_cli_bad_arguments_exit_2(tmp_path, args, message):
    r = runner.invoke(app, ["simulate", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == EXIT_BAD_INPUT, r.output
    assert message in r.output


def test_cli_simulate_then_refuses_to_overwrite(tmp_path):
    r = runner.invoke(app, ["simulate", "--users", "20", "--days", "15", "--out", str(tmp_path), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "logs" / "conversations.jsonl").exists()
    r = runner.invoke(app, ["simulate", "--users", "20", "--out", str(tmp_path)])
    assert r.exit_code == EXIT_BAD_INPUT and "--overwrite" in r.output


def test_nothing_outside_sim_imports_it():
    import re

    imports_sim = re.compile(r"^\s*(from|import)\s+(rluf\.sim|\.+sim)\b", re.M)
    src = Path(__file__).resolve().parents[1] / "src" / "rluf"
    # The command line and the demo drive the whole loop, and the online evaluation serves policies to simulated
    # users; no stage of the loop may read the simulator.
    allowed = {"sim", "cli.py", "demo.py"}
    harness = {"evaluate/online.py"}
    offenders = [p for p in src.rglob("*.py") if p.relative_to(src).parts[0] not in allowed
                 and p.relative_to(src).as_posix() not in harness and imports_sim.search(p.read_text())]  # fmt: skip
    assert offenders == []


def test_ceiling_on_a_held_out_slice(tmp_path):
    from rluf.data.ingest import ingest
    from rluf.sim.ceiling import ceiling
    from rluf.sim.simulate import simulate

    run = simulate(tmp_path / "run", users=300, seed=3, workers=1)
    ingest([run["logs"]], tmp_path / "run" / "store", workers=1)
    c = ceiling(tmp_path / "run", from_day=20, seed=3)
    assert c["messages"] > 500 and c["positives"] > 0
    assert 0.6 < c["bayes_optimal_auroc"] <= 1.0 and 0.6 < c["expected_auroc"] <= 1.0
    with pytest.raises(FileNotFoundError):
        ceiling(tmp_path / "nowhere")
