"""Unique and fair task declarations: the key of a call, checked once when the task is made."""

from __future__ import annotations

from typing import Any

import pytest

from asyncq import App
from asyncq.exceptions import ConfigurationError
from asyncq.fair import FAIR_KEY_HEADER, FAIR_WEIGHT_HEADER, fair_fields
from asyncq.keys import key_function


def user_task(user: str, /, n: int = 1, *, flag: bool = False, **extra: Any) -> None: ...


def test_key_function_finds_an_argument_however_it_is_passed() -> None:
    by_user = key_function("t", "fair_key", user_task, "user", bind=False)
    assert by_user(("ann",), {}) == "ann"
    by_n = key_function("t", "fair_key", user_task, "n", bind=False)
    assert by_n(("ann", 5), {}) == "5"
    assert by_n(("ann",), {"n": 7}) == "7"
    assert by_n(("ann",), {}) == "1"  # the default
    by_flag = key_function("t", "fair_key", user_task, "flag", bind=False)
    assert by_flag(("ann", 5, True), {}) == "False"  # keyword-only: never taken from args
    by_extra = key_function("t", "fair_key", user_task, "tenant", bind=False)  # through **extra
    assert by_extra(("ann",), {"tenant": "acme"}) == "acme"
    assert (
        key_function("t", "fair_key", user_task, lambda user, **_: user.upper(), bind=False)(("ann",), {})
        == "ANN"
    )


def test_key_function_skips_self_of_a_bound_task() -> None:
    def bound(self: Any, tenant: str) -> None: ...

    assert key_function("t", "unique_key", bound, "tenant", bind=True)(("acme",), {}) == "acme"


def test_a_key_naming_no_argument_is_a_configuration_error() -> None:
    def plain(a: int, b: int) -> None: ...

    with pytest.raises(ConfigurationError, match=r"fair_key='c' names no argument; arguments: a, b"):
        key_function("t", "fair_key", plain, "c", bind=False)
    with pytest.raises(ConfigurationError, match="must be an argument name or a callable"):
        key_function("t", "fair_key", plain, 3, bind=False)  # type: ignore[arg-type]


def test_unique_key_of_equal_calls_is_equal() -> None:
    app = App("specs", broker="memory://")

    @app.task(unique=True)
    async def job(a: int, b: int = 0, **kw: Any) -> None: ...

    spec = job.unique
    assert spec is not None
    assert spec.key(job.name, (1,), {"b": 2, "c": 3}) == spec.key(job.name, (1,), {"c": 3, "b": 2})
    assert spec.key(job.name, (1,), {}) != spec.key(job.name, (2,), {})
    assert spec.key(job.name, (1,), {}).startswith(f"{job.name}:")


def test_fair_messages_carry_key_and_weight() -> None:
    app = App("specs", broker="memory://")

    @app.task(fair_key="tenant", fair_weights={"big": 3})
    async def report(tenant: str, n: int) -> None: ...

    small = report.build_message(("small", 1))
    big = report.build_message(("big", 1))
    assert small.headers == {FAIR_KEY_HEADER: "small"}
    assert big.headers == {FAIR_KEY_HEADER: "big", FAIR_WEIGHT_HEADER: 3}
    assert (app.outgoing(small).fair_key, app.outgoing(small).fair_weight) == ("small", 1)
    assert (app.outgoing(big).fair_key, app.outgoing(big).fair_weight) == ("big", 3)
    assert app.outgoing(app.stand_in_task("plain").build_message(())).fair_key is None
    weights = [fair_fields({"fair_key": "k", "fair_weight": v})[1] for v in (None, "3", True, 0, 5, 10**6)]
    assert weights == [1, 1, 1, 1, 5, 1000]
    assert fair_fields({}) == (None, 1)


def test_bad_fair_declarations_are_configuration_errors() -> None:
    app = App("specs", broker="memory://")
    with pytest.raises(ConfigurationError, match="fair_weights needs fair_key="):

        @app.task(fair_weights={"a": 2})
        async def a() -> None: ...

    with pytest.raises(ConfigurationError, match=r"fair_weights\['x'\] must be an integer 1-1000"):

        @app.task(fair_key="t", fair_weights={"x": 0})
        async def b(t: str) -> None: ...
