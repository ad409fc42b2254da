"""Self-describing token data: the `metadata.json` that `pretrain data` writes next to its shards.

The tokenize stage writes `<output.dir>/tokens/metadata.json` and the tokenizer itself in
`<output.dir>/tokens/tokenizer/`:

    {"format": "pretrain-token-data", "version": 1, "shard_format": "megatron" | "npy",
     "token_dtype": "uint16" | "int32", "documents": int, "tokens": int,
     "shards": [{"path": "<prefix relative to the tokens dir>", "documents": int, "tokens": int}],
     "tokenizer": {"kind": "hf-tokenizer-json" | "hf-folder" | "sentencepiece", "path": "tokenizer",
                   "vocab_size": int, "eos_id": int|null, "bos_id": int|null, "pad_id": int|null,
                   "fingerprint": "sha256:<hex>"},
     "source": {...}}

Training reads it so that the model's vocabulary, the document separator and the shard format come
from the data instead of being repeated by hand (`resolve_data_settings`). A data path is a folder,
a shard prefix or a glob; its metadata is the first `metadata.json` of the right format found in
the folder itself or in one of its parent folders (a prefix `tokens/part-00001-0000` or a
subfolder `tokens/en/` belongs to `tokens/metadata.json`). Shards without metadata (raw Megatron or
OLMo .npy data) keep working with explicit keys (`data.eos_id`, `model.vocab_size`, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from configcore import ConfigError

FORMAT = "pretrain-token-data"
VERSION = 1
FILENAME = "metadata.json"
TOKENIZER_KINDS = ("hf-tokenizer-json", "hf-folder", "sentencepiece")
SHARD_FORMATS = ("megatron", "npy")
TOKEN_DTYPES = ("uint16", "int32")


@dataclass(frozen=True)
class TokenizerInfo:
    kind: str
    path: Path  # absolute: the tokenizer file or folder next to the shards
    vocab_size: int
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None
    fingerprint: str


@dataclass(frozen=True)
class TokenDataMetadata:
    file: Path  # the metadata.json itself
    shard_format: str
    token_dtype: str
    documents: int
    tokens: int
    shards: list[dict]
    tokenizer: TokenizerInfo
    source: dict

    @property
    def root(self) -> Path:
        return self.file.parent


def _int_or_none(value, where: str, file: Path) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{file}: {where}={value!r} is not a token id (an integer >= 0 or null)")
    return value


def read_metadata(file: str | Path) -> TokenDataMetadata:
    """Parse and check one metadata.json. A file that breaks the contract is a ConfigError naming
    the field, so a hand-edited or truncated file never turns into a wrong vocabulary."""
    file = Path(file)
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{file}: not readable token-data metadata ({err}); re-run the "
            "pipeline's tokenize stage or delete the file"
        ) from None
    if raw.get("format") != FORMAT:
        raise ConfigError(f"{file}: format={raw.get('format')!r}, expected {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise ConfigError(
            f"{file}: version={raw.get('version')!r}; this version reads version {VERSION}"
        )

    def pick(obj: dict, key: str, allowed: tuple | None = None, where: str = ""):
        if key not in obj:
            raise ConfigError(f"{file}: missing {where}{key}")
        if allowed is not None and obj[key] not in allowed:
            raise ConfigError(
                f"{file}: {where}{key}={obj[key]!r} is not one of {', '.join(allowed)}"
            )
        return obj[key]

    tok = pick(raw, "tokenizer")
    vocab = pick(tok, "vocab_size", where="tokenizer.")
    if not isinstance(vocab, int) or vocab <= 0:
        raise ConfigError(f"{file}: tokenizer.vocab_size={vocab!r} must be a positive integer")
    info = TokenizerInfo(
        kind=pick(tok, "kind", TOKENIZER_KINDS, "tokenizer."),
        path=(file.parent / pick(tok, "path", where="tokenizer.")).resolve(),
        vocab_size=vocab,
        eos_id=_int_or_none(tok.get("eos_id"), "tokenizer.eos_id", file),
        bos_id=_int_or_none(tok.get("bos_id"), "tokenizer.bos_id", file),
        pad_id=_int_or_none(tok.get("pad_id"), "tokenizer.pad_id", file),
        fingerprint=str(pick(tok, "fingerprint", where="tokenizer.")),
    )
    for key in ("eos_id", "bos_id", "pad_id"):
        value = getattr(info, key)
        if value is not None and value >= vocab:
            raise ConfigError(
                f"{file}: tokenizer.{key}={value} is outside the vocabulary (size {vocab})"
            )
    return TokenDataMetadata(
        file=file.resolve(),
        shard_format=pick(raw, "shard_format", SHARD_FORMATS),
        token_dtype=pick(raw, "token_dtype", TOKEN_DTYPES),
        documents=int(pick(raw, "documents")),
        tokens=int(pick(raw, "tokens")),
        shards=list(pick(raw, "shards")),
        tokenizer=info,
        source=dict(raw.get("source") or {}),
    )


def _is_ours(file: Path) -> bool:
    """A metadata.json of another tool (same common name) is not ours: skip it, do not fail."""
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return file.is_file()  # unreadable but present: read_metadata reports why


def find_metadata(path: str) -> Path | None:
    """The metadata.json describing data path `path` (folder, shard prefix, file or glob), or None.

    Looks in the folder itself, then in each parent folder up to the filesystem root; the first
    metadata.json of this format wins."""
    text = str(path)
    cut = min((text.index(ch) for ch in "*?[" if ch in text), default=None)
    if cut is not None:  # a glob: start from the folder part before the first wildcard
        text = text[:cut].rsplit("/", 1)[0] if "/" in text[:cut] else "."
    start = Path(text).expanduser().absolute()
    for folder in [start, *start.parents] if start.is_dir() else list(start.parents):
        candidate = folder / FILENAME
        if candidate.is_file() and _is_ours(candidate):
            return candidate
    return None


def metadata_for(path: str) -> TokenDataMetadata | None:
    found = find_metadata(path)
    return read_metadata(found) if found is not None else None


def npy_dtype_of(meta: TokenDataMetadata) -> str:
    """The loader's name for the dtype of raw .npy tokens. int32 ids are never negative, so the
    same bytes read as uint32 give the same ids (the loader's choices are uint16 and uint32)."""
    return "uint16" if meta.token_dtype == "uint16" else "uint32"


def _tokenizer_label(path: str, meta: TokenDataMetadata) -> str:
    return f"{path!r} ({meta.tokenizer.kind} {meta.tokenizer.path}, {meta.tokenizer.fingerprint})"


def common_metadata(paths: list[str]) -> TokenDataMetadata | None:
    """The metadata shared by the data paths that have one (None when none has). Members made
    with different tokenizers, or written in different shard formats, are rejected naming both."""
    found = [(p, m) for p in paths if (m := metadata_for(p)) is not None]
    if not found:
        return None
    first_path, first = found[0]
    for path, meta in found[1:]:
        if meta.tokenizer.fingerprint != first.tokenizer.fingerprint:
            raise ConfigError(
                "data.paths mixes tokenizers: "
                f"{_tokenizer_label(first_path, first)} vs {_tokenizer_label(path, meta)}; "
                "tokenize every member with one tokenizer (pipeline tokenizer.path=...)"
            )
        if meta.shard_format != first.shard_format:
            raise ConfigError(
                f"data.paths mixes shard formats: {first_path!r} is {first.shard_format}, "
                f"{path!r} is {meta.shard_format}; write every member in one format"
            )
    return first


def resolve_data_settings(run, explicit: set[str], model_fixed: bool = False):
    """Fill the settings the data knows into `run` (a RunConfig), in place; return the metadata.

    `explicit` holds the dotted keys the user set on the command line: those are kept (and
    checked against the data). The model's vocabulary becomes the tokenizer's (the embedding is
    padded to model.pad_vocab_multiple as usual) unless model.vocab_size was given or the model
    is fixed by a checkpoint (`model_fixed`); a vocabulary smaller than the data's is rejected.
    The document separator, the model's EOS/BOS ids and the shard format come from the data."""
    # Held-out sources (eval.paths) must come from the same tokenizer as the training data.
    meta = common_metadata(list(run.data.paths) + list(run.eval.paths))
    if meta is None:
        return None
    tok, data, model = meta.tokenizer, run.data, run.model
    if "data.format" not in explicit:
        data.format = meta.shard_format
    elif data.format != meta.shard_format:
        raise ConfigError(
            f"data.format={data.format} but {meta.file} says the shards are "
            f"{meta.shard_format}; drop data.format"
        )
    if data.format == "npy" and "data.npy_dtype" not in explicit:
        data.npy_dtype = npy_dtype_of(meta)
    if "data.eos_id" not in explicit and tok.eos_id is not None:
        data.eos_id = tok.eos_id
    if model_fixed or "model.vocab_size" in explicit:
        if model.vocab_size < tok.vocab_size:
            raise ConfigError(
                f"model.vocab_size={model.vocab_size} is smaller than the data's vocabulary "
                f"({tok.vocab_size} tokens, {meta.file}); "
                + (
                    "the checkpoint's model cannot read this data: tokenize it with the "
                    "model's tokenizer"
                    if model_fixed and "model.vocab_size" not in explicit
                    else f"drop model.vocab_size (it then comes from the data) or set it to at "
                    f"least {tok.vocab_size}"
                )
            )
    else:
        model.vocab_size = tok.vocab_size
    if not model_fixed:
        if "model.eos_token_id" not in explicit:
            model.eos_token_id = tok.eos_id
        if "model.bos_token_id" not in explicit:
            model.bos_token_id = tok.bos_id
    return meta
