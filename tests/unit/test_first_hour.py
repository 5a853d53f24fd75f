"""What a new user meets first: env-var typos, store paths, redacted URLs, argument errors, beat checks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from asyncq import App, crontab
from asyncq._utils import redact_url
from asyncq.app import default_store_url, resolve_sqlite_url
from asyncq.config import OTHER_ENV_VARS, SETTINGS, unknown_env_vars, warn_unknown_env
from asyncq.exceptions import ConfigurationError, SerializationError
from asyncq.scheduler import check_schedule

HERE = Path(__file__).resolve().parent


# -- environment variables ---------------------------------------------------------------------


def test_unknown_asyncq_variables_are_found_with_the_closest_name() -> None:
    environ = {
        "ASYNCQ_BROKER_ULR": "redis://",
        "ASYNCQ_WORKER_CONCURRENCY": "5",  # a setting
        "ASYNCQ_APP": "tasks:app",  # a command-line option
        "ASYNCQ_TEST_REDIS_URL": "redis://",  # the test suite's own
        "ASYNCQ_ZZZ": "1",
        "PATH": "/bin",
    }
    assert unknown_env_vars(environ) == [("ASYNCQ_BROKER_ULR", "ASYNCQ_BROKER_URL"), ("ASYNCQ_ZZZ", None)]


def test_unknown_variables_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncq.config"):
        warn_unknown_env({"ASYNCQ_RESULT_BACKENDS": "redis://"})
    assert caplog.messages == [
        "environment variable ASYNCQ_RESULT_BACKENDS is not an asyncq setting and is ignored; "
        "did you mean ASYNCQ_RESULT_BACKEND?"
    ]


def test_every_cli_environment_variable_is_known() -> None:
    import re

    source = (HERE.parents[1] / "asyncq" / "cli.py").read_text()
    settings = {setting.env_var for setting in SETTINGS.values()}
    for name in set(re.findall(r'envvar="([A-Z_]+)"', source)):
        assert name in settings | OTHER_ENV_VARS, name


# -- where the store is ----------------------------------------------------------------------------


def test_the_default_store_is_in_the_users_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_store_url("my app") == f"sqlite:///{Path.home()}/.local/state/asyncq/my_app.sqlite3"
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_store_url("myapp") == "sqlite:////srv/state/asyncq/myapp.sqlite3"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///asyncq.db", "sqlite:////proj/asyncq.db"),
        ("sqlite:///data/q.db?visibility_timeout=2", "sqlite:////proj/data/q.db?visibility_timeout=2"),
        ("sqlite:///../q.db", "sqlite:////q.db"),
        ("sqlite:////abs/q.db", "sqlite:////abs/q.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("redis://localhost/0", "redis://localhost/0"),
        ("memory://", "memory://"),
    ],
)
def test_relative_sqlite_paths_resolve_against_the_root(url: str, expected: str) -> None:
    assert resolve_sqlite_url(url, Path("/proj")) == expected


def test_special_characters_of_the_root_directory_are_encoded(tmp_path: Path) -> None:
    from asyncq.brokers.sqlite import SQLiteBroker

    root = tmp_path / "my 100% #1 dir"
    url = resolve_sqlite_url("sqlite:///sub%20dir/q.db?poll_interval=1", root)
    assert SQLiteBroker(url).path == root / "sub dir" / "q.db"


def test_an_apps_relative_store_is_next_to_the_file_that_made_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    app = App("rel", broker="sqlite:///q.db")
    assert app.root_path == HERE
    assert app.broker_url == f"sqlite:///{HERE / 'q.db'}"
    assert app.backend_url == app.broker_url


# -- URLs in logs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("amqp://guest:guest@host:5672/vhost", "amqp://guest:***@host:5672/vhost"),
        ("redis://localhost/0?password=secret&db=1", "redis://localhost/0?password=***&db=1"),
        (
            "redis+sentinel://u:p@a:1,b:2/m?sentinel_password=s",
            "redis+sentinel://u:***@a:1,b:2/m?sentinel_password=***",
        ),
        ("sqlite:///x.db?visibility_timeout=2", "sqlite:///x.db?visibility_timeout=2"),
        ("memory://", "memory://"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- arguments that cannot be sent ------------------------------------------------------------------

app = App("first-hour", broker="memory://")


@app.task
async def store(path: str, when: object, *, tags: object = None) -> None:
    return None


@app.task(bind=True)
def bound(self: object, first: int, second: object) -> None:
    return None


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "named"),
    [
        (store, ("/tmp/x", object()), {}, "argument 'when' (position 1) of type object"),
        (store, ("/tmp/x", 1), {"tags": {1, 2, 1j}}, "keyword argument 'tags' of type set"),
        (bound, (1, 2j), {}, "argument 'second' (position 1) of type complex"),
    ],
)
def test_an_unserializable_argument_names_the_task_and_the_argument(
    task: object, args: tuple[object, ...], kwargs: dict[str, object], named: str
) -> None:
    message = task.build_message(args, kwargs)  # type: ignore[attr-defined]
    with pytest.raises(SerializationError) as caught:
        app.outgoing(message)
    text = str(caught.value)
    assert text.startswith(
        f"cannot send task {task.name!r}: {named} cannot be encoded by the json serializer"
    )  # type: ignore[attr-defined]
    assert "serializer='pickle'" in text


def test_an_unserializable_argument_of_a_task_sent_by_name_names_its_position() -> None:
    message = store.build_message(("ok", lambda: 1))
    message.task = "elsewhere.task"
    with pytest.raises(
        SerializationError, match=r"task 'elsewhere.task': argument \(position 1\) of type function"
    ):
        app.outgoing(message)


# -- schedules and the beat ---------------------------------------------------------------------------


def test_a_whole_cron_line_is_read_as_from_string() -> None:
    assert crontab("*/15 * * * *") == crontab(minute="*/15")
    assert crontab("30 7 1 * mon", tz="Europe/Berlin") == crontab.from_string(
        "30 7 1 * mon", tz="Europe/Berlin"
    )
    assert crontab("1, 2, 3") == crontab(minute=[1, 2, 3])  # spaces after commas are still one field


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": "* * *"}, "looks like a cron line with 3 fields; crontab.from_string() takes five"),
        ({"minute": "0 7 * * 1", "hour": 3}, "mixes a cron line with other fields"),
        ({"minute": "*/61"}, "step 61 is larger than the field's 60 values (0-59)"),
        ({"hour": "0-23/25"}, "step 25 is larger than the field's 24 values (0-23)"),
        ({"day_of_week": "*/8"}, "step 8 is larger than the field's 7 values (0-6)"),
    ],
)
def test_bad_crontabs_say_what_to_do(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        crontab(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_the_widest_step_is_still_accepted() -> None:
    assert crontab(minute="*/60") == crontab(minute=0)


def test_a_cron_string_as_schedule_points_to_from_string() -> None:
    beat = App("cron-string", broker="memory://")
    beat.conf.beat_schedule = {"e": {"task": "t", "schedule": "*/5 * * * *"}}
    with pytest.raises(ConfigurationError, match=r"use crontab.from_string\('\*/5 \* \* \* \*'\)"):
        beat.schedule.static_entries()


def test_check_schedule_wants_registered_tasks_and_suggests_one() -> None:
    beat = App("beat-check", broker="memory://")

    @beat.task(name="reports.daily")
    async def daily() -> None:
        return None

    beat.conf.beat_schedule = {"d": {"task": "reports.dayly", "schedule": 60}}
    with pytest.raises(ConfigurationError) as caught:
        check_schedule(beat)
    assert str(caught.value) == (
        "periodic entry 'd': task 'reports.dayly' is not registered in app 'beat-check'; "
        "did you mean 'reports.daily'?"
    )
    beat.conf.beat_schedule = {"d": {"task": "zzz", "schedule": 60}}
    with pytest.raises(ConfigurationError, match=r"registered: reports\.daily$"):
        check_schedule(beat)
    beat.conf.beat_schedule = {"d": {"task": "reports.daily", "schedule": 60}}
    check_schedule(beat)
