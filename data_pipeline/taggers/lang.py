"""Language ID, the `lang` tagger, two readings: fastText lid.176 (fasttext_lid.py) on the
document and, in one batched call, on its paragraphs; optionally cld2 on the document.

The document is read as datatrove's LanguageFilter reads it: newlines replaced by spaces
(datatrove/utils/lid.py:54), the whole text.
"""

from __future__ import annotations

import data_pipeline.taggers.fasttext_lid as ft  # a module, so tests can patch its predict_lines

from ..config import LangTaggerConfig
from .base import Attrs, DocView, Tagger, as_view, register, whole


@register("lang")
class LangTagger(Tagger):
    """fastText on the document and its paragraphs. A paragraph's prediction depends on its text
    alone (fastText reads each line on its own: its words, their character n-grams, the EOS
    token), so a paragraph text predicted before, in this document or an earlier one, is not
    predicted again: its (language, score) comes from a memo (bounded like the word memos); and the
    paragraph of a document that is one paragraph with only fastText's word delimiters around it
    has the same words, so the same prediction, as the document."""

    config_type = LangTaggerConfig
    MEMO_CHARS = 8_000_000  # paragraph characters held before the memo starts again (~40 MB)

    def __init__(self, cfg: LangTaggerConfig):
        self.cfg = cfg
        # text -> its attribute ("" where fastText gave no label) and score: strings and floats,
        # which the garbage collector does not track (a tuple per entry would be scanned by
        # every full collection)
        self.memo: dict[str, str] = {}
        self.scores: dict[str, float] = {}
        self.memo_chars = 0
        self.cld2 = Cld2(cfg.name) if cfg.cld2 else None

    @staticmethod
    def emits(cfg: LangTaggerConfig) -> list[str]:
        out = [f"{cfg.name}__ft__lang__*"]
        if cfg.paragraphs:
            out.append(f"{cfg.name}__ft_paragraph__lang__*")
        if cfg.cld2:
            out.append(f"{cfg.name}__cld2__lang__*")
        return out

    def __call__(self, view: DocView, context: dict | None = None) -> Attrs:
        view = as_view(view)
        cfg, text = self.cfg, view.text
        # newlines to spaces as datatrove reads the text (lid.py:54)
        doc_line = (text[: cfg.max_chars] if cfg.max_chars else text).replace("\n", " ") + "\n"
        paras = view.paragraphs if cfg.paragraphs else []
        texts = [text[s:e] for s, e in paras]  # the memo's keys
        memo, lines = self.memo, [doc_line]
        new: dict[str, int] = {}  # paragraph texts not in the memo -> their index in `lines`
        s0, e0 = paras[0] if len(paras) == 1 else (0, 0)
        if (  # one paragraph with only delimiters around it, the document not cut
            len(paras) == 1
            and not text[:s0].strip(ft.FT_DELIMITERS)
            and not text[e0:].strip(ft.FT_DELIMITERS)
            and (not cfg.max_chars or len(text) <= cfg.max_chars)
        ):
            if texts[0] not in memo:
                new[texts[0]] = 0  # the document's prediction
        else:
            for t in texts:
                if t not in memo and t not in new:
                    new[t] = len(lines)
                    lines.append(t.replace("\n", " ") + "\n")
        f, k = ft.fasttext_model(cfg.model_path).f, max(cfg.top_k, 1)
        labels, probs = ft.predict_lines(f, lines[:1], k)
        if len(lines) > 1:
            more = ft.first_of_top(f, lines[1:], k)
            labels, probs = labels + more[0], probs + more[1]
        out: Attrs = {}
        for lab, p in zip(labels[0][: cfg.top_k], probs[0][: cfg.top_k]):
            score = min(1.0, float(p))
            if score >= cfg.min_score:
                out[f"{cfg.name}__ft__lang__{lab[9:]}"] = whole(text, score)
        pre = f"{cfg.name}__ft_paragraph__lang__"
        scores = self.scores
        for t, i in new.items():
            top = labels[i]
            memo[t] = pre + top[0][9:] if top else ""
            scores[t] = round(min(1.0, float(probs[i][0])), 4) if top else 0.0
            self.memo_chars += len(t)
        for (s, e), t in zip(paras, texts):
            name = memo[t]
            if name:
                if name in out:
                    out[name].append([s, e, scores[t]])
                else:
                    out[name] = [[s, e, scores[t]]]
        if self.memo_chars > self.MEMO_CHARS:
            memo.clear()
            scores.clear()
            self.memo_chars = 0
        if self.cld2 is not None:
            out.update(self.cld2(text))
        return out

    def provides(self, attrs: Attrs) -> dict:
        """What later taggers may read: the document's top language (bad-words list choice)."""
        return {"language": self.top_language(attrs, self.cfg.name)}

    @staticmethod
    def top_language(attrs: Attrs, name: str) -> str | None:
        best, best_score = None, -1.0
        pre = f"{name}__ft__lang__"
        for k, spans in attrs.items():
            if k.startswith(pre) and spans[0][2] > best_score:
                best, best_score = k[len(pre) :], spans[0][2]
        return best


class Cld2:
    """The second reading (taggers.lang.cld2=true): cld2's languages of the document with their
    share of its text (pycld2, optional)."""

    def __init__(self, name: str):
        import pycld2  # checked by LangTaggerConfig.validate, which names the fix

        self.detect, self.error, self.prefix = pycld2.detect, pycld2.error, f"{name}__cld2__lang__"

    def __call__(self, text: str) -> Attrs:
        try:
            _, _, details = self.detect(text)
        except self.error:  # cld2 rejects some byte sequences; tag nothing rather than guess
            return {}
        return {
            f"{self.prefix}{code}": whole(text, percent / 100.0)
            for _name, code, percent, _score in details
            if code != "un" and percent > 0
        }
