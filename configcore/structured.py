"""Between typed config dataclasses and YAML / plain dicts, through OmegaConf's structured
configs (a saved config is reloaded with the schema's types and defaults, unknown keys refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def to_container(obj: Any) -> Any:
    """A config dataclass as plain dicts and lists."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def from_dict(schema: type[T], d: Any) -> T:
    """An instance of the dataclass `schema` with `d` (a dict, or a loaded YAML) merged over its
    defaults: the schema's types are checked and its nested dataclasses rebuilt."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), d))


def load_yaml(path: str | Path, resolve: bool = True) -> Any:
    """A YAML file as plain dicts and lists (interpolations resolved unless `resolve=False`)."""
    return OmegaConf.to_container(OmegaConf.load(str(path)), resolve=resolve)
