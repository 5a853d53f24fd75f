"""The shared driver option parser (asyncq/_options.py): conversion, defaults and one-line errors."""

from __future__ import annotations

import pytest

from asyncq._amqp import client_url, split_amqp_url
from asyncq._options import (
    Option,
    boolean,
    choice,
    integer,
    items,
    option_error,
    optional,
    parse_options,
    seconds,
    text,
)
from asyncq.backends import backend_from_url
from asyncq.brokers import broker_from_url
from asyncq.brokers.rabbitmq import BROKER_OPTIONS
from asyncq.exceptions import ConfigurationError, MissingDependencyError
from tests.services import missing

NAME = Option("name", text, "asyncq")
COUNT = Option("count", integer(1), 5)
TIMEOUT = Option("timeout", seconds, 2.5)
MODE = Option("mode", choice("fast", "safe"), "safe")
FLAG = Option("flag", boolean, False)
LIMIT = Option("limit", optional(integer(0)), None)
PASSWORD = Option("password", text, "")
SPECS = (NAME, COUNT, TIMEOUT, MODE, FLAG, LIMIT, PASSWORD)


def test_defaults_fill_what_is_not_given() -> None:
    settings = parse_options("", {}, SPECS, what="test driver")
    assert settings[NAME] == "asyncq" and settings[COUNT] == 5 and settings[TIMEOUT] == 2.5
    assert settings[LIMIT] is None and not settings.given(COUNT)


def test_query_strings_are_converted_and_keywords_win() -> None:
    settings = parse_options(
        "count=7&timeout=0.5&mode=fast&flag=yes&limit=3", {"count": 9}, SPECS, what="test driver"
    )
    assert (settings[COUNT], settings[TIMEOUT], settings[MODE], settings[FLAG], settings[LIMIT]) == (
        9,
        0.5,
        "fast",
        True,
        3,
    )
    assert settings.given(COUNT) and settings.given(FLAG)


def test_unknown_option_suggests_the_closest_and_lists_the_known() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_options("tiemout=1", {}, SPECS, what="test driver")
    message = str(caught.value)
    assert message.startswith("unknown test driver option 'tiemout' (did you mean 'timeout'?); known: ")
    assert "count, flag, limit, mode, name, password, timeout" in message and "\n" not in message


def test_several_unknown_options_are_named_together() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown test driver options 'a', 'b'; known: "):
        parse_options("a=1", {"b": 2}, SPECS, what="test driver")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"count": 0}, r"test driver option count=0: expected an integer >= 1"),
        ({"count": "x"}, r"count='x': expected an integer >= 1"),
        ({"count": True}, r"count=True: expected an integer >= 1"),
        ({"timeout": 0}, r"timeout=0: expected a number > 0"),
        ({"timeout": "nan"}, r"timeout='nan': expected a number > 0"),
        ({"mode": "slow"}, r"mode='slow': expected one of fast, safe"),
        ({"flag": "maybe"}, r"flag='maybe': expected a boolean"),
        ({"name": 3}, r"name=3: expected a string"),
    ],
)
def test_bad_values_are_refused_in_one_line(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        parse_options("", options, SPECS, what="test driver")
    assert "\n" not in str(caught.value)


def test_a_secret_value_is_not_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_options("", {"password": 1234}, SPECS, what="test driver")
    assert "1234" not in str(caught.value) and "password='***'" in str(caught.value)


def test_passthrough_options_are_returned_as_strings_and_shared_ones_skipped() -> None:
    settings = parse_options(
        "heartbeat=30&theirs=1&count=2",
        {"verify": True},
        SPECS,
        what="test driver",
        passthrough=("heartbeat", "verify"),
        shared=("theirs",),
    )
    assert settings.passthrough == {"heartbeat": "30", "verify": "1"} and settings[COUNT] == 2


def test_amqp_url_keeps_client_options_and_defaults_reconnect_interval() -> None:
    url, settings = split_amqp_url(
        "amqp://u:p@host/vh?heartbeat=30&queue_type=quorum",
        {"max_deliveries": "4"},
        BROKER_OPTIONS,
        what="amqp broker",
    )
    assert "heartbeat=30" in url and "reconnect_interval=1.0" in url and "queue_type" not in url
    assert settings["queue_type"] == "quorum" and settings["max_deliveries"] == 4
    kept = client_url("amqp://host/?queue_type=quorum&reconnect_interval=3")
    assert kept == "amqp://host/?reconnect_interval=3"
    with pytest.raises(ConfigurationError, match="is not an amqp:// or amqps:// URL"):
        client_url("redis://host/")


def test_bounds_and_lists_name_what_is_expected() -> None:
    specs = (Option("size", integer(1, 10), 5), Option("steps", items(integer(0, 9)), (0,)))
    assert parse_options("steps=1,3", {}, specs, what="test driver")["steps"] == (1, 3)
    with pytest.raises(ConfigurationError, match=r"size='11': expected an integer between 1 and 10$"):
        parse_options("size=11", {}, specs, what="test driver")
    with pytest.raises(ConfigurationError, match=r"steps='1,x': expected a comma-separated list of an"):
        parse_options("steps=1,x", {}, specs, what="test driver")
    with pytest.raises(ConfigurationError, match=r"^test driver option secret_key='\*\*\*': too short$"):
        raise option_error("test driver", "secret_key", "hunter2", "too short")


#: One URL per driver that takes ``connect_timeout``; building a driver opens no connection.
DRIVER_URLS = [
    ("broker", "redis://127.0.0.1:1/0"),
    ("backend", "redis://127.0.0.1:1/0"),
    ("broker", "amqp://guest:guest@127.0.0.1:1/"),
    ("backend", "rpc://"),
    ("broker", "postgresql://127.0.0.1:1/db"),
    ("backend", "postgresql://127.0.0.1:1/db"),
    ("backend", "mysql://root@127.0.0.1:1/test"),
    ("broker", "sqs://?region=us-east-1"),
    ("broker", "kafka://127.0.0.1:1"),
]


def _build(kind: str, url: str, **options: object) -> object:
    try:
        return (broker_from_url if kind == "broker" else backend_from_url)(url, **options)
    except MissingDependencyError as exc:  # the driver's extra is not installed here (fails in CI)
        missing(str(exc))


@pytest.mark.parametrize(("kind", "url"), DRIVER_URLS)
def test_every_driver_reports_option_mistakes_alike(kind: str, url: str) -> None:
    with pytest.raises(ConfigurationError) as unknown:
        _build(kind, url, connect_timeot=1)
    assert " option 'connect_timeot' (did you mean 'connect_timeout'?); known: " in str(unknown.value)
    with pytest.raises(ConfigurationError) as bad:
        _build(kind, url, connect_timeout="soon")
    assert " option connect_timeout='soon': expected a number" in str(bad.value)
    assert "\n" not in str(unknown.value) + str(bad.value)


def test_a_secret_option_value_is_never_shown() -> None:
    with pytest.raises(ConfigurationError, match=r"aws_secret_access_key='\*\*\*': expected a string"):
        _build("broker", "sqs://?region=us-east-1", aws_access_key_id="a", aws_secret_access_key=12345)
