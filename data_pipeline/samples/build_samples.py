"""Rebuild the bundled real-text samples from Debian man pages installed on this machine.

Real text nobody on the team wrote (ARCHITECTURE.md): man pages rendered with `man -l FILE | col -bx`,
written as Dolma documents. The output is committed; this script documents how it was made:

    python data_pipeline/samples/build_samples.py --lang en --count 400 \
        --out data_pipeline/samples/manpages_en.jsonl.gz

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
    out = subprocess.run(
        f"man -l '{path}' 2>/dev/null | col -bx", shell=True, capture_output=True, text=True,
        env={"MANWIDTH": "80", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lang", default="en", help="en, or a /usr/share/man/<lang> folder name")
    ap.add_argument("--sections", default="1,5,7,8")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--min-chars", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
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
            doc = {
                "id": f"manpages-{args.lang}-{path.parent.name}-{path.name[:-3]}",
                "text": text,
                "source": f"manpages-{args.lang}",
                "added": now,
                "created": now,
                "metadata": {"lang": args.lang, "path": str(path)},
            }
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            written += 1
            if written >= args.count:
                break
    print(f"wrote {written} documents to {args.out}")


if __name__ == "__main__":
    main()
