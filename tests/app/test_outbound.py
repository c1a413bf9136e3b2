"""The outbound guard (app/core/outbound.py), unit level: no database, no DNS, no network.

Safety: every test resolves names through ``FakeResolver`` (never the system resolver) and
connects through ``RecordingBackend``, which records each attempt and refuses anything that is
not a loopback address *before* opening a socket, so even a broken guard cannot reach beyond
127.0.0.1. Real connections go only to receivers on 127.0.0.1 that the test allowlists.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.core import outbound
from app.core.config import Settings
from app.core.outbound import Outbound, Policy, Refused


class RecordingBackend(httpcore.NetworkBackend):
    """Records every TCP connection attempt; only loopback addresses are really connected."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []
        self.real = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001, ANN201
        self.attempts.append((host, port))
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:  # a name: the guard should have pinned an address; never resolve it here
            loopback = False
        if not loopback:
            raise httpcore.ConnectError("test backend: connections outside loopback are never made")
        return self.real.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                     socket_options=socket_options)

    def connect_unix_socket(self, *a, **kw):  # noqa: ANN002, ANN003, ANN201
        raise httpcore.ConnectError("no unix sockets")

    def sleep(self, seconds: float) -> None:
        self.real.sleep(seconds)


class FakeResolver:
    """Answers from a table (a list per lookup: the n-th lookup of a name gets the n-th answer, the last
    one repeats: a rebinding DNS server); unknown names fail. Records every lookup."""

    def __init__(self, table: dict[str, list[list[str]] | list[str]]) -> None:
        self.table = {k: (v if v and isinstance(v[0], list) else [v]) for k, v in table.items()}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise outbound.DNSError("unknown test name")
        answers = self.table[host]
        return list(answers[min(self.lookups.count(host) - 1, len(answers) - 1)])


class Receiver:
    """A loopback HTTP(S) receiver that records requests (path, Host header, body)."""

    def __init__(self, status: int = 200, body: bytes = b"", ssl_context: ssl.SSLContext | None = None) -> None:
        self.seen: list[dict] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec.seen.append({"path": self.path, "host": self.headers["Host"], "body": raw,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(status)
                if status in (301, 302, 307):
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


PUBLIC = Policy(allow_http=True)  # production-like address rules, http admitted for loopback test servers


# ---------------------------------------------------------------- addresses

BLOCKED = [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "RFC 1918"), ("172.16.5.4", "RFC 1918"), ("172.31.255.255", "RFC 1918"), ("192.168.1.1", "RFC 1918"),
    ("fc00::1", "RFC 4193"), ("fd12:3456::1", "RFC 4193"), ("fd00:ec2::254", "RFC 4193"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("fe80::1%2", "link-local"),
    ("100.64.0.1", "CGNAT"), ("100.127.255.254", "CGNAT"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.0.170", "IETF"),
    ("192.0.2.1", "documentation"), ("2001:db8::1", "documentation"), ("198.18.0.1", "benchmarking"),
    ("fec0::1", "site-local"), ("100::1", "discard"), ("2001::1", "Teredo"), ("64:ff9b:1::a", "NAT64"),
    # IPv4 carried in IPv6: mapped, compatible, NAT64 (well-known prefix), 6to4
    ("::ffff:127.0.0.1", "IPv4-mapped"), ("::ffff:169.254.169.254", "IPv4-mapped"), ("::ffff:10.0.0.1", "IPv4-mapped"),
    ("::127.0.0.1", "IPv4-compatible"), ("::10.1.1.1", "IPv4-compatible"),
    ("64:ff9b::a9fe:a9fe", "NAT64"), ("64:ff9b::7f00:1", "NAT64"),
    ("2002:7f00:1::1", "6to4"), ("2002:a9fe:a9fe::", "6to4"), ("2002:c0a8:101::", "6to4"),
    ("::ffff:0:10.0.0.1", "SIIT"), ("::1:2:3", "reserved (::/8)"),
]
PUBLIC_ADDRESSES = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700:4700::1111",
                    "2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_addresses_inside_the_network_are_blocked_with_their_reason(address: str, why: str) -> None:
    reason = outbound.blocked(ipaddress.ip_address(address))
    assert reason is not None and why in reason
    url = f"http://{'[' + address + ']' if ':' in address else address}:8080/cb"
    with pytest.raises(Refused) as err:  # and so is a URL naming it literally
        outbound.admit(url, PUBLIC)
    assert err.value.status == 422 and err.value.code == "callback_url_refused"
    assert url not in err.value.detail and "8080" not in err.value.detail  # says why, never echoes the URL


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_pass(address: str) -> None:
    assert outbound.blocked(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("url", "why"), [
    ("http://2130706433/x", "loopback"), ("http://0x7f.1/", "loopback"), ("http://127.1/", "loopback"),
    ("http://0251.0376.0251.0376/", "link-local"),  # octal 169.254.169.254
    ("http://127.0.0.1.:8000/", "loopback"), ("http://example.com%40127.0.0.1/", "not a valid host name"),
    ("http://localhost:8000/", "loopback"), ("http://api.localhost/", "loopback"),
    ("http://metadata/computeMetadata", "internal-only name"), ("http://metadata.google.internal/", "internal-only"),
    ("http://printer.local/", "internal-only"), ("http://nas.home.arpa/", "internal-only"),
    ("ftp://example.com/", "https"), ("/privacy-request/pri_1/resume", "not absolute"), ("http://user:pw@example.com/", "credentials"), ("http:///nohost", "no host"),
])
def test_door_refuses_what_it_can_decide_without_dns(url: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        outbound.admit(url, PUBLIC)


def test_scheme_policy_and_allowlist_from_settings() -> None:
    prod = outbound.policy_for(Settings(env="production", subject_key_secret="s", callback_hmac_secret="h"))
    assert (prod.allow_http, prod.allow_networks, prod.allow_hosts) == (False, (), ())
    with pytest.raises(Refused, match="https"):
        outbound.admit("http://example.com/cb", prod)
    assert outbound.admit("https://example.com/cb", prod).port == 443
    with pytest.raises(Refused, match="loopback"):  # production: not even loopback
        outbound.admit("https://127.0.0.1/cb", prod)
    dev = outbound.policy_for(Settings(env="development"))
    assert dev.allow_http and outbound.admit("http://127.0.0.1:8080/cb", dev).literal is not None
    assert outbound.admit("http://[::1]:8080/cb", dev).port == 8080
    with pytest.raises(Refused, match="RFC 1918"):  # the embedded default admits loopback only
        outbound.admit("http://10.0.0.5/cb", dev)
    ops_settings = Settings(env="production", subject_key_secret="s", callback_hmac_secret="h",
                            callback_allow="10.20.0.0/16, hooks.corp.example, *.svc.example",
                            callback_allow_http=True, fides_url="http://10.9.0.5:8080",
                            mlflow_tracking_uri="http://10.9.0.6:5000")
    ops = outbound.policy_for(ops_settings)
    assert outbound.admit("http://10.20.3.4/cb", ops) and outbound.admit("http://[::ffff:10.20.3.4]/", ops)
    assert outbound.admit("http://hooks.corp.example/", ops) and outbound.admit("http://a.b.svc.example/", ops)
    # The operator's Fides and registry are admitted for their own calls only: a callback URL a caller
    # submits (native, OpenDSR, recipients) is never let in because it points at them.
    client = outbound.Outbound.from_settings(ops_settings)
    assert outbound.admit("http://10.9.0.5:8080/api/v1/privacy-request/1/resume",
                          client.admitting(ops_settings.fides_url).policy)
    assert outbound.admit("http://10.9.0.6:5000/api/2.0/mlflow/x", client.admitting(ops_settings.mlflow_tracking_uri).policy)
    for url in ("http://10.9.0.5:8080/cb", "http://10.9.0.6:5000/cb"):
        with pytest.raises(Refused, match="RFC 1918"):
            outbound.check_at_door(url, ops_settings)
        with pytest.raises(Refused, match="RFC 1918"):
            outbound.admit(url, client.policy)
    with pytest.raises(Refused):
        outbound.admit("http://10.21.0.1/", ops)
    with pytest.raises(ValueError, match="10.0.0.0/33"):  # a mistyped CIDR stops the start, not a delivery
        Settings(callback_allow="hooks.corp.example,10.0.0.0/33")
    # Allowlisted names are admitted wherever they resolve; look-alikes are checked address by address.
    inside = FakeResolver({h: ["10.99.0.1"] for h in ("hooks.corp.example", "a.b.svc.example", "svc.example.evil",
                                                      "xhooks.corp.example")})
    assert outbound.resolve("http://a.b.svc.example/", ops, inside)[1] == [ipaddress.ip_address("10.99.0.1")]
    assert outbound.resolve("http://hooks.corp.example/", ops, inside)[1] == [ipaddress.ip_address("10.99.0.1")]
    for url in ("http://svc.example.evil/", "http://xhooks.corp.example/"):
        with pytest.raises(Refused, match="RFC 1918"):
            outbound.resolve(url, ops, inside)


# ---------------------------------------------------------------- resolution and the pinned connection


def test_names_resolving_inside_are_refused_before_any_connection() -> None:
    resolver = FakeResolver({"metadata.example.com": ["169.254.169.254"], "ula.example.com": ["fd00:ec2::254"],
                             "mixed.example.com": ["93.184.216.34", "2606:4700::1", "10.0.0.7"],
                             "mapped.example.com": ["::ffff:127.0.0.1"], "cgnat.example.com": ["100.64.1.1"]})
    backend = RecordingBackend()
    client = Outbound(PUBLIC, resolver=resolver, network_backend=backend)
    for host, why in [("metadata.example.com", "link-local"), ("ula.example.com", "RFC 4193"),
                      ("mixed.example.com", "RFC 1918"), ("mapped.example.com", "IPv4-mapped"),
                      ("cgnat.example.com", "CGNAT")]:
        with pytest.raises(Refused, match=why) as err:
            client.post(f"http://{host}/cb", content=b"{}", headers={})
        assert host not in err.value.detail
    assert resolver.lookups == ["metadata.example.com", "ula.example.com", "mixed.example.com",
                                "mapped.example.com", "cgnat.example.com"]
    assert backend.attempts == []  # no connection was even attempted


def test_connection_goes_to_the_checked_address_with_the_original_host(receiver: Receiver) -> None:
    # A name allowlisted on purpose, resolving to the loopback receiver: Host keeps the name.
    resolver = FakeResolver({"hooks.corp.example": ["127.0.0.1"]})
    backend = RecordingBackend()
    policy = Policy(allow_http=True, allow_hosts=("hooks.corp.example",))
    resp = Outbound(policy, resolver=resolver, network_backend=backend).post(
        f"http://hooks.corp.example:{receiver.port}/cb?x=1", content=b'{"a":1}', headers={"X-T": "1"})
    assert resp.status_code == 200
    assert backend.attempts == [("127.0.0.1", receiver.port)]
    assert [(s["path"], s["host"], s["body"]) for s in receiver.seen] == \
        [("/cb?x=1", f"hooks.corp.example:{receiver.port}", b'{"a":1}')]


def test_a_rebinding_resolver_cannot_move_the_connection(receiver: Receiver) -> None:
    # First answer public (checked, connected to), any later answer loopback (where a receiver listens):
    # the guard resolves once, so the connection goes to the public address, which the recording
    # backend refuses before any socket opens; the receiver never hears of it.
    resolver = FakeResolver({"rebind.example.com": [["93.184.216.34"], ["127.0.0.1"]]})
    backend = RecordingBackend()
    client = Outbound(PUBLIC, resolver=resolver, network_backend=backend)
    with pytest.raises(httpx.ConnectError):
        client.post(f"http://rebind.example.com:{receiver.port}/cb", content=b"{}", headers={})
    assert resolver.lookups == ["rebind.example.com"]
    assert backend.attempts == [("93.184.216.34", receiver.port)] and receiver.seen == []
    # Next delivery: the name now answers loopback; it is checked again and refused, not connected.
    with pytest.raises(Refused, match="loopback"):
        client.post(f"http://rebind.example.com:{receiver.port}/cb", content=b"{}", headers={})
    assert len(backend.attempts) == 1 and receiver.seen == []


def test_no_redirects_and_a_response_size_cap() -> None:
    policy = Policy(allow_http=True, allow_networks=(ipaddress.ip_network("127.0.0.1/32"),), max_response_bytes=1000)
    redirecting, big = Receiver(status=307), Receiver(body=b"x" * 5000)
    try:
        backend = RecordingBackend()
        client = Outbound(policy, resolver=FakeResolver({}), network_backend=backend)
        assert client.post(f"http://127.0.0.1:{redirecting.port}/", content=b"{}", headers={}).status_code == 307
        assert backend.attempts == [("127.0.0.1", redirecting.port)]  # the Location was not followed
        with pytest.raises(outbound.ResponseTooLarge):
            client.post(f"http://127.0.0.1:{big.port}/", content=b"{}", headers={})
    finally:
        redirecting.close()
        big.close()


def _tls_pair(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` only, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    sni: list[str | None] = []
    server.sni_callback = lambda sock, server_name, ctx: sni.append(server_name)  # noqa: ARG005
    server.seen_sni = sni  # type: ignore[attr-defined]
    client = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    return server, client


def test_tls_sni_and_certificate_check_use_the_original_name(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls_pair(tmp_path, "hooks.corp.example")
    rec = Receiver(ssl_context=server_ctx)
    try:
        resolver = FakeResolver({"hooks.corp.example": ["127.0.0.1"], "other.corp.example": ["127.0.0.1"]})
        policy = Policy(allow_http=False, allow_hosts=("hooks.corp.example", "other.corp.example"))
        client = Outbound(policy, resolver=resolver, network_backend=RecordingBackend(), ssl_context=client_ctx)
        assert client.post(f"https://hooks.corp.example:{rec.port}/cb", content=b"{}", headers={}).status_code == 200
        assert server_ctx.seen_sni == ["hooks.corp.example"]  # type: ignore[attr-defined]
        assert rec.seen[0]["host"] == f"hooks.corp.example:{rec.port}"
        # Same address, another name: the certificate does not match that name, so nothing is sent.
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED|certificate|hostname"):
            client.post(f"https://other.corp.example:{rec.port}/cb", content=b"{}", headers={})
        assert len(rec.seen) == 1
    finally:
        rec.close()


def test_ipv6_literals_and_international_names_are_pinned_as_the_client_dials_them() -> None:
    resolver = FakeResolver({"xn--bcher-kva.example": ["93.184.216.34"]})
    backend = RecordingBackend()
    client = Outbound(Policy(allow_http=True, allow_networks=(ipaddress.ip_network("::1/128"),)), resolver=resolver,
                      network_backend=backend)
    with pytest.raises(httpx.ConnectError):  # nothing listens on [::1] here; the attempt is what counts
        client.post("http://[::1]:9/cb", content=b"{}", headers={})
    with pytest.raises(httpx.ConnectError):  # the recording backend refuses the public address
        client.post("http://Bücher.example/cb", content=b"{}", headers={})
    assert resolver.lookups == ["xn--bcher-kva.example"]
    assert backend.attempts == [("::1", 9), ("93.184.216.34", 80)]


def test_system_resolver_dedupes_and_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80)),
               (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%2", 80, 0, 2)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: answers)  # never the real DNS
    assert outbound.system_resolver("any.example.com", 80) == ["10.0.0.1", "fe80::1%2"]
    import threading

    release = threading.Event()  # a lookup that answers only once the test lets it: without the timeout,
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: release.wait(30) and answers)  # it would answer
    try:
        with pytest.raises(outbound.DNSError, match="took over"):
            outbound.system_resolver("slow.example.com", 80, timeout_s=0.1)
    finally:
        release.set()


def test_no_other_module_makes_outbound_http_calls() -> None:
    """Anything added later goes through the guard too: outside app/core/outbound.py, only the CLI (which
    calls Lethe's own API at an operator-given URL) may open an HTTP client."""
    import re

    root = Path(__file__).resolve().parents[2]
    call = re.compile(r"httpx\.(Client|AsyncClient|get|post|put|request|stream)\(|urlopen\(|requests\.(get|post)\("
                      r"|http\.client|aiohttp|urllib3")
    offenders = [str(p.relative_to(root)) for folder in ("app", "workers") for p in (root / folder).rglob("*.py")
                 if call.search(p.read_text()) and p.relative_to(root).as_posix() != "app/core/outbound.py"
                 and not p.relative_to(root).as_posix().startswith("app/cli")]
    assert offenders == []
