"""The text engine the taggers and dedup read: a document's words and their statistics, compiled.

- `words.py`: `ChunkVocab`, spaCy's words of a text (each distinct whitespace chunk tokenised once,
  then looked up), and the sentencizer's counts; `punctuation.py`: datatrove's punctuation sets.
- `chunk_memo.py`, `affixes.py`: the compiled half of those words (the memo's hash tables and
  spaCy's affix walk compiled from spaCy's own patterns).
- `kernels.py`: the compiled per-document statistics (n-gram repeats, line walks, page flags) over
  code points and word ids.

Nothing here knows about taggers, attributes or configs: taggers/ turns these measurements into
attributes, dedup.py shingles with the same words.
"""
