"""Corrupt valid logs at random: counts reconcile and every bad line is reported where it is."""

import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rluf.data import examples
from rluf.data.contract import Limits
from rluf.data.ingest import ingest
from rluf.data.store import Store


def _drop_key(rec, rng):
    rec.pop(rng.choice(["conversation_id", "user_id", "turns"]))


def _drop_turn_key(rec, rng):
    rec["turns"][rng.randrange(len(rec["turns"]))].pop(rng.choice(["role", "text", "time"]))


def _wrong_type(rec, rng):
    key = rng.choice(["conversation_id", "user_id", "turns"])
    rec[key] = rng.choice([1.5, True, {"a": 1}]) if key != "turns" else "turns"


def _bad_role(rec, rng):
    rec["turns"][rng.randrange(len(rec["turns"]))]["role"] = "bot"


def _early_reaction(rec, rng):
    rec["turns"][-1]["reactions"] = [{"name": "love", "time": "2001-01-01T00:00:00Z"}]


def _bad_time(rec, rng):
    rec["turns"][0]["time"] = rng.choice(["2026-02-30T00:00:00Z", "soon", 1_767_607_200_000, "1960-01-01T00:00:00Z"])


def _long_text(rec, rng):
    rec["turns"][0]["text"] = "x" * 500


RECORD_CORRUPTIONS = [_drop_key, _drop_turn_key, _wrong_type, _bad_role, _early_reaction, _bad_time, _long_text]
LINE_CORRUPTIONS = ["truncate", "utf8", "not_object"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_bad=st.integers(0, 12), n_dup=st.integers(0, 3), n_blank=st.integers(0, 3),
       vectorized=st.booleans())  # fmt: skip
def test_random_corruption_reconciles_and_names_line_and_field(tmp_path_factory, seed, n_bad, n_dup, n_blank, vectorized):
    tmp = tmp_path_factory.mktemp("prop")
    rng = random.Random(seed)
    records = [examples.conversation(i, rng, turns=rng.randint(1, 5)) for i in range(40)]
    lines = [orjson.dumps(r) for r in records]
    bad = set(rng.sample(range(len(lines)), n_bad))
    for i in bad:
        kind = rng.randrange(len(RECORD_CORRUPTIONS) + len(LINE_CORRUPTIONS))
        if kind < len(RECORD_CORRUPTIONS):
            rec = orjson.loads(lines[i])
            RECORD_CORRUPTIONS[kind](rec, rng)
            lines[i] = orjson.dumps(rec)
        else:
            how = LINE_CORRUPTIONS[kind - len(RECORD_CORRUPTIONS)]
            if how == "truncate":
                lines[i] = lines[i][: rng.randrange(1, len(lines[i]) - 1)]
            elif how == "utf8":
                cut = lines[i].index(b'"text":"') + 8
                lines[i] = lines[i][:cut] + b"\xc3\x28" + lines[i][cut:]
            else:
                lines[i] = b"[1, 2, 3]"
    good = [i for i in range(len(lines)) if i not in bad]
    dups = [lines[i] for i in rng.sample(good, min(n_dup, len(good)))]
    lines = lines + dups
    for _ in range(n_blank):
        lines.insert(rng.randrange(len(lines) + 1), b"")
    path = tmp / "logs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected_bad_lines = sorted(n + 1 for n, line in enumerate(lines) if line and _is_corrupted(line, records))

    s = ingest([path], tmp / "store", workers=1, max_reject_rate=1.0, limits=Limits(max_text_chars=400),
               vectorized=vectorized)  # fmt: skip
    assert s.reconciles and s.read == len(lines) - n_blank and s.blank_lines == n_blank
    assert s.rejected == n_bad and s.duplicate == len(dups) and s.accepted == len(good)
    rejects = [orjson.loads(x) for x in Store(tmp / "store").rejects_path.read_bytes().splitlines()] if n_bad else []
    assert sorted(r["line"] for r in rejects) == expected_bad_lines
    for r in rejects:
        assert r["source"] == str(path) and r["field"] and r["reason"] and "raw" in r
    con = Store(tmp / "store").connect()
    assert con.execute("SELECT count(*) FROM conversations").fetchone()[0] == len(good)


def _is_corrupted(line: bytes, records: list[dict]) -> bool:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return True
    return not isinstance(rec, dict) or rec not in records
