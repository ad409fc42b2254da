"""Quality statistics in two readings, each following its reference line by line.

- `reading=datatrove`: FineWeb's filters as datatrove 0.10.1 implements them
  (datatrove/pipeline/filters/gopher_repetition_filter.py, gopher_quality_filter.py,
  c4_filters.py, fineweb_quality_filter.py), spaCy words (text/words.py). The C4 filter rewrites
  the text to its kept lines (c4_filters.py:135) before FineWeb's filter reads it, so the
  `fineweb__*` statistics are measured on that text, as in FineWeb's pipeline order.
- `reading=dolma`: Dolma's `gopher_v2` and `c4_v1` taggers (dolma/taggers/gopher.py:139-201,
  dolma/taggers/c4.py:44-76), whitespace words.

One module per reference filter, one class per reading (gopher.py, c4.py, fineweb.py); this
tagger runs the enabled ones in that order. Each returns measurements; the thresholds are mixer
rules in the preset YAML (configs/pipeline/fineweb.yaml, dolma.yaml), so changing one re-runs only
the mixer. Where a reference stops at the first failing rule, the statistics it never computed are
still written (the decision is the same: the document fails either way).
"""

from __future__ import annotations

from ..config import QualityTaggerConfig
from ..text.kernels import warm_up
from .base import Attrs, DocView, Reading, Tagger, as_view, register
from .c4 import DatatroveC4, DolmaC4
from .fineweb import DatatroveFineWeb
from .gopher import DatatroveGopher, DolmaGopher

# each reading's classes in the order they run (FineWeb reads what C4 passes on); a class runs when
# the config's flag named by its group (gopher, c4, fineweb) is on
DATATROVE_READINGS: tuple[type[Reading], ...] = (DatatroveGopher, DatatroveC4, DatatroveFineWeb)
DOLMA_READINGS: tuple[type[Reading], ...] = (DolmaGopher, DolmaC4)


def enabled_readings(cfg: QualityTaggerConfig) -> list[type[Reading]]:
    readings = DOLMA_READINGS if cfg.reading == "dolma" else DATATROVE_READINGS
    return [r for r in readings if getattr(cfg, r.group)]


@register("quality")
class QualityTagger(Tagger):
    config_type = QualityTaggerConfig

    def __init__(self, cfg: QualityTaggerConfig):
        self.cfg = cfg
        warm_up()
        self.readings = [r(cfg) for r in enabled_readings(cfg)]

    @staticmethod
    def emits(cfg: QualityTaggerConfig) -> list[str]:
        return [f"{cfg.name}__{r.group}__{k}" for r in enabled_readings(cfg) for k in r.keys]

    def __call__(self, view: DocView, context: dict | None = None) -> Attrs:
        view = as_view(view)
        pre = self.cfg.name
        out: Attrs = {}
        passed: dict = {}
        for reading in self.readings:
            for k, v in reading(view, passed).items():
                out[f"{pre}__{reading.group}__{k}"] = v
        return out
