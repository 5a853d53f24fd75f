"""Message signatures: HMAC-SHA256 (shared keys) and Ed25519 (producers sign, workers verify).

The signature travels inside the JSON envelope as its first member, ``"sig"``, and covers
the exact bytes of the envelope without that member, so every field (task name, id, eta,
expires, retries, canvas slots, arguments) is covered without any canonical JSON form::

    unsigned:  {"v":1,"id":"...","task":"...",...}
    signed:    {"sig":"<alg>.<kid>.<signature>","v":1,"id":"...","task":"...",...}
    signed bytes = b"{" + everything after the '",' that closes the sig member

``alg`` is ``hs256`` or ``ed25519``; ``kid`` names the key (8 hex digits of a SHA-256 of
it) so a verifier holding several keys during a rotation picks the right one;
``signature`` is URL-safe base64 without padding. docs/protocol.md has the same rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from asyncq.exceptions import ConfigurationError, MissingDependencyError, SignatureError

__all__ = ["SIG_PREFIX", "Signer", "Verifier", "split_signed"]

SIG_PREFIX: Final = b'{"sig":"'
_MIN_HMAC_KEY: Final = 16
_SAFE: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kid(material: bytes) -> str:
    return hashlib.sha256(b"asyncq-kid:" + material).hexdigest()[:8]


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def hmac_keys(value: Any) -> list[bytes]:
    """The ``security_key`` setting as a list of keys (the first signs); each checked for length."""
    keys = []
    for item in _as_list(value):
        key = item.encode("utf-8") if isinstance(item, str) else item
        if not isinstance(key, bytes):
            raise ConfigurationError(
                f"security_key must be a string or bytes (or a list), not {type(item).__name__}"
            )
        if len(key) < _MIN_HMAC_KEY:
            raise ConfigurationError(
                f"security_key is too short ({len(key)} bytes; at least {_MIN_HMAC_KEY}): make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        keys.append(key)
    return keys


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError.for_extra("cryptography", "security") from exc
    return ed25519


def _key_bytes(item: Any, setting: str) -> bytes:
    if isinstance(item, str):
        text = item.strip()
        if not text.startswith("-----BEGIN") and os.path.isfile(text):
            with open(text, "rb") as file:  # a path: deployments keep keys in files, not in env vars
                return file.read()
        return text.encode("ascii", "replace")
    if isinstance(item, bytes):
        return item
    raise ConfigurationError(
        f"{setting} must be PEM text, a PEM file path or raw key bytes, not {type(item).__name__}"
    )


def load_private_key(value: Any) -> Any:
    """An Ed25519 private key from PEM text, a PEM file's path, raw 32 bytes or a key object."""
    ed25519 = _crypto()
    if isinstance(value, ed25519.Ed25519PrivateKey):
        return value
    from cryptography.hazmat.primitives import serialization

    data = _key_bytes(value, "security_private_key")
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(
                data if len(data) == 32 else _unb64(data.decode())
            )
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigurationError(f"security_private_key is not a usable Ed25519 private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(f"security_private_key is a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(value: Any) -> Any:
    """An Ed25519 public key from PEM text, a PEM file's path, raw 32 bytes or a key object."""
    ed25519 = _crypto()
    if isinstance(value, ed25519.Ed25519PublicKey):
        return value
    from cryptography.hazmat.primitives import serialization

    data = _key_bytes(value, "security_public_keys")
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = ed25519.Ed25519PublicKey.from_public_bytes(
                data if len(data) == 32 else _unb64(data.decode())
            )
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigurationError(
            f"security_public_keys holds an unusable Ed25519 public key: {exc}"
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigurationError(f"security_public_keys holds a {type(key).__name__}, not an Ed25519 key")
    return key


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs envelopes with one key: an HMAC secret or an Ed25519 private key."""

    alg: str
    kid: str
    key: Any

    @classmethod
    def hmac(cls, key: bytes) -> Signer:
        """A signer with a shared HMAC-SHA256 secret."""
        return cls("hs256", _kid(key), key)

    @classmethod
    def ed25519(cls, private_key: Any) -> Signer:
        """A signer with an Ed25519 private key."""
        return cls("ed25519", _kid(_raw_public(private_key.public_key())), private_key)

    def sign(self, envelope: bytes) -> bytes:
        """The envelope with its signature spliced in as the first member."""
        if not envelope.startswith(b"{") or envelope.startswith(b"{}"):
            raise ValueError("only a non-empty JSON object envelope can be signed")
        if self.alg == "hs256":
            signature = hmac.digest(self.key, envelope, "sha256")
        else:
            signature = self.key.sign(envelope)
        token = f"{self.alg}.{self.kid}.{_b64(signature)}".encode("ascii")
        return SIG_PREFIX + token + b'",' + envelope[1:]


def split_signed(body: bytes) -> tuple[str, str, bytes, bytes] | None:
    """``(alg, kid, signature, signed_bytes)`` of a signed envelope, or None if it carries no signature.

    Raises:
        SignatureError: the sig member is malformed.
    """
    if not body.startswith(SIG_PREFIX):
        return None
    end = body.find(b'"', len(SIG_PREFIX))
    if end < 0 or body[end + 1 : end + 2] != b",":
        raise SignatureError("message signature is malformed (the sig member must be followed by a comma)")
    token = body[len(SIG_PREFIX) : end]
    if token.translate(None, _SAFE):  # anything left after deleting the safe characters is not safe
        raise SignatureError("message signature is malformed (unexpected characters)")
    alg, _, rest = token.decode("ascii").partition(".")
    kid, _, sig_text = rest.partition(".")
    try:
        signature = _unb64(sig_text)
    except (binascii.Error, ValueError):
        raise SignatureError("message signature is not valid base64") from None
    return alg, kid, signature, b"{" + body[end + 2 :]


class Verifier:
    """Checks signatures against every accepted key (all HMAC secrets and Ed25519 public keys)."""

    def __init__(self, hmac_secrets: Iterable[bytes] = (), public_keys: Iterable[Any] = ()) -> None:
        self._hmac: dict[str, list[bytes]] = {}
        for key in hmac_secrets:
            self._hmac.setdefault(_kid(key), []).append(key)
        self._ed25519: dict[str, list[Any]] = {}
        for public in public_keys:
            self._ed25519.setdefault(_kid(_raw_public(public)), []).append(public)

    def verify(self, body: bytes) -> bytes:
        """The signed envelope bytes (without the sig member) if the signature verifies.

        Raises:
            SignatureError: the message is unsigned, signed with an unknown key or algorithm,
                or its signature does not match its bytes.
        """
        parts = split_signed(body)
        if parts is None:
            raise SignatureError("unsigned message refused: this worker accepts only signed messages")
        alg, kid, signature, signed = parts
        if alg == "hs256":
            for key in self._hmac.get(kid, ()):
                expected = hmac.digest(key, signed, "sha256")
                if hmac.compare_digest(expected, signature):
                    return signed
        elif alg == "ed25519":
            from cryptography.exceptions import InvalidSignature

            for public in self._ed25519.get(kid, ()):
                try:
                    public.verify(signature, signed)
                except InvalidSignature:
                    continue
                return signed
        else:
            raise SignatureError(f"message signed with unknown algorithm {alg[:20]!r}; known: hs256, ed25519")
        if not self._hmac.get(kid) and not self._ed25519.get(kid):
            raise SignatureError(f"message signed with unknown {alg} key {kid[:20]!r}")
        raise SignatureError(f"bad signature: the message does not match its {alg} signature (key {kid})")
