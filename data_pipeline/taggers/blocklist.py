"""URL blocklists: files of one domain or URL per line (`#` comments); a document is blocked when
its URL's host, or a parent domain of it, is listed (the content tagger's `url__blocked`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit


@lru_cache(maxsize=16)
def load_blocklist(paths: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for p in paths:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if not line:
                continue
            host = urlsplit(line).hostname if "://" in line else line.split("/")[0]
            if host:
                out.add(host.lstrip("."))
    return frozenset(out)


def blocked_host(url: str, blocklist: frozenset[str]) -> bool:
    try:
        host = (urlsplit(url if "://" in url else "http://" + url).hostname or "").lower()
    except ValueError:
        return False
    parts = host.split(".")
    return any(".".join(parts[i:]) in blocklist for i in range(len(parts)))
