"""Taggers on real text: language ID on man pages of known language, Gopher statistics against counts
done by hand on a small text, PII spans, bad words per language, URL blocklists."""

from __future__ import annotations

import pytest

from data_pipeline.config import ContentTaggerConfig, LangTaggerConfig, QualityTaggerConfig
from data_pipeline.taggers import ContentTagger, LangTagger, QualityTagger, fasttext_scores
from tests.data_pipeline.helpers import load_samples


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


def test_gopher_statistics_by_hand():
    """datatrove's reading (spaCy words) on a text counted by hand."""
    text = "the cat sat on the mat\nthe cat sat on the mat\n# heading ...\n- item one\n"
    a = QualityTagger(QualityTaggerConfig())({"id": "x", "text": text})
    g = lambda k: a[f"quality__gopher__{k}"][0][2]  # noqa: E731
    # spaCy words: 6 + 6 + ("#", "heading", "...") + ("-", "item", "one") = 18; "#", "...", "-"
    # are all punctuation, so 15 words count for the length rule
    assert g("word_count") == 15
    assert g("stop_word_count") == 1  # distinct stop words: only "the" (the defect counted 4)
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
