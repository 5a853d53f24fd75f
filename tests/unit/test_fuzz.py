"""Hostile input, generated: the message decoder, signatures, CLI JSON options and cron strings.

Every input ends in a value or in the one clean error each layer promises (SerializationError,
ConfigurationError, a usage exit); nothing raises anything else, and nothing hangs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncq.cli import parse_json
from asyncq.config import Conf
from asyncq.exceptions import ConfigurationError, SerializationError
from asyncq.message import Message, decode_message, encode_message
from asyncq.schedules import crontab
from asyncq.security import MessageSecurity
from asyncq.serializers import Serializers

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = "f" * 32

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "v", "id", "task", "args", "kwargs", "queue", "retries", "eta", "expires", "priority", "headers",
    "root_id", "parent_id", "group_id", "callbacks", "errbacks", "chain", "chord", "ignore_result",
    "content_type", "body", "body_encoding", "encryption",
]  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/x-msgpack", "application/x-python-serialize", "text/plain", ""]
)
envelopes = st.fixed_dictionaries(
    {
        "v": st.just(1) | json_values,
        "id": st.text(min_size=1, max_size=10) | json_values,
        "task": st.text(min_size=1, max_size=10) | json_values,
    },
    optional={name: json_values for name in FIELDS[3:]} | {"content_type": CONTENT_TYPES},
)


def _valid(**fields: Any) -> bytes:
    return encode_message(Message(id="id-1", task="t.add", args=[1, 2], **fields), Serializers())


def _hostile_bodies() -> st.SearchStrategy[bytes]:
    valid = _valid(headers={"h": 1}, callbacks=[{"task": "t"}])
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        envelopes.map(lambda e: json.dumps(e).encode()),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # truncated
        st.integers(1, 300_000).map(lambda n: b'{"v":1,"id":"a","task":"t","args":' + b"[" * n),
        st.integers(1, 5000).map(lambda n: b'{"v":1,"id":"a","task":"t","args":[' + b"9" * n + b"]}"),
        st.sampled_from([b'{"v":1,"id":"a","task":"t","args":[1e999999]}', b'{"v":1e400,"id":"a"}']),
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
            lambda p: valid[: p[0]] + bytes([p[1]]) + valid[p[0] + 1 :]
        ),  # one byte changed
    )


def _signed(body: bytes) -> bytes:
    return MessageSecurity.from_conf(Conf({"security_key": KEY}, environ={})).seal_outgoing(body, "t")


@FUZZ
@given(_hostile_bodies())
def test_decoder_returns_a_message_or_raises_serialization_error(body: bytes) -> None:
    serializers = Serializers(["json", "msgpack"])
    try:
        message = decode_message(body, serializers)
    except SerializationError as exc:
        message = None
        error = str(exc)
    if message is None:
        assert error
    else:
        assert isinstance(message.id, str) and isinstance(message.task, str)
        assert isinstance(message.args, list) and isinstance(message.kwargs, dict)


@FUZZ
@given(_hostile_bodies(), st.booleans())
def test_open_incoming_with_signing_on(body: bytes, sign: bool) -> None:
    security = MessageSecurity.from_conf(Conf({"security_key": KEY, "message_max_depth": 16}, environ={}))
    data = _signed(body) if sign and body.startswith(b"{") and not body.startswith(b"{}") else body
    error = "accepted"
    try:
        security.open_incoming(data, Serializers())
    except SerializationError as exc:
        error = str(exc)
    assert error


@FUZZ
@given(st.integers(0, 400), st.integers(0, 255))
def test_any_changed_byte_of_a_signed_message_is_refused_or_harmless(position: int, value: int) -> None:
    signed = _signed(_valid())
    security = MessageSecurity.from_conf(Conf({"security_key": KEY}, environ={}))
    position %= len(signed)
    changed = signed[:position] + bytes([value]) + signed[position + 1 :]
    try:
        message = security.open_incoming(changed, Serializers())
    except SerializationError:
        return
    assert changed == signed  # only the unchanged message may verify
    assert message.args == [1, 2]


@FUZZ
@given(
    st.one_of(
        st.text(max_size=60), json_values.map(json.dumps), st.integers(1, 100_000).map(lambda n: "[" * n)
    )
)
def test_cli_json_options_parse_or_exit_cleanly(text: str) -> None:
    try:
        value: Any = parse_json("--args", text, list)
    except typer.Exit as exc:
        value = exc.exit_code
    assert isinstance(value, list) or value == 2


def test_cli_json_nesting_and_huge_numbers_exit_cleanly() -> None:
    for text in ("[" * 100_000, "[" + "9" * 5000 + "]"):
        with pytest.raises(typer.Exit):
            parse_json("--args", text, list)


CRON_ATOMS = st.sampled_from(
    ["*", "*/", "-", ",", "/", "0", "1", "5", "7", "12", "23", "31", "59", "60", "99", "mon", "sun", "jan",
     "L", "?", " ", "#", "-1", "1-5", "5-1", "*/0", "999999999999"]
)  # fmt: skip


@FUZZ
@given(st.one_of(st.text(max_size=30), st.lists(CRON_ATOMS, max_size=12).map("".join),
                 st.lists(st.lists(CRON_ATOMS, min_size=1, max_size=3).map("".join), min_size=5, max_size=5)
                 .map(" ".join)))  # fmt: skip
def test_cron_strings_parse_or_raise_configuration_error(text: str) -> None:
    try:
        schedule = crontab(text)
    except ConfigurationError as exc:
        assert str(exc)  # noqa: PT017 - the message is the point: a clear one, never empty
        return
    after = datetime(2026, 1, 1, tzinfo=UTC)
    fire = schedule.next_after(after)
    assert fire > after
