"""A number in [0, 1) per document from (seed, id): subsampling is reproducible across runs."""

from __future__ import annotations

import xxhash  # fast stable 64-bit hashes (Python's hash() differs per process)

from ..config import RandomTaggerConfig
from .base import Attrs, DocView, Tagger, as_view, register, whole


@register("random")
class RandomTagger(Tagger):
    config_type = RandomTaggerConfig

    def __init__(self, cfg: RandomTaggerConfig):
        self.cfg = cfg

    @staticmethod
    def emits(cfg: RandomTaggerConfig) -> list[str]:
        return [f"{cfg.name}__random__value"]

    def __call__(self, view: DocView, context: dict | None = None) -> Attrs:
        view = as_view(view)
        doc = view.doc
        v = xxhash.xxh64_intdigest(doc["id"].encode("utf-8", "surrogatepass"), seed=self.cfg.seed)
        return {f"{self.cfg.name}__random__value": whole(view.text, v / 2.0**64)}
