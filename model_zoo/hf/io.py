"""Read and write Hugging Face model folders (config.json + safetensors) for our decoder.

Written against the on-disk format, not the `transformers` Python API, so exporting needs neither
`transformers` nor a particular version of it; tests load the result with `transformers`.
safetensors is the format Hugging Face loads by default and it is memory-mappable, which is why
weights are written with it (sharded with an index past `max_shard_bytes`, as `save_pretrained`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from configcore import ConfigError
from model_zoo.config import ModelConfig
from model_zoo.families import adapter_for_family, adapter_for_hf_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
DEFAULT_SHARD_BYTES = 5 * 1024**3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} exists and is not empty; pass --overwrite to replace its contents "
                "or choose another --out"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_safetensors(sd: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int) -> int:
    """Write one file, or shards plus model.safetensors.index.json. Returns the number of files."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for key in sorted(sd):
        tensor = sd[key].detach().contiguous().cpu()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][key] = tensor
        sizes[-1] += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata=metadata)
        return 1
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return len(shards)


def copy_tokenizer(tokenizer: Path, out_dir: Path, cfg: ModelConfig) -> None:
    """The tokenizer file, or a folder's tokenizer files, into out_dir (the special tokens are
    named by pretrain/tokenizer.py, which knows the run's ids)."""
    tokenizer = Path(tokenizer)
    if tokenizer.is_file():
        shutil.copy2(tokenizer, out_dir / tokenizer.name)
    elif tokenizer.is_dir():
        found = [f for f in TOKENIZER_FILES if (tokenizer / f).exists()]
        if not found:
            raise FileNotFoundError(
                f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tokenizer}"
            )
        for name in found:
            shutil.copy2(tokenizer / name, out_dir / name)
    else:
        raise FileNotFoundError(f"tokenizer path {tokenizer} does not exist")
    if (out_dir / "tokenizer.json").exists() and not (out_dir / "tokenizer_config.json").exists():
        # A bare tokenizer.json (e.g. trained with HF tokenizers) needs this to load with AutoTokenizer.
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def export_hf(
    cfg: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write `state_dict` (our parameter names) as a Hugging Face folder for cfg's family."""
    adapter = adapter_for_family(cfg.family)
    adapter.check_exportable(cfg)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    torch_dtype = DTYPES[dtype]
    hf_sd = adapter.to_hf_state_dict(cfg, dict(state_dict))
    hf_sd = {k: v.to(torch_dtype) for k, v in hf_sd.items()}
    _write_safetensors(hf_sd, out_dir, max_shard_bytes)
    hf_config = adapter.to_hf_config(cfg)
    hf_config["torch_dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    generation = {"_from_model_config": True, "do_sample": False}
    if cfg.bos_token_id is not None:
        generation["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        generation["eos_token_id"] = cfg.eos_token_id
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer is not None:
        copy_tokenizer(Path(tokenizer), out_dir, cfg)
    return out_dir


def read_hf_state_dict(hf_dir: Path) -> dict[str, torch.Tensor]:
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{hf_dir} has no model.safetensors or model.safetensors.index.json; save the model "
            "with safe_serialization=True (the transformers default)"
        )
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        sd.update(load_file(str(hf_dir / name)))
    return sd


def import_hf(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a Hugging Face folder into (our config, our state dict in fp32)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: is {hf_dir} a Hugging Face model folder?"
        )
    hf_config = json.loads(config_path.read_text())
    adapter = adapter_for_hf_config(hf_config)
    cfg = adapter.from_hf_config(hf_config).validate()
    sd = adapter.from_hf_state_dict(cfg, read_hf_state_dict(hf_dir))
    return cfg, {k: v.float() for k, v in sd.items()}
