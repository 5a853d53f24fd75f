"""The aiobotocore SQS client behind ``sqs://``: one client, every call under a deadline.

Client errors become :class:`BrokerError` / :class:`BrokerConnectionError` with a one-line
message here, so the broker module speaks only of queues and messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

from asyncq._connect import describe_peer
from asyncq._utils import describe_error
from asyncq.brokers._sqs_options import SQSSettings
from asyncq.exceptions import BrokerConnectionError, BrokerError, ConfigurationError, MissingDependencyError

try:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("aiobotocore", "sqs") from exc

__all__ = ["SQSClient", "error_code"]

#: Error codes meaning "no such queue" (query and JSON protocols).
_NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


def error_code(exc: BaseException) -> str:
    """The SQS error code of a client error ('' for anything else)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("QueryErrorCode") or error.get("Code") or "")
    return ""


def is_missing_queue(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return bool({error.get("Code"), error.get("QueryErrorCode")} & _NO_QUEUE)


class SQSClient:
    """An open aiobotocore SQS client; :meth:`call` runs one operation with a deadline."""

    def __init__(self, settings: SQSSettings) -> None:
        self.settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    @property
    def where(self) -> str:
        return (
            self.settings.endpoint_url or f"the AWS endpoint of region {self.settings.region or '(default)'}"
        )

    async def open(self) -> None:
        if self._client is not None:
            return
        s = self.settings
        config = AioConfig(
            connect_timeout=s.connect_timeout,
            # A long poll answers only after wait_time: the read deadline leaves room for it.
            read_timeout=s.wait_time + s.request_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=64,
        )
        credentials = {}
        if s.access_key is not None:
            credentials = {"aws_access_key_id": s.access_key, "aws_secret_access_key": s.secret_key}
            if s.session_token:
                credentials["aws_session_token"] = s.session_token
        session = get_session()
        try:
            self._client = await self._stack.enter_async_context(
                session.create_client(
                    "sqs", region_name=s.region, endpoint_url=s.endpoint_url, config=config, **credentials
                )
            )
        except NoRegionError:
            raise ConfigurationError(
                "sqs:// needs a region: set ?region=NAME, AWS_DEFAULT_REGION or the AWS config file"
            ) from None
        except (BotoCoreError, ValueError) as exc:
            raise ConfigurationError(f"cannot set up the SQS client: {describe_error(exc)}") from None
        try:
            # Proves the endpoint speaks SQS and the credentials sign, before any work is taken.
            await self.call("list_queues", timeout=s.connect_timeout, QueueNamePrefix=s.queue_prefix or "a")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    async def call(self, operation: str, *, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """Run ``operation`` within ``timeout`` (default: the request timeout, plus any long poll)."""
        if self._client is None:
            raise BrokerConnectionError("the sqs:// broker is not connected (call connect() first)")
        if timeout is None:
            timeout = self.settings.request_timeout + float(params.get("WaitTimeSeconds", 0))
        try:
            async with asyncio.timeout(timeout):
                result: dict[str, Any] = await getattr(self._client, operation)(**params)
                return result
        except TimeoutError:
            raise BrokerConnectionError(
                f"SQS {operation} at {self.where} did not answer within {timeout:g}s{await self._peer()}"
            ) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code, text = error_code(exc) or status, error.get("Message") or describe_error(exc)
            if isinstance(status, int) and status >= 500:
                raise BrokerConnectionError(
                    f"SQS {operation} at {self.where} failed: {code}: {text}"
                ) from exc
            raise BrokerError(f"SQS {operation} failed: {code}: {text}") from exc
        except NoCredentialsError:
            raise ConfigurationError(
                "sqs:// found no AWS credentials: give KEY:SECRET@ in the URL, the aws_* options,"
                " or configure the AWS credential chain"
            ) from None
        except (BotoCoreError, OSError) as exc:
            raise BrokerConnectionError(
                f"SQS {operation} at {self.where} failed: {describe_error(exc)}{await self._peer()}"
            ) from exc

    async def _peer(self) -> str:
        """What answers at a custom endpoint, for a message after a failure (a wrong port?)."""
        endpoint = self.settings.endpoint_url
        if endpoint is None:
            return ""
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        probe = f"GET / HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode()
        answer = await describe_peer(parts.hostname or "127.0.0.1", port, probe)
        return "" if "HTTP/" in answer else f" ({answer})"
