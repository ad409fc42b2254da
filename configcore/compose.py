"""Hydra composition of a config folder with command-line overrides, with errors in one line.

Both `pretrain` (configs/train.yaml, schema `RunConfig`) and `data_pipeline`
(configs/pipeline/<name>.yaml, schema `PipelineConfig`) compose the same way: the schema dataclass
is registered in Hydra's ConfigStore and named as the first default of the YAML, so Hydra checks
every key and type; a failure is Hydra's own message (it names the bad key) without the trace.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from configcore.errors import ConfigError


def compose(config_dir: str | Path, config_name: str, overrides: list[str]) -> DictConfig:
    """config_dir/<config_name>.yaml composed with `overrides`; ConfigError("bad override: ...")
    when Hydra refuses them. Hydra's global state is reset first, so it can run many times in one
    process (tests, `pretrain mixture`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        try:
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        except Exception as err:  # Hydra's own messages name the bad key; keep them, drop the trace
            raise ConfigError(f"bad override: {err}") from None


def merge_section(cfg: DictConfig, section: str, fragment: dict, source: str) -> DictConfig:
    """`cfg` with `fragment` merged into its `section` (a config fragment read from a file):
    the merge into the structured config refuses unknown keys and bad types."""
    try:
        return OmegaConf.merge(cfg, {section: fragment})
    except Exception as err:
        raise ConfigError(f"{source}: bad {section} section: {err}") from None


def override_key(item: str) -> str:
    """The dotted key an override sets: `+a.b@pkg=1` -> a.b."""
    key = item.partition("=")[0].lstrip("+~")
    return key.partition("@")[0]


def schema_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema instance (`trainer.max_steps`, `model.moe.top_k`)."""
    keys = []
    for f in fields(node):
        value = getattr(node, f.name)
        keys.append(prefix + f.name)
        if is_dataclass(value):
            keys += schema_keys(value, f"{prefix}{f.name}.")
    return keys


def check_override_keys(
    overrides: list[str], schema: Any, groups: Iterable[str] = (), help_hint: str = ""
) -> None:
    """Strict keys: refuse an override whose key the schema does not have, with or without
    Hydra's `+`/`++`. A `+key=value` is otherwise added as a new key and then silently ignored
    (Hydra suggests `+` itself). `groups` are config groups (`model=NAME`), not schema fields;
    the message suggests the closest keys, else `help_hint`."""
    known = schema_keys(schema)
    known_set = set(known) | set(groups)
    leaves = [k for k in known if not any(o.startswith(k + ".") for o in known)]
    bad = []
    for item in overrides:
        key = override_key(item)
        if key in known_set or key.startswith("hydra."):
            continue
        close = difflib.get_close_matches(key, leaves, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else help_hint
        bad.append(f"{key!r} ({hint})")
    if bad:
        raise ConfigError(f"unknown config key{'s' if len(bad) > 1 else ''} {', '.join(bad)}")
