"""The vectorized JSONL path must accept exactly what the reference validator accepts, with the same rows."""

import random

import orjson
import pytest

from rluf.data import examples
from rluf.data.ingest import ingest
from rluf.data.store import Store

TABLES = {
    "conversations": "conversation_id, user_id, started_at, category, policy, n_turns, extra, source_line",
    "messages": "message_id, conversation_id, parent_id, turn_index, user_id, role, text, time, policy, category, extra, source_line",
    "reaction_events": "message_id, user_id, reaction, action, time, seq, source_line",
    "ledger": "kind, key, source_line",
}


def _dump(store_dir):
    con = Store(store_dir).connect()
    out = {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall() for t, cols in TABLES.items()}
    out["reactions"] = con.execute("SELECT * FROM reactions ORDER BY ALL").fetchall()
    return out


def _rejects(store_dir):
    path = Store(store_dir).rejects_path
    if not path.exists():
        return []
    return sorted((r["line"], r["field"], r["reason"]) for r in map(orjson.loads, path.read_bytes().splitlines()))


def _tricky_lines(rng: random.Random) -> list[bytes]:
    """Valid and invalid records that probe every rule the vectorized checks implement."""
    base = examples.conversation(10_000, rng, turns=4)
    variants = []

    def v(mutate):
        rec = orjson.loads(orjson.dumps(base))
        rec["conversation_id"] = f"x{len(variants)}"
        for i, t in enumerate(rec["turns"]):
            t["message_id"] = f"x{len(variants)}-{i}"
        mutate(rec)
        variants.append(orjson.dumps(rec))

    v(lambda r: None)
    v(lambda r: r.pop("started_at"))
    v(lambda r: r.update(started_at="2030-01-01T00:00:00Z"))  # after first turn
    v(lambda r: r.update(category=""))  # "" means absent
    v(lambda r: r.update(policy="p" * 300))  # over the id limit
    v(lambda r: r.update(conversation_id=""))
    v(lambda r: r.pop("user_id"))
    v(lambda r: r.update(turns=[]))
    v(lambda r: r["turns"][1].update(role="bot"))
    v(lambda r: r["turns"][1].pop("role"))
    v(lambda r: r["turns"][1].update(time="2026-13-01T00:00:00Z"))
    v(lambda r: r["turns"][1].update(time="2026-01-01T10:00:00+05:30"))
    v(lambda r: r["turns"][1].update(time="2026-01-01 10:00:00.123"))
    v(lambda r: r["turns"][1].update(time="2026-01-01"))  # date only: reference path decides
    v(lambda r: r["turns"][1].update(time="1969-12-31T23:59:59Z"))
    v(lambda r: r["turns"][1].update(text="é" * 40))
    v(lambda r: r["turns"][1].update(text=""))
    v(lambda r: r["turns"][1].pop("message_id"))  # default id
    v(lambda r: [t.pop("message_id") for t in r["turns"]])
    v(lambda r: r["turns"][2].update(message_id=r["turns"][0]["message_id"]))  # duplicate id
    v(lambda r: r["turns"][2].update(parent_id=""))  # explicit root
    v(lambda r: r["turns"][2].update(parent_id=r["turns"][0]["message_id"]))  # branch inside the record
    v(lambda r: r["turns"][2].update(parent_id="elsewhere"))  # unknown parent: rejected at merge
    v(lambda r: r["turns"][1].update(reactions=[{"name": "love", "time": r["turns"][1]["time"]}]))
    v(lambda r: r["turns"][1].update(reactions=[{"name": "love", "time": "2020-01-01T00:00:00Z"}]))  # too early
    v(lambda r: r["turns"][1].update(reactions=[{"name": "", "time": r["turns"][1]["time"]}]))
    v(lambda r: r["turns"][1].update(reactions=[{"name": "+1", "action": "remove", "user_id": "other",
                                                 "time": r["turns"][1]["time"]}]))  # fmt: skip
    v(lambda r: r["turns"][1].update(reactions=[{"name": "love", "action": "", "time": r["turns"][1]["time"]}]))
    v(lambda r: r["turns"][1].update(reactions=[{"name": "love", "action": "undo", "time": r["turns"][1]["time"]}]))
    v(lambda r: r["turns"][1].update(reactions=[{"name": "love", "user_id": "", "time": r["turns"][1]["time"]}]))
    v(lambda r: r.update(source="web"))  # extra top-level field: kept in `extra`
    v(lambda r: r["turns"][0].update(lang="en"))  # extra turn field
    v(lambda r: r["turns"][0].update(reactions=[{"name": "love", "time": r["turns"][0]["time"], "why": "x"}]))
    v(lambda r: r.update(conversation_id=7))  # int id: kept as text by the reference path
    v(lambda r: r.update(source=None))  # extra field given as null: kept as {"source": null}
    v(lambda r: r["turns"][1].update(time="2026-02-30T00:00:00Z"))  # no such day
    v(lambda r: r["turns"][1].update(time="2026-01-01T10:00:00.1234567Z"))  # 7 digits: reference path decides
    v(lambda r: r.update(started_at="2026-01-01 00:00:00"))  # naive: UTC
    v(lambda r: r["turns"][1].update(reactions=[None]))
    v(lambda r: r["turns"].append(None))
    v(lambda r: (r["turns"][0].pop("message_id"), r["turns"][1].update(message_id=r["conversation_id"] + ":0")))
    v(lambda r: r["turns"][3].update(parent_id=r["turns"][1]["message_id"], reactions=[
        {"name": "love", "time": r["turns"][3]["time"]}, {"name": "love", "action": "remove", "time": r["turns"][3]["time"]}]))
    variants.append(b'{"conversation_id": "broken", "turns": [')
    variants.append(b"")
    variants.append(b'{"conversation_id": "bad-utf8", "user_id": "u", "turns": [{"role": "user", "text": "\xff", "time": "2026-01-01T00:00:00Z"}]}')
    variants.append(orjson.dumps(base))  # same id and content as a clean line below: duplicate
    return variants


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_and_reference_paths_agree(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    lines = [orjson.dumps(examples.conversation(c, rng, turns=rng.randint(1, 7))) for c in range(300)]
    for line in _tricky_lines(rng):
        lines.insert(rng.randrange(len(lines) + 1), line)
    lines.append(orjson.dumps(examples.conversation(10_000, random.Random(seed), turns=4)))
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    monkeypatch.setattr("rluf.data.fastpath.MIN_RANGE_LINES", 8)  # exercise the range splitting too
    monkeypatch.setattr("rluf.data.ingest.BLOCK_BYTES", 20_000)
    fast = ingest([path], tmp_path / "fast", workers=1, max_reject_rate=1.0)
    slow = ingest([path], tmp_path / "slow", workers=1, max_reject_rate=1.0, vectorized=False)
    for key in ("read", "accepted", "rejected", "duplicate", "blank_lines", "messages", "reaction_events"):
        assert getattr(fast, key) == getattr(slow, key), key
    assert fast.reconciles and fast.rejected >= 15
    assert fast.vectorized >= 250 and slow.vectorized == 0
    assert _dump(tmp_path / "fast") == _dump(tmp_path / "slow")
    assert _rejects(tmp_path / "fast") == _rejects(tmp_path / "slow")


def test_reingest_through_the_other_path_is_all_duplicates(tmp_path):
    path = tmp_path / "logs.jsonl"
    examples.write_nested_jsonl(path, 500, seed=3)
    first = ingest([path], tmp_path / "s", workers=1)
    again = ingest([path], tmp_path / "s", workers=1, vectorized=False)
    assert first.accepted == 500 and again.duplicate == 500 and again.accepted == 0 and again.rejected == 0


@pytest.mark.parametrize("vectorized", [True, False])
def test_message_id_used_by_two_records_is_rejected_across_paths_and_batches(tmp_path, vectorized):
    rng = random.Random(5)
    a = examples.conversation(1, rng, turns=2, prefix="a")
    b = examples.conversation(2, rng, turns=2, prefix="b")
    b["turns"][1]["message_id"] = a["turns"][0]["message_id"]
    b["lang"] = "en"  # an extra field: this record takes the reference path
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(x) for x in (a, b)) + b"\n")
    s = ingest([path], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=vectorized)
    assert (s.accepted, s.rejected) == (1, 1)
    rej = orjson.loads(Store(tmp_path / "s").rejects_path.read_bytes().splitlines()[0])
    assert (rej["line"], rej["field"]) == (2, "message_id") and "earlier record" in rej["reason"]
    # A later batch reusing a stored message id is rejected too.
    c = examples.conversation(3, rng, turns=2, prefix="c")
    c["turns"][0]["message_id"] = a["turns"][1]["message_id"]
    later = tmp_path / "later.jsonl"
    later.write_bytes(orjson.dumps(c) + b"\n")
    s2 = ingest([later], tmp_path / "s", workers=1, max_reject_rate=1.0, vectorized=vectorized)
    assert (s2.accepted, s2.rejected) == (0, 1)


def test_clean_ingest_never_imports_pandas(tmp_path):
    """pyarrow imports pandas (0.3-0.4 s) at its first conversion of Python objects and in
    `Schema.empty_table()`; a clean batch must pay for neither, in the vectorized path (what each
    worker runs; workers=1 runs it in this process) or in the merge stage."""
    import subprocess
    import sys

    data = tmp_path / "logs.jsonl"
    examples.write_nested_jsonl(data, 200, seed=3)
    script = f"""
import sys
from rluf.data.ingest import ingest
s = ingest([{str(data)!r}], {str(tmp_path / "store")!r}, workers=1)
assert s.committed and s.rejected == 0 and s.vectorized == 200, s
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_vectorized_times_match_the_reference_parser():
    """The vectorized checks clear only times they read exactly as parse_time does."""
    import io

    import pyarrow.json as pj

    from rluf.data.contract import parse_time
    from rluf.data.fastpath import _times

    values = ["2026-02-30T00:00:00Z", "2026-01-01 10:00:00.5", "2026-01-01T10:00:00+05:30", None,
              "1969-12-31T23:59:59Z", "2026-01-01T24:00:00Z", "2099-12-31T23:59:59.999999-01:00",
              "2026-01-01", "2026-01-01T10:00:00.1234567Z", " 2026-01-01T10:00:00Z", "2024-02-29T12:00:00Z"]  # fmt: skip
    lines = b"\n".join(orjson.dumps({"t": v}) for v in values) + b"\n"
    us, ok = _times(pj.read_json(io.BytesIO(lines)).column("t").combine_chunks())
    assert ok.tolist() == [False, True, True, False, False, False, False, False, False, False, True]
    for value, cleared, got in zip(values, ok, us):  # the reference path decides the others
        if cleared:
            assert got == parse_time(value, "time"), value


def test_utf8_check_is_as_strict_as_python():
    from rluf.data.fastpath import _is_utf8

    samples = [b"abc", b"", "é😀".encode(), b"\xef\xbf\xbf", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
               b"\xff", b"\xe2\x82", b'{"text": "\xe2\x82"}']  # fmt: skip
    for b in samples:
        try:
            b.decode("utf-8")
            expected = True
        except UnicodeDecodeError:
            expected = False
        assert _is_utf8(b) == expected, b


def test_fixed_width_times_read_in_numpy_match_the_regex_and_the_reference():
    """The byte-by-byte reading of 20-byte times clears exactly the strings that match the regex it
    stands in for and name a real day, to the microsecond datetime gives."""
    import io
    from datetime import datetime, timedelta, timezone

    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.json as pj

    from rluf.data.fastpath import _ZONED, _numpy, _fixed_width_times

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    rng = random.Random(0)
    alphabet = "0123456789-:TZ .+/a\x00"
    values = ["2024-02-29T12:00:00Z", "2100-02-29T00:00:00Z", "2000-02-29T23:59:59Z", "2026-04-31T00:00:00Z",
              "0000-01-01T00:00:00Z", "1970-01-01 00:00:00Z", "2026-00-10T00:00:00Z", "2026-12-31T23:59:59Z"]  # fmt: skip
    for _ in range(5000):
        chars = list(f"{rng.randrange(1900, 2200)}-{rng.randrange(15):02d}-{rng.randrange(33):02d}T"
                     f"{rng.randrange(30):02d}:{rng.randrange(70):02d}:{rng.randrange(70):02d}Z")  # fmt: skip
        for _ in range(rng.choice([0, 0, 1, 2])):
            chars[rng.randrange(20)] = rng.choice(alphabet)
        values.append("".join(chars))
    arr = pj.read_json(io.BytesIO(b"\n".join(orjson.dumps({"t": v}) for v in values))).column("t").combine_chunks()

    def reference(value):  # what datetime reads (parse_time also checks the contract's range)
        try:
            read = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (read - epoch) // timedelta(microseconds=1) if read.tzinfo else None

    matched = _numpy(pc.match_substring_regex(arr, _ZONED))
    expected = [parse_time_us if m else None for m, parse_time_us in zip(matched, map(reference, values))]
    us, ok = _fixed_width_times(arr)
    assert 0.2 < ok.mean() < 0.8 and (matched & ~ok).any()  # some match the regex but name no day
    assert [int(u) if o else None for u, o in zip(us, ok)] == expected
    us7, ok7 = _fixed_width_times(arr.slice(7))  # a sliced array
    assert ok7.tolist() == ok[7:].tolist() and us7[ok7].tolist() == us[7:][ok[7:]].tolist()
    assert _fixed_width_times(pj.read_json(io.BytesIO(b'{"t": "2026-01-01T00:00:00.5Z"}')).column("t").combine_chunks()) is None


@pytest.mark.parametrize("longest", [1, 6, 16, 17, 40])
def test_repeated_message_ids_in_a_row_found_by_lags_and_by_hashing(longest):
    """Both ways of finding a conversation that uses one message id twice agree with a set."""
    import numpy as np
    import pyarrow as pa

    from rluf.data.fastpath import _repeated_in_row

    rng = random.Random(longest)
    lengths = [rng.randint(1, longest) for _ in range(300)]
    lengths[rng.randrange(300)] = longest
    ids = [[f"m{rng.randrange(3 * n)}" for _ in range(n)] for n in lengths]  # repeats are common
    expected = sorted(row for row, row_ids in enumerate(ids) if len(set(row_ids)) < len(row_ids))
    r = np.repeat(np.arange(len(lengths)), lengths)
    i = np.concatenate([np.arange(n) for n in lengths])
    mid = pa.array([m for row_ids in ids for m in row_ids])
    assert 0 < len(expected) < 300 or longest == 1
    assert sorted(set(_repeated_in_row(r, i, mid, longest).tolist())) == expected
    assert sorted(set(_repeated_in_row(r, i, mid, 10**6).tolist())) == expected  # hashed whatever the length
