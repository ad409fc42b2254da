"""The registry of model families: family name -> its Hugging Face adapter.

Each module of model_zoo/hf/ defines one family's adapter and registers it with
`@register_family`; `model_zoo/__init__.py` imports `model_zoo.hf`, so every family is registered
before any config can be validated. `ModelConfig.validate` accepts exactly the registered families,
`export_hf` / `import_hf` look adapters up here, and `pretrain import-hf --help` lists them: adding a
family is one new module in model_zoo/hf/ and its import in model_zoo/hf/__init__.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from model_zoo.errors import ConfigError

if TYPE_CHECKING:
    from model_zoo.hf.base import HFAdapter

_BY_FAMILY: dict[str, HFAdapter] = {}
_BY_MODEL_TYPE: dict[str, HFAdapter] = {}

AdapterClass = TypeVar("AdapterClass", bound=type)


def register_family(cls: AdapterClass) -> AdapterClass:
    """Class decorator: register one instance of an HFAdapter subclass under its `family` and its
    Hugging Face `model_type`. A name registered twice is a programming error, raised at import."""
    adapter = cls()
    for registry, key in ((_BY_FAMILY, adapter.family), (_BY_MODEL_TYPE, adapter.model_type)):
        if not key:
            raise TypeError(f"{cls.__name__} must set family, model_type and architecture")
        if key in registry:
            raise TypeError(
                f"{cls.__name__}: {key!r} is already registered by {type(registry[key]).__name__}"
            )
        registry[key] = adapter
    return cls


def families() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(_BY_FAMILY)


def architectures() -> dict[str, str]:
    """Hugging Face model_type (what import reads from config.json) -> architecture class name,
    e.g. 'qwen3' -> 'Qwen3ForCausalLM'."""
    return {model_type: a.architecture for model_type, a in _BY_MODEL_TYPE.items()}


def adapter_for_family(family: str) -> HFAdapter:
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise ConfigError(
            f"no Hugging Face adapter for family {family!r}; known: {', '.join(_BY_FAMILY)}"
        ) from None


def adapter_for_hf_config(hf: dict[str, Any]) -> HFAdapter:
    model_type = hf.get("model_type")
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ConfigError(
            f"cannot import Hugging Face model_type {model_type!r}; supported: "
            f"{', '.join(_BY_MODEL_TYPE)}"
        ) from None
