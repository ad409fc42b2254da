"""Typed run configuration, registered with Hydra, and validated before anything is built.

The schema is the set of dataclasses below (OLMo-core style typed configs); Hydra composes them with
the YAML under `configs/` and the user's command-line overrides (`model=pythia-160m parallel.tp=2`).
Every zoo model is registered as an option of the `model` group, so `model=NAME` selects it and
`model.n_layers=4` edits it. `load_config` returns plain dataclass instances after validation, so
the rest of the code never touches OmegaConf.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from model_zoo.config import ConfigError, ModelConfig
from model_zoo.zoo import get_model_config, zoo_names
from parallel.config import ParallelConfig


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: warmup then cosine, linear, constant, or wsd (warmup-stable-decay)."""

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # wsd only: share of the run spent decaying


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    seed: int = 0
    global_batch_size: int = 8  # sequences per optimizer step
    micro_batch_size: int = 1  # sequences per forward/backward on one data-parallel rank
    seq_len: int = 2048
    log_interval: int = 1
    device: str = "auto"  # auto: cuda when present, else cpu


@dataclass
class CheckpointConfig:
    interval: int = 1000
    series: str = ""  # e.g. "pythia", "log2:512+every:1000"
    keep_last: int = 2


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # tokenized shard prefixes
    weights: list[float] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run_dir: str = "runs/default"


SCHEDULES = ("cosine", "linear", "constant", "wsd")


def config_dir() -> Path:
    """configs/ of the checkout (editable install), or $PRETRAIN_CONFIG_DIR."""
    env = os.environ.get("PRETRAIN_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for name in zoo_names():
        cs.store(group="model", name=name, node=get_model_config(name))


def _check_model_override(overrides: list[str]) -> None:
    """Turn Hydra's generic "could not find model/x" into a message listing the zoo."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "model" and value and value not in zoo_names():
            raise ConfigError(f"unknown model {value!r}; known models: {', '.join(zoo_names())}")


def compose_config(overrides: list[str], config_name: str = "train") -> RunConfig:
    """Compose configs/<config_name>.yaml with overrides into a validated RunConfig."""
    _check_model_override(overrides)
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        try:
            cfg = compose(config_name=config_name, overrides=list(overrides))
        except Exception as err:  # Hydra's own messages name the bad key; keep them, drop the trace
            raise ConfigError(f"bad override: {err}") from None
    run = OmegaConf.to_object(cfg)
    validate_run_config(run)
    return run


def validate_run_config(run: RunConfig) -> RunConfig:
    """Every check that needs no process group. Raises ConfigError with the reason and a fix."""
    run.model.validate()
    t, o, s, p = run.trainer, run.optim, run.schedule, run.parallel

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(t.max_steps >= 0, f"trainer.max_steps={t.max_steps} must be >= 0")
    need(t.seq_len > 0, f"trainer.seq_len={t.seq_len} must be positive")
    need(
        t.seq_len <= run.model.max_seq_len,
        f"trainer.seq_len={t.seq_len} exceeds model.max_seq_len={run.model.max_seq_len}; "
        "shorten the sequence or raise model.max_seq_len",
    )
    need(t.micro_batch_size > 0, f"trainer.micro_batch_size={t.micro_batch_size} must be positive")
    need(
        t.global_batch_size % t.micro_batch_size == 0,
        f"trainer.global_batch_size={t.global_batch_size} is not divisible by "
        f"trainer.micro_batch_size={t.micro_batch_size}",
    )
    need(t.device in ("auto", "cpu", "cuda"), f"trainer.device={t.device!r} is not auto, cpu or cuda")
    need(o.name == "adamw", f"optim.name={o.name!r}: only adamw is available")
    need(o.lr > 0, f"optim.lr={o.lr} must be positive")
    need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
    need(s.name in SCHEDULES, f"schedule.name={s.name!r} is not one of {', '.join(SCHEDULES)}")
    need(s.warmup_steps >= 0, f"schedule.warmup_steps={s.warmup_steps} must be >= 0")
    for axis in ("tp", "pp", "dp_replicate", "ep"):
        need(getattr(p, axis) >= 1, f"parallel.{axis}={getattr(p, axis)} must be >= 1")
    need(p.dp_shard == -1 or p.dp_shard >= 1, f"parallel.dp_shard={p.dp_shard} must be >= 1 or -1")
    if run.data.weights:
        need(
            len(run.data.weights) == len(run.data.paths),
            f"data.weights has {len(run.data.weights)} entries but data.paths has "
            f"{len(run.data.paths)}; give one weight per path or none",
        )
    return run


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def to_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig (with nested dataclasses) from a plain dict, e.g. a saved YAML."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), d)
    return OmegaConf.to_object(merged).validate()


def load_yaml(path: str | Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True)


__all__ = [
    "RunConfig", "ParallelConfig", "OptimizerConfig", "ScheduleConfig", "TrainerConfig",
    "CheckpointConfig", "DataConfig", "compose_config", "validate_run_config", "to_yaml",
    "config_dir", "model_config_from_dict", "load_yaml",
]
