"""Building and serializing signatures and workflows: no broker, no backend, no worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import asyncq
from asyncq import App, ChordError, GroupResult, Signature, chain, chord, group, signature
from asyncq.canvas import Chain, Chord, Group
from asyncq.exceptions import ConfigurationError
from asyncq.result import decode_record, encode_record, exception_from_record
from asyncq.signature import _Context
from asyncq.states import State


@pytest.fixture
def app() -> App:
    return App("canvas-unit", broker="memory://")


@pytest.fixture
def tasks(app: App) -> Any:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task
    async def tsum(values: list[int]) -> int:
        return sum(values)

    class T:
        pass

    t = T()
    t.add, t.mul, t.tsum = add, mul, tsum  # type: ignore[attr-defined]
    return t


def test_public_names_are_exported() -> None:
    for name in ("chain", "chord", "group", "signature", "Signature", "GroupResult", "ChordError"):
        assert name in asyncq.__all__
        assert getattr(asyncq, name) is not None
    assert asyncq.__all__ == sorted(asyncq.__all__)


def test_partial_and_immutable_signatures(tasks: Any) -> None:
    sig = tasks.add.s(2)
    assert isinstance(sig, Signature)
    assert (sig.task, sig.args, sig.kwargs, sig.immutable) == (tasks.add.name, (2,), {}, False)
    assert sig.app is tasks.add.app
    assert tasks.add.si(2, 2).immutable
    assert tasks.add.s(y=3).kwargs == {"y": 3}
    assert repr(tasks.add.si(1, y=2)).endswith("add!(1, y=2)")


def test_set_normalizes_options_to_wire_form(tasks: Any) -> None:
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    sig = tasks.add.s(2).set(queue="fast", countdown=timedelta(seconds=1.5), priority=5)
    assert sig.options == {"queue": "fast", "countdown": 1.5, "priority": 5}
    sig.set(eta=eta, expires=timedelta(minutes=1), countdown=None)
    assert sig.options["eta"] == eta.isoformat()
    assert sig.options["expires"] == 60.0
    assert "countdown" not in sig.options
    json.dumps(sig.to_dict())  # JSON-ready
    with pytest.raises(ValueError, match="aware"):
        sig.set(eta=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="unknown signature option 'colour'"):
        sig.set(colour="blue")
    assert tasks.add.signature((1, 2), queue="q").options == {"queue": "q"}


def test_task_signature_dict_format(tasks: Any) -> None:
    sig = tasks.add.s(2, y=3).set(queue="fast")
    assert sig.to_dict() == {
        "task": tasks.add.name,
        "args": [2],
        "kwargs": {"y": 3},
        "options": {"queue": "fast"},
        "immutable": False,
        "subtask_type": None,
    }


@pytest.mark.parametrize("kind", ["task", "chain", "group", "chord"])
def test_every_construct_round_trips_through_json(tasks: Any, app: App, kind: str) -> None:
    add, mul, tsum = tasks.add, tasks.mul, tasks.tsum
    sig: Signature[Any] = {
        "task": add.s(1, 2).set(link=mul.s(2), link_error=add.si(0, 0)),
        "chain": chain(add.s(1, 2), mul.s(3)),
        "group": group(add.s(i, i) for i in range(3)),
        "chord": chord([add.s(1, 1), add.s(2, 2)], tsum.s()),
    }[kind]
    data = json.loads(json.dumps(sig.to_dict()))
    assert data["subtask_type"] == (None if kind == "task" else kind)
    rebuilt = signature(data, app=app)
    assert type(rebuilt) is type(sig)
    assert rebuilt == sig
    assert rebuilt.to_dict() == sig.to_dict()
    assert next(rebuilt._leaves()).app is app


def test_signature_function(app: App) -> None:
    sig = signature("remote.task", (1,), {"k": 2}, app=app, queue="q")
    assert (sig.task, sig.args, sig.kwargs, sig.app) == ("remote.task", (1,), {"k": 2}, app)
    assert sig.options == {"queue": "q"}
    assert signature(sig) is sig
    with pytest.raises(ValueError, match="unknown subtask_type"):
        signature({"task": "x", "subtask_type": "bag"})
    with pytest.raises(ValueError, match="needs a task name"):
        signature({"args": []})
    with pytest.raises(TypeError):
        signature(42)  # type: ignore[arg-type]


def test_clone_prepends_unless_immutable(tasks: Any) -> None:
    sig = tasks.add.s(2)
    assert sig.clone((1,)).args == (1, 2)
    assert sig.args == (2,)  # the original is untouched
    assert tasks.add.si(2, 2).clone((1,)).args == (2, 2)
    assert tasks.add.s(y=1).clone(kwargs={"y": 5}).kwargs == {"y": 5}


def test_pipe_builds_chains(tasks: Any) -> None:
    add, mul = tasks.add, tasks.mul
    wf = add.s(2, 2) | mul.s(4) | add.s(8)
    assert isinstance(wf, Chain)
    assert [s.task for s in wf.tasks] == [add.name, mul.name, add.name]
    nested = chain(add.s(1, 1), chain(mul.s(2), chain(mul.s(3))), add.s(1))
    assert len(nested.tasks) == 4  # nested chains are flattened
    assert chain([add.s(1, 1), mul.s(2)]) == chain(add.s(1, 1), mul.s(2))


def test_group_followed_by_a_step_becomes_a_chord(tasks: Any) -> None:
    add, tsum, mul = tasks.add, tasks.tsum, tasks.mul
    header = group(add.s(i, i) for i in range(3))
    assert isinstance(header | tsum.s(), Chord)
    wf = chain(add.s(1, 1), header, tsum.s(), mul.s(2))
    assert len(wf.tasks) == 2
    inner = wf.tasks[1]
    assert isinstance(inner, Chord)
    assert isinstance(inner.body, Chain)  # the steps after the chord ride in its callback
    assert [s.task for s in inner.body.tasks] == [tsum.name, mul.name]
    ends_in_group = chain(add.s(1, 1), group(add.s(1), add.s(2)))
    assert isinstance(ends_in_group.tasks[-1], Group)
    group_then_group = chain(group(add.s(1, 1)), group(add.s(1), add.s(2)))
    assert isinstance(group_then_group.tasks[0], Chord)


def test_chord_header_flattens_nested_groups(tasks: Any) -> None:
    add, tsum = tasks.add, tasks.tsum
    c = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)], tsum.s())
    assert [s.args for s in c.header.tasks] == [(1, 1), (2, 2), (3, 3)]
    assert chord(add.s(1, 1), tsum.s()).header.tasks == [add.s(1, 1)]  # one-task header


def test_freeze_assigns_ids_and_links_parents(tasks: Any, app: App) -> None:
    add, mul, tsum = tasks.add, tasks.mul, tasks.tsum
    wf = chain(add.s(2, 2), mul.s(4), add.s(8))
    res = wf.freeze()
    ids = [s.options["task_id"] for s in wf.tasks]
    assert len(set(ids)) == 3
    assert res.id == ids[2]
    assert res.parent is not None and res.parent.id == ids[1]
    assert res.parent.parent is not None and res.parent.parent.id == ids[0]
    assert wf.freeze().id == res.id  # idempotent: ids already set are kept

    g = group(add.s(i, i) for i in range(3))
    gres = g.freeze()
    assert isinstance(gres, GroupResult)
    assert gres.id == g.group_id
    assert [r.id for r in gres.results] == [m.options["task_id"] for m in g.tasks]
    assert all(m.options["group_id"] == g.group_id for m in g.tasks)

    c = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    cres = c.freeze()
    assert cres.id == c.body.options["task_id"]
    assert isinstance(cres.parent, GroupResult) and len(cres.parent.results) == 2


def test_links(tasks: Any) -> None:
    add, mul = tasks.add, tasks.mul
    sig = add.s(1, 1)
    cb = sig.link(mul.s(2))
    assert cb == mul.s(2)
    sig.link_error(add.si(0, 0))
    assert sig.options["link"] == [mul.s(2).to_dict()]
    assert sig.options["link_error"] == [add.si(0, 0).to_dict()]

    wf = chain(add.s(1, 1), mul.s(2), mul.s(3))
    wf.link(add.s(1))
    wf.link_error(add.si(0, 0))
    assert "link" not in wf.tasks[0].options and wf.tasks[-1].options["link"] == [add.s(1).to_dict()]
    assert all(s.options["link_error"] == [add.si(0, 0).to_dict()] for s in wf.tasks)

    c = chord([add.s(1, 1)], mul.s(2))
    c.link_error(add.si(0, 0))
    assert c.body.options["link_error"] == [add.si(0, 0).to_dict()]
    assert "link_error" not in c.header.tasks[0].options
    with pytest.raises(TypeError, match="link"):
        wf.set(link=add.s(1))
    with pytest.raises(TypeError, match="task_id"):
        group(add.s(1, 1)).set(task_id="x")


def test_build_message_fills_callback_slots(tasks: Any) -> None:
    message = tasks.add.build_message((1, 2), link=tasks.mul.s(10), link_error=[tasks.add.si(0, 0)])
    assert message.callbacks == [tasks.mul.s(10).to_dict()]
    assert message.errbacks == [tasks.add.si(0, 0).to_dict()]
    plain = tasks.add.build_message((1, 2))
    assert plain.callbacks is None and plain.errbacks is None


async def test_a_chain_sends_its_first_step_with_the_rest_in_the_message(tasks: Any, app: App) -> None:
    add, mul = tasks.add, tasks.mul
    wf = chain(add.s(2, 2), mul.s(4).set(queue="fast"), add.si(8, 8))
    wf.freeze()
    [message] = await wf._build(app, _Context())
    assert (message.task, message.args, message.id) == (add.name, [2, 2], wf.tasks[0].options["task_id"])
    assert message.root_id == message.id and message.parent_id is None
    assert message.chain == [step.to_dict() for step in wf.tasks[1:]]
    assert message.chain[0]["options"]["queue"] == "fast"


async def test_a_group_builds_one_message_per_member(tasks: Any, app: App) -> None:
    g = group(tasks.add.s(i, i) for i in range(5))
    gres = g.freeze()
    messages = await g._build(app, _Context())
    assert [m.id for m in messages] == [r.id for r in gres.results]
    assert {m.group_id for m in messages} == {g.group_id}


async def test_follow_up_messages_carry_parent_and_root(tasks: Any, app: App) -> None:
    sig = tasks.add.s(1)
    sig.freeze()
    [message] = await sig._build(app, _Context(root_id="root", parent_id="parent"))
    assert (message.root_id, message.parent_id) == ("root", "parent")


async def test_chord_header_member_must_end_in_one_task(tasks: Any, app: App) -> None:
    c = chord([chain(tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2)))], tasks.tsum.s())
    c.freeze()
    with pytest.raises(TypeError, match="ends in a group"):
        await c._build(app, _Context())


def test_empty_chain_is_an_error(app: App) -> None:
    with pytest.raises(ValueError, match="empty chain"):
        chain().freeze(app)


def test_unbound_signature_names_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="not bound to an app"):
        signature("remote.task").freeze()


def test_map_starmap_and_chunks(tasks: Any, app: App) -> None:
    add = tasks.add
    m = add.map([1, 2])
    assert (m.task, m.kwargs) == ("asyncq.map", {"task": add.name, "it": [1, 2]})
    sm = add.starmap(zip(range(2), range(2), strict=True))
    assert (sm.task, sm.kwargs["it"]) == ("asyncq.starmap", [[0, 0], [1, 1]])
    assert sm.options["queue"] == app.conf.task_default_queue
    ch = add.chunks(zip(range(10), range(10), strict=True), 4)
    assert isinstance(ch, Group)
    assert [len(member.kwargs["it"]) for member in ch.tasks] == [4, 4, 2]
    with pytest.raises(ValueError, match="at least 1"):
        add.chunks([(1, 1)], 0)
    assert {"asyncq.map", "asyncq.starmap"} <= set(app.tasks)  # any worker of the app runs them


def test_chord_error_survives_the_result_record(app: App) -> None:
    error = ChordError("chord g: header task t1 failed: builtins.ValueError: boom", "t1")
    data = encode_record(app.serializers, task_id="cb", status=State.FAILURE, exc=error)
    rebuilt = exception_from_record(decode_record(data, app.serializers))
    assert isinstance(rebuilt, ChordError)
    assert rebuilt.task_id == "t1"
    assert str(rebuilt) == str(error)
    assert str(ChordError()) == "A task in the chord's header failed, so the chord's callback did not run."
