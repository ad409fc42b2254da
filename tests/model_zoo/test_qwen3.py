"""Qwen3, the family added through the adapter registry: parameter counts against the published
ones, and logits against transformers' Qwen3ForCausalLM in both directions (no download: every
model is built from a config with random weights)."""

from dataclasses import replace

import pytest
import torch
import transformers

from configcore import ConfigError
from model_zoo import build_model, count_parameters, get_model_config
from model_zoo.hf import architectures, export_hf, families, import_hf
from pretrain.cli import main as cli_main
from tests.model_zoo.hf_helpers import assert_close, randomise, tokens

# config.json of the Hub's Qwen/Qwen3-{0.6B,1.7B,4B,8B}(-Base): every size has vocab_size 151936,
# num_key_value_heads 8, head_dim 128, no attention or MLP biases.
QWEN3_CONFIG_JSON = {
    "qwen3-0.6b": dict(hidden=1024, intermediate=3072, layers=28, heads=16, tied=True),
    "qwen3-1.7b": dict(hidden=2048, intermediate=6144, layers=28, heads=16, tied=True),
    "qwen3-4b": dict(hidden=2560, intermediate=9728, layers=36, heads=32, tied=True),
    "qwen3-8b": dict(hidden=4096, intermediate=12288, layers=36, heads=32, tied=False),
}
VOCAB, KV_HEADS, HEAD_DIM = 151936, 8, 128

# Published sizes. Qwen's model cards give "Number of Parameters (Non-Embedding)" (0.44B for 0.6B,
# 1.4B for 1.7B, 3.6B for 4B, 6.95B for 8B) and totals rounded to two digits (0.6B, 1.7B, 4.0B,
# 8.2B); the Hub's "Model size" is the sum of the tensors in the released safetensors (752M,
# 2.03B, 4.02B, 8.19B). The 0.6B and 1.7B checkpoints store lm_head.weight although it is tied to
# the embedding, so their safetensors total counts the embedding twice; 4B's does not store it.
# Each size is checked against the figure that pins it to 0.5% (two-digit roundings do not).
PUBLISHED = {
    # name: (figure, what it counts, source)
    "qwen3-0.6b": (0.44e9, "non_embedding", "Qwen/Qwen3-0.6B model card: 0.44B non-embedding"),
    "qwen3-1.7b": (2.03e9, "stored", "Hub safetensors size of Qwen/Qwen3-1.7B: 2.03B"),
    "qwen3-4b": (4.02e9, "total", "Hub safetensors size of Qwen/Qwen3-4B: 4.02B"),
    "qwen3-8b": (6.95e9, "non_embedding", "Qwen/Qwen3-8B model card: 6.95B non-embedding"),
}


def count_from_config_json(c: dict) -> int:
    """Total parameters of a Qwen3 decoder from its config.json values, written out by hand
    (independently of the model code): embedding, per layer q/k/v/o + q/k norms + SwiGLU + two
    norms, final norm, and the output layer when untied."""
    d, q_dim, kv_dim = c["hidden"], c["heads"] * HEAD_DIM, KV_HEADS * HEAD_DIM
    attention = d * q_dim + 2 * d * kv_dim + q_dim * d + 2 * HEAD_DIM
    per_layer = attention + 3 * d * c["intermediate"] + 2 * d
    return VOCAB * d * (1 if c["tied"] else 2) + c["layers"] * per_layer + d


@pytest.mark.parametrize("name", sorted(QWEN3_CONFIG_JSON))
def test_qwen3_counts_match_config_json_and_published_sizes(name):
    cfg = get_model_config(name)
    count = count_parameters(cfg)
    assert count.total == count_from_config_json(QWEN3_CONFIG_JSON[name])
    figure, kind, source = PUBLISHED[name]
    ours = {
        "total": count.total,
        "non_embedding": count.non_embedding,
        # what the safetensors hold: the tied output layer stored as its own tensor
        "stored": count.total + (count.embedding if cfg.tie_embeddings else 0),
    }[kind]
    assert abs(ours - figure) / figure < 0.005, f"{name} {kind} {ours:,} vs {source}"


def _hf_qwen3(tied: bool, kv_heads: int) -> transformers.Qwen3ForCausalLM:
    config = transformers.Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=24,  # neither d_model / n_heads nor a power of two
        max_position_embeddings=256,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    randomise(model, seed=2)
    if tied:
        model.tie_weights()
    return model


@pytest.mark.parametrize(
    "changes",
    [{}, dict(tie_embeddings=False, n_kv_heads=1, head_dim=16)],
    ids=["tiny-gqa2-tied-headdim32", "untied-mqa-headdim16"],
)
def test_qwen3_export_loads_in_transformers_with_same_logits(changes, tmp_path):
    cfg = replace(get_model_config("qwen3-tiny"), **changes).validate()
    ours = build_model(cfg, seed=0).eval()
    randomise(ours, seed=1)
    export_hf(cfg, ours.state_dict(), tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "Qwen3ForCausalLM"
    x = tokens(cfg.vocab_size)
    with torch.no_grad():
        assert_close(ours, theirs, x)


@pytest.mark.parametrize("tied,kv_heads", [(True, 2), (False, 4)], ids=["tied-gqa2", "untied-mha"])
def test_qwen3_import_of_transformers_model_gives_same_logits(tied, kv_heads, tmp_path):
    theirs = _hf_qwen3(tied, kv_heads)
    theirs.save_pretrained(tmp_path / "hf")
    cfg, state = import_hf(tmp_path / "hf")
    assert (cfg.family, cfg.qk_norm, cfg.head_dim, cfg.tie_embeddings) == (
        "qwen3",
        "head",
        24,
        tied,
    )
    ours = build_model(cfg).eval()
    ours.load_state_dict(state)
    x = tokens(cfg.vocab_size, seed=3)
    with torch.no_grad():
        assert_close(ours, theirs, x)


def test_qwen3_is_a_registered_family_with_named_limits(tmp_path):
    assert "qwen3" in families()
    cfg = replace(get_model_config("qwen3-tiny"), qk_norm="full").validate()
    with pytest.raises(ConfigError, match="cannot be exported as Qwen3ForCausalLM: qk_norm"):
        export_hf(cfg, build_model(cfg).state_dict(), tmp_path / "hf")
    theirs = _hf_qwen3(True, 2)
    theirs.config.use_sliding_window = True
    theirs.config.sliding_window = 16
    theirs.save_pretrained(tmp_path / "swa")
    with pytest.raises(ConfigError, match="sliding-window"):
        import_hf(tmp_path / "swa")


def test_import_hf_help_lists_every_registered_family(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["import-hf", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    for model_type, architecture in architectures().items():
        assert f"{model_type}: {architecture}" in text
    assert "qwen3: Qwen3ForCausalLM" in text and len(architectures()) >= 8
