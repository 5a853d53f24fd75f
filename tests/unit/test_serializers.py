"""Serializers: the extra types JSON carries, msgpack parity, and the pickle gate."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from asyncq._utils import utcnow_iso
from asyncq.exceptions import SerializationError
from asyncq.serializers import CONTENT_TYPES, Serializers, json_dumps, json_loads

VALUES = {
    "aware datetime": datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=2))),
    "naive datetime": datetime(2026, 3, 29, 2, 30, 1, 500),
    "date": date(2024, 2, 29),
    "time": time(23, 59, 59, 999999),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("3.14159265358979323846264338327950288"),
    "bytes": b"\x00\xff binary",
    "set": {1, 2, 3},
    "nested": {"a": [1, {"b": datetime(2020, 1, 1, tzinfo=UTC)}], "c": None, "d": True, "e": 1.5},
    "unicode": "grüße 👋",
}


@pytest.mark.parametrize("name", ["json", "msgpack"])
@pytest.mark.parametrize("key", sorted(VALUES))
def test_round_trip(name: str, key: str) -> None:
    serializers = Serializers([name])
    content_type, data = serializers.dumps(VALUES[key], name)
    assert content_type == CONTENT_TYPES[name]
    assert serializers.loads(data, content_type) == VALUES[key]


def test_tuples_become_lists_in_json() -> None:
    assert json_loads(json_dumps((1, (2, 3)))) == [1, [2, 3]]


def test_json_tag_shape_is_documented_form() -> None:
    assert (
        json_dumps(uuid.UUID(int=1)) == b'{"__type__":"uuid","value":"00000000-0000-0000-0000-000000000001"}'
    )


def test_plain_dict_with_type_key_is_left_alone() -> None:
    value = {"__type__": "mine", "value": 1, "extra": 2}
    assert json_loads(json_dumps(value)) == value


def test_unencodable_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="object"):
        json_dumps(object())


def test_pickle_only_when_accepted() -> None:
    producer = Serializers(["json"])
    content_type, data = producer.dumps({"x": 1}, "pickle")
    with pytest.raises(SerializationError, match="not accepted"):
        producer.loads(data, content_type)
    assert Serializers(["json", "pickle"]).loads(data, content_type) == {"x": 1}


def test_unknown_serializer_names_known_ones() -> None:
    with pytest.raises(SerializationError, match="known: json, msgpack, pickle"):
        Serializers(["yaml"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [('{"a":1}', {"a": 1}), (' {"a": 1} \n', {"a": 1}), (b"[1,2]", [1, 2]), ("3", 3)],
)
def test_json_loads_accepts_whitespace_around_a_document(text: str | bytes, expected: object) -> None:
    assert json_loads(text) == expected


@pytest.mark.parametrize("text", ['{"a":1} x', '{"a":1}{}', "", "  ", "{", "nope"])
def test_json_loads_rejects_what_is_not_one_document(text: str) -> None:
    with pytest.raises(SerializationError, match="cannot decode JSON"):
        json_loads(text)


def test_utcnow_iso_has_the_isoformat_form() -> None:
    stamp = utcnow_iso()
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None and parsed.utcoffset() is not None
    assert stamp == parsed.astimezone(UTC).isoformat()
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60
