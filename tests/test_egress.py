"""The egress client against an SSRF corpus, with real listeners and a real DNS server.

Every listener below binds on loopback. One of them, on 127.0.0.7, stands for "the outside
world": the operator allowlist admits exactly 127.0.0.7/32, so a call there must work. The others
(127.0.0.1, 127.0.0.2, [::1], same port) count connections and must see none, whatever spelling,
DNS answer or redirect chain a URL uses. A tiny DNS server on 127.0.0.1 answers the test names,
including one that answers the allowed address first and a forbidden one afterwards (rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import httpx
import pytest
from litestar import Litestar, post
from litestar.testing import AsyncTestClient

from kernel.ai.pricing import litellm_async
from kernel.ai.provider_clients import ProviderClients, _aiohttp_pool
from kernel.egress import EgressClient, EgressFailed, EgressRefused, NameserverResolver
from kernel.errors import exception_handlers
from kernel.settings import load_settings

ALLOWED = "127.0.0.7"


# --- a local DNS server ---------------------------------------------------------------------


@dataclass
class Zone:
    """Answers per (name, type); a list of answers is served in turn, the last one repeating."""

    port: int = 0
    records: dict[tuple[str, str], list[list[str]]] = field(default_factory=dict)
    queries: dict[tuple[str, str], int] = field(default_factory=dict)

    def answer(self, name: str, kind: str) -> list[str] | None:
        key = (name.rstrip(".").lower(), kind)
        self.queries[key] = self.queries.get(key, 0) + 1
        turns = self.records.get(key)
        if turns is None:
            return None
        return turns[min(self.queries[key], len(turns)) - 1]


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        question = query.question[0]
        name, kind = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        values = self.zone.answer(name, kind)
        known = any(key[0] == name.rstrip(".").lower() for key in self.zone.records)
        if values:
            reply.answer.append(dns.rrset.from_text(question.name, 0, "IN", kind, *values))
        elif not known:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(reply.to_wire(), addr)


# --- HTTP listeners ---------------------------------------------------------------------------


@dataclass
class Listeners:
    """The port every listener shares and what reached them."""

    port: int
    forbidden_connections: int = 0
    allowed_connections: int = 0
    hosts_seen: list[str] = field(default_factory=list)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(" ")[1], headers


def _answer(status: int, body: bytes = b"", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n".encode()
        + body
    )


def _allowed_handler(state: Listeners) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.allowed_connections += 1
        try:
            path, headers = await _read_head(reader)
            state.hosts_seen.append(headers.get("host", ""))
            if path.startswith("/redirect?to="):
                writer.write(_answer(302, extra=f"location: {path.removeprefix('/redirect?to=')}\r\n"))
            elif path == "/set-cookie":
                writer.write(_answer(200, b"{}", extra="set-cookie: session=tenant-a; Path=/\r\n"))
            elif path == "/cookie":
                writer.write(_answer(200, b'{"cookie": "%s"}' % headers.get("cookie", "").encode()))
            elif path == "/loop":
                writer.write(_answer(302, extra="location: /loop\r\n"))
            elif path == "/big":
                writer.write(_answer(200, b"x" * 300_000))
            elif path == "/gzip":  # 300 kB that travel as 300 bytes, with a header given twice
                extra = "content-encoding: gzip\r\nx-part: one\r\nx-part: two\r\n"
                writer.write(_answer(200, gzip.compress(b"z" * 300_000), extra=extra))
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                for _ in range(30):
                    writer.write(b"2710\r\n" + b"y" * 10_000 + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif path == "/stall":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                await writer.drain()
                await reader.read()  # until the client gives up and closes
            else:
                writer.write(_answer(200, b'{"host": "%s"}' % headers.get("host", "").encode()))
            await writer.drain()
        finally:
            writer.close()

    return handle


def _forbidden_handler(state: Listeners) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.forbidden_connections += 1
        writer.write(_answer(200, b"forbidden listener reached"))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return handle


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[tuple[Listeners, Zone, EgressClient]]:
    servers: list[asyncio.AbstractServer] = []
    state: Listeners | None = None
    for _ in range(20):  # the same free port on every loopback address
        allowed = await asyncio.start_server(lambda r, w: None, ALLOWED, 0)
        port = allowed.sockets[0].getsockname()[1]
        allowed.close()
        candidate = Listeners(port)
        try:
            servers = [await asyncio.start_server(_allowed_handler(candidate), ALLOWED, port)]
            for host in ("127.0.0.1", "127.0.0.2", "::1"):
                servers.append(await asyncio.start_server(_forbidden_handler(candidate), host, port))
        except OSError:
            for server in servers:
                server.close()
            continue
        state = candidate
        break
    assert state is not None
    zone = Zone()
    loop = asyncio.get_running_loop()
    dns_transport, _ = await loop.create_datagram_endpoint(lambda: _DnsProtocol(zone), local_addr=("127.0.0.1", 0))
    dns_port = zone.port = dns_transport.get_extra_info("sockname")[1]
    client = EgressClient(
        allow_networks=(f"{ALLOWED}/32",),
        resolver=NameserverResolver([f"127.0.0.1:{dns_port}"]),
        timeout=10,
        max_redirects=3,
        max_bytes=200_000,
    )
    try:
        yield state, zone, client
    finally:
        await client.aclose()
        dns_transport.close()
        for server in servers:
            server.close()


def _names(zone: Zone) -> None:
    zone.records.update({
        ("allowed.test", "A"): [[ALLOWED]],
        ("loopback.test", "A"): [["127.0.0.1"]],
        ("second.test", "A"): [["127.0.0.2"]],
        ("xn--lcalhost-nbh.test", "A"): [["127.0.0.1"]],  # an IDN name (Cyrillic o), asked for in its ASCII form
        ("v6loop.test", "AAAA"): [["::1"]],
        ("mapped.test", "AAAA"): [["::ffff:127.0.0.1"]],
        ("nat64.test", "AAAA"): [["64:ff9b::7f00:1"]],
        ("metadata.test", "A"): [["169.254.169.254"]],
        ("private.test", "A"): [["10.1.2.3"]],
        ("cgnat.test", "A"): [["100.64.0.1"]],
        ("ula.test", "AAAA"): [["fd00::1"]],
        ("mixed.test", "A"): [[ALLOWED, "127.0.0.1"]],
        ("mixed6.test", "A"): [[ALLOWED]],
        ("mixed6.test", "AAAA"): [["::1"]],
        # Rebinding: the allowed address first (standing in for a public one), loopback afterwards.
        ("rebind.test", "A"): [[ALLOWED], ["127.0.0.1"]],
    })


def _host_of(url: str) -> str:
    try:
        return httpx.URL(url).raw_host.decode()
    except httpx.InvalidURL:  # what httpx itself refuses to parse (0177.0.0.1)
        return ""


def corpus(port: int) -> list[str]:
    """URLs that must never reach a forbidden listener (nor anything else)."""
    numeric = [
        "127.0.0.1", "2130706433", "0177.0.0.1", "0177.0000.0000.0001", "0x7f.1", "0x7f000001", "0x7f.0.0.1",
        "127.1", "127.0.1", "0", "0.0.0.0", "127.0.0.2", "017700000001", "127.000.000.001", "0x7f.0x0.0x0.0x1",
        "localhost", "127.0.0.1.", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254",
        "224.0.0.1", "198.18.0.1", "240.0.0.1", "255.255.255.255", "192.0.0.1", "1.2.3.4.5", "0x100000000",
    ]
    ipv6 = [
        "[::1]", "[::]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:1]", "[::127.0.0.1]",
        "[64:ff9b::7f00:1]", "[64:ff9b::127.0.0.1]", "[2002:7f00:1::1]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "[fe80::1]", "[fe80::1%25lo]", "[::1%25lo]", "[fd00::1]", "[fc00::1]", "[fec0::1]", "[ff02::1]",
        "[::ffff:169.254.169.254]", "[::ffff:10.0.0.1]", "[0000:0000:0000:0000:0000:0000:0000:0001]",
    ]
    names = [
        "loopback.test", "second.test", "v6loop.test", "mapped.test", "nat64.test", "metadata.test",
        "private.test", "cgnat.test", "ula.test", "mixed.test", "mixed6.test", "nowhere.test", "l\u043ecalhost.test",
    ]
    urls = [f"http://{host}:{port}/" for host in numeric + ipv6 + names]
    urls += [f"https://{host}:{port}/" for host in ("127.0.0.1", "[::1]", "loopback.test")]
    urls += [f"http://{host}/latest/meta-data/" for host in ("169.254.169.254", "metadata.test", "[fd00:ec2::254]")]
    redirect = f"http://allowed.test:{port}/redirect?to="
    urls += [
        redirect + f"http://127.0.0.1:{port}/",
        redirect + f"http://2130706433:{port}/",
        redirect + f"http://[::1]:{port}/",
        redirect + f"http://[::ffff:127.0.0.1]:{port}/",
        redirect + f"http://loopback.test:{port}/",
        redirect + f"http://mixed.test:{port}/",
        redirect + "http://169.254.169.254/latest/meta-data/",
        redirect + "file:///etc/passwd",
        redirect + "gopher://127.0.0.1:6379/_INFO",
        # a chain: allowed -> allowed -> forbidden
        f"http://{ALLOWED}:{port}/redirect?to=http://allowed.test:{port}/redirect?to=http://second.test:{port}/",
    ]
    urls += ["ftp://allowed.test/", "file:///etc/passwd", f"http://user:pw@127.0.0.1:{port}/"]
    return urls


async def test_the_corpus_never_reaches_a_forbidden_listener(
    world: tuple[Listeners, Zone, EgressClient],
) -> None:
    state, zone, client = world
    _names(zone)
    urls = corpus(state.port)
    outcomes: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for url in urls:
        try:
            response = await client.get(url, field="webhook_url")
        except EgressRefused as refused:
            assert refused.status == 422 and refused.errors[0].field == "webhook_url"
            outcomes[url] = "refused"
            reasons[url] = refused.reason
        else:
            outcomes[url] = f"answered {response.status_code}"
    assert state.forbidden_connections == 0
    assert {url: o for url, o in outcomes.items() if o != "refused"} == {}
    # Names were refused for what they resolve to, not because the test DNS server failed them.
    for name in ("loopback.test", "v6loop.test", "mapped.test", "metadata.test", "mixed6.test", "xn--lcalhost"):
        judged = [reason for url, reason in reasons.items() if _host_of(url).startswith(name)]
        assert judged and all("resolves to" in reason for reason in judged), (name, judged)
    print(f"egress corpus: {len(urls)} URLs, all refused, {state.forbidden_connections} forbidden connections")


async def test_an_allowlisted_listener_answers_with_the_name_in_host(
    world: tuple[Listeners, Zone, EgressClient],
) -> None:
    state, zone, client = world
    _names(zone)
    response = await client.get(f"http://allowed.test:{state.port}/echo")
    assert response.status_code == 200 and response.json() == {"host": f"allowed.test:{state.port}"}
    assert response.url == f"http://allowed.test:{state.port}/echo"
    followed = await client.get(f"http://allowed.test:{state.port}/redirect?to=http://{ALLOWED}:{state.port}/x")
    assert followed.json() == {"host": f"{ALLOWED}:{state.port}"} and followed.url.endswith("/x")
    # The same address written otherwise stays judged by the address: allowed too.
    mapped = await client.get(f"http://[::ffff:{ALLOWED}]:{state.port}/")
    assert mapped.status_code == 200
    assert state.forbidden_connections == 0


async def test_no_cookie_is_kept_from_one_call_for_the_next(
    world: tuple[Listeners, Zone, EgressClient],
) -> None:
    # One client serves every tenant: a cookie one target sets must not ride along with a later
    # call (another tenant's) to the same host.
    state, zone, client = world
    _names(zone)
    first = await client.get(f"http://allowed.test:{state.port}/set-cookie")
    assert first.headers["set-cookie"].startswith("session=tenant-a")
    second = await client.get(f"http://allowed.test:{state.port}/cookie")
    assert second.json() == {"cookie": ""}


async def test_dns_rebinding_cannot_move_the_connection(world: tuple[Listeners, Zone, EgressClient]) -> None:
    state, zone, client = world
    _names(zone)
    zone.queries.pop(("rebind.test", "A"), None)
    before = state.allowed_connections
    first = await client.get(f"http://rebind.test:{state.port}/")
    assert first.status_code == 200 and state.allowed_connections == before + 1
    assert zone.queries[("rebind.test", "A")] == 1  # one lookup, judged and connected to
    with pytest.raises(EgressRefused):  # the name now points at loopback: refused, not connected
        await client.get(f"http://rebind.test:{state.port}/")
    assert state.forbidden_connections == 0


async def test_caps_on_size_redirects_and_time(world: tuple[Listeners, Zone, EgressClient]) -> None:
    state, zone, client = world
    _names(zone)
    base = f"http://allowed.test:{state.port}"
    with pytest.raises(EgressFailed, match="larger than"):
        await client.get(f"{base}/big")
    with pytest.raises(EgressFailed, match="larger than"):
        await client.get(f"{base}/chunked")  # no length announced: stopped while streaming
    assert len((await client.get(f"{base}/big", max_bytes=400_000)).content) == 300_000
    with pytest.raises(EgressFailed, match="redirects"):
        await client.get(f"{base}/loop")
    with pytest.raises(EgressFailed, match="within"):
        await client.get(f"{base}/stall", seconds=0.3)
    assert state.forbidden_connections == 0


async def test_a_compressed_answer_is_decoded_once_and_capped_at_its_decoded_size(
    world: tuple[Listeners, Zone, EgressClient],
) -> None:
    # The pool under the pinned transport must hand the body over as it came: httpx decodes it, so
    # the size cap holds against a compression bomb, and a body decoded twice would be garbage.
    state, zone, client = world
    _names(zone)
    with pytest.raises(EgressFailed, match="larger than"):
        await client.get(f"http://allowed.test:{state.port}/gzip")  # cap 200 000, decoded 300 000
    answer = await client.get(f"http://allowed.test:{state.port}/gzip", max_bytes=400_000)
    assert answer.content == b"z" * 300_000
    assert answer.headers.get_list("x-part") == ["one", "two"]


async def test_proxy_variables_are_ignored(
    world: tuple[Listeners, Zone, EgressClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, zone, client = world
    _names(zone)
    proxy = f"http://127.0.0.1:{state.port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for pool in (None, _aiohttp_pool):
        fresh = EgressClient(allow_networks=(f"{ALLOWED}/32",), resolver=client.transport.resolver, pool=pool)
        try:
            assert (await fresh.get(f"http://allowed.test:{state.port}/")).status_code == 200
        finally:
            await fresh.aclose()
    assert state.forbidden_connections == 0


async def test_a_refusal_is_a_422_naming_the_field(world: tuple[Listeners, Zone, EgressClient]) -> None:
    state, zone, client = world
    _names(zone)

    @post("/hooks", status_code=201)
    async def add_hook(data: dict[str, str]) -> dict[str, str]:
        await client.check(data["target"], field="target")
        return {"target": data["target"]}

    app = Litestar([add_hook], exception_handlers=exception_handlers)
    async with AsyncTestClient(app) as http:
        refused = await http.post("/hooks", json={"target": "http://169.254.169.254/"})
        assert refused.status_code == 422
        assert refused.json()["errors"] == [{"field": "target", "message": "169.254.169.254 is not a public address"}]
        assert (await http.post("/hooks", json={"target": "http://[::1"})).status_code == 422
        # (a literal: this app runs on another event loop than the test DNS server)
        accepted = await http.post("/hooks", json={"target": f"http://{ALLOWED}:{state.port}/"})
        assert accepted.status_code == 201, accepted.text
    assert state.forbidden_connections == 0


async def test_check_host_judges_other_protocols_by_the_same_rules(
    world: tuple[Listeners, Zone, EgressClient],
) -> None:
    """SMTP and NATS connectors judge their host with check_host and connect to the address it returns."""
    _, zone, client = world
    _names(zone)
    assert await client.check_host("allowed.test", 587) == ALLOWED
    assert await client.check_host(ALLOWED, 4222) == ALLOWED
    for host, reason in (
        ("private.test", "resolves to 10.1.2.3"), ("mixed.test", "127.0.0.1"), ("mixed6.test", "::1"),
        ("169.254.169.254", "not a public address"), ("2130706433", "not a public address"), ("[::1]", "::1"),
    ):
        with pytest.raises(EgressRefused) as refused:
            await client.check_host(host, 25, field="host")
        assert refused.value.errors[0].field == "host" and reason in refused.value.reason, (host, refused.value.reason)
    with pytest.raises(EgressRefused) as bad_port:
        await client.check_host("allowed.test", 0, field="port")
    assert bad_port.value.errors[0].field == "port"


async def test_litellm_calls_go_through_the_egress_client(
    world: tuple[Listeners, Zone, EgressClient], tmp_path: Path
) -> None:
    """The AI proxy hands litellm our client for OpenAI-path models: a base litellm would happily
    connect to is refused before any connection, and a rebinding name is resolved once."""
    state, zone, _ = world
    _names(zone)
    settings = load_settings({
        "BUSINESSOS_SECRET_KEY": "s" * 40,
        "BUSINESSOS_DATA_DIR": str(tmp_path),
        "BUSINESSOS_EGRESS_ALLOW_NETWORKS": f"{ALLOWED}/32",
        "BUSINESSOS_EGRESS_NAMESERVERS": f"127.0.0.1:{zone.port}",
    })
    clients = ProviderClients(settings)
    litellm = await litellm_async()
    zone.queries.pop(("rebind.test", "A"), None)
    try:
        for base in (
            f"http://127.0.0.1:{state.port}/v1", f"http://loopback.test:{state.port}/v1",
            f"http://[::ffff:127.0.0.1]:{state.port}/v1", f"http://rebind.test:{state.port}/v1",
        ):
            arguments = clients.arguments("openai/gpt-4o-mini", "sk-test", base)
            assert "client" in arguments
            with pytest.raises(Exception):  # noqa: B017 - refused (or, rebind.test, not an OpenAI answer)
                await litellm.acompletion(
                    model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], api_key="sk-test",
                    api_base=base, max_retries=0, num_retries=0, timeout=5, **arguments,
                )
    finally:
        await clients.aclose()
    assert zone.queries[("rebind.test", "A")] == 1  # the first answer (allowed) was judged and used
    assert state.forbidden_connections == 0


def test_the_loopback_aliases_exist() -> None:
    """127.0.0.7 and ::1 must be bindable for the listeners above (Linux loopback)."""
    with socket.socket() as probe:
        probe.bind((ALLOWED, 0))


def test_egress_settings_are_parsed_and_named_when_malformed(tmp_path: Path) -> None:
    from kernel.settings import SettingsError

    base = {"BUSINESSOS_SECRET_KEY": "s" * 40, "BUSINESSOS_DATA_DIR": str(tmp_path)}
    settings = load_settings({
        **base,
        "BUSINESSOS_EGRESS_ALLOW_NETWORKS": "127.0.0.7, 10.9.0.0/16",
        "BUSINESSOS_EGRESS_NAMESERVERS": "127.0.0.1:5353, [::1]:53, 9.9.9.9",
    })
    assert settings.egress_allow_networks == ("127.0.0.7/32", "10.9.0.0/16")
    assert settings.egress_nameservers == ("127.0.0.1:5353", "[::1]:53", "9.9.9.9")
    for name, value in (
        ("BUSINESSOS_EGRESS_ALLOW_NETWORKS", "intranet"),
        ("BUSINESSOS_EGRESS_NAMESERVERS", "dns.example"),
        ("BUSINESSOS_EGRESS_MAX_REDIRECTS", "50"),
    ):
        with pytest.raises(SettingsError, match=name):
            load_settings({**base, name: value})


def _tls_contexts(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A private CA and a certificate for ``name``: (server context, client context)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert.write_bytes(leaf.public_bytes(pem))
        key.write_bytes(
            leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


async def test_tls_goes_to_the_judged_address_with_the_names_sni_and_certificate(
    world: tuple[Listeners, Zone, EgressClient],
) -> None:
    state, zone, client = world
    _names(zone)
    server_context, client_context = _tls_contexts("allowed.test")
    names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    seen = Listeners(0)
    server = await asyncio.start_server(_allowed_handler(seen), ALLOWED, 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        # httpx's own connections (plugins) and litellm's aiohttp transport (AI calls) alike.
        for pool in (None, _aiohttp_pool):
            names.clear()
            tls = EgressClient(
                allow_networks=(f"{ALLOWED}/32",), resolver=client.transport.resolver, verify=client_context, pool=pool
            )
            try:
                answer = await tls.get(f"https://allowed.test:{port}/echo")
                assert answer.json() == {"host": f"allowed.test:{port}"} and names == ["allowed.test"], pool
                # The same server by its address: the certificate is for the name, so the check fails.
                with pytest.raises(EgressFailed):
                    await tls.get(f"https://{ALLOWED}:{port}/echo")
            finally:
                await tls.aclose()
    finally:
        server.close()
    assert state.forbidden_connections == 0
