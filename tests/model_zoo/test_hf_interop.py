"""Hugging Face interop: our models and `transformers`' compute the same logits, both directions.

No weights are downloaded: every model is built from a config with random weights. All parameters,
norms and biases included, are randomised (not left at ones/zeros) so that a swapped norm or a
mis-laid fused QKV cannot hide, and weights are large enough that logits are O(1).
"""

from dataclasses import replace

import pytest
import torch
import transformers

from configcore import ConfigError
from model_zoo import build_model, get_model_config
from model_zoo.config import RopeScalingConfig
from model_zoo.hf import export_hf, import_hf
from pretrain.cli import main as cli_main
from tests.model_zoo.hf_helpers import assert_close as _assert_close
from tests.model_zoo.hf_helpers import randomise as _randomise
from tests.model_zoo.hf_helpers import tokens as _tokens

# Shapes per family: GQA ratios, rotary fraction, tied/untied, biases, norm placement, scaling.
EXPORT_CASES = {
    "pythia-rot25-untied": ("pythia-tiny", {}),
    "pythia-rot50-tied-sequential": (
        "pythia-tiny",
        dict(rotary_fraction=0.5, tie_embeddings=True, parallel_residual=False),
    ),
    "pythia-rot100-nobias": (
        "pythia-tiny",
        dict(rotary_fraction=1.0, qkv_bias=False, attn_out_bias=False, n_heads=8),
    ),
    "olmo2-mha-untied": ("olmo2-tiny", {}),
    "olmo2-gqa2-tied": ("olmo2-tiny", dict(n_kv_heads=2, tie_embeddings=True)),
    "olmo2-mqa-bias": ("olmo2-tiny", dict(n_kv_heads=1, qkv_bias=True, attn_out_bias=True)),
    "llama-gqa2-llama3-scaling": (
        "llama3-tiny",
        dict(
            rope_scaling=RopeScalingConfig(
                type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position=64,
            )
        ),
    ),
    "llama-mha-tied-biases": (
        "llama3-tiny",
        dict(
            n_kv_heads=None, tie_embeddings=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True
        ),
    ),
    "llama-gqa4-headdim": (
        "llama3-tiny",
        dict(n_heads=8, n_kv_heads=2, head_dim=24, rope_scaling=RopeScalingConfig()),
    ),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_loads_in_transformers_with_same_logits(case, tmp_path):
    base, changes = EXPORT_CASES[case]
    cfg = replace(get_model_config(base), **changes).validate()
    ours = build_model(cfg, seed=0).eval()
    _randomise(ours, seed=1)
    export_hf(cfg, ours.state_dict(), tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    expected = {
        "gpt_neox": "GPTNeoXForCausalLM",
        "olmo2": "Olmo2ForCausalLM",
        "llama": "LlamaForCausalLM",
    }[cfg.family]
    assert type(theirs).__name__ == expected
    tokens = _tokens(cfg.vocab_size)
    with torch.no_grad():
        _assert_close(ours, theirs, tokens)


def _hf_model(kind: str) -> transformers.PreTrainedModel:
    common = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        max_position_embeddings=256,
    )
    if kind == "gpt_neox":
        config = transformers.GPTNeoXConfig(
            num_attention_heads=4,
            rotary_pct=0.25,
            rotary_emb_base=10000,
            use_parallel_residual=True,
            **common,
        )
        cls = transformers.GPTNeoXForCausalLM
    elif kind == "gpt_neox_sequential_tied":
        config = transformers.GPTNeoXConfig(
            num_attention_heads=8,
            rotary_pct=0.5,
            use_parallel_residual=False,
            tie_word_embeddings=True,
            **common,
        )
        cls = transformers.GPTNeoXForCausalLM
    elif kind == "olmo2":
        config = transformers.Olmo2Config(
            num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, **common
        )
        cls = transformers.Olmo2ForCausalLM
    elif kind == "llama_tied":
        config = transformers.LlamaConfig(
            num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True, **common
        )
        cls = transformers.LlamaForCausalLM
    else:  # llama with Llama-3.1 rope scaling
        config = transformers.LlamaConfig(
            num_attention_heads=4,
            num_key_value_heads=1,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **common,
        )
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(config).eval()
    _randomise(model, seed=2)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


HF_KINDS = ["gpt_neox", "gpt_neox_sequential_tied", "olmo2", "llama_tied", "llama_scaled"]


@pytest.mark.parametrize("kind", HF_KINDS)
def test_import_of_transformers_model_gives_same_logits(kind, tmp_path):
    theirs = _hf_model(kind)
    theirs.save_pretrained(tmp_path / "hf")
    cfg, state = import_hf(tmp_path / "hf")
    ours = build_model(cfg).eval()
    ours.load_state_dict(state)
    tokens = _tokens(cfg.vocab_size, seed=3)
    with torch.no_grad():
        _assert_close(ours, theirs, tokens)


@pytest.mark.parametrize("kind", ["gpt_neox", "llama_scaled"])
def test_cli_import_then_export_reproduces_original_logits(kind, tmp_path):
    theirs = _hf_model(kind)
    theirs.save_pretrained(tmp_path / "hf")
    assert cli_main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert cli_main(["export-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    tokens = _tokens(theirs.config.vocab_size, seed=4)
    with torch.no_grad():
        _assert_close(reloaded, theirs, tokens)


def test_sharded_export_with_index_loads(tmp_path):
    cfg = get_model_config("llama3-tiny")
    ours = build_model(cfg, seed=0).eval()
    _randomise(ours, seed=5)
    export_hf(cfg, ours.state_dict(), tmp_path / "hf", max_shard_bytes=200_000)
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = _tokens(cfg.vocab_size)
    with torch.no_grad():
        _assert_close(ours, theirs, tokens)


def test_bf16_export_is_bf16_on_disk(tmp_path):
    cfg = get_model_config("olmo2-tiny")
    export_hf(cfg, build_model(cfg).state_dict(), tmp_path / "hf", dtype="bfloat16")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    assert next(theirs.parameters()).dtype == torch.bfloat16


def test_export_refuses_non_empty_folder_without_overwrite(tmp_path):
    cfg = get_model_config("llama3-tiny")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_hf(cfg, build_model(cfg).state_dict(), tmp_path / "hf")
    export_hf(cfg, build_model(cfg).state_dict(), tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists()


def test_cli_export_over_non_empty_folder_exits_2(tmp_path, capsys):
    theirs = _hf_model("olmo2")
    theirs.save_pretrained(tmp_path / "hf")
    assert cli_main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    assert cli_main(["export-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_unexportable_switches_are_named(tmp_path):
    cfg = replace(get_model_config("llama3-tiny"), norm_position="post").validate()
    with pytest.raises(ConfigError, match="cannot be exported as LlamaForCausalLM: norm_position"):
        export_hf(cfg, build_model(cfg).state_dict(), tmp_path / "hf")
