"""The registry of model families: one `FamilySpec` (model_zoo/families/spec.py) per family.

Each family is a folder here: `__init__.py` holds its config template, its named sizes as data and
its SPEC; `hf.py` its Hugging Face adapter. The shared adapter code (the interface, requirements,
safetensors I/O, the MoE layout) stays in model_zoo/hf/. Adding a family is one new folder and its
entry in SPECS below: the zoo (`get_model_config`, `pretrain zoo`) lists its sizes,
`ModelConfig.validate` accepts its name, `export_hf` / `import_hf` find its adapter by family and
by config.json `model_type`, and `pretrain import-hf --help` lists it.
"""

from __future__ import annotations

from typing import Any

from configcore import ConfigError
from model_zoo.config import FAMILY_NAMES
from model_zoo.families import deepseek, gpt_neox, llama, mixtral, olmo2, olmoe, qwen3
from model_zoo.families.spec import FamilySpec
from model_zoo.hf.base import HFAdapter

# In the zoo's order: `pretrain zoo` and `zoo_names()` list the sizes family by family as here.
SPECS: tuple[FamilySpec, ...] = (
    gpt_neox.SPEC,
    olmo2.SPEC,
    llama.SPEC,
    qwen3.SPEC,
    mixtral.SPEC,
    olmoe.SPEC,
    deepseek.V2_SPEC,
    deepseek.V3_SPEC,
)


def _index(key: str) -> dict[str, FamilySpec]:
    """The specs by family name or by Hugging Face model_type. A name given twice is a
    programming error, raised at import."""
    out: dict[str, FamilySpec] = {}
    for spec in SPECS:
        value = spec.name if key == "family" else spec.hf_adapter.model_type
        if not value:
            raise TypeError(f"{type(spec.hf_adapter).__name__} must set {key}")
        if value in out:
            raise TypeError(f"{key} {value!r} is registered twice ({out[value].name}, {spec.name})")
        out[value] = spec
    return out


_BY_FAMILY = _index("family")
_BY_MODEL_TYPE = _index("model_type")
# ModelConfig.validate accepts exactly these (config.py cannot import this module: see FAMILY_NAMES)
FAMILY_NAMES.extend(_BY_FAMILY)


def families() -> tuple[str, ...]:
    """The registered family names, in registry order."""
    return tuple(_BY_FAMILY)


def architectures() -> dict[str, str]:
    """Hugging Face model_type (what import reads from config.json) -> architecture class name,
    e.g. 'qwen3' -> 'Qwen3ForCausalLM'."""
    return {model_type: s.hf_adapter.architecture for model_type, s in _BY_MODEL_TYPE.items()}


def adapter_for_family(family: str) -> HFAdapter:
    try:
        return _BY_FAMILY[family].hf_adapter
    except KeyError:
        raise ConfigError(
            f"no Hugging Face adapter for family {family!r}; known: {', '.join(_BY_FAMILY)}"
        ) from None


def adapter_for_hf_config(hf: dict[str, Any]) -> HFAdapter:
    model_type = hf.get("model_type")
    try:
        return _BY_MODEL_TYPE[model_type].hf_adapter
    except KeyError:
        raise ConfigError(
            f"cannot import Hugging Face model_type {model_type!r}; supported: "
            f"{', '.join(_BY_MODEL_TYPE)}"
        ) from None
