"""bench/ssrf.py: the SSRF corpus gets no connection attempt to an internal address (DESIGN.md section 8:
internal callback URLs accepted = 0). In process, table DNS, a backend that never connects; well under 1 s."""

from __future__ import annotations

from bench import ssrf


def test_no_corpus_url_reaches_an_internal_address() -> None:
    result = ssrf.run()
    rows = {r["category"]: r for r in result["rows"]}
    assert result["urls"] == sum(len(v) for v in ssrf.CORPUS.values()) >= 80
    assert result["internal_attempts"] == 0 and result["leaks"] == []
    # Literal spellings, internal names and other schemes are all decided at the door.
    for category in ("IPv4 literal", "IPv6 literal", "internal name", "other scheme"):
        assert rows[category]["refused_at_door"] == rows[category]["urls"], category
    # Names that resolve inside (also with one good address among bad ones) are refused at delivery.
    for category in ("name resolving inside", "multi-address name"):
        assert rows[category]["refused_at_delivery"] == rows[category]["urls"], category
    # A rebinding name: its first (public) answer is dialled, its second (internal) one refused.
    assert rows["rebinding name"]["public_attempts"] == rows["rebinding name"]["refused_at_delivery"] == 2
