"""The zoo's parameter counts against the published numbers."""

import pytest

from model_zoo import build_model, count_parameters, get_model_config, zoo_names

# Pythia non-embedding parameter counts, exactly as published (Biderman et al. 2023, "Pythia: A
# Suite for Analyzing Large Language Models", Table 1 / EleutherAI/pythia README; also
# docs/architecture.md). Non-embedding excludes both the input embedding and the untied output layer.
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
    "llama3.2-1b": (
        1.24e9,
        "Hub safetensors size of meta-llama/Llama-3.2-1B (1.24B; model card 1.23B)",
    ),
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
    # published to three significant digits: rounding of at most half a unit in the third digit
    # of a number >= 1.00, 0.5% relative
    assert abs(total - published) / published < 0.005, (
        f"{name}: {total:,} vs {published:,.0f} ({source})"
    )


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
def test_every_zoo_model_counts_consistently(name):
    cfg = get_model_config(name)
    count = count_parameters(cfg)
    assert count.total == count.embedding + count.output + count.non_embedding
    if cfg.moe.enabled:
        assert count.active < count.total
    else:
        assert count.active == count.total


# MoE totals and actives as published. Totals must be within 0.5%. Published active counts are
# rounded to two digits ("12.9B", "37B"), which pins them only to an interval; each entry gives the
# interval the figure can mean (rounded, or truncated where noted) and the test checks that ours
# falls inside. DeepSeek counts *activated* parameters without the input embedding (a lookup, not a
# matmul): without it V3 is 36.63B (published 37B; with it 37.55B), V2-Lite 2.451B (published 2.4B,
# which only truncation explains; with the embedding 2.66B), and DeepSeek-V2 (236B/21B, not in the
# zoo) 20.85B. Mistral and OLMoE count the embedding in.
PUBLISHED_MOE = {
    # name: (total, (active low, active high), active excludes input embedding, source)
    "mixtral-8x7b": (
        46.7e9,
        (12.85e9, 12.95e9),
        False,
        "Mistral AI, 'Mixtral of experts' (2023): 46.7B total, 12.9B active",
    ),
    "olmoe-1b-7b": (
        6.9e9,
        (1.25e9, 1.35e9),
        False,
        "Muennighoff et al. 2024, OLMoE paper: 6.9B total, 1.3B active",
    ),
    "deepseek-v2-lite": (
        15.7e9,
        (2.35e9, 2.5e9),
        True,
        "DeepSeek-V2 paper, DeepSeek-V2-Lite: 15.7B total, 2.4B activated (rounded or truncated)",
    ),
    "deepseek-v3": (
        671e9,
        (36.5e9, 37.5e9),
        True,
        "DeepSeek-V3 technical report: 671B total (without MTP), 37B activated",
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MOE))
def test_moe_total_and_active_match_published(name):
    total, (low, high), no_input_embedding, source = PUBLISHED_MOE[name]
    count = count_parameters(get_model_config(name))
    # three significant digits published: at most 0.5% of rounding, as above
    assert abs(count.total - total) / total < 0.005, f"{name} total {count.total:,} vs {source}"
    ours_active = count.active - (count.embedding if no_input_embedding else 0)
    assert low <= ours_active < high, f"{name} active {ours_active:,} vs {source}"
