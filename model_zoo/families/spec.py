"""What a model family is: one `FamilySpec` (after torchtitan's TrainSpec), defined in the family's
folder (model_zoo/families/<family>/__init__.py) and listed once in the registry
(model_zoo/families/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_zoo.config import ModelConfig
from model_zoo.hf.base import HFAdapter


@dataclass(frozen=True)
class FamilySpec:
    """One family: its config template, its named sizes, and its Hugging Face adapter.

    There is no parallelize hook. torchtitan's TrainSpec carries a parallelize function because
    its models are separate classes; ours are one decoder whose families differ by switches, so
    the TP plans in parallel/parallelize.py are chosen by switch (e.g. `qk_norm`'s table there),
    never by family name. A family made of known switches needs no parallel code; one that adds a
    switch adds its plan next to that switch's others in parallel/ (model_zoo cannot import it).
    """

    # ModelConfig.family of every size, and the adapter's family (checked below)
    name: str
    # everything but the shape: the values the sizes share
    base: ModelConfig
    # zoo name -> the fields it sets on a copy of `base`, e.g. {"d_model": 1024, ...}
    sizes: dict[str, dict[str, Any]]
    hf_adapter: HFAdapter

    def __post_init__(self) -> None:
        if not (self.name == self.base.family == self.hf_adapter.family):
            raise TypeError(
                f"family spec {self.name!r}: its base config's family ({self.base.family!r}) "
                f"and its adapter's ({self.hf_adapter.family!r}) must be {self.name!r}"
            )


def shape(d_model: int, n_layers: int, n_heads: int, ffn_hidden_size: int, **other: Any) -> dict:
    """A size's overrides, written as a row of the size tables: the four fields every size sets, in
    this order, then any others by name."""
    return dict(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        ffn_hidden_size=ffn_hidden_size,
        **other,
    )


# The shape every family's `<family>-tiny` starts from: small enough that the tests build and run
# it in seconds on a CPU. Each tiny adds its hidden size and the family's quirks.
TINY = {"vocab_size": 1024, "d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 256}
