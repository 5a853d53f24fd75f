"""Settings: precedence, environment parsing, typos, loading from objects."""

from __future__ import annotations

import types

import pytest

from asyncq import App
from asyncq.config import SETTINGS, Conf, heartbeat_interval
from asyncq.exceptions import ConfigurationError


def test_defaults_and_attribute_access() -> None:
    conf = Conf(environ={})
    assert conf.task_default_queue == "default"
    assert conf["accept_content"] == ["json"]
    assert Conf(environ={}).accept_content is not conf.accept_content  # defaults are per-Conf copies


def test_precedence_explicit_over_env_over_default() -> None:
    env = {"ASYNCQ_WORKER_CONCURRENCY": "7", "ASYNCQ_BROKER_URL": "redis://env/0"}
    conf = Conf(environ=env)
    assert conf.worker_concurrency == 7
    conf.worker_concurrency = 3
    assert conf.worker_concurrency == 3
    app = App("x", broker="memory://")
    app.conf = Conf(environ=env)
    app.conf.broker_url = "memory://"
    assert app.broker_url == "memory://"


@pytest.mark.parametrize(
    ("var", "raw", "expected"),
    [
        ("task_acks_late", "no", False),
        ("task_track_started", "1", True),
        ("accept_content", "json, msgpack", ["json", "msgpack"]),
        ("accept_content", '["json"]', ["json"]),
        ("result_expires", "none", None),
        ("result_expires", "60", 60.0),
        ("task_routes", '{"a.b": "fast"}', {"a.b": "fast"}),
    ],
)
def test_environment_values_are_parsed(var: str, raw: str, expected: object) -> None:
    conf = Conf(environ={SETTINGS[var].env_var: raw})
    assert conf[var] == expected


def test_bad_environment_value_names_the_variable() -> None:
    conf = Conf(environ={"ASYNCQ_WORKER_CONCURRENCY": "many"})
    with pytest.raises(ConfigurationError, match="ASYNCQ_WORKER_CONCURRENCY='many'"):
        _ = conf.worker_concurrency


def test_typo_suggests_the_setting() -> None:
    conf = Conf(environ={})
    with pytest.raises(ConfigurationError, match="did you mean 'task_default_queue'"):
        conf["task_default_queu"] = "x"
    with pytest.raises(AttributeError, match="unknown setting"):
        _ = conf.not_a_setting


def test_from_object_and_module_path() -> None:
    conf = Conf(environ={})
    conf.from_object(types.SimpleNamespace(task_default_queue="q1", unrelated=1))
    assert conf.task_default_queue == "q1"
    conf.from_object("tests.unit.settings_module")
    assert conf.worker_concurrency == 42
    with pytest.raises(ConfigurationError, match="cannot load configuration"):
        conf.from_object("tests.unit.no_such_module")


def test_app_default_urls_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("ASYNCQ_BROKER_URL", raising=False)
    monkeypatch.delenv("ASYNCQ_RESULT_BACKEND", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    app = App("my app")
    assert app.broker_url == f"sqlite:///{tmp_path}/asyncq/my_app.sqlite3"
    assert app.backend_url == app.broker_url
    monkeypatch.setenv("ASYNCQ_BROKER_URL", "memory://")
    assert App("y").broker_url == "memory://"
    assert App("y").backend_url == "memory://"
    assert App("y", broker="sqlite:///a.db", backend="memory://").backend_url == "memory://"
    assert App("y", broker="redis://h:6379/1").backend_url == "redis://h:6379/1"
    assert App("y", broker="amqp://guest@h//").backend_url == "rpc://"


def test_in_place_edits_of_defaults_persist() -> None:
    conf = Conf(environ={})
    conf.task_routes["tasks.add"] = "fast"
    conf.beat_schedule["tick"] = {"task": "t", "schedule": 1}
    assert conf.task_routes == {"tasks.add": "fast"}
    assert "tick" in conf.beat_schedule
    assert Conf(environ={}).task_routes == {}  # each Conf gets its own copy


def test_one_heartbeat_interval_with_the_old_event_name_as_alias() -> None:
    assert heartbeat_interval(Conf(environ={})) == 2.0
    assert heartbeat_interval(Conf({"worker_heartbeat_interval": 0.5}, environ={})) == 0.5
    # The old name alone still sets it; beside the new name, the new name wins.
    assert heartbeat_interval(Conf({"event_heartbeat_interval": 3}, environ={})) == 3.0
    both = Conf({"event_heartbeat_interval": 3, "worker_heartbeat_interval": 1}, environ={})
    assert heartbeat_interval(both) == 1.0
