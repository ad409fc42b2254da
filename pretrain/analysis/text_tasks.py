"""Local lm-eval tasks built from real text (e.g. the bundled Debian man pages), for runs and tests
that have no internet: `write_text_tasks(texts, DIR)` writes DIR/<name>.jsonl and DIR/<name>.yaml
in lm-eval's own task-file convention, so `--include-path DIR` (ours or lm-eval's) runs them.

    <prefix>_cloze    LAMBADA's form (output_type loglikelihood): a passage without its last
                      word, scored on that word; acc = the greedy continuation is the word
    <prefix>_mc       multiple choice: a passage without its last words, the true ending
                      against endings of other passages; acc and acc_norm
    <prefix>_rolling  wikitext's form (loglikelihood_rolling): whole paragraphs; word and byte
                      perplexity, bits per byte
    <prefix>_gen      generate_until: a passage without its last words, greedy decoding until a
                      newline; exact_match against those words

Passages are prose paragraphs (at least `min_words` words, mostly words with letters), whitespace
collapsed, duplicates dropped, in text order; choices are drawn with a fixed generator so the same
text always gives the same task files.

    pretrain analyze text-tasks --input 'data/*.jsonl.gz' --out TASKS [--kinds cloze,mc]
        [--n 64] [--prefix man] [--skip-docs K]
    pretrain analyze downstream --run RUN --tasks man_cloze,man_mc --include-path TASKS
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

from configcore import ConfigError

_WORD = re.compile(r"^[A-Za-z]{3,}$")


def paragraphs(texts: Iterable[str], min_words: int = 12) -> list[list[str]]:
    """Prose paragraphs of the texts, as word lists; duplicates (repeated boilerplate) once."""
    seen: set[str] = set()
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            words = para.split()
            if len(words) < min_words or words[0].startswith(("$", "-", "#")):
                continue
            if sum(any(c.isalpha() for c in w) for w in words) < 0.8 * len(words):
                continue  # tables, option lists, command lines
            key = " ".join(words)
            if key not in seen:
                seen.add(key)
                out.append(words)
    return out


def _ending_at_a_word(words: list[str], max_words: int, min_words: int) -> list[str] | None:
    """The passage cut after its last plain word (letters only) within max_words."""
    words = words[:max_words]
    for i in range(len(words) - 1, min_words - 2, -1):
        if _WORD.match(words[i]):
            return words[: i + 1]
    return None


def _yaml(name: str, data: Path, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data.resolve()))}\ntest_split: test\n{body}"
        "metadata:\n  version: 1.0\n"
    )


CLOZE = """output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
MC = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
ROLLING = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
GEN = """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
KINDS = ("cloze", "mc", "rolling", "gen")


def write_text_tasks(
    texts: Iterable[str],
    out_dir: str | Path,
    prefix: str = "man",
    n: int = 64,
    kinds: Iterable[str] = KINDS,
    min_words: int = 12,
    max_words: int = 32,
    ending_words: int = 3,
    choices: int = 4,
    rolling_words: int = 160,
    seed: int = 0,
) -> dict[str, Path]:
    """Write up to `n` documents per task kind; returns {task name: YAML path}."""
    kinds = list(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"task kinds {sorted(unknown)} are not among {', '.join(KINDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paras = paragraphs(texts, min_words)
    if len(paras) < choices:
        raise ValueError(f"only {len(paras)} prose paragraphs in the text; give more text")
    rng = random.Random(seed)
    cut = [p for p in (_ending_at_a_word(w, max_words, min_words) for w in paras) if p]
    # each task its own passages: requests of two tasks never spell the same tokens (lm-eval's
    # `hf` model reuses one forward for requests whose tokens coincide, and then reads the
    # log-probabilities of the shorter continuation from the wrong positions)
    own = {kind: cut[k::3] for k, kind in enumerate(("cloze", "mc", "gen"))}
    docs: dict[str, list[dict]] = {}
    if "cloze" in kinds:
        docs["cloze"] = [{"text": " ".join(w)} for w in own["cloze"][:n]]
    endings = [" ".join(w[-ending_words:]) for w in cut]
    if "mc" in kinds:
        docs["mc"] = []
        for w in own["mc"][:n]:
            true = " ".join(w[-ending_words:])
            others = rng.sample([e for e in endings if e != true], choices - 1)
            label = rng.randrange(choices)
            opts = others[:label] + [true] + others[label:]
            context = " ".join(w[:-ending_words])
            docs["mc"].append({"context": context, "choices": opts, "label": label})
    if "rolling" in kinds:
        docs["rolling"] = []
        for i in range(0, len(paras), 4):  # a few paragraphs each: longer than one window
            words = [w for p in paras[i : i + 4] for w in p][:rolling_words]
            docs["rolling"].append({"text": " ".join(words)})
        docs["rolling"] = docs["rolling"][:n]
    if "gen" in kinds:
        docs["gen"] = [
            {"context": " ".join(w[:-ending_words]), "target": " " + " ".join(w[-ending_words:])}
            for w in own["gen"][:n]
        ]
    bodies = {"cloze": CLOZE, "mc": MC, "rolling": ROLLING}
    bodies["gen"] = GEN.replace("{max_gen_toks}", str(4 * ending_words))
    written = {}
    for kind, rows in docs.items():
        name = f"{prefix}_{kind}"
        data = out_dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out_dir / f"{name}.yaml").write_text(_yaml(name, data, bodies[kind]))
        written[name] = out_dir / f"{name}.yaml"
    return written


def read_texts(patterns: list[str], field: str = "text") -> list[str]:
    """The `field` of every JSONL record (.jsonl or .jsonl.gz) matching the glob patterns."""
    from glob import glob

    files = sorted({f for p in patterns for f in glob(p)})
    if not files:
        raise ConfigError(f"--input {' '.join(patterns)} matches no file; give JSONL files")
    texts = []
    for path in files:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    texts.append(json.loads(line)[field])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ConfigError(
                        f"{path}:{n} is not a JSON record with a {field!r} field ({e}); "
                        "give JSONL documents (--field names the text field)"
                    ) from None
    return texts


def main(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    texts = read_texts(args.input, args.field)[args.skip_docs :]
    try:
        written = write_text_tasks(texts, args.out, args.prefix, args.n, kinds, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    counts = {name: sum(1 for _ in (Path(args.out) / f"{name}.jsonl").open()) for name in written}
    print(
        f"text-tasks: {', '.join(f'{k} ({v} documents)' for k, v in counts.items())} from "
        f"{len(texts)} texts -> {args.out} (`--include-path {args.out}`)"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("text-tasks", help="local lm-eval tasks (cloze, mc, ...) from JSONL text")
    p.add_argument("--input", nargs="+", required=True, help="JSONL(.gz) files or globs")
    p.add_argument("--out", required=True, help="folder for the task YAMLs and their data")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"of {','.join(KINDS)}")
    p.add_argument("--n", type=int, default=64, help="documents per task (default 64)")
    p.add_argument("--prefix", default="man", help="task names are PREFIX_KIND")
    p.add_argument("--field", default="text", help="the records' text field")
    p.add_argument("--skip-docs", type=int, default=0, help="leave out the first K texts")
    p.add_argument("--seed", type=int, default=0, help="for the multiple-choice distractors")
    p.set_defaults(func=main)
