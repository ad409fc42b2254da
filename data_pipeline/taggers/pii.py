"""PII spans, one class per reading.

`dolma`: the e-mail / phone / IPv4 patterns of Dolma's PII tagger, plus +CC international numbers.
`datatrove`: the e-mail and IP patterns of datatrove's PIIFormatter
(datatrove/pipeline/formatters/pii.py:76-87), public IPs only as its `only_remove_public_ips=True`
default. The spans are replaced by mixer replacements. Both are tried only where scan.py's one
pass says a match can be.
"""

from __future__ import annotations

import ipaddress
import re

from .scan import MAY_IPV4, MAY_PHONE, MAY_PHONE_INTL, scan

Spans = list[list]

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# North-American style numbers as in Dolma's PII tagger, plus +CC international numbers
PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[ .\-]?)?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}(?!\w|\.\d)"
    r"|(?<![\w.])\+\d{1,3}(?:[ .\-]\d{2,4}){2,4}(?!\w|\.\d)"
)
IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)"
)


# datatrove/pipeline/formatters/pii.py:77-85
DT_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[A-Za-z0-9](?:["
    r"A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|2[0-4][0-9]|["
    r"01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
DT_IP = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
)


def _public_ip(s: str) -> bool:
    """public_ip_validator (pii.py:34-39) with public_only=True."""
    try:
        return ipaddress.ip_address(s).is_global
    except ValueError:
        return False


def _spans(rx: re.Pattern, text: str, may: bool) -> Spans:
    return [[m.start(), m.end(), 1.0] for m in rx.finditer(text)] if may else []


def _email_spans(text: str) -> Spans:
    """EMAIL.finditer's matches, the pattern tried once per "@": a match holds one "@" (neither
    part's characters include it) and, as its local part runs up to the "@", it matches from
    every start in that run or from none; finditer's leftmost start is the run's first character
    (or where its scan resumed, after the previous match)."""
    out: Spans = []
    pos, at = 0, text.find("@")
    while at >= 0:
        start = at
        while start > pos and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        m = EMAIL.match(text, start) if start < at else None
        if m is not None:
            out.append([start, m.end(), 1.0])
            pos = m.end()
        at = text.find("@", max(at + 1, pos))
    return out


_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")


def _phone_spans(text: str, may_start) -> Spans:
    """PHONE.finditer's matches, the pattern tried only at content_scan's phone starts (where a
    match can begin), from the left, going on after each match as finditer does."""
    out: Spans = []
    pos, match = 0, PHONE.match
    for p in may_start.tolist():
        if p >= pos and (m := match(text, p)) is not None:
            out.append([p, m.end(), 1.0])
            pos = m.end()
    return out


class DolmaPII:
    """Dolma's PII tagger: e-mail, phone (North-American and +CC), IPv4."""

    name = "dolma"
    kinds = ("email", "phone", "ip")

    @staticmethod
    def spans(text: str, scanned: tuple) -> dict[str, Spans]:
        flags = scanned[1]
        return {
            "email": _email_spans(text) if "@" in text else [],  # every e-mail has one
            "phone": _phone_spans(text, scanned[6]) if flags & (MAY_PHONE | MAY_PHONE_INTL) else [],
            "ip": _spans(IPV4, text, bool(flags & MAY_IPV4)),
        }


class DatatrovePII:
    """datatrove's PIIFormatter: e-mail, public IP addresses."""

    name = "datatrove"
    kinds = ("email", "ip")

    @staticmethod
    def spans(text: str, scanned: tuple) -> dict[str, Spans]:
        ips = _spans(DT_IP, text, bool(scanned[1] & MAY_IPV4))
        return {
            "email": _spans(DT_EMAIL, text, "@" in text),
            "ip": [s for s in ips if _public_ip(text[s[0] : s[1]])],
        }


READINGS = {r.name: r for r in (DolmaPII, DatatrovePII)}  # config.PII_READINGS names them


def pii_spans(text: str, reading: str, scanned: tuple | None = None) -> dict[str, Spans]:
    """The PII spans of a reading; `scanned`: scan.scan's result for the text, if known."""
    return READINGS[reading].spans(text, scan(text) if scanned is None else scanned)
