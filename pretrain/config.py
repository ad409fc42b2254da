"""Typed run configuration, registered with Hydra, and validated before anything is built.

The schema is the set of dataclasses below (OLMo-core style typed configs); Hydra composes them with
the YAML under `configs/` and the user's command-line overrides (`model=pythia-160m parallel.tp=2`).
Every zoo model is registered as an option of the `model` group, so `model=NAME` selects it and
`model.n_layers=4` edits it. `load_config` returns plain dataclass instances after validation, so
the rest of the code never touches OmegaConf. The Hydra plumbing, the strict override keys and the
error type are the config core's (configcore/), shared with the data pipeline.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from configcore import ConfigError, need
from configcore.compose import check_override_keys as check_schema_keys
from configcore.compose import compose, merge_section, override_key
from configcore.structured import from_dict, load_yaml, to_yaml
from model_zoo.config import ModelConfig
from model_zoo.zoo import get_model_config, zoo_names
from parallel.config import ParallelConfig
from pretrain.data.metadata import resolve_data_settings
from pretrain.lr_schedules import lr_schedule_names
from pretrain.series import validate_spec


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    # Parameters that get no weight decay: "norm" (norm weights and biases), "bias" (every bias),
    # "embedding" (the input embedding; the output layer decays unless tied). OLMo-2 decays the
    # embedding, Llama/torchtitan does not: a list, so each recipe says what it does.
    no_decay: list[str] = field(default_factory=lambda: ["norm", "bias", "embedding"])
    fused: str = "auto"  # auto: fused AdamW kernel on GPU, the for-each one elsewhere

    def validate(self) -> None:
        need(self.name == "adamw", f"optim.name={self.name!r}: only adamw is available")
        need(self.lr > 0, f"optim.lr={self.lr} must be positive")
        need(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")
        need(
            0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
            "optim.beta1 and optim.beta2 must be in [0, 1)",
        )
        need(
            self.grad_clip >= 0,
            f"optim.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)",
        )
        for rule in self.no_decay:
            need(
                rule in NO_DECAY_RULES,
                f"optim.no_decay entry {rule!r} is not one of {', '.join(NO_DECAY_RULES)}",
            )
        need(
            self.fused in ("auto", "true", "false"),
            f"optim.fused={self.fused!r} is not auto, true or false",
        )


@dataclass
class LRScheduleConfig:
    """The `schedule:` section: the learning-rate schedule, warmup then one of
    pretrain/lr_schedules.py's registry (cosine, linear, constant, wsd = warmup-stable-decay)."""

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # floor of cosine/linear/wsd as a fraction of optim.lr
    decay_fraction: float = 0.2  # wsd only: share of the run spent decaying
    decay_steps: int = 0  # cosine/linear: steps to decay over after warmup; 0 = to max_steps

    def validate(self, max_steps: int) -> None:
        names = lr_schedule_names()
        need(
            self.name in names,
            f"schedule.name={self.name!r} is not one of {', '.join(names)}",
        )
        need(self.warmup_steps >= 0, f"schedule.warmup_steps={self.warmup_steps} must be >= 0")
        need(
            0 <= self.min_lr_ratio <= 1,
            f"schedule.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]",
        )
        need(
            0 < self.decay_fraction <= 1,
            f"schedule.decay_fraction={self.decay_fraction} must be in (0, 1]",
        )
        need(self.decay_steps >= 0, f"schedule.decay_steps={self.decay_steps} must be >= 0")
        if max_steps > 0 and self.name != "constant":
            need(
                self.warmup_steps < max_steps or self.warmup_steps == 0,
                f"schedule.warmup_steps={self.warmup_steps} is not below trainer.max_steps="
                f"{max_steps}; shorten the warmup or use schedule.name=constant",
            )


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    seed: int = 0
    global_batch_size: int = 8  # sequences per optimizer step
    # Alternative to global_batch_size: tokens per optimizer step (a multiple of seq_len). 0 = unset.
    global_batch_tokens: int = 0
    micro_batch_size: int = 1  # sequences per forward/backward on one data-parallel rank
    seq_len: int = 2048
    log_interval: int = 1
    device: str = "auto"  # auto: cuda when present, else cpu
    nan_policy: str = "stop"  # stop: save what can be saved and fail; skip: drop the update
    max_skipped_steps: int = 10  # with nan_policy=skip: stop after this many skipped steps
    # When the loss and gradient norm are read on the host: step (every step, so a non-finite
    # step is skipped or stopped before its update) or log (only at log steps: no host
    # synchronisation inside the steps between, what a GPU run wants; a non-finite value found
    # at a log step stops the run without saving, since earlier steps may have applied it).
    nan_check: str = "step"
    # Steps to record with the torch profiler, e.g. [5, 8]: steps 5..8 (1-based, inclusive) go to
    # RUN_DIR/profile/trace.json (chrome://tracing, Perfetto) and top_kernels.txt. Empty: off.
    profile_steps: list[int] = field(default_factory=list)
    peak_flops: float = 0.0  # peak FLOP/s of one device for MFU; 0 = from the device table
    tensorboard: bool = True  # write RUN_DIR/tensorboard (a dependency; false turns it off)
    dry_run: bool = False  # validate, print the plan and the checkpoint series, then exit

    def validate(self) -> None:
        """Also turns global_batch_tokens into global_batch_size (tokens win when given)."""
        need(self.max_steps >= 0, f"trainer.max_steps={self.max_steps} must be >= 0")
        need(self.seq_len > 0, f"trainer.seq_len={self.seq_len} must be positive")
        need(
            self.micro_batch_size > 0,
            f"trainer.micro_batch_size={self.micro_batch_size} must be positive",
        )
        need(
            self.device in ("auto", "cpu", "cuda"),
            f"trainer.device={self.device!r} is not auto, cpu or cuda",
        )
        need(
            self.global_batch_tokens >= 0,
            f"trainer.global_batch_tokens={self.global_batch_tokens} must be >= 0",
        )
        if self.global_batch_tokens:
            need(
                self.global_batch_tokens % self.seq_len == 0,
                f"trainer.global_batch_tokens={self.global_batch_tokens} is not a multiple of "
                f"trainer.seq_len={self.seq_len}; use e.g. "
                f"{max(1, self.global_batch_tokens // self.seq_len) * self.seq_len}",
            )
            self.global_batch_size = self.global_batch_tokens // self.seq_len
        need(
            self.global_batch_size > 0,
            f"trainer.global_batch_size={self.global_batch_size} must be positive",
        )
        # Checked once, here; the split over data-parallel ranks is the layout's check.
        need(
            self.global_batch_size % self.micro_batch_size == 0,
            f"trainer.global_batch_size={self.global_batch_size} is not divisible by "
            f"trainer.micro_batch_size={self.micro_batch_size}",
        )
        need(self.log_interval >= 1, f"trainer.log_interval={self.log_interval} must be >= 1")
        need(
            self.nan_policy in ("stop", "skip"),
            f"trainer.nan_policy={self.nan_policy!r} is not stop or skip",
        )
        need(
            self.peak_flops >= 0,
            f"trainer.peak_flops={self.peak_flops} must be >= 0 (0 = from the table)",
        )
        need(
            self.nan_check in ("step", "log"),
            f"trainer.nan_check={self.nan_check!r} is not step or log",
        )
        need(
            self.nan_check == "step" or self.nan_policy == "stop",
            "trainer.nan_policy=skip needs trainer.nan_check=step (a step can only be skipped "
            "if its loss is read before its update)",
        )
        p = list(self.profile_steps)
        need(
            not p or (len(p) == 2 and 1 <= p[0] <= p[1]),
            f"trainer.profile_steps={p} must be [first, last] with 1 <= first <= last, or []",
        )


@dataclass
class CheckpointConfig:
    interval: int = 1000  # full (resumable) checkpoint every N steps; 0 = only at the end
    series: str = ""  # analysis series, e.g. "pythia", "log2:512+every:1000" (pretrain/series.py)
    series_dtype: str = "bfloat16"  # dtype of the weights-only series checkpoints
    keep_last: int = 2  # full checkpoints kept (older ones are deleted); 0 keeps all
    keep_every: int = 0  # also keep full checkpoints whose step is a multiple of this; 0 = none
    async_save: bool = False  # write full checkpoints in the background (DCP async_save)
    verify: str = "checksum"  # resume check of a checkpoint: checksum (sha256 of files) or size
    init_from: str = ""  # start from this weights checkpoint (e.g. from `pretrain import-hf`)

    def validate(self) -> None:
        need(
            self.interval >= 0,
            f"checkpoint.interval={self.interval} must be >= 0 (0 = only at the end)",
        )
        need(
            self.keep_last >= 0 and self.keep_every >= 0,
            "checkpoint.keep_last and keep_every must be >= 0",
        )
        need(
            self.series_dtype in SERIES_DTYPES,
            f"checkpoint.series_dtype={self.series_dtype!r} is not one of "
            f"{', '.join(SERIES_DTYPES)}",
        )
        need(
            self.verify in ("checksum", "size"),
            f"checkpoint.verify={self.verify!r} is not checksum or size",
        )
        validate_spec(self.series)


@dataclass
class DataConfig:
    # Each entry is one member of the mixture: a shard prefix, a glob, or a folder of shards.
    paths: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # mixture weights, one per path
    format: str = "megatron"  # megatron (.bin/.idx) or npy (OLMo raw token memmaps)
    npy_dtype: str = "auto"  # npy only: uint16, uint32, or auto (uint16 when the vocab fits)
    eos_id: int = -1  # document separator; -1 = the model's eos_token_id
    shuffle: bool = True  # shuffle samples within each epoch of each source (seeded)
    # Positions restart at 0 at each document start (RoPE sees each document from position 0).
    reset_position_ids: bool = False
    # No attention across document boundaries; needs a model that accepts document ids.
    intra_doc_mask: bool = False
    mix_block: int = 4096  # samples per mixing block: the mixture is exact within each block

    def validate(self) -> None:
        need(
            self.format in ("megatron", "npy"),
            f"data.format={self.format!r} is not megatron or npy",
        )
        need(
            self.npy_dtype in ("auto", "uint16", "uint32"),
            f"data.npy_dtype={self.npy_dtype!r} is not auto, uint16 or uint32",
        )
        need(self.mix_block >= 1, f"data.mix_block={self.mix_block} must be >= 1")
        if self.weights:
            need(
                len(self.weights) == len(self.paths),
                f"data.weights has {len(self.weights)} entries but data.paths has "
                f"{len(self.paths)}; give one weight per path or none",
            )
            need(
                all(w > 0 for w in self.weights),
                f"data.weights={list(self.weights)} must all be positive",
            )


@dataclass
class DownstreamEvalConfig:
    """lm-eval tasks during training (pretrain/downstream_eval.py), at every checkpoint-series
    step, scored by the training engine's forward: the same tasks, limit and few-shot setting
    `pretrain analyze downstream` takes, so both give the same figures for a step."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task names or presets (pythia)
    include_path: str = ""  # folder of lm-eval task YAMLs (local tasks, offline)
    limit: float = 0.0  # documents per task (a fraction when < 1); 0 = every document
    num_fewshot: int = -1  # few-shot examples; -1 = each task's own
    bootstrap_iters: int = 1000  # for the stderr of non-mean metrics (lm-eval's bootstrap)
    log_samples: bool = False  # also every request's scores (samples/stepN.TASK.jsonl)

    def validate(self) -> None:
        need(
            all(isinstance(t, str) and t.strip() for t in self.tasks),
            f"eval.downstream.tasks={list(self.tasks)} holds an empty name; give lm-eval task "
            "names, e.g. eval.downstream.tasks=[lambada_openai,piqa]",
        )
        need(
            self.limit >= 0 and (self.limit < 1 or self.limit == int(self.limit)),
            f"eval.downstream.limit={self.limit} must be 0 (all), a fraction below 1 or a whole "
            "number of documents",
        )
        need(
            self.num_fewshot >= -1,
            f"eval.downstream.num_fewshot={self.num_fewshot} must be >= 0 (-1 = the task's own)",
        )
        need(
            self.bootstrap_iters >= 0,
            f"eval.downstream.bootstrap_iters={self.bootstrap_iters} must be >= 0",
        )
        need(
            bool(self.tasks) or not self.include_path,
            f"eval.downstream.include_path={self.include_path} but no eval.downstream.tasks; "
            "name the tasks to run from it",
        )


@dataclass
class EvalConfig:
    """Validation during training (pretrain/evaluation.py): held-out token data read with the
    training data's format rules (data.format, data.npy_dtype, data.eos_id)."""

    paths: list[str] = field(default_factory=list)  # one held-out source each, reported apart
    names: list[str] = field(default_factory=list)  # labels in metrics; default: from the paths
    interval: int = 0  # evaluate every N steps; 0 = only at the series steps and the last step
    at_series: bool = True  # also evaluate at every checkpoint-series step (step 0 included)
    max_tokens: int = 1_048_576  # label tokens per source (whole windows); 0 = the whole source
    downstream: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)

    def validate(self) -> None:
        self.downstream.validate()
        need(
            self.interval >= 0,
            f"eval.interval={self.interval} must be >= 0 (0 = series steps only)",
        )
        need(self.max_tokens >= 0, f"eval.max_tokens={self.max_tokens} must be >= 0 (0 = all)")
        need(
            not self.names or len(self.names) == len(self.paths),
            f"eval.names has {len(self.names)} entries but eval.paths has "
            f"{len(self.paths)}; give one name per path or none",
        )
        need(
            len(set(self.names)) == len(self.names),
            f"eval.names={list(self.names)} repeat a name; make them unique",
        )


@dataclass
class MetricsConfig:
    """Optional metrics sinks besides metrics.jsonl, the console and TensorBoard."""

    wandb: bool = False  # also log to Weights & Biases (pip install wandb)
    wandb_project: str = "pretrain"
    wandb_run_name: str = ""  # default: the run folder's name
    wandb_mode: str = "offline"  # offline (no network; `wandb sync` later), online, disabled

    def validate(self) -> None:
        need(
            self.wandb_mode in ("offline", "online", "disabled"),
            f"metrics.wandb_mode={self.wandb_mode!r} is not offline, online or disabled",
        )


@dataclass
class SpikeConfig:
    """Loss-spike detection, explanation, and rollback (pretrain/spikes.py, docs/training.md)."""

    enabled: bool = True  # robust z-scores of the loss and grad norm at every step read
    window: int = 100  # trailing steps whose median and MAD are the reference
    min_steps: int = 8  # steps in the window before any step can be flagged
    # z > 6 under a Gaussian tail: ~1e-9 false alarms per step, ~1.4e-4 over 143k steps
    z: float = 6.0
    signal: str = "loss"  # what flags a spike: loss, grad_norm, or either
    action: str = "log"  # log: record it; rollback: back to a saved state, skip its batches
    skip_batches: int = 1  # with rollback: batches of the data order skipped from the spiking one
    max_rollbacks: int = 3  # with rollback: a spike after this many rollbacks stops the run
    snapshot_interval: int = 0  # with rollback: host-memory copy of the state every N steps
    top: int = 8  # sequences and documents listed per spike (top offenders first)

    def validate(self, checkpoint_interval: int) -> None:
        need(self.window >= 3, f"spike.window={self.window} must be >= 3")
        need(
            1 <= self.min_steps <= self.window,
            f"spike.min_steps={self.min_steps} must be in [1, spike.window={self.window}]",
        )
        need(self.z > 0, f"spike.z={self.z} must be positive")
        need(
            self.signal in ("loss", "grad_norm", "either"),
            f"spike.signal={self.signal!r} is not loss, grad_norm or either",
        )
        need(
            self.action in ("log", "rollback"),
            f"spike.action={self.action!r} is not log or rollback",
        )
        need(self.skip_batches >= 1, f"spike.skip_batches={self.skip_batches} must be >= 1")
        need(self.max_rollbacks >= 1, f"spike.max_rollbacks={self.max_rollbacks} must be >= 1")
        need(
            self.snapshot_interval >= 0,
            f"spike.snapshot_interval={self.snapshot_interval} must be >= 0 (0 = none)",
        )
        need(self.top >= 1, f"spike.top={self.top} must be >= 1")
        need(
            self.action != "rollback" or self.enabled,
            "spike.action=rollback needs spike.enabled=true",
        )
        need(
            self.action != "rollback" or checkpoint_interval > 0 or self.snapshot_interval > 0,
            "spike.action=rollback needs a state to return to: set checkpoint.interval or "
            "spike.snapshot_interval",
        )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    run_dir: str = "runs/default"
    # none: start fresh (refuses a run_dir that has checkpoints); auto: the latest complete full
    # checkpoint of run_dir if any, else fresh; or a path to one full checkpoint folder.
    resume: str = "none"


NO_DECAY_RULES = ("norm", "bias", "embedding")
SERIES_DTYPES = ("float32", "bfloat16", "float16", "float64")


def config_dir() -> Path:
    """configs/ of the checkout (editable install), or $PRETRAIN_CONFIG_DIR."""
    env = os.environ.get("PRETRAIN_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


@functools.cache  # once per process: building 30 structured configs takes half a second
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


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "recipe").glob("*.yaml"))


# Config groups selected with `group=option` (not schema fields).
CONFIG_GROUPS = ("model", "parallel", "recipe")


def check_override_keys(overrides: list[str]) -> None:
    """Reject keys the run schema does not have (the core's strict keys) and unknown recipes."""
    check_schema_keys(overrides, RunConfig(), CONFIG_GROUPS, "see `pretrain config`")
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") == "recipe" and value and value not in recipe_names():
            raise ConfigError(
                f"unknown recipe {value!r}; known recipes: {', '.join(recipe_names())}"
            )


# String-valued keys whose values contain Hydra syntax (`:`, `,`, `[`) in their own little
# language: quoted for Hydra so `checkpoint.series=steps:0,10,100` or `steps:[0,10]` need no
# shell-level double quoting.
_SPEC_KEYS = ("checkpoint.series",)


def quote_spec_values(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq and key.lstrip("+") in _SPEC_KEYS and value and value[0] not in "'\"":
            item = f"{key}='{value}'"
        out.append(item)
    return out


def explicit_keys(overrides: list[str]) -> set[str]:
    """The dotted keys set on the command line (what the data's metadata must not replace)."""
    return {override_key(o) for o in overrides if "=" in o}


# `mixture=FILE`: the config fragment `pretrain mixture fit` writes (pretrain/mixture.py). Its
# `data:` section (paths and weights) is training's; its `mixer:` section is the data pipeline's
# (`pretrain data mixture=FILE` reads that one), so one file serves both as it is.
MIXTURE_KEY = "mixture"
_MIXTURE_DATA_KEYS = ("paths", "weights")


def split_mixture_override(overrides: list[str]) -> tuple[list[str], dict | None]:
    """(the other overrides, the fragment's data section or None). A data.paths / data.weights
    override next to mixture=FILE is refused: which one wins would be a guess."""
    files = [o.split("=", 1)[1] for o in overrides if override_key(o) == MIXTURE_KEY and "=" in o]
    rest = [o for o in overrides if override_key(o) != MIXTURE_KEY]
    if not files:
        return rest, None
    if len(files) > 1:
        raise ConfigError(f"mixture= given {len(files)} times ({', '.join(files)}); give one file")
    path = Path(files[0])
    if not path.is_file():
        raise ConfigError(
            f"mixture={path}: no such file; give the mixture.yaml `pretrain mixture fit` wrote"
        )
    data = (load_yaml(path) or {}).get("data")
    if not isinstance(data, dict) or not data.get("paths"):
        raise ConfigError(
            f"mixture={path} has no data.paths; a mixture file holds data: {{paths: [...], "
            "weights: [...]}} (as `pretrain mixture fit` writes it)"
        )
    extra = sorted(set(data) - set(_MIXTURE_DATA_KEYS))
    if extra:
        raise ConfigError(
            f"mixture={path}: data.{extra[0]} is not part of a mixture (only data.paths and "
            "data.weights are); set it on the command line instead"
        )
    clash = sorted({f"data.{k}" for k in _MIXTURE_DATA_KEYS} & explicit_keys(rest))
    if clash:
        raise ConfigError(
            f"{clash[0]} is given on the command line and by mixture={path}; drop one of them"
        )
    return rest, data


def compose_config(overrides: list[str], config_name: str = "train") -> RunConfig:
    """Compose configs/<config_name>.yaml with overrides into a validated RunConfig.

    Settings that the token data describes (its metadata.json: vocabulary, document separator,
    shard format) are filled in from it unless the overrides set them (pretrain/data/metadata.py).
    """
    overrides, fragment = split_mixture_override(overrides)
    _check_model_override(overrides)
    check_override_keys(overrides)
    overrides = quote_spec_values(overrides)
    register_configs()
    cfg = compose(config_dir(), config_name, overrides)
    if fragment is not None:
        cfg = merge_section(cfg, "data", fragment, "mixture file")
    run = OmegaConf.to_object(cfg)
    if run.checkpoint.init_from:
        run.model = model_of_init_from(run, overrides)
    resolve_data_settings(run, explicit_keys(overrides), model_fixed=bool(run.checkpoint.init_from))
    validate_run_config(run)
    return run


# Fields that may differ between the model given with `model=` and an init_from checkpoint's:
# the name, how fresh weights would be initialised, the context length (continued pretraining
# may extend it), and the MoE kernel choice. Every other field changes the function computed.
_INIT_FROM_FREE_FIELDS = ("name", "init", "max_seq_len", "moe.grouped_mm")


def _flat_fields(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def model_of_init_from(run: RunConfig, overrides: list[str]) -> ModelConfig:
    """checkpoint.init_from=DIR: without `model=` the model is DIR's (with any `model.x=` edits
    applied on top); a `model=` that computes something else is rejected naming the fields."""
    path = Path(run.checkpoint.init_from) / "config.yaml"
    if not path.exists():
        raise ConfigError(
            f"checkpoint.init_from={run.checkpoint.init_from}: no config.yaml there; give a "
            "checkpoint of ours (for a Hugging Face folder run `pretrain import-hf` first)"
        )
    saved = load_yaml(path)["model"]
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    if "model" not in keys:
        edits = [o.lstrip("+~") for o, k in zip(overrides, keys) if k.startswith("model.")]
        edits = [e[len("model.") :] for e in edits]
        return model_config_from_dict(OmegaConf.merge(saved, OmegaConf.from_dotlist(edits)))
    given = _flat_fields(asdict(run.model))
    stored = _flat_fields(asdict(model_config_from_dict(saved)))
    free = _INIT_FROM_FREE_FIELDS
    differ = [
        f"{k}: {given[k]!r} (given) vs {stored.get(k)!r} (checkpoint)"
        for k in given
        if given[k] != stored.get(k) and k not in free and not k.startswith(("init.",))
    ]
    if differ:
        raise ConfigError(
            f"model={run.model.name} does not match checkpoint.init_from="
            f"{run.checkpoint.init_from}: {'; '.join(differ)}; drop model= to use the "
            "checkpoint's model, or fix those fields"
        )
    return run.model


def validate_run_config(run: RunConfig) -> RunConfig:
    """Every check that needs no process group. Raises ConfigError with the reason and a fix.
    Each dataclass checks its own fields (its validate()); what relates two of them is here."""
    t, p, d, model = run.trainer, run.parallel, run.data, run.model
    model.validate()
    t.validate()
    run.optim.validate()
    run.schedule.validate(t.max_steps)
    p.validate()
    run.checkpoint.validate()
    d.validate()
    run.eval.validate()
    run.metrics.validate()
    run.spike.validate(run.checkpoint.interval)
    need(
        t.seq_len <= model.max_seq_len,
        f"trainer.seq_len={t.seq_len} exceeds model.max_seq_len={model.max_seq_len}; "
        "shorten the sequence or raise model.max_seq_len",
    )
    if model.moe.enabled:
        n_experts = model.moe.n_experts
        need(
            n_experts % p.ep == 0,
            f"moe.n_experts={n_experts} is not divisible by parallel.ep={p.ep}; experts are split "
            f"evenly over the expert-parallel ranks: choose parallel.ep among "
            f"{[k for k in range(1, n_experts + 1) if n_experts % k == 0]}",
        )
    else:
        need(p.ep == 1, f"parallel.ep={p.ep} needs a mixture-of-experts model (this one is dense)")
    need(
        not (p.cp > 1 and p.cp_style == "ring" and d.intra_doc_mask),
        "parallel.cp_style=ring runs torch's ring attention, plain causal only: "
        "data.intra_doc_mask=true cannot reach its kernel; use parallel.cp_style=alltoall",
    )
    need(
        run.resume == "none" or run.resume == "auto" or bool(run.resume),
        "resume must be none, auto, or a checkpoint folder",
    )
    eos = d.eos_id if d.eos_id >= 0 else model.eos_token_id
    need(
        not d.paths or eos is not None and 0 <= eos < model.vocab_size,
        f"the document separator (data.eos_id={d.eos_id}, model.eos_token_id="
        f"{model.eos_token_id}) is not a token of the vocabulary (size {model.vocab_size}); "
        "set data.eos_id",
    )
    return run


def to_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig (with nested dataclasses) from a plain dict, e.g. a saved YAML."""
    return from_dict(ModelConfig, d).validate()


def run_config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a validated RunConfig from a saved RUN_DIR/config.yaml (analysis, export, resume)."""
    return validate_run_config(from_dict(RunConfig, d))


__all__ = [
    "RunConfig",
    "ParallelConfig",
    "OptimizerConfig",
    "LRScheduleConfig",
    "TrainerConfig",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "DownstreamEvalConfig",
    "MetricsConfig",
    "SpikeConfig",
    "compose_config",
    "validate_run_config",
    "to_yaml",
    "config_dir",
    "model_config_from_dict",
    "load_yaml",
    "run_config_from_dict",
]
