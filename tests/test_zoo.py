"""The zoo's parameter counts against the published numbers."""

import pytest

from model_zoo import build_model, count_parameters, get_model_config, zoo_names
from model_zoo.config import ConfigError

# Pythia non-embedding parameter counts, exactly as published (Biderman et al. 2023, "Pythia: A
# Suite for Analyzing Large Language Models", Table 1 / EleutherAI/pythia README; also
# ARCHITECTURE.md). Non-embedding excludes both the input embedding and the untied output layer.
PYTHIA_NON_EMBEDDING = {
    "pythia-70m": 18_915_328,
    "pythia-160m": 85_056_000,
    "pythia-410m": 302_311_424,
    "pythia-1b": 805_736_448,
    "pythia-1.4b": 1_208_602_624,
    "pythia-2.8b": 2_517_652_480,
    "pythia-6.9b": 6_444_163_072,
    "pythia-12b": 11_327_027_200,
}

# Published total parameter counts and where each comes from. The Hugging Face Hub's
# "Model size" figure is computed from the safetensors headers of the released weights.
PUBLISHED_TOTAL = {
    # EleutherAI/pythia-14m model card / Hub safetensors: 14.1M (14,067,712 with the 50304 vocab)
    "pythia-14m": (14.1e6, "Hub safetensors size of EleutherAI/pythia-14m (14.1M)"),
    "pythia-12b": (11.8e9, "Hub safetensors size of EleutherAI/pythia-12b (11.8B)"),
    "olmo2-1b": (1.48e9, "Hub safetensors size of allenai/OLMo-2-0425-1B (1.48B)"),
    "olmo2-7b": (7.30e9, "Hub safetensors size of allenai/OLMo-2-1124-7B (7.3B); OLMo 2 paper"),
    "olmo2-13b": (13.7e9, "Hub safetensors size of allenai/OLMo-2-1124-13B (13.7B); OLMo 2 paper"),
    "llama3.2-1b": (1.24e9, "Hub safetensors size of meta-llama/Llama-3.2-1B (1.24B; model card 1.23B)"),
    "llama3.2-3b": (3.21e9, "Hub safetensors size of meta-llama/Llama-3.2-3B (3.21B)"),
    "llama3.1-8b": (8.03e9, "Hub safetensors size of meta-llama/Llama-3.1-8B (8.03B)"),
    "llama3.1-70b": (70.6e9, "Hub safetensors size of meta-llama/Llama-3.1-70B (70.6B)"),
}


@pytest.mark.parametrize("name", sorted(PYTHIA_NON_EMBEDDING))
def test_pythia_non_embedding_counts_are_exact(name):
    assert count_parameters(get_model_config(name)).non_embedding == PYTHIA_NON_EMBEDDING[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_total_counts_match_published(name):
    published, source = PUBLISHED_TOTAL[name]
    total = count_parameters(get_model_config(name)).total
    assert abs(total - published) / published < 0.005, f"{name}: {total:,} vs {published:,.0f} ({source})"


def test_pythia_vocab_padding_matches_released_checkpoints():
    # Released HF configs: 50304 for most sizes, 50432 for 6.9B (TP=2), 50688 for 12B (TP=4).
    assert get_model_config("pythia-160m").padded_vocab_size == 50304
    assert get_model_config("pythia-6.9b").padded_vocab_size == 50432
    assert get_model_config("pythia-12b").padded_vocab_size == 50688


@pytest.mark.parametrize("family", ["pythia", "olmo2", "llama3"])
def test_each_family_has_a_tiny_that_runs(family):
    import torch

    cfg = get_model_config(f"{family}-tiny")
    model = build_model(cfg, seed=0)
    logits = model(torch.randint(0, cfg.vocab_size, (2, 16)))
    assert logits.shape == (2, 16, cfg.padded_vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", zoo_names())
def test_every_zoo_model_counts_active_equal_total_for_dense(name):
    count = count_parameters(get_model_config(name))
    assert count.active == count.total
    assert count.total == count.embedding + count.output + count.non_embedding


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        get_model_config("pythia-99m")
    assert "pythia-160m" in str(err.value) and "llama3.1-8b" in str(err.value)
