"""Message security: signatures, encryption of arguments and results, and size/depth limits.

:class:`MessageSecurity` is built once per app from its settings. The app calls
:meth:`MessageSecurity.seal_outgoing` on every encoded message and the worker calls
:meth:`MessageSecurity.open_incoming` on every delivery, so the rest of asyncq stays
unaware of keys. docs/security.md explains the threat model; docs/protocol.md the wire form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from asyncq.exceptions import ConfigurationError
from asyncq.security.encryption import Cipher, encryption_keys, generate_key
from asyncq.security.limits import check_depth, check_size
from asyncq.security.signing import Signer, Verifier, hmac_keys, load_private_key, load_public_key

if TYPE_CHECKING:
    from asyncq.config import Conf
    from asyncq.message import Message
    from asyncq.serializers import Serializers
    from asyncq.task import Task

__all__ = [
    "Cipher",
    "MessageSecurity",
    "Signer",
    "Verifier",
    "generate_key",
    "log_startup_warnings",
    "startup_warnings",
]

logger = logging.getLogger(__name__)

_PICKLE = "application/x-python-serialize"


class MessageSecurity:
    """What one app does to its messages on the way out and on the way in."""

    def __init__(
        self,
        *,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        cipher: Cipher | None = None,
        encrypt_all: bool = False,
        max_bytes: int | None = None,
        max_depth: int | None = None,
    ) -> None:
        self.signer = signer
        self.verifier = verifier
        self.cipher = cipher
        self.encrypt_all = encrypt_all
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    @classmethod
    def from_conf(cls, conf: Conf) -> MessageSecurity:
        """Build from the ``security_*`` and ``message_max_*`` settings, validating each."""
        secrets = hmac_keys(conf.security_key)
        private = conf.security_private_key
        private_key = load_private_key(private) if private else None
        publics = [load_public_key(item) for item in _listed(conf.security_public_keys)]
        if private_key is not None:
            publics.append(private_key.public_key())  # a signer accepts its own messages
        signer = Signer.ed25519(private_key) if private_key is not None else None
        if signer is None and secrets:
            signer = Signer.hmac(secrets[0])
        verifier = Verifier(secrets, publics) if (secrets or publics) else None
        keys = encryption_keys(conf.security_encryption_key)
        encrypt_all = bool(conf.security_encrypt)
        if encrypt_all and not keys:
            raise ConfigurationError("security_encrypt is on but security_encryption_key is not set")
        return cls(
            signer=signer,
            verifier=verifier,
            cipher=Cipher(keys) if keys else None,
            encrypt_all=encrypt_all,
            max_bytes=_limit(conf.message_max_bytes, "message_max_bytes"),
            max_depth=_limit(conf.message_max_depth, "message_max_depth"),
        )

    def should_encrypt(self, task_option: bool | None) -> bool:
        """Whether a task's arguments and results are encrypted (its option, else the app's setting)."""
        wanted = self.encrypt_all if task_option is None else task_option
        if wanted and self.cipher is None:
            raise ConfigurationError("a task asks for encrypt=True but security_encryption_key is not set")
        return wanted

    def encrypts(self, task: Task[Any, Any] | None) -> bool:
        """Whether a worker seals this task's results (never raises: the worker must keep going)."""
        if self.cipher is None:
            return False
        option = task.options.encrypt if task is not None else None
        return self.encrypt_all if option is None else option

    def seal_outgoing(self, body: bytes, task: str) -> bytes:
        """Sign an encoded envelope and check its size.

        Raises:
            ConfigurationError: this app verifies signatures but holds no key to sign with.
            MessageTooLargeError: the message is over ``message_max_bytes``.
        """
        if self.signer is not None:
            body = self.signer.sign(body)
        elif self.verifier is not None:
            raise ConfigurationError(
                f"cannot send task {task!r}: this app verifies signatures (security_public_keys) but has "
                "no key to sign with; set security_private_key or security_key"
            )
        check_size(len(body), self.max_bytes, task)
        return body

    def sign_control(self, body: bytes) -> bytes:
        """Sign a control request (revoke, shutdown, rate limits...) when this app has a key."""
        return body if self.signer is None else self.signer.sign(body)

    def open_control(self, body: bytes) -> bytes:
        """A control request's bytes once its signature verifies (as is when signing is off).

        Raises:
            SignatureError: signing is on and the request is unsigned or badly signed.
        """
        return body if self.verifier is None else self.verifier.verify(body)

    def incoming_opener(self) -> Callable[[bytes, Serializers], Message]:
        """:meth:`open_incoming` with what is off left out, for a worker to call per delivery."""
        from asyncq.message import decode_message

        if self.verifier is not None:
            return self.open_incoming
        max_bytes, max_depth = self.max_bytes, self.max_depth

        def open_unsigned(body: bytes, serializers: Serializers) -> Message:
            if max_bytes is not None and len(body) > max_bytes:
                check_size(len(body), max_bytes)
            message = decode_message(body, serializers)
            if max_depth is not None and (message.args or message.kwargs):
                check_depth(message.args, max_depth)
                check_depth(message.kwargs, max_depth)
            return message

        return open_unsigned if max_bytes is not None or max_depth is not None else decode_message

    def open_incoming(self, body: bytes, serializers: Serializers) -> Message:
        """Check a delivery's size and signature, then decode it and check its depth.

        Raises:
            SignatureError: signing is on and the message is unsigned or badly signed.
            SerializationError: too large, too deep, or not a valid envelope.
        """
        from asyncq.message import decode_message

        check_size(len(body), self.max_bytes)
        if self.verifier is not None:
            body = self.verifier.verify(body)
        message = decode_message(body, serializers)
        if self.max_depth is not None:
            check_depth(message.args, self.max_depth)
            check_depth(message.kwargs, self.max_depth)
        return message


def _listed(value: Any) -> list[Any]:
    if not value:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _limit(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer or None, not {value!r}")
    return value


def log_startup_warnings(conf: Conf, tasks: Iterable[Task[Any, Any]] = ()) -> None:
    """Log, as a worker starts, each setting that weakens message security."""
    for warning in startup_warnings(conf, tasks):
        logger.warning("%s", warning)


def startup_warnings(conf: Conf, tasks: Iterable[Task[Any, Any]] = ()) -> list[str]:
    """Settings that weaken message security, one sentence each."""
    from asyncq.serializers import Serializers

    warnings = []
    if conf.security_public_keys and not (conf.security_key or conf.security_private_key):
        warnings.append(
            "security_public_keys is set but no signing key: retries and canvas steps this worker "
            "publishes cannot be signed; set security_key or security_private_key as well"
        )
    if not conf.security_encryption_key:
        encrypted = sorted(task.name for task in tasks if task.options.encrypt)
        if encrypted:
            warnings.append(
                f"tasks {', '.join(encrypted)} ask for encrypt=True but security_encryption_key is not set"
            )
    if _PICKLE in Serializers(conf.accept_content).accepted:
        warnings.append(
            "accept_content includes pickle: anyone who can write to the broker can run code in this "
            "worker; sign messages (security_key) or remove pickle"
        )
    return warnings
