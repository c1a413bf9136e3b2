"""SSRF corpus against the outbound guard: how many internal callback URLs get a connection (target: 0).

Runs each URL of a corpus of known server-side request forgery tricks (address spellings, IPv6
embeddings, internal names, public-looking names that resolve inside, multi-address and
rebinding names, URL-parser confusion, other schemes) through the submission check and then
twice through delivery, under production rules (no allowlist; plain http admitted so the
address rules, not the scheme, decide). Names resolve from the table below, never from DNS, and
connections go through a backend that records each attempt and opens none: nothing leaves the
process. A URL *leaks* if any attempt targets an address that is not globally routable.

    python bench/ssrf.py [--out DIR]      # prints a table; writes DIR/ssrf.md and DIR/ssrf.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpcore
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core import outbound  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PUBLIC_IP = "93.184.216.34"
# name -> answers per lookup (the last repeats): what a hostile DNS server would say.
DNS: dict[str, list[list[str]]] = {
    "127.0.0.1.nip.io": [["127.0.0.1"]], "169.254.169.254.nip.io": [["169.254.169.254"]],
    "10.0.0.1.sslip.io": [["10.0.0.1"]], "localtest.me": [["127.0.0.1"]], "metadata.example.com": [["169.254.169.254"]],
    "v6meta.example.com": [["fd00:ec2::254"]], "mapped.example.com": [["::ffff:127.0.0.1"]],
    "nat64.example.com": [["64:ff9b::a9fe:a9fe"]], "cgnat.example.com": [["100.100.100.200"]],
    "mixed.example.com": [[PUBLIC_IP, "10.1.1.1"]], "mixed6.example.com": [["2606:4700::1", "fe80::1"]],
    "rebind.example.com": [[PUBLIC_IP], ["127.0.0.1"]], "rebind2.example.com": [[PUBLIC_IP], ["169.254.169.254"]],
    "zero.example.com": [["0.0.0.0"]], "bcast.example.com": [["255.255.255.255"]],
    "example.com": [[PUBLIC_IP]], "xn--bcher-kva.example": [["10.9.9.9"]],
}
CORPUS: dict[str, list[str]] = {
    "IPv4 literal": ["http://127.0.0.1/", "http://127.1/", "http://127.000.000.001/", "http://2130706433/",
                     "http://0x7f000001/", "http://0x7f.0.0.1/", "http://0177.0.0.1/", "http://0/", "http://0.0.0.0/",
                     "http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/",
                     "http://0251.0376.0251.0376/", "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.0.1/",
                     "http://100.64.0.1/", "http://100.100.100.200/", "http://224.0.0.1/", "http://255.255.255.255/",
                     "http://192.0.0.192/", "http://198.18.0.1/", "http://127.0.0.1:6379/", "http://127.0.0.1.:80/"],
    "IPv6 literal": ["http://[::1]/", "http://[0:0:0:0:0:0:0:1]/", "http://[::]/", "http://[::ffff:127.0.0.1]/",
                     "http://[::ffff:7f00:1]/", "http://[::FFFF:169.254.169.254]/", "http://[::127.0.0.1]/",
                     "http://[64:ff9b::169.254.169.254]/", "http://[2002:a9fe:a9fe::]/", "http://[2002:7f00:1::1]/",
                     "http://[fd00:ec2::254]/", "http://[fc00::1]/", "http://[fe80::1]/", "http://[fe80::1%25eth0]/",
                     "http://[ff02::1]/", "http://[2001::1]/", "http://[::ffff:0:10.0.0.1]/"],
    "internal name": ["http://localhost/", "http://LOCALHOST:8080/", "http://localhost./", "http://api.localhost/",
                      "http://metadata/", "http://metadata.google.internal/computeMetadata/v1/",
                      "http://instance-data/", "http://redis:6379/", "http://printer.local/", "http://nas.home.arpa/",
                      "http://db.corp/", "http://kubernetes.default.svc.cluster.local/"],
    "name resolving inside": ["http://127.0.0.1.nip.io/", "http://169.254.169.254.nip.io/", "http://10.0.0.1.sslip.io/",
                              "http://localtest.me/", "http://metadata.example.com/", "http://v6meta.example.com/",
                              "http://mapped.example.com/", "http://nat64.example.com/", "http://cgnat.example.com/",
                              "http://zero.example.com/", "http://bcast.example.com/", "http://Bücher.example/"],
    "multi-address name": ["http://mixed.example.com/", "http://mixed6.example.com/"],
    "rebinding name": ["http://rebind.example.com/", "http://rebind2.example.com/"],
    "parser confusion": ["http://example.com@127.0.0.1/", "http://127.0.0.1#@example.com/",
                         "http://example.com:80#@127.0.0.1/", "http://127.0.0.1\\@example.com/",
                         "http://example.com\\@127.0.0.1/", "http://127.0.0.1%2f@example.com/",
                         "http://example.com%40127.0.0.1/", "http://[::1]@example.com/", "http://127.0.0.1 @example.com/",
                         "http://example.com\t@127.0.0.1/", "http:/127.0.0.1/", "http:\\\\127.0.0.1/",
                         "http://127.0.0.1:80:80/"],
    "other scheme": ["gopher://127.0.0.1:6379/_INFO", "file:///etc/passwd", "dict://127.0.0.1:11211/",
                     "ftp://example.com/", "ldap://127.0.0.1/", "HTTP://127.0.0.1/"],
}


class Resolver:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, host: str, port: int) -> list[str]:
        n = self.counts[host] = self.counts.get(host, 0) + 1
        if host not in DNS:
            raise outbound.DNSError("not in the corpus' DNS table")
        answers = DNS[host]
        return answers[min(n - 1, len(answers) - 1)]


class NoConnect(httpcore.NetworkBackend):
    """Records every connection attempt and makes none."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001, ANN201
        self.attempts.append(host)
        raise httpcore.ConnectError("bench: no connection is ever made")

    def connect_unix_socket(self, *a: Any, **kw: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("bench: no unix sockets")

    def sleep(self, seconds: float) -> None:
        pass


def internal(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return True  # a name reached the socket layer unresolved: counts as a leak
    return outbound.blocked(ip) is not None


def run() -> dict[str, Any]:
    policy = outbound.Policy(allow_http=True)  # production address rules
    rows, leaks = [], []
    t0 = time.perf_counter()
    for category, urls in CORPUS.items():
        row = {"category": category, "urls": len(urls), "refused_at_door": 0, "refused_at_delivery": 0,
               "unparseable_or_unresolved": 0, "public_attempts": 0, "internal_attempts": 0}
        for url in urls:
            try:
                outbound.admit(url, policy)
            except outbound.Refused:
                row["refused_at_door"] += 1
                continue
            backend = NoConnect()
            client = outbound.Outbound(policy, resolver=Resolver(), network_backend=backend)
            refused = False
            for _ in range(2):  # twice: a rebinding name answers differently the second time
                try:
                    client.post(url, content=b"{}", headers={})
                except outbound.Refused:
                    refused = True
                except (httpx.HTTPError, outbound.OutboundError, httpcore.ConnectError):
                    pass
            bad = [a for a in backend.attempts if internal(a)]
            row["internal_attempts"] += len(bad)
            row["public_attempts"] += len(backend.attempts) - len(bad)
            if bad:
                leaks.append({"url": url, "attempts": backend.attempts})
            if refused:
                row["refused_at_delivery"] += 1
            elif not backend.attempts:
                row["unparseable_or_unresolved"] += 1
        rows.append(row)
    return {"rows": rows, "urls": sum(r["urls"] for r in rows), "leaks": leaks,
            "internal_attempts": sum(r["internal_attempts"] for r in rows), "seconds": time.perf_counter() - t0}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| category | URLs | refused at the door | refused at delivery | unparseable / unresolved | "
             "attempts to public addresses | attempts to internal addresses |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['category']} | {r['urls']} | {r['refused_at_door']} | {r['refused_at_delivery']} | "
                     f"{r['unparseable_or_unresolved']} | {r['public_attempts']} | {r['internal_attempts']} |")
    lines.append(f"\n{result['urls']} URLs, {result['internal_attempts']} connection attempts to internal "
                 f"addresses, {result['seconds']:.2f} s.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--quick", action="store_true", help="accepted for symmetry with the other benchmarks")
    args = p.parse_args()
    result = run()
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ssrf.md").write_text(text)
    (args.out / "ssrf.json").write_text(json.dumps(result, indent=2))
    return 1 if result["internal_attempts"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
