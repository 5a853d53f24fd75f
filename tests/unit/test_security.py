"""Signing, encryption and limits, without a broker: what the bytes look like and what is refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from asyncq import App
from asyncq.config import Conf
from asyncq.exceptions import ConfigurationError, MessageTooLargeError, SerializationError, SignatureError
from asyncq.message import Message, decode_message, encode_message
from asyncq.result import decode_record, encode_record
from asyncq.security import MessageSecurity, generate_key, startup_warnings
from asyncq.security.limits import check_depth
from asyncq.security.signing import Signer, Verifier, split_signed
from asyncq.serializers import Serializers, json_loads
from asyncq.states import State

KEY = "k" * 32
OTHER = "o" * 32


def _security(**settings: Any) -> MessageSecurity:
    return MessageSecurity.from_conf(Conf(settings, environ={}))


def _body(**fields: Any) -> bytes:
    message = Message(id=fields.pop("id", "id-1"), task=fields.pop("task", "t.add"), args=[1, 2], **fields)
    return encode_message(message, Serializers())


def test_hmac_signature_is_the_first_member_and_the_envelope_stays_json() -> None:
    body = _body()
    signed = _security(security_key=KEY).seal_outgoing(body, "t.add")
    assert signed.startswith(b'{"sig":"hs256.')
    envelope = json.loads(signed)
    assert envelope["task"] == "t.add" and envelope["args"] == [1, 2]
    parts = split_signed(signed)
    assert parts is not None and parts[3] == body  # the signature covers the unsigned bytes exactly


def test_verify_accepts_own_and_refuses_unsigned_tampered_and_foreign() -> None:
    security = _security(security_key=KEY)
    serializers = Serializers()
    signed = security.seal_outgoing(_body(), "t.add")
    assert security.open_incoming(signed, serializers).args == [1, 2]
    with pytest.raises(SignatureError, match="unsigned"):
        security.open_incoming(_body(), serializers)
    for field, value in [(b'"t.add"', b'"t.evil"'), (b"[1,2]", b"[1,3]"), (b'"id-1"', b'"id-2"')]:
        with pytest.raises(SignatureError, match="bad signature"):
            security.open_incoming(signed.replace(field, value), serializers)
    foreign = _security(security_key=OTHER).seal_outgoing(_body(), "t.add")
    with pytest.raises(SignatureError, match="unknown hs256 key"):
        security.open_incoming(foreign, serializers)


def test_every_signed_header_is_covered() -> None:
    security = _security(security_key=KEY)
    body = _body(eta=1000.0, expires=2000.0, retries=1, callbacks=[{"task": "t.cb"}])
    signed = security.seal_outgoing(body, "t.add")
    envelope = json_loads(signed)
    for name, value in [
        ("eta", "2030-01-01T00:00:00+00:00"),
        ("expires", "2099-01-01T00:00:00+00:00"),
        ("retries", 0),
        ("callbacks", [{"task": "t.evil"}]),
    ]:
        forged = {**envelope, name: value}
        sig = forged.pop("sig")
        rebuilt = b'{"sig":"' + sig.encode() + b'",' + json.dumps(forged, separators=(",", ":")).encode()[1:]
        with pytest.raises(SignatureError):
            security.open_incoming(rebuilt, Serializers())


def test_rotation_signs_with_the_first_and_accepts_any() -> None:
    old = _security(security_key=OTHER).seal_outgoing(_body(), "t.add")
    rotated = _security(security_key=[KEY, OTHER])
    assert rotated.open_incoming(old, Serializers()).task == "t.add"
    new = rotated.seal_outgoing(_body(), "t.add")
    assert _security(security_key=KEY).open_incoming(new, Serializers()).task == "t.add"


@pytest.mark.parametrize(
    "body",
    [
        b'{"sig":"hs256.x.y"}',
        b'{"sig":"hs256.abc.%%%","v":1}',
        b'{"sig":"rot13.abcd1234.AAAA","v":1}',
        b'{"sig":"hs256.abcd\\"1234.AAAA","v":1}',
    ],
)
def test_malformed_signatures_are_signature_errors(body: bytes) -> None:
    with pytest.raises(SignatureError):
        _security(security_key=KEY).open_incoming(body, Serializers())


def test_short_hmac_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="too short"):
        _security(security_key="secret")


def _pem(key: Ed25519PrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_ed25519_producer_signs_and_worker_only_verifies(tmp_path: Any) -> None:
    private, public = _pem(Ed25519PrivateKey.generate())
    key_file = tmp_path / "producer.pem"
    key_file.write_text(private)
    producer = _security(security_private_key=str(key_file))
    worker = _security(security_public_keys=[public])
    signed = producer.seal_outgoing(_body(), "t.add")
    assert signed.startswith(b'{"sig":"ed25519.')
    assert worker.open_incoming(signed, Serializers()).args == [1, 2]
    with pytest.raises(SignatureError, match="bad signature"):
        worker.open_incoming(signed.replace(b"[1,2]", b"[2,2]"), Serializers())
    _, stranger = _pem(Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="unknown ed25519 key"):
        _security(security_public_keys=[stranger]).open_incoming(signed, Serializers())
    # A verify-only app cannot sign, and says so rather than sending unsigned messages.
    with pytest.raises(ConfigurationError, match="no key to sign with"):
        worker.seal_outgoing(_body(), "t.add")
    assert any(
        "no signing key" in w for w in startup_warnings(Conf({"security_public_keys": [public]}, environ={}))
    )


def test_hmac_and_ed25519_keys_accepted_side_by_side() -> None:
    private, public = _pem(Ed25519PrivateKey.generate())
    both = _security(security_key=KEY, security_public_keys=[public])
    hmac_signed = _security(security_key=KEY).seal_outgoing(_body(), "t")
    ed_signed = _security(security_private_key=private).seal_outgoing(_body(), "t")
    assert both.open_incoming(hmac_signed, Serializers()).id == "id-1"
    assert both.open_incoming(ed_signed, Serializers()).id == "id-1"


def test_signer_and_verifier_directly() -> None:
    signer = Signer.hmac(KEY.encode())
    assert Verifier([KEY.encode()]).verify(signer.sign(b'{"v":1}')) == b'{"v":1}'


# -- encryption ---------------------------------------------------------------------------------


def _encrypting(*keys: str) -> Serializers:
    serializers = Serializers()
    serializers.cipher = _security(security_encryption_key=list(keys)).cipher
    return serializers


def test_encrypted_arguments_round_trip_and_hide_the_plaintext() -> None:
    serializers = _encrypting(generate_key())
    message = Message(id="id-9", task="t.secret", args=["card-4111"], kwargs={"pin": "1234"})
    body = encode_message(message, serializers, encrypt=True)
    assert b"4111" not in body and b"1234" not in body
    envelope = json.loads(body)
    assert envelope["encryption"].startswith("aes256gcm.") and envelope["body_encoding"] == "base64"
    decoded = decode_message(body, serializers)
    assert decoded.args == ["card-4111"] and decoded.kwargs == {"pin": "1234"}


def test_encrypted_body_bound_to_its_message_and_key() -> None:
    key = generate_key()
    serializers = _encrypting(key)
    body = encode_message(Message(id="a", task="t", args=[1]), serializers, encrypt=True)
    moved = body.replace(b'"id":"a"', b'"id":"b"')
    with pytest.raises(SerializationError, match="altered"):
        decode_message(moved, serializers)
    envelope = json.loads(body)
    sealed = bytearray(base64.b64decode(envelope["body"]))
    sealed[-1] ^= 1
    envelope["body"] = base64.b64encode(bytes(sealed)).decode()
    with pytest.raises(SerializationError, match="altered"):
        decode_message(json.dumps(envelope).encode(), serializers)
    with pytest.raises(SerializationError, match="unknown key"):
        decode_message(body, _encrypting(generate_key()))
    with pytest.raises(SerializationError, match="security_encryption_key is not set"):
        decode_message(body, Serializers())


def test_encryption_key_rotation() -> None:
    old, new = generate_key(), generate_key()
    body = encode_message(Message(id="a", task="t", args=[1]), _encrypting(old), encrypt=True)
    assert decode_message(body, _encrypting(new, old)).args == [1]


def test_encrypted_results() -> None:
    serializers = _encrypting(generate_key())
    data = encode_record(
        serializers, task_id="r1", status=State.SUCCESS, result={"ssn": "078-05"}, encrypt=True
    )
    assert b"078-05" not in data
    assert decode_record(data, serializers).result == {"ssn": "078-05"}
    with pytest.raises(SerializationError):
        decode_record(data.replace(b'"r1"', b'"r2"'), serializers)


def test_bad_encryption_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        _security(security_encryption_key="short")
    with pytest.raises(ConfigurationError, match="security_encryption_key is not set"):
        _security(security_encrypt=True)


def test_task_option_encrypt_needs_a_key() -> None:
    app = App("enc-opt", broker="memory://")

    @app.task(encrypt=True)
    def secret(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="encrypt=True"):
        app.outgoing(Message(id="a", task=secret.name, args=[1]))
    assert any("encrypt=True" in w for w in startup_warnings(app.conf, app.tasks.values()))


# -- limits -------------------------------------------------------------------------------------


def test_size_limit_at_enqueue_names_task_and_size() -> None:
    app = App("limits", broker="memory://", config={"message_max_bytes": 1000})
    with pytest.raises(MessageTooLargeError, match=r"task 't.big' is \d+ bytes, over the message_max_bytes"):
        app.outgoing(Message(id="a", task="t.big", args=["x" * 2000]))
    assert app.outgoing(Message(id="a", task="t.small", args=["x" * 10])).body


def test_size_limit_default_is_one_mebibyte() -> None:
    assert Conf(environ={}).message_max_bytes == 1024 * 1024
    with pytest.raises(MessageTooLargeError):
        _security().open_incoming(b" " * (1024 * 1024 + 1), Serializers())


def test_depth_limit() -> None:
    check_depth([[[1]]], 3)
    with pytest.raises(SerializationError, match="message_max_depth=3"):
        check_depth([[[[1]]]], 3)
    nested: Any = 1
    for _ in range(100):
        nested = {"k": [nested]}
    body = encode_message(Message(id="a", task="t", args=[nested]), Serializers())
    with pytest.raises(SerializationError, match="message_max_depth"):
        _security().open_incoming(body, Serializers())


def test_json_nesting_beyond_the_stack_is_a_serialization_error() -> None:
    deep = b'{"v":1,"id":"a","task":"t","args":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(SerializationError, match="cannot decode JSON"):
        decode_message(deep, Serializers())


def test_limits_validated() -> None:
    with pytest.raises(ConfigurationError, match="message_max_bytes"):
        _security(message_max_bytes=0)


def test_pickle_warns_at_start_up() -> None:
    assert startup_warnings(Conf(environ={})) == []
    assert any(
        "pickle" in w for w in startup_warnings(Conf({"accept_content": ["json", "pickle"]}, environ={}))
    )


def test_conf_repr_hides_keys_and_passwords() -> None:
    conf = Conf({"security_key": KEY, "broker_url": "redis://:hunter2@localhost:6379/0"}, environ={})
    conf.broker_transport_options = {"sentinel_password": "hunter3", "ssl_password": "hunter4", "db": 2}
    text = repr(conf)
    assert KEY not in text and "hunter" not in text and "***" in text and "'db': 2" in text


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Pw-9f8e7d@127.0.0.1:6379/0",
        "rediss://user:Pw-9f8e7d@127.0.0.1:6380/0?ssl_cert_reqs=required",
        "redis+cluster://:Pw-9f8e7d@127.0.0.1:7000,127.0.0.1:7001",
        "amqp://guest:Pw-9f8e7d@127.0.0.1:5672/",
    ],
)
def test_driver_reprs_hide_the_password(url: str) -> None:
    from asyncq.backends import backend_from_url
    from asyncq.brokers import broker_from_url

    assert "Pw-9f8e7d" not in repr(broker_from_url(url))
    backend_url = url if url.startswith("redis") else "rpc://"
    options = {} if url.startswith("redis") else {"broker_url": url}
    assert "Pw-9f8e7d" not in repr(backend_from_url(backend_url, **options))
    app = App("reprs", broker=url)
    assert "Pw-9f8e7d" not in repr(app) + repr(app.conf)


def test_bad_urls_do_not_echo_the_password() -> None:
    from asyncq.backends import backend_from_url
    from asyncq.brokers import broker_from_url

    for url in (
        "redis://:Pw-9f8e7d@host:notaport/0",
        "reds://:Pw-9f8e7d@host/0",
        "redis+cluster://:Pw-9f8e7d@h:1/3",
    ):
        with pytest.raises(ConfigurationError) as caught:
            broker_from_url(url)
        assert "Pw-9f8e7d" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        backend_from_url("rpc://guest:Pw-9f8e7d@host/")
    assert "Pw-9f8e7d" not in str(caught.value)


@pytest.mark.parametrize("value", ["1e308", "-1e308", "NaN", "Infinity", "1e20"])
def test_absurd_epoch_times_are_refused(value: str) -> None:
    for field in ("eta", "expires"):
        body = b'{"v":1,"id":"a","task":"t","%s":%s}' % (field.encode(), value.encode())
        with pytest.raises(SerializationError, match="not a usable epoch time"):
            decode_message(body, Serializers())


def test_incoming_opener_keeps_the_checks_that_are_on() -> None:
    serializers = Serializers()
    body = encode_message(Message(id="a", task="t", args=[[[1]]]), serializers)
    # Signing off: a plain decode when no limit is set, the limits inline when they are.
    assert MessageSecurity().incoming_opener() is decode_message
    assert MessageSecurity(max_bytes=10_000, max_depth=8).incoming_opener()(body, serializers).args == [[[1]]]
    with pytest.raises(MessageTooLargeError):
        MessageSecurity(max_bytes=10).incoming_opener()(body, serializers)
    with pytest.raises(SerializationError, match="message_max_depth"):
        MessageSecurity(max_depth=2).incoming_opener()(body, serializers)
    # Signing on: the full check, so an unsigned message is refused.
    signed = MessageSecurity(verifier=Verifier([b"k" * 32], []))
    with pytest.raises(SignatureError):
        signed.incoming_opener()(body, serializers)
