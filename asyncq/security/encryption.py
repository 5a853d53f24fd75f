"""Authenticated encryption (AES-256-GCM) of task arguments and results, with key rotation.

A sealed payload is ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; the envelope
names the key in its ``encryption`` field as ``"aes256gcm.<kid>"``. The associated data
binds a ciphertext to its message (``asyncq:msg:<id>:<task>``) or to its result
(``asyncq:result:<id>``), so a ciphertext moved to another message does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Any, Final

from asyncq.exceptions import ConfigurationError, MissingDependencyError, SerializationError

__all__ = ["ALG", "Cipher", "encryption_keys", "generate_key"]

ALG: Final = "aes256gcm"
_NONCE: Final = 12


def generate_key() -> str:
    """A new random AES-256 key, URL-safe base64: a value for ``security_encryption_key``."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def encryption_keys(value: Any) -> list[bytes]:
    """The ``security_encryption_key`` setting as 32-byte keys, the first encrypting."""
    if value is None or value in ("", []):
        return []
    items = value if isinstance(value, list | tuple) else [value]
    keys = []
    for item in items:
        if isinstance(item, str):
            try:
                key = base64.urlsafe_b64decode(item.strip() + "=" * (-len(item.strip()) % 4))
            except (binascii.Error, ValueError):
                key = b""
        elif isinstance(item, bytes):
            key = item
        else:
            raise ConfigurationError(
                f"security_encryption_key must be base64 text or 32 bytes, not {type(item).__name__}"
            )
        if len(key) != 32:
            raise ConfigurationError(
                "security_encryption_key must be 32 bytes (or their URL-safe base64); make one with "
                "python -c 'from asyncq.security import generate_key; print(generate_key())'"
            )
        keys.append(key)
    return keys


def _kid(key: bytes) -> str:
    return hashlib.sha256(b"asyncq-enc-kid:" + key).hexdigest()[:8]


class Cipher:
    """AES-256-GCM with the first key sealing and every key opening (rotation)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a Cipher needs at least one key")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependencyError.for_extra("cryptography", "security") from exc
        self._sealing = (_kid(keys[0]), AESGCM(keys[0]))
        self._opening: dict[str, list[Any]] = {}
        for key in keys:
            self._opening.setdefault(_kid(key), []).append(AESGCM(key))

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Encrypt; return the envelope's ``encryption`` label and the sealed bytes."""
        kid, aead = self._sealing
        nonce = os.urandom(_NONCE)
        return f"{ALG}.{kid}", nonce + aead.encrypt(nonce, plaintext, aad)

    def open(self, label: Any, sealed: bytes, aad: bytes) -> bytes:
        """Decrypt what :meth:`seal` made.

        Raises:
            SerializationError: unknown algorithm or key, or the ciphertext was altered.
        """
        from cryptography.exceptions import InvalidTag

        alg, _, kid = str(label).partition(".")
        if alg != ALG:
            raise SerializationError(f"unknown encryption {str(label)[:40]!r}; this asyncq knows {ALG}")
        candidates = self._opening.get(kid)
        if not candidates:
            raise SerializationError(f"encrypted with unknown key {kid[:20]!r} (see security_encryption_key)")
        nonce, data = sealed[:_NONCE], sealed[_NONCE:]
        for aead in candidates:
            try:
                return bytes(aead.decrypt(nonce, data, aad))
            except InvalidTag:
                continue
            except ValueError as exc:
                raise SerializationError(f"cannot decrypt: {exc}") from None
        raise SerializationError("cannot decrypt: the ciphertext or its associated data was altered")
