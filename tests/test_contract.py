"""Unit tests of the data contract (rluf.data.contract): every normalize_* function and parse_time.

Valid records must give exactly the documented rows (with their defaults); every kind of bad input
must raise RecordError whose `.field` is the exact path of the fault.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from rluf.data import contract
from rluf.data.contract import (
    CONVERSATION,
    MESSAGE,
    REACTION,
    USER,
    Limits,
    RecordError,
    detect_kind,
    normalize_conversation,
    normalize_message,
    normalize_reaction,
    normalize_user,
    parse_time,
)

T0 = 1769851800  # 2026-01-31T09:30:00Z in epoch seconds
US = 1_000_000


def us(seconds: float) -> int:
    return int(seconds * US)


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def conv(**overrides) -> dict:
    """A valid nested conversation with three turns; the assistant turn has one reaction."""
    rec = {
        "conversation_id": "c1",
        "user_id": "u1",
        "started_at": iso(T0 - 10),
        "category": "coding",
        "policy": "v7",
        "turns": [
            {"message_id": "m0", "role": "user", "text": "hi", "time": iso(T0)},
            {"message_id": "m1", "role": "assistant", "text": "hello", "time": iso(T0 + 5),
             "reactions": [{"name": "love", "time": iso(T0 + 60)}]},
            {"message_id": "m2", "role": "user", "text": "thanks", "time": iso(T0 + 90)},
        ],
    }  # fmt: skip
    rec.update(overrides)
    return rec


def flat_message(**overrides) -> dict:
    rec = {"message_id": "m1", "conversation_id": "c1", "user_id": "u1", "role": "assistant", "text": "hello",
           "time": iso(T0)}  # fmt: skip
    rec.update(overrides)
    return rec


def flat_reaction(**overrides) -> dict:
    rec = {"message_id": "m1", "user_id": "u1", "reaction": "thumbs_up", "action": "add", "time": iso(T0 + 5)}
    rec.update(overrides)
    return rec


def field_of(fn, record, limits: Limits = Limits()) -> str:
    with pytest.raises(RecordError) as info:
        fn(record, limits)
    assert str(info.value).startswith(info.value.field + ": ")
    assert info.value.reason
    return info.value.field


# ====================================================================== parse_time


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-01-31T09:30:00Z", us(T0)),
        ("2026-01-31T10:30:00+01:00", us(T0)),
        ("2026-01-31T04:30:00-05:00", us(T0)),
        ("2026-01-31T09:30:00", us(T0)),  # naive = UTC
        ("2026-01-31 09:30:00", us(T0)),
        ("2026-01-31T09:30:00.123456Z", us(T0) + 123456),
        ("2026-01-31", us(T0 - 9 * 3600 - 30 * 60)),  # midnight UTC
        (T0, us(T0)),
        (T0 + 0.5, us(T0) + 500_000),
        (T0 + 0.25, us(T0) + 250_000),
        (str(T0), us(T0)),  # digits in a string: epoch seconds (as CSV cells are)
        (f"{T0}.5", us(T0) + 500_000),
        (0, 0),
        ("1970-01-01T00:00:00Z", 0),
        ("2099-12-31T23:59:59.999999Z", 4102444800 * US - 1),
        (datetime(2026, 1, 31, 9, 30), us(T0)),  # naive datetime = UTC
        (datetime(2026, 1, 31, 10, 30, tzinfo=timezone(timedelta(hours=1))), us(T0)),
    ],
)
def test_parse_time_accepts(value, expected):
    assert parse_time(value, "time") == expected


@pytest.mark.parametrize(
    "value, reason_part",
    [
        ("31/01/2026", "not an ISO-8601 time"),
        ("soon", "not an ISO-8601 time"),
        ("", "not an ISO-8601 time"),
        ("2026-02-30T00:00:00Z", "not an ISO-8601 time"),
        (f" {T0}", "not an ISO-8601 time"),
        (T0 * 1000, "looks like epoch milliseconds"),
        (str(T0 * 1000), "looks like epoch milliseconds"),
        (T0 * 1000 + 0.5, "looks like epoch milliseconds"),
        ("1960-01-01T00:00:00Z", "outside 1970-01-01 .. 2100-01-01"),
        ("2100-01-01T00:00:00Z", "outside 1970-01-01 .. 2100-01-01"),
        (-1, "outside 1970-01-01 .. 2100-01-01"),
        (T0 * 1_000_000, "outside 1970-01-01 .. 2100-01-01"),  # microseconds are not milliseconds
        (float("nan"), "NaN"),
        (True, "got a boolean"),
        (False, "got a boolean"),
        ([T0], "got a list"),
        ({"t": T0}, "got an object"),
        (None, "required field is missing or null"),
    ],
)
def test_parse_time_rejects(value, reason_part):
    with pytest.raises(RecordError) as info:
        parse_time(value, "turns[2].reactions[1].time")
    assert info.value.field == "turns[2].reactions[1].time"
    assert reason_part in info.value.reason


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_parse_time_infinity_is_a_record_error(value):
    with pytest.raises(RecordError) as info:
        parse_time(value, "time")
    assert info.value.field == "time"


# ====================================================================== nested conversations


def test_conversation_rows_exact():
    u = normalize_conversation(conv())
    assert u.kind == CONVERSATION and u.key == "c1"
    assert u.conversations == [("c1", "u1", us(T0 - 10), "coding", "v7", 3, None)]
    assert u.messages == [
        ("m0", "c1", None, 0, "u1", "user", "hi", us(T0), "v7", "coding", None),
        ("m1", "c1", "m0", 1, "u1", "assistant", "hello", us(T0 + 5), "v7", "coding", None),
        ("m2", "c1", "m1", 2, "u1", "user", "thanks", us(T0 + 90), "v7", "coding", None),
    ]
    assert u.reactions == [("m1", "u1", "love", "add", us(T0 + 60), 0)]
    assert u.users == []
    assert len(u.conversations[0]) == len(contract.CONVERSATION_COLUMNS)
    assert len(u.messages[0]) == len(contract.MESSAGE_COLUMNS)
    assert len(u.reactions[0]) == len(contract.REACTION_COLUMNS)


def test_conversation_defaults():
    """message_id `{cid}:{i}`, parent = previous turn, reaction user = conversation user, action add,
    started_at = first turn's time, absent category/policy = None."""
    rec = {
        "conversation_id": 1002,  # integer ids are kept as text
        "user_id": "u-43",
        "turns": [
            {"role": "user", "text": "hi", "time": T0},
            {"role": "assistant", "text": "", "time": iso(T0 + 1),
             "reactions": [{"name": "thumbs_up", "time": iso(T0 + 2)},
                           {"name": "thumbs_up", "action": "remove", "time": iso(T0 + 3), "user_id": "other"},
                           {"name": "love", "action": None, "time": iso(T0 + 4)},
                           {"name": "love", "action": "", "time": iso(T0 + 5)}]},
            {"role": "system", "text": "x", "time": iso(T0 + 6)},
        ],
    }  # fmt: skip
    u = normalize_conversation(rec)
    assert u.key == "1002"
    assert u.conversations == [("1002", "u-43", us(T0), None, None, 3, None)]
    assert [(m[0], m[2], m[3]) for m in u.messages] == [("1002:0", None, 0), ("1002:1", "1002:0", 1),
                                                        ("1002:2", "1002:1", 2)]  # fmt: skip
    assert u.messages[1][6] == ""  # empty text is allowed
    assert u.reactions == [
        ("1002:1", "u-43", "thumbs_up", "add", us(T0 + 2), 0),
        ("1002:1", "other", "thumbs_up", "remove", us(T0 + 3), 1),
        ("1002:1", "u-43", "love", "add", us(T0 + 4), 2),
        ("1002:1", "u-43", "love", "add", us(T0 + 5), 3),
    ]


def test_conversation_parent_rules_and_mixed_ids():
    rec = conv()
    rec["turns"][0]["message_id"] = None  # default id for this one only
    rec["turns"][1]["parent_id"] = ""  # "": no parent
    rec["turns"][2]["parent_id"] = "elsewhere"  # any other id is kept as given
    rec["turns"][2].pop("message_id")
    u = normalize_conversation(rec)
    assert [(m[0], m[2]) for m in u.messages] == [("c1:0", None), ("m1", None), ("c1:2", "elsewhere")]


def test_conversation_empty_category_and_policy_are_absent():
    u = normalize_conversation(conv(category="", policy=""))
    assert u.conversations[0][3:5] == (None, None)
    assert all(m[8] is None and m[9] is None for m in u.messages)


def test_seq_counts_reactions_across_turns():
    rec = conv()
    rec["turns"][0]["reactions"] = [{"name": "a", "time": iso(T0 + 1)}, {"name": "b", "time": iso(T0 + 2)}]
    rec["turns"][2]["reactions"] = [{"name": "c", "time": iso(T0 + 100)}]
    u = normalize_conversation(rec)
    assert [(r[0], r[2], r[5]) for r in u.reactions] == [("m0", "a", 0), ("m0", "b", 1), ("m1", "love", 2),
                                                         ("m2", "c", 3)]  # fmt: skip


def test_started_at_equal_to_first_turn_is_fine():
    u = normalize_conversation(conv(started_at=iso(T0)))
    assert u.conversations[0][2] == us(T0)


def test_reaction_at_the_same_time_as_its_message_is_fine():
    rec = conv()
    rec["turns"][1]["reactions"][0]["time"] = rec["turns"][1]["time"]
    assert normalize_conversation(rec).reactions[0][4] == us(T0 + 5)


def test_unknown_fields_kept_in_extra():
    rec = conv(client="ios", flags={"beta": True, "n": [1, 2]})
    rec["turns"][1]["latency_ms"] = 420
    rec["turns"][2]["meta"] = {"lang": "en"}
    u = normalize_conversation(rec)
    assert json.loads(u.conversations[0][6]) == {"client": "ios", "flags": {"beta": True, "n": [1, 2]}}
    assert [None if m[10] is None else json.loads(m[10]) for m in u.messages] == [
        None, {"latency_ms": 420}, {"meta": {"lang": "en"}}]  # fmt: skip


def _mutate(path_fn):
    rec = conv()
    path_fn(rec)
    return rec


def _set(keys, value):
    def fn(rec):
        target = rec
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return fn


def _del(keys):
    def fn(rec):
        target = rec
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return fn


NESTED_BAD = [
    # missing required fields
    ("missing conversation_id", _del(["conversation_id"]), "conversation_id"),
    ("null user_id", _set(["user_id"], None), "user_id"),
    ("missing turns", _del(["turns"]), "turns"),
    ("missing role", _del(["turns", 1, "role"]), "turns[1].role"),
    ("missing text", _del(["turns", 2, "text"]), "turns[2].text"),
    ("missing time", _del(["turns", 0, "time"]), "turns[0].time"),
    ("reaction without name", _del(["turns", 1, "reactions", 0, "name"]), "turns[1].reactions[0].name"),
    ("reaction without time", _del(["turns", 1, "reactions", 0, "time"]), "turns[1].reactions[0].time"),
    # wrong types
    ("float conversation_id", _set(["conversation_id"], 1.5), "conversation_id"),
    ("bool user_id", _set(["user_id"], True), "user_id"),
    ("list category", _set(["category"], ["x"]), "category"),
    ("object policy", _set(["policy"], {"v": 1}), "policy"),
    ("turns not a list", _set(["turns"], "hello"), "turns"),
    ("turns an object", _set(["turns"], {"0": {}}), "turns"),
    ("turn not an object", _set(["turns", 1], "hello"), "turns[1]"),
    ("float message_id", _set(["turns", 2, "message_id"], 2.0), "turns[2].message_id"),
    ("bool parent_id", _set(["turns", 1, "parent_id"], False), "turns[1].parent_id"),
    ("int text", _set(["turns", 0, "text"], 5), "turns[0].text"),
    ("reactions not a list", _set(["turns", 1, "reactions"], {"name": "love"}), "turns[1].reactions"),
    ("reaction not an object", _set(["turns", 1, "reactions", 0], "love"), "turns[1].reactions[0]"),
    ("list reaction user", _set(["turns", 1, "reactions", 0, "user_id"], ["u"]), "turns[1].reactions[0].user_id"),
    ("int reaction name", _set(["turns", 1, "reactions", 0, "name"], 1.0), "turns[1].reactions[0].name"),
    ("bool time", _set(["turns", 2, "time"], True), "turns[2].time"),
    # empty ids
    ("empty conversation_id", _set(["conversation_id"], ""), "conversation_id"),
    ("empty user_id", _set(["user_id"], ""), "user_id"),
    ("empty message_id", _set(["turns", 1, "message_id"], ""), "turns[1].message_id"),
    ("empty reaction name", _set(["turns", 1, "reactions", 0, "name"], ""), "turns[1].reactions[0].name"),
    ("empty reaction user", _set(["turns", 1, "reactions", 0, "user_id"], ""), "turns[1].reactions[0].user_id"),
    # roles, actions
    ("bad role", _set(["turns", 1, "role"], "bot"), "turns[1].role"),
    ("role wrong case", _set(["turns", 0, "role"], "User"), "turns[0].role"),
    ("role int", _set(["turns", 2, "role"], 1), "turns[2].role"),
    ("role list", _set(["turns", 2, "role"], ["user"]), "turns[2].role"),  # unhashable: must not raise TypeError
    ("role object", _set(["turns", 0, "role"], {"user": 1}), "turns[0].role"),
    ("action list", _set(["turns", 1, "reactions", 0, "action"], ["add"]), "turns[1].reactions[0].action"),
    ("bad action", _set(["turns", 1, "reactions", 0, "action"], "like"), "turns[1].reactions[0].action"),
    ("action wrong case", _set(["turns", 1, "reactions", 0, "action"], "Add"), "turns[1].reactions[0].action"),
    # times
    ("unparseable time", _set(["turns", 1, "time"], "yesterday"), "turns[1].time"),
    ("epoch ms time", _set(["turns", 0, "time"], T0 * 1000), "turns[0].time"),
    ("epoch ms reaction", _set(["turns", 1, "reactions", 0, "time"], T0 * 1000 + 60_000), "turns[1].reactions[0].time"),
    ("unparseable started_at", _set(["started_at"], "31/01/2026"), "started_at"),
    ("started_at after first turn", _set(["started_at"], iso(T0 + 1)), "started_at"),
    ("reaction before message", _set(["turns", 1, "reactions", 0, "time"], iso(T0 + 4)), "turns[1].reactions[0].time"),
    # structure
    ("no turns", _set(["turns"], []), "turns"),
    ("duplicate message id", _set(["turns", 2, "message_id"], "m0"), "turns[2].message_id"),
    ("unknown reaction field", _set(["turns", 1, "reactions", 0, "emoji"], "x"), "turns[1].reactions[0].emoji"),
    ("empty object", lambda rec: rec.clear(), "conversation_id"),
]


@pytest.mark.parametrize("name, mutate, field", NESTED_BAD, ids=[x[0] for x in NESTED_BAD])
def test_conversation_rejects_with_exact_field(name, mutate, field):
    assert field_of(normalize_conversation, _mutate(mutate)) == field


@pytest.mark.parametrize("record", [[], "x", 5, None, [conv()]])
def test_non_object_record(record):
    assert field_of(normalize_conversation, record) == "<record>"
    assert field_of(normalize_message, record) == "<record>"
    assert field_of(normalize_reaction, record) == "<record>"
    assert field_of(normalize_user, record) == "<record>"


def test_default_ids_collide_with_explicit_id():
    rec = conv()
    rec["turns"][0]["message_id"] = "c1:1"  # the default id of turn 1
    del rec["turns"][1]["message_id"]
    assert field_of(normalize_conversation, rec) == "turns[1].message_id"


def test_text_limit_is_exact():
    limits = Limits(max_text_chars=10)
    ok = conv()
    ok["turns"][1]["text"] = "x" * 10
    assert normalize_conversation(ok, limits).messages[1][6] == "x" * 10
    bad = conv()
    bad["turns"][1]["text"] = "é" * 11  # characters, not bytes
    with pytest.raises(RecordError) as info:
        normalize_conversation(bad, limits)
    assert info.value.field == "turns[1].text" and "11 characters" in info.value.reason


def test_turn_limit_is_exact():
    rec = conv()
    assert normalize_conversation(rec, Limits(max_turns=3)).conversations[0][5] == 3
    assert field_of(normalize_conversation, rec, Limits(max_turns=2)) == "turns"


def test_reaction_limit_is_exact():
    rec = conv()
    rec["turns"][1]["reactions"] = [{"name": f"r{i}", "time": iso(T0 + 10)} for i in range(3)]
    assert len(normalize_conversation(rec, Limits(max_reactions=3)).reactions) == 3
    assert field_of(normalize_conversation, rec, Limits(max_reactions=2)) == "turns[1].reactions"


def test_id_limit_is_exact():
    limits = Limits(max_id_chars=6)
    assert normalize_conversation(conv(conversation_id="abcdef"), limits).key == "abcdef"
    assert field_of(normalize_conversation, conv(conversation_id="abcdefg"), limits) == "conversation_id"
    assert field_of(normalize_conversation, conv(policy="abcdefg"), limits) == "policy"
    assert field_of(normalize_message, flat_message(parent_id="abcdefg"), limits) == "parent_id"
    rec = conv()
    rec["turns"][1]["reactions"][0]["name"] = "abcdefg"
    assert field_of(normalize_conversation, rec, limits) == "turns[1].reactions[0].name"


def test_input_record_is_not_modified():
    rec = conv(extra_field=1)
    before = copy.deepcopy(rec)
    normalize_conversation(rec)
    assert rec == before


@pytest.mark.parametrize("action", [False, 0, []])
def test_nested_reaction_action_of_wrong_type_is_rejected(action):
    rec = conv()
    rec["turns"][1]["reactions"][0]["action"] = action
    assert field_of(normalize_conversation, rec) == "turns[1].reactions[0].action"


# ====================================================================== flat messages


def test_message_row_exact():
    u = normalize_message(flat_message(parent_id="m0", turn_index=1, policy="v7", category="coding"))
    assert u.kind == MESSAGE and u.key == "m1"
    assert u.messages == [("m1", "c1", "m0", 1, "u1", "assistant", "hello", us(T0), "v7", "coding", None)]
    assert u.conversations == [] and u.reactions == [] and u.users == []


def test_message_defaults_and_coercions():
    u = normalize_message(flat_message(message_id=7, conversation_id=8, user_id=9, turn_index="3", parent_id="",
                                       time=str(T0), text=""))  # fmt: skip
    assert u.messages == [("7", "8", None, 3, "9", "assistant", "", us(T0), None, None, None)]
    u = normalize_message(flat_message(turn_index=None, policy="", category=""))
    assert u.messages[0][3] is None and u.messages[0][8:10] == (None, None)


def test_message_extra_kept():
    u = normalize_message(flat_message(latency_ms=812, tags=["a"]))
    assert json.loads(u.messages[0][10]) == {"latency_ms": 812, "tags": ["a"]}


MESSAGE_BAD = [
    ("missing message_id", {"message_id": None}, "message_id"),
    ("missing conversation_id", {"conversation_id": None}, "conversation_id"),
    ("missing user_id", {"user_id": None}, "user_id"),
    ("missing role", {"role": None}, "role"),
    ("missing text", {"text": None}, "text"),
    ("missing time", {"time": None}, "time"),
    ("empty message_id", {"message_id": ""}, "message_id"),
    ("float conversation_id", {"conversation_id": 1.0}, "conversation_id"),
    ("bool parent_id", {"parent_id": True}, "parent_id"),
    ("list user_id", {"user_id": ["u"]}, "user_id"),
    ("bad role", {"role": "moderator"}, "role"),
    ("list role", {"role": ["user"]}, "role"),
    ("object role", {"role": {"a": 1}}, "role"),
    ("turn_index beyond int32", {"turn_index": 2**31}, "turn_index"),
    ("turn_index digits beyond int32", {"turn_index": "2147483648"}, "turn_index"),
    ("bytes-like text", {"text": ["hello"]}, "text"),
    ("negative turn_index", {"turn_index": -1}, "turn_index"),
    ("float turn_index", {"turn_index": 1.0}, "turn_index"),
    ("bool turn_index", {"turn_index": True}, "turn_index"),
    ("text turn_index", {"turn_index": "first"}, "turn_index"),
    ("unparseable time", {"time": "31/01/2026"}, "time"),
    ("epoch ms time", {"time": T0 * 1000}, "time"),
    ("float policy", {"policy": 1.5}, "policy"),
    ("object category", {"category": {}}, "category"),
]


@pytest.mark.parametrize("name, change, field", MESSAGE_BAD, ids=[x[0] for x in MESSAGE_BAD])
def test_message_rejects_with_exact_field(name, change, field):
    assert field_of(normalize_message, flat_message(**change)) == field


def test_message_text_limit():
    assert normalize_message(flat_message(text="x" * 4), Limits(max_text_chars=4)).messages[0][6] == "xxxx"
    assert field_of(normalize_message, flat_message(text="x" * 5), Limits(max_text_chars=4)) == "text"


def test_message_turn_index_superscript_digit_is_a_record_error():
    assert field_of(normalize_message, flat_message(turn_index="²")) == "turn_index"


def test_message_turn_index_largest_int32_is_fine():
    assert normalize_message(flat_message(turn_index=2**31 - 1)).messages[0][3] == 2**31 - 1
    assert normalize_message(flat_message(turn_index=" 12 ")).messages[0][3] == 12


def test_message_turn_index_beyond_int32_is_a_record_error():
    assert field_of(normalize_message, flat_message(turn_index=2**31)) == "turn_index"


# ====================================================================== flat reaction events


def test_reaction_row_and_key_exact():
    u = normalize_reaction(flat_reaction())
    assert u.kind == REACTION
    assert u.reactions == [("m1", "u1", "thumbs_up", "add", us(T0 + 5), 0)]
    assert u.key == f'["m1","u1","thumbs_up","add",{us(T0 + 5)}]'
    assert u.messages == [] and u.conversations == []


@pytest.mark.parametrize("action", [None, ""])
def test_reaction_action_defaults_to_add(action):
    rec = flat_reaction(action=action)
    assert normalize_reaction(rec).reactions[0][3] == "add"
    del rec["action"]
    assert normalize_reaction(rec).reactions[0][3] == "add"


def test_reaction_remove_and_int_ids():
    u = normalize_reaction(flat_reaction(action="remove", message_id=5, user_id=6, time=str(T0)))
    assert u.reactions == [("5", "6", "thumbs_up", "remove", us(T0), 0)]


def test_reaction_events_differing_only_in_time_or_action_have_different_keys():
    keys = {normalize_reaction(flat_reaction(**kw)).key for kw in ({}, {"time": iso(T0 + 6)}, {"action": "remove"})}
    assert len(keys) == 3


REACTION_BAD = [
    ("missing message_id", {"message_id": None}, "message_id"),
    ("missing user_id", {"user_id": None}, "user_id"),
    ("missing reaction", {"reaction": None}, "reaction"),
    ("missing time", {"time": None}, "time"),
    ("empty reaction", {"reaction": ""}, "reaction"),
    ("float message_id", {"message_id": 1.5}, "message_id"),
    ("bad action", {"action": "like"}, "action"),
    ("int action", {"action": 1}, "action"),
    ("bool action", {"action": False}, "action"),
    ("list action", {"action": ["add"]}, "action"),
    ("unparseable time", {"time": "noon"}, "time"),
    ("epoch ms", {"time": (T0 + 5) * 1000}, "time"),
    ("unknown field", {"emoji": "x"}, "emoji"),
    ("unknown fields: first in sort order", {"zeta": 1, "beta": 2}, "beta"),
]


@pytest.mark.parametrize("name, change, field", REACTION_BAD, ids=[x[0] for x in REACTION_BAD])
def test_reaction_rejects_with_exact_field(name, change, field):
    assert field_of(normalize_reaction, flat_reaction(**change)) == field


# ====================================================================== users rows


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("FALSE", False), (" yes ", True),
     ("no", False), ("t", True), ("F", False), ("1", True), ("0", False)],
)  # fmt: skip
def test_user_retained_values(value, expected):
    u = normalize_user({"user_id": "u1", "retained": value})
    assert u.kind == USER and u.key == "u1" and u.users == [("u1", expected)]


USER_BAD = [
    ("missing user_id", {"retained": True}, "user_id"),
    ("empty user_id", {"user_id": "", "retained": True}, "user_id"),
    ("missing retained", {"user_id": "u1"}, "retained"),
    ("null retained", {"user_id": "u1", "retained": None}, "retained"),
    ("int 2 retained", {"user_id": "u1", "retained": 2}, "retained"),
    ("word retained", {"user_id": "u1", "retained": "maybe"}, "retained"),
    ("float retained", {"user_id": "u1", "retained": 1.0}, "retained"),
    ("unknown field", {"user_id": "u1", "retained": True, "cohort": "a"}, "cohort"),
]


@pytest.mark.parametrize("name, record, field", USER_BAD, ids=[x[0] for x in USER_BAD])
def test_user_rejects_with_exact_field(name, record, field):
    assert field_of(normalize_user, record) == field


# ====================================================================== detect_kind


@pytest.mark.parametrize(
    "record, kind",
    [
        (conv(), CONVERSATION),
        ({"turns": None}, CONVERSATION),
        (flat_message(), MESSAGE),
        (flat_reaction(), REACTION),
        ({"user_id": "u", "retained": True}, USER),
        ({"user_id": "u"}, None),
        ({"role": "user"}, None),  # role without text is no message
        ([], None),
        ("turns", None),
    ],
)
def test_detect_kind(record, kind):
    assert detect_kind(record) == kind


def test_normalizers_table():
    assert contract.NORMALIZERS == {CONVERSATION: normalize_conversation, MESSAGE: normalize_message,
                                    REACTION: normalize_reaction, USER: normalize_user}  # fmt: skip
