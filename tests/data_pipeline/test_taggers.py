"""Taggers on real text: language ID on man pages of known language, Gopher statistics against counts
done by hand on a small text, PII spans, bad words per language, URL blocklists."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.config import ContentTaggerConfig, LangTaggerConfig, QualityTaggerConfig
from data_pipeline.sample_text import load_samples
from data_pipeline.taggers import (
    ContentTagger,
    LangTagger,
    QualityTagger,
    badwords_for,
    fasttext_batch,
    fasttext_scores,
)


@pytest.mark.parametrize(
    "lang,min_acc",
    [
        ("de", 0.8),
        ("es", 0.9),
        ("nl", 0.9),
        ("pt", 0.9),
        ("uk", 0.9),
        ("ja", 0.85),
        ("ru", 0.75),
        ("fr", 0.7),
    ],
)
def test_language_id_on_man_pages(lang, min_acc):
    # localized man pages keep untranslated English (options, examples): accuracy is a lower bound
    docs = load_samples(lang)
    hits = sum(fasttext_scores(d["text"], k=1)[0][0] == lang for d in docs)
    assert hits / len(docs) >= min_acc, (lang, hits)


def test_fasttext_batch_equals_one_predict_per_text():
    """All documents and paragraphs of three languages in one batched call: the same labels and
    the same probabilities as fastText's own one-line `predict` on each text."""
    from data_pipeline.taggers import paragraph_spans
    from data_pipeline.taggers.fasttext_lid import fasttext_model

    texts = []
    for lang in ("en", "ja", "ru"):
        for d in load_samples(lang)[:40]:
            texts += [d["text"]] + [d["text"][s:e] for s, e in paragraph_spans(d["text"])]
    f = fasttext_model("").f
    one_by_one = [
        [
            (lab[9:], min(1.0, p))
            for p, lab in f.predict(t.replace("\n", " ") + "\n", 3, 0.0, "strict")
        ]
        for t in texts
    ]
    assert fasttext_batch(texts, k=3) == one_by_one


def test_language_attributes_doc_paragraph_and_cld2():
    doc = load_samples("de")[1]
    attrs = LangTagger(LangTaggerConfig(cld2=True))(doc)
    assert "langid__ft__lang__de" in attrs and attrs["langid__ft__lang__de"][0][:2] == [
        0,
        len(doc["text"]),
    ]
    paras = [s for k, v in attrs.items() if k.startswith("langid__ft_paragraph__lang__") for s in v]
    assert paras and all(0 <= s[0] < s[1] <= len(doc["text"]) for s in paras)
    assert any(k.startswith("langid__cld2__lang__") for k in attrs)


def test_language_tagger_skips_only_predictions_it_already_has(monkeypatch):
    """The language tagger's shortcuts (a paragraph text predicted before comes from its memo; a
    one-paragraph document's paragraph gets the document's prediction when only fastText's
    delimiters surround it; paragraphs predicted top-2, close calls again top-3) against
    predicting the document and every paragraph top-3, on man pages of three languages in one
    run (translations keep English paragraphs) and on texts made for the one-paragraph rule (a
    no-break space is no fastText delimiter: predicted on its own)."""
    from data_pipeline.taggers import fasttext_lid, paragraph_spans

    def every_text(text: str) -> dict:
        spans = paragraph_spans(text)
        preds = fasttext_batch([text] + [text[s:e] for s, e in spans], k=3)
        out = {f"langid__ft__lang__{la}": [[0, len(text), p]] for la, p in preds[0] if p >= 0.01}
        for (s, e), top in zip(spans, preds[1:]):
            key = f"langid__ft_paragraph__lang__{top[0][0]}"
            out.setdefault(key, []).append([s, e, round(top[0][1], 4)])
        return out

    texts = [d["text"] for lang in ("en", "de", "ru") for d in load_samples(lang)[:40]]
    texts += [
        "Ein kurzer Absatz auf Deutsch, der allein steht.",
        "\n\n \t\r Ein kurzer Absatz auf Deutsch, der allein steht.\n\n",
        "\u00a0\n\nNoch ein kurzer Absatz, auch allein.",
        "Same paragraph twice.\n\nSame paragraph twice.\n\nEin anderer Absatz.",
    ]
    expected = [every_text(t) for t in texts]
    sent, real = [], fasttext_lid.predict_lines
    monkeypatch.setattr(
        fasttext_lid, "predict_lines", lambda f, ls, k: sent.extend(ls) or real(f, ls, k)
    )
    tagger = LangTagger(LangTaggerConfig())
    assert [tagger({"id": str(i), "text": t}) for i, t in enumerate(texts)] == expected
    every = sum(1 + len(paragraph_spans(t)) for t in texts)
    assert len(sent) < 0.9 * every  # the shortcuts apply
    assert sent.count(texts[-4] + "\n") == 1  # the one-paragraph document: predicted once
    tagger.MEMO_CHARS = 1000  # a memo that starts again every few documents: the same attributes
    assert [tagger({"id": str(i), "text": t}) for i, t in enumerate(texts)] == expected

    def tied(f, ls, k):  # every top-2 prediction made a tie broken the other way: all redone
        labels, probs = real(f, ls, k)
        if k != 2:
            return labels, probs
        return [lab[::-1] for lab in labels], [np.array([p[0], p[0]]) for p in probs]

    monkeypatch.setattr(fasttext_lid, "predict_lines", tied)
    assert [LangTagger(LangTaggerConfig())({"text": t}) for t in texts[:20]] == expected[:20]


SAMPLE_LANGS = ["en", "de", "fr", "es", "it", "nl", "pl", "pt", "ru", "sv", "uk", "ja", "zh_CN"]
# special cases without an apostrophe, abbreviations, emoticons, affixes on both sides, units,
# URLs, hyphens, non-Latin scripts: chunks where a shortcut past spaCy would most likely go wrong
TRICKY_CHUNKS = (
    "dont Dont DONT cannot Cannot gonna gotta wanna im Im id em cuz lovin nothin ima "
    "can't it's 's 'em 'Cause ain't y'all o'clock ma'am hello's "
    "etc. e.g. i.e. Mr. Mrs. Dr. Jan. Feb. Mt. vs. Inc. co. St. N.Y. Ph.D. a. A. I. x. Z. "
    ":) (: :( ;) :-) =) <3 a) b) 1) A) (a) (hello) hello) (hello hello, hello. hello! hello? "
    "hello; hello: hello- -hello hello-world hello—world hello… hello... ... (((a a))) "
    "'hello' \"hello\" «bonjour» ¿qué? ¡hola! 「日本」 日本。 日本、 （日本） Ελλάδα. ÄÖÜ, straße) "
    "ǅemal ǅ. US$ $hello hello$ 10km km. °C C. § §1 #hello hello# @hello hello@ *hello hello* "
    "www.example.com http://x.org mailto:a@b.c hello/world hello\\world [hello] hello] {hello} "
    "x x. x, (x) xx. ll. a.m. p.m. o.O O.o hello-dont hello-cannot (dont) dont. dont, "
    "Administrator's users' e.g., (e.g. U.S.A. http://x.org/a-b --foo=bar a/b 1,000 $100 100$ "
    "3.14 3,14 x-ray- -x- … ' '' \" (( )) (-: -- --- -> <- => <= &amp; C++ c# F# .NET node.js "
    "a.b.c a...b a--b a—b a–b 日本語テキスト Ελληνικά ١٢٣ ½ ² x² °F 5°C 5° #1 @user ㅋㅋ "
    "can't. (can't) don't, 'tis 'twas n't 'd 'll 've 're 'm s' Y'all. ¯\\(ツ)/¯ 10:30 10.30pm 5km."
).split()


def _spacy_tokens_in_context(nlp, chunks: list[str]) -> dict[str, list[tuple[str, bool]]]:
    """spaCy's (token, IS_PUNCT) of each chunk, the chunks tokenised as one space-joined text."""
    out: dict[str, list[tuple[str, bool]]] = {c: [] for c in chunks}
    ends = np.cumsum([len(c) + 1 for c in chunks]) - 1
    doc = nlp.tokenizer(" ".join(chunks))
    owner = np.searchsorted(ends, [tok.idx for tok in doc], side="right").tolist()
    for tok, k in zip(doc, owner):
        out[chunks[k]].append((tok.text, tok.is_punct))
    return out


def test_fast_split_gives_spacys_tokens_on_every_sample_chunk():
    """Every distinct whitespace chunk of all bundled samples (13 languages) and the tricky list.
    A chunk FastSplit claims gets exactly the tokens and IS_PUNCT flags of spaCy's tokenizer on
    that chunk alone; the others get spaCy's tokens as spaCy reads them in the memo's own call
    (space-joined unseen chunks: spaCy's special-case matcher is context-dependent on rare chunks,
    e.g. `--filter="zone:(` ends in ":(" alone and in ":" "(" inside one long text here)."""
    import spacy  # heavy optional import, only for this test's reference
    from spacy.attrs import IS_PUNCT

    from data_pipeline.text.words import ChunkVocab, FastSplit

    nlp = spacy.blank("en")
    chunks = list(
        dict.fromkeys(
            [c for lang in SAMPLE_LANGS for d in load_samples(lang) for c in d["text"].split()]
            + TRICKY_CHUNKS
        )
    )
    fast = FastSplit(nlp, IS_PUNCT)
    for special in ("dont", "cannot", "gonna", "Cannot", "Mr.", "e.g.", ":)", "a.m."):
        assert fast.split(special) is None, special
    split = {c: fast.split(c) for c in chunks}
    vocab = ChunkVocab()
    claimed = 0
    for i in range(0, len(chunks), 4000):  # several memo fills, as over several documents
        batch = chunks[i : i + 4000]
        vocab.words(batch)
        t = vocab.table
        in_context = _spacy_tokens_in_context(nlp, [c for c in batch if split[c] is None])
        for c in batch:
            toks = split[c]
            if toks is None:
                ref = in_context[c]
            else:
                claimed += 1
                ref = [(tok.text, tok.is_punct) for tok in nlp.tokenizer(c)]
                assert list(toks) == [r[0] for r in ref], c
            ids = vocab.chunk_tokens(c).tolist()
            assert [(vocab.strings[i], bool(t.is_punct[i])) for i in ids] == ref, c
    # the shortcut carries most distinct chunks (the point of it)
    assert claimed > 0.5 * len(chunks), (claimed, len(chunks))


@pytest.mark.parametrize("lang", ["en", "de", "ru"])
def test_compiled_affix_walk_gives_spacys_tokens_on_every_sample_chunk(lang):
    """affixes.py compiles spaCy's prefix, suffix and infix patterns into programs for one numba
    loop: every chunk it settles gets exactly the tokens of spaCy's tokenizer on that chunk alone,
    for English (the datatrove reading's) and two languages with other affix lists and special
    cases; the chunks it leaves (possible special cases, URLs with an infix) are few."""
    import spacy  # heavy optional import, only for this test's reference

    from data_pipeline.text.affixes import build_tables
    from data_pipeline.text.chunk_memo import split_chunks

    nlp = spacy.blank(lang)
    tables = build_tables(nlp)
    assert tables is not None, "the patterns left the compiled subset: every chunk goes to Python"
    chunks = list(
        dict.fromkeys(
            [c for lg in SAMPLE_LANGS for d in load_samples(lg) for c in d["text"].split()]
            + TRICKY_CHUNKS
        )
    )
    tokens, counts, settled = split_chunks(tables, chunks, nlp.tokenizer.url_match)
    it = iter(tokens)
    for c, n, ok in zip(chunks, counts, settled):
        got = [next(it) for _ in range(n)]
        if ok:
            assert got == [t.text for t in nlp.tokenizer(c)], c
    # coverage, not a numeric tolerance: the compiled walk's share of chunks (its speed claim);
    # deterministic on the bundled text, and every settled chunk is compared exactly above
    assert sum(settled) > 0.98 * len(chunks), (sum(settled), len(chunks))
    for special in ("dont", "Mr.", ":)") if lang == "en" else ():
        assert not split_chunks(tables, [special], nlp.tokenizer.url_match)[2][0], special


def test_compiled_affix_walk_follows_re_on_random_strings():
    """The programs keep Python re's semantics where they matter: ordered alternatives (a prefix
    is the first that matches, not the longest), the leftmost-starting suffix, greedy runs,
    fixed repeats, lookbehinds and lookaheads that stop at the substring's edges, a negative
    lookahead, an infix at the start consumed and skipped. Random strings over a small alphabet,
    against spaCy's tokenizer with these patterns; a pattern outside the subset is refused."""
    import random
    import re

    import spacy  # heavy optional import, only for this test's reference
    from spacy.util import compile_infix_regex, compile_prefix_regex, compile_suffix_regex

    from data_pipeline.text.affixes import _C, _Reader, build_tables, read_programs
    from data_pipeline.text.chunk_memo import split_chunks

    nlp = spacy.blank("en")
    tk = nlp.tokenizer
    tk.rules = {"ab.": [{"ORTH": "ab."}]}
    tk.prefix_search = compile_prefix_regex([r"\.\.+", "a", "ab", r"\+(?![0-9])", "x{2}"]).search
    tk.suffix_search = compile_suffix_regex(
        [r"(?<=[0-9])km", "m", r"\.\.+", "'s", "(?<=b)c", r"(?<=a)\."]
    ).search
    tk.infix_finditer = compile_infix_regex([r"(?<=[a-z])-(?=[a-z])", "--", r"\.\.+", "k"]).finditer
    tables = build_tables(nlp)
    assert tables is not None
    rng = random.Random(0)
    chunks = list(
        dict.fromkeys(
            "".join(rng.choices("ab.+-1'skmcx", k=rng.randint(1, 9))) for _ in range(6000)
        )
    )
    tokens, counts, settled = split_chunks(tables, chunks, tk.url_match)
    it = iter(tokens)
    for c, n, ok in zip(chunks, counts, settled):
        got = [next(it) for _ in range(n)]
        if ok:
            assert got == [t.text for t in tk(c)], c
    # coverage of the compiled walk with these odd rules (the rest falls back to spaCy itself)
    assert sum(settled) > 0.8 * len(chunks), (sum(settled), len(chunks))
    for outside in (r"(?<=\w)x$", r"[^a]x$", r"x??$", r"(?i)x$"):
        assert read_programs(re.compile(outside), _Reader(), _C.AT_END) is None, outside


def test_word_memo_grows_in_steps_and_resets():
    """The compiled memo stops where its arrays are full and is grown and called again: a page of
    30,000 distinct words from an empty memo gives the same tokens as spaCy over it, the arrays
    end near what they hold (not the page's worst case), a chunk longer than the walk takes goes
    the Python way, and past MAX_CHUNKS the memo restarts between documents."""
    import spacy  # heavy optional import, only for this test's reference

    from data_pipeline.text import chunk_memo, words

    text = " ".join(f"w{i}, x-{i}." for i in range(15_000)) + " " + "a" * (chunk_memo.MAX_WALK + 5)
    vocab = words.ChunkVocab()
    ids = vocab.words(text.split())
    ref = [t.text for t in spacy.blank("en").tokenizer(text)]
    assert [vocab.strings[i] for i in ids.tolist()] == ref
    st = vocab.state
    n_chunks, n_tokens, n_cp, _ = st.n.tolist()
    assert n_chunks == 30_001
    slack_chunks, slack_cps = words.SLACK  # doubling, plus the room reserved ahead
    assert len(st.cp_at) <= 2 * (n_chunks + slack_chunks) and len(st.ccp) <= 2 * (n_cp + slack_cps)
    assert len(st.tok_at) <= 2 * (n_tokens + slack_cps) and len(st.tok_keys) <= 4 * len(st.tok_at)
    assert len(st.tok_at) < len(text) // 2  # far below one token per code point
    old = words.MAX_CHUNKS
    try:
        words.MAX_CHUNKS = 1000
        vocab.maybe_reset()
        assert vocab.n_chunks == 0 and vocab.strings == []
        again = [vocab.strings[i] for i in vocab.words(["w1,", "x-1."]).tolist()]
        assert again == [t.text for t in spacy.blank("en").tokenizer("w1, x-1.")]
    finally:
        words.MAX_CHUNKS = old


def test_gopher_statistics_by_hand():
    """datatrove's reading (spaCy words) on a text counted by hand."""
    text = "the cat sat on the mat\nthe cat sat on the mat\n# heading ...\n- item one\n"
    a = QualityTagger(QualityTaggerConfig())({"id": "x", "text": text})
    g = lambda k: a[f"quality__gopher__{k}"][0][2]  # noqa: E731
    # spaCy words: 6 + 6 + ("#", "heading", "...") + ("-", "item", "one") = 18; "#", "...", "-"
    # are all punctuation, so 15 words count for the length rule
    assert g("word_count") == 15
    assert g("stop_word_count") == 1  # distinct stop words: only "the" (the defect counted 4)
    # ratios of small integers, divided in float64: approx's default rel 1e-6 >> one rounding
    assert g("hash_word_ratio") == pytest.approx(1 / 18)  # hash and ellipsis: two rules
    assert g("ellipsis_word_ratio") == pytest.approx(1 / 18)
    assert g("dup_line_frac") == pytest.approx(1 / 5)  # re.split("\n+") leaves a last ""
    assert g("bullet_line_frac") == pytest.approx(1 / 4)  # str.splitlines(): 4 lines
    assert g("ellipsis_line_frac") == pytest.approx(1 / 4)
    # the most common 2-gram is the first of the ties: "the cat", twice, 7 characters
    assert g("top_2gram_char_frac") == pytest.approx(14 / len(text))
    # the second "the cat sat on the" (5 words, no spaces: 14 chars) then "mat" jumps on
    assert g("dup_5gram_char_frac") == pytest.approx(len("thecatsatonthe") / len(text))
    assert (
        a["quality__c4__kept_sentences"][0][2] == 4
    )  # four lines of >= 3 words, one sentence each
    assert a["quality__c4__curly_bracket"][0][2] == 0


def test_top_ngram_fraction_is_a_fraction():
    a = QualityTagger(QualityTaggerConfig())({"id": "x", "text": "word " * 100})
    # datatrove's ratio is 9 * 99 / 500 = 1.78 here (overlapping 2-grams); a fraction stops at 1
    assert a["quality__gopher__top_2gram_char_frac"][0][2] == 1.0
    b = QualityTagger(QualityTaggerConfig(reading="dolma"))({"id": "x", "text": "word " * 100})
    assert b["quality__gopher__fraction_of_characters_in_most_common_2grams"][0][2] == 1.0


def test_registry_matches_the_config_and_declares_what_taggers_write(samples_en):
    from dataclasses import fields

    from data_pipeline.config import TaggersConfig
    from data_pipeline.taggers import TAGGERS, TaggerSet, attribute_declared, emitted_attributes

    assert sorted(TAGGERS) == sorted(f.name for f in fields(TaggersConfig))
    for reading in ("datatrove", "dolma"):
        cfg = TaggersConfig()
        cfg.quality.reading = reading
        declared = emitted_attributes(cfg)
        tags = TaggerSet(cfg)
        written = {k for d in samples_en[:30] for attrs in tags(d).values() for k in attrs}
        assert written and all(attribute_declared(k, declared) for k in written), reading


def test_pii_badwords_and_blocklist(tmp_path):
    bl = tmp_path / "block.txt"
    bl.write_text("# spam domains\nbad.example\n")
    t = ContentTagger(ContentTaggerConfig(url_blocklists=[str(bl)]))
    text = "Mail root@host.example.org, call +1 555 123 4567 or ssh 10.1.2.3. Du Arschloch!"
    a = t({"id": "1", "text": text, "metadata": {"url": "https://www.bad.example/x"}}, lang="de")
    span = a["content__pii__email"][0]
    assert text[span[0] : span[1]] == "root@host.example.org"
    assert text[slice(*a["content__pii__ip"][0][:2])] == "10.1.2.3"
    assert "555 123 4567" in text[slice(*a["content__pii__phone"][0][:2])]
    assert text[slice(*a["content__badwords__match"][0][:2])] == "Arschloch"
    assert a["content__url__blocked"][0][2] == 1.0
    b = t({"id": "2", "text": "Du Arschloch!", "url": "https://good.example/"}, lang="en")
    assert "content__badwords__match" not in b and b["content__url__blocked"][0][2] == 0.0


def test_content_scan_equals_the_regex_reading_on_every_sample():
    """The compiled content pass against the Python it replaces, on all 600 man pages and on text
    full of list entries in other cases: bad-word spans as re.findall + str.lower find them (each
    page with its language's list and the English one), the word count as text.split() gives it,
    the PII flags as the necessary-condition patterns find them."""
    import json
    import re

    from data_pipeline.taggers.badwords import RESOURCES
    from data_pipeline.taggers.scan import MAY_IPV4, MAY_PHONE, MAY_PHONE_INTL, scan

    folder = str(RESOURCES / "badwords")
    en = badwords_for(folder, "en")
    entries = json.loads((RESOURCES / "badwords" / "en.json").read_text(encoding="utf-8"))
    crafted = [
        " ".join(w.upper() for w in entries) + " - ".join(w.title() for w in entries),
        "İstanbul ASS ΣΟΦΟΣ ass, blow-job's 'cock' cock-up rim-job x-- -ass- a'ss 2 Girls 1 cup",
    ]
    crafted.append(crafted[1].split(" ", 1)[1].replace("ΣΟΦΟΣ", "σοφος"))  # no fallback to Python
    may = {
        MAY_PHONE: re.compile(r"\d\d\d[ .\-]\d\d\d\d"),
        MAY_IPV4: re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d"),
        MAY_PHONE_INTL: re.compile(r"\+\d"),
    }
    matched = 0
    for lang in ("en", "de", "fr", "es", "it", "nl", "pl", "pt", "ru", "sv", "uk", "ja", "zh_CN"):
        own = badwords_for(folder, lang)
        for text in [d["text"] for d in load_samples(lang)] + crafted:
            for bw in {id(b): b for b in (en, own) if b is not None and b.regex is None}.values():
                n_words, flags, starts, ends, cand, exact, _ = scan(text, bw.table)
                spans = bw.scanned_spans(text, starts, ends, cand, exact)
                assert spans == bw.python_spans(text), (lang, text[:80])
                matched += len(spans)
            assert n_words == len(text.split())
            assert {bit: bool(flags & bit) for bit in may} == {
                bit: rx.search(text) is not None for bit, rx in may.items()
            }
    assert matched > 2 * len(entries)  # the crafted texts match (both paths, every entry)


def test_dolma_c4_flags_equal_the_python_reading():
    """c4_v1's page flags from the compiled pass against str.lower / str.split / `in` on the
    English and Russian man pages and on texts holding the words and phrases in other cases."""
    from data_pipeline.taggers.c4 import _dolma_naughty
    from data_pipeline.text.kernels import code_points, dolma_c4_flags, space_table, token_tables

    naughty = _dolma_naughty()

    def flags(text: str) -> int:
        tables = (naughty.words, naughty.word_bits, naughty.phrases)
        return dolma_c4_flags(code_points(text), token_tables()[2], space_table(), *tables)

    crafted = [
        "A " + " x ".join(sorted(naughty.words_set)).upper() + " y",
        " . ".join(p.title() for p in naughty.phrase_list),
        "Use JavaScript\n{ LOREM Ipsum }",
        "javascript: lorem  ipsum",
    ]
    seen = 0
    for text in [d["text"] for lang in ("en", "ru") for d in load_samples(lang)] + crafted:
        assert flags(text) == naughty.python_flags(text), text[:80]
        seen |= flags(text)
    assert seen == 15  # every flag set somewhere
    assert flags("ΟΔΟΣ lorem ipsum") == -1  # capital sigma: lowered in Python


def test_unspaced_badwords_prefilter_equals_the_full_regex_scan():
    """Japanese, Chinese, Thai, Korean lists: the pattern tried only where an entry can start
    gives finditer's matches, on the Japanese, Chinese and some English man pages and on the
    entries themselves in other cases, run together."""
    import json

    from data_pipeline.taggers.badwords import RESOURCES

    folder = RESOURCES / "badwords"
    pages = [d["text"] for lang in ("ja", "zh_CN") for d in load_samples(lang)]
    pages += [d["text"] for d in load_samples("en")[:20]]
    found = 0
    for lang in ("ja", "zh", "th", "ko"):
        bw = badwords_for(str(folder), lang)
        entries = json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))
        crafted = ["".join(e.upper() for e in entries), " x".join(e.title() for e in entries)]
        for text in pages + crafted:
            spans = bw.regex_spans(text)
            assert spans == [[m.start(), m.end(), 1.0] for m in bw.regex.finditer(text)]
            found += len(spans)
    assert found > 200


def test_pii_spans_tried_at_their_possible_starts_equal_finditer():
    """Dolma's e-mail and phone patterns tried once per "@" and at content_scan's phone starts
    against finditer over the whole text: every sample page and random strings of digits,
    separators, letters, "+", "(", ")" and "@"."""
    import random

    from data_pipeline.taggers.pii import EMAIL, PHONE, pii_spans

    rng = random.Random(0)
    pieces = list("0123456789") * 3 + list(" .-+()@ab_%\n") + ["x.org", "a.b", "555 123 4567"]
    texts = [d["text"] for lang in SAMPLE_LANGS for d in load_samples(lang)]
    texts += ["".join(rng.choices(pieces, k=rng.randint(0, 60))) for _ in range(3000)]
    found = {"email": 0, "phone": 0}
    for text in texts:
        got = pii_spans(text, "dolma")
        for kind, rx in (("email", EMAIL), ("phone", PHONE)):
            assert got[kind] == [[m.start(), m.end(), 1.0] for m in rx.finditer(text)], text
            found[kind] += len(got[kind])
    assert min(found.values()) > 100, found


def test_every_pii_reading_the_config_accepts_has_its_class():
    """`taggers.content.pii_reading` is checked against config.PII_READINGS before a run starts;
    the tagger looks the name up in pii.READINGS: the two lists must name the same readings."""
    from data_pipeline.config import PII_READINGS
    from data_pipeline.taggers.pii import READINGS

    assert tuple(READINGS) == PII_READINGS
    for name, reading in READINGS.items():
        assert reading.name == name and reading.kinds[0] == "email", name
