"""The one way Lethe makes an HTTP call to a URL that a caller chose (SSRF guard).

Native ``callback_url``, OpenDSR ``status_callback_urls``, Art. 19 recipients and the Fides
resume all leave through :class:`Outbound`; anything added later must too. What it enforces
(OWASP SSRF Prevention Cheat Sheet; the ranges are IANA's special-purpose registries):

- scheme: ``https`` only in production; ``http`` in the embedded default and tests, or with
  ``LETHE_CALLBACK_ALLOW_HTTP``;
- the host is resolved once (through an injectable resolver) and **every** address is
  checked: loopback, private (RFC 1918, RFC 4193), link-local (169.254.169.254, fd00:ec2::254),
  CGNAT (RFC 6598), multicast, unspecified, documentation, benchmarking and reserved ranges,
  and IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) are refused;
- the connection goes to the address that was checked (a network backend pinned to it: no
  second resolution, so DNS rebinding cannot swap it), with the original host in ``Host`` and
  TLS SNI (and certificate verification against that name);
- no redirects, no environment proxies, connect/read timeouts, an overall deadline and a cap on
  the response size.

``LETHE_CALLBACK_ALLOW`` (comma list of host names, ``*.suffix`` patterns or CIDRs) admits
internal receivers on purpose. The embedded default admits loopback only; production nothing
(plus the host of ``LETHE_FIDES_URL``, which an operator configured on purpose).

:func:`admit` is the check a URL can get at the door without DNS (scheme, literal address,
internal-only names, allowlist); :meth:`Outbound.post` repeats it and then resolves.
"""

from __future__ import annotations

import ipaddress
import json as json_module
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from app.core.config import Settings
from app.core.errors import LetheError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
LOOPBACK_ALLOW = "127.0.0.0/8,::1/128"
DNS_TIMEOUT_S = 5.0
ALLOW_HINT = "an operator can admit an internal receiver with LETHE_CALLBACK_ALLOW"


class Refused(LetheError):
    """A URL the guard will not call. ``detail`` says why and never repeats the URL."""

    status, code, title = 422, "callback_url_refused", "Callback URL refused"


class OutboundError(Exception):
    """A delivery attempt that failed for a reason worth retrying (DNS, connection, timeout, size)."""


class ResponseTooLarge(OutboundError):
    pass


class DNSError(OutboundError):
    pass


# ---------------------------------------------------------------- address ranges

def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# (networks, why): the first match names the reason. Anything else that Python does not call
# globally reachable (``is_global``) is refused as "reserved" by the fallback in ``blocked``.
V4_BLOCKED: tuple[tuple[tuple[IPNetwork, ...], str], ...] = (
    (_nets("0.0.0.0/8"), "unspecified ('this network', 0.0.0.0/8)"),
    (_nets("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "private (RFC 1918)"),
    (_nets("100.64.0.0/10"), "shared address space (CGNAT, RFC 6598)"),
    (_nets("169.254.0.0/16"), "link-local (169.254.0.0/16, cloud metadata)"),
    (_nets("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (_nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "documentation (RFC 5737)"),
    (_nets("198.18.0.0/15"), "benchmarking (RFC 2544)"),
    (_nets("224.0.0.0/4"), "multicast (224.0.0.0/4)"),
    (_nets("240.0.0.0/4"), "reserved (240.0.0.0/4, broadcast)"),
)
V6_BLOCKED: tuple[tuple[tuple[IPNetwork, ...], str], ...] = (
    (_nets("::/128"), "unspecified (::)"),
    (_nets("::1/128"), "loopback (::1)"),
    (_nets("64:ff9b:1::/48"), "local-use NAT64 (RFC 8215)"),
    (_nets("100::/64"), "discard-only (RFC 6666)"),
    (_nets("2001::/32"), "Teredo (2001::/32)"),
    (_nets("2001:db8::/32", "3fff::/20"), "documentation (RFC 3849, RFC 9637)"),
    (_nets("2001::/23"), "IETF protocol assignments (2001::/23)"),
    (_nets("fc00::/7"), "unique local (RFC 4193, incl. fd00:ec2::254 metadata)"),
    (_nets("fe80::/10"), "link-local (fe80::/10)"),
    (_nets("fec0::/10"), "site-local (deprecated, fec0::/10)"),
    (_nets("ff00::/8"), "multicast (ff00::/8)"),
    (_nets("::/8"), "reserved (::/8)"),  # after the embedded-IPv4 forms, which live in it too
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
V4_COMPATIBLE = ipaddress.ip_network("::/96")
V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 6145): translators turn it into IPv4


def embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries (and the form), for mapped, compatible, NAT64, 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in V4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
    if ip in V4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-translated (SIIT)"
    return None


def blocked(ip: IPAddress) -> str | None:
    """Why ``ip`` is inside some network (a reason for the problem detail), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%")[0])
        inner = embedded_v4(ip)
        if inner is not None:
            why = blocked(inner[0])
            return f"{why}, in its {inner[1]} IPv6 form" if why else None
        table = V6_BLOCKED
    else:
        table = V4_BLOCKED
    for nets, why in table:
        if any(ip in n for n in nets):
            return why
    return None if ip.is_global else "reserved (not globally routable)"


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address, including the legacy IPv4 forms resolvers accept (``2130706433``,
    ``0x7f.1``, ``127.1``), which would otherwise slip past a check as 'names'."""
    h = host.strip("[]")
    h = h[:-1] if h.endswith(".") and not h.endswith("..") else h  # "127.0.0.1." is still 127.0.0.1
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if h and all(c in "0123456789abcdefxABCDEFX." for c in h) and any(c.isdigit() for c in h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    return None


# ---------------------------------------------------------------- policy


HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".intranet", ".lan", ".home.arpa", ".localdomain",
                     ".corp", ".private")


@dataclass(frozen=True)
class Policy:
    """What the guard admits; build it with :func:`policy_for` from the settings."""

    allow_http: bool
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()  # exact names, or ".suffix" for "*.suffix"
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    max_response_bytes: int = 64 * 1024

    def host_allowed(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        return any(h == a or (a.startswith(".") and h.endswith(a)) for a in self.allow_hosts)

    def address_allowed(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_v4(ip)) is not None:
            candidates.append(inner[0])
        return any(c.version == n.version and c in n for c in candidates for n in self.allow_networks)


def parse_allowlist(value: str) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
    """``LETHE_CALLBACK_ALLOW``: comma list of CIDRs / addresses, host names and ``*.suffix`` patterns."""
    nets: list[IPNetwork] = []
    hosts: list[str] = []
    for item in (i.strip() for i in value.split(",") if i.strip()):
        try:
            nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            name = item.lower().rstrip(".")
            hosts.append(name[1:] if name.startswith("*.") else name)
    return tuple(nets), tuple(hosts)


def policy_for(settings: Settings) -> Policy:
    production = settings.env == "production"
    allow = settings.callback_allow if settings.callback_allow is not None else ("" if production else LOOPBACK_ALLOW)
    nets, hosts = parse_allowlist(allow)
    allow_http = settings.callback_allow_http if settings.callback_allow_http is not None else not production
    return Policy(allow_http=allow_http, allow_networks=nets, allow_hosts=hosts,
                  connect_timeout_s=settings.callback_connect_timeout_s, read_timeout_s=settings.callback_timeout_s,
                  max_response_bytes=settings.callback_max_response_bytes)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lowercase, no brackets, no trailing dot; a name in the IDNA form the client dials
    port: int
    literal: IPAddress | None


def admit(url: str, policy: Policy) -> Target:
    """Everything that can be decided without DNS: scheme, literal address, internal-only names and
    the allowlist. Raises :class:`Refused` (422 ``callback_url_refused``); never echoes the URL."""
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname
        literal = literal_address(host) if host else None
        if host and literal is None:
            # A name as the HTTP client will dial it (IDNA-encoded): what is checked, resolved and pinned
            # is exactly what would be connected to.
            host = httpx.URL(url).raw_host.decode("ascii")
    except (ValueError, UnicodeError, httpx.InvalidURL):
        raise Refused("The callback URL cannot be parsed.") from None
    scheme = parts.scheme.lower()
    if not scheme and not parts.netloc:
        raise Refused("The callback URL is not absolute (a Fides reply-to path needs LETHE_FIDES_URL).")
    if scheme not in ("http", "https"):
        raise Refused("The callback URL must be an https URL.")
    if scheme == "http" and not policy.allow_http:
        raise Refused("The callback URL must use https (plain http is refused in production; "
                      "LETHE_CALLBACK_ALLOW_HTTP admits it).")
    if not host:
        raise Refused("The callback URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise Refused("The callback URL must not carry credentials (user:password@).")
    target = Target(scheme, host.lower().rstrip("."), port or (443 if scheme == "https" else 80), literal)
    if literal is None and not HOST_NAME.fullmatch(target.host):
        raise Refused("The callback URL's host is not a valid host name.")
    if policy.host_allowed(target.host):
        return target
    if target.literal is not None:
        check_address(target.literal, policy)
    elif target.host == "localhost" or target.host.endswith(".localhost"):
        check_address(ipaddress.ip_address("127.0.0.1"), policy)
    elif "." not in target.host or target.host.endswith(INTERNAL_SUFFIXES):
        raise Refused(f"The callback URL's host is an internal-only name (single label or a private-use "
                      f"suffix); {ALLOW_HINT}.")
    return target


def check_address(ip: IPAddress, policy: Policy) -> None:
    if policy.address_allowed(ip):
        return
    why = blocked(ip)
    if why is not None:
        raise Refused(f"The callback URL's host is inside the network: {why}; {ALLOW_HINT}.")


_lookup_pool: tuple[int, ThreadPoolExecutor] | None = None


def _lookups() -> ThreadPoolExecutor:
    """One small lookup pool per process (a pool's threads do not survive a fork: Celery's prefork)."""
    global _lookup_pool
    if _lookup_pool is None or _lookup_pool[0] != os.getpid():
        _lookup_pool = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="lethe-dns"))
    return _lookup_pool[1]


def system_resolver(host: str, port: int, *, timeout_s: float = DNS_TIMEOUT_S) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (duplicates dropped). getaddrinfo has
    no timeout of its own, so it runs on a small pool and a slow name fails this attempt (retried)."""
    try:
        infos = _lookups().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout=timeout_s)
    except FutureTimeout:
        raise DNSError(f"name resolution took over {timeout_s:g} s") from None
    except socket.gaierror as exc:
        raise DNSError(f"name resolution failed ({exc.strerror})") from None
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def resolve(url: str, policy: Policy, resolver: Resolver) -> tuple[Target, list[IPAddress]]:
    """:func:`admit`, then resolve the host once and check every address (one inside: refused)."""
    target = admit(url, policy)
    if target.literal is not None:
        return target, [target.literal]
    answers = resolver(target.host, target.port)
    if not answers:
        raise DNSError("the name resolved to no address")
    addresses = []
    for a in answers:
        try:
            ip = ipaddress.ip_address(str(a).split("%")[0])
        except ValueError:
            raise DNSError("the resolver answered something that is not an address") from None
        if not policy.host_allowed(target.host):
            check_address(ip, policy)
        addresses.append(ip)
    return target, addresses


# ---------------------------------------------------------------- the pinned connection


class PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked addresses only: the host name httpcore passes in (kept for ``Host``
    and SNI) is never resolved again."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], inner: httpcore.NetworkBackend) -> None:
        self.host, self.port, self.addresses, self.inner = host, port, addresses, inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        if (host.lower().strip("[]").rstrip("."), port) != (self.host.strip("[]"), self.port):
            raise httpcore.ConnectError("connection to a target other than the checked one")
        last: Exception | None = None
        for ip in self.addresses:  # a name with several (all checked) addresses: try each in order
            try:
                return self.inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                              socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError("no address to connect to")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:  # pragma: no cover
        raise httpcore.ConnectError("unix sockets are never used for outbound calls")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport whose connection pool connects through a :class:`PinnedBackend`."""

    def __init__(self, backend: PinnedBackend, ssl_context: Any) -> None:
        super().__init__(verify=ssl_context, retries=0)
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend, retries=0,
                                             max_connections=1)


@dataclass
class Response:
    status_code: int
    body: bytes

    @property
    def content(self) -> bytes:
        return self.body

    def json(self) -> Any:
        return json_module.loads(self.body)


@dataclass
class Outbound:
    """The guarded client. ``resolver`` and ``network_backend`` are injectable (tests answer with the
    addresses under test and record every connection attempt)."""

    policy: Policy
    resolver: Resolver = system_resolver
    network_backend: httpcore.NetworkBackend = field(default_factory=httpcore.SyncBackend)
    ssl_context: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> Outbound:
        return cls(policy_for(settings), **kw)

    def admitting(self, operator_url: str | None) -> Outbound:
        """This client with the host of an operator-configured URL admitted (``LETHE_FIDES_URL`` for the
        Fides resume, ``LETHE_MLFLOW_TRACKING_URI`` for the registry): for that delivery only. The
        policy every caller-chosen URL is checked against (native callbacks, OpenDSR, recipients) never
        admits it, so nobody who may submit an erasure can aim a callback at the operator's Fides."""
        host = urlsplit(operator_url).hostname if operator_url else None
        if not host:
            return self
        return replace(self, policy=replace(self.policy, allow_hosts=(*self.policy.allow_hosts, host.lower())))

    def post(self, url: str, *, content: bytes, headers: dict[str, str],
             read_timeout_s: float | None = None) -> Response:
        """POST once (``read_timeout_s`` overrides the policy's, e.g. for a Fides resume that runs the rest
        of its request inside the call). Raises :class:`Refused` (permanent), :class:`OutboundError` or
        ``httpx.HTTPError``."""
        return self.request("POST", url, content=content, headers=headers, read_timeout_s=read_timeout_s)

    def request(self, method: str, url: str, *, content: bytes | None = None, json: Any = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                auth: httpx.Auth | None = None, read_timeout_s: float | None = None,
                max_response_bytes: int | None = None) -> Response:
        """One request of any method through the guard (a model registry's REST calls and artifact
        transfers, issue 19): the same checks, pinning and caps as ``post``; ``max_response_bytes``
        raises the cap for a caller that downloads files it asked for (never for a callback)."""
        target, addresses = resolve(url, self.policy, self.resolver)
        if self.ssl_context is None:
            self.ssl_context = httpx.create_ssl_context()
        p = self.policy
        cap = p.max_response_bytes if max_response_bytes is None else max_response_bytes
        transport = PinnedTransport(PinnedBackend(target.host, target.port, addresses, self.network_backend),
                                    self.ssl_context)
        read_s = p.read_timeout_s if read_timeout_s is None else read_timeout_s
        timeout = httpx.Timeout(read_s, connect=p.connect_timeout_s)
        deadline = time.monotonic() + p.connect_timeout_s + read_s
        with httpx.Client(transport=transport, follow_redirects=False, trust_env=False, timeout=timeout,
                          auth=auth) as client, \
                client.stream(method, url, content=content, json=json, params=params, headers=headers) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise ResponseTooLarge(f"response over {cap} bytes")
            body = bytearray()
            for chunk in resp.iter_bytes():  # decoded: the cap holds against a compression bomb too
                body += chunk
                if len(body) > cap:
                    raise ResponseTooLarge(f"response over {cap} bytes")
                if time.monotonic() > deadline:
                    raise OutboundError("response slower than the delivery deadline")
            return Response(resp.status_code, bytes(body))


def check_at_door(url: str, settings: Settings) -> None:
    """Submission-time check (native API, OpenDSR, Art. 19 recipients): 422 ``callback_url_refused``."""
    admit(url, policy_for(settings))
