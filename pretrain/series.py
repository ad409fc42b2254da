"""The checkpoint-series schedule language: which steps of a run are kept for later analysis.

A spec is a union (joined with `+`) of terms, each a set of optimizer steps:

    pythia          step 0; 1, 2, 4, ..., 512; every 1000 to the end (Pythia's 154 for 143000 steps)
    log2:K          1, 2, 4, ..., up to K (powers of two)
    every:N         N, 2N, 3N, ... up to max_steps
    steps:[a,b,c]   explicit steps (brackets optional: `steps:0,10,100`)
    first           step 0 (the initialisation)
    last            the final step (max_steps)

Step N means "the weights after N optimizer steps"; step 0 is the initialisation. Steps past
max_steps are dropped, so one spec serves runs of any length. GPT-NeoX expresses Pythia's series as
checkpoint_factor plus extra_save_iters and OLMo-core as a fixed list; a small language covers both
and reads like the paper's description.
"""

from __future__ import annotations

import re

from configcore import ConfigError

_TERM_HELP = "terms: pythia, log2:K, every:N, steps:[a,b,...], first, last; join with '+'"


def _positive_int(text: str, term: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"checkpoint series term {term!r}: {text!r} is not an integer; {_TERM_HELP}"
        ) from None
    if value <= 0:
        raise ConfigError(f"checkpoint series term {term!r}: {value} must be positive")
    return value


def _term_steps(term: str, max_steps: int) -> set[int]:
    name, _, arg = term.partition(":")
    name = name.strip().lower()
    if name == "pythia" and not arg:
        return {0} | _term_steps("log2:512", max_steps) | _term_steps("every:1000", max_steps)
    if name == "first" and not arg:
        return {0}
    if name == "last" and not arg:
        return {max_steps}
    if name == "log2":
        top = _positive_int(arg, term)
        out, s = set(), 1
        while s <= top:
            out.add(s)
            s *= 2
        return out
    if name == "every":
        n = _positive_int(arg, term)
        return set(range(n, max_steps + 1, n))
    if name == "steps":
        body = arg.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        items = [x for x in re.split(r"[,\s]+", body) if x]
        if not items:
            raise ConfigError(
                f"checkpoint series term {term!r} lists no steps; e.g. steps:[0,10,100]"
            )
        out = set()
        for item in items:
            try:
                v = int(item)
            except ValueError:
                raise ConfigError(
                    f"checkpoint series term {term!r}: {item!r} is not an integer"
                ) from None
            if v < 0:
                raise ConfigError(f"checkpoint series term {term!r}: step {v} is negative")
            out.add(v)
        return out
    raise ConfigError(f"unknown checkpoint series term {term!r}; {_TERM_HELP}")


def split_terms(spec: str) -> list[str]:
    """Split on '+' outside brackets (so `steps:[1,2]+every:10` works)."""
    terms, depth, cur = [], 0, []
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "+" and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


def series_steps(spec: str, max_steps: int) -> list[int]:
    """The sorted steps of `spec` within [0, max_steps]. An empty spec is an empty series."""
    if max_steps < 0:
        raise ConfigError(f"max_steps={max_steps} must be >= 0")
    spec = (spec or "").strip()
    if not spec or spec.lower() == "none":
        return []
    steps: set[int] = set()
    for term in split_terms(spec):
        steps |= _term_steps(term, max_steps)
    return sorted(s for s in steps if 0 <= s <= max_steps)


def validate_spec(spec: str) -> None:
    """Parse with a nominal length so config validation rejects a bad spec before anything runs."""
    series_steps(spec, 1)


def format_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def retained_full_steps(
    interval: int, max_steps: int, keep_last: int, keep_every: int
) -> list[int]:
    """Full checkpoints left on disk at the end of a run under the retention policy."""
    if interval <= 0:
        return []
    saved = list(range(interval, max_steps + 1, interval))
    if max_steps not in saved and max_steps > 0:
        saved.append(max_steps)  # the run always ends with a full checkpoint (resumable)
    keep = set(saved[-keep_last:]) if keep_last > 0 else set(saved)
    if keep_every > 0:
        keep |= {s for s in saved if s % keep_every == 0}
    return sorted(keep)
