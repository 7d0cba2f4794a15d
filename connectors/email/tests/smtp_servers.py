"""Real SMTP servers (aiosmtpd) on 127.0.0.1 for the e-mail connector's tests: STARTTLS, TLS from
the start, and plain, each with AUTH, and a certificate authority made for the test run."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER = "mailer"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Arrival:
    """How one message reached the servers: the port it came in on, whether the session was
    encrypted (TLS from the start or after STARTTLS) and whether it had logged in."""

    port: int
    encrypted: bool
    authenticated: bool
    envelope: Envelope


@dataclass
class Inbox:
    """What the servers received: one envelope per message, and how each arrived."""

    envelopes: list[Envelope] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        transport = server.transport
        self.envelopes.append(envelope)
        self.arrivals.append(
            Arrival(
                port=int(transport.get_extra_info("sockname")[1]),
                encrypted=transport.get_extra_info("ssl_object") is not None,
                authenticated=bool(session.authenticated),
                envelope=envelope,
            )
        )
        return "250 Message accepted for delivery"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, written to ``folder``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SmtpServers:
    inbox: Inbox
    starttls: int
    """Port of a server that requires STARTTLS before AUTH and mail."""
    tls: int
    """Port of a server speaking TLS from the first byte."""
    plain: int
    """Port of a plain server (AUTH allowed without TLS)."""
    ca: Path
    """The CA that signed the servers' certificate."""


@contextmanager
def running_smtp(folder: Path) -> Iterator[SmtpServers]:
    """Three aiosmtpd servers sharing one inbox, in threads of their own."""
    ca, cert, key = make_certificates(folder)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    inbox = Inbox()
    ports = _free_port(), _free_port(), _free_port()
    controllers = [
        Controller(
            inbox,
            hostname="127.0.0.1",
            port=ports[0],
            authenticator=authenticate,
            auth_require_tls=True,
            require_starttls=True,
            tls_context=server_context,
        ),
        Controller(
            inbox,
            hostname="127.0.0.1",
            port=ports[1],
            authenticator=authenticate,
            auth_require_tls=False,
            ssl_context=server_context,
        ),
        Controller(inbox, hostname="127.0.0.1", port=ports[2], authenticator=authenticate, auth_require_tls=False),
    ]
    with ExitStack() as stack:
        for controller in controllers:
            controller.start()
            stack.callback(controller.stop)
        yield SmtpServers(inbox=inbox, starttls=ports[0], tls=ports[1], plain=ports[2], ca=ca)
