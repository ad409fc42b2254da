"""The zoo: named model configs of the published families, plus a `tiny` of each for tests.

Each family's sizes are data in its folder (model_zoo/families/<family>/__init__.py: the fields a
size sets on the family's template). Shapes are those of the released Hugging Face configs
(config.json of EleutherAI/pythia-*, allenai/OLMo-2-*, meta-llama/Llama-3.*, Qwen/Qwen3-*, ...);
tests/model_zoo/test_zoo.py and test_qwen3.py check the parameter counts against the published
numbers and name where each number comes from.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from configcore import ConfigError
from model_zoo.config import ModelConfig
from model_zoo.families import SPECS
from model_zoo.families.spec import FamilySpec


def _sizes() -> dict[str, FamilySpec]:
    """Zoo name -> the spec that defines it, in registry order. A name two families define is a
    programming error, raised at import."""
    out: dict[str, FamilySpec] = {}
    for spec in SPECS:
        for name in spec.sizes:
            if name in out:
                raise TypeError(f"zoo name {name!r} is defined by {out[name].name} and {spec.name}")
            out[name] = spec
    return out


_ZOO = _sizes()


def zoo_names() -> list[str]:
    return list(_ZOO)


def get_model_config(name: str) -> ModelConfig:
    """A fresh copy of the named config: the family's template with the size's fields set.
    Unknown names list the known ones."""
    try:
        spec = _ZOO[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(zoo_names())}"
        ) from None
    overrides = copy.deepcopy(spec.sizes[name])  # nested configs are not shared between copies
    return replace(copy.deepcopy(spec.base), name=name, **overrides).validate()
