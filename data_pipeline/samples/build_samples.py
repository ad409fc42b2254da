"""Rebuild the bundled real-text samples from Debian man pages installed on this machine.

Real text nobody on the team wrote (docs/architecture.md): man pages rendered with `man -l FILE | col -bx`,
written as Dolma documents. The output is committed; this script documents how it was made:

    python data_pipeline/samples/build_samples.py --lang en --count 400 \
        --out data_pipeline/samples/manpages_en.jsonl.gz

Multilingual samples for language-ID tests and benchmarks (each file a few tens of KB):

    for l in de fr es it ja ru pl nl pt uk sv zh_CN; do python data_pipeline/samples/build_samples.py \
        --lang $l --count 25 --min-chars 1200 --max-chars 3000 --out data_pipeline/samples/manpages_$l.jsonl.gz; done

Other languages need Debian's manpages-<lang> package (e.g. `apt-get install manpages-de`).
Man pages carry their own free licences (GPL, BSD, MIT and similar; see /usr/share/doc/*/copyright).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def render(path: Path) -> str:
    try:  # a few pages (e.g. Japanese apt_preferences.5) send troff into a loop: give up on them
        out = subprocess.run(
            f"timeout 20 man -l '{path}' 2>/dev/null | col -bx",
            shell=True,
            capture_output=True,
            text=True,
            env={"MANWIDTH": "80", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"},
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lang", default="en", help="en, or a /usr/share/man/<lang> folder name")
    ap.add_argument("--sections", default="1,5,7,8")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--min-chars", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-chars",
        type=int,
        default=0,
        help="cut each page to this many characters "
        "(at a line end) to keep bundled multilingual samples small; 0: whole pages",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path("/usr/share/man") if args.lang == "en" else Path("/usr/share/man") / args.lang
    files = sorted(p for s in args.sections.split(",") for p in (root / f"man{s}").glob("*.gz"))
    random.Random(args.seed).shuffle(files)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    written = 0
    with gzip.open(args.out, "wt", encoding="utf-8") as fh:
        for path in files:
            text = render(path)
            if len(text) < args.min_chars:
                continue
            if args.max_chars and len(text) > args.max_chars:
                text = text[: text.rfind("\n", 0, args.max_chars) + 1]
            doc = {
                "id": f"manpages-{args.lang}-{path.parent.name}-{path.name[:-3]}",
                "text": text,
                "source": f"manpages-{args.lang}",
                "added": now,
                "created": now,
                "metadata": {"lang": args.lang.split("_")[0], "path": str(path)},
            }
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            written += 1
            if written >= args.count:
                break
    print(f"wrote {written} documents to {args.out}")


if __name__ == "__main__":
    main()
