"""The run's tokenizer as Hugging Face tools read it.

A run's tokenizer is the one its token data was made with: `pretrain data` writes it next to the
shards with the special-token ids in metadata.json (pretrain/data/metadata.py), and a checkpoint's
config.yaml names those data paths, so every checkpoint knows its tokenizer.

`write_tokenizer_folder` copies the tokenizer into a folder and names its special tokens (eos,
bos, pad, unk: those the run has) in tokenizer_config.json and special_tokens_map.json, by the
same ids config.json and generation_config.json carry (the model config's eos/bos ids, the data's
pad id). Without those names transformers' tokenizer has no `eos_token_id`, and lm-eval's `hf`
model fails on the folder (`TypeError: 'None' is not an instance of 'Sequence'` when it decodes
the prefix token). `pretrain export-hf` writes every exported folder's tokenizer with it and
`pretrain analyze downstream` loads the run's tokenizer from a folder it wrote the same way, so
both tokenize every request alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from configcore import ConfigError
from model_zoo.config import ModelConfig
from model_zoo.hf.io import copy_tokenizer
from pretrain.config import RunConfig, load_yaml, run_config_from_dict
from pretrain.data.metadata import TokenizerInfo, common_metadata

SPECIAL_KEYS = ("eos_token", "bos_token", "pad_token", "unk_token")


@dataclass(frozen=True)
class RunTokenizer:
    path: Path  # tokenizer.json, an HF tokenizer folder, or a sentencepiece .model
    pad_id: int | None  # the data's pad id (the model config has no pad id)


def run_tokenizer(run: RunConfig) -> RunTokenizer | None:
    """The tokenizer recorded in the metadata.json of the run's token data, or None when the data
    has no metadata (raw shards: give the tokenizer by hand)."""
    meta = common_metadata(list(run.data.paths) + list(run.eval.paths))
    if meta is None:
        return None
    info: TokenizerInfo = meta.tokenizer
    if not info.path.exists():
        raise FileNotFoundError(
            f"{meta.file} names the tokenizer {info.path}, which does not exist; restore it "
            "or give the tokenizer by hand (--tokenizer)"
        )
    return RunTokenizer(info.path, info.pad_id)


def checkpoint_tokenizer(ckpt_dir: str | Path) -> RunTokenizer | None:
    """The tokenizer of the run a checkpoint of ours belongs to (from its config.yaml)."""
    config = Path(ckpt_dir) / "config.yaml"
    if not config.exists():
        return None
    return run_tokenizer(run_config_from_dict(load_yaml(config)))


def _token_content(value) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class _Vocab:
    """id <-> token string of a tokenizer.json or a sentencepiece model."""

    def __init__(self, folder: Path):
        if (folder / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.to_token, self.to_id = tk.id_to_token, tk.token_to_id
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            self.unk = model.get("unk_token")
        elif (folder / "tokenizer.model").exists():
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
            n = sp.get_piece_size()
            self.to_token = lambda i: sp.id_to_piece(i) if 0 <= i < n else None
            self.to_id = lambda t: (
                sp.piece_to_id(t) if sp.id_to_piece(sp.piece_to_id(t)) == t else None
            )
            self.unk = sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None
        else:
            raise FileNotFoundError(f"{folder} holds neither tokenizer.json nor tokenizer.model")


def special_tokens(folder: Path, cfg: ModelConfig, pad_id: int | None) -> dict[str, str]:
    """Token strings of eos, bos, pad and unk for a tokenizer folder: the model config's eos/bos
    ids and the data's pad id, the tokenizer model's own unk token. A folder whose own configs
    name another token for one of these ids is rejected (the model would stop on one token and
    lm-eval on another)."""
    vocab = _Vocab(folder)
    ids = {"eos_token": cfg.eos_token_id, "bos_token": cfg.bos_token_id, "pad_token": pad_id}
    out: dict[str, str] = {}
    for key, tid in ids.items():
        if tid is None:
            continue
        token = vocab.to_token(tid)
        if token is None:
            raise ConfigError(
                f"{key.split('_')[0]} id {tid} is not in the tokenizer {folder}; the model and "
                "tokenizer do not belong together (export with the run's own --tokenizer)"
            )
        out[key] = token
    if vocab.unk is not None and vocab.to_id(vocab.unk) is not None:
        out["unk_token"] = vocab.unk
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if not (folder / name).exists():
            continue
        own = json.loads((folder / name).read_text(encoding="utf-8"))
        for key in SPECIAL_KEYS:
            theirs = _token_content(own.get(key))
            if theirs is not None and key in out and theirs != out[key]:
                raise ConfigError(
                    f"{folder / name} names {key}={theirs!r} but the model's id is "
                    f"{out[key]!r}; fix the tokenizer folder or the model's {key}_id"
                )
    return out


def write_tokenizer_folder(
    tokenizer: str | Path, out_dir: str | Path, cfg: ModelConfig, pad_id: int | None = None
) -> dict[str, str]:
    """Copy `tokenizer` into out_dir and name its special tokens there; returns them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_tokenizer(Path(tokenizer), out_dir, cfg)
    specials = special_tokens(out_dir, cfg, pad_id)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if (out_dir / "tokenizer.json").exists():
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.setdefault("model_max_length", cfg.max_seq_len)
    # decode() must give back the text the tokens spell: no " ." -> "." clean-up
    config.setdefault("clean_up_tokenization_spaces", False)
    config.update(specials)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    smap = out_dir / "special_tokens_map.json"
    merged = json.loads(smap.read_text()) if smap.exists() else {}
    smap.write_text(json.dumps({**merged, **specials}, indent=2, sort_keys=True))
    if pad_id is not None:  # the model files carry the same pad id
        for name in ("config.json", "generation_config.json"):
            if (out_dir / name).exists():
                data = json.loads((out_dir / name).read_text())
                data["pad_token_id"] = pad_id
                (out_dir / name).write_text(json.dumps(data, indent=2, sort_keys=True))
    return specials
