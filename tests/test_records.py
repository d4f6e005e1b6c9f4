"""The contract's reference validator, record by record."""

import pytest

from rluf.data.contract import (
    Limits,
    RecordError,
    detect_kind,
    normalize_conversation,
    normalize_message,
    normalize_reaction,
    normalize_user,
    parse_time,
)

T0 = "2026-01-05T10:00:00Z"
T0_US = 1_767_607_200_000_000


def conv(**over):
    rec = {
        "conversation_id": "c1",
        "user_id": "u1",
        "category": "coding",
        "policy": "arm-a",
        "turns": [
            {"role": "user", "text": "hi", "time": T0},
            {"role": "assistant", "text": "hello!", "time": "2026-01-05T10:00:05Z",
             "reactions": [{"name": "love", "time": "2026-01-05T10:01:00Z"}]},
        ],
    }  # fmt: skip
    rec.update(over)
    return rec


def field_of(fn, record, limits=Limits()):
    with pytest.raises(RecordError) as e:
        fn(record, limits)
    return e.value.field


def test_conversation_defaults():
    u = normalize_conversation(conv())
    assert u.kind == "conversation" and u.key == "c1"
    (c,) = u.conversations
    assert c[:6] == ("c1", "u1", T0_US, "coding", "arm-a", 2)  # started_at defaults to the first turn
    m0, m1 = u.messages
    assert (m0[0], m0[2], m0[3], m0[5]) == ("c1:0", None, 0, "user")  # default id, no parent
    assert (m1[0], m1[2], m1[3]) == ("c1:1", "c1:0", 1)  # parent: the previous turn
    (r,) = u.reactions
    assert r == ("c1:1", "u1", "love", "add", T0_US + 60_000_000, 0)  # reacting user: the conversation's


def test_explicit_ids_parents_and_extras_are_kept():
    rec = conv(source="web")
    rec["turns"][0].update(message_id="m-a", lang="en")
    rec["turns"][1].update(message_id="m-b", parent_id="")  # "" = no parent
    u = normalize_conversation(rec)
    assert u.conversations[0][6] == '{"source":"web"}'
    assert u.messages[0][0] == "m-a" and u.messages[0][10] == '{"lang":"en"}'
    assert u.messages[1][2] is None


def test_integer_ids_are_text_and_empty_optionals_are_absent():
    u = normalize_conversation(conv(conversation_id=42, category="", policy=None))
    assert u.key == "42" and u.conversations[0][3] is None and u.conversations[0][4] is None


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.pop("conversation_id"), "conversation_id"),
        (lambda r: r.update(conversation_id=""), "conversation_id"),
        (lambda r: r.update(user_id=1.5), "user_id"),
        (lambda r: r.update(turns=[]), "turns"),
        (lambda r: r.update(turns="hi"), "turns"),
        (lambda r: r["turns"].append("x"), "turns[2]"),
        (lambda r: r["turns"][1].update(role="bot"), "turns[1].role"),
        (lambda r: r["turns"][1].pop("role"), "turns[1].role"),
        (lambda r: r["turns"][0].update(text=None), "turns[0].text"),
        (lambda r: r["turns"][0].update(text=5), "turns[0].text"),
        (lambda r: r["turns"][0].update(time="yesterday"), "turns[0].time"),
        (lambda r: r["turns"][0].update(time=1_767_607_200_000), "turns[0].time"),  # milliseconds
        (lambda r: r["turns"][0].update(time=True), "turns[0].time"),
        (lambda r: r["turns"][1].update(message_id="dup"), None),  # fine alone
        (lambda r: r["turns"][1]["reactions"][0].update(time="2026-01-05T09:00:00Z"), "turns[1].reactions[0].time"),
        (lambda r: r["turns"][1]["reactions"][0].update(action="undo"), "turns[1].reactions[0].action"),
        (lambda r: r["turns"][1]["reactions"][0].pop("name"), "turns[1].reactions[0].name"),
        (lambda r: r["turns"][1]["reactions"][0].update(why="x"), "turns[1].reactions[0].why"),
        (lambda r: r["turns"][1].update(reactions={"love": 1}), "turns[1].reactions"),
        (lambda r: r.update(started_at="2026-01-05T11:00:00Z"), "started_at"),
    ],
)
def test_conversation_errors_name_the_field(mutate, field):
    rec = conv()
    mutate(rec)
    if field is None:
        normalize_conversation(rec)
        return
    assert field_of(normalize_conversation, rec) == field


def test_duplicate_message_id_inside_a_conversation():
    rec = conv()
    rec["turns"][0]["message_id"] = rec["turns"][1]["message_id"] = "same"
    assert field_of(normalize_conversation, rec) == "turns[1].message_id"
    rec = conv()
    rec["turns"][1]["message_id"] = "c1:0"  # collides with turn 0's default id
    assert field_of(normalize_conversation, rec) == "turns[1].message_id"


def test_limits():
    assert field_of(normalize_conversation, conv(), Limits(max_text_chars=3)) == "turns[1].text"
    assert field_of(normalize_conversation, conv(), Limits(max_turns=1)) == "turns"
    assert field_of(normalize_conversation, conv(user_id="u" * 9), Limits(max_id_chars=8)) == "user_id"
    rec = conv()
    rec["turns"][1]["reactions"] *= 3
    assert field_of(normalize_conversation, rec, Limits(max_reactions=2)) == "turns[1].reactions"


def test_not_an_object():
    assert field_of(normalize_conversation, [1, 2]) == "<record>"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-01-05T10:00:00Z", T0_US),
        ("2026-01-05T12:00:00+02:00", T0_US),
        ("2026-01-05 10:00:00", T0_US),  # naive = UTC
        ("2026-01-05T10:00:00.25Z", T0_US + 250_000),
        (1_767_607_200, T0_US),
        (1_767_607_200.5, T0_US + 500_000),
        ("1767607200", T0_US),  # digits in a string (CSV)
    ],
)
def test_parse_time(value, expected):
    assert parse_time(value, "t") == expected


@pytest.mark.parametrize("value", ["1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "05/01/2026", float("nan"), [1]])
def test_parse_time_rejects(value):
    with pytest.raises(RecordError):
        parse_time(value, "t")


def test_flat_message_reaction_user():
    m = normalize_message({"message_id": "m1", "conversation_id": "c", "user_id": "u", "role": "assistant",
                           "text": "x", "time": T0, "turn_index": "3", "lang": "en"})  # fmt: skip
    assert m.key == "m1" and m.messages[0][3] == 3 and m.messages[0][10] == '{"lang":"en"}'
    assert field_of(normalize_message, {"message_id": "m1", "conversation_id": "c", "user_id": "u", "role": "user",
                                        "text": "x", "time": T0, "turn_index": -1}) == "turn_index"  # fmt: skip
    r = normalize_reaction({"message_id": "m1", "user_id": "u", "reaction": "+1", "time": T0})
    assert r.reactions[0] == ("m1", "u", "+1", "add", T0_US, 0)
    assert field_of(normalize_reaction, {"message_id": "m1", "user_id": "u", "reaction": "+1", "time": T0,
                                         "action": "delete"}) == "action"  # fmt: skip
    assert field_of(normalize_reaction, {"message_id": "m1", "user_id": "u", "reaction": "+1", "time": T0,
                                         "extra": 1}) == "extra"  # fmt: skip
    assert normalize_user({"user_id": "u", "retained": "False"}).users == [("u", False)]
    assert field_of(normalize_user, {"user_id": "u", "retained": "maybe"}) == "retained"


def test_detect_kind():
    assert detect_kind(conv()) == "conversation"
    assert detect_kind({"role": "user", "text": "x"}) == "message"
    assert detect_kind({"reaction": "love"}) == "reaction"
    assert detect_kind({"retained": True}) == "user"
    assert detect_kind({"foo": 1}) is None and detect_kind([]) is None
