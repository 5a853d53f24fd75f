"""Log lines and error messages name an exception's type when its message is empty."""

from __future__ import annotations

import asyncio

from asyncq._redis import translate_error
from asyncq._utils import describe_error
from asyncq.exceptions import BrokerConnectionError, BrokerError


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("broken __str__")


def test_empty_message_names_the_type() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(asyncio.CancelledError()) == "CancelledError"
    assert describe_error(Unprintable()) == "Unprintable"


def test_message_is_kept_and_type_added_on_request() -> None:
    assert describe_error(ValueError("bad value")) == "bad value"
    assert describe_error(ValueError("bad value"), with_type=True) == "ValueError: bad value"
    assert describe_error(OSError(), with_type=True) == "OSError"


def test_translated_client_errors_name_an_empty_timeout() -> None:
    error = translate_error(TimeoutError(), "lease renewal", BrokerConnectionError, BrokerError)
    text = str(error)
    assert "TimeoutError" in text
    assert not text.endswith(": ") and ": )" not in text, text
