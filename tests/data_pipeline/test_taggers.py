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
    text = "the cat sat on the mat\nthe cat sat on the mat\n# heading ...\n- item one\n"
    a = QualityTagger(QualityTaggerConfig())({"id": "x", "text": text})
    g = lambda k: a[f"quality__gopher__{k}"][0][2]  # noqa: E731
    assert g("word_count") == 18  # 6 + 6 + 3 ("#", "heading", "...") + 3 whitespace tokens
    assert g("stop_word_count") == 4  # "the" x4
    assert g("dup_line_frac") == pytest.approx(1 / 4)
    assert g("bullet_line_frac") == pytest.approx(1 / 4)
    assert g("ellipsis_line_frac") == pytest.approx(1 / 4)
    assert g("symbol_word_ratio") == pytest.approx(2 / 18)  # one "#" and one "..."
    # "the cat sat on the" repeats: the second copy of each 5-gram of line 1 covers 6 words of line 2
    words = text.split()
    covered = sum(len(w) for w in words[6:12])
    assert g("dup_5gram_char_frac") == pytest.approx(covered / sum(len(w) for w in words))
    assert a["quality__c4__kept_sentences"][0][2] == 0
    assert len(a["quality__c4__drop_line"]) == 4


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
