"""A real worker with signing, encryption and limits on: what runs, what is refused, and why."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from asyncq import App, State
from asyncq.brokers import OutgoingMessage
from asyncq.brokers.base import DeadLetter
from asyncq.exceptions import TaskRevokedError
from asyncq.message import Message, encode_message
from asyncq.security import generate_key

TIMEOUT = 15.0
KEY = "s" * 32


async def _until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _dead(app: App, count: int, queue: str = "default") -> list[DeadLetter]:
    async def enough() -> bool:
        return len(await app.broker.dead_letters(queue)) >= count

    await _until(enough, f"{count} dead letters")
    return await app.broker.dead_letters(queue)


def _raw(app: App, message: Message, body: bytes | None = None) -> OutgoingMessage:
    data = encode_message(message, app.serializers) if body is None else body
    return OutgoingMessage(id=message.id, queue=message.queue, body=data, priority=None, eta=None)


async def test_signed_messages_run_and_unsigned_or_forged_ones_are_dead_lettered() -> None:
    app = App("sig", broker="memory://", config={"security_key": KEY})
    ran: list[Any] = []

    @app.task
    async def record(x: Any) -> Any:
        ran.append(x)
        return x

    async with app.worker(concurrency=4):
        assert await (await record.enqueue("signed")).get(timeout=TIMEOUT) == "signed"
        unsigned = Message(id="forged-1", task=record.name, args=["unsigned"])
        await app.broker.publish(_raw(app, unsigned))
        good = app.outgoing(Message(id="forged-2", task=record.name, args=["tampered"]))
        await app.broker.publish(_raw(app, unsigned, good.body.replace(b"tampered", b"tampere!")))
        other = App("other", broker="memory://", config={"security_key": "x" * 32})
        foreign = other.outgoing(Message(id="forged-3", task=record.name, args=["foreign"]))
        await app.broker.publish(_raw(app, unsigned, foreign.body))
        dead = await _dead(app, 3)
    assert ran == ["signed"]
    reasons = sorted(d.reason for d in dead)
    assert any("unsigned message refused" in r for r in reasons), reasons
    assert any("bad signature" in r for r in reasons), reasons
    assert any("unknown hs256 key" in r for r in reasons), reasons
    # No result record for an unauthenticated id: a forger cannot overwrite real results.
    assert await app.backend.get("forged-1") is None
    await app.aclose()


async def test_with_signing_on_an_oversized_message_writes_no_result_record() -> None:
    app = App("sig-size", broker="memory://", config={"security_key": KEY, "message_max_bytes": 500})
    async with app.worker():
        await app.broker.publish(_raw(app, Message(id="victim", task="t"), b"{" + b" " * 1000 + b"}"))
        dead = await _dead(app, 1)
    assert "message_max_bytes" in dead[0].reason
    assert await app.backend.get("victim") is None  # the id of an unverified message is not trusted
    await app.aclose()


async def test_signed_message_replayed_after_expires_is_refused() -> None:
    app = App("replay", broker="memory://", config={"security_key": KEY})
    ran: list[Any] = []

    @app.task
    async def pay(amount: int) -> int:
        ran.append(amount)
        return amount

    captured = app.outgoing(Message(id="pay-1", task=pay.name, args=[100], expires=time.time() - 1))
    async with app.worker():
        await app.broker.publish(captured)  # a copy taken off the wire, replayed late
        result = app.AsyncResult("pay-1")

        async def revoked() -> bool:
            return await result.state() == State.REVOKED

        await _until(revoked, "the replay to be revoked")
    assert ran == []
    with pytest.raises(TaskRevokedError, match="expired"):
        await result.get(timeout=1)
    await app.aclose()


async def test_retries_published_by_a_signing_worker_are_signed() -> None:
    app = App("sig-retry", broker="memory://", config={"security_key": KEY, "task_default_retry_delay": 0.01})
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    async def flaky(self: Any) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0.01)
        return len(attempts)

    async with app.worker():
        assert await (await flaky.enqueue()).get(timeout=TIMEOUT) == 3
    assert await app.broker.dead_letters("default") == []
    await app.aclose()


async def test_encrypted_task_round_trip_hides_arguments_and_result() -> None:
    config = {"security_key": KEY, "security_encryption_key": generate_key()}
    app = App("enc", broker="memory://", config=config)

    @app.task(encrypt=True)
    async def echo(secret: str) -> str:
        return secret.upper()

    @app.task
    async def plain(x: str) -> str:
        return x

    assert b"hunter" not in app.outgoing(Message(id="x", task=echo.name, args=["hunter"])).body
    async with app.worker():
        r = await echo.enqueue("hunter")
        assert await r.get(timeout=TIMEOUT) == "HUNTER"
        p = await plain.enqueue("visible")
        assert await p.get(timeout=TIMEOUT) == "visible"
    stored = await app.backend.get(r.id)
    assert stored is not None and b"HUNTER" not in stored and b'"encryption"' in stored
    plain_stored = await app.backend.get(p.id)
    assert plain_stored is not None and b"visible" in plain_stored
    await app.aclose()


async def test_oversized_and_too_deep_messages_are_dead_lettered_at_receive() -> None:
    app = App("lim", broker="memory://", config={"message_max_bytes": 2000, "message_max_depth": 8})
    ran: list[Any] = []

    @app.task
    async def take(x: Any) -> None:
        ran.append(x)

    async with app.worker():
        big = Message(id="big", task=take.name, args=["x" * 5000])
        await app.broker.publish(_raw(app, big))
        nested: Any = 1
        for _ in range(20):
            nested = [nested]
        await app.broker.publish(_raw(app, Message(id="deep", task=take.name, args=[nested])))
        dead = await _dead(app, 2)
    assert ran == []
    reasons = " | ".join(d.reason for d in dead)
    assert "over the message_max_bytes limit of 2000" in reasons and "message_max_depth=8" in reasons
    await app.aclose()


async def test_task_names_come_from_the_registry_and_nothing_is_imported() -> None:
    app = App("names", broker="memory://")
    module = "tests.apps.never_imported_by_asyncq"
    assert module not in sys.modules
    async with app.worker():
        for name in (f"{module}.run", "os.system", "subprocess:run", "builtins.eval"):
            await app.broker.publish(_raw(app, Message(id=f"n-{name}", task=name, args=["true"])))
        dead = await _dead(app, 4)
    assert all("unknown task" in d.reason for d in dead)
    assert module not in sys.modules
    await app.aclose()


def _fuzzed_batch(valid: bytes, signed: bytes) -> list[bytes]:
    """Hostile bodies of every kind the decoder must survive; deterministic, so a failure repeats."""
    import random

    rng = random.Random(20261201)
    batch = [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"\xff\xfe garbage",
        b'{"v":1,"id":"a","task":"t","args":' + b"[" * 100_000,
        b'{"v":1,"id":"a","task":"t","args":[' + b"9" * 5000 + b"]}",
        b'{"v":1,"id":"h","task":"t","args":[1e999999]}',
        b'{"v":2,"id":"a","task":"t"}',
        b'{"v":1,"id":7,"task":["x"]}',
        b'{"v":1,"id":"b","task":"t","content_type":"application/x-python-serialize","body":"gAR9lC4="}',
        b'{"v":1,"id":"c","task":"t","content_type":"text/plain","body":"aGk="}',
        b'{"v":1,"id":"d","task":"t","body":"%%%not base64"}',
        b'{"v":1,"id":"e","task":"t","eta":"yesterday"}',
        b'{"v":1,"id":"f","task":"t","retries":"many","headers":[1]}',
        b'{"v":1,"id":"g","task":"t","encryption":"aes256gcm.00000000","body":"AAAA"}',
        b'{"sig":"hs256.00000000.AAAA","v":1,"id":"i","task":"t"}',
        b" " * 3000,  # over the test's message_max_bytes
    ]
    for _ in range(60):
        source = rng.choice([valid, signed])
        cut = rng.randrange(len(source))
        kind = rng.randrange(3)
        if kind == 0:
            batch.append(source[:cut])  # truncated
        elif kind == 1:
            batch.append(source[:cut] + bytes([rng.randrange(256)]) + source[cut + 1 :])  # one byte changed
        else:
            batch.append(source[:cut] + source[cut + rng.randrange(1, 8) :])  # bytes dropped
    return batch


@pytest.mark.parametrize("signing", [True, False], ids=["signed", "unsigned"])
async def test_worker_settles_every_message_of_a_fuzzed_batch(
    caplog: pytest.LogCaptureFixture, signing: bool
) -> None:
    config: dict[str, Any] = {"message_max_bytes": 2000, "task_max_retries": 0}
    if signing:
        config["security_key"] = KEY
    app = App("fuzz", broker="memory://", config=config)
    ran: list[Any] = []

    @app.task
    async def target(*args: Any, **kwargs: Any) -> None:
        ran.append(args)

    good = Message(id="good", task=target.name, args=[1, {"a": [2, 3]}], kwargs={"k": "v"}, headers={"h": 1})
    signed = app.outgoing(good).body
    batch = _fuzzed_batch(encode_message(good, app.serializers), signed)
    async with app.worker(concurrency=8) as worker:
        for index, body in enumerate(batch):
            await app.broker.publish(
                OutgoingMessage(id=f"fuzz-{index}", queue="default", body=body, priority=None, eta=None)
            )
        done = await target.enqueue("after the batch")  # the worker is still alive and consuming
        assert await done.get(timeout=TIMEOUT) is None

        async def drained() -> bool:
            return await app.broker.queue_length("default") == 0 and worker.in_flight == 0

        await _until(drained, "every message to be settled")
        dead = await app.broker.dead_letters("default", limit=1000)
    assert all(d.reason for d in dead)
    if signing:  # every hostile message was refused: only the signed message's exact bytes verify
        assert len(dead) == len(batch) - sum(1 for body in batch if body == signed)
    else:
        assert len(dead) >= 18  # at least the hand-written ones; mutants may still be valid envelopes
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    await app.aclose()


async def test_a_foreign_producer_following_protocol_md_signs_and_encrypts() -> None:
    """Built with hmac, json and AESGCM only, as docs/protocol.md tells another language to."""
    import base64
    import hashlib
    import hmac
    import json
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    enc_key = os.urandom(32)
    config = {"security_key": KEY, "security_encryption_key": base64.urlsafe_b64encode(enc_key).decode()}
    app = App("foreign", broker="memory://", config=config)

    @app.task
    async def mul(x: int, y: int) -> int:
        return x * y

    def sign(envelope: dict[str, Any]) -> bytes:
        data = json.dumps(envelope, separators=(", ", ": ")).encode()  # any spacing: the bytes are signed
        kid = hashlib.sha256(b"asyncq-kid:" + KEY.encode()).hexdigest()[:8]
        mac = base64.urlsafe_b64encode(hmac.digest(KEY.encode(), data, "sha256")).rstrip(b"=").decode()
        return b'{"sig":"hs256.' + kid.encode() + b"." + mac.encode() + b'",' + data[1:]

    nonce = os.urandom(12)
    sealed = nonce + AESGCM(enc_key).encrypt(
        nonce, json.dumps([[6, 7], {}]).encode(), b"asyncq:msg:f-2:" + mul.name.encode()
    )
    encrypted = {
        "id": "f-2",
        "task": mul.name,
        "content_type": "application/json",
        "body": base64.b64encode(sealed).decode(),
        "body_encoding": "base64",
        "encryption": "aes256gcm." + hashlib.sha256(b"asyncq-enc-kid:" + enc_key).hexdigest()[:8],
    }
    async with app.worker():
        await app.broker.publish(
            _raw(app, Message(id="f-1", task=mul.name), sign({"id": "f-1", "task": mul.name, "args": [3, 4]}))
        )
        await app.broker.publish(_raw(app, Message(id="f-2", task=mul.name), sign(encrypted)))
        assert await app.AsyncResult("f-1").get(timeout=TIMEOUT) == 12
        assert await app.AsyncResult("f-2").get(timeout=TIMEOUT) == 42
    await app.aclose()


async def test_ed25519_producer_and_verify_only_worker_share_a_store(tmp_path: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store = f"sqlite:///{tmp_path / 'store.db'}"
    producer = App("ed", broker=store, config={"security_private_key": key})
    worker_app = App("ed", broker=store, config={"security_public_keys": [public.decode()]})
    intruder = App("ed", broker=store, config={"security_private_key": Ed25519PrivateKey.generate()})
    for app in (producer, worker_app, intruder):

        @app.task(name="ed.square")
        async def square(x: int) -> int:
            return x * x

    async with worker_app.worker():
        assert await (await producer.send_task("ed.square", [7])).get(timeout=TIMEOUT) == 49
        forged = await intruder.send_task("ed.square", [8])
        dead = await _dead(worker_app, 1)
    assert "unknown ed25519 key" in dead[0].reason and dead[0].id == forged.id
    for app in (producer, worker_app, intruder):
        await app.aclose()


async def test_worker_warns_at_start_up_when_pickle_is_accepted(caplog: pytest.LogCaptureFixture) -> None:
    app = App("pickle", broker="memory://", config={"accept_content": ["json", "pickle"]})
    async with app.worker():
        pass
    assert any("accept_content includes pickle" in r.getMessage() for r in caplog.records)
    await app.aclose()


async def test_with_signing_on_workers_obey_only_signed_control_requests(tmp_path: Any) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    app = App("ctl-sig", broker=store, config={"security_key": KEY})
    forger = App("ctl-sig", broker=store)  # same broker, no key
    async with app.worker(hostname="w-signed"):

        async def answers() -> bool:
            return "w-signed" in await app.control.ping(destination=["w-signed"], timeout=1.0)

        await _until(answers, "the worker to answer a signed ping")
        # An unsigned request is ignored: no answer, and a forged shutdown does nothing.
        assert await forger.control.ping(destination=["w-signed"], timeout=1.0) == {}
        await forger.control.shutdown(destination=["w-signed"])
        assert "w-signed" in await app.control.ping(destination=["w-signed"], timeout=2.0)
    await forger.aclose()
    await app.aclose()
