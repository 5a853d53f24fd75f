"""The message envelope: round trips, the wire shape other languages rely on, and bad input."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncq.exceptions import SerializationError
from asyncq.message import SENT_AT, Message, decode_message, encode_message
from asyncq.serializers import Serializers, json_dumps

JSON_ONLY = Serializers(["json"])
ALL = Serializers(["json", "msgpack", "pickle"])


def full_message(**kw: object) -> Message:
    base: dict[str, object] = {
        "id": "6f1c6f0e-0000-4000-8000-000000000001",
        "task": "tasks.add",
        "args": [1, "two", [3]],
        "kwargs": {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
        "queue": "fast",
        "retries": 2,
        "eta": 1_800_000_000.5,
        "expires": 1_800_000_100.0,
        "priority": 7,
        "headers": {"trace": "abc"},
        "root_id": "root",
        "parent_id": "parent",
        "group_id": "group",
        "callbacks": [{"task": "tasks.mul", "args": [2]}],
        "errbacks": [{"task": "tasks.log"}],
        "chain": [{"task": "tasks.next"}],
        "chord": {"group_id": "g", "size": 3},
        "ignore_result": True,
    }
    base.update(kw)
    return Message(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/x-msgpack", "application/x-python-serialize"]
)
def test_round_trip_every_field(content_type: str) -> None:
    message = full_message(content_type=content_type)
    assert decode_message(encode_message(message, ALL), ALL) == message


def test_json_envelope_is_plain_json_with_inline_args() -> None:
    wire = json.loads(encode_message(full_message(), JSON_ONLY))
    assert wire["v"] == 1
    assert wire["task"] == "tasks.add"
    assert wire["args"] == [1, "two", [3]]
    assert wire["kwargs"]["when"] == {"__type__": "datetime", "value": "2026-01-02T03:04:05+00:00"}
    assert wire["eta"] == "2027-01-15T08:00:00.500000+00:00"
    assert "body" not in wire


def test_binary_serializer_puts_args_in_base64_body() -> None:
    wire = json.loads(encode_message(full_message(content_type="application/x-msgpack"), ALL))
    assert "args" not in wire
    assert wire["body_encoding"] == "base64"
    assert base64.b64decode(wire["body"])


def test_message_written_by_hand_decodes_with_defaults() -> None:
    # What a producer in another language writes: the minimum the protocol requires.
    raw = b'{"id": "abc", "task": "tasks.add", "args": [2, 3], "eta": "2030-01-01T00:00:00Z"}'
    message = decode_message(raw, JSON_ONLY)
    assert (message.id, message.task, message.args, message.kwargs) == ("abc", "tasks.add", [2, 3], {})
    assert message.queue == "default" and message.retries == 0
    assert message.eta == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


def test_epoch_numbers_accepted_for_times() -> None:
    message = decode_message(
        b'{"id": "a", "task": "t", "eta": 1700000000, "expires": 1700000001.5}', JSON_ONLY
    )
    assert (message.eta, message.expires) == (1700000000.0, 1700000001.5)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\xff\xfe not json", "cannot decode JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"task": "t"}', "'id'"),
        (b'{"id": "a"}', "'task'"),
        (b'{"id": "a", "task": ""}', "non-empty"),
        (b'{"id": "a", "task": "t", "v": 99}', "version 99"),
        (b'{"id": "a", "task": "t", "args": {"x": 1}}', "'args' must be a list"),
        (b'{"id": "a", "task": "t", "eta": "tomorrow"}', "ISO 8601"),
        (b'{"id": "a", "task": "t", "body": "!!", "content_type": "application/x-msgpack"}', "base64"),
        (b'{"id": "a", "task": "t", "content_type": "application/x-msgpack"}', "has no 'body'"),
        (b'{"id": "a", "task": "t", "retries": "two"}', "field 'retries' has the wrong type"),
        (b'{"id": "a", "task": "t", "priority": [9]}', "field 'priority' has the wrong type"),
        (b'{"id": "a", "task": "t", "headers": 5}', "field 'headers' has the wrong type"),
    ],
)
def test_bad_messages_raise_clear_errors(raw: bytes, fragment: str) -> None:
    with pytest.raises(SerializationError, match=None) as info:
        decode_message(raw, ALL)
    assert fragment in str(info.value)


def test_pickle_refused_unless_accepted() -> None:
    wire = encode_message(full_message(content_type="application/x-python-serialize"), ALL)
    with pytest.raises(SerializationError, match="not accepted"):
        decode_message(wire, JSON_ONLY)


def _reference_envelope(message: Message) -> bytes:
    """The envelope as the general encoder writes it: a dict of the fields set, in protocol order."""
    envelope: dict[str, object] = {"v": 1, "id": message.id, "task": message.task}
    envelope.update(args=message.args, kwargs=message.kwargs, queue=message.queue)
    if message.headers:
        envelope["headers"] = message.headers
    if message.root_id is not None:
        envelope["root_id"] = message.root_id
    if message.ignore_result:
        envelope["ignore_result"] = True
    return json_dumps(envelope)


_TEXT = st.text(max_size=12)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(
    task_id=_TEXT,
    task=_TEXT.filter(bool),
    args=st.lists(_VALUES, max_size=3),
    kwargs=st.dictionaries(_TEXT, _VALUES, max_size=3),
    queue=_TEXT,
    root_id=st.none() | _TEXT,
    ignore_result=st.booleans(),
    sent_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_plain_envelope_bytes_are_those_of_the_general_encoder(
    task_id: str,
    task: str,
    args: list[object],
    kwargs: dict[str, object],
    queue: str,
    root_id: str | None,
    ignore_result: bool,
    sent_at: float | None,
) -> None:
    message = Message(
        id=task_id,
        task=task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        root_id=root_id,
        ignore_result=ignore_result,
        headers={} if sent_at is None else {SENT_AT: sent_at},  # the producer's stamp
    )
    assert encode_message(message, Serializers()) == _reference_envelope(message)
    assert decode_message(encode_message(message, Serializers()), Serializers()).headers == message.headers


def test_plain_envelope_of_tagged_types_and_deep_nesting() -> None:
    deep: list[object] = []
    for _ in range(3000):  # deeper than the C encoder goes: the general encoder takes over
        deep = [deep]
    for args in ([datetime(2024, 1, 2, tzinfo=UTC), b"\x00", {1, 2}], [deep]):
        message = Message(id="i", task="t", args=args, kwargs={"k": "é\u2028"}, root_id="i")
        try:
            expected = _reference_envelope(message)
        except SerializationError:
            with pytest.raises(SerializationError):
                encode_message(message, Serializers())
            continue
        assert encode_message(message, Serializers()) == expected


def test_unencodable_argument_raises_serialization_error_on_the_plain_path() -> None:
    with pytest.raises(SerializationError):
        encode_message(Message(id="i", task="t", args=[object()]), Serializers())


def test_new_id_is_the_uuid4_string_of_its_random_bytes() -> None:
    import os
    import uuid

    from asyncq._utils import new_id

    for _ in range(200):
        raw = os.urandom(16)
        assert new_id(lambda n, raw=raw: raw) == str(uuid.UUID(bytes=raw, version=4))
    assert uuid.UUID(new_id()).version == 4


def test_new_ids_from_the_random_pool_are_distinct_across_threads_and_forks() -> None:
    import os
    import sys
    import threading
    import uuid

    from asyncq._utils import new_id

    made: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_id() for _ in range(3000))  # several pool refills each

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for into in made for i in into]
    assert len(set(ids)) == len(ids) == 12000
    assert all(uuid.UUID(i).version == 4 for i in ids[:100])
    if sys.platform == "win32":
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    parent_next = new_id()
    with os.fdopen(read) as pipe:
        child_next = pipe.read()
    os.waitpid(pid, 0)
    assert child_next and child_next != parent_next


def test_a_lone_surrogate_in_a_plain_message_is_a_serialization_error() -> None:
    # The plain envelope is written as text, like the others: its UTF-8 step fails the same way.
    message = Message(id="a", task="t", args=["\ud800"], kwargs={}, queue="q")
    with pytest.raises(SerializationError, match="cannot encode as JSON"):
        encode_message(message, Serializers())
