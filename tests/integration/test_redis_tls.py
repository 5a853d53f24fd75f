"""Redis over TLS: broker, backend and multiplexed connection with mutual TLS; bad certificates refused.

The module makes a CA, a server certificate (for 127.0.0.1 and localhost), a client
certificate, and a second, untrusted CA, then starts its own ``redis-server`` with TLS only.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from asyncq import App
from asyncq._resp import open_multiplexed, pack_commands
from asyncq.exceptions import BackendConnectionError, BrokerConnectionError
from tests.services import missing

TIMEOUT = 30.0


@dataclass(frozen=True)
class Pki:
    ca: Path
    rogue_ca: Path
    client_cert: Path
    client_key: Path
    port: int


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed; this test starts its own")
    d = tmp_path_factory.mktemp("tls")
    ca_key, rogue_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("asyncq test CA", ca_key, None, ca=True)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _cert("localhost", server_key, ("asyncq test CA", ca_key), sans=sans)
    client = _cert("asyncq client", client_key, ("asyncq test CA", ca_key))
    paths = Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        rogue_ca=_write_cert(_cert("rogue CA", rogue_key, None, ca=True), d / "rogue-ca.pem"),
        client_cert=_write_cert(client, d / "client.pem"),
        client_key=_write_key(client_key, d / "client.key"),
        port=_free_port(),
    )
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(paths.port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(_write_cert(server, d / "server.pem")),
         "--tls-key-file", str(_write_key(server_key, d / "server.key")),
         "--tls-ca-cert-file", str(paths.ca), "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", paths.port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the TLS redis-server did not start")
            time.sleep(0.05)
    yield paths
    proc.terminate()
    proc.wait(timeout=10)


def _url(pki: Pki, ca: Path | None = None, **extra: Any) -> str:
    query = {
        "ssl_ca_certs": str(ca or pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
        **{k: str(v) for k, v in extra.items()},
    }
    return f"rediss://127.0.0.1:{pki.port}/0?" + "&".join(f"{k}={v}" for k, v in query.items())


@pytest.mark.parametrize("multiplex", ["true", "false"])
async def test_broker_and_backend_over_mutual_tls(pki: Pki, multiplex: str) -> None:
    app = App("tls", broker=_url(pki, multiplex=multiplex))

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        assert app.backend_url.startswith("rediss://")  # the backend follows the broker, over TLS too
        async with app.worker():
            results = [await add.enqueue(i, i) for i in range(20)]
            assert [await r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(20)]
    finally:
        await app.purge()
        await app.aclose()


async def test_multiplexed_connection_over_tls_and_refusal(pki: Pki) -> None:
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    trusted.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    mux = await asyncio.wait_for(
        open_multiplexed("127.0.0.1", pki.port, name="tls-test", ssl_context=trusted), TIMEOUT
    )
    try:
        assert await mux.call(pack_commands([("PING",)]), 1) == [b"PONG"]
    finally:
        mux.close()
    rogue = ssl.create_default_context(cafile=str(pki.rogue_ca))
    rogue.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(
            open_multiplexed("127.0.0.1", pki.port, name="rogue", ssl_context=rogue), TIMEOUT
        )


async def test_a_server_certificate_that_does_not_verify_is_refused(pki: Pki) -> None:
    for broker in (True, False):
        url = _url(pki, ca=pki.rogue_ca, retry_timeout=1)
        app = App("tls-rogue", broker=url if broker else "memory://", backend=None if broker else url)
        with pytest.raises(BrokerConnectionError if broker else BackendConnectionError) as caught:
            await asyncio.wait_for(app.connect(), TIMEOUT)
        assert "certificate verify failed" in str(caught.value) or "CERTIFICATE" in str(caught.value).upper()
        await app.aclose()
